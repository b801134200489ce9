"""Shapley values of feature groups: exact, KernelSHAP and permutation sampling.

The players are ``G`` groups of input features (``feature_mask=``: one group id per feature,
``0..G-1``). A coalition :math:`S` keeps its groups' features from ``x`` and takes the others
from the baseline :math:`x'`, and its value is the target score

.. math:: v(S) = S_t\\big(x_S \\oplus x'_{\\bar S}\\big) \\qquad\\text{or}\\qquad
   v(S) = \\frac{1}{M} \\sum_{m=1}^{M} S_t\\big(x_S \\oplus b^{(m)}_{\\bar S}\\big)

with a ``background=`` set of ``M`` rows (shap's ``KernelExplainer``). The Shapley value of group
:math:`i` is

.. math:: \\phi_i = \\sum_{S \\subseteq N \\setminus \\{i\\}} \\frac{|S|!\\,(G-|S|-1)!}{G!}
   \\big(v(S \\cup \\{i\\}) - v(S)\\big),

and :math:`\\sum_i \\phi_i = v(N) - v(\\emptyset)` (efficiency). Every feature receives its
group's value, so the output is shaped like ``x``.

- `shapley_values`: the sum above over all :math:`2^G` coalitions (``G <= 16``), Captum's
  ``ShapleyValues`` (which averages over all :math:`G!` orderings: the same numbers).
- `kernel_shap`: shap's KernelSHAP: weighted least squares on coalitions, Shapley-kernel weights,
  the efficiency constraint enforced exactly by eliminating the last group.
- `shapley_sampling`: Captum's ``ShapleyValueSampling``: marginal contributions along random
  orderings.

Only forward passes are needed, so the model may be a plain JAX function or a host function
(`jxai.host_function`). Coalitions are evaluated ``batch_size`` at a time under ``vmap`` and the
results are folded into running sums chunk by chunk (`jxai.methods._common.chunked_sum`), so
memory is that of one chunk whatever the number of coalitions. The coalitions are the same for
every sample of the batch. ``target="max"`` is the class predicted for ``x`` itself.

References: Shapley, "A value for n-person games", 1953; Lundberg, Lee, "A Unified Approach to
Interpreting Model Predictions", NeurIPS 2017; Castro, Gómez, Tejada, "Polynomial calculation of
the Shapley value based on sampling", Computers & Operations Research 2009.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jxai._checks import check_size
from jxai.methods._common import check_positive_int, chunked_sum, pin_target, reference_samples
from jxai.methods._registry import register_method
from jxai.methods.path import make_baseline

__all__ = ["grid_mask", "kernel_shap", "kernel_shap_design", "shapley_sampling",
           "shapley_values"]

MAX_EXACT_GROUPS = 16
# Rows of input one chunk may hold (chunk x batch x background rows x features), for
# batch_size="auto": large enough that small models run in a few wide calls, small enough that
# an image network's chunk stays a few hundred MB.
AUTO_CHUNK_ELEMENTS = 2**18


# --------------------------------------------------------------------------------------------
# Feature groups
# --------------------------------------------------------------------------------------------


def grid_mask(sample_shape, grid) -> np.ndarray:
    """Group ids of a grid of superpixels over one sample's leading axes.

    ``grid=(gh, gw)`` on an ``(H, W, C)`` image cuts ``H`` into ``gh`` and ``W`` into ``gw``
    near-equal bands (row ``r`` is in band ``r * gh // H``), numbered row-major: ids
    ``0..gh*gw-1``, channels share their pixel's id. A grid with fewer entries than the sample
    has axes covers the leading ones (``(g,)`` on a ``(40, 1)`` signal: ``g`` segments). The
    mask has size-1 trailing axes where the grid does not reach; it broadcasts to the sample.
    """
    shape = tuple(int(s) for s in sample_shape)
    grid = (grid,) if np.isscalar(grid) else tuple(grid)
    if not 1 <= len(grid) <= len(shape):
        raise ValueError(f"grid={grid!r} must have 1 to {len(shape)} entries for samples of "
                         f"shape {shape}")
    cells = []
    for g, n in zip(grid, shape, strict=False):
        if isinstance(g, bool) or not isinstance(g, int | np.integer) or not 1 <= g <= n:
            raise ValueError(f"grid={grid!r} does not fit samples of shape {shape}: each entry "
                             "must be an integer between 1 and its axis length")
        cells.append(np.arange(n) * int(g) // n)
    index = np.ravel_multi_index(np.meshgrid(*cells, indexing="ij"), tuple(int(g) for g in grid))
    return index.reshape(index.shape + (1,) * (len(shape) - len(grid))).astype(np.int32)


def feature_groups(method: str, x, feature_mask=None, grid=None) -> tuple[np.ndarray, int]:
    """``(mask, G)``: one group id per feature of one sample (shape ``x.shape[1:]``), ids 0..G-1.

    Default: every feature its own group for tables and signals (``x.ndim <= 3``), a 4×4 grid of
    superpixels for images.
    """
    sample = tuple(x.shape[1:])
    if feature_mask is not None and grid is not None:
        raise ValueError(f"{method}: pass feature_mask= or grid=, not both")
    if feature_mask is None:
        if grid is None:
            grid = (4, 4) if x.ndim >= 4 else None
        if grid is None:
            mask = np.arange(int(np.prod(sample))).reshape(sample)
        else:
            mask = grid_mask(sample, grid)
    else:
        if isinstance(feature_mask, jax.core.Tracer):
            raise ValueError(f"{method}: feature_mask must be a concrete array (numpy or a "
                             "list), not a traced value: its group count sets the program shape")
        mask = np.asarray(feature_mask)
        if mask.ndim == len(sample) + 1 and mask.shape[0] == 1:
            mask = mask[0]  # one sample with its batch axis
        if not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"{method}: feature_mask must hold integer group ids, got dtype "
                             f"{mask.dtype}")
    try:
        mask = np.broadcast_to(mask, sample)
    except ValueError:
        raise ValueError(
            f"{method}: feature_mask of shape {np.shape(mask)} does not broadcast to one "
            f"sample's shape {sample}; give one group id per feature (or per position, with "
            "size-1 axes to share it across channels)"
        ) from None
    ids = np.unique(mask)
    groups = int(ids.size)
    if ids[0] != 0 or ids[-1] != groups - 1:
        missing = sorted(set(range(int(ids[-1]) + 1)) - set(ids.tolist()))[:8]
        raise ValueError(
            f"{method}: feature_mask group ids must be 0..G-1 without gaps; found {groups} ids "
            f"from {int(ids[0])} to {int(ids[-1])}"
            + (f" (missing {missing})" if missing else "")
            + "; renumber them, e.g. np.unique(mask, return_inverse=True)[1].reshape(mask.shape)"
        )
    return mask.astype(np.int32), groups


# --------------------------------------------------------------------------------------------
# The value function
# --------------------------------------------------------------------------------------------


def _value_function(ctx, x, target, mask, baseline, background, method) -> tuple[Callable, int]:
    """``(v, rows)``: ``v(z)`` maps a coalition ``z`` (``(G,)`` 0/1) to the ``(B,)`` scores of the
    composed inputs; ``rows`` is how many network rows one ``v`` call evaluates."""
    groups = jnp.asarray(mask)

    def compose(z, base):
        member = jnp.take(z, groups) > 0.5
        return jnp.where(member[None], x, base)

    def score(inputs):
        return target.score(ctx.forward(inputs)[0])

    if background is None:
        base = make_baseline(method, 0.0 if baseline is None else baseline, x)
        return (lambda z: score(compose(z, base))), x.shape[0]
    if baseline is not None:
        raise ValueError(f"{method}: pass baseline= or background=, not both")
    rows = reference_samples(method, "background", background, x,
                             "shap's KernelExplainer takes a few dozen training rows")

    def value(z):
        return jnp.mean(jax.vmap(lambda b: score(compose(z, b[None])))(rows), axis=0)

    return value, x.shape[0] * rows.shape[0]


def _chunk(method: str, batch_size, x, rows: int, per_item: int) -> int | None:
    """Items (coalitions, orderings) per vmapped chunk; ``"auto"``: `AUTO_CHUNK_ELEMENTS` of
    input per chunk."""
    size = check_size(method, "batch_size", batch_size)
    if size != "auto":
        return size
    per_row = int(np.prod(x.shape[1:]))
    return max(1, AUTO_CHUNK_ELEMENTS // max(1, rows * per_item * per_row))


def _spread(phi, mask, x):
    """``(G, B)`` group values to ``(B, *x.shape[1:])``: each feature gets its group's."""
    return jnp.take(phi.T, jnp.asarray(mask), axis=1).astype(x.dtype)


def _prepare(ctx, x, target, method, feature_mask, grid, baseline, background):
    mask, groups = feature_groups(method, x, feature_mask, grid)
    target = pin_target(ctx, x, target)
    value, rows = _value_function(ctx, x, target, mask, baseline, background, method)
    return mask, groups, value, rows


# --------------------------------------------------------------------------------------------
# Exact
# --------------------------------------------------------------------------------------------


def exact_coefficients(groups: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``2^G`` coalitions ``(2^G, G)`` (0/1) and the coefficients ``c`` with
    ``phi_i = sum_S c[S, i] v(S)``: ``|S|-1)!(G-|S|)!/G!`` if ``i`` in ``S``, else
    ``-|S|!(G-|S|-1)!/G!`` (float64)."""
    bits = (np.arange(2**groups)[:, None] >> np.arange(groups)[None]) & 1
    size = bits.sum(axis=1, keepdims=True)
    weight = np.array([math.factorial(s) * math.factorial(groups - s - 1) / math.factorial(groups)
                       for s in range(groups)] + [0.0])
    inside = weight[np.maximum(size - 1, 0)]
    outside = weight[np.minimum(size, groups)]
    return bits, np.where(bits == 1, inside, -outside)


@register_method("shapley_values", family="shapley", static_arrays=("feature_mask",))
def shapley_values(ctx, x, target, *, feature_mask=None, grid=None, baseline=None,
                   background=None, batch_size: int | str | None = "auto"):
    """Exact Shapley values of feature groups, over all :math:`2^G` coalitions (module doc).

    Args:
      feature_mask: integer group ids ``0..G-1``, one per feature of one sample (or broadcasting
        to it, e.g. ``(H, W, 1)`` for pixels); default: each feature its own group (tables and
        1D signals) or ``grid=(4, 4)`` (images). At most 16 groups.
      grid: superpixels instead of a mask: ``(gh, gw)`` bands over the leading axes (`grid_mask`).
      baseline: the value of absent features: a scalar, one sample or a batch (default 0).
      background: instead of a baseline, ``(M, *x.shape[1:])`` rows: a coalition's value is the
        mean score over them (shap's ``KernelExplainer``); costs ``M`` times the evaluations.
      batch_size: coalitions per vmapped chunk (memory ~ one chunk of forward passes); ``None``:
        all at once; ``"auto"``: about 2^18 input elements per chunk.

    Returns an array shaped like ``x``; each group's features hold its Shapley value, so
    ``sum`` over a group's *distinct* value is :math:`v(N) - v(\\emptyset)`.
    """
    mask, groups, value, rows = _prepare(ctx, x, target, "shapley_values", feature_mask, grid,
                                         baseline, background)
    if groups > MAX_EXACT_GROUPS:
        raise ValueError(
            f"shapley_values: {groups} feature groups need 2^{groups} coalitions; exact Shapley "
            f"values take at most {MAX_EXACT_GROUPS} groups. Group the features with "
            "feature_mask= or grid=, or estimate them with method='kernel_shap' (n_samples=) or "
            "'shapley_sampling' (n_permutations=)"
        )
    coalitions, coefficients = exact_coefficients(groups)
    chunk = _chunk("shapley_values", batch_size, x, rows, 1)

    def term(item):
        z, c = item
        return c[:, None] * value(z)[None, :]

    items = (jnp.asarray(coalitions, x.dtype), jnp.asarray(coefficients, x.dtype))
    return _spread(chunked_sum(term, items, chunk), mask, x)




# --------------------------------------------------------------------------------------------
# KernelSHAP
# --------------------------------------------------------------------------------------------


def kernel_shap_design(groups: int, n_samples: int):
    """shap's deterministic part of KernelSHAP's coalition design (``KernelExplainer``).

    Sizes ``s`` and ``G - s`` pair up; size class ``k`` (``s = k + 1``) has kernel weight
    :math:`\\propto (G-1)/(s(G-s))`, doubled for a pair, normalised to 1. Size classes are
    enumerated completely, smallest first, while the budget left covers all their subsets at
    the expected rate; each enumerated subset gets its class weight divided by the number of
    subsets. Returns ``(coalitions (F, G), weights (F,), random_count, size_probabilities,
    first_random_size, weight_left)``: the rest of the budget is drawn at random from the
    remaining classes with the given probabilities and shares ``weight_left`` equally.
    """
    subset_sizes = math.ceil((groups - 1) / 2)
    paired_sizes = (groups - 1) // 2
    weights = np.array([(groups - 1) / (s * (groups - s)) for s in range(1, subset_sizes + 1)])
    weights[:paired_sizes] *= 2
    weights /= weights.sum()
    remaining = weights.copy()
    left = n_samples
    full = 0
    rows, row_weights = [], []
    for size in range(1, subset_sizes + 1):
        count = math.comb(groups, size) * (2 if size <= paired_sizes else 1)
        if left * remaining[size - 1] / count < 1.0 - 1e-8:
            break
        full += 1
        left -= count
        if remaining[size - 1] < 1.0:
            remaining = remaining / (1.0 - remaining[size - 1])
        weight = weights[size - 1] / math.comb(groups, size)
        if size <= paired_sizes:
            weight /= 2.0
        for members in itertools.combinations(range(groups), size):
            z = np.zeros(groups)
            z[list(members)] = 1.0
            rows.append(z)
            row_weights.append(weight)
            if size <= paired_sizes:
                rows.append(1.0 - z)
                row_weights.append(weight)
    coalitions = np.array(rows).reshape(-1, groups)
    probabilities = weights[full:] / weights[full:].sum() if full < subset_sizes else np.ones(1)
    weight_left = float(weights[full:].sum())
    return (coalitions, np.array(row_weights), left if full < subset_sizes else 0,
            probabilities, full + 1, weight_left)


def _random_coalitions(key, groups, count, probabilities, first_size):
    """``count`` coalitions in complementary pairs: a size class drawn with ``probabilities``
    (size ``first_size + k``), then a uniform subset of that size and its complement."""
    pairs = -(-count // 2)
    size_key, order_key = jax.random.split(key)
    sizes = first_size + jax.random.choice(size_key, probabilities.size, (pairs,),
                                           p=jnp.asarray(probabilities))
    ranks = jnp.argsort(jax.random.uniform(order_key, (pairs, groups)), axis=1).argsort(axis=1)
    z = (ranks < sizes[:, None]).astype(jnp.float32)
    return jnp.stack([z, 1.0 - z], axis=1).reshape(2 * pairs, groups)[:count]


@register_method("kernel_shap", family="shapley", stochastic=True,
                 static_arrays=("feature_mask",))
def kernel_shap(ctx, x, target, *, n_samples: int | str = "auto", feature_mask=None, grid=None,
                baseline=None, background=None, batch_size: int | str | None = "auto"):
    """KernelSHAP (Lundberg & Lee 2017) as shap's ``KernelExplainer`` computes it.

    ``n_samples`` coalitions (default shap's ``2 G + 2048``, at most :math:`2^G - 2`) besides the
    empty and the full one: the size classes shap enumerates completely (`kernel_shap_design`),
    the rest drawn from ``ctx.key`` (``explain(..., key=)``) in complementary pairs, weighted so
    the random part carries the remaining kernel weight. With :math:`e = v(N) - v(\\emptyset)`,
    the weighted least squares problem

    .. math:: \\min_\\phi \\sum_k w_k \\Big(v(z_k) - v(\\emptyset) - \\sum_i z_{k,i}\\phi_i\\Big)^2
       \\quad\\text{s.t.}\\quad \\sum_i \\phi_i = e

    is solved as shap does, eliminating the last group (:math:`\\phi_G = e - \\sum_{i<G}\\phi_i`),
    so efficiency holds exactly. Its normal equations are accumulated chunk by chunk.
    Differences from shap: a coalition drawn twice is evaluated twice (shap evaluates it once,
    doubles its weight and draws another), the coalitions are shared by the batch, and there is
    no L1 feature selection (shap's ``l1_reg``) and no dropping of groups equal to the
    background. With ``n_samples >= 2^G - 2`` every coalition is used: the exact values.

    Other arguments as in `shapley_values` (``G`` may be large: the cost is ``n_samples``
    evaluations).
    """
    mask, groups, value, rows = _prepare(ctx, x, target, "kernel_shap", feature_mask, grid,
                                         baseline, background)
    if n_samples == "auto":
        n_samples = 2 * groups + 2048
    n_samples = check_positive_int("kernel_shap", "n_samples", n_samples)
    full_value = value(jnp.ones(groups, x.dtype))
    null_value = value(jnp.zeros(groups, x.dtype))
    total = full_value - null_value
    if groups == 1:
        return _spread(total[None], mask, x)
    n_samples = min(n_samples, 2**groups - 2) if groups <= 30 else n_samples
    fixed, fixed_weights, random_count, probabilities, first_size, weight_left = (
        kernel_shap_design(groups, n_samples))
    parts = [jnp.asarray(fixed, x.dtype)]
    weights = [jnp.asarray(fixed_weights, x.dtype)]
    if random_count:
        parts.append(_random_coalitions(ctx.key, groups, random_count, probabilities,
                                        first_size).astype(x.dtype))
        weights.append(jnp.full((random_count,), weight_left / random_count, x.dtype))
    coalitions, weights = jnp.concatenate(parts), jnp.concatenate(weights)
    # eliminate the last group: regress v(z) - v(0) - z_G e on e_k = z_{<G} - z_G
    design = coalitions[:, :-1] - coalitions[:, -1:]
    gram = (design * weights[:, None]).T @ design
    chunk = _chunk("kernel_shap", batch_size, x, rows, 1)

    def term(item):
        e, w, z = item
        return (w * e)[:, None] * value(z)[None, :]

    moments = chunked_sum(term, (design, weights, coalitions), chunk)  # sum_k w_k e_k v(z_k)
    weighted = (weights[:, None] * design).sum(axis=0)
    last = (weights * coalitions[:, -1])[:, None] * design
    rhs = (moments - weighted[:, None] * null_value[None, :]
           - last.sum(axis=0)[:, None] * total[None, :])
    head = jnp.linalg.lstsq(gram, rhs)[0]  # (G-1, B); min-norm where the design is short
    phi = jnp.concatenate([head, (total - head.sum(axis=0))[None]], axis=0)
    return _spread(phi, mask, x)




# --------------------------------------------------------------------------------------------
# Permutation sampling
# --------------------------------------------------------------------------------------------


@register_method("shapley_sampling", family="shapley", stochastic=True,
                 static_arrays=("feature_mask",))
def shapley_sampling(ctx, x, target, *, n_permutations: int = 25, feature_mask=None, grid=None,
                     baseline=None, background=None, batch_size: int | str | None = "auto"):
    """Shapley value sampling (Castro et al. 2009), Captum's ``ShapleyValueSampling``.

    For each of ``n_permutations`` random orderings :math:`\\pi` of the groups (drawn from
    ``ctx.key``, shared by the batch), the groups are added to the baseline one after another and
    each is credited with the change of the score it causes:

    .. math:: \\hat\\phi_i = \\frac{1}{P}\\sum_{p=1}^{P} \\Big(v(\\mathrm{pre}_{\\pi_p}(i) \\cup
       \\{i\\}) - v(\\mathrm{pre}_{\\pi_p}(i))\\Big)

    ``G`` evaluations per ordering plus one of the baseline. Every ordering satisfies efficiency
    exactly, so the estimate does too. Unbiased; converges to `shapley_values` as
    :math:`1/\\sqrt{P}`. ``batch_size`` counts orderings per chunk (each ``G`` forward passes).
    Other arguments as in `shapley_values`.
    """
    mask, groups, value, rows = _prepare(ctx, x, target, "shapley_sampling", feature_mask, grid,
                                         baseline, background)
    n_permutations = check_positive_int("shapley_sampling", "n_permutations", n_permutations)
    null_value = value(jnp.zeros(groups, x.dtype))
    chunk = _chunk("shapley_sampling", batch_size, x, rows, groups)

    def contributions(key):
        rank = jnp.argsort(jax.random.permutation(key, groups))  # position of each group
        prefixes = (rank[None, :] < jnp.arange(1, groups + 1)[:, None]).astype(x.dtype)
        values = jax.vmap(value)(prefixes)  # (G, B): after adding the k-th group
        before = jnp.concatenate([null_value[None], values[:-1]], axis=0)
        return (values - before)[rank]  # group i was added at position rank[i]

    keys = jax.random.split(ctx.key, n_permutations)
    phi = chunked_sum(contributions, keys, chunk) / n_permutations
    return _spread(phi, mask, x)


