"""Root-to-leaf paths of a `TreeEnsemble`, enumerated once on the host (GPUTreeShap's layout).

TreeSHAP only needs, for every leaf, the conditions on the way to it: per *unique* feature on the
path (Mitchell et al. 2022, "GPUTreeShap", §3) the interval ``(lower, upper]`` a row's value must
lie in to follow the path (the intersection of that feature's splits) and its *zero fraction*:
the product of the cover ratios ``cover[child] / cover[parent]`` of those splits, the share of
the training data that follows the path's branches when the feature is unknown.

Paths are stored in buckets of equal width ``L``: element 0 is the root (no feature), then the
path's unique features, then padding. The root and the padding are *null players* (lower = -inf,
upper = +inf, zero fraction 1: every row and every background row follows them), which leave the
Shapley values of the other features unchanged, so every path of a bucket is processed alike.
Paths are grouped by length because the work per path grows as ``L²``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jxai.trees.ensemble import TreeEnsemble

__all__ = ["PathBucket", "enumerate_paths", "expected_value"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PathBucket:
    """``P`` paths of width ``L``: ``feature`` (P, L) int32 (``n_features`` for the root and
    padding: a dropped slot), ``lower``/``upper`` (P, L) float32 bounds (a row follows the path's
    splits on that feature when ``lower < float32(x) <= upper``), ``zero`` (P, L) float64 zero
    fractions, ``value`` (P, C) float64 leaf values, ``tree`` (P,) int32 the path's tree."""

    feature: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    zero: np.ndarray
    value: np.ndarray
    tree: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.feature.shape)


def enumerate_paths(ensemble: TreeEnsemble) -> tuple[PathBucket, ...]:
    """Every root-to-leaf path of every tree, merged per unique feature, in buckets by length.

    Vectorised over all leaves at once: each leaf walks up to the root (one step per depth level)
    and records its splits in dense ``(P, n_features)`` intervals and products.
    """
    left = np.asarray(ensemble.children_left, np.int64)
    right = np.asarray(ensemble.children_right, np.int64)
    n_trees, n_nodes = left.shape
    offset = (np.arange(n_trees) * n_nodes)[:, None]
    glob_left = np.where(left >= 0, left + offset, -1).ravel()
    glob_right = np.where(right >= 0, right + offset, -1).ravel()
    parent = np.full(n_trees * n_nodes, -1, np.int64)
    internal = np.flatnonzero(glob_left >= 0)
    parent[glob_left[internal]] = internal
    parent[glob_right[internal]] = internal
    reachable = parent >= 0
    reachable[::n_nodes] = True  # the roots
    leaves = np.flatnonzero(reachable & (glob_left < 0))

    feature = np.asarray(ensemble.feature, np.int64).ravel()
    threshold = np.asarray(ensemble.threshold32, np.float32).ravel()
    cover = np.asarray(ensemble.cover, np.float64).ravel()
    n_paths, n_features = len(leaves), ensemble.n_features
    lower = np.full((n_paths, n_features), -np.inf, np.float32)
    upper = np.full((n_paths, n_features), np.inf, np.float32)
    zero = np.ones((n_paths, n_features), np.float64)
    used = np.zeros((n_paths, n_features), bool)
    node = leaves.copy()
    rows = np.arange(n_paths)
    for _ in range(ensemble.max_depth):
        par = parent[node]
        walking = par >= 0
        if not walking.any():
            break
        r, child, par = rows[walking], node[walking], par[walking]
        f, t = feature[par], threshold[par]
        went_left = glob_left[par] == child
        upper[r, f] = np.where(went_left, np.minimum(upper[r, f], t), upper[r, f])
        lower[r, f] = np.where(went_left, lower[r, f], np.maximum(lower[r, f], t))
        zero[r, f] *= cover[child] / cover[par]
        used[r, f] = True
        node[walking] = par
    value = np.asarray(ensemble.value, np.float64).reshape(n_trees * n_nodes, -1)[leaves]
    return _buckets(used, lower, upper, zero, value, leaves // n_nodes, n_features)


def _width(length: int) -> int:
    """Bucket width for a path of ``length`` elements (root included): multiples of 4 up to
    16, then of 8 (the work per path is ∝ width², the compiled code per bucket is fixed)."""
    step = 4 if length <= 16 else 8
    return max(2, -(-length // step) * step)


def _buckets(used, lower, upper, zero, value, tree, n_features) -> tuple[PathBucket, ...]:
    lengths = used.sum(axis=1) + 1
    widths = np.array([_width(int(n)) for n in lengths])
    order = np.argsort(~used, axis=1, kind="stable")  # each path's features first
    buckets = []
    for width in np.unique(widths):
        paths = np.flatnonzero(widths == width)
        take = order[paths, : width - 1]
        real = np.take_along_axis(used[paths], take, axis=1)
        pad = lambda a, fill, dtype: np.concatenate(  # noqa: E731
            [np.full((len(paths), 1), fill, dtype),
             np.where(real, np.take_along_axis(a[paths], take, axis=1), fill).astype(dtype)],
            axis=1)
        feature_ids = np.broadcast_to(np.arange(n_features), used.shape)
        buckets.append(PathBucket(
            feature=pad(feature_ids, n_features, np.int32),
            lower=pad(lower, -np.inf, np.float32),
            upper=pad(upper, np.inf, np.float32),
            zero=pad(zero, 1.0, np.float64),
            value=value[paths],
            tree=tree[paths].astype(np.int32)))
    return tuple(buckets)


def expected_value(ensemble: TreeEnsemble, buckets=None) -> np.ndarray:
    """``(C,)`` the ensemble's output averaged over its training data as the covers weigh it:
    ``base + Σ_leaves value · cover[leaf] / cover[root]`` (the expected value of path-dependent
    TreeSHAP; ``shap.TreeExplainer().expected_value`` without data), in float64."""
    buckets = enumerate_paths(ensemble) if buckets is None else buckets
    total = np.asarray(ensemble.base, np.float64).copy()
    for b in buckets:
        total += (np.prod(b.zero, axis=1)[:, None] * b.value).sum(axis=0)
    return total
