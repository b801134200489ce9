"""TreeSHAP in JAX: path-dependent (Lundberg et al. 2018/2020) and interventional, exact.

Both are computed path by path (GPUTreeShap's formulation, Mitchell et al. 2022): a leaf with
value ``v`` reached through the unique features ``1..n`` of its path contributes the Shapley
values of the product game

    v(S) = v · Π_{i ∈ S} o_i · Π_{i ∉ S} z_i

where ``o_i`` is 1 when the explained row follows the path's splits on feature ``i`` (else 0):

* path-dependent: ``z_i`` is the zero fraction, the share of training cover that follows those
  splits (the game of Lundberg et al.'s Algorithm 2, whose EXTEND/UNWIND recursion sums the
  Shapley weights of each path). Here the sum is the integral
  ``φ_i = v (o_i − z_i) ∫₀¹ Π_{j≠i} (z_j + t (o_j − z_j)) dt`` (Linear TreeShap, Yu et al.
  2022), exact by Gauss–Legendre quadrature: no sequential loop, every element independent.
* interventional against a background row ``r``: ``z_i`` is 1 when ``r`` follows the splits (the
  game ``f(x_S, r_{S̄})``, Lundberg et al. 2020 / shap's ``tree_shap_indep``). With 0/1 fractions
  the weights are closed-form: if some feature has ``o = z = 0`` the leaf is unreachable;
  otherwise with ``p`` features where only ``x`` follows and ``q`` where only ``r`` does,
  ``φ_i = v (p−1)! q! / (p+q)!`` for the former and ``−v p! (q−1)! / (p+q)!`` for the latter.
  Values are averaged over the background rows.

Rows are vmapped (a batch axis in every array), chunked (``chunk_rows`` rows at a time, one
`lax.map` step each, so memory is bounded by the chunk) and the whole forest is processed at
once per chunk; everything is one jit-compiled function per (ensemble shapes, chunk).
"""

from __future__ import annotations

import functools
import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from jxai.trees.ensemble import TreeEnsemble, check_rows
from jxai.trees.paths import PathBucket, enumerate_paths, expected_value

__all__ = ["PERTURBATIONS", "shap_values", "tree_shap_all"]

PERTURBATIONS = ("auto", "tree_path_dependent", "interventional")

# Bytes of the largest intermediate array per row chunk: (rows, paths, nodes, width) floats for
# the path-dependent algorithm. On CPU a chunk that stays near the caches is several times faster
# per row (100-tree forest, 200 rows: 0.14 s in chunks of 1-4 rows, 0.33 s in chunks of 8);
# accelerators want large chunks.
_CHUNK_BYTES = {"cpu": 2**24, "gpu": 2**30, "tpu": 2**30}

_PATHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_paths(ensemble: TreeEnsemble) -> tuple[PathBucket, ...]:
    """`enumerate_paths`, once per ensemble object (kept while the ensemble lives)."""
    if ensemble not in _PATHS:
        _PATHS[ensemble] = enumerate_paths(ensemble)
    return _PATHS[ensemble]


def _float():
    """JAX's default float: float32, or float64 under ``jax_enable_x64``."""
    return jnp.asarray(0.0).dtype


def _inside(bucket: PathBucket, rows):
    """(R, P, L) whether each row follows each path's splits on each element's feature."""
    feature = jnp.minimum(jnp.asarray(bucket.feature), rows.shape[1] - 1)  # root/padding: any
    values = rows[:, feature]  # (R, P, L)
    return (values > jnp.asarray(bucket.lower)) & (values <= jnp.asarray(bucket.upper))


def _path_dependent(bucket: PathBucket, rows):
    """(R, P, L) per-element Shapley weight × (o − z) of the path-dependent product game.

    The Shapley weights |S|!(n−1−|S|)!/n! are Beta integrals, so the EXTEND/UNWIND sums are one
    integral (Yu et al. 2022, "Linear TreeShap"):

        Σ_{S ⊆ N∖i} |S|!(n−1−|S|)!/n! Π_{j∈S} o_j Π_{j∉S} z_j = ∫₀¹ Π_{j≠i} (z_j + t (o_j − z_j)) dt,

    a polynomial of degree ≤ L − 2 in t, which Gauss–Legendre quadrature with ⌈(L−1)/2⌉ nodes
    integrates exactly. The product leaving out element i is the path's product over its factor,
    which is positive (z > 0, nodes in (0, 1)); where the product underflows the true value is
    below 1e-38 · v as well. Nothing is sequential: every (row, path, node, element) is
    independent.
    """
    dtype = _float()
    o = _inside(bucket, rows).astype(dtype)[:, :, None, :]  # (R, P, 1, L)
    z = jnp.asarray(bucket.zero, dtype)[None, :, None, :]  # (1, P, 1, L)
    nodes, weights = _gauss_legendre(max(1, -(-(o.shape[-1] - 1) // 2)), dtype)
    g = z + nodes[:, None] * (o - z)  # (R, P, Q, L), > 0: z > 0 and the nodes lie in (0, 1)
    integral = jnp.einsum("rpql,q->rpl", jnp.prod(g, axis=-1, keepdims=True) / g, weights)
    return integral * (o - z)[:, :, 0, :]


@functools.cache
def _gauss_legendre_np(count: int):
    nodes, weights = np.polynomial.legendre.leggauss(count)
    return (nodes + 1) / 2, weights / 2  # on [0, 1]


def _gauss_legendre(count: int, dtype):
    nodes, weights = _gauss_legendre_np(count)
    return jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)


def _weight_tables(width: int, dtype):
    """``(p−1)! q! / (p+q)!`` and ``p! (q−1)! / (p+q)!`` for p, q = 0..width (0 where undefined)."""
    plus = np.zeros((width + 1, width + 1))
    minus = np.zeros((width + 1, width + 1))
    for p in range(width + 1):
        for q in range(width + 1 - p):
            if p:
                plus[p, q] = math.exp(math.lgamma(p) + math.lgamma(q + 1) - math.lgamma(p + q + 1))
            if q:
                minus[p, q] = math.exp(math.lgamma(p + 1) + math.lgamma(q) - math.lgamma(p + q + 1))
    return jnp.asarray(plus, dtype), jnp.asarray(minus, dtype)


def _interventional(bucket: PathBucket, rows, background):
    """(R, P, L) per-element Shapley values / v of the 0/1 product games, averaged over the
    background rows (one `lax.scan` step per background row)."""
    dtype = _float()
    a = _inside(bucket, rows)  # (R, P, L)
    plus_w, minus_w = _weight_tables(a.shape[-1], dtype)

    def one(total, reference):
        b = _inside(bucket, reference[None])  # (1, P, L)
        plus, minus = a & ~b, ~a & b
        p, q = plus.sum(-1), minus.sum(-1)
        live = ~jnp.any(~a & ~b, axis=-1, keepdims=True)
        phi = plus * plus_w[p, q][..., None] - minus * minus_w[p, q][..., None]
        return total + jnp.where(live, phi, 0.0), None

    total, _ = jax.lax.scan(one, jnp.zeros(a.shape, dtype), background)
    return total / background.shape[0]


def _to_features(bucket: PathBucket, weights, n_features: int):
    """(R, F, C): Σ over the paths' elements of weight × leaf value, per element's feature."""
    value = jnp.asarray(bucket.value, weights.dtype)  # (P, C)
    r, p, width = weights.shape
    contrib = weights[..., None] * value[None, :, None, :]  # (R, P, L, C)
    flat = jnp.moveaxis(contrib, 0, 2).reshape(p * width, r, value.shape[1])
    ids = jnp.asarray(bucket.feature).reshape(-1)
    summed = jax.ops.segment_sum(flat, ids, num_segments=n_features + 1)  # root/padding: slot F
    return jnp.moveaxis(summed[:n_features], 1, 0)


@functools.partial(jax.jit, static_argnames=("n_features", "chunk", "interventional"))
def _compiled(buckets, x, background, *, n_features: int, chunk: int, interventional: bool):
    batch = x.shape[0]
    n_chunks = -(-batch // chunk)
    padded = jnp.concatenate([x, jnp.broadcast_to(x[:1], (n_chunks * chunk - batch, n_features))])

    def rows_chunk(rows):
        total = 0.0
        for bucket in buckets:
            if interventional:
                weights = _interventional(bucket, rows, background)
            else:
                weights = _path_dependent(bucket, rows)
            total = total + _to_features(bucket, weights, n_features)
        return total

    if n_chunks == 1:
        out = rows_chunk(padded)
    else:
        out = jax.lax.map(rows_chunk, padded.reshape(n_chunks, chunk, n_features))
        out = out.reshape(n_chunks * chunk, *out.shape[2:])
    return out[:batch]


def _resolve(feature_perturbation: str, background):
    if feature_perturbation not in PERTURBATIONS:
        raise ValueError(f"tree_shap: feature_perturbation must be one of {PERTURBATIONS}, got "
                         f"{feature_perturbation!r}")
    if feature_perturbation == "auto":
        return background is not None
    if feature_perturbation == "interventional":
        if background is None:
            raise ValueError("tree_shap: feature_perturbation='interventional' needs "
                             "background= rows (e.g. 100 training rows)")
        return True
    if background is not None:
        raise ValueError("tree_shap: background= is only used with feature_perturbation="
                         "'interventional' (or 'auto'); the path-dependent algorithm takes the "
                         "covers stored in the trees")
    return False


def _chunk_rows(chunk_rows, buckets, n_outputs: int, batch: int, platform: str) -> int:
    if chunk_rows != "auto":
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int | np.integer) or \
                chunk_rows < 1:
            raise ValueError(f"tree_shap: chunk_rows must be 'auto' or a positive int, got "
                             f"{chunk_rows!r}")
        return int(min(chunk_rows, batch))
    per_row = sum(b.shape[0] * b.shape[1] * max(n_outputs, (b.shape[1] + 1) // 2)
                  for b in buckets) * 4
    budget = _CHUNK_BYTES.get(platform, _CHUNK_BYTES["cpu"])
    return int(max(1, min(batch, budget // max(per_row, 1))))


def tree_shap_all(ensemble: TreeEnsemble, x, *, feature_perturbation: str = "auto",
                  background=None, chunk_rows="auto"):
    """``(B, F, C)`` SHAP values of every output, and ``(C,)`` the expected value (float64 numpy
    for the path-dependent algorithm, the background's mean output for the interventional one).

    ``φ[b, :, c].sum() + expected[c] == ensemble(x)[b, c]`` (local accuracy).
    """
    interventional = _resolve(feature_perturbation, background)
    x = check_rows(ensemble, x, "tree_shap")
    buckets = cached_paths(ensemble)
    if interventional:
        background = check_rows(ensemble, background, "tree_shap", "background")
        expected = jnp.mean(ensemble.predict(background), axis=0)
    else:
        background = jnp.zeros((1, ensemble.n_features), jnp.float32)
        expected = expected_value(ensemble, buckets)
    platform = next(iter(x.devices())).platform if hasattr(x, "devices") else "cpu"
    chunk = _chunk_rows(chunk_rows, buckets, ensemble.n_outputs, x.shape[0], platform)
    values = _compiled(buckets, x, background, n_features=ensemble.n_features, chunk=chunk,
                       interventional=interventional)
    return values, expected


def shap_values(ensemble: TreeEnsemble, x, *, feature_perturbation: str = "auto",
                background=None, chunk_rows="auto"):
    """SHAP values in ``shap.TreeExplainer``'s layout, for code ported from shap:
    ``(values, expected_value)`` with values ``(B, F)`` and a scalar expected value for one
    output, ``(B, F, C)`` and ``(C,)`` for several (a classifier's classes).

    ``feature_perturbation``: ``"auto"`` (shap's default: interventional when ``background`` is
    given, else path-dependent), ``"tree_path_dependent"`` or ``"interventional"``.
    ``chunk_rows``: rows per compiled step (``"auto"``: as many as fit a fixed memory budget).
    """
    values, expected = tree_shap_all(ensemble, x, feature_perturbation=feature_perturbation,
                                     background=background, chunk_rows=chunk_rows)
    if ensemble.n_outputs == 1:
        return values[..., 0], float(np.asarray(expected)[0])
    return values, np.asarray(expected)
