"""The model-zoo registry: seed networks by name, built as `jxai.Network`s.

Every zoo model is a `flax.linen.Module` whose ``__call__(x, train=False)`` takes a batch and whose
weighted submodules carry the Keras layer names of the seed (``block1_conv1``, ``conv2d_3``,
``first_dense``...), so a Keras weights file maps onto it by name. Activations, pooling and the
final softmax/sigmoid are `jxai.layers` modules, so LRP rules and guided backprop attach to them.

    net = jxai.models.get("clever_hans_cnn", key=jax.random.key(0))
    net.metadata["input_shape"]        # (64, 64, 1)
    logits = net.without_output_activation()(x)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jxai import layers
from jxai.network import Network

__all__ = ["NAMES", "ModelSpec", "get", "get_module", "register", "spec"]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one zoo model.

    Attributes:
      name: registry name (``jxai.models.get(name)``).
      make: ``make(**kwargs) -> (module, input_shape, metadata)``; builds the module only.
      description: one line for listings.
      seed_params: the parameter count of the seed's Keras summary at default settings (None when
        the seed gives no summary).
    """

    name: str
    make: Callable[..., tuple[nn.Module, tuple[int, ...], dict[str, Any]]]
    description: str
    seed_params: int | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}
NAMES: list[str] = []


def register(name: str, description: str, seed_params: int | None = None, **defaults):
    """Decorator: register ``make(**kwargs) -> (module, input_shape, metadata)`` under ``name``."""

    def wrap(make):
        _REGISTRY[name] = ModelSpec(name, make, description, seed_params, dict(defaults))
        NAMES.append(name)
        return make

    return wrap


def spec(name: str) -> ModelSpec:
    """The `ModelSpec` registered under ``name``; raises with the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown zoo model {name!r}; known models: {', '.join(NAMES)}"
        ) from None


def get_module(name: str, **kwargs) -> tuple[nn.Module, tuple[int, ...], dict[str, Any]]:
    """Build the Flax module of zoo model ``name`` without initialising any parameter.

    Returns ``(module, input_shape, metadata)``; ``input_shape`` has no batch axis. Use it with
    `jax.eval_shape` to inspect a large model (the 23-million-parameter chest classifier) for free.
    """
    model_spec = spec(name)
    options = {**model_spec.defaults, **kwargs}
    module, input_shape, metadata = model_spec.make(**options)
    metadata = {
        "name": name,
        "input_shape": tuple(int(d) for d in input_shape),
        "config": options,
        **metadata,
    }
    return module, tuple(input_shape), metadata


def get(name: str, *, key: jax.Array | int | None = None, **kwargs) -> Network:
    """Build zoo model ``name`` with freshly initialised parameters, as a `jxai.Network`.

    Args:
      name: one of `NAMES`.
      key: a `jax.random.key` or an int seed (default 0) for the Keras-style initialisers.
      **kwargs: model options (``input_shape``, widths, ``last_activation``...); see each model.

    Returns:
      A `Network` whose metadata holds ``name``, ``input_shape``, ``output_activation``,
      ``output_activation_path``, ``preprocessing``, ``layer_names`` and ``config`` (the options,
      enough to rebuild it with ``get(name, **config)``).
    """
    module, input_shape, metadata = get_module(name, **kwargs)
    if key is None:
        key = 0
    if isinstance(key, int):
        key = jax.random.key(key)
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    # jit: the forward pass inside init is dead code for the parameters, XLA drops it.
    variables = jax.jit(module.init)(key, dummy)
    metadata["layer_names"] = weighted_layer_names(module, variables, input_shape)
    return Network(module, dict(variables), metadata)


def weighted_layer_names(module: nn.Module, variables, input_shape) -> list[str]:
    """Paths of the submodules that own parameters, in call order (Flax sorts its dicts)."""
    order: list[str] = []
    params = variables["params"]

    def record(next_fun, args, kwargs, context):
        path = "/".join(str(p) for p in context.module.path)
        node = params
        for part in context.module.path:
            node = node.get(part, {}) if hasattr(node, "get") else {}
        if context.method_name == "__call__" and node and path not in order:
            order.append(path)
        return next_fun(*args, **kwargs)

    def forward(x):
        with nn.intercept_methods(record):
            return module.apply(variables, x)

    jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    # A parent module (the root) owns every parameter; keep only the leaves' owners.
    return [p for p in order if p and not any(q.startswith(p + "/") for q in order)]


# -- helpers shared by the model definitions ----------------------------------------------------

glorot_uniform = nn.initializers.glorot_uniform()  # Keras' default kernel initializer
he_normal = nn.initializers.he_normal()  # Keras' he_normal (truncated normal, fan_in)


class KerasNames:
    """Keras' automatic layer names: ``conv2d``, ``conv2d_1``, ... counted per class.

    The order of calls must follow the order of ``model.layers`` in the Keras model.
    """

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"


def conv(x, features, kernel, *, name, padding="SAME", strides=None, activation="relu",
         kernel_init=glorot_uniform):
    """A Keras ``ConvND(features, kernel, activation=...)``: `nn.Conv` + `layers.Activation`.

    The convolution is named ``name`` (its weights), the activation ``{name}_{activation}``.
    """
    y = nn.Conv(features, tuple(kernel), strides=strides, padding=padding,
                kernel_init=kernel_init, name=name)(x)
    return activate(y, activation, name)


def dense(x, features, *, name, activation="relu", kernel_init=glorot_uniform):
    """A Keras ``Dense(features, activation=...)``: `nn.Dense` + `layers.Activation`."""
    y = nn.Dense(features, kernel_init=kernel_init, name=name)(x)
    return activate(y, activation, name)


def activate(x, activation, layer_name):
    """``layers.Activation(activation)`` named ``{layer_name}_{activation}``; identity if linear."""
    if activation in (None, "linear"):
        return x
    return layers.Activation(activation, name=f"{layer_name}_{activation}")(x)


def output_activation_metadata(activation: str | None, layer_name: str) -> dict[str, Any]:
    """Metadata for a final activation built by `activate`."""
    if activation in (None, "linear"):
        return {"output_activation": None, "output_activation_path": None}
    return {
        "output_activation": activation,
        "output_activation_path": f"{layer_name}_{activation}",
    }


def flatten(x):
    """Keras ``Flatten``: row-major (H, W, C) order, batch axis kept."""
    return x.reshape(x.shape[0], -1)
