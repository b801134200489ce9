"""The model-zoo registry: seed networks by name, built as `jxai.Network`s.

Every zoo model is a `flax.linen.Module` whose ``__call__(x, train=False)`` takes a batch and whose
weighted submodules carry the Keras layer names of the seed (``block1_conv1``, ``conv2d_3``,
``first_dense``...), so a Keras weights file maps onto it by name. Activations, pooling and the
final softmax/sigmoid are `jxai.layers` modules, so LRP rules and guided backprop attach to them.

    net = jxai.models.get("clever_hans_cnn")            # the trained, shipped weights
    net = jxai.models.get("unet", pretrained=False)     # random weights, on purpose
    net.metadata["input_shape"]        # (64, 64, 1)
    logits = net.without_output_activation()(x)
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jxai import layers
from jxai._checkpoint import head, json_safe, read_record, restore
from jxai.network import Network

__all__ = ["CHECKPOINTS", "NAMES", "ModelSpec", "get", "get_module", "load_zoo_checkpoint",
           "pretrained_names", "register", "shipped", "spec", "zoo_record"]

# The trained zoo networks that ship with jxai, one folder per zoo name.
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


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


def get(name: str, *, pretrained: bool | None = None, key: jax.Array | int | None = None,
        **kwargs) -> Network:
    """Zoo model ``name`` as a `jxai.Network`: trained weights where they ship, else random.

    Trained weights ship for `pretrained_names()` (today ``clever_hans_cnn``), in the default
    configuration, as checkpoints in ``jxai/models/checkpoints/``.

    Args:
      name: one of `NAMES`.
      pretrained: None (default): the shipped trained weights when they exist for this
        configuration, otherwise random weights with a `UserWarning` (explanations of a random
        network describe no trained model). True: the trained weights, or a ValueError when none
        ship. False: random weights, silently (to train the model or test its architecture).
      key: an int seed (default 0) or a `jax.random.key` for the random weights (Keras-style
        initialisers: ``glorot_uniform`` kernels, ``he_normal`` for the U-Net, zero biases);
        unused when trained weights are loaded.
      **kwargs: model options (``input_shape``, widths, ``last_activation``...); see each model.

    Returns:
      A `Network` whose metadata holds ``name``, ``input_shape``, ``output_activation``,
      ``output_activation_path``, ``preprocessing``, ``layer_names`` (weighted layers in call
      order) and ``config`` (the options, enough to rebuild it with ``get(name, **config)``);
      trained networks also ``extra`` (their test scores).
    """
    module, input_shape, metadata = get_module(name, **kwargs)
    if pretrained is not False:
        trained = _shipped_network(name, metadata["config"], required=bool(pretrained))
        if trained is not None:
            return trained
    abstract, order, initializers = _trace(module, input_shape)
    variables = {"params": _initialise(abstract["params"], initializers, _seed(key))}
    metadata["layer_names"] = order
    return Network(module, variables, metadata)


def pretrained_names() -> list[str]:
    """The zoo names whose trained weights ship with jxai (``get(name)`` loads them)."""
    return [name for name in NAMES if shipped(name) is not None]


def _shipped_network(name: str, config: dict[str, Any], *, required: bool) -> Network | None:
    """The shipped trained network for ``name`` in ``config``; None (after a warning) or a
    ValueError (``required``) when there is none."""
    path = shipped(name)
    if path is None:
        problem = f"no trained weights ship for {name!r}"
    else:
        trained, asked = (json_safe(_options(name, c))
                          for c in (read_record(path)["config"], config))
        if trained == asked:
            return load_zoo_checkpoint(path)
        differ = sorted(k for k in trained.keys() | asked.keys() if trained.get(k) != asked.get(k))
        problem = (f"the trained weights of {name!r} are for "
                   f"{', '.join(f'{k}={trained.get(k)!r}' for k in differ)}, not "
                   f"{', '.join(f'{k}={asked.get(k)!r}' for k in differ)}")
    if required:
        raise ValueError(
            f"jxai.models.get({name!r}, pretrained=True): {problem} (trained weights ship for: "
            f"{', '.join(pretrained_names()) or 'none'}). Load your own with "
            "jxai.load('checkpoint_folder') or jxai.load_weights(network.module, "
            "'model.weights.h5', network.variables), or pass pretrained=False for random weights."
        )
    warnings.warn(
        f"jxai.models.get({name!r}): {problem}, so its weights are RANDOM (untrained) and its "
        "explanations describe no trained model. Load trained weights with "
        "jxai.load('checkpoint_folder') or jxai.load_weights(network.module, "
        "'model.weights.h5', network.variables), train it (jxai.models.recipes, "
        "jxai.models.train.fit), or pass pretrained=False to ask for random weights.",
        UserWarning, stacklevel=3)
    return None


def shipped(name: str) -> Path | None:
    """The folder of the trained checkpoint that ships for zoo model ``name``, or None."""
    path = CHECKPOINTS / name
    return path if (path / "network.json").is_file() else None


def zoo_record(network: Network) -> dict[str, Any]:
    """The checkpoint record (`jxai._checkpoint`) that rebuilds zoo ``network``:
    ``get_module(name, **config)``."""
    name, config = network.metadata.get("name"), network.metadata.get("config")
    if name is None or config is None or name not in _REGISTRY:
        raise ValueError(
            f"{network!r} cannot be saved as a checkpoint: its module is not a converted "
            "KerasModel (jxai.load_keras) and it has no zoo 'name'/'config' metadata "
            "(jxai.models.get), so it could not be rebuilt on load. Save a hand-written Flax "
            "module's variables with orbax directly."
        )
    return {**head("zoo", name), "config": json_safe(config)}


def load_zoo_checkpoint(directory, record: dict[str, Any] | None = None) -> Network:
    """Rebuild the zoo network of the checkpoint at ``directory`` (``get_module(name,
    **config)``: data, never code) and restore its variables."""
    record = read_record(directory) if record is None else record
    if record["kind"] != "zoo":
        raise ValueError(f"{directory} holds a converted Keras network, not a zoo one: load it "
                         "with jxai.load_network (or jxai.load)")
    module, input_shape, metadata = get_module(record["name"], **record["config"])
    abstract = jax.eval_shape(module.init, jax.random.key(0),
                              jnp.zeros((1, *input_shape), jnp.float32))
    return restore(directory, record, module, dict(abstract),
                   {**(record.get("metadata") or {}), **metadata})


def _options(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Every option of zoo model ``name``: its builder's defaults, the registered ones, then
    ``config`` (so ``get(name, hidden=64)`` is recognised as the default configuration)."""
    model_spec = spec(name)
    defaults = {k: p.default for k, p in inspect.signature(model_spec.make).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **model_spec.defaults, **config}


def _seed(key) -> int:
    if key is None:
        return 0
    if isinstance(key, (int, np.integer)):
        return int(key)
    data = np.asarray(jax.random.key_data(key)).ravel()
    return int(np.bitwise_xor.reduce(data.astype(np.uint64)) % (2**63))


def _trace(module: nn.Module, input_shape):
    """Abstract variables, weighted layers in call order, and each layer's initialisers.

    One `jax.eval_shape` pass: nothing is computed or compiled.
    """
    calls: list[tuple[str, ...]] = []
    initializers: dict[tuple[str, ...], tuple] = {}

    def record(next_fun, args, kwargs, context):
        path = tuple(str(p) for p in context.module.path)
        if context.method_name == "__call__" and path not in initializers:
            calls.append(path)
            initializers[path] = (getattr(context.module, "kernel_init", None),
                                  getattr(context.module, "bias_init", None))
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(record):
            return module.init(jax.random.key(0), x)

    abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    extra = sorted(set(abstract) - {"params"})
    if extra:
        raise ValueError(f"zoo models hold only parameters; {type(module).__name__} also has "
                         f"{extra}")
    owners = {path for path in calls if path and _subtree(abstract["params"], path) is not None}
    order = ["/".join(p) for p in calls if p in owners
             and not any(q[: len(p)] == p and q != p for q in owners)]
    return abstract, order, initializers


def _subtree(tree, path):
    for part in path:
        if not hasattr(tree, "get") or part not in tree:
            return None
        tree = tree[part]
    return tree


def _initialise(abstract_params, initializers, seed: int):
    """Keras-style initial values drawn with NumPy (fast: no XLA compilation).

    ``glorot_uniform``: U(±sqrt(6 / (fan_in + fan_out))); ``he_normal``: a normal with standard
    deviation sqrt(2 / fan_in) / 0.8796 truncated at two standard deviations (Keras' and Flax's
    definition); biases zero. fan_in = receptive field × input channels, fan_out = receptive
    field × output channels (the last two kernel axes).
    """
    paths = sorted(initializers)

    def leaf_init(path, leaf):
        names = tuple(str(getattr(k, "key", k)) for k in path)
        owner, param = names[:-1], names[-1]
        shape = tuple(leaf.shape)
        rng = np.random.default_rng([seed, paths.index(owner) if owner in paths else 0])
        if param == "scale":  # norms start as the identity
            return jnp.ones(shape, jnp.float32)
        if param != "kernel":  # biases zero; embeddings, class tokens: N(0, 0.02²) as HF's
            return jnp.asarray(np.zeros(shape) if param == "bias"
                               else rng.normal(0.0, 0.02, shape), jnp.float32)
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        kernel_init = initializers.get(owner, (None, None))[0]
        if kernel_init is he_normal:
            std = np.sqrt(2.0 / fan_in) / 0.87962566103423978
            values = rng.standard_normal(shape)
            bad = np.abs(values) > 2.0
            while bad.any():
                values[bad] = rng.standard_normal(int(bad.sum()))
                bad = np.abs(values) > 2.0
            values = values * std
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            values = rng.uniform(-limit, limit, shape)
        return jnp.asarray(values, jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf_init, abstract_params)


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
