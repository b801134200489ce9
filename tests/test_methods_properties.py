"""Properties of the gradient, path and noise methods, against literal formulas and axioms.

* Integrated Gradients: completeness (sum of attributions = f(x) - f(x')) within the quadrature
  error, the error shrinking as steps grow; on a bias-free ReLU network with a zero baseline IG
  equals input × gradient; the quadrature nodes and weights are Captum's; chunking
  (``batch_size``) does not change the result.
* Noise wrappers: the noise σ (absolute, relative to each sample's range) measured through
  VarGrad of a quadratic model; SmoothGrad over ``lrp.epsilon`` equals the mean of explicit
  ``lrp.epsilon`` calls on the noisy inputs; keys make it reproducible.
* Expected gradients: exact on a linear model; Monte Carlo agreement with IG.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import layers
from jxai.methods.path import quadrature


class SmoothMLP(nn.Module):
    """tanh / softplus MLP: smooth, so quadrature errors fall off regularly with steps."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = layers.Activation("tanh", name="act1")(nn.Dense(12, name="dense1")(x))
        x = layers.Activation("softplus", name="act2")(nn.Dense(8, name="dense2")(x))
        return nn.Dense(3, name="out")(x)


class BiasFreeReLU(nn.Module):
    """A bias-free ReLU CNN: positively homogeneous, so its gradient is constant along 0 -> x."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(x)
        x = layers.Activation("relu", name="act1")(x)
        x = layers.MaxPool((2, 2), name="pool")(x)
        x = x.reshape(x.shape[0], -1)
        x = layers.Activation("relu", name="act2")(nn.Dense(6, use_bias=False, name="dense1")(x))
        return nn.Dense(3, use_bias=False, name="out")(x)


class Quadratic(nn.Module):
    """f(x) = sum_i a_i x_i^2 in output 0: its gradient 2 a x moves one-for-one with the noise."""

    @nn.compact
    def __call__(self, x):
        a = self.param("a", nn.initializers.ones, x.shape[1:])
        value = jnp.sum(a * x * x, axis=tuple(range(1, x.ndim)))
        return jnp.stack([value, -value], axis=1)


def make(module, shape, seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), shape)
    variables = module.init(jax.random.PRNGKey(seed), x)
    return jxai.Network(module, variables), x


def selected(network, x, target):
    y = np.asarray(network(x), np.float64)
    return y[np.arange(len(target)), np.asarray(target)]


# ------------------------------------------------------------------------ quadratures
def test_quadrature_matches_captum_definitions():
    n = 5
    alphas, weights = quadrature("riemann_left", n)
    np.testing.assert_allclose(alphas, [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(weights, [0.2] * 5)
    alphas, _ = quadrature("riemann_right", n)
    np.testing.assert_allclose(alphas, [0.2, 0.4, 0.6, 0.8, 1.0])
    alphas, _ = quadrature("riemann_middle", n)
    np.testing.assert_allclose(alphas, [0.1, 0.3, 0.5, 0.7, 0.9])
    alphas, weights = quadrature("riemann_trapezoid", n)
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(weights, [0.1, 0.2, 0.2, 0.2, 0.1])  # Captum keeps 1/n
    alphas, weights = quadrature("gausslegendre", 3)
    np.testing.assert_allclose(alphas, 0.5 * (1 + np.array([-np.sqrt(0.6), 0, np.sqrt(0.6)])))
    np.testing.assert_allclose(weights, [5 / 18, 8 / 18, 5 / 18])
    with pytest.raises(ValueError, match="quadrature='simpson'"):
        quadrature("simpson", 4)
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        quadrature("riemann_left", 1)


# ------------------------------------------------------------------------ IG
@pytest.mark.parametrize("rule", ["riemann_right", "riemann_middle", "gausslegendre"])
def test_ig_completeness_error_shrinks_with_steps(rule):
    network, x = make(SmoothMLP(), (3, 10))
    target = jnp.array([0, 1, 2])
    baseline = 0.3 * jax.random.normal(jax.random.PRNGKey(7), x.shape)
    expected = selected(network, x, target) - selected(network, baseline, target)
    errors = []
    for steps in (2, 8, 32):
        attribution, delta = jxai.explain(network, x, "integrated_gradients", target=target,
                                          steps=steps, quadrature=rule, baseline=baseline,
                                          return_delta=True)
        total = np.asarray(attribution, np.float64).sum(axis=1)
        np.testing.assert_allclose(np.asarray(delta), total - expected, atol=1e-5)
        errors.append(np.max(np.abs(total - expected)))
    assert errors[0] > errors[1] > errors[2] or errors[1] < 1e-5, errors
    scale = np.max(np.abs(expected))
    # first order (error ~ 1/n), second order (~ 1/n^2), Gauss-Legendre (exponential)
    bound = {"riemann_right": 0.05 * scale, "riemann_middle": 2e-3 * scale,
             "gausslegendre": 1e-5}[rule]
    assert errors[2] < bound, errors


def test_ig_zero_baseline_on_bias_free_relu_net_is_input_times_gradient():
    network, x = make(BiasFreeReLU(), (4, 8, 8, 2))
    ig = jxai.explain(network, x, "integrated_gradients", steps=7, baseline=0.0)
    ixg = jxai.explain(network, x, "input_t_gradient")
    np.testing.assert_allclose(ig, ixg, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(ixg))))


def test_ig_chunking_and_baseline_forms_do_not_change_the_result():
    network, x = make(SmoothMLP(), (2, 10))
    reference = jxai.explain(network, x, "integrated_gradients", steps=7, batch_size=None,
                             baseline=0.25)
    for batch_size in (1, 3, 7, 16, "auto"):
        out = jxai.explain(network, x, "integrated_gradients", steps=7, batch_size=batch_size,
                           baseline=0.25)
        np.testing.assert_allclose(out, reference, rtol=2e-6, atol=1e-7)
    per_sample = jxai.explain(network, x, "integrated_gradients", steps=7,
                              baseline=jnp.full((10,), 0.25))
    np.testing.assert_allclose(per_sample, reference, rtol=2e-6, atol=1e-7)
    with_callable = jxai.explain(network, x, "integrated_gradients", steps=7,
                                 baseline=_quarter_like)
    np.testing.assert_allclose(with_callable, reference, rtol=2e-6, atol=1e-7)


def test_auto_chunk_is_one_on_cpu_and_wide_on_accelerators(monkeypatch):
    from jxai import _schedule

    assert jax.default_backend() == "cpu"
    assert _schedule.chunk_size("smoothgrad", "auto") == 1
    assert _schedule.chunk_size("smoothgrad", None) is None
    assert _schedule.chunk_size("smoothgrad", 5) == 5
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _schedule.chunk_size("smoothgrad", "auto") == 16
    assert _schedule.chunk_size("occlusion", "auto", accelerator=32) == 32
    for bad in ("all", 0, 2.5, True):
        with pytest.raises(ValueError, match="smoothgrad: batch_size must be an integer >= 1"):
            _schedule.chunk_size("smoothgrad", bad)


def _quarter_like(x):
    return jnp.full_like(x, 0.25)


def test_ig_target_is_fixed_at_the_input():
    """target="max" is the class predicted for x, kept along the whole path."""
    network, x = make(SmoothMLP(), (4, 10), seed=3)
    predicted = jnp.argmax(network(x), axis=1)
    by_max = jxai.explain(network, x, "integrated_gradients", steps=8, baseline=-2.0)
    by_index = jxai.explain(network, x, "integrated_gradients", steps=8, baseline=-2.0,
                            target=predicted)
    np.testing.assert_array_equal(np.asarray(by_max), np.asarray(by_index))


def test_ig_errors_name_the_problem():
    network, x = make(SmoothMLP(), (2, 10))
    with pytest.raises(ValueError, match=r"baseline of shape \(3,\)"):
        jxai.explain(network, x, "integrated_gradients", baseline=jnp.zeros(3))
    with pytest.raises(ValueError, match="quadrature"):
        jxai.explain(network, x, "integrated_gradients", quadrature="left")


def test_ig_integrates_a_rule_modified_gradient():
    """composite= is forwarded to the gradient: IG of the guided-backprop gradient."""
    network, x = make(BiasFreeReLU(), (2, 8, 8, 2))
    integrated = jxai.explain(network, x, "integrated_gradients", steps=4, baseline=0.0,
                              composite="guided_backprop")
    # Homogeneous net: the guided gradient is the same at every alpha > 0 as well.
    guided = jxai.explain(network, x, "guided_backprop")
    np.testing.assert_allclose(integrated, x * guided, rtol=1e-4,
                               atol=1e-6 * float(jnp.max(jnp.abs(x * guided))))


# ------------------------------------------------------------------------ noise wrappers
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_vargrad_measures_the_noise_sigma(mode):
    """For f = sum x^2 the gradient is 2(x + eps): VarGrad = 4 sigma^2 per feature."""
    network, _ = make(Quadratic(), (2, 64))
    x = jnp.stack([jnp.linspace(-1, 1, 64), jnp.linspace(0, 4, 64)])
    sigma = 0.1
    out = jxai.explain(network, x, "vargrad", target=0, n=400, sigma=sigma, sigma_mode=mode,
                       batch_size=100)
    spread = np.array([2.0, 4.0]) if mode == "relative" else np.ones(2)
    expected = 4 * (sigma * spread) ** 2
    measured = np.asarray(out).mean(axis=1)
    np.testing.assert_allclose(measured, expected, rtol=0.05)


def test_smoothgrad_with_given_noise_is_the_literal_mean():
    network, x = make(SmoothMLP(), (3, 10))
    noise = 0.2 * jax.random.normal(jax.random.PRNGKey(5), (4, *x.shape))
    target = jnp.array([2, 0, 1])
    grads = np.stack([np.asarray(jxai.explain(network, x + e, "gradient", target=target))
                      for e in noise])
    mean, square = grads.mean(0), (grads**2).mean(0)
    for name, expected in (("smoothgrad", mean), ("smoothgrad_sq", square),
                           ("vargrad", square - mean**2)):
        out = jxai.explain(network, x, name, target=target, noise=noise, batch_size=3)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-7)


def test_smoothgrad_wraps_lrp_epsilon():
    network, x = make(BiasFreeReLU(), (2, 8, 8, 2))
    noise = 0.1 * jax.random.normal(jax.random.PRNGKey(9), (3, *x.shape))
    target = jnp.array([0, 2])
    singles = [jxai.explain(network, x + e, "lrp.epsilon", target=target, epsilon=0.01)
               for e in noise]
    out = jxai.explain(network, x, "smoothgrad", wrapped="lrp.epsilon", epsilon=0.01,
                       target=target, noise=noise)
    expected = np.mean(np.stack([np.asarray(s) for s in singles]), axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_smoothgrad_is_reproducible_from_the_key_and_keeps_the_class():
    network, x = make(SmoothMLP(), (3, 10))
    a = jxai.explain(network, x, "smoothgrad", n=8, key=jax.random.PRNGKey(1))
    b = jxai.explain(network, x, "smoothgrad", n=8, key=jax.random.PRNGKey(1))
    c = jxai.explain(network, x, "smoothgrad", n=8, key=jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(a, c)
    predicted = jnp.argmax(network(x), axis=1)
    d = jxai.explain(network, x, "smoothgrad", n=8, sigma=2.0, key=jax.random.PRNGKey(1),
                     target=predicted)
    e = jxai.explain(network, x, "smoothgrad", n=8, sigma=2.0, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(d), np.asarray(e))


def test_smoothgrad_errors():
    network, x = make(SmoothMLP(), (2, 10))
    with pytest.raises(ValueError, match="noise has shape"):
        jxai.explain(network, x, "smoothgrad", noise=jnp.zeros((3, 10)))
    with pytest.raises(ValueError, match="sigma_mode"):
        jxai.explain(network, x, "smoothgrad", sigma_mode="range")


# ------------------------------------------------------------------------ expected gradients
def test_expected_gradients_is_exact_on_a_linear_model():
    module = nn.Dense(3)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
    network = jxai.Network(module, module.init(jax.random.PRNGKey(1), x))
    kernel = np.asarray(network.variables["params"]["kernel"])
    baseline = np.linspace(-1, 1, 6, dtype=np.float32)
    target = np.array([0, 1, 2, 1])
    out = jxai.explain(network, x, "expected_gradients", target=target,
                       baselines=np.stack([baseline, baseline]), n=5)
    expected = kernel[:, target].T * (np.asarray(x) - baseline)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_expected_gradients_with_one_baseline_approaches_ig():
    network, x = make(SmoothMLP(), (2, 10))
    baseline = jnp.zeros((1, 10))
    ig = jxai.explain(network, x, "integrated_gradients", steps=32, baseline=0.0)
    eg = jxai.explain(network, x, "gradient_shap", baselines=baseline, n=2000, batch_size=500)
    scale = float(jnp.max(jnp.abs(ig)))
    np.testing.assert_allclose(eg, ig, atol=0.05 * scale)


def test_expected_gradients_needs_baselines():
    network, x = make(SmoothMLP(), (2, 10))
    with pytest.raises(ValueError, match="pass baselines="):
        jxai.explain(network, x, "expected_gradients")
    with pytest.raises(ValueError, match=r"baselines have shape \(3, 4\)"):
        jxai.explain(network, x, "expected_gradients", baselines=jnp.zeros((3, 4)))


# ------------------------------------------------------------------------ single pass methods
def test_gradient_postprocess_and_input_t_gradient():
    network, x = make(SmoothMLP(), (3, 10))
    grad = np.asarray(jxai.explain(network, x, "gradient"))
    np.testing.assert_allclose(jxai.explain(network, x, "gradient", postprocess="abs"),
                               np.abs(grad), rtol=1e-6)
    np.testing.assert_allclose(jxai.explain(network, x, "gradient", postprocess="square"),
                               grad**2, rtol=1e-5)
    np.testing.assert_allclose(jxai.explain(network, x, "input_t_gradient"), np.asarray(x) * grad,
                               rtol=1e-5, atol=1e-8)
    target = np.asarray(jnp.argmax(network(x), axis=1))
    literal = jax.grad(lambda v: jnp.sum(network(v)[jnp.arange(3), target]))(x)
    np.testing.assert_allclose(grad, literal, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="postprocess='sqrt'"):
        jxai.explain(network, x, "gradient", postprocess="sqrt")


def test_guided_backprop_aucmedi_heatmap():
    network, x = make(BiasFreeReLU(), (2, 8, 8, 2))
    guided = np.asarray(jxai.explain(network, x, "guided_backprop"))
    heat = np.asarray(jxai.explain(network, x, "guided_backprop", aucmedi=True))
    channel_max = guided.max(axis=-1)
    low = channel_max.min(axis=(1, 2), keepdims=True)
    high = channel_max.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(heat, (channel_max - low) / (high - low + 1e-8), rtol=1e-5,
                               atol=1e-6)
    assert heat.shape == (2, 8, 8) and heat.min() == 0.0 and heat.max() > 0.999
    with pytest.raises(ValueError, match="aucmedi=True already means"):
        jxai.explain(network, x, "deconvnet", aucmedi=True, normalize="minmax")


def test_ig_memory_is_bounded_by_one_chunk():
    """Compiled temporaries of IG with 64 steps in chunks of 8 stay within 1.5x of 8 gradients."""
    from jxai._targets import parse_target

    network, x = make(BiasFreeReLU(), (4, 16, 16, 2))
    target, _ = parse_target(0, x.shape[0])

    def temporaries(**params):
        def run(variables, inputs):
            ctx = jxai.Context(jxai.Network(network.module, variables), tuple(inputs.shape),
                          inputs.dtype, jax.random.PRNGKey(0))
            return jxai.get_method("integrated_gradients").fn(ctx, inputs, target, **params)

        lowered = jax.jit(run).lower(network.variables, x)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    eight = temporaries(steps=8, batch_size=None)
    chunked = temporaries(steps=64, batch_size=8)
    unchunked = temporaries(steps=64, batch_size=None)
    assert chunked <= 1.5 * eight, (chunked, eight)
    assert unchunked > 3 * eight, (unchunked, eight)  # the bound is the chunking's doing


def test_wrapped_stochastic_methods_get_fresh_keys_per_sample():
    network, x = make(SmoothMLP(), (2, 10))
    baselines = jax.random.normal(jax.random.PRNGKey(3), (5, 10))
    key = jax.random.PRNGKey(4)
    single = jxai.explain(network, x, "expected_gradients", baselines=baselines, key=key)
    # No outer noise: if both copies reused the key, their mean would be one copy's result.
    outer = jxai.explain(network, x, "smoothgrad", wrapped="expected_gradients",
                         baselines=baselines, noise=jnp.zeros((2, *x.shape)), key=key)
    assert not np.allclose(outer, single)
    again = jxai.explain(network, x, "smoothgrad", wrapped="expected_gradients",
                         baselines=baselines, noise=jnp.zeros((2, *x.shape)), key=key)
    np.testing.assert_array_equal(np.asarray(outer), np.asarray(again))
