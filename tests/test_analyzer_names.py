"""iNNvestigate 1.x's DeepLIFT names in `jxai.create_analyzer`.

Oracle: the rescale rule of Shrikumar et al. (2017) written out in NumPy float64 for a ReLU MLP
(multipliers m = Δrelu/Δz per hidden unit, the derivative where Δz = 0, chained back through the
weights; contributions (x − x̄)·m), plus summation-to-delta at the logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai.layers import Activation

F, H, K, B = 6, 5, 4, 3


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Activation("relu")(nn.Dense(H, name="d1")(x))
        x = Activation("relu")(nn.Dense(H, name="d2")(x))
        return Activation("softmax")(nn.Dense(K, name="d3")(x))


@pytest.fixture(scope="module")
def mlp():
    module = MLP()
    variables = module.init(jax.random.key(0), jnp.zeros((1, F)))
    network = jxai.Network(module, variables, {"input_shape": (F,)})
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    x = np.asarray(jax.random.normal(jax.random.key(1), (B, F)), np.float32)
    reference = np.asarray(jax.random.normal(jax.random.key(2), (1, F)), np.float32) * 0.3
    return network, params, x, reference


def numpy_forward(params, x):
    z1 = x @ params["d1"]["kernel"] + params["d1"]["bias"]
    z2 = np.maximum(z1, 0) @ params["d2"]["kernel"] + params["d2"]["bias"]
    logits = np.maximum(z2, 0) @ params["d3"]["kernel"] + params["d3"]["bias"]
    return z1, z2, logits


def rescale_multiplier(z, z_ref):
    dz = z - z_ref
    safe = np.where(np.abs(dz) < 1e-12, 1.0, dz)
    return np.where(np.abs(dz) < 1e-12, (z > 0).astype(np.float64),
                    (np.maximum(z, 0) - np.maximum(z_ref, 0)) / safe)


def numpy_deeplift(params, x, reference, target):
    """DeepLIFT rescale contributions of logit ``target[b]`` for each row of ``x`` (float64)."""
    x, reference = x.astype(np.float64), np.broadcast_to(reference, x.shape).astype(np.float64)
    z1, z2, _ = numpy_forward(params, x)
    r1, r2, _ = numpy_forward(params, reference)
    m_h2 = params["d3"]["kernel"][:, target].T  # (B, H)
    m_h1 = (m_h2 * rescale_multiplier(z2, r2)) @ params["d2"]["kernel"].T
    m_x = (m_h1 * rescale_multiplier(z1, r1)) @ params["d1"]["kernel"].T
    return (x - reference) * m_x


@pytest.mark.parametrize("name", ["deep_lift.wrapper", "deep_lift"])
def test_deep_lift_names_run_the_rescale_rule(mlp, name):
    network, params, x, reference = mlp
    _, _, logits = numpy_forward(params, x.astype(np.float64))
    target = logits.argmax(axis=1)
    expected = numpy_deeplift(params, x, reference, target)

    analyzer = jxai.create_analyzer(name, network, reference_inputs=reference)
    got = analyzer.analyze(x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # summation-to-delta at the logits (the softmax is stripped, as iNNvestigate requires)
    _, _, ref_logits = numpy_forward(params, reference.astype(np.float64))
    delta = logits[np.arange(B), target] - ref_logits[0, target]
    np.testing.assert_allclose(got.sum(axis=1), delta, rtol=1e-4, atol=1e-5)
    # and it is jxai's own deeplift, with iNNvestigate's names
    direct = jxai.explain(network.without_output_activation(), x, "deeplift",
                          baseline=reference, target=target)
    np.testing.assert_allclose(got, np.asarray(direct), rtol=1e-6, atol=1e-7)


def test_deep_lift_wrapper_defaults_and_index_selection(mlp):
    network, params, x, _ = mlp
    zero = np.zeros((1, F), np.float32)
    expected = numpy_deeplift(params, x, zero, np.full(B, 2))
    analyzer = jxai.create_analyzer("deep_lift.wrapper", network, neuron_selection_mode="index",
                                    nonlinear_mode="rescale", verbose=False)
    np.testing.assert_allclose(analyzer.analyze(x, neuron_selection=2), expected,
                               rtol=1e-4, atol=1e-5)
    # the sign matters: the negated reference gives other contributions
    assert not np.allclose(expected, numpy_deeplift(params, x, -np.ones((1, F)), np.full(B, 2)))


def test_deep_lift_options_jxai_does_not_have_are_refused(mlp):
    network = mlp[0]
    with pytest.raises(ValueError, match="nonlinear_mode='reveal_cancel'.*rescale"):
        jxai.create_analyzer("deep_lift.wrapper", network, nonlinear_mode="reveal_cancel")
    with pytest.raises(ValueError, match="approximate_gradient=False"):
        jxai.create_analyzer("deep_lift", network, approximate_gradient=False)
    with pytest.raises(TypeError, match="reference_inputs"):
        jxai.create_analyzer("deep_lift.wrapper", network, reference_input=0.0)
