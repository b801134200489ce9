"""Read Keras weights (every on-disk layout) and place them into Flax variable trees.

Layouts (``shared/research/keras-formats.md`` §2-3):

* legacy HDF5 (``/model_weights`` of a full model, or the root of a tf.keras ``save_weights``
  file): one group per top-level layer with a ``weight_names`` attribute. A nested model is one
  group holding all its sub-layers' weights, *not in layer order* when partly frozen (all
  trainable weights first); the owner of each weight is the right-most name component that is a
  sub-layer name, with a fallback that recomputes Keras' ``trainable + non_trainable`` order.
* Keras 3 / 2.13+ ``.weights.h5`` (also ``model.weights.h5`` inside ``.keras``):
  ``layers/<snake_class>[_N]/vars/<i>`` (``_layer_checkpoint_dependencies`` in Keras 2), groups
  named by a per-class counter over ``model.layers``; Keras >= 3.6 also records ``name``.

Keras -> Flax transforms: kernels are copied as they are (Flax uses the same HWIO layout, and
``nn.ConvTranspose(transpose_kernel=True)`` takes the Keras transposed kernel unchanged);
depthwise kernels ``(*k, C, dm)`` are *reshaped* to ``(*k, 1, C·dm)``; BatchNorm ``gamma, beta,
moving_mean, moving_variance`` become ``params.scale/bias`` and ``batch_stats.mean/var``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
from jxai.converters.keras.errors import KerasFormatError, WeightMismatchError
from jxai.converters.keras.formats import KerasFile, chunked_attr, decode_attr, read_dataset
from jxai.converters.keras.layers import weight_layout
from jxai.converters.keras.module import depthwise_module_name
from jxai.converters.keras.spec import GraphSpec, LayerSpec

__all__ = ["graph_weights", "layer_variables", "snake_case", "variables_from_file"]

Path = tuple[str, ...]


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: ``Conv2DTranspose`` -> ``conv2d_transpose``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _read_group(group: h5py.Group, names: list[str], where: str) -> list[np.ndarray]:
    return [read_dataset(group, n, where) for n in names]


def _vars(group: h5py.Group, where: str) -> list[np.ndarray]:
    if "vars" not in group:
        return []
    vars_group = group["vars"]
    keys = sorted(vars_group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
    return _read_group(vars_group, keys, where)


# ------------------------------------------------------------------- legacy HDF5 (model order)
def _weighted_leaves(layer: LayerSpec, prefix: Path) -> list[tuple[Path, LayerSpec]]:
    if layer.kind == "Model":
        out = []
        for sub in layer.graph.layers:
            out += _weighted_leaves(sub, prefix + (sub.name,))
        return out
    return [(prefix, layer)] if weight_layout(layer) else []


def _legacy_order(layer: LayerSpec, prefix: Path) -> tuple[list, list]:
    """Keras 2 ``_legacy_weights`` of a (nested) layer: (trainable, non_trainable) lists."""
    if layer.kind == "Model":
        trainable, frozen = [], []
        for sub in layer.graph.layers:
            t, n = _legacy_order(sub, prefix + (sub.name,))
            trainable += t
            frozen += n
    else:
        layout = weight_layout(layer)
        trainable = [(prefix, w) for w, t in layout if t]
        frozen = [(prefix, w) for w, t in layout if not t]
    if not layer.trainable:
        return [], trainable + frozen
    return trainable, frozen


def _split_nested(layer: LayerSpec, names: list[str], arrays: list[np.ndarray],
                  where: str) -> dict[Path, list[np.ndarray]]:
    """Assign the weights of a nested-model group to its sub-layers (research §2.3)."""
    leaves = _weighted_leaves(layer, ())
    leaf_names = {}
    for path, _ in leaves:
        leaf_names.setdefault(path[-1], []).append(path)
    owned: dict[Path, list[np.ndarray]] = {}
    by_owner_ok = True
    for name, array in zip(names, arrays, strict=True):
        parts = name.split("/")[:-1]
        owner = next((p for p in reversed(parts) if len(leaf_names.get(p, ())) == 1), None)
        if owner is None:
            by_owner_ok = False
            break
        owned.setdefault(leaf_names[owner][0], []).append(array)
    if by_owner_ok and all(len(owned.get(p, [])) == len(weight_layout(s)) for p, s in leaves):
        return owned
    trainable, frozen = _legacy_order(layer, ())
    order = trainable + frozen
    if len(order) != len(arrays):
        raise WeightMismatchError(
            f"{where}: nested model {layer.name!r} stores {len(arrays)} weights but its config "
            f"implies {len(order)}; the weights do not belong to this architecture"
        )
    slots: dict[Path, dict[str, np.ndarray]] = {}
    for (path, weight), array in zip(order, arrays, strict=True):
        slots.setdefault(path, {})[weight] = array
    return {path: [slots[path][w] for w, _ in weight_layout(spec)] for path, spec in leaves}


def _legacy_weights(group: h5py.Group, graph: GraphSpec, path: str) -> dict[Path, list]:
    out: dict[Path, list] = {}
    for layer in graph.layers:
        if layer.kind != "Model" and not weight_layout(layer):
            continue
        where = f"{path}: layer {layer.name!r}"
        if layer.name not in group:
            if layer.kind == "Model" and not _weighted_leaves(layer, ()):
                continue
            raise WeightMismatchError(f"{where} has no weights group in the file (the file has "
                                      f"{sorted(group.keys())[:20]})")
        sub = group[layer.name]
        names = chunked_attr(sub, "weight_names")
        arrays = _read_group(sub, names, where)
        if layer.kind == "Model":
            for sub_path, sub_arrays in _split_nested(layer, names, arrays, where).items():
                out[(layer.name, *sub_path)] = sub_arrays
        else:
            out[(layer.name,)] = arrays
    return out


# ------------------------------------------------------------------- Keras 3 / 2.13+ layout
def _container_members(graph: GraphSpec) -> list[LayerSpec]:
    """``model.layers`` as the saver counts them (no keras.ops, no Sequential InputLayer)."""
    members = [layer for layer in graph.layers if layer.is_layer]
    if graph.class_name == "Sequential":
        members = [layer for layer in members if layer.kind != "Input"]
    return members


def _v3_weights(group: h5py.Group, graph: GraphSpec, prefix: Path, path: str,
                out: dict[Path, list]) -> None:
    key = "layers" if "layers" in group else "_layer_checkpoint_dependencies"
    if key not in group:
        if any(weight_layout(x) or x.kind == "Model" for x in graph.layers):
            raise KerasFormatError(f"{path}: no 'layers' group for model {graph.name!r}")
        return
    container = group[key]
    by_name = {}
    for child_name in container:
        child = container[child_name]
        attrs = child["vars"].attrs if "vars" in child else {}
        if "name" in attrs:
            by_name[str(decode_attr(attrs["name"]))] = child
    counts: dict[str, int] = {}
    for layer in _container_members(graph):
        base = snake_case(layer.class_name if layer.kind != "Model" else layer.graph.class_name)
        index = counts.get(base, 0)
        counts[base] = index + 1
        group_name = base if index == 0 else f"{base}_{index}"
        child = by_name.get(layer.name)
        if child is None:
            child = container.get(group_name)
        where = f"{path}: layer {'/'.join(prefix + (layer.name,))!r} ({key}/{group_name})"
        if layer.kind == "Model":
            if child is None:
                raise KerasFormatError(f"{where}: group missing from the weights file")
            _v3_weights(child, layer.graph, prefix + (layer.name,), path, out)
        elif weight_layout(layer):
            if child is None:
                raise KerasFormatError(f"{where}: group missing from the weights file")
            out[prefix + (layer.name,)] = _vars(child, where)


def graph_weights(kfile: KerasFile, graph: GraphSpec) -> dict[Path, list[np.ndarray]]:
    """Raw Keras arrays per weighted layer path (``("conv_base", "block1_conv1")``)."""
    if kfile.format in ("h5", "h5_weights"):
        return _legacy_weights(kfile.weights, graph, kfile.path)
    out: dict[Path, list] = {}
    _v3_weights(kfile.weights, graph, (), kfile.path, out)
    return out


# --------------------------------------------------------------------------- Keras -> Flax
def _shape_error(where: str, what: str, expected: Any, got: tuple) -> WeightMismatchError:
    shape = "(" + ", ".join(str(d) for d in expected) + ")"
    return WeightMismatchError(f"{where}: {what} should have shape {shape} but the file has "
                               f"{tuple(got)}")


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras ``(*k, C, dm)`` -> Flax grouped conv ``(*k, 1, C·dm)``; output channel c·dm + m."""
    return kernel.reshape(*kernel.shape[:-2], 1, kernel.shape[-2] * kernel.shape[-1])


def layer_variables(layer: LayerSpec, arrays: list[np.ndarray], where: str):
    """(params, batch_stats, config updates) of one layer from its Keras arrays (stored order)."""
    layout = weight_layout(layer)
    if len(arrays) != len(layout):
        raise WeightMismatchError(
            f"{where} ({layer.class_name}) expects {len(layout)} weights "
            f"({', '.join(w for w, _ in layout)}) but the file has {len(arrays)} "
            f"(shapes {[tuple(a.shape) for a in arrays]})"
        )
    named = dict(zip((w for w, _ in layout), arrays, strict=True))
    cfg = layer.cfg()
    kind, module = layer.kind, layer.module
    params: dict[str, dict] = {}
    stats: dict[str, dict] = {}
    if kind in ("Dense", "Conv", "ConvTranspose", "DepthwiseConv"):
        kernel = named["kernel"]
        if kind == "Dense" and (kernel.ndim != 2 or kernel.shape[1] != cfg["units"]):
            raise _shape_error(where, "kernel", ("in", cfg["units"]), kernel.shape)
        if kind in ("Conv", "ConvTranspose", "DepthwiseConv"):
            if tuple(kernel.shape[:-2]) != tuple(cfg["kernel_size"]):
                raise _shape_error(where, "kernel", (*cfg["kernel_size"], "in", "out"),
                                   kernel.shape)
        if kind == "Conv" and kernel.shape[-1] != cfg["filters"]:
            raise _shape_error(where, "kernel", (*cfg["kernel_size"], "in", cfg["filters"]),
                               kernel.shape)
        if kind == "ConvTranspose" and kernel.shape[-2] != cfg["filters"]:
            raise _shape_error(where, "kernel", (*cfg["kernel_size"], cfg["filters"], "in"),
                               kernel.shape)
        if kind == "DepthwiseConv":
            if kernel.shape[-1] != cfg["depth_multiplier"]:
                raise _shape_error(where, "depthwise kernel",
                                   (*cfg["kernel_size"], "C", cfg["depth_multiplier"]),
                                   kernel.shape)
            kernel = _depthwise_kernel(kernel)
        params[module] = {"kernel": kernel}
        if "bias" in named:
            params[module]["bias"] = named["bias"]
    elif kind == "SeparableConv":
        depthwise, pointwise = named["depthwise_kernel"], named["pointwise_kernel"]
        if pointwise.shape[-1] != cfg["filters"]:
            raise _shape_error(where, "pointwise kernel", ("...", cfg["filters"]),
                               pointwise.shape)
        params[depthwise_module_name(layer)] = {"kernel": _depthwise_kernel(depthwise)}
        params[module] = {"kernel": pointwise}
        if "bias" in named:
            params[module]["bias"] = named["bias"]
    elif kind in ("BatchNorm", "LayerNorm"):
        entry = {}
        if "gamma" in named:
            entry["scale"] = named["gamma"]
        if "beta" in named:
            entry["bias"] = named["beta"]
        if entry:
            params[module] = entry
        if kind == "BatchNorm":
            stats[module] = {"mean": named["moving_mean"], "var": named["moving_variance"]}
    elif kind == "Normalization":
        return params, stats, {"mean": named["mean"].tolist(),
                               "variance": named["variance"].tolist()}
    return params, stats, None


def variables_from_file(graph: GraphSpec, raw: Mapping[Path, list], path: str,
                        prefix: Path = ()):
    """The Flax variables of ``graph`` and the graph with weight-derived config (Normalization).

    Returns ``(params, batch_stats, graph)``; module names follow `LayerSpec.module`.
    """
    import dataclasses

    from jxai.converters.keras.spec import config_pairs

    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    new_layers = []
    for layer in graph.layers:
        layer_path = prefix + (layer.name,)
        if layer.kind == "Model":
            sub_params, sub_stats, sub_graph = variables_from_file(layer.graph, raw, path,
                                                                   layer_path)
            if sub_params:
                params[layer.module] = sub_params
            if sub_stats:
                stats[layer.module] = sub_stats
            layer = dataclasses.replace(layer, graph=sub_graph)
        elif weight_layout(layer):
            where = f"{path}: layer {'/'.join(layer_path)!r}"
            layer_params, layer_stats, update = layer_variables(layer, list(raw[layer_path]),
                                                                where)
            params.update(layer_params)
            stats.update(layer_stats)
            if update:
                layer = dataclasses.replace(layer, config=config_pairs({**layer.cfg(), **update}))
        new_layers.append(layer)
    return params, stats, dataclasses.replace(graph, layers=tuple(new_layers))
