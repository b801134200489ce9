"""Faithfulness by perturbation: remove what the explanation calls relevant and watch the output.

* `drop_increase` — the histopathology seed's drop and increase rates (keep the top ``frac`` of
  the map, zero the rest).
* `pixel_flipping` / `region_perturbation` — remove features (or square regions) in the order of
  the explanation, most relevant first (MoRF) or least relevant first (LeRF); AOPC summarises
  the curve (Samek et al. 2017).
* `deletion` / `insertion` — the RISE curves and their areas (Petsiuk et al. 2018).
* `faithfulness_correlation` — Pearson correlation between the relevance of random feature
  subsets and the output drop when they are removed (Bhatt et al. 2020).

Every metric is one jitted function per (model structure, shapes, settings). The perturbed copies
of the batch are built inside it and evaluated with ``vmap``, chunked by
``lax.map(batch_size=...)``: ``batch_size`` perturbation steps (each a whole input batch) are
evaluated together, so memory grows with ``batch_size × B`` inputs, not with ``steps``.

Inputs are batch first. With 3+ axes the last one is taken as channels (``channel_axis="auto"``):
a "feature" is then a location (pixel, time step) with all its channels, and an attribution may
carry the channel axis (it is summed) or not. Tabular inputs (B, F) have one feature per column.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jxai.metrics import _common as C

__all__ = [
    "Curve",
    "DropIncrease",
    "PixelFlipping",
    "deletion",
    "drop_increase",
    "faithfulness_correlation",
    "insertion",
    "pixel_flipping",
    "region_perturbation",
]


class DropIncrease(NamedTuple):
    """Per-input drop and increase (average them over the inputs for the seed's rates)."""

    drop: jax.Array  # (B,) max(0, (Y - O) / Y)
    increase: jax.Array  # (B,) 1 where O > Y else 0


class PixelFlipping(NamedTuple):
    """A perturbation curve and its AOPC."""

    curve: jax.Array  # (B, steps + 1) target score after removing round(k·R/steps) regions
    aopc: jax.Array  # (B,) mean over k of (curve[:, 0] - curve[:, k])

    @property
    def fraction(self) -> np.ndarray:
        """Nominal fraction of features removed at each curve point, k / steps."""
        return np.linspace(0.0, 1.0, self.curve.shape[-1])


class Curve(NamedTuple):
    """An insertion or deletion curve and the area under it."""

    curve: jax.Array  # (B, steps + 1) target score
    auc: jax.Array  # (B,) trapezoidal area over the fraction of features inserted/deleted

    @property
    def fraction(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.curve.shape[-1])


# -- drop and increase rate ----------------------------------------------------------------
@partial(jax.jit, static_argnames=("parts", "k", "activation"))
def _drop_increase(variables, x, attribution, target, parts, k, activation):
    module, skip = parts
    batch = x.shape[0]
    flat = attribution.reshape(batch, -1)
    # thr = the (k+1)-th largest value of the map, keep = map > thr: the seed's
    # `np.flip(sorted(grad_array))[int(size * frac)]` and `exmap > thr`.
    threshold = jax.lax.top_k(flat, k + 1)[0][:, k]
    keep = attribution > threshold.reshape((batch,) + (1,) * (attribution.ndim - 1))
    if keep.ndim < x.ndim:
        keep = keep[..., None]
    kept = jnp.where(keep, x, jnp.zeros((), x.dtype))
    y = C.score(module, skip, variables, x, target, activation)
    o = C.score(module, skip, variables, kept, target, activation)
    # the seed divides by (Y + 1e-100), which only matters when Y == 0
    tiny = jnp.finfo(y.dtype).tiny
    eta = (y - o) / jnp.where(y == 0, tiny, y)
    return eta * (eta > 0), (eta < 0).astype(y.dtype)


def drop_increase(
    network,
    x,
    attribution,
    target="max",
    frac: float = 0.15,
    *,
    activation: str | None = None,
    **explain_params,
) -> DropIncrease:
    """Drop and increase rates of an explanation map (the histopathology seed's definition).

    For each input with target output Y = f(x)_c, keep the ``frac`` most relevant entries of the
    map, zero everything else, and read O = f(x ⊙ mask)_c:

        thr = (⌊n·frac⌋ + 1)-th largest value of the map (n = its number of entries)
        mask = map > thr,   η = (Y − O) / Y
        drop = η · 1[η > 0] = max(0, (Y − O) / Y),   increase = 1[η < 0] = 1[O > Y]

    The last equalities hold for positive Y, i.e. probability outputs as in the seed (its models
    end in a softmax). On a logit network pass ``activation="softmax"``. The seed's rates are the
    means over the inputs: ``drop.mean()``, ``increase.mean()``.

    Args:
      network: a `jxai.Network` (``network.apply(x)`` gives the outputs).
      x: (B, ...) inputs.
      attribution: explanation maps with x's shape, or x's shape without the channel axis (a
        per-pixel map, broadcast over channels as the seed does for SISE), or a method name for
        `jxai.explain`.
      target: ``"max"`` (the predicted class, as in the seed), an int or a (B,) int array.
      frac: fraction of the map kept, 0 ≤ frac < 1.
      activation: None, ``"softmax"`` or ``"sigmoid"`` applied to the outputs before reading Y, O.
      **explain_params: passed to `jxai.explain` when ``attribution`` is a method name.

    Returns:
      `DropIncrease` (drop, increase), each (B,).

    Reference: S. Sattarzadeh et al., "Explaining Convolutional Neural Networks through
    Attribution-Based Input Sampling and Block-Wise Feature Aggregation", AAAI 2021.
    """
    network, parts = C.network_parts(network)
    x = jnp.asarray(x)
    target = C.resolve_target(network, x, target)
    attribution = C.resolve_attribution(network, x, attribution, target, explain_params)
    if attribution.shape != x.shape and attribution.shape != x.shape[:-1]:
        raise ValueError(
            f"drop_increase: attribution has shape {attribution.shape}, x has shape {x.shape}; "
            "expected x's shape or x's shape without the channel axis. Upsample CAMs first."
        )
    n = int(np.prod(attribution.shape[1:]))
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"frac must lie in [0, 1), got {frac}")
    k = int(n * frac)
    drop, increase = _drop_increase(network.variables, x, attribution, target, parts, k, activation)
    return DropIncrease(drop, increase)


# -- ordered perturbation curves -----------------------------------------------------------
@partial(
    jax.jit,
    static_argnames=(
        "parts",
        "locations",
        "channels",
        "region",
        "steps",
        "order",
        "insert",
        "activation",
        "batch_size",
    ),
)
def _ordered_curve(
    variables,
    x,
    location_rel,
    target,
    baseline,
    *,
    parts,
    locations,
    channels,
    region,
    steps,
    order,
    insert,
    activation,
    batch_size,
):
    module, skip = parts
    ids, n_regions = C.region_ids(locations, region)  # trace-time constants
    counts = jnp.asarray(C.step_counts(n_regions, steps))
    ranks = C.order_ranks(C.region_relevance(location_rel, ids, n_regions), order)

    def at(count):  # count: scalar number of regions removed (or inserted)
        mask = C.expand_mask(ranks < count, ids, locations, channels)
        perturbed = jnp.where(mask, x, baseline) if insert else jnp.where(mask, baseline, x)
        return C.score(module, skip, variables, perturbed, target, activation)

    return jax.lax.map(at, counts, batch_size=batch_size).T  # (B, steps + 1)


def _curve(
    network,
    x,
    attribution,
    target,
    *,
    order,
    steps,
    region,
    baseline,
    insert,
    activation,
    key,
    batch_size,
    channel_axis,
    explain_params,
):
    network, parts = C.network_parts(network)
    x = jnp.asarray(x)
    target = C.resolve_target(network, x, target)
    attribution = C.resolve_attribution(network, x, attribution, target, explain_params)
    locations, channels = C.location_layout(x.shape, attribution.shape, channel_axis)
    region = C.region_shape(locations, region)
    C.step_counts(1, steps)  # validates steps
    C.order_ranks(jnp.zeros((1, 1)), order)  # validates order
    base = C.make_baseline(baseline, x, channels, key)
    return _ordered_curve(
        network.variables,
        x,
        C.location_relevance(attribution, locations),
        target,
        base,
        parts=parts,
        locations=tuple(locations),
        channels=channels,
        region=region,
        steps=steps,
        order=order,
        insert=insert,
        activation=activation,
        batch_size=batch_size,
    )


def pixel_flipping(
    network,
    x,
    attribution,
    target="max",
    order: str = "morf",
    steps: int = 20,
    *,
    region: int | tuple[int, ...] = 1,
    baseline=0.0,
    activation: str | None = None,
    key=None,
    batch_size: int | None = 8,
    channel_axis="auto",
    **explain_params,
) -> PixelFlipping:
    """Pixel flipping / region perturbation curve and AOPC.

    Features (locations, or ``region``-sized boxes of locations whose relevance is summed) are
    ranked by relevance and replaced by ``baseline`` in that order. Curve point k removes the
    first round(k·R/steps) of the R regions, k = 0..steps, and records the target score
    f(x⁽ᵏ⁾)_c. The area over the perturbation curve is

        AOPC = 1/(L+1) · Σ_{k=0}^{L} ( f(x⁽⁰⁾)_c − f(x⁽ᵏ⁾)_c ),   L = steps.

    With ``order="morf"`` (most relevant first) a faithful explanation has a large AOPC; with
    ``"lerf"`` (least relevant first) a small one. Ties keep feature order.

    Args:
      network: a `jxai.Network`.
      x: (B, ...) inputs.
      attribution: (B, ...) maps (x's shape, or without the channel axis) or a method name.
      target: ``"max"``, an int or a (B,) int array.
      order: ``"morf"`` or ``"lerf"``.
      steps: number of perturbation steps L (the curve has L + 1 points).
      region: box size over the location axes (1 = pixel flipping; e.g. 9 for 9×9 regions).
      baseline: value replacing removed features: a number, ``"mean"`` (per-sample, per-channel
        mean), ``"uniform"`` (noise in [min x, max x], needs ``key``) or an array like x.
      activation: None, ``"softmax"`` or ``"sigmoid"`` on the outputs before scoring.
      key: PRNG key for ``baseline="uniform"``.
      batch_size: perturbation steps evaluated together (None: all at once).
      channel_axis: ``"auto"``, -1 or None (see the module docstring).
      **explain_params: passed to `jxai.explain` when ``attribution`` is a method name.

    Returns:
      `PixelFlipping` (curve (B, steps+1), aopc (B,)).

    References: W. Samek et al., "Evaluating the visualization of what a deep neural network has
    learned", IEEE TNNLS 2017. Quantus ``PixelFlipping`` / ``RegionPerturbation``.
    """
    curve = _curve(
        network,
        x,
        attribution,
        target,
        order=order,
        steps=steps,
        region=region,
        baseline=baseline,
        insert=False,
        activation=activation,
        key=key,
        batch_size=batch_size,
        channel_axis=channel_axis,
        explain_params=explain_params,
    )
    return PixelFlipping(curve, jnp.mean(curve[:, :1] - curve, axis=1))


def region_perturbation(
    network,
    x,
    attribution,
    target="max",
    order: str = "morf",
    steps: int = 20,
    *,
    region=9,
    **kwargs,
) -> PixelFlipping:
    """`pixel_flipping` with square regions (9×9 by default, as in Samek et al. 2017)."""
    return pixel_flipping(network, x, attribution, target, order, steps, region=region, **kwargs)


def _auc(curve):
    fraction = jnp.linspace(0.0, 1.0, curve.shape[-1])
    return jnp.trapezoid(curve, fraction, axis=-1)


def deletion(
    network,
    x,
    attribution,
    target="max",
    steps: int = 20,
    *,
    region=1,
    baseline=0.0,
    activation: str | None = None,
    key=None,
    batch_size: int | None = 8,
    channel_axis="auto",
    **explain_params,
) -> Curve:
    """Deletion curve: replace the most relevant features by ``baseline`` first; area under it.

    Curve point k deletes round(k·R/steps) regions; AUC = trapezoidal area of the target score
    over the deleted fraction k/steps ∈ [0, 1]. Lower is better. Petsiuk et al. score class
    probabilities: use ``activation="softmax"`` on a logit network. Arguments as in
    `pixel_flipping`.

    Reference: V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation
    of Black-box Models", BMVC 2018.
    """
    curve = _curve(
        network,
        x,
        attribution,
        target,
        order="morf",
        steps=steps,
        region=region,
        baseline=baseline,
        insert=False,
        activation=activation,
        key=key,
        batch_size=batch_size,
        channel_axis=channel_axis,
        explain_params=explain_params,
    )
    return Curve(curve, _auc(curve))


def insertion(
    network,
    x,
    attribution,
    target="max",
    steps: int = 20,
    *,
    region=1,
    baseline=0.0,
    activation: str | None = None,
    key=None,
    batch_size: int | None = 8,
    channel_axis="auto",
    **explain_params,
) -> Curve:
    """Insertion curve: start from ``baseline`` and restore the most relevant features first.

    Curve point k restores round(k·R/steps) regions of x into the baseline (point 0 is the
    baseline alone, the last point x itself); AUC over the inserted fraction. Higher is better.
    Petsiuk et al. insert into a blurred copy: pass it as ``baseline``. Arguments as in
    `pixel_flipping`.

    Reference: Petsiuk et al., BMVC 2018 (see `deletion`).
    """
    curve = _curve(
        network,
        x,
        attribution,
        target,
        order="morf",
        steps=steps,
        region=region,
        baseline=baseline,
        insert=True,
        activation=activation,
        key=key,
        batch_size=batch_size,
        channel_axis=channel_axis,
        explain_params=explain_params,
    )
    return Curve(curve, _auc(curve))


# -- faithfulness correlation --------------------------------------------------------------
@partial(
    jax.jit,
    static_argnames=(
        "parts",
        "locations",
        "channels",
        "region",
        "subset",
        "activation",
        "batch_size",
    ),
)
def _faithfulness_correlation(
    variables,
    x,
    location_rel,
    target,
    baseline,
    keys,
    *,
    parts,
    locations,
    channels,
    region,
    subset,
    activation,
    batch_size,
):
    module, skip = parts
    ids, n_regions = C.region_ids(locations, region)
    relevance = C.region_relevance(location_rel, ids, n_regions)  # (B, R)
    original = C.score(module, skip, variables, x, target, activation)

    def draw(key):  # one random subset of `subset` regions per sample
        noise = jax.random.uniform(key, relevance.shape)
        chosen = C.order_ranks(noise, "lerf") < subset  # (B, R)
        removed = jnp.where(C.expand_mask(chosen, ids, locations, channels), baseline, x)
        drop = original - C.score(module, skip, variables, removed, target, activation)
        return jnp.sum(jnp.where(chosen, relevance, 0.0), axis=1), drop

    attributed, dropped = jax.lax.map(draw, keys, batch_size=batch_size)  # (N, B) each
    return C.pearson(attributed.T, dropped.T, axis=-1)


def faithfulness_correlation(
    network,
    x,
    attribution,
    target="max",
    *,
    key,
    subset_size: int | float = 0.1,
    n_samples: int = 100,
    region: int | tuple[int, ...] = 1,
    baseline=0.0,
    activation: str | None = None,
    batch_size: int | None = 8,
    channel_axis="auto",
    **explain_params,
) -> jax.Array:
    """Faithfulness correlation: does the relevance of a feature subset predict its effect?

    For ``n_samples`` random subsets S of ``subset_size`` regions (different per input):

        ρ = Pearson_S( Σ_{i∈S} R_i ,  f(x)_c − f(x_{S ← baseline})_c )

    1 is perfectly faithful, 0 unrelated. ``subset_size`` is a count of regions, or a fraction
    of them when a float in (0, 1).

    Args:
      key: PRNG key for the random subsets (required).
      Other arguments as in `pixel_flipping`.

    Returns:
      (B,) correlations.

    Reference: U. Bhatt, A. Weller, J. M. F. Moura, "Evaluating and Aggregating Feature-based
    Model Explanations", IJCAI 2020. Quantus ``FaithfulnessCorrelation``.
    """
    network, parts = C.network_parts(network)
    x = jnp.asarray(x)
    target = C.resolve_target(network, x, target)
    attribution = C.resolve_attribution(network, x, attribution, target, explain_params)
    locations, channels = C.location_layout(x.shape, attribution.shape, channel_axis)
    region = C.region_shape(locations, region)
    _, n_regions = C.region_ids(locations, region)
    if isinstance(subset_size, float):
        if not 0.0 < subset_size < 1.0:
            raise ValueError(f"a float subset_size is a fraction in (0, 1), got {subset_size}")
        subset = max(1, int(round(subset_size * n_regions)))
    else:
        subset = int(subset_size)
    if not 1 <= subset <= n_regions:
        raise ValueError(f"subset_size must select 1..{n_regions} regions, got {subset}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 for a correlation, got {n_samples}")
    draw_key, noise_key = jax.random.split(key)
    base = C.make_baseline(baseline, x, channels, noise_key)
    return _faithfulness_correlation(
        network.variables,
        x,
        C.location_relevance(attribution, locations),
        target,
        base,
        jax.random.split(draw_key, n_samples),
        parts=parts,
        locations=tuple(locations),
        channels=channels,
        region=region,
        subset=subset,
        activation=activation,
        batch_size=batch_size,
    )
