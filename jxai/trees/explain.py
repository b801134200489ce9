"""``jxai.explain(trees, x, "tree_shap")``: tree ensembles through jxai's front door.

`jxai.explain` hands a `TreeEnsemble` to `explain` here. Methods for trees are registered like
every other method (``fn(ctx, x, target, **params)``, in `jxai.list_methods()`); their context is
a `TreeContext` holding the ensemble instead of a network.

Targets are jxai's: the SHAP values of every output are computed, then combined as the target's
output mask weighs them (SHAP values are linear in the explained output): ``"max"`` (default) the
predicted class (the largest output; a regressor's only output), an int one output for every row,
a ``(B,)`` int array one per row, ``jxai.several(i, j)`` several stacked in front (``(T, B, F)``),
``"all"`` the sum of every output (for class probabilities that is ~0: the probabilities sum to
1), a float array ``(B, C)`` any weighting, a callable of the ``(B, C)`` outputs returning one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jxai._params import check_params, resolve_method
from jxai._targets import Target, parse_target, takes_output_index
from jxai.contract import register_method
from jxai.trees.ensemble import TreeEnsemble, check_rows
from jxai.trees.treeshap import tree_shap_all

__all__ = ["TREE_METHODS", "TreeContext", "explain"]

TREE_METHODS = ("tree_shap",)


class TreeContext:
    """What a tree method sees: the ensemble and a PRNG key (no network)."""

    def __init__(self, ensemble: TreeEnsemble, key):
        self.ensemble = ensemble
        self.key = key


@register_method("tree_shap", family="shapley")
def tree_shap(ctx, x, target: Target, *, feature_perturbation: str = "auto", background=None,
              chunk_rows="auto"):
    """TreeSHAP (Lundberg et al. 2018/2020), exact, for a `jxai.trees.TreeEnsemble`.

    ``feature_perturbation``: ``"tree_path_dependent"`` (the covers stored in the trees stand in
    for missing features), ``"interventional"`` (averaged over ``background`` rows: the game
    f(x_S, r_S̄)) or ``"auto"`` (shap's default: interventional when ``background`` is given).
    Returns ``(B, n_features)`` for one target (see `jxai.trees.explain` for targets).
    """
    ensemble = getattr(ctx, "ensemble", None)
    if not isinstance(ensemble, TreeEnsemble):
        raise TypeError("tree_shap explains tree ensembles: pass jxai.trees.from_sklearn(model) "
                        "(a jxai.trees.TreeEnsemble) to jxai.explain, not a network")
    values, _ = tree_shap_all(ensemble, x, feature_perturbation=feature_perturbation,
                              background=background, chunk_rows=chunk_rows)
    mask = target.mask(ensemble.predict(x).astype(values.dtype))  # (B, C)
    return jnp.einsum("bfc,bc->bf", values, mask)


def explain(ensemble: TreeEnsemble, x, method="tree_shap", *, target="max", key=None,
            seed: str = "logit", return_layers: bool = False, **params):
    """Explain a tree ensemble's outputs on rows ``x`` (B, n_features) with a tree method.

    Returns ``(B, n_features)`` attributions (``(T, B, n_features)`` for several targets); see
    the module docstring for targets and `tree_shap` for its parameters.
    """
    if not isinstance(method, str) or method not in TREE_METHODS:
        raise ValueError(f"method {method!r} does not apply to a tree ensemble; tree methods: "
                         f"{', '.join(TREE_METHODS)}")
    if seed != "logit" or return_layers:
        raise ValueError(f"{method}: seed= and return_layers= are LRP options; a SHAP value "
                         "explains the output itself")
    for name in ("strip_output_activation", "micro_batch"):
        params.pop(name, None)  # jxai.explain's network options: nothing to do for trees
    check_params(method, params)
    x = check_rows(ensemble, x, method)
    n_outputs = ensemble.n_outputs if takes_output_index(target) else None
    target_obj, multi = parse_target(target, x.shape[0], seed, n_outputs)
    ctx = TreeContext(ensemble, jax.random.PRNGKey(0) if key is None else key)
    fn = resolve_method(method)
    if not multi:
        return fn(ctx, x, target_obj, **params)
    values, _ = tree_shap_all(ensemble, x, **params)
    outputs = ensemble.predict(x).astype(values.dtype)
    masks = jax.vmap(lambda data: Target(data, target_obj.kind, seed).mask(outputs))(
        target_obj.data)  # (T, B, C)
    return jnp.einsum("bfc,tbc->tbf", values, masks)


def explain_if_trees(model, args, method, **options):
    """`jxai.explain`'s hook: a `TreeEnsemble` asked for a tree method (``tree_shap``) is
    explained here; anything else returns ``NotImplemented`` and takes the driver's path (a
    `TreeEnsemble` is also a plain function ``f(x) -> (B, C)``, so the model-agnostic methods,
    ``kernel_shap``, ``shapley_values``..., explain it there)."""
    if not isinstance(model, TreeEnsemble):
        return NotImplemented
    args = list(args)
    if len(args) >= 2 and method is None:
        method = args[1]
    if method is None:
        method = "tree_shap"
    if not (isinstance(method, str) and method in TREE_METHODS):
        return NotImplemented
    if not args:
        raise TypeError("explain needs the input x: explain(trees, x, 'tree_shap')")
    if len(args) > 2 or (len(args) == 2 and method is not args[1]):
        raise TypeError(f"explain got unexpected positional arguments: {args[1:]}")
    return explain(model, args[0], method, **options)
