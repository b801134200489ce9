"""Whitelisted tensor operations that Keras records inside a model graph.

Two kinds of graph entries are operations rather than layers:

* tf.keras 2.x ``TFOpLambda`` / ``SlicingOpLambda`` layers: a TF function *name*
  (``"nn.bias_add"``, ``"math.truediv"``, ``"__operators__.getitem"`` ...) plus its keyword
  arguments. ``keras.applications.*.preprocess_input`` called on a symbolic tensor leaves these in
  the model (caffe: getitem ``[..., ::-1]`` + bias_add of minus the ImageNet mean; tf: truediv +
  subtract; torch: truediv, bias_add, truediv).
* Keras 3 ``keras.ops`` entries (module ``keras.src.ops.*``): ``GetItem``, ``Stack``, ``Add``,
  ``TrueDivide``, ... with positional ``args``.

Both are interpreted from an allowlist of names with `jax.numpy` equivalents; a name outside the
list is refused with the layer name. Elementwise activations (``nn.relu``, ``Sigmoid`` ...) become
``Activation`` layers so LRP rules can attach to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from jxai.converters.keras.errors import UnsupportedLayerError

__all__ = ["OPS", "is_keras3_op", "op_layer", "run_op"]


def _array(value):
    """Constants arrive as Python numbers or (nested) lists; tensors pass through."""
    if isinstance(value, (list, tuple)):
        return jnp.asarray(value, dtype=jnp.float32)
    return value


def _operands(args, kwargs, key="y"):
    x = _array(args[0])
    y = _array(args[1] if len(args) > 1 else kwargs[key])
    return x, y


def _bias_add(args, kwargs, config):
    x, bias = _operands(args, kwargs, "bias")
    data_format = kwargs.get("data_format") or "NHWC"
    if str(data_format).startswith("NC"):
        bias = jnp.reshape(bias, (-1,) + (1,) * (x.ndim - 2))
    return x + bias


def _index(key):
    if isinstance(key, list):
        return tuple(_index(k) for k in key)
    return key


def _getitem(args, kwargs, config):
    x = args[0]
    key = args[1] if len(args) > 1 else kwargs["slice_spec"]
    key = _index(key)
    return x[key if isinstance(key, tuple) else (key,)]


def _values(args, kwargs):
    values = args[0] if args else kwargs["values"]
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _axis_arg(args, kwargs, config, index=1, default=None):
    if "axis" in kwargs:
        return kwargs["axis"]
    if "axis" in config:
        return config["axis"]
    return args[index] if len(args) > index else default


def _reduce(fn):
    def run(args, kwargs, config):
        axis = _axis_arg(args, kwargs, config)
        axis = tuple(axis) if isinstance(axis, list) else axis
        keepdims = bool(kwargs.get("keepdims", config.get("keepdims", False)))
        return fn(args[0], axis=axis, keepdims=keepdims)

    return run


def _reshape(args, kwargs, config):
    shape = kwargs.get("shape", config.get("newshape", config.get("shape")))
    if shape is None:
        shape = args[1]
    return jnp.reshape(args[0], tuple(shape))


def _transpose(args, kwargs, config):
    perm = kwargs.get("perm", config.get("axes"))
    if perm is None and len(args) > 1:
        perm = args[1]
    return jnp.transpose(args[0], None if perm is None else tuple(perm))


def _cast(args, kwargs, config):
    dtype = kwargs.get("dtype", config.get("dtype", "float32"))
    if dtype not in ("float32", "float64", "float16"):
        raise UnsupportedLayerError(f"cast to {dtype!r} is not supported")
    return args[0].astype(jnp.float32)


# canonical name -> f(args, kwargs, config)
OPS = {
    "add": lambda a, k, c: jnp.add(*_operands(a, k)),
    "subtract": lambda a, k, c: jnp.subtract(*_operands(a, k)),
    "multiply": lambda a, k, c: jnp.multiply(*_operands(a, k)),
    "divide": lambda a, k, c: jnp.true_divide(*_operands(a, k)),
    "maximum": lambda a, k, c: jnp.maximum(*_operands(a, k)),
    "minimum": lambda a, k, c: jnp.minimum(*_operands(a, k)),
    "negative": lambda a, k, c: -a[0],
    "square": lambda a, k, c: jnp.square(a[0]),
    "sqrt": lambda a, k, c: jnp.sqrt(a[0]),
    "bias_add": _bias_add,
    "getitem": _getitem,
    "concatenate": lambda a, k, c: jnp.concatenate(_values(a, k), axis=_axis_arg(a, k, c, 1, 0)),
    "stack": lambda a, k, c: jnp.stack(_values(a, k), axis=_axis_arg(a, k, c, 1, 0)),
    "mean": _reduce(jnp.mean),
    "sum": _reduce(jnp.sum),
    "max": _reduce(jnp.max),
    "min": _reduce(jnp.min),
    "reshape": _reshape,
    "transpose": _transpose,
    "expand_dims": lambda a, k, c: jnp.expand_dims(a[0], _axis_arg(a, k, c)),
    "squeeze": lambda a, k, c: jnp.squeeze(a[0], _axis_arg(a, k, c)),
    "cast": _cast,
    "identity": lambda a, k, c: a[0],
}

# tf.keras 2.x TFOpLambda "function" -> canonical op (or ("activation", name))
TF_FUNCTIONS = {
    "__operators__.add": "add", "math.add": "add", "math.add_n": None,
    "__operators__.sub": "subtract", "math.subtract": "subtract",
    "__operators__.mul": "multiply", "math.multiply": "multiply",
    "__operators__.truediv": "divide", "math.truediv": "divide", "math.divide": "divide",
    "math.maximum": "maximum", "math.minimum": "minimum", "math.negative": "negative",
    "math.square": "square", "math.sqrt": "sqrt",
    "nn.bias_add": "bias_add", "__operators__.getitem": "getitem",
    "concat": "concatenate", "stack": "stack",
    "math.reduce_mean": "mean", "math.reduce_sum": "sum", "math.reduce_max": "max",
    "math.reduce_min": "min", "reshape": "reshape", "transpose": "transpose",
    "compat.v1.transpose": "transpose", "expand_dims": "expand_dims", "squeeze": "squeeze",
    "cast": "cast", "identity": "identity",
    "nn.relu": ("activation", "relu"), "nn.relu6": ("activation", "relu6"),
    "math.sigmoid": ("activation", "sigmoid"), "nn.sigmoid": ("activation", "sigmoid"),
    "math.tanh": ("activation", "tanh"), "nn.tanh": ("activation", "tanh"),
    "nn.softmax": ("activation", "softmax"), "nn.silu": ("activation", "silu"),
    "nn.swish": ("activation", "silu"), "nn.elu": ("activation", "elu"),
    "nn.softplus": ("activation", "softplus"), "math.exp": ("activation", "exponential"),
}

# Keras 3 keras.ops class -> canonical op (or ("activation", name))
KERAS3_OPS = {
    "Add": "add", "Subtract": "subtract", "Multiply": "multiply", "TrueDivide": "divide",
    "Divide": "divide", "Maximum": "maximum", "Minimum": "minimum", "Negative": "negative",
    "Square": "square", "Sqrt": "sqrt", "GetItem": "getitem", "Concatenate": "concatenate",
    "Stack": "stack", "Mean": "mean", "Sum": "sum", "Max": "max", "Min": "min",
    "Reshape": "reshape", "Transpose": "transpose", "ExpandDims": "expand_dims",
    "Squeeze": "squeeze", "Cast": "cast",
    "Relu": ("activation", "relu"), "Relu6": ("activation", "relu6"),
    "Sigmoid": ("activation", "sigmoid"), "Tanh": ("activation", "tanh"),
    "Softmax": ("activation", "softmax"), "Silu": ("activation", "silu"),
    "Gelu": ("activation", "gelu"), "Elu": ("activation", "elu"),
    "Softplus": ("activation", "softplus"), "Exp": ("activation", "exponential"),
}


def is_keras3_op(entry: Mapping[str, Any]) -> bool:
    """True for a Keras 3 ``keras.ops`` graph entry (not a layer).

    ``.keras`` files say so in ``module``; legacy ``.h5`` files drop ``module``, where an op's
    config has no ``trainable``/``dtype`` (every layer config has both), e.g. ``ops.add`` vs
    ``layers.Add``.
    """
    module = entry.get("module")
    if module:
        return str(module).startswith("keras.src.ops")
    config = entry.get("config") or {}
    return entry.get("class_name") in KERAS3_OPS and "trainable" not in config \
        and "dtype" not in config


def op_layer(entry: Mapping[str, Any], name: str) -> tuple[str, dict]:
    """(kind, config) for a TF-op layer or a Keras 3 op entry; refuses unknown operations."""
    class_name = entry.get("class_name")
    config = dict(entry.get("config") or {})
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        function = config.get("function")
        target = TF_FUNCTIONS.get(function) if isinstance(function, str) else None
        where = f"TF operation {function!r}"
    else:
        target = KERAS3_OPS.get(class_name)
        where = f"keras.ops operation {class_name!r}"
    if target is None:
        raise UnsupportedLayerError(
            f"layer {name!r} ({class_name}) is the {where}, which jxai does not interpret "
            f"(supported: {', '.join(sorted(TF_FUNCTIONS))} and keras.ops "
            f"{', '.join(sorted(KERAS3_OPS))}). Express it with built-in Keras layers or move "
            "it out of the model into your preprocessing, then re-save."
        )
    static = {k: v for k, v in config.items()
              if k not in ("name", "trainable", "dtype", "function", "module")}
    if isinstance(target, tuple):
        axis = static.get("axis", -1)
        return "Activation", {"function": target[1], "alpha": None, "max_value": None,
                              "threshold": 0.0, "axis": axis if isinstance(axis, int) else -1}
    return "Op", {"op": target, "static": static}


def run_op(op: str, args: list, kwargs: dict, config: Mapping[str, Any]):
    """Run a canonical op on already-materialised arguments (arrays and constants)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("name",)}
    return OPS[op](list(args), kwargs, dict(config))
