"""`KerasModel`: one generic Flax module that runs any converted Keras graph.

The module holds only its `GraphSpec` (frozen data), so it is rebuilt from checkpoint metadata
without executing anything. Weighted layers are *stock* Flax layers named after the Keras layer
(``nn.Dense``, ``nn.Conv``, ``nn.ConvTranspose``, ``nn.BatchNorm``, ``nn.LayerNorm``); activations,
pooling and residual adds are the `jxai.layers` modules — the modules the LRP engine intercepts.
A Dense/Conv with ``activation="relu"`` becomes the linear module ``<name>`` followed by
``jxai.layers.Activation`` named ``<name>_activation``. Nested Keras models are nested
`KerasModel` submodules, so module paths read ``"conv_base/block1_conv1"``.

Forward semantics are Keras' (inference mode): BatchNorm uses its moving statistics, Dropout is
the identity, average pooling excludes padding, transposed convolutions honour ``output_padding``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jxai.converters.keras.ops import run_op
from jxai.converters.keras.spec import ARRAY, DICT, ELLIPSIS, SLICE, TENSOR, GraphSpec, LayerSpec

from jxai import layers as jl

__all__ = ["KerasModel", "activation_module_name", "depthwise_module_name"]


def activation_module_name(layer: LayerSpec) -> str:
    return f"{layer.module}_activation"


def depthwise_module_name(layer: LayerSpec) -> str:
    return f"{layer.module}_depthwise"


def _materialise(value: Any, env: Mapping[str, list]) -> Any:
    if isinstance(value, tuple):
        if value and value[0] == TENSOR:
            return env[value[1]][value[2]]
        if value and value[0] == ARRAY:
            return jnp.asarray(np.asarray(value[1], dtype=np.float64), dtype=jnp.float32)
        if value and value[0] == ELLIPSIS:
            return Ellipsis
        if value and value[0] == SLICE:
            return slice(*(_materialise(v, env) for v in value[1:]))
        if value and value[0] == DICT and len(value) == 2:
            return {k: _materialise(v, env) for k, v in value[1]}
        return [_materialise(v, env) for v in value]
    return value


def _const(value: Any) -> jax.Array:
    return jnp.asarray(np.asarray(value, dtype=np.float64), dtype=jnp.float32)


def _transpose_padding(cfg: Mapping[str, Any]):
    """Explicit lax padding for a Keras transposed conv with ``output_padding`` (research §6).

    With effective kernel k' = (k-1)·d + 1 and output padding o per spatial axis:
    valid -> (k'-1, k'-1+o); same -> L = k' + k'%2 - 2 + o, lo = min(ceil(L/2), k'-1), hi = L-lo.
    """
    pads = []
    for k, d, o in zip(cfg["kernel_size"], cfg["dilation"], cfg["output_padding"], strict=True):
        k_eff = (k - 1) * d + 1
        if cfg["padding"] == "valid":
            pads.append((k_eff - 1, k_eff - 1 + o))
        else:
            total = k_eff + k_eff % 2 - 2 + o
            lo = min(-(-total // 2), k_eff - 1)
            pads.append((lo, total - lo))
    return tuple(pads)


def _upsample(x, cfg):
    size = cfg["size"]
    if cfg["interpolation"] == "nearest":
        for axis, factor in enumerate(size, start=1):
            x = jnp.repeat(x, factor, axis=axis)
        return x
    shape = (x.shape[0], *(n * f for n, f in zip(x.shape[1:-1], size, strict=True)), x.shape[-1])
    return jax.image.resize(x, shape, method="bilinear")


def _normalization(x, cfg):
    """Keras Normalization: (x - mean) / max(sqrt(var), 1e-7); ``invert``: x·sqrt(var) + mean."""
    axis = tuple(a % x.ndim for a in cfg["axis"])
    shape = [x.shape[a] if a in axis else 1 for a in range(x.ndim)]
    mean = jnp.reshape(_const(cfg["mean"]), shape)
    variance = jnp.reshape(_const(cfg["variance"]), shape)
    if cfg["invert"]:
        return mean + x * jnp.maximum(jnp.sqrt(variance), 1e-7)
    return (x - mean) / jnp.maximum(jnp.sqrt(variance), 1e-7)


def _pure(kind: str, cfg: Mapping[str, Any], args: list, kwargs: dict):
    """Layers without parameters that are plain array functions (no module needed)."""
    x = args[0]
    if kind == "Identity":
        return x
    if kind == "Flatten":
        if cfg["channels_first"] and x.ndim > 2:
            x = jnp.moveaxis(x, 1, -1)
        return jnp.reshape(x, (x.shape[0], -1))
    if kind == "Reshape":
        return jnp.reshape(x, (x.shape[0], *cfg["target_shape"]))
    if kind == "Permute":
        return jnp.transpose(x, (0, *cfg["dims"]))
    if kind == "UpSampling":
        return _upsample(x, cfg)
    if kind == "ZeroPadding":
        return jnp.pad(x, ((0, 0), *cfg["padding"], (0, 0)))
    if kind == "Cropping":
        index = tuple(slice(lo, n - hi) for (lo, hi), n in zip(cfg["cropping"], x.shape[1:-1],
                                                               strict=True))
        return x[(slice(None), *index, slice(None))]
    if kind == "Rescaling":
        return x * _const(cfg["scale"]) + _const(cfg["offset"])
    if kind == "Normalization":
        return _normalization(x, cfg)
    if kind == "Subtract":
        return x[0] - x[1]
    if kind == "Multiply":
        out = x[0]
        for y in x[1:]:
            out = out * y
        return out
    if kind == "Average":
        return sum(x[1:], x[0]) / len(x)
    if kind == "Maximum":
        out = x[0]
        for y in x[1:]:
            out = jnp.maximum(out, y)
        return out
    if kind == "Minimum":
        out = x[0]
        for y in x[1:]:
            out = jnp.minimum(out, y)
        return out
    if kind == "Concatenate":
        return jnp.concatenate(list(x), axis=cfg["axis"])
    if kind == "Op":
        return run_op(cfg["op"], args, kwargs, cfg["static"])
    raise NotImplementedError(f"layer kind {kind!r}")


class KerasModel(nn.Module):
    """A converted Keras model: interprets ``graph`` with stock Flax layers.

    Call with one array per model input (``model.apply(v, x)`` or ``model.apply(v, x1, x2)``;
    a single tuple/list of arrays works too). Returns one array, or a tuple for several outputs.
    """

    graph: GraphSpec
    capture: bool = False  # sow every call's output into the "keras_outputs" collection

    def _module(self, layer: LayerSpec) -> tuple:
        """The Flax submodule(s) of a weighted/intercepted layer (built once, shared by calls)."""
        cfg = layer.cfg()
        kind, name = layer.kind, layer.module
        if kind == "Dense":
            main = nn.Dense(cfg["units"], use_bias=cfg["use_bias"], name=name)
        elif kind == "Conv":
            padding = cfg["padding"].upper()
            main = nn.Conv(cfg["filters"], cfg["kernel_size"], strides=cfg["strides"],
                           padding=padding, kernel_dilation=cfg["dilation"],
                           feature_group_count=cfg["groups"], use_bias=cfg["use_bias"], name=name)
        elif kind == "ConvTranspose":
            padding = (cfg["padding"].upper() if cfg["output_padding"] is None
                       else _transpose_padding(cfg))
            main = nn.ConvTranspose(cfg["filters"], cfg["kernel_size"], strides=cfg["strides"],
                                    padding=padding, kernel_dilation=cfg["dilation"],
                                    use_bias=cfg["use_bias"], transpose_kernel=True, name=name)
        elif kind in ("DepthwiseConv", "SeparableConv"):
            main = None  # needs the input channel count: built in _call_layer
        elif kind == "BatchNorm":
            main = nn.BatchNorm(use_running_average=True, axis=cfg["axis"],
                                epsilon=cfg["epsilon"], use_bias=cfg["center"],
                                use_scale=cfg["scale"], name=name)
        elif kind == "LayerNorm":
            main = nn.LayerNorm(epsilon=cfg["epsilon"], use_bias=cfg["center"],
                                use_scale=cfg["scale"], reduction_axes=cfg["axis"],
                                feature_axes=cfg["axis"], use_fast_variance=False, name=name)
        elif kind == "Activation":
            main = jl.Activation(function=cfg["function"], alpha=cfg["alpha"],
                                 max_value=cfg["max_value"], threshold=cfg["threshold"],
                                 axis=cfg["axis"], name=name)
        elif kind in ("MaxPool", "AvgPool"):
            cls = jl.MaxPool if kind == "MaxPool" else jl.AvgPool
            main = cls(window=cfg["pool"], strides=cfg["strides"],
                       padding=cfg["padding"].upper(), name=name)
        elif kind == "GlobalAvgPool":
            main = jl.GlobalAvgPool(keepdims=cfg["keepdims"], name=name)
        elif kind == "GlobalMaxPool":
            main = jl.GlobalMaxPool(keepdims=cfg["keepdims"], name=name)
        elif kind == "Add":
            main = jl.Sum(name=name)
        elif kind == "Model":
            main = KerasModel(graph=layer.graph, capture=self.capture, name=name)
        else:
            return ()
        activation = None
        if cfg.get("activation", "linear") != "linear":
            activation = jl.Activation(function=cfg["activation"], alpha=cfg.get("alpha"),
                                       name=activation_module_name(layer))
        return main, activation

    def _depthwise(self, layer: LayerSpec, channels: int):
        cfg = layer.cfg()
        separable = layer.kind == "SeparableConv"
        depthwise = nn.Conv(
            channels * cfg["depth_multiplier"], cfg["kernel_size"], strides=cfg["strides"],
            padding=cfg["padding"].upper(), kernel_dilation=cfg["dilation"],
            feature_group_count=channels, use_bias=cfg["use_bias"] and not separable,
            name=depthwise_module_name(layer) if separable else layer.module)
        if not separable:
            return (depthwise,)
        pointwise = nn.Conv(cfg["filters"], (1,) * cfg["rank"], padding="VALID",
                            use_bias=cfg["use_bias"], name=layer.module)
        return depthwise, pointwise

    @nn.compact
    def __call__(self, *inputs):
        graph = self.graph
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            by_name = inputs[0]
            inputs = tuple(by_name[c.rsplit(":", 1)[0]] for c in graph.inputs)
        if len(inputs) != len(graph.inputs):
            raise ValueError(f"model {graph.name!r} takes {len(graph.inputs)} input(s) "
                             f"({', '.join(c.rsplit(':', 1)[0] for c in graph.inputs)}), "
                             f"got {len(inputs)}")
        env: dict[str, list] = {}
        for call_id, x in zip(graph.inputs, inputs, strict=True):
            env[call_id] = [jnp.asarray(x, dtype=jnp.float32)]
        by_layer = {layer.name: layer for layer in graph.layers}
        built: dict[str, tuple] = {}
        for call in graph.calls:
            layer = by_layer[call.layer]
            args = _materialise(call.args, env)
            kwargs = dict(_materialise(call.kwargs, env))
            out = self._call_layer(layer, built, args, kwargs)
            env[call.id] = list(out) if isinstance(out, (list, tuple)) else [out]
            if self.capture:
                self.sow("keras_outputs", call.id, env[call.id])
        outputs = [env[ref[1]][ref[2]] for ref in graph.outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _call_layer(self, layer: LayerSpec, built: dict, args: list, kwargs: dict):
        kind = layer.kind
        if kind in ("DepthwiseConv", "SeparableConv"):
            if layer.name not in built:
                activation = self._module(layer)[1]
                built[layer.name] = (self._depthwise(layer, args[0].shape[-1]), activation)
            convs, activation = built[layer.name]
            x = args[0]
            for conv in convs:
                x = conv(x)
            return activation(x) if activation is not None else x
        if layer.name not in built:
            built[layer.name] = self._module(layer)
        modules = built[layer.name]
        if not modules:
            return _pure(kind, layer.cfg(), args, kwargs)
        main, activation = modules
        if kind == "Add":
            x = main(*args[0])
        elif kind == "Model":
            first = args[0]
            x = main(*first) if isinstance(first, list) else main(first)
        else:
            x = main(args[0])
        return activation(x) if activation is not None else x
