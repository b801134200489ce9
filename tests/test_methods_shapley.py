"""Shapley values of feature groups: exact against a float64 brute-force oracle and Captum's
``ShapleyValues`` (committed fixture), KernelSHAP and permutation sampling by convergence to the
exact values, efficiency, plain JAX and host (scikit-learn) functions as models, and the errors.
"""

import itertools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai.methods.shapley import grid_mask, kernel_shap_design

FIXTURE = Path(__file__).parent / "fixtures" / "captum_shapley" / "captum_shapley.npz"
RNG = np.random.default_rng(0)
W6 = RNG.normal(size=(6, 3)).astype(np.float32)


def tiny(x):
    """A non-additive function of 6 features with 3 outputs (interactions between x0 and x1)."""
    return jnp.tanh(x @ W6) * (1.0 + x[:, :1] * x[:, 1:2])


def brute_force(f, x, baseline, target, groups):
    """Shapley values by the definition, in float64: sum over S of the weighted marginals."""
    count = int(groups.max()) + 1

    def v(members):
        keep = np.isin(groups, list(members))
        composed = np.where(keep, x, baseline).astype(np.float64)
        return float(np.asarray(f(composed[None]), np.float64).reshape(-1)[target])

    phi = np.zeros(count)
    for i in range(count):
        others = [j for j in range(count) if j != i]
        for r in range(count):
            weight = math.factorial(r) * math.factorial(count - r - 1) / math.factorial(count)
            for subset in itertools.combinations(others, r):
                phi[i] += weight * (v((*subset, i)) - v(subset))
    return phi[groups]


def tiny64(x):
    return np.tanh(x @ W6.astype(np.float64)) * (1.0 + x[:, :1] * x[:, 1:2])


X6 = RNG.normal(size=(3, 6)).astype(np.float32)
BASE6 = RNG.normal(size=(6,)).astype(np.float32)


def exact_tiny(target=1):
    groups = np.arange(6)
    return np.stack([brute_force(tiny64, x, BASE6, target, groups) for x in X6])


# --------------------------------------------------------------------------------------------
# exact
# --------------------------------------------------------------------------------------------


def test_exact_equals_float64_brute_force_oracle():
    ours = np.asarray(jxai.explain(tiny, X6, "shapley_values", target=1, baseline=BASE6))
    reference = exact_tiny()
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()


def test_exact_grouped_oracle_and_every_feature_gets_its_group_value():
    groups = np.array([0, 0, 1, 2, 2, 2])
    ours = np.asarray(jxai.explain(tiny, X6, "shapley_values", target=2, baseline=BASE6,
                                   feature_mask=groups))
    reference = np.stack([brute_force(tiny64, x, BASE6, 2, groups) for x in X6])
    np.testing.assert_allclose(ours, reference, atol=2e-6)
    assert np.all(ours[:, 0] == ours[:, 1]) and np.all(ours[:, 3] == ours[:, 5])


def _efficiency_gap(phi, groups, f, x, start, target):
    per_group = np.stack([phi[:, np.argmax(groups == g)] for g in range(groups.max() + 1)], 1)
    gap = per_group.sum(1) - (np.asarray(f(x))[:, target] - np.asarray(f(start))[:, target])
    return np.abs(gap).max()


@pytest.mark.parametrize("method,params", [
    ("shapley_values", {}),
    ("kernel_shap", {"n_samples": 12}),
    ("shapley_sampling", {"n_permutations": 3}),
])
def test_efficiency_sum_is_f_x_minus_f_baseline(method, params):
    groups = np.array([0, 1, 1, 2, 3, 4])
    phi = np.asarray(jxai.explain(tiny, X6, method, target=0, baseline=BASE6,
                                  feature_mask=groups, **params))
    start = np.broadcast_to(BASE6, X6.shape)
    assert _efficiency_gap(phi, groups, tiny, X6, start, 0) < 1e-5


def test_background_value_is_the_mean_over_rows_and_efficiency_holds():
    background = RNG.normal(size=(5, 6)).astype(np.float32)
    phi = np.asarray(jxai.explain(tiny, X6, "shapley_values", target=1, background=background))
    reference = np.mean([np.stack([brute_force(tiny64, x, b, 1, np.arange(6)) for x in X6])
                         for b in background], axis=0)
    np.testing.assert_allclose(phi, reference, atol=2e-6)
    gap = phi.sum(1) - (np.asarray(tiny(X6))[:, 1] - np.asarray(tiny(background))[:, 1].mean())
    assert np.abs(gap).max() < 1e-5


# --------------------------------------------------------------------------------------------
# parity with Captum (tests/fixtures/captum_shapley/generate.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captum():
    return dict(np.load(FIXTURE))


def _mlp(data):
    network = jxai.models.get("tabular_mlp", pretrained=False)
    names = ["dense"] + [f"dense_{i}" for i in range(1, 6)]
    params = {name: {"kernel": data[f"mlp_kernel{i}"], "bias": data[f"mlp_bias{i}"]}
              for i, name in enumerate(names)}
    return jxai.Network(network.module, {"params": params}, network.metadata)


def _cnn(data):
    network = jxai.models.get("mnist1d_cnn", pretrained=False, filters=(8, 8, 8), hidden=16)
    params = {
        "conv1d": {"kernel": data["cnn_conv0_kernel"], "bias": data["cnn_conv0_bias"]},
        "conv1d_1": {"kernel": data["cnn_conv1_kernel"], "bias": data["cnn_conv1_bias"]},
        "conv1d_2": {"kernel": data["cnn_conv2_kernel"], "bias": data["cnn_conv2_bias"]},
        "dense": {"kernel": data["cnn_dense0_kernel"], "bias": data["cnn_dense0_bias"]},
        "dense_1": {"kernel": data["cnn_dense1_kernel"], "bias": data["cnn_dense1_bias"]},
    }
    return jxai.Network(network.module, {"params": params}, network.metadata)


def _relative(ours, reference):
    return float(np.abs(np.asarray(ours, np.float64) - reference).max()
                 / np.abs(reference).max())


def test_exact_matches_captum_shapley_values_on_the_tabular_mlp(captum):
    phi = jxai.explain(_mlp(captum), captum["mlp_x"], "shapley_values", target=0,
                       feature_mask=captum["mlp_mask"])
    assert _relative(phi, captum["mlp_exact"]) <= 1e-5


def test_exact_matches_captum_on_a_grouped_1d_signal(captum):
    network = _cnn(captum)
    logits = jxai.explain(network, captum["cnn_x"], "shapley_values", target="all",
                          feature_mask=captum["cnn_mask"], batch_size=16)
    assert logits.shape == captum["cnn_x"].shape
    phi = jxai.explain(network, captum["cnn_x"], "shapley_values",
                       target=captum["cnn_targets"], feature_mask=captum["cnn_mask"],
                       baseline=captum["cnn_baseline"])
    assert _relative(phi, captum["cnn_exact"]) <= 1e-5


def test_sampling_converges_to_the_exact_values_like_captums(captum):
    network, x = _mlp(captum), captum["mlp_x"]
    exact = captum["mlp_exact"]
    errors = [_relative(jxai.explain(network, x, "shapley_sampling", target=0,
                                     feature_mask=captum["mlp_mask"], n_permutations=p,
                                     key=jax.random.PRNGKey(1)), exact)
              for p in (4, 64, 1024)]
    # the Monte Carlo error falls as 1/sqrt(P): 16x the orderings, about 1/4 of the error
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 5, errors
    # Captum's estimate from 200 orderings (fixture: 0.14 of the largest value) is between ours
    # from 64 and from 1024 orderings
    captum_error = _relative(captum["mlp_sampling"], exact)
    assert errors[2] < captum_error < 2 * errors[1]


# --------------------------------------------------------------------------------------------
# KernelSHAP
# --------------------------------------------------------------------------------------------


W10 = RNG.normal(size=(10, 2)).astype(np.float32)


def ten(x):
    return jnp.tanh(x @ W10) + 0.5 * x[:, :1] * x[:, 2:3] * x[:, 4:5]


def test_kernel_shap_error_decreases_with_samples_and_reaches_exact():
    x = RNG.normal(size=(2, 10)).astype(np.float32)
    exact = np.asarray(jxai.explain(ten, x, "shapley_values", target=0))
    errors = []
    for n in (40, 160, 640):  # three seeds each: the mean error, not one draw's luck
        draws = [np.abs(np.asarray(jxai.explain(ten, x, "kernel_shap", target=0, n_samples=n,
                                                key=jax.random.PRNGKey(s))) - exact).max()
                 for s in range(3)]
        errors.append(float(np.mean(draws)))
    assert errors[0] > errors[1] > errors[2], errors
    every = np.asarray(jxai.explain(ten, x, "kernel_shap", target=0, n_samples=2**10 - 2))
    np.testing.assert_allclose(every, exact, atol=1e-4)  # float32 normal equations: ~2e-5


def test_kernel_shap_design_follows_shaps_enumeration():
    # 12 groups, shap's default budget 2*12 + 2048: the size classes 1/11, 2/10, 3/9 are
    # enumerated (2072 * 0.361 / 24, 2048 * 0.311 / 132, 1916 * 0.334 / 440 >= 1), class 4/8
    # is not (1476 * 0.423 / 990 < 1): the remaining 1476 are drawn from sizes 4..6
    coalitions, weights, left, probabilities, first, weight_left = kernel_shap_design(12, 2072)
    sizes = coalitions.sum(1)
    assert sorted(set(sizes.astype(int))) == [1, 2, 3, 9, 10, 11]
    assert len(coalitions) == 2 * (12 + 66 + 220)
    assert left == 2072 - len(coalitions) == 1476 and first == 4
    kernel = np.array([11 / (s * (12 - s)) for s in range(1, 7)])
    kernel[:5] *= 2
    kernel /= kernel.sum()
    np.testing.assert_allclose(weights[(sizes == 2) | (sizes == 10)].sum(), kernel[1])
    np.testing.assert_allclose(weights[sizes == 2], kernel[1] / 2 / 66)
    np.testing.assert_allclose(weight_left, kernel[3:].sum())
    np.testing.assert_allclose(probabilities, kernel[3:] / kernel[3:].sum())
    np.testing.assert_allclose(weights.sum() + weight_left, 1.0)
    # a budget covering every coalition enumerates them all
    every = kernel_shap_design(6, 62)
    assert len(every[0]) == 62 and every[2] == 0


def test_kernel_shap_on_a_linear_model_is_exact_with_few_samples():
    # an additive value function is fitted exactly by any design of full rank
    w = RNG.normal(size=(8,)).astype(np.float32)
    x = RNG.normal(size=(3, 8)).astype(np.float32)
    background = RNG.normal(size=(6, 8)).astype(np.float32)
    phi = jxai.explain(lambda v: v @ w, x, "kernel_shap", target=0, n_samples=20,
                       background=background)
    np.testing.assert_allclose(phi, w * (x - background.mean(0)), atol=1e-5)


def test_random_methods_follow_the_key():
    kw = dict(target=0, baseline=BASE6)
    for method, params in [("kernel_shap", {"n_samples": 20}),
                           ("shapley_sampling", {"n_permutations": 4})]:
        a = jxai.explain(tiny, X6, method, key=jax.random.PRNGKey(3), **kw, **params)
        b = jxai.explain(tiny, X6, method, key=jax.random.PRNGKey(3), **kw, **params)
        c = jxai.explain(tiny, X6, method, key=jax.random.PRNGKey(4), **kw, **params)
        np.testing.assert_array_equal(a, b)
        assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4


# --------------------------------------------------------------------------------------------
# images, groups, targets
# --------------------------------------------------------------------------------------------


def test_grid_mask_cuts_near_equal_bands_shared_by_channels():
    mask = grid_mask((5, 4, 3), (2, 2))
    assert mask.shape == (5, 4, 1)
    np.testing.assert_array_equal(mask[..., 0], [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1],
                                                 [2, 2, 3, 3], [2, 2, 3, 3]])


def test_image_grid_oracle_and_the_default_4x4_grid():
    kernel = RNG.normal(size=(8 * 6 * 2, 2)).astype(np.float32)

    def model(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ kernel) ** 2

    x = RNG.uniform(size=(2, 8, 6, 2)).astype(np.float32)
    phi = np.asarray(jxai.explain(model, x, "shapley_values", target=1, grid=(2, 3)))
    groups = np.broadcast_to(grid_mask((8, 6, 2), (2, 3)), (8, 6, 2))
    reference = np.stack([brute_force(lambda v: np.tanh(v.reshape(1, -1) @ kernel) ** 2,
                                      s, 0.0, 1, groups) for s in x])
    np.testing.assert_allclose(phi, reference, atol=2e-6)
    default = jxai.explain(model, x, "shapley_values", target=1)
    explicit = jxai.explain(model, x, "shapley_values", target=1,
                            feature_mask=grid_mask((8, 6, 2), (4, 4)))
    np.testing.assert_array_equal(default, explicit)
    assert len(np.unique(np.asarray(default)[0])) == 16


def test_max_target_is_the_class_predicted_for_x():
    predicted = np.argmax(np.asarray(tiny(X6)), axis=1)
    ours = jxai.explain(tiny, X6, "shapley_values", baseline=BASE6)
    indexed = jxai.explain(tiny, X6, "shapley_values", baseline=BASE6, target=predicted)
    np.testing.assert_array_equal(ours, indexed)


# --------------------------------------------------------------------------------------------
# plain and host functions as models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features, labels = load_breast_cancer(return_X_y=True)
    features = StandardScaler().fit_transform(features).astype(np.float32)
    return features, LogisticRegression(max_iter=2000).fit(features, labels)


def test_host_function_sklearn_predict_proba(breast_cancer):
    features, model = breast_cancer
    x, background = features[:3], features[100:120]
    host = jxai.host_function(model.predict_proba, output_shape=(2,))
    phi = np.asarray(jxai.explain(host, x, "kernel_shap", target=1, background=background,
                                  n_samples=300))
    assert phi.shape == x.shape
    gap = phi.sum(1) - (model.predict_proba(x)[:, 1] - model.predict_proba(background)[:, 1].mean())
    assert np.abs(gap).max() < 1e-5
    # the same model written in JAX gives the same numbers (same coalitions, same key)
    w, b = model.coef_[0].astype(np.float32), np.float32(model.intercept_[0])

    def proba(v):
        p = jax.nn.sigmoid(v @ w + b)
        return jnp.stack([1 - p, p], axis=1)

    in_jax = jxai.explain(proba, x, "kernel_shap", target=1, background=background,
                          n_samples=300)
    np.testing.assert_allclose(phi, in_jax, atol=2e-6)


def test_plain_function_decision_function_is_linear_shap(breast_cancer):
    features, model = breast_cancer
    w, b = model.coef_[0].astype(np.float32), np.float32(model.intercept_[0])
    x, background = features[:4], features[200:230]
    host = jxai.host_function(model.decision_function, output_shape=())
    phi = jxai.explain(host, x, "kernel_shap", target=0, background=background, n_samples=200)
    np.testing.assert_allclose(phi, w * (x - background.mean(0)), atol=2e-5)
    grad = jxai.explain(lambda v: v @ w + b, x, "gradient", target=0)
    np.testing.assert_allclose(grad, np.broadcast_to(w, x.shape), rtol=1e-6)


def test_lrp_on_a_plain_function_is_refused():
    with pytest.raises(ValueError, match="model is a plain function .*LRP needs Flax layers"):
        jxai.explain(tiny, X6, "lrp.epsilon")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,params,message", [
    ("kernel_shap", {"n_samples": 0}, "kernel_shap: n_samples must be an integer >= 1, got 0"),
    ("shapley_sampling", {"n_permutations": 0}, "n_permutations must be an integer >= 1"),
    ("shapley_values", {"feature_mask": np.zeros((5,), np.int32)},
     r"feature_mask of shape \(5,\) does not broadcast to one sample's shape \(6,\)"),
    ("shapley_values", {"feature_mask": np.array([0, 0, 1, 1, 3, 3])},
     r"group ids must be 0..G-1 without gaps; found 3 ids from 0 to 3 \(missing \[2\]\)"),
    ("shapley_values", {"feature_mask": np.zeros(6)}, "must hold integer group ids"),
    ("shapley_values", {"feature_mask": np.zeros(6, int), "grid": (2,)}, "not both"),
    ("shapley_values", {"baseline": 0.0, "background": np.zeros((2, 6), np.float32)},
     "pass baseline= or background=, not both"),
    ("kernel_shap", {"background": np.zeros((2, 5), np.float32)}, r"background has shape \(2, 5\); expected \(M, \*\(6,\)\)"),
    ("shapley_values", {"grid": (7,)}, "does not fit samples of shape"),
])
def test_bad_parameters_are_clear_errors(method, params, message):
    with pytest.raises(ValueError, match=message):
        jxai.explain(tiny, X6, method, target=0, **params)


def test_exact_refuses_more_than_16_groups_and_points_to_kernel_shap():
    x = np.ones((1, 17), np.float32)
    with pytest.raises(ValueError, match=r"17 feature groups need 2\^17 .*'kernel_shap'"):
        jxai.explain(lambda v: v.sum(1, keepdims=True), x, "shapley_values", target=0)
