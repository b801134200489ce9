"""Rebuild the layer graph of a Keras ``model_config`` as a `GraphSpec`.

Handles Sequential and Functional models (``"Model"`` is the pre-TF-2.4 name of Functional),
nested models used as layers, shared layers (several calls of one layer), several inputs and
outputs, and both serialisations of call nodes (``shared/research/keras-formats.md`` §4.4-4.6):

* Keras 2 (tf.keras ``.h5``, Keras 2.13-2.15 ``.keras``): a node is a list of tensor refs
  ``[layer, node_index, tensor_index, kwargs]``; ``TFOpLambda`` nodes drop one nesting level;
  constants appear as ``["_CONSTANT_VALUE", -1, value]``.
* Keras 3 (``.keras`` and Keras-3 legacy ``.h5``): a node is ``{"args": [...], "kwargs": {...}}``
  with ``__keras_tensor__`` / ``__tensor__`` / ``__ellipsis__`` / ``__slice__`` values.

Node indices of nested models are offset differently by the two formats (§4.6): in Keras 2 a
nested Functional's node 0 is its own internal node, so refs use ``k + 1``; in Keras 3 only the
``input_layers``/``output_layers`` of a graph use ``k + 1`` for a nested Functional.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jxai.converters.keras.errors import KerasFormatError, UnsupportedLayerError
from jxai.converters.keras.layers import MODEL_CLASSES, convert_layer
from jxai.converters.keras.ops import is_keras3_op, op_layer
from jxai.converters.keras.spec import (
    ARRAY,
    DICT,
    ELLIPSIS,
    SLICE,
    TENSOR,
    CallSpec,
    GraphSpec,
    LayerSpec,
    config_pairs,
    freeze,
)

__all__ = ["parse_model"]

_IGNORED_KWARGS = {"training", "name"}
_FORBIDDEN_TAGS = {"__lambda__", "__typespec__"}


def parse_model(model_config: Mapping[str, Any], keras_major: int) -> GraphSpec:
    """``{"class_name": "Functional"|"Sequential"|"Model", "config": ...}`` -> `GraphSpec`."""
    class_name = model_config.get("class_name")
    config = model_config.get("config")
    if class_name not in MODEL_CLASSES or config is None:
        raise UnsupportedLayerError(
            f"the file's model is a {class_name!r}, not a Functional or Sequential model; a "
            "subclassed model has no layer graph in its config. Write it as a Flax module and "
            "load its weights with jxai.converters.keras.load_weights."
        )
    if class_name == "Sequential":
        return _parse_sequential(config, keras_major)
    return _parse_functional(config, keras_major)


def _nested_or_layer(entry: Mapping[str, Any], keras_major: int) -> LayerSpec:
    class_name = entry.get("class_name")
    cfg = entry.get("config") or {}
    name = str(entry.get("name") or (cfg.get("name") if isinstance(cfg, Mapping) else None)
               or class_name)
    if class_name in MODEL_CLASSES:
        graph = parse_model(entry, keras_major)
        return LayerSpec(name=name, module=name, kind="Model", class_name=class_name,
                         trainable=bool(cfg.get("trainable", True)), graph=graph)
    if class_name in ("TFOpLambda", "SlicingOpLambda") or is_keras3_op(entry):
        kind, config = op_layer(entry, name)
        return LayerSpec(name=name, module=name, kind=kind, class_name=str(class_name),
                         config=config_pairs(config), is_layer=not is_keras3_op(entry))
    return convert_layer(entry, keras_major)


def _sanitise_modules(layers: list[LayerSpec]) -> tuple[LayerSpec, ...]:
    """Flax submodule names: the Keras name unless it has characters Flax paths cannot hold.

    Names ``<layer>_activation`` / ``<layer>_depthwise`` are reserved for the extra modules of
    Dense/Conv activations and separable convolutions.
    """
    taken = {layer.name for layer in layers}
    out = []
    for layer in layers:
        module = layer.name
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", module):
            module = re.sub(r"[^A-Za-z0-9_\-]", "_", module)
            while module in taken:
                module += "_"
            taken.add(module)
        out.append(LayerSpec(layer.name, module, layer.kind, layer.class_name, layer.config,
                             layer.trainable, layer.is_layer, layer.graph))
    return tuple(out)


# ----------------------------------------------------------------------------------- Sequential
def _parse_sequential(config: Any, keras_major: int) -> GraphSpec:
    entries = config["layers"] if isinstance(config, Mapping) else config
    name = config.get("name", "sequential") if isinstance(config, Mapping) else "sequential"
    if not entries:
        raise KerasFormatError(f"Sequential model {name!r} has no layers")
    layers = [_nested_or_layer(e, keras_major) for e in entries]
    if layers[0].kind == "Input":
        input_layer, body = layers[0], layers[1:]
    else:  # old files: the first layer carries batch_input_shape
        first_cfg = entries[0].get("config") or {}
        shape = first_cfg.get("batch_input_shape") or first_cfg.get("batch_shape")
        if shape is None and isinstance(config, Mapping):
            shape = config.get("build_input_shape")
        if shape is None:
            raise KerasFormatError(
                f"Sequential model {name!r} records no input shape; build it with an explicit "
                "keras.Input(shape) before saving."
            )
        input_layer = LayerSpec(f"{name}_input", f"{name}_input", "Input", "InputLayer",
                                config_pairs({"shape": list(shape[1:]), "dtype": "float32"}))
        body = layers
    calls = []
    previous = f"{input_layer.name}:0"
    for layer in body:
        if layer.kind == "Input":
            raise KerasFormatError(f"Sequential model {name!r} has a second input layer "
                                   f"{layer.name!r}")
        call = CallSpec(f"{layer.name}:0", layer.name, ((TENSOR, previous, 0),), ())
        calls.append(call)
        previous = call.id
    return GraphSpec(
        name=name,
        class_name="Sequential",
        layers=_sanitise_modules([input_layer, *body]),
        calls=tuple(calls),
        inputs=(f"{input_layer.name}:0",),
        input_shapes=(freeze(input_layer.cfg()["shape"]),),
        outputs=((TENSOR, previous, 0),),
    )


# ----------------------------------------------------------------------------------- Functional
def _is_ref(value: Any) -> bool:
    return (isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int)
            and value[0] != "_CONSTANT_VALUE")


def _io_refs(value: Any) -> list[list]:
    """``input_layers``/``output_layers``: a flat ``[name, k, t]`` or a list of them."""
    if isinstance(value, Mapping):
        value = list(value.values())
    if _is_ref(value):
        return [value]
    return list(value)


class _Functional:
    def __init__(self, config: Mapping[str, Any], keras_major: int):
        self.name = config.get("name", "model")
        self.entries = list(config.get("layers") or [])
        self.by_name: dict[str, Mapping[str, Any]] = {}
        for entry in self.entries:
            name = entry.get("name") or (entry.get("config") or {}).get("name")
            self.by_name[str(name)] = entry
        nodes = [n for e in self.entries for n in (e.get("inbound_nodes") or [])]
        self.keras3 = any(isinstance(n, Mapping) for n in nodes)
        self.keras_major = keras_major

    # node index -> call index (the offsets of research §4.6)
    def call_index(self, layer: str, node_index: int, where: str) -> int:
        entry = self.by_name.get(layer)
        if entry is None:
            raise KerasFormatError(f"model {self.name!r}: a node refers to the unknown layer "
                                   f"{layer!r}")
        if entry.get("class_name") == "InputLayer":
            return 0
        cls = entry.get("class_name")
        k = node_index
        if cls in ("Functional", "Model"):
            if not self.keras3 or where == "io":
                k -= 1
        elif cls == "Sequential" and not self.keras3:
            inner = entry.get("config") or {}
            inner_layers = inner.get("layers", []) if isinstance(inner, Mapping) else inner
            if inner_layers and inner_layers[0].get("class_name") == "InputLayer":
                k -= 1
        calls = len(entry.get("inbound_nodes") or [])
        if not 0 <= k < calls:
            if calls == 1:
                return 0
            raise KerasFormatError(f"model {self.name!r}: node {node_index} of layer {layer!r} "
                                   f"does not exist ({calls} calls)")
        return k

    def tensor(self, layer: str, node_index: int, tensor_index: int, where: str) -> tuple:
        entry = self.by_name.get(layer)
        if entry is not None and entry.get("class_name") == "InputLayer":
            return (TENSOR, f"{layer}:0", 0)
        return (TENSOR, f"{layer}:{self.call_index(layer, node_index, where)}", tensor_index)

    # -- value conversion ---------------------------------------------------------------------
    def value(self, value: Any, layer: str) -> Any:
        """A node argument -> frozen spec value with tensor refs resolved."""
        if isinstance(value, Mapping):
            tag = value.get("class_name")
            if tag in _FORBIDDEN_TAGS:
                raise UnsupportedLayerError(
                    f"layer {layer!r}: its call arguments contain a serialised {tag}, i.e. code; "
                    "jxai never executes code from a model file."
                )
            if tag == "__keras_tensor__":
                history = value["config"]["keras_history"]
                return self.tensor(history[0], int(history[1]), int(history[2]), "node")
            if tag in ("__tensor__", "__numpy__"):
                cfg = value["config"]
                return (ARRAY, freeze(cfg["value"]), str(cfg.get("dtype") or "float32"))
            if tag == "__ellipsis__":
                return (ELLIPSIS,)
            if tag == "__slice__":
                cfg = value["config"]
                return (SLICE, self.value(cfg.get("start"), layer),
                        self.value(cfg.get("stop"), layer), self.value(cfg.get("step"), layer))
            if tag is None and set(value) == {"start", "stop", "step"}:  # Keras 2 slice_spec
                return (SLICE, value["start"], value["stop"], value["step"])
            if tag is not None:
                raise UnsupportedLayerError(
                    f"layer {layer!r}: call argument of type {tag!r} is not supported")
            return (DICT, tuple((str(k), self.value(v, layer)) for k, v in sorted(value.items())))
        if isinstance(value, list):
            if len(value) >= 3 and value[0] == "_CONSTANT_VALUE":
                return freeze(value[2])
            if _is_ref(value):
                return self.tensor(value[0], value[1], value[2], "node")
            return tuple(self.value(v, layer) for v in value)
        return freeze(value)

    def kwargs(self, raw: Mapping[str, Any] | None, layer: str) -> tuple:
        out = []
        for key, val in sorted((raw or {}).items()):
            if key in _IGNORED_KWARGS:
                continue
            if key == "mask":
                if val is not None:
                    raise UnsupportedLayerError(
                        f"layer {layer!r} is called with a mask; masking is not supported")
                continue
            out.append((str(key), self.value(val, layer)))
        return tuple(out)

    def node(self, node: Any, layer: str) -> tuple[tuple, tuple]:
        """One inbound node -> (args, kwargs)."""
        if isinstance(node, Mapping):  # Keras 3
            args = tuple(self.value(a, layer) for a in node.get("args", []))
            return args, self.kwargs(node.get("kwargs"), layer)
        if _is_ref(node):  # Keras 2 TFOpLambda: one nesting level fewer
            return (self.value(node, layer),), self.kwargs(node[3] if len(node) > 3 else {}, layer)
        refs = [r for r in node if _is_ref(r)]
        if len(refs) != len(node):
            raise KerasFormatError(f"layer {layer!r}: cannot read inbound node {node!r}")
        tensors = tuple(self.value(r, layer) for r in refs)
        kwargs = self.kwargs(refs[0][3] if refs and len(refs[0]) > 3 else {}, layer)
        return ((tensors[0],) if len(tensors) == 1 else (tensors,)), kwargs


def _tensors_in(value: Any):
    if isinstance(value, tuple):
        if value and value[0] == TENSOR:
            yield value[1]
        else:
            for item in value:
                yield from _tensors_in(item)


def _parse_functional(config: Mapping[str, Any], keras_major: int) -> GraphSpec:
    graph = _Functional(config, keras_major)
    layers = [_nested_or_layer(e, keras_major) for e in graph.entries]
    calls: dict[str, CallSpec] = {}
    for entry, layer in zip(graph.entries, layers, strict=True):
        if layer.kind == "Input":
            continue
        for k, node in enumerate(entry.get("inbound_nodes") or []):
            args, kwargs = graph.node(node, layer.name)
            calls[f"{layer.name}:{k}"] = CallSpec(f"{layer.name}:{k}", layer.name, args, kwargs)
    inputs = []
    input_shapes = []
    for ref in _io_refs(config.get("input_layers") or []):
        layer = next((x for x in layers if x.name == ref[0]), None)
        if layer is None or layer.kind != "Input":
            raise KerasFormatError(f"model {graph.name!r}: input {ref[0]!r} is not an InputLayer")
        inputs.append(f"{layer.name}:0")
        input_shapes.append(freeze(layer.cfg()["shape"]))
    outputs = tuple(graph.tensor(r[0], int(r[1]), int(r[2]), "io")
                    for r in _io_refs(config.get("output_layers") or []))
    if not inputs or not outputs:
        raise KerasFormatError(f"model {graph.name!r} has no inputs or no outputs in its config")
    order = _topological(calls, set(inputs), [o[1] for o in outputs], graph.name)
    return GraphSpec(
        name=graph.name,
        class_name="Functional",
        layers=_sanitise_modules(layers),
        calls=tuple(calls[c] for c in order),
        inputs=tuple(inputs),
        input_shapes=tuple(input_shapes),
        outputs=outputs,
    )


def _topological(calls: dict[str, CallSpec], inputs: set[str], wanted: list[str],
                 model: str) -> list[str]:
    """Calls needed for ``wanted``, dependencies first (iterative depth-first search)."""
    order: list[str] = []
    done: set[str] = set(inputs)
    active: set[str] = set()
    for root in wanted:
        stack = [(root, False)]
        while stack:
            call_id, expanded = stack.pop()
            if call_id in done:
                continue
            if expanded:
                active.discard(call_id)
                done.add(call_id)
                order.append(call_id)
                continue
            if call_id not in calls:
                raise KerasFormatError(f"model {model!r}: tensor {call_id!r} is used but no layer "
                                       "call produces it (disconnected graph)")
            if call_id in active:
                raise KerasFormatError(f"model {model!r}: the graph has a cycle at {call_id!r}")
            active.add(call_id)
            stack.append((call_id, True))
            call = calls[call_id]
            for dep in _tensors_in((call.args, call.kwargs)):
                if dep not in done:
                    if dep in active:
                        raise KerasFormatError(f"model {model!r}: the graph has a cycle at {dep!r}")
                    stack.append((dep, False))
    return order
