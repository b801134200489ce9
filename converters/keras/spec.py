"""The architecture spec: a frozen, hashable, JSON-serialisable description of a Keras graph.

The converter turns a Keras ``model_config`` into a `GraphSpec` once; the generic Flax module
(`jxai.converters.keras.module.KerasModel`) interprets it. Because the spec holds only tuples,
strings, numbers, booleans and ``None``, it can be a Flax dataclass field, a jit static argument,
and checkpoint metadata (``graph_to_json`` / ``graph_from_json``) — a saved network is rebuilt
from data alone, nothing in a file is ever executed.

Values inside ``args``/``kwargs``/``config`` use a few tagged tuples:

    ("@tensor", call_id, index)   output ``index`` of the call ``call_id`` ("layer:k")
    ("@array", values, dtype)     a constant array (nested tuples of numbers)
    ("@slice", start, stop, step) a Python slice
    ("@ellipsis",)                ``...``
    ("@dict", ((key, value), ...)) a mapping
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CallSpec",
    "GraphSpec",
    "LayerSpec",
    "freeze",
    "graph_from_json",
    "graph_to_json",
    "thaw_config",
]

TENSOR = "@tensor"
ARRAY = "@array"
SLICE = "@slice"
ELLIPSIS = "@ellipsis"
DICT = "@dict"


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One Keras layer (or a nested model, or a whitelisted op).

    Attributes:
      name: the Keras layer name (unique within its graph).
      module: the Flax submodule name (the Keras name, sanitised only if Flax cannot use it).
      kind: the converter's layer kind, e.g. ``"Dense"``, ``"Conv"``, ``"Op"``, ``"Model"``.
      class_name: the Keras class name as written in the file (``"Conv2D"``, ``"TFOpLambda"``).
      config: frozen ``((key, value), ...)`` with everything the kind needs (see `thaw_config`).
      trainable: the Keras ``trainable`` flag (it decides the legacy HDF5 weight order).
      is_layer: False for Keras-3 ``keras.ops`` entries, which are not counted as layers.
      graph: the nested graph when ``kind == "Model"``.
    """

    name: str
    module: str
    kind: str
    class_name: str
    config: tuple = ()
    trainable: bool = True
    is_layer: bool = True
    graph: GraphSpec | None = None

    def cfg(self) -> dict[str, Any]:
        return thaw_config(self.config)


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """One call of a layer: ``id`` is ``"<layer>:<k>"`` for the k-th call of that layer."""

    id: str
    layer: str
    args: tuple = ()
    kwargs: tuple = ()


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """A Keras Functional or Sequential model as layers plus calls in execution order.

    Attributes:
      name: the Keras model name.
      class_name: ``"Functional"`` or ``"Sequential"`` (``"Model"`` is read as Functional).
      layers: every layer in Keras' ``model.layers`` order (input layers included).
      calls: the calls needed for the outputs, topologically sorted.
      inputs: call ids of the input layers, in the model's input order.
      input_shapes: per-sample input shapes (``None`` for unknown sizes).
      outputs: ``("@tensor", call_id, index)`` refs, in the model's output order.
    """

    name: str
    class_name: str
    layers: tuple[LayerSpec, ...]
    calls: tuple[CallSpec, ...]
    inputs: tuple[str, ...]
    input_shapes: tuple
    outputs: tuple

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in model {self.name!r}")


# --------------------------------------------------------------------------- freezing helpers
def freeze(value: Any) -> Any:
    """Turn JSON-like data (lists, dicts, numpy values) into hashable tuples."""
    if isinstance(value, Mapping):
        return (DICT, tuple((str(k), freeze(v)) for k, v in sorted(value.items())))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return (ARRAY, freeze(value.tolist()), str(value.dtype))
    if isinstance(value, np.generic):
        return value.item()
    if value is Ellipsis:
        return (ELLIPSIS,)
    if isinstance(value, slice):
        return (SLICE, value.start, value.stop, value.step)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in an architecture spec")


def config_pairs(config: Mapping[str, Any]) -> tuple:
    """A frozen ``((key, value), ...)`` from a dict (keys sorted)."""
    return tuple((k, freeze(v)) for k, v in sorted(config.items()))


def thaw(value: Any) -> Any:
    """Inverse of `freeze` for config values: tagged dicts back to dicts, tuples stay tuples."""
    if isinstance(value, tuple):
        if value and value[0] == DICT and len(value) == 2:
            return {k: thaw(v) for k, v in value[1]}
        return tuple(thaw(v) for v in value)
    return value


def thaw_config(config: tuple) -> dict[str, Any]:
    return {k: thaw(v) for k, v in config}


# ------------------------------------------------------------------------------------- JSON
def _layer_to_json(layer: LayerSpec) -> dict:
    out = {
        "name": layer.name,
        "module": layer.module,
        "kind": layer.kind,
        "class_name": layer.class_name,
        "config": [list(pair) for pair in layer.config],
        "trainable": layer.trainable,
        "is_layer": layer.is_layer,
    }
    if layer.graph is not None:
        out["graph"] = graph_to_dict(layer.graph)
    return out


def graph_to_dict(graph: GraphSpec) -> dict:
    return {
        "name": graph.name,
        "class_name": graph.class_name,
        "layers": [_layer_to_json(layer) for layer in graph.layers],
        "calls": [
            {"id": c.id, "layer": c.layer, "args": c.args, "kwargs": c.kwargs} for c in graph.calls
        ],
        "inputs": list(graph.inputs),
        "input_shapes": graph.input_shapes,
        "outputs": graph.outputs,
    }


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (the spec never holds lists)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def graph_from_dict(data: Mapping[str, Any]) -> GraphSpec:
    try:
        layers = tuple(
            LayerSpec(
                name=item["name"],
                module=item["module"],
                kind=item["kind"],
                class_name=item["class_name"],
                config=tuple((k, _tuples(v)) for k, v in item["config"]),
                trainable=bool(item["trainable"]),
                is_layer=bool(item["is_layer"]),
                graph=graph_from_dict(item["graph"]) if item.get("graph") else None,
            )
            for item in data["layers"]
        )
        calls = tuple(
            CallSpec(c["id"], c["layer"], _tuples(c["args"]), _tuples(c["kwargs"]))
            for c in data["calls"]
        )
        return GraphSpec(
            name=data["name"],
            class_name=data["class_name"],
            layers=layers,
            calls=calls,
            inputs=tuple(data["inputs"]),
            input_shapes=_tuples(data["input_shapes"]),
            outputs=_tuples(data["outputs"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed architecture spec: {exc!r}") from exc


def graph_to_json(graph: GraphSpec) -> str:
    """The spec as JSON text (`graph_from_json` restores an equal, hashable spec)."""
    return json.dumps(graph_to_dict(graph), allow_nan=True)


def graph_from_json(text: str) -> GraphSpec:
    return graph_from_dict(json.loads(text))
