"""jxai.metrics against hand-computable answers.

Oracles: a linear model f_c(x) = Σ_i W_ic x_i whose exact attribution R_i = x_i W_ic makes every
perturbation curve a cumulative sum (NumPy float64); a literal NumPy port of the histopathology
seed's `calculate_drop_increase_hmt`; the paper formulas of Gini and entropy; scipy's Spearman;
exact LRP-z conservation on a bias-free ReLU network.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jxai
from jxai import metrics as M
from jxai.layers import Activation

F, K, B = 12, 3, 5


@pytest.fixture(scope="module")
def linear():
    module = nn.Dense(K, use_bias=False)
    variables = module.init(jax.random.key(0), jnp.zeros((1, F)))
    network = jxai.Network(module, variables)
    x = np.asarray(jax.random.normal(jax.random.key(1), (B, F)), np.float64)
    w = np.asarray(variables["params"]["kernel"], np.float64)
    logits = x @ w
    target = logits.argmax(axis=1)
    relevance = x * w[:, target].T  # exact: f_c(x) = Σ_i R_i
    return network, x.astype(np.float32), w, target, relevance


def literal_curve(f0, relevance, order, steps):
    """f(x) after removing round(k·F/steps) features in the given order (zero baseline)."""
    n = relevance.shape[1]
    counts = np.rint(np.arange(steps + 1) * n / steps).astype(int)
    ranked = -np.sort(-relevance, axis=1) if order == "morf" else np.sort(relevance, axis=1)
    removed = np.concatenate([np.zeros((len(f0), 1)), np.cumsum(ranked, axis=1)], axis=1)
    return f0[:, None] - removed[:, counts]


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("steps", [12, 4])
def test_pixel_flipping_curve_and_aopc_on_linear_model(linear, order, steps):
    network, x, w, target, relevance = linear
    f0 = (x.astype(np.float64) @ w)[np.arange(B), target]
    expected = literal_curve(f0, relevance, order, steps)
    result = M.pixel_flipping(network, x, relevance, "max", order=order, steps=steps)
    np.testing.assert_allclose(result.curve, expected, atol=1e-5)
    aopc = np.mean(expected[:, :1] - expected, axis=1)  # 1/(L+1) Σ_k (f(x0) − f(xk))
    np.testing.assert_allclose(result.aopc, aopc, atol=1e-5)
    assert result.fraction.shape == (steps + 1,)


def test_perfect_explanation_has_best_aopc(linear):
    network, x, w, target, relevance = linear
    rng = np.random.default_rng(0)
    best_morf = np.asarray(M.pixel_flipping(network, x, relevance, order="morf").aopc)
    best_lerf = np.asarray(M.pixel_flipping(network, x, relevance, order="lerf").aopc)
    for _ in range(5):
        random = rng.normal(size=relevance.shape)
        morf = np.asarray(M.pixel_flipping(network, x, random, order="morf").aopc)
        lerf = np.asarray(M.pixel_flipping(network, x, random, order="lerf").aopc)
        # for an additive model removing the largest R_i first is the optimal order
        assert np.all(best_morf >= morf - 1e-6) and np.all(best_lerf <= lerf + 1e-6)
    assert np.mean(best_morf) > np.mean(best_lerf)


def test_targets_int_array_and_max_agree(linear):
    network, x, w, target, relevance = linear
    by_max = M.pixel_flipping(network, x, relevance, "max").curve
    by_array = M.pixel_flipping(network, x, relevance, jnp.asarray(target)).curve
    np.testing.assert_array_equal(by_max, by_array)
    one = M.pixel_flipping(network, x, relevance, 1).curve
    f0 = (x.astype(np.float64) @ w)[:, 1]
    np.testing.assert_allclose(one[:, 0], f0, atol=1e-5)


def test_method_name_computes_attribution(linear):
    network, x, w, target, relevance = linear
    np.testing.assert_allclose(
        jxai.explain(network, jnp.asarray(x), "input_t_gradient", target=jnp.asarray(target)),
        relevance,
        atol=1e-5,
    )
    by_name = M.pixel_flipping(network, x, "input_t_gradient", order="morf")
    by_array = M.pixel_flipping(network, x, relevance, order="morf")
    np.testing.assert_allclose(by_name.curve, by_array.curve, atol=1e-5)


def test_insertion_deletion_auc(linear):
    network, x, w, target, relevance = linear
    f0 = (x.astype(np.float64) @ w)[np.arange(B), target]
    deleted = literal_curve(f0, relevance, "morf", 6)
    d = M.deletion(network, x, relevance, steps=6)
    np.testing.assert_allclose(d.curve, deleted, atol=1e-5)
    np.testing.assert_allclose(d.auc, np.trapezoid(deleted, np.linspace(0, 1, 7)), atol=1e-5)
    # insertion into a zero baseline: f after restoring the top round(k·F/6) features
    ins = M.insertion(network, x, relevance, steps=6)
    inserted = f0[:, None] - deleted  # additive model: inserted part = removed part
    np.testing.assert_allclose(ins.curve, inserted, atol=1e-5)
    assert np.all(np.asarray(ins.auc) > np.asarray(d.auc) - 1e-6)


class Pixels(nn.Module):
    """Linear model on (H, W, C) images: logits = flatten(x) @ W."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(K, use_bias=False)(x.reshape(x.shape[0], -1))


def test_region_perturbation_sums_regions_over_channels():
    module = Pixels()
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 6, 6, 2)), np.float32)
    variables = module.init(jax.random.key(3), jnp.asarray(x))
    network = jxai.Network(module, variables)
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    relevance = (x.reshape(2, -1).astype(np.float64) * w[:, 0]).reshape(x.shape)
    result = M.region_perturbation(network, x, relevance, 0, order="morf", steps=4, region=3)
    # 3×3 boxes, channels together → 4 regions; removing a region removes its relevance sum
    regions = relevance.reshape(2, 2, 3, 2, 3, 2).sum(axis=(2, 4, 5)).reshape(2, 4)
    f0 = x.reshape(2, -1).astype(np.float64) @ w[:, 0]
    np.testing.assert_allclose(result.curve, literal_curve(f0, regions, "morf", 4), atol=1e-5)
    # a per-pixel map (no channel axis) gives the same regions
    per_pixel = M.region_perturbation(
        network, x, relevance.sum(-1), 0, order="morf", steps=4, region=3
    )
    np.testing.assert_allclose(per_pixel.curve, result.curve, atol=1e-6)


def test_baselines(linear):
    network, x, w, target, relevance = linear
    # removing everything with baseline b gives f(b · 1)
    for baseline, fill in [
        (0.5, np.full_like(x, 0.5)),
        ("mean", np.repeat(x.mean(1, keepdims=True), F, 1)),
    ]:
        curve = M.pixel_flipping(network, x, relevance, "max", steps=3, baseline=baseline).curve
        expected = (fill.astype(np.float64) @ w)[np.arange(B), target]
        np.testing.assert_allclose(curve[:, -1], expected, atol=1e-5)
    noise = M.pixel_flipping(
        network, x, relevance, steps=3, baseline="uniform", key=jax.random.key(0)
    ).curve
    assert np.all(np.isfinite(noise)) and not np.allclose(noise[:, -1], 0.0)


def seed_drop_increase(model_predict, images, exmap, class_index, frac):
    """The seed's calculate_drop_increase_hmt / _mnist1d, ported line by line to NumPy."""
    predictions = model_predict(images)
    img = images[0:1]
    y = predictions[0][class_index]
    grad_array = np.reshape(exmap, (-1,))
    array_size = int(grad_array.shape[0] * frac)
    thr = np.flip(sorted(grad_array))[array_size]
    exmap1_msk = exmap > thr
    if exmap1_msk.ndim < img.ndim - 1:  # per-pixel (SISE) map: apply to every channel
        exmap1_msk = exmap1_msk[..., None]
    exmap1_thr = img * exmap1_msk
    o1 = model_predict(exmap1_thr)[0][class_index]
    etta = (y - o1) / (y + 1e-100)
    return etta * (etta > 0), 1 * (etta < 0)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3))(x)
        x = Activation("relu")(x)
        x = nn.Dense(5)(x.reshape(x.shape[0], -1))
        return Activation("softmax")(x)


@pytest.mark.parametrize("per_pixel", [False, True])
def test_drop_increase_matches_the_seed_code(per_pixel):
    module = SmallCNN()
    x = np.asarray(jax.random.uniform(jax.random.key(4), (6, 8, 8, 3)), np.float32)
    variables = module.init(jax.random.key(5), jnp.asarray(x))
    network = jxai.Network(module, variables)
    shape = x.shape[:-1] if per_pixel else x.shape
    maps = np.asarray(jax.random.normal(jax.random.key(6), shape), np.float32)

    apply = jax.jit(network.apply)

    def predict(images):
        return np.asarray(apply(jnp.asarray(images, jnp.float32)), np.float64)

    result = M.drop_increase(network, x, maps, "max", frac=0.3)
    for i in range(len(x)):
        cls = int(np.argmax(predict(x[i : i + 1])[0]))
        drop, increase = seed_drop_increase(predict, x[i : i + 1], maps[i], cls, 0.3)
        assert result.increase[i] == increase
        np.testing.assert_allclose(result.drop[i], drop, rtol=1e-4, atol=1e-6)
    assert 0 < float(np.mean(result.drop)) and set(np.unique(result.increase)) <= {0.0, 1.0}


def test_method_name_explains_the_logits_and_scores_the_probabilities():
    module = SmallCNN()
    x = np.asarray(jax.random.uniform(jax.random.key(15), (3, 8, 8, 3)), np.float32)
    variables = module.init(jax.random.key(16), jnp.asarray(x))
    network = jxai.Network(module, variables, {"input_shape": (8, 8, 3)})
    logits = network.without_output_activation()
    assert logits.skip  # the softmax is found and stripped
    target = jnp.argmax(network.apply(jnp.asarray(x)), axis=1)
    at_logits = jxai.explain(logits, jnp.asarray(x), "input_t_gradient", target=target)
    by_name = M.drop_increase(network, x, "input_t_gradient", frac=0.2)
    by_array = M.drop_increase(network, x, at_logits, frac=0.2)
    np.testing.assert_allclose(by_name.drop, by_array.drop, atol=1e-6)
    np.testing.assert_array_equal(by_name.increase, by_array.increase)


def test_drop_rate_zero_for_a_perfect_mask():
    # only 3 of 20 features matter; frac = 0.15 keeps exactly 3 entries
    w = np.zeros((20, K), np.float32)
    w[[2, 7, 11]] = np.asarray(jax.random.normal(jax.random.key(7), (3, K)))
    module = nn.Dense(K, use_bias=False)
    network = jxai.Network(module, {"params": {"kernel": jnp.asarray(w)}})
    x = np.asarray(jax.random.normal(jax.random.key(8), (4, 20)), np.float32)
    perfect = np.zeros_like(x)
    perfect[:, [2, 7, 11]] = 1.0
    result = M.drop_increase(network, x, perfect, "max", frac=0.15, activation="softmax")
    np.testing.assert_array_equal(result.drop, 0.0)
    np.testing.assert_array_equal(result.increase, 0.0)
    wrong = M.drop_increase(
        network, x, 1.0 - perfect + 0.01 * np.arange(20), frac=0.15, activation="softmax"
    )
    assert float(np.mean(wrong.drop)) > 0.0


def test_faithfulness_correlation(linear):
    network, x, w, target, relevance = linear
    key = jax.random.key(9)
    exact = M.faithfulness_correlation(network, x, relevance, key=key, subset_size=3, n_samples=30)
    np.testing.assert_allclose(exact, 1.0, atol=1e-5)  # Δf = Σ_S R_i exactly
    noise = np.random.default_rng(1).normal(size=relevance.shape)
    random = M.faithfulness_correlation(network, x, noise, key=key, subset_size=3, n_samples=30)
    assert float(np.mean(random)) < 0.8


def test_sparseness_and_complexity_formulas():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 4, 5))
    flat = np.sort(np.abs(a.reshape(3, -1)), axis=1)
    n = flat.shape[1]
    i = np.arange(1, n + 1)
    gini = (flat * (2 * i - n - 1)).sum(1) / (n * flat.sum(1))
    np.testing.assert_allclose(M.sparseness(a), gini, rtol=1e-5)
    p = np.abs(a.reshape(3, -1)) / np.abs(a.reshape(3, -1)).sum(1, keepdims=True)
    np.testing.assert_allclose(M.complexity(a), -(p * np.log(p)).sum(1), rtol=1e-5)
    one_hot = np.zeros((2, 10))
    one_hot[:, 3] = [2.0, -1.0]
    np.testing.assert_allclose(M.sparseness(one_hot), 1 - 1 / 10, atol=1e-6)
    np.testing.assert_allclose(M.complexity(one_hot), 0.0, atol=1e-6)
    uniform = np.ones((1, 10))
    np.testing.assert_allclose(M.sparseness(uniform), 0.0, atol=1e-6)
    np.testing.assert_allclose(M.complexity(uniform), np.log(10), atol=1e-5)
    np.testing.assert_allclose(M.sparseness(np.zeros((1, 4))), 0.0)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, size=30).astype(np.float32)  # many ties
    b = a + rng.normal(size=30).astype(np.float32)
    np.testing.assert_allclose(M.average_ranks(jnp.asarray(a)), scipy.stats.rankdata(a))
    np.testing.assert_allclose(
        M.spearman(jnp.asarray(a), jnp.asarray(b)), scipy.stats.spearmanr(a, b)[0], rtol=1e-5
    )


class TwoHeads(nn.Module):
    """Two independent linear heads; the explained class lives in the first."""

    @nn.compact
    def __call__(self, x):
        first = nn.Dense(2, use_bias=False, name="first")(x)
        second = nn.Dense(2, use_bias=False, name="second")(x)
        return jnp.concatenate([first, second], axis=-1)


def test_parameter_randomisation_cascade():
    module = TwoHeads()
    x = np.asarray(jax.random.normal(jax.random.key(10), (4, 16)), np.float32)
    network = jxai.Network(module, module.init(jax.random.key(11), jnp.asarray(x)))
    assert M.parameter_layers(network, jnp.asarray(x)) == ["first", "second"]
    result = M.model_parameter_randomisation(
        network, x, "input_t_gradient", 0, key=jax.random.key(12)
    )
    assert result.layers == ("second", "first")  # top-down: last called first
    assert result.correlation.shape == (2, 4)
    # randomising the head that does not produce class 0 leaves the map unchanged ...
    np.testing.assert_allclose(result.correlation[0], 1.0, atol=1e-6)
    # ... randomising the head that does scrambles it
    assert float(np.max(result.correlation[1])) < 0.9
    independent = M.model_parameter_randomisation(
        network,
        x,
        "input_t_gradient",
        0,
        key=jax.random.key(12),
        cascade=False,
        layers=["first"],
    )
    np.testing.assert_allclose(independent.correlation, result.correlation[1:], atol=1e-6)
    with pytest.raises(ValueError, match="not a path in the parameter tree"):
        M.model_parameter_randomisation(
            network, x, "gradient", 0, key=jax.random.key(0), layers=["third"]
        )


class ReLUNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Activation("relu")(nn.Dense(8, use_bias=False)(x))
        x = Activation("relu")(nn.Dense(6, use_bias=False)(x))
        return nn.Dense(3, use_bias=False)(x)


def test_conservation_report_lrp_z_is_exact_without_biases():
    module = ReLUNet()
    x = np.asarray(jax.random.normal(jax.random.key(13), (4, 5)), np.float32)
    network = jxai.Network(module, module.init(jax.random.key(14), jnp.asarray(x)))
    report = M.conservation(network, x, "lrp.z")
    assert report.layers == ("Dense_0", "Activation_0", "Dense_1", "Activation_1", "Dense_2")
    logits = np.asarray(network.apply(jnp.asarray(x)))
    np.testing.assert_allclose(report.output, logits.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(report.ratio, 1.0, rtol=1e-4)
    text = str(report)
    assert "Dense_1" in text and "(input)" in text


def test_bad_inputs_raise_clear_errors(linear):
    network, x, w, target, relevance = linear
    with pytest.raises(ValueError, match="attribution has shape"):
        M.pixel_flipping(network, x, relevance[:, :5])
    with pytest.raises(ValueError, match="frac must lie"):
        M.drop_increase(network, x, relevance, frac=1.0)
    with pytest.raises(ValueError, match="order must be"):
        M.pixel_flipping(network, x, relevance, order="random")
    with pytest.raises(ValueError, match="target must be an int"):
        M.pixel_flipping(network, x, relevance, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="pass key"):
        M.pixel_flipping(network, x, relevance, baseline="uniform")
    with pytest.raises(TypeError, match="explain parameters"):
        M.pixel_flipping(network, x, relevance, epsilon=0.1)
