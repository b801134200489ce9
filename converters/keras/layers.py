"""Per-layer mapping: a Keras layer config -> a converter layer kind with normalised settings.

Each supported Keras class is normalised into one *kind* (``Dense``, ``Conv``, ``ConvTranspose``,
``BatchNorm``, ``Activation`` ...) whose config holds exactly what the Flax side needs, with the
Keras defaults made explicit (the traps are listed in ``shared/research/keras-formats.md`` §6 and
§10: epsilon defaults, pooling strides, transposed-conv output padding, activation variants that
changed between Keras 2 and 3). `weight_layout` gives the Keras weight order of each kind.

Anything not in the allowlist — ``Lambda``, custom classes, RNNs — is refused with an error that
names the layer, its class and what to do; nothing in a config is ever executed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jxai.converters.keras.errors import UnsupportedLayerError
from jxai.converters.keras.spec import LayerSpec, config_pairs

from jxai.layers import ACTIVATIONS

__all__ = ["activation_of", "convert_layer", "weight_layout", "MODEL_CLASSES"]

MODEL_CLASSES = {"Functional", "Model", "Sequential"}

IDENTITY_CLASSES = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization",
}
MERGE_CLASSES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}

_FIX_LAMBDA = (
    "Lambda layers hold Python bytecode, which jxai never runs. Replace the Lambda by built-in "
    "Keras layers and re-save, or rebuild the model as a Flax module (see jxai.models) and load "
    "its weights with jxai.converters.keras.load_weights."
)


def _tuple(value: Any, rank: int, what: str, layer: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) == 1 and rank > 1:
        value = value * rank
    if len(value) != rank:
        raise ValueError(f"layer {layer!r}: {what}={value} does not have {rank} entries")
    return value


def _padding(value: str, layer: str) -> str:
    value = str(value).lower()
    if value not in ("same", "valid", "causal"):
        raise UnsupportedLayerError(f"layer {layer!r}: padding={value!r} is not supported")
    return value


def _channels_last(cfg: Mapping[str, Any], layer: str, class_name: str) -> None:
    data_format = cfg.get("data_format") or "channels_last"
    if data_format != "channels_last":
        raise UnsupportedLayerError(
            f"layer {layer!r} ({class_name}) uses data_format={data_format!r}; jxai converts "
            "channels_last models only. Rebuild the model with channels_last layers (the weights "
            "are the same) and re-save it."
        )


def activation_of(value: Any, keras_major: int, layer: str) -> tuple[str, float | None]:
    """Keras activation (string or serialised function) -> (jxai.layers.ACTIVATIONS name, alpha).

    ``hard_sigmoid`` is ``clip(0.2x+0.5, 0, 1)`` in Keras 2 and ``relu6(x+3)/6`` in Keras 3, so the
    name depends on the Keras version that wrote the file.
    """
    if value is None:
        return "linear", None
    if isinstance(value, Mapping):  # Keras 3 may serialise {"class_name": "function", "config": n}
        inner = value.get("config")
        if isinstance(inner, str):
            value = inner
        elif isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
            value = inner["name"]
        else:
            raise UnsupportedLayerError(
                f"layer {layer!r}: activation {value!r} is not a built-in Keras activation name; "
                "only built-in activations can be converted."
            )
    name = str(value)
    if name == "hard_sigmoid" and keras_major < 3:
        name = "hard_sigmoid_keras2"
    if name not in ACTIVATIONS:
        raise UnsupportedLayerError(
            f"layer {layer!r}: activation {value!r} is not supported; known: "
            f"{', '.join(sorted(ACTIVATIONS))}."
        )
    return name, None


def _pairs(value: Any, rank: int, layer: str) -> tuple[tuple[int, int], ...]:
    """Keras padding/cropping (int, (a, b) per dim, or ((lo, hi), ...)) -> ((lo, hi), ...)."""
    if isinstance(value, int):
        return ((value, value),) * rank
    value = list(value)
    if rank == 1 and len(value) == 2 and all(isinstance(v, int) for v in value):
        return ((int(value[0]), int(value[1])),)
    if len(value) != rank:
        raise ValueError(f"layer {layer!r}: padding/cropping {value} does not have {rank} entries")
    out = []
    for item in value:
        if isinstance(item, int):
            out.append((item, item))
        else:
            lo, hi = item
            out.append((int(lo), int(hi)))
    return tuple(out)


def _conv_rank(class_name: str) -> int:
    match = re.search(r"(\d)D", class_name)
    return int(match.group(1)) if match else 2


def _activation_cfg(cfg, keras_major, name):
    function, alpha = activation_of(cfg.get("activation", "linear"), keras_major, name)
    return {"activation": function, "alpha": alpha}


def convert_layer(entry: Mapping[str, Any], keras_major: int) -> LayerSpec:
    """A Keras layer entry (``{"class_name", "config", ...}``) -> `LayerSpec` (no nested graph).

    Nested models (``Functional``/``Sequential``) are handled by `graph.parse_model`.
    """
    class_name = entry.get("class_name")
    cfg = entry.get("config") or {}
    if not isinstance(cfg, Mapping):
        cfg = {}
    name = str(cfg.get("name") or entry.get("name") or class_name)
    trainable = bool(cfg.get("trainable", True))
    spec = _convert(class_name, cfg, name, keras_major, entry)
    kind, config = spec
    return LayerSpec(name=name, module=name, kind=kind, class_name=str(class_name),
                     config=config_pairs(config), trainable=trainable)


def _convert(class_name, cfg, name, keras_major, entry) -> tuple[str, dict]:
    if class_name == "InputLayer":
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape is None and cfg.get("shape") is not None:
            shape = [None, *cfg["shape"]]
        if shape is None:
            raise ValueError(f"input layer {name!r} has no shape in its config")
        return "Input", {"shape": list(shape[1:]), "dtype": _dtype(cfg.get("dtype"))}
    if class_name == "Dense":
        for key in ("quantization_config", "lora_rank"):
            if cfg.get(key):
                raise UnsupportedLayerError(
                    f"layer {name!r} (Dense) uses {key}={cfg[key]!r}; quantised and LoRA layers "
                    "are not supported. Merge the LoRA weights / dequantise in Keras and re-save."
                )
        return "Dense", {"units": int(cfg["units"]), "use_bias": bool(cfg.get("use_bias", True)),
                         **_activation_cfg(cfg, keras_major, name)}
    if class_name in ("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D",
                      "Convolution3D"):
        _channels_last(cfg, name, class_name)
        rank = _conv_rank(class_name)
        return "Conv", {
            "rank": rank, "filters": int(cfg["filters"]),
            "kernel_size": _tuple(cfg["kernel_size"], rank, "kernel_size", name),
            "strides": _tuple(cfg.get("strides", 1), rank, "strides", name),
            "padding": _padding(cfg.get("padding", "valid"), name),
            "dilation": _tuple(cfg.get("dilation_rate", 1), rank, "dilation_rate", name),
            "groups": int(cfg.get("groups", 1) or 1), "use_bias": bool(cfg.get("use_bias", True)),
            **_activation_cfg(cfg, keras_major, name)}
    if class_name in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                      "Convolution2DTranspose", "Deconvolution2D"):
        _channels_last(cfg, name, class_name)
        rank = _conv_rank(class_name)
        output_padding = cfg.get("output_padding")
        return "ConvTranspose", {
            "rank": rank, "filters": int(cfg["filters"]),
            "kernel_size": _tuple(cfg["kernel_size"], rank, "kernel_size", name),
            "strides": _tuple(cfg.get("strides", 1), rank, "strides", name),
            "padding": _padding(cfg.get("padding", "valid"), name),
            "dilation": _tuple(cfg.get("dilation_rate", 1) or 1, rank, "dilation_rate", name),
            "output_padding": (None if output_padding is None
                               else _tuple(output_padding, rank, "output_padding", name)),
            "use_bias": bool(cfg.get("use_bias", True)),
            **_activation_cfg(cfg, keras_major, name)}
    if class_name in ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
                      "SeparableConvolution2D"):
        _channels_last(cfg, name, class_name)
        rank = _conv_rank(class_name)
        out = {
            "rank": rank, "kernel_size": _tuple(cfg["kernel_size"], rank, "kernel_size", name),
            "strides": _tuple(cfg.get("strides", 1), rank, "strides", name),
            "padding": _padding(cfg.get("padding", "valid"), name),
            "dilation": _tuple(cfg.get("dilation_rate", 1), rank, "dilation_rate", name),
            "depth_multiplier": int(cfg.get("depth_multiplier", 1)),
            "use_bias": bool(cfg.get("use_bias", True)),
            **_activation_cfg(cfg, keras_major, name)}
        if class_name.startswith("Separable"):
            out["filters"] = int(cfg["filters"])
            return "SeparableConv", out
        return "DepthwiseConv", out
    if class_name in ("BatchNormalization", "BatchNormalizationV1", "BatchNormalizationV2",
                      "SyncBatchNormalization"):
        if cfg.get("renorm"):
            raise UnsupportedLayerError(f"layer {name!r}: BatchNormalization(renorm=True) is not "
                                        "supported; inference with renorm uses extra statistics.")
        axis = cfg.get("axis", -1)
        axis = axis if isinstance(axis, int) else (axis[0] if len(axis) == 1 else tuple(axis))
        return "BatchNorm", {"axis": axis, "epsilon": float(cfg.get("epsilon", 1e-3)),
                             "center": bool(cfg.get("center", True)),
                             "scale": bool(cfg.get("scale", True))}
    if class_name == "LayerNormalization":
        if cfg.get("rms_scaling"):
            raise UnsupportedLayerError(f"layer {name!r}: LayerNormalization(rms_scaling=True) "
                                        "is not supported.")
        axis = cfg.get("axis", -1)
        axis = (axis,) if isinstance(axis, int) else tuple(axis)
        return "LayerNorm", {"axis": axis, "epsilon": float(cfg.get("epsilon", 1e-3)),
                             "center": bool(cfg.get("center", True)),
                             "scale": bool(cfg.get("scale", True))}
    if class_name == "Activation":
        function, alpha = activation_of(cfg.get("activation"), keras_major, name)
        return "Activation", {"function": function, "alpha": alpha, "max_value": None,
                              "threshold": 0.0, "axis": -1}
    if class_name == "ReLU":
        slope = cfg.get("negative_slope", 0.0) or 0.0
        max_value = cfg.get("max_value")
        return "Activation", {"function": "relu", "alpha": float(slope),
                              "max_value": None if max_value is None else float(max_value),
                              "threshold": float(cfg.get("threshold", 0.0) or 0.0), "axis": -1}
    if class_name == "LeakyReLU":
        slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        return "Activation", {"function": "leaky_relu", "alpha": float(slope), "max_value": None,
                              "threshold": 0.0, "axis": -1}
    if class_name == "ELU":
        return "Activation", {"function": "elu", "alpha": float(cfg.get("alpha", 1.0)),
                              "max_value": None, "threshold": 0.0, "axis": -1}
    if class_name == "Softmax":
        axis = cfg.get("axis", -1)
        if not isinstance(axis, int):
            if len(axis) != 1:
                raise UnsupportedLayerError(f"layer {name!r}: Softmax over several axes {axis}")
            axis = int(axis[0])
        return "Activation", {"function": "softmax", "alpha": None, "max_value": None,
                              "threshold": 0.0, "axis": axis}
    if class_name in ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
                      "AveragePooling2D", "AveragePooling3D", "MaxPool1D", "MaxPool2D",
                      "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D"):
        _channels_last(cfg, name, class_name)
        rank = _conv_rank(class_name)
        pool = _tuple(cfg.get("pool_size", 2), rank, "pool_size", name)
        strides = cfg.get("strides")
        strides = pool if strides is None else _tuple(strides, rank, "strides", name)
        kind = "MaxPool" if class_name.startswith("Max") else "AvgPool"
        return kind, {"pool": pool, "strides": strides,
                      "padding": _padding(cfg.get("padding", "valid"), name)}
    if class_name.startswith(("GlobalAveragePooling", "GlobalMaxPooling", "GlobalAvgPool",
                              "GlobalMaxPool")):
        _channels_last(cfg, name, class_name)
        kind = "GlobalMaxPool" if "Max" in class_name else "GlobalAvgPool"
        return kind, {"keepdims": bool(cfg.get("keepdims", False))}
    if class_name == "Flatten":
        return "Flatten", {"channels_first": (cfg.get("data_format") or "channels_last")
                           == "channels_first"}
    if class_name == "Reshape":
        return "Reshape", {"target_shape": tuple(int(v) for v in cfg["target_shape"])}
    if class_name == "Permute":
        return "Permute", {"dims": tuple(int(v) for v in cfg["dims"])}
    if class_name in IDENTITY_CLASSES:
        return "Identity", {}
    if class_name in MERGE_CLASSES:
        return class_name, {"axis": int(cfg.get("axis", -1))} if class_name == "Concatenate" else {}
    if class_name in ("UpSampling1D", "UpSampling2D", "UpSampling3D"):
        _channels_last(cfg, name, class_name)
        rank = _conv_rank(class_name)
        size = cfg.get("size", 2)
        interpolation = cfg.get("interpolation", "nearest")
        if interpolation not in ("nearest", "bilinear"):
            raise UnsupportedLayerError(f"layer {name!r}: UpSampling interpolation "
                                        f"{interpolation!r} is not supported (nearest, bilinear)")
        return "UpSampling", {"size": _tuple(size, rank, "size", name),
                              "interpolation": interpolation}
    if class_name in ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D"):
        _channels_last(cfg, name, class_name)
        return "ZeroPadding", {"padding": _pairs(cfg.get("padding", 1), _conv_rank(class_name),
                                                 name)}
    if class_name in ("Cropping1D", "Cropping2D", "Cropping3D"):
        _channels_last(cfg, name, class_name)
        return "Cropping", {"cropping": _pairs(cfg.get("cropping", 1), _conv_rank(class_name),
                                               name)}
    if class_name == "Rescaling":
        return "Rescaling", {"scale": cfg.get("scale", 1.0), "offset": cfg.get("offset", 0.0)}
    if class_name == "Normalization":
        axis = cfg.get("axis", -1)
        axis = () if axis is None else ((axis,) if isinstance(axis, int) else tuple(axis))
        return "Normalization", {"axis": axis, "invert": bool(cfg.get("invert", False)),
                                 "mean": cfg.get("mean"), "variance": cfg.get("variance")}
    raise _refuse(class_name, name, entry)


def _dtype(value: Any) -> str:
    if isinstance(value, Mapping):
        value = (value.get("config") or {}).get("name", "float32")
    return str(value or "float32")


def _refuse(class_name: str, name: str, entry: Mapping[str, Any]) -> UnsupportedLayerError:
    if class_name == "Lambda":
        return UnsupportedLayerError(f"layer {name!r} is a Lambda layer. {_FIX_LAMBDA}")
    registered = entry.get("registered_name")
    module = entry.get("module")
    custom = ">" in str(class_name) or (registered and ">" in str(registered))
    if custom or (module and not str(module).startswith("keras")):
        return UnsupportedLayerError(
            f"layer {name!r} has the custom class {class_name!r} (registered as {registered!r}, "
            f"module {module!r}); jxai never imports code named in a model file. Write the layer "
            "as a Flax module (a jxai.models-style network) and load the weights with "
            "jxai.converters.keras.load_weights, or replace it by built-in Keras layers."
        )
    return UnsupportedLayerError(
        f"layer {name!r} has class {class_name!r}, which the Keras converter does not support "
        "(supported: Dense, Conv*, Conv*Transpose, DepthwiseConv*, SeparableConv*, "
        "BatchNormalization, LayerNormalization, pooling, merging, reshaping, activation and "
        "preprocessing layers). If it is a custom class, rebuild the network as a Flax module "
        "and use jxai.converters.keras.load_weights."
    )


def weight_layout(layer: LayerSpec) -> list[tuple[str, bool]]:
    """The Keras weights of a layer in stored order, as (name, trainable-by-default)."""
    cfg = layer.cfg()
    kind = layer.kind
    if kind in ("Dense", "Conv", "ConvTranspose", "DepthwiseConv"):
        return [("kernel", True)] + ([("bias", True)] if cfg["use_bias"] else [])
    if kind == "SeparableConv":
        return ([("depthwise_kernel", True), ("pointwise_kernel", True)]
                + ([("bias", True)] if cfg["use_bias"] else []))
    if kind == "BatchNorm":
        out = [("gamma", True)] if cfg["scale"] else []
        out += [("beta", True)] if cfg["center"] else []
        return out + [("moving_mean", False), ("moving_variance", False)]
    if kind == "LayerNorm":
        return ([("gamma", True)] if cfg["scale"] else []) + (
            [("beta", True)] if cfg["center"] else [])
    if kind == "Normalization" and cfg["mean"] is None:
        return [("mean", False), ("variance", False), ("count", False)]
    return []
