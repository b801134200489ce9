"""jxai.trees: scikit-learn trees read into JAX arrays, TreeSHAP path-dependent and
interventional.

Oracles: shap.TreeExplainer 0.51.0 on scikit-learn 1.9.1 models (``tests/fixtures/shap_trees``:
the test refits the models with the fixture's seeds and checks a checksum of the fitted trees);
float64 brute-force Shapley values (all coalitions) of the path-dependent conditional expectation
(Lundberg et al. 2018, Algorithm 1) and of the interventional game f(x_S, r_S̄) on small random
trees built with `jxai.trees.from_arrays`; jxai's exact `shapley_values` on the ensemble as a
plain function.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import math
import os

import jax
import numpy as np
import pytest

import jxai

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "shap_trees")
FLOAT64 = ("rf_multiclass", "gb_classifier")  # a probability and a margin model (compiles cost)


def _models_module():
    spec = importlib.util.spec_from_file_location("shap_tree_models",
                                                  os.path.join(FIXTURE, "models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


models = _models_module()


@functools.cache
def reference() -> dict:
    with np.load(os.path.join(FIXTURE, "shap_trees.npz")) as data:
        return {k: data[k] for k in data.files}


@functools.cache
def fitted(name: str):
    """(model, TreeEnsemble, explained rows, background rows) refitted with the fixture's seeds."""
    pytest.importorskip("sklearn")
    model, _, x, background = models.build(name)
    return model, jxai.trees.from_sklearn(model), x, background


def _np(a) -> np.ndarray:
    return np.asarray(a, np.float64)


# ------------------------------------------------------------------------------------------
# Parity with scikit-learn and shap
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", models.NAMES)
def test_refit_gives_the_fixture_trees_and_predicts_like_sklearn(name):
    model, trees, x, _ = fitted(name)
    ref = reference()
    with open(os.path.join(FIXTURE, "versions.json")) as f:
        versions = json.load(f)
    import sklearn

    assert models.checksum(model) == str(ref[f"{name}/checksum"]), (
        f"scikit-learn {sklearn.__version__} fits other trees than the fixture's "
        f"{versions['scikit-learn']}: regenerate tests/fixtures/shap_trees (generate.py)")
    np.testing.assert_allclose(x, ref[f"{name}/x"], rtol=0, atol=0)
    out = _np(trees(x))
    np.testing.assert_allclose(out, ref[f"{name}/output"].reshape(out.shape), rtol=0, atol=1e-6)


@pytest.mark.parametrize("perturbation", ["path", "interventional"])
@pytest.mark.parametrize("name", models.NAMES)
def test_tree_shap_matches_shap_tree_explainer(name, perturbation):
    """≤ 1e-5 in float32 (JAX's default), the 100-tree forest of seed 004's shape included."""
    _, trees, x, background = fitted(name)
    ref = reference()
    if perturbation == "path":
        values, expected = jxai.trees.shap_values(trees, x)
    else:
        values, expected = jxai.trees.shap_values(trees, x, background=background)
    shap_values = ref[f"{name}/{perturbation}_values"]
    assert np.shape(values) == shap_values.shape
    np.testing.assert_allclose(_np(values), shap_values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.atleast_1d(expected), ref[f"{name}/{perturbation}_expected"],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FLOAT64)
def test_float64_parity_and_local_accuracy(name):
    """Under jax_enable_x64 the path-dependent values equal shap's to 1e-12 (shap computes
    them in float64 too); shap's interventional values carry ~3e-8 of float32 error (ours equal
    the brute force to 1e-13, below); both sum with the expected value to the output."""
    _, trees, x, background = fitted(name)
    ref = reference()
    with jax.enable_x64(True):
        out = _np(trees(x))
        path, path_expected = jxai.trees.tree_shap_all(trees, x)
        inter, inter_expected = jxai.trees.tree_shap_all(trees, x, background=background)
        assert path.dtype == np.float64 and inter.dtype == np.float64
    shape = ref[f"{name}/path_values"].shape
    np.testing.assert_allclose(_np(path).reshape(shape), ref[f"{name}/path_values"], atol=1e-12)
    np.testing.assert_allclose(_np(inter).reshape(shape), ref[f"{name}/interventional_values"],
                               atol=1e-7)
    np.testing.assert_allclose(_np(path).sum(1) + path_expected, out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(inter).sum(1) + _np(inter_expected), out, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Brute force on small random trees (float64)
# ------------------------------------------------------------------------------------------


def random_tree(rng, depth: int, n_features: int, n_outputs: int) -> dict:
    """A random tree in scikit-learn's layout (parents numbered before children), features
    drawn with repetition so paths split several times on one feature."""
    nodes = dict(left=[], right=[], feature=[], threshold=[], cover=[], value=[])

    def grow(d, cover):
        i = len(nodes["left"])
        for key, v in (("left", -1), ("right", -1), ("feature", -2), ("threshold", -2.0),
                       ("cover", cover), ("value", rng.normal(size=n_outputs))):
            nodes[key].append(v)
        if d < depth and (d < 2 or rng.random() < 0.8):
            nodes["feature"][i] = int(rng.integers(n_features))
            nodes["threshold"][i] = float(rng.normal(scale=0.8))
            share = rng.uniform(0.15, 0.85)
            nodes["left"][i] = grow(d + 1, cover * share)
            nodes["right"][i] = grow(d + 1, cover * (1 - share))
        return i

    grow(0, float(rng.uniform(50, 200)))
    return {k: np.asarray(v) for k, v in nodes.items()}


def random_ensemble(seed: int, n_trees=3, depth=3, n_features=4, n_outputs=2):
    rng = np.random.default_rng(seed)
    trees = [random_tree(rng, depth, n_features, n_outputs) for _ in range(n_trees)]
    base = rng.normal(size=n_outputs)
    ensemble = jxai.trees.from_arrays(
        [t["left"] for t in trees], [t["right"] for t in trees], [t["feature"] for t in trees],
        [t["threshold"] for t in trees], [t["value"] for t in trees], [t["cover"] for t in trees],
        base=base, n_features=n_features)
    return trees, base, ensemble


def rows(seed: int, n: int, n_features: int) -> np.ndarray:
    """float32-representable rows (so float64 comparisons decide as float32 ones do)."""
    return np.random.default_rng(seed).normal(size=(n, n_features)).astype(np.float32).astype(
        np.float64)


def conditional_expectation(tree, x, known, node=0):
    """E[f(x) | x_S] as path-dependent TreeSHAP defines it (Lundberg et al. 2018, Alg. 1):
    follow x on known features, else average the children weighted by cover."""
    if tree["left"][node] < 0:
        return tree["value"][node]
    f, left, right = tree["feature"][node], tree["left"][node], tree["right"][node]
    if f in known:
        return conditional_expectation(tree, x, known, left if x[f] <= tree["threshold"][node]
                                       else right)
    return (tree["cover"][left] * conditional_expectation(tree, x, known, left)
            + tree["cover"][right] * conditional_expectation(tree, x, known, right)
            ) / tree["cover"][node]


def predict_one(tree, x):
    node = 0
    while tree["left"][node] >= 0:
        node = tree["left"][node] if x[tree["feature"][node]] <= tree["threshold"][node] \
            else tree["right"][node]
    return tree["value"][node]


def shapley(game, n_features: int) -> np.ndarray:
    """Exact Shapley values of ``game(frozenset) -> (C,)`` over all coalitions."""
    values = {frozenset(s): game(frozenset(s)) for k in range(n_features + 1)
              for s in itertools.combinations(range(n_features), k)}
    phi = np.zeros((n_features, len(values[frozenset()])))
    for i in range(n_features):
        for s, v in values.items():
            if i not in s:
                w = math.factorial(len(s)) * math.factorial(n_features - len(s) - 1) \
                    / math.factorial(n_features)
                phi[i] += w * (values[s | {i}] - v)
    return phi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_dependent_equals_brute_force_shapley_of_the_conditional_expectation(seed):
    trees, base, ensemble = random_ensemble(seed)
    x = rows(seed + 10, 6, 4)
    with jax.enable_x64(True):
        values, expected = jxai.trees.tree_shap_all(ensemble, x)
        out = _np(ensemble(x))
    for b in range(len(x)):
        game = lambda s, b=b: base + sum(conditional_expectation(t, x[b], s) for t in trees)  # noqa: E731
        np.testing.assert_allclose(_np(values)[b], shapley(game, 4), rtol=0, atol=1e-12)
        np.testing.assert_allclose(expected, game(frozenset()), rtol=0, atol=1e-12)
        np.testing.assert_allclose(out[b], base + sum(predict_one(t, x[b]) for t in trees),
                                   atol=1e-12)


def test_interventional_equals_brute_force_shapley_of_hybrid_rows():
    trees, base, ensemble = random_ensemble(5, n_trees=2, depth=4, n_features=5, n_outputs=1)
    x, background = rows(11, 4, 5), rows(12, 7, 5)
    with jax.enable_x64(True):
        values, expected = jxai.trees.tree_shap_all(ensemble, x, background=background)

    def game(s, b):
        hybrids = np.where(np.isin(np.arange(5), list(s)), x[b], background)
        return base + np.mean([sum(predict_one(t, h) for t in trees) for h in hybrids], axis=0)

    for b in range(len(x)):
        np.testing.assert_allclose(_np(values)[b], shapley(lambda s, b=b: game(s, b), 5),
                                   rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(expected), game(frozenset(), 0), atol=1e-12)


def test_interventional_equals_jxai_exact_shapley_values_of_the_ensemble_as_a_function():
    """A TreeEnsemble is a plain function f(x) -> (B, C): the model-agnostic exact method on it
    computes the same game, f(x_S, r_S̄) averaged over the background."""
    _, trees, x, background = fitted("gb_regressor")
    tree_values = jxai.explain(trees, x[:8], "tree_shap", background=background[:10])
    exact = jxai.explain(trees, x[:8], "shapley_values", background=background[:10])
    np.testing.assert_allclose(_np(tree_values), _np(exact), rtol=0, atol=2e-5)


def test_thresholds_decide_float32_inputs_as_scikit_learn_does():
    """A threshold halfway between two adjacent float32 values rounds to the upper one in
    float32; the stored threshold32 must not, or that value would go left."""
    low = np.nextafter(np.float32(1.0), np.float32(2))  # an odd last mantissa bit
    high = np.nextafter(low, np.float32(2))
    threshold = (np.float64(low) + np.float64(high)) / 2
    assert np.float32(threshold) == high  # round-half-to-even goes up here
    ensemble = jxai.trees.from_arrays([[1, -1, -1]], [[2, -1, -1]], [[0, -2, -2]],
                                      [[threshold, -2, -2]], [[0.0, 1.0, 2.0]], [[2, 1, 1]])
    x = np.array([[low], [high]], np.float64)
    np.testing.assert_array_equal(_np(ensemble(x))[:, 0], [1.0, 2.0])
    values, expected = jxai.trees.shap_values(ensemble, x)
    np.testing.assert_allclose(_np(values)[:, 0] + expected, [1.0, 2.0], atol=1e-6)


# ------------------------------------------------------------------------------------------
# jxai.explain: targets, chunks, errors
# ------------------------------------------------------------------------------------------


def test_explain_targets_select_and_weigh_outputs():
    _, trees, x, _ = fitted("rf_multiclass")
    x = x[:12]
    all_values, _ = jxai.trees.tree_shap_all(trees, x)
    values, out = _np(all_values), _np(trees(x))
    predicted = out.argmax(1)
    rows_ = np.arange(len(x))
    cases = {
        "max": values[rows_, :, predicted],
        2: values[:, :, 2],
        "all": values.sum(-1),
    }
    for target, expected in cases.items():
        np.testing.assert_allclose(_np(jxai.explain(trees, x, "tree_shap", target=target)),
                                   expected, atol=1e-6, err_msg=str(target))
    per_row = (rows_ % 3).astype(np.int32)
    np.testing.assert_allclose(_np(jxai.explain(trees, x, "tree_shap", target=per_row)),
                               values[rows_, :, per_row], atol=1e-6)
    several = jxai.explain(trees, x, "tree_shap", target=jxai.several(0, 2))
    np.testing.assert_allclose(_np(several), np.stack([values[..., 0], values[..., 2]]),
                               atol=1e-6)
    weights = np.random.default_rng(0).normal(size=out.shape).astype(np.float32)
    np.testing.assert_allclose(_np(jxai.explain(trees, x, "tree_shap", target=weights)),
                               np.einsum("bfc,bc->bf", values, weights), atol=1e-5)
    # the default method for a tree ensemble is tree_shap
    np.testing.assert_allclose(_np(jxai.explain(trees, x)), cases["max"], atol=1e-6)


def test_regressor_output_is_rows_by_features():
    _, trees, x, _ = fitted("gb_regressor")
    phi = jxai.explain(trees, x, "tree_shap")
    values, expected = jxai.trees.shap_values(trees, x)
    assert phi.shape == x.shape and np.shape(values) == x.shape and isinstance(expected, float)
    np.testing.assert_allclose(_np(phi), _np(values), atol=0)


def test_chunks_of_rows_give_the_same_values():
    _, trees, x, _ = fitted("et_regressor")
    whole, _ = jxai.trees.tree_shap_all(trees, x, chunk_rows=len(x))
    chunked, _ = jxai.trees.tree_shap_all(trees, x, chunk_rows=7)  # 50 = 7 × 7 + 1: padded
    np.testing.assert_allclose(_np(chunked), _np(whole), atol=1e-6)


def test_tree_shap_is_listed_and_refuses_networks():
    assert "tree_shap" in jxai.list_methods()
    network = jxai.models.get("tabular_mlp", pretrained=False)
    with pytest.raises(TypeError, match="tree_shap explains tree ensembles: pass "
                                        r"jxai.trees.from_sklearn\(model\)"):
        jxai.explain(network, np.zeros((2, 37), np.float32), "tree_shap")


def test_bad_calls_are_clear_errors():
    _, trees, x, background = fitted("gb_regressor")
    with pytest.raises(ValueError, match="method 'lrp.epsilon' does not apply to a tree "
                                         "ensemble; tree methods: tree_shap"):
        jxai.trees.explain(trees, x, "lrp.epsilon")
    # through jxai.explain another method sees the ensemble as a plain function f(x)
    with pytest.raises(ValueError, match=r"model is a plain function \(TreeEnsemble\): LRP needs"):
        jxai.explain(trees, x, "lrp.epsilon")
    cases = [
        (dict(feature_perturbation="interventional"), ValueError,
         "feature_perturbation='interventional' needs background="),
        (dict(feature_perturbation="tree_path_dependent", background=background), ValueError,
         "background= is only used with feature_perturbation='interventional'"),
        (dict(feature_perturbation="causal"), ValueError, "feature_perturbation must be one of"),
        (dict(chunk_rows=0), ValueError, "chunk_rows must be 'auto' or a positive int, got 0"),
        (dict(epsilon=0.1), TypeError, "'tree_shap' takes no parameter 'epsilon'"),
        (dict(target=1), ValueError, "target 1 is out of range"),
        (dict(seed="one"), ValueError, "seed= and return_layers= are LRP options"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            jxai.explain(trees, x, "tree_shap", **kwargs)
    with pytest.raises(ValueError, match=r"x of shape \(8,\) does not fit .*add a batch axis"):
        jxai.explain(trees, x[0], "tree_shap")
    with pytest.raises(ValueError, match=r"background of shape \(3, 5\) does not fit"):
        jxai.explain(trees, x, "tree_shap", background=np.zeros((3, 5)))
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN or inf \(1 values, first at \(2, 3\)\)"):
        jxai.explain(trees, bad, "tree_shap")
    with pytest.raises(ValueError, match="has 0 rows"):
        jxai.explain(trees, x[:0], "tree_shap")


def test_from_sklearn_refuses_what_it_cannot_read():
    sklearn_ensemble = pytest.importorskip("sklearn.ensemble")
    from sklearn.linear_model import LinearRegression

    with pytest.raises(TypeError, match="LinearRegression is not a supported tree model"):
        jxai.trees.from_sklearn(LinearRegression())
    with pytest.raises(ValueError, match="this RandomForestRegressor is not fitted"):
        jxai.trees.from_sklearn(sklearn_ensemble.RandomForestRegressor())
    x = rows(0, 40, 3)
    model = sklearn_ensemble.GradientBoostingRegressor(
        n_estimators=2, init=LinearRegression()).fit(x, x[:, 0])
    with pytest.raises(ValueError, match="init=LinearRegression is not supported"):
        jxai.trees.from_sklearn(model)


def test_gradient_boosting_multiclass_margin_and_local_accuracy():
    """shap refuses multi-class gradient boosting; jxai explains its K softmax logits
    (decision_function), checked by local accuracy in float64."""
    sklearn_ensemble = pytest.importorskip("sklearn.ensemble")
    x, y = models.tabular_classification(n_classes=3, n_features=6, n_samples=150, seed=3)
    model = sklearn_ensemble.GradientBoostingClassifier(n_estimators=5, max_depth=2,
                                                        random_state=0).fit(x, y)
    trees = jxai.trees.from_sklearn(model)
    assert trees.output == "margin" and trees.n_outputs == 3
    np.testing.assert_allclose(_np(trees(x)), model.decision_function(x), atol=1e-6)
    with jax.enable_x64(True):
        values, expected = jxai.trees.tree_shap_all(trees, x[:20])
        np.testing.assert_allclose(_np(values).sum(1) + expected, model.decision_function(x[:20]),
                                   atol=1e-12)


# ------------------------------------------------------------------------------------------
# The summary plot takes tree_shap's output
# ------------------------------------------------------------------------------------------


def test_summary_plot_draws_tree_shap_values():
    _, trees, x, _ = fitted("gb_regressor")
    phi = _np(jxai.explain(trees, x, "tree_shap"))
    names = [f"f{i}" for i in range(x.shape[1])]
    fig = jxai.plot.tabular(phi, x, names, max_display=5)
    bar_axis, swarm_axis = fig.axes[:2]
    importance = np.abs(phi).mean(0)
    shown = np.argsort(-importance, kind="stable")[:5][::-1]
    widths = [patch.get_width() for patch in bar_axis.patches]
    np.testing.assert_allclose(widths, importance[shown], rtol=1e-12)
    assert [t.get_text() for t in bar_axis.get_yticklabels()] == [names[k] for k in shown]
    drawn = [c.get_offsets()[:, 0] for c in swarm_axis.collections]
    for row, k in enumerate(shown):
        np.testing.assert_allclose(drawn[row], phi[:, k], rtol=1e-12)
