"""Shared pieces of the metrics: targets, scoring a network, features and regions, correlations.

Metrics run a `jxai.Network` inside their own jitted functions. The network enters those as its
(hashable, static) Flax module and skip set plus its variables (a traced pytree), so one
compilation serves every call with the same model structure, shapes and metric settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jxai._checks import module_key
from jxai._driver import explain
from jxai.network import Network, as_network

ACTIVATIONS = (None, "softmax", "sigmoid")


# -- targets and scores --------------------------------------------------------------------
def forward(module, skip, variables, x, activation: str | None):
    """Network output flattened to (B, K), after an optional softmax/sigmoid."""
    y = Network(module, variables, skip=skip).apply(x)
    if y.ndim == 1:
        y = y[:, None]
    y = y.reshape(y.shape[0], -1)
    if activation == "softmax":
        y = jax.nn.softmax(y, axis=-1)
    elif activation == "sigmoid":
        y = jax.nn.sigmoid(y)
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}; use None, 'softmax' or 'sigmoid'")
    return y


def score(module, skip, variables, x, target, activation: str | None):
    """The target output of every sample: (B,)."""
    y = forward(module, skip, variables, x, activation)
    return jnp.take_along_axis(y, target[:, None], axis=1)[:, 0]


@jax.jit
def _argmax_output(variables, x, module_and_skip):
    module, skip = module_and_skip
    return jnp.argmax(forward(module, skip, variables, x, None), axis=-1)


def resolve_target(network: Network, x, target) -> jax.Array:
    """(B,) int32 target indices from ``"max"`` (argmax of the output on ``x``), an int or (B,).

    Outputs with more than one axis per sample are flattened (row-major) before indexing.
    """
    batch = x.shape[0]
    if isinstance(target, str):
        if target != "max":
            raise ValueError(
                f"metrics take target='max', an int or a (B,) int array; got {target!r}"
            )
        return _argmax_output(network.variables, x, _Static((network.module, network.skip)))
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"target must be integer class indices, got dtype {t.dtype}")
    if t.ndim == 0:
        t = jnp.full((batch,), t)
    if t.shape != (batch,):
        raise ValueError(f"target must be an int or a ({batch},) array, got shape {t.shape}")
    return t.astype(jnp.int32)


class _Static:
    """Hashable holder so a (module, skip) pair can ride through jit as a static value."""

    def __init__(self, value):
        self.value = value

    def __iter__(self):
        return iter(self.value)

    def _key(self):
        module, skip = self.value
        return module_key(module), skip  # a module with a dict field: by identity

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key() == other._key()


jax.tree_util.register_static(_Static)


def network_parts(network: Any) -> tuple[Network, _Static]:
    network = as_network(network)
    return network, _Static((network.module, network.skip))


class _CallOrder:
    """A site (`jxai.adapters.Site`) listing every module path in first-call order, skipping
    the network's skipped layers."""

    def __init__(self, skip):
        self.skip = skip
        self.called: list[str] = []

    def entered(self, path, module):
        if path not in self.called:
            self.called.append(path)
        return contextlib.nullcontext()

    def layer_call(self, path, layer, run, args):
        return args[0] if path in self.skip else run(*args)

    def unsupported(self, path, class_name):
        pass


def call_order(network: Network, x) -> list[str]:
    """'/'-joined paths of every module the forward pass calls, in first-call order."""
    site = _CallOrder(network.skip)

    def run(variables, x):
        return network.adapter.apply(network.module, variables, x, site)

    jax.eval_shape(run, network.variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return site.called


# -- attributions --------------------------------------------------------------------------
def resolve_attribution(network: Network, x, attribution, target, explain_params: dict):
    """An attribution array, computing it with `jxai.explain` when a method name is given.

    Methods explain the logits: a final softmax/sigmoid of ``network`` is stripped for the
    explanation (`Network.without_output_activation`), as iNNvestigate users do, while the metric
    still scores the network's own outputs (e.g. the probabilities of the drop rate).
    """
    if isinstance(attribution, str):
        explained = network.without_output_activation()
        return jnp.asarray(explain(explained, x, attribution, target=target, **explain_params))
    if explain_params:
        raise TypeError(
            f"unexpected keyword arguments {sorted(explain_params)}: explain parameters are only "
            "used when attribution is a method name"
        )
    return jnp.asarray(attribution)


def location_layout(x_shape, attribution_shape, channel_axis) -> tuple[tuple[int, ...], bool]:
    """Where features live: (per-sample location shape, whether x has a trailing channel axis).

    ``channel_axis="auto"``: inputs with 3+ axes (B, ..., C) have channels last; the attribution
    is either per element (x's shape, summed over channels) or per location (x's shape without
    the channel axis). Masks then cover all channels of a location. ``-1`` forces channels last;
    ``None`` makes every element of x a feature.
    """
    x_shape, a_shape = tuple(x_shape), tuple(attribution_shape)
    if channel_axis == "auto":
        channels = len(x_shape) >= 3
    elif channel_axis == -1:
        channels = True
    elif channel_axis is None:
        channels = False
    else:
        raise ValueError(f"channel_axis must be 'auto', -1 or None, got {channel_axis!r}")
    locations = x_shape[1:-1] if channels else x_shape[1:]
    allowed = {x_shape, (x_shape[0], *locations)}
    if a_shape not in allowed:
        raise ValueError(
            f"attribution has shape {a_shape} but x has shape {x_shape}: expected "
            + " or ".join(str(s) for s in sorted(allowed))
            + ". Upsample low-resolution maps (CAMs) to the input first, e.g. "
            "jax.image.resize(cam, x.shape[:-1], 'bilinear')."
        )
    return locations, channels


def location_relevance(attribution, locations: tuple[int, ...]):
    """Relevance per location (B, P): channels summed, locations flattened."""
    batch = attribution.shape[0]
    n = int(np.prod(locations)) if locations else 1
    a = attribution.reshape(batch, n, -1)
    return a.sum(axis=-1)


def region_shape(locations: Sequence[int], region) -> tuple[int, ...]:
    """``region`` as one box size per location axis (an int applies to every axis)."""
    if isinstance(region, (int, np.integer)):
        region = (int(region),) * len(locations)
    region = tuple(int(r) for r in region)
    if len(region) != len(locations) or any(r < 1 for r in region):
        raise ValueError(
            f"region {region} does not fit locations {tuple(locations)}: give one positive size "
            "per location axis (or one int)"
        )
    return region


def region_ids(locations: Sequence[int], region) -> tuple[np.ndarray, int]:
    """Region index of every flattened location, for boxes of size ``region`` (row-major).

    Regions at the far edges are smaller when the size does not divide the extent.
    """
    locations = tuple(int(s) for s in locations)
    region = region_shape(locations, region)
    grid = [-(-n // r) for n, r in zip(locations, region, strict=True)]
    coords = np.meshgrid(
        *[np.arange(n) // r for n, r in zip(locations, region, strict=True)], indexing="ij"
    )
    ids = np.zeros(locations, dtype=np.int64)
    for c, g in zip(coords, grid, strict=True):
        ids = ids * g + c
    return ids.reshape(-1).astype(np.int32), int(np.prod(grid))


def region_relevance(location_rel, ids, n_regions: int):
    """(B, P) location relevance → (B, R) region relevance (sums)."""
    return jax.vmap(lambda r: jax.ops.segment_sum(r, ids, num_segments=n_regions))(location_rel)


def expand_mask(region_mask, ids, locations, channels: bool):
    """(B, R) region mask → a mask broadcastable to x."""
    m = region_mask[:, ids].reshape(region_mask.shape[0], *locations)
    return m[..., None] if channels else m


def make_baseline(baseline, x, channels: bool, key):
    """The replacement value(s) for removed features: a float, "mean", "uniform" or an array."""
    if isinstance(baseline, str):
        if baseline == "mean":
            axes = tuple(range(1, x.ndim - 1)) if channels else tuple(range(1, x.ndim))
            return jnp.mean(x, axis=axes, keepdims=True)
        if baseline == "uniform":
            if key is None:
                raise ValueError("baseline='uniform' draws noise: pass key=jax.random.key(...)")
            lo, hi = jnp.min(x), jnp.max(x)
            return jax.random.uniform(key, x.shape, x.dtype, lo, hi)
        raise ValueError(
            f"unknown baseline {baseline!r}; use a number, 'mean', 'uniform' or an array like x"
        )
    b = jnp.asarray(baseline, dtype=x.dtype)
    if b.ndim and b.shape != x.shape:
        raise ValueError(f"baseline array has shape {b.shape}, x has shape {x.shape}")
    return b


def step_counts(n_regions: int, steps: int) -> np.ndarray:
    """Regions removed at curve points k = 0..steps: round(k · R / steps)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.rint(np.arange(steps + 1) * n_regions / steps).astype(np.int32)


def order_ranks(region_rel, order: str, eligible=None):
    """Position of every region in the perturbation order (0 = first perturbed).

    ``eligible``: optional bool mask; regions where it is False (padding, kept tokens) come last
    in both orders. Ties keep region order."""
    if order == "morf":
        keys = -region_rel
    elif order == "lerf":
        keys = region_rel
    else:
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf', got {order!r}")
    if eligible is not None:
        keys = jnp.where(eligible, keys, jnp.inf)
    permutation = jnp.argsort(keys, axis=1, stable=True)
    return jnp.argsort(permutation, axis=1, stable=True)


# -- statistics ----------------------------------------------------------------------------
def average_ranks(v):
    """Ranks 1..n of a 1-D array, ties sharing their average rank (scipy's 'average')."""
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return (lo + hi + 1) / 2.0


def pearson(a, b, axis: int = -1):
    """Pearson correlation along ``axis``; 0 where either side is constant."""
    a = a - a.mean(axis=axis, keepdims=True)
    b = b - b.mean(axis=axis, keepdims=True)
    num = (a * b).sum(axis=axis)
    den = jnp.sqrt((a * a).sum(axis=axis) * (b * b).sum(axis=axis))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def spearman(a, b):
    """Spearman rank correlation of two 1-D arrays (Pearson of their average ranks)."""
    return pearson(average_ranks(a), average_ranks(b))
