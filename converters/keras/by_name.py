"""`load_weights`: Keras weights into a hand-written Flax module, matched by layer name.

For networks written as Flax modules (``jxai.models``) whose submodule names are the Keras layer
names: ``variables = load_weights(module, "model.weights.h5", input_shape=(224, 224, 3))``.

Sources, all keyed by Keras layer name:

* legacy weights-only HDF5 (tf.keras ``save_weights("w.h5")``) and the weights of a legacy full
  ``.h5``: group per layer; a nested model's group is split by the owner name in each weight name
  (``vgg16/block1_conv1/kernel:0`` -> ``vgg16/block1_conv1``);
* Keras >= 3.6 ``.weights.h5``: the ``name`` attribute of each ``vars`` group;
* tf.keras 2.13-2.15 and Keras < 3.6 ``.weights.h5``, which record no layer name: the group's
  class-counter name (``conv2d_3``, the Keras automatic name) when the module's names coincide,
  else the module's call order with shape checks (`jxai.converters.keras.unnamed`);
* a full ``.h5`` or ``.keras`` model: converted with `load_keras` first.

Each Flax leaf module is matched by its path (``"conv_base/block1_conv1"``), or by its last name
when that is unique. The Keras arrays are placed by the module's own variables: ``kernel``/
``bias`` (a depthwise ``(*k, C, dm)`` kernel is reshaped to ``(*k, 1, C·dm)``), BatchNorm
``scale, bias`` + ``batch_stats`` ``mean, var``, LayerNorm ``scale, bias``. A Flax
``nn.ConvTranspose`` must use ``transpose_kernel=True`` to take Keras kernels unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jxai.converters.keras import unnamed
from jxai.converters.keras.errors import KerasFormatError, WeightMismatchError
from jxai.converters.keras.formats import chunked_attr, decode_attr, open_keras_file, read_dataset

__all__ = ["load_weights"]

Path = tuple[str, ...]


def _legacy_by_name(group, where: str) -> dict[Path, list[np.ndarray]]:
    out: dict[Path, list[np.ndarray]] = {}
    for layer in chunked_attr(group, "layer_names"):
        if layer not in group:
            continue
        sub = group[layer]
        names = chunked_attr(sub, "weight_names")
        for name in names:
            parts = name.split("/")
            owner = parts[-2] if len(parts) >= 2 else layer
            key = (layer,) if owner == layer else (layer, owner)
            out.setdefault(key, []).append(read_dataset(sub, name, f"{where}: layer {layer!r}"))
    return out


def _v3_by_name(group, prefix: Path, where: str, out: dict[Path, list]) -> None:
    container = group.get("layers") or group.get("_layer_checkpoint_dependencies")
    if container is None:
        return
    for key in container:
        child = container[key]
        attrs = child["vars"].attrs if "vars" in child else {}
        if "name" not in attrs:  # callers check `unnamed.has_layer_names` first
            raise KerasFormatError(f"{where}: the weights group {key!r} records no layer name")
        name = str(decode_attr(attrs["name"]))
        if "layers" in child or "_layer_checkpoint_dependencies" in child:
            _v3_by_name(child, prefix + (name,), where, out)
        vars_group = child.get("vars")
        if vars_group is not None and len(vars_group):
            keys = sorted(vars_group.keys(), key=int)
            out[prefix + (name,)] = [read_dataset(vars_group, k, f"{where}: layer {name!r}")
                                     for k in keys]


def _keras_arrays(path: str) -> tuple[dict[Path, list], dict | None, list | None]:
    """(raw arrays by layer path, converted variables, unnamed groups), one of them filled.

    Converted variables come from full-model files; unnamed groups from ``.weights.h5`` files
    whose groups carry no layer name (tf.keras 2.13-2.15, Keras < 3.6).
    """
    with open_keras_file(path) as kfile:
        if kfile.format == "h5_weights":
            return _legacy_by_name(kfile.weights, path), None, None
        if kfile.format == "weights_h5":
            if not unnamed.has_layer_names(kfile.weights):
                return {}, None, unnamed.read_groups(kfile.weights, path)
            out: dict[Path, list] = {}
            _v3_by_name(kfile.weights, (), path, out)
            return out, None, None
    from jxai.converters.keras.loader import load_keras

    return {}, load_keras(path).variables, None


def _leaf_modules(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, dict]:
    out: dict[Path, dict] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) or hasattr(value, "items"):
            if all(not (isinstance(v, Mapping) or hasattr(v, "items")) for v in value.values()):
                out[prefix + (key,)] = dict(value)
            else:
                out.update(_leaf_modules(value, prefix + (key,)))
    return out


def _find(raw: Mapping[Path, list], path: Path) -> tuple[Path | None, list | None]:
    if path in raw:
        return path, raw[path]
    matches = [p for p in raw if p[-1] == path[-1]]
    if len(matches) == 1:
        return matches[0], raw[matches[0]]
    return None, None


def _place(name: str, params: dict, stats: dict | None, arrays: list, where: str,
           depthwise_of: dict | None) -> tuple[dict, dict | None]:
    """Keras arrays -> this module's variables, checking every shape."""
    arrays = list(arrays)
    new_params: dict[str, Any] = {}
    new_stats: dict[str, Any] | None = None

    def take(target_shape, label):
        if not arrays:
            raise WeightMismatchError(f"{where}: layer {name!r} needs {label} {target_shape} but "
                                      "the file has no more weights for it")
        array = arrays.pop(0)
        if array.shape != tuple(target_shape):
            flat = (len(target_shape) >= 3 and target_shape[-2] == 1 and array.ndim >= 3
                    and array.shape[:-2] == tuple(target_shape[:-2])
                    and array.shape[-2] * array.shape[-1] == target_shape[-1])
            if not flat:
                raise WeightMismatchError(
                    f"{where}: layer {name!r} {label}: the module expects shape "
                    f"{tuple(target_shape)} but the file has {tuple(array.shape)}")
            array = array.reshape(target_shape)  # depthwise (*k, C, dm) -> (*k, 1, C*dm)
        return array

    if depthwise_of is not None:  # separable conv: depthwise kernel comes first in the file
        depthwise_of["kernel"] = take(np.shape(depthwise_of["kernel"]), "depthwise kernel")
    if "kernel" in params:
        new_params["kernel"] = take(np.shape(params["kernel"]), "kernel")
        if "bias" in params:
            new_params["bias"] = take(np.shape(params["bias"]), "bias")
    else:
        for key, label in (("scale", "gamma"), ("bias", "beta")):
            if key in params:
                new_params[key] = take(np.shape(params[key]), label)
        if stats is not None:
            new_stats = {"mean": take(np.shape(stats["mean"]), "moving_mean"),
                         "var": take(np.shape(stats["var"]), "moving_variance")}
    unknown = set(params) - set(new_params)
    if unknown:
        raise WeightMismatchError(f"{where}: layer {name!r} has Flax variables {sorted(unknown)} "
                                  "that no Keras weight maps to")
    if arrays:
        raise WeightMismatchError(f"{where}: layer {name!r}: the file has {len(arrays)} more "
                                  f"weights (shapes {[a.shape for a in arrays]}) than the module")
    return new_params, new_stats


def _set(tree: dict, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _trace(module: nn.Module, input_shape: tuple) -> tuple[dict, dict[Path, int], dict]:
    """Abstract variables, the call rank of every module path and each module's type.

    One `jax.eval_shape` of ``module.init`` on a ``(1, *input_shape)`` input: nothing runs.
    """
    call_order: list[Path] = []
    types: dict[Path, type] = {}

    def record(next_fun, args, kwargs, context):
        module_path = tuple(str(p) for p in context.module.path)
        if module_path not in types:
            call_order.append(module_path)
            types[module_path] = type(context.module)
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(record):
            return module.init(jax.random.key(0), x)

    variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    return variables, {p: i for i, p in enumerate(call_order)}, types


def _depthwise_partner(params: Mapping[Path, dict], module_path: Path) -> Path | None:
    partner = module_path[:-1] + (module_path[-1] + "_depthwise",)
    return partner if partner in params else None


def _is_depthwise_half(params: Mapping[Path, dict], module_path: Path) -> bool:
    return module_path[-1].endswith("_depthwise") and \
        module_path[:-1] + (module_path[-1][: -len("_depthwise")],) in params


class _Placer:
    """Places Keras arrays into the template's leaf modules (``params`` / ``batch_stats``)."""

    def __init__(self, template: Mapping[str, Any], rank: Mapping[Path, int], path: str):
        self.template = template
        self.path = path
        self.params = _leaf_modules(template.get("params", {}))
        self.stats = _leaf_modules(template.get("batch_stats", {}))
        self.all_ordered = sorted(self.params, key=lambda p: rank.get(p, len(rank)))  # stable
        self.ordered = [p for p in self.all_ordered if not _is_depthwise_half(self.params, p)]

    def place(self, module_path: Path, arrays: list, out: dict | None = None) -> None:
        """Check ``arrays`` against one leaf module (and its depthwise half); fill ``out``."""
        partner = _depthwise_partner(self.params, module_path)
        depthwise = dict(self.params[partner]) if partner is not None else None
        new_params, new_stats = _place("/".join(module_path), self.params[module_path],
                                       self.stats.get(module_path), arrays, self.path,
                                       depthwise)
        if out is None:
            return
        _set(out["params"], module_path, new_params)
        if depthwise is not None:
            _set(out["params"], partner, depthwise)
        if new_stats is not None:
            _set(out["batch_stats"], module_path, new_stats)

    def fits(self, leaf: unnamed.Leaf, arrays: list) -> str | None:
        try:
            self.place(leaf.path, arrays)
        except WeightMismatchError as exc:
            return str(exc)
        return None

    def assign(self, raw: Mapping[Path, list], strict: bool) -> dict:
        """Every leaf module from ``raw`` (keyed by Keras layer path), by name."""
        out: dict[str, Any] = {k: {} for k in self.template}
        used: set[Path] = set()
        for module_path in self.ordered:
            found, arrays = _find(raw, module_path)
            if arrays is None:
                raise WeightMismatchError(
                    f"{self.path}: the module's layer {'/'.join(module_path)!r} has no weights in "
                    f"the file (file layers: {['/'.join(p) for p in raw][:20]})")
            used.add(found)
            self.place(module_path, arrays, out)
        unused = [p for p in raw if p not in used]
        if strict and unused:
            raise WeightMismatchError(f"{self.path}: the file has weights for layers "
                                      f"{['/'.join(p) for p in unused][:10]} that the module does "
                                      "not have (pass strict=False to ignore them)")
        return out

    def assign_converted(self, converted: Mapping[str, Any], strict: bool) -> dict:
        """Every leaf module from the variables of a converted full model, by module path."""
        out: dict[str, Any] = {k: {} for k in self.template}
        source_params = _leaf_modules(converted.get("params", {}))
        source_stats = _leaf_modules(converted.get("batch_stats", {}))
        used: set[Path] = set()
        for module_path in self.all_ordered:
            leaf, name = self.params[module_path], "/".join(module_path)
            source = source_params.get(module_path)
            if source is None:
                raise WeightMismatchError(f"{self.path}: the module's layer {name!r} is not in "
                                          "the Keras model")
            for key, value in leaf.items():
                if key not in source or np.shape(source[key]) != np.shape(value):
                    raise WeightMismatchError(
                        f"{self.path}: layer {name!r} {key}: the module expects shape "
                        f"{tuple(np.shape(value))} but the file has "
                        f"{tuple(np.shape(source[key])) if key in source else 'nothing'}")
            used.add(module_path)
            _set(out["params"], module_path, dict(source))
            if module_path in self.stats:
                _set(out["batch_stats"], module_path, source_stats[module_path])
        unused = [p for p in source_params if p not in used]
        if strict and unused:
            raise WeightMismatchError(f"{self.path}: the file has weights for layers "
                                      f"{['/'.join(p) for p in unused][:10]} that the module does "
                                      "not have (pass strict=False to ignore them)")
        return out


def _assign_unnamed(placer: _Placer, groups: list[unnamed.Group], types: Mapping[Path, type],
                    traced: bool, strict: bool) -> dict:
    """Groups named by class counter: by name when the names coincide, else by call order."""
    try:
        return placer.assign(unnamed.by_group_name(groups), strict)
    except WeightMismatchError as exc:
        by_name_error = str(exc).removeprefix(f"{placer.path}: ")
    intro = ("the file's weights groups record no layer names (tf.keras 2.13-2.15 or Keras < 3.6 "
             ".weights.h5; they are named by class counter, e.g. 'conv2d_3')")
    if not traced:
        raise WeightMismatchError(
            f"{placer.path}: {intro}. Matching the module's layers to them by name failed "
            f"({by_name_error}); "
            "matching by call order needs the module's call order and layer types: pass "
            "input_shape= (the per-sample input shape) to load_weights as well.")
    leaves = [unnamed.Leaf(p, unnamed.keras_classes(
                  types.get(p), unnamed.leaf_kernel_ndim(placer.params[p]),
                  separable=_depthwise_partner(placer.params, p) is not None),
              getattr(types.get(p), "__name__", "?")) for p in placer.ordered]
    try:
        raw = unnamed.match_by_order(groups, leaves, placer.fits, where=placer.path,
                                     strict=strict)
    except WeightMismatchError as exc:
        raise WeightMismatchError(f"{exc}. Note: {intro}; matching by name failed as well: "
                                  f"{by_name_error}") from None
    return placer.assign(raw, strict=False)


def load_weights(module: nn.Module, path: str | os.PathLike, variables: Mapping | None = None,
                 *, input_shape: tuple | None = None, strict: bool = True) -> dict:
    """Load Keras weights into the variables of a Flax ``module`` by layer name.

    Files whose groups record no layer name (tf.keras 2.13-2.15 ``.weights.h5``, Keras < 3.6)
    are matched by their class-counter names (``conv2d_3``: the Keras automatic names) when the
    module's names coincide, and otherwise by the module's call order with shape checks
    (`jxai.converters.keras.unnamed`); the latter needs ``input_shape``.

    Args:
      module: a Flax module whose submodule names are the Keras layer names.
      path: ``.weights.h5`` (any Keras version), legacy weights-only ``.h5``, or a full ``.h5``
        / ``.keras`` model.
      variables: the module's variables (``module.init(...)``), used as the template of names
        and shapes. Give this or ``input_shape`` (or both).
      input_shape: per-sample input shape, to trace ``module.init`` for the template, the call
        order (which layer mismatches "first") and the layer types.
      strict: also fail when the file has weighted layers the module does not use.

    Returns:
      New variables (same structure as the template) holding the Keras weights.

    Raises:
      WeightMismatchError: naming the first layer whose weights do not fit, with both shapes.
    """
    path = os.fspath(path)
    if variables is None and input_shape is None:
        raise ValueError("load_weights needs the module's variables or an input_shape to "
                         "build them (module.init with a (1, *input_shape) input)")
    rank: dict[Path, int] = {}
    types: dict[Path, type] = {}
    if input_shape is not None:
        traced, rank, types = _trace(module, tuple(input_shape))
        variables = traced if variables is None else variables
    template = {k: v for k, v in variables.items()}
    placer = _Placer(template, rank, path)
    raw, converted, groups = _keras_arrays(path)
    if converted is not None:
        out = placer.assign_converted(converted, strict)
    elif groups is not None:
        out = _assign_unnamed(placer, groups, types, bool(rank), strict)
    else:
        out = placer.assign(raw, strict)
    for collection, value in template.items():  # collections without Keras weights stay as given
        if collection not in ("params", "batch_stats"):
            out[collection] = value
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.float32), out)
