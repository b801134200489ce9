"""Small Flax modules for operations that Flax expresses as plain functions.

LRP rules attach to modules by interception, and Flax's activations and pooling are functions,
invisible to an interceptor. The converter and the model zoo build these modules instead, so a
composite can give them a rule (the identity rule on a GELU, `Norm` on an average pooling,
guided backprop on a ReLU). Their forward passes are exactly the Keras semantics.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "AvgPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "MaxPool",
    "Sum",
    "activation_fn",
]


def _hard_sigmoid_keras2(x):
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def _relu(x, alpha=0.0, max_value=None, threshold=0.0):
    """Keras' ReLU layer: f(x) = max_value if x >= max_value, x if threshold <= x, else alpha*(x-threshold)."""
    if alpha == 0.0 and max_value is None and threshold == 0.0:
        return jax.nn.relu(x)
    out = jnp.where(x >= threshold, x, alpha * (x - threshold))
    if max_value is not None:
        out = jnp.minimum(out, max_value)
    return out


# name -> f(x, alpha, axis); Keras' exact definitions (gelu is the erf form, as in Keras).
ACTIVATIONS = {
    "linear": lambda x, a, ax: x,
    "relu": lambda x, a, ax: _relu(x, alpha=a or 0.0),
    "relu6": lambda x, a, ax: jnp.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x, a, ax: jax.nn.leaky_relu(x, 0.2 if a is None else a),
    "elu": lambda x, a, ax: jax.nn.elu(x, 1.0 if a is None else a),
    "selu": lambda x, a, ax: jax.nn.selu(x),
    "gelu": lambda x, a, ax: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x, a, ax: jax.nn.gelu(x, approximate=True),
    "sigmoid": lambda x, a, ax: jax.nn.sigmoid(x),
    "hard_sigmoid": lambda x, a, ax: jax.nn.hard_sigmoid(x),
    "hard_sigmoid_keras2": lambda x, a, ax: _hard_sigmoid_keras2(x),
    "tanh": lambda x, a, ax: jnp.tanh(x),
    "softmax": lambda x, a, ax: jax.nn.softmax(x, axis=ax),
    "log_softmax": lambda x, a, ax: jax.nn.log_softmax(x, axis=ax),
    "softplus": lambda x, a, ax: jax.nn.softplus(x),
    "softsign": lambda x, a, ax: x / (1.0 + jnp.abs(x)),
    "swish": lambda x, a, ax: jax.nn.silu(x),
    "silu": lambda x, a, ax: jax.nn.silu(x),
    "exponential": lambda x, a, ax: jnp.exp(x),
    "mish": lambda x, a, ax: x * jnp.tanh(jax.nn.softplus(x)),
}


def activation_fn(name: str):
    """The activation function for a Keras activation name; raises with the known names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class Activation(nn.Module):
    """An elementwise activation (or softmax over ``axis``) as a module rules can attach to.

    Attributes:
      function: a key of `ACTIVATIONS` (Keras names).
      alpha: negative slope for ``relu``/``leaky_relu``, scale for ``elu``; None = Keras default.
      max_value, threshold: Keras ``ReLU`` layer options (``relu`` only).
      axis: the softmax axis.
    """

    function: str = "relu"
    alpha: float | None = None
    max_value: float | None = None
    threshold: float = 0.0
    axis: int = -1

    @nn.compact
    def __call__(self, x):
        if self.function == "relu" and (self.max_value is not None or self.threshold != 0.0):
            return _relu(x, self.alpha or 0.0, self.max_value, self.threshold)
        return activation_fn(self.function)(x, self.alpha, self.axis)


def _window(value, ndim):
    return tuple(value) if isinstance(value, Sequence) else (value,) * ndim


class AvgPool(nn.Module):
    """Average pooling over the spatial axes (channels last), Keras semantics.

    ``padding="SAME"`` excludes the padded cells from the divisor, as Keras does.
    """

    window: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    padding: str = "VALID"

    @nn.compact
    def __call__(self, x):
        window = tuple(self.window)
        strides = tuple(self.strides) if self.strides is not None else window
        return nn.avg_pool(x, window, strides, self.padding, count_include_pad=False)


class MaxPool(nn.Module):
    """Max pooling over the spatial axes (channels last), Keras semantics (strides default to window).

    Non-overlapping windows that tile the input (the usual 2×2/2 pooling) are computed as a gather
    of each window's first maximum: the same values and the same gradient routing (to the first
    maximum, as ``select_and_scatter`` does), but XLA:CPU runs it several times faster than
    ``reduce_window`` + ``select_and_scatter``, most of all inside loops (IG, SmoothGrad chunks).
    """

    window: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    padding: str = "VALID"

    @nn.compact
    def __call__(self, x):
        window = tuple(self.window)
        strides = tuple(self.strides) if self.strides is not None else window
        spatial = x.shape[1:-1]
        tiles = (
            strides == window
            and len(window) == len(spatial)
            and all(n % w == 0 for n, w in zip(spatial, window, strict=True))
            and (self.padding.upper() == "VALID" or all(w == 1 for w in window))
        )
        if not tiles:
            return nn.max_pool(x, window, strides, self.padding)
        return _tiled_max(x, window)


def _tiled_max(x, window):
    """Max over non-overlapping windows via a gather of the first argmax of each window."""
    batch, *spatial, channels = x.shape
    d = len(window)
    split = [batch]
    for n, w in zip(spatial, window, strict=True):
        split += [n // w, w]
    blocks = x.reshape(*split, channels)
    # (batch, n1/w1, n2/w2, ..., channels, w1·w2·...)
    outer = [0] + [1 + 2 * i for i in range(d)] + [1 + 2 * d]
    inner = [2 + 2 * i for i in range(d)]
    windows = blocks.transpose(*outer, *inner).reshape(
        *blocks.shape[:1], *[n // w for n, w in zip(spatial, window, strict=True)], channels, -1
    )
    first = jnp.argmax(windows, axis=-1)[..., None]
    return jnp.take_along_axis(windows, first, axis=-1)[..., 0]


class GlobalAvgPool(nn.Module):
    """Mean over all spatial axes: (B, *spatial, C) -> (B, C), or keep them with ``keepdims``."""

    keepdims: bool = False

    @nn.compact
    def __call__(self, x):
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=self.keepdims)


class GlobalMaxPool(nn.Module):
    """Max over all spatial axes: (B, *spatial, C) -> (B, C)."""

    keepdims: bool = False

    @nn.compact
    def __call__(self, x):
        return jnp.max(x, axis=tuple(range(1, x.ndim - 1)), keepdims=self.keepdims)


class Sum(nn.Module):
    """Elementwise sum of several inputs (a residual add), a module so `Norm` can attach to it."""

    @nn.compact
    def __call__(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out
