"""TreeSHAP in JAX: path-dependent (Lundberg et al. 2018/2020) and interventional, exact.

Both are computed path by path (GPUTreeShap's formulation, Mitchell et al. 2022): a leaf with
value ``v`` reached through the unique features ``1..n`` of its path contributes the Shapley
values of the product game

    v(S) = v · Π_{i ∈ S} o_i · Π_{i ∉ S} z_i

where ``o_i`` is 1 when the explained row follows the path's splits on feature ``i`` (else 0):

* path-dependent: ``z_i`` is the zero fraction, the share of training cover that follows those
  splits (the recursion of Lundberg et al.'s Algorithm 2). The Shapley weights come from its
  EXTEND step (run over the path's elements once) and the UNWIND step's sum for each element
  (``unwound_path_sum`` in shap's C++): ``φ_i += w_i · (o_i − z_i) · v``.
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

# bytes of intermediate arrays per row chunk (rows × paths × width × about 12 arrays)
_CHUNK_BYTES = {"cpu": 2**28, "gpu": 2**31, "tpu": 2**31}

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
    """(R, P, L) per-element Shapley weight × (o − z) of the path-dependent product game."""
    dtype = _float()
    o = _inside(bucket, rows).astype(dtype)
    z = jnp.asarray(bucket.zero, dtype)[None]  # (1, P, L)
    width = o.shape[-1]
    k = jnp.arange(width, dtype=dtype)

    def extend(l, pw):  # EXTEND by element l: pw[k] ← (z pw[k] (l−k) + o pw[k−1] k) / (l+1)
        zl = jax.lax.dynamic_index_in_dim(z, l, axis=2)  # (1, P, 1)
        ol = jax.lax.dynamic_index_in_dim(o, l, axis=2)
        shifted = jnp.pad(pw[..., :-1], ((0, 0), (0, 0), (1, 0)))
        lf = l.astype(dtype)
        return (zl * pw * (lf - k) + ol * shifted * k) / (lf + 1)

    pw = jnp.zeros(o.shape, dtype).at[..., 0].set(1.0)
    pw = jax.lax.fori_loop(1, width, extend, pw)

    # UNWIND each element i (unwound_path_sum): o_i = 1 runs the recurrence over j = n−1 .. 0
    n = width - 1

    def unwind(step, carry):
        nop, total = carry
        j = n - 1 - step
        tmp = nop * (n + 1) / (j + 1).astype(dtype)
        pw_j = jax.lax.dynamic_index_in_dim(pw, j, axis=2)
        return pw_j - tmp * z * ((n - j).astype(dtype) / (n + 1)), total + tmp

    start = (jnp.broadcast_to(pw[..., n:], o.shape), jnp.zeros(o.shape, dtype))
    _, hot = jax.lax.fori_loop(0, n, unwind, start)
    # o_i = 0: Σ_j pw[j] (n+1) / (z_i (n−j)), the same sum for every element
    j = jnp.arange(n, dtype=dtype)
    cold = jnp.sum(pw[..., :n] * ((n + 1) / (n - j)), axis=-1, keepdims=True) / z
    return jnp.where(o > 0, hot, cold) * (o - z)


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
    per_row = sum(b.shape[0] * b.shape[1] * (10 + n_outputs) for b in buckets) * 4
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
