"""`TreeEnsemble`: a forest or boosted ensemble of binary decision trees as padded arrays.

Every tree is stored in the same layout, padded to the largest tree's node count ``N``:

* ``children_left``, ``children_right``: ``(T, N)`` int32 child indices, -1 at leaves (and padding);
* ``feature``: ``(T, N)`` int32 split feature, -1 at leaves;
* ``threshold``: ``(T, N)`` float64 split threshold; a row goes left when ``x[feature] <= threshold``
  with ``x`` cast to float32 first (scikit-learn's rule: its trees compare float32 inputs to
  float64 thresholds); ``threshold32`` is the largest float32 not above it, which decides every
  float32 comparison the same way (`threshold_float32`);
* ``value``: ``(T, N, C)`` float64, what the node adds to each of the C outputs, already scaled (a
  random forest's tree holds its class fractions / T; a boosted tree its value × learning rate);
* ``cover``: ``(T, N)`` float64, the (weighted) training samples that reached the node: the
  probabilities with which path-dependent TreeSHAP follows each branch of a missing feature;
* ``base``: ``(C,)`` float64 offset (a boosted model's initial raw prediction; 0 for forests).

The ensemble's output is ``base + Σ_t value[t, leaf_t(x)]``: ``predict_proba`` for forests of
classifiers, ``predict`` for regressors, the raw margin (``decision_function``) for gradient
boosting classifiers (what ``shap.TreeExplainer`` explains with ``model_output="raw"``). The arrays
are host numpy float64 leaves of a pytree; JAX casts them to its default float type when they enter
a computation (float64 under ``jax_enable_x64``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["OUTPUTS", "TreeEnsemble", "from_arrays", "threshold_float32"]

# What the ensemble's outputs are: class probabilities (forests of classifiers), values
# (regressors), the raw margin of a boosted classifier (log-odds / softmax logits).
OUTPUTS = ("probability", "value", "margin")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """Trees as padded arrays (see the module docstring); call it as ``f(x) -> (B, C)`` outputs.

    Build one with `jxai.trees.from_sklearn` or `jxai.trees.from_arrays`. It is a pytree (arrays
    are leaves, the rest static), so it can be passed through `jax.jit`.
    """

    children_left: np.ndarray
    children_right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    threshold32: np.ndarray
    value: np.ndarray
    cover: np.ndarray
    base: np.ndarray
    n_features: int = dataclasses.field(metadata=dict(static=True))
    output: str = dataclasses.field(default="value", metadata=dict(static=True))
    max_depth: int = dataclasses.field(default=0, metadata=dict(static=True))
    source: str = dataclasses.field(default="", metadata=dict(static=True))

    @property
    def n_trees(self) -> int:
        return int(np.shape(self.children_left)[0])

    @property
    def n_outputs(self) -> int:
        return int(np.shape(self.base)[-1])

    def __repr__(self) -> str:
        return (f"TreeEnsemble({self.source or 'trees'}: {self.n_trees} trees, depth "
                f"{self.max_depth}, {self.n_features} features -> {self.n_outputs} "
                f"{self.output} output{'s' if self.n_outputs != 1 else ''})")

    def predict(self, x) -> jax.Array:
        """``(B, C)`` outputs ``base + Σ_t value[t, leaf_t(x)]`` for ``x`` of shape ``(B, F)``,
        jit-compiled and vectorised over trees and rows."""
        x = check_rows(self, x, "predict")
        return _predict(self, x)

    __call__ = predict


def check_rows(ensemble: TreeEnsemble, x, where: str, name: str = "x") -> jax.Array:
    """``x`` as a float array of shape ``(B, n_features)``, or a ValueError saying what is wrong."""
    if isinstance(x, list | tuple):
        x = np.asarray(x)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: {name} must be an array of rows (B, {ensemble.n_features}), "
                        f"got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != ensemble.n_features:
        hint = (f"add a batch axis: {name}[None]" if x.shape == (ensemble.n_features,)
                else f"pass rows of {ensemble.n_features} features")
        raise ValueError(f"{where}: {name} of shape {tuple(x.shape)} does not fit {ensemble!r}, "
                         f"which takes (B, {ensemble.n_features}); {hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: {name} has 0 rows (shape {tuple(x.shape)}); pass at least "
                         "one row")
    if not isinstance(x, jax.core.Tracer):
        finite = np.isfinite(np.asarray(x, np.float64))
        if not finite.all():
            bad = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise ValueError(f"{where}: {name} contains NaN or inf ({int((~finite).sum())} "
                             f"values, first at {bad}); missing values are not supported: "
                             "impute them first")
    return jnp.asarray(x, jnp.float32)  # scikit-learn's trees see float32 inputs


@jax.jit
def _predict(ensemble: TreeEnsemble, x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    left = jnp.asarray(ensemble.children_left)
    right = jnp.asarray(ensemble.children_right)
    feature = jnp.maximum(jnp.asarray(ensemble.feature), 0)
    threshold = jnp.asarray(ensemble.threshold32)
    rows = jnp.arange(x.shape[0])

    def step(_, node):  # node: (T, B) current node of every tree for every row
        leaf = jnp.take_along_axis(left, node, axis=1) < 0
        f = jnp.take_along_axis(feature, node, axis=1)
        t = jnp.take_along_axis(threshold, node, axis=1)
        goes_left = x[rows[None, :], f] <= t
        child = jnp.where(goes_left, jnp.take_along_axis(left, node, axis=1),
                          jnp.take_along_axis(right, node, axis=1))
        return jnp.where(leaf, node, child)

    start = jnp.zeros((left.shape[0], x.shape[0]), jnp.int32)
    leaves = jax.lax.fori_loop(0, ensemble.max_depth, step, start)
    value = jnp.asarray(ensemble.value)  # (T, N, C)
    per_tree = jnp.take_along_axis(value, leaves[:, :, None], axis=1)  # (T, B, C)
    return jnp.asarray(ensemble.base)[None, :] + per_tree.sum(axis=0)


def threshold_float32(threshold):
    """The largest float32 ``t32 <= threshold`` (float64), so that for every float32 ``x``
    ``x <= t32`` exactly when ``x <= threshold``. Rounding to nearest could round a threshold up
    past a float32 value (scikit-learn's thresholds are midpoints between float32 values).

    """
    t = np.asarray(threshold, np.float64)
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    return np.where(up, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float32)


def from_arrays(
    children_left: Sequence,
    children_right: Sequence,
    feature: Sequence,
    threshold: Sequence,
    value: Sequence,
    cover: Sequence,
    *,
    base=0.0,
    n_features: int | None = None,
    output: str = "value",
    source: str = "",
) -> TreeEnsemble:
    """A `TreeEnsemble` from per-tree node arrays (one sequence entry per tree).

    Args:
      children_left, children_right: per tree, ``(n_nodes,)`` child indices, negative at leaves
        (scikit-learn's ``tree_.children_left``). Node 0 is the root.
      feature: per tree, ``(n_nodes,)`` split feature (anything at leaves).
      threshold: per tree, ``(n_nodes,)`` thresholds: left when ``float32(x[feature]) <= t``.
      value: per tree, ``(n_nodes, C)`` (or ``(n_nodes,)`` for C = 1): what a leaf adds to the
        outputs, already scaled (forest: / n_trees; boosting: × learning rate). Only leaves' values
        are used; the internal nodes' expectations are recomputed from the leaves and covers.
      cover: per tree, ``(n_nodes,)`` training sample weight reaching each node (positive).
      base: scalar or ``(C,)`` offset added to the sum of the trees.
      n_features: the input width (default: 1 + the largest split feature).
      output: ``"probability"``, ``"value"`` or ``"margin"`` (see `OUTPUTS`).
    """
    if output not in OUTPUTS:
        raise ValueError(f"from_arrays: output must be one of {OUTPUTS}, got {output!r}")
    n_trees = len(children_left)
    lengths = {len(children_left), len(children_right), len(feature), len(threshold), len(value),
               len(cover)}
    if n_trees == 0 or len(lengths) != 1:
        raise ValueError("from_arrays: give the same number (>= 1) of trees in every argument, "
                         f"got {sorted(lengths)}")
    values = [np.asarray(v, np.float64) for v in value]
    values = [v[:, None] if v.ndim == 1 else v.reshape(v.shape[0], -1) for v in values]
    n_out = values[0].shape[1]
    n_nodes = max(len(np.asarray(c)) for c in children_left)
    shape = (n_trees, n_nodes)
    arrays = dict(
        children_left=np.full(shape, -1, np.int32), children_right=np.full(shape, -1, np.int32),
        feature=np.full(shape, -1, np.int32), threshold=np.zeros(shape, np.float64),
        value=np.zeros((*shape, n_out), np.float64), cover=np.ones(shape, np.float64))
    depth = 0
    for t in range(n_trees):
        left = np.asarray(children_left[t], np.int64)
        right = np.asarray(children_right[t], np.int64)
        n = len(left)
        leaf = left < 0
        if values[t].shape != (n, n_out) or len(right) != n or len(np.asarray(feature[t])) != n:
            raise ValueError(f"from_arrays: tree {t} has {n} nodes but children_right, feature or "
                             f"value of another length (value {values[t].shape}, expected "
                             f"({n}, {n_out}))")
        if np.any(right[leaf] >= 0) or np.any(right[~leaf] < 0):
            raise ValueError(f"from_arrays: tree {t}: a node has exactly one child")
        tree_cover = np.asarray(cover[t], np.float64)
        if np.any(~(tree_cover > 0)):
            raise ValueError(f"from_arrays: tree {t} has nodes with cover <= 0; path-dependent "
                             "TreeSHAP needs the positive training weight of every node")
        arrays["children_left"][t, :n] = np.where(leaf, -1, left)
        arrays["children_right"][t, :n] = np.where(leaf, -1, right)
        arrays["feature"][t, :n] = np.where(leaf, -1, np.asarray(feature[t], np.int64))
        arrays["threshold"][t, :n] = np.where(leaf, 0.0, np.asarray(threshold[t], np.float64))
        arrays["value"][t, :n] = values[t]
        arrays["cover"][t, :n] = tree_cover
        depth = max(depth, _depth(left, right))
    used = arrays["feature"].max()
    n_features = int(used) + 1 if n_features is None else int(n_features)
    if used >= n_features:
        raise ValueError(f"from_arrays: trees split on feature {used} but n_features="
                         f"{n_features}")
    base = np.broadcast_to(np.asarray(base, np.float64), (n_out,)).copy()
    arrays["threshold32"] = threshold_float32(arrays["threshold"])
    return TreeEnsemble(**arrays, base=base, n_features=n_features, output=output,
                        max_depth=depth, source=source)


def _depth(left, right) -> int:
    """The number of edges on the longest root-to-leaf path (a lone root: 0)."""
    depth = np.zeros(len(left), np.int64)
    deepest = 0
    for node in range(len(left)):  # scikit-learn numbers parents before children
        if left[node] >= 0:
            if left[node] <= node or right[node] <= node:
                return _depth_any_order(left, right)
            depth[left[node]] = depth[right[node]] = depth[node] + 1
            deepest = max(deepest, depth[node] + 1)
    return int(deepest)


def _depth_any_order(left, right) -> int:
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if left[node] >= 0:
            stack += [(left[node], d + 1), (right[node], d + 1)]
    return deepest
