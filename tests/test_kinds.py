"""The layer-kind table (`jxai.kinds`): a new kind is one entry, one view, one test.

A user's own linear module (``ScaledDense``: parameters named ``w`` and ``b``, a fixed scale) is
refused by LRP until its kind is registered; registered, the presets give it their linear-layer
rules, and ε and z⁺ on it match a float64 oracle of the paper formulas.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import kinds, layers
from jxai.rules import Epsilon, WSquare, ZPlus


class ScaledDense(nn.Module):
    """``z = scale · (a @ w) + b``, with parameters that are not called kernel/bias."""

    features: int
    scale: float = 2.0

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        b = self.param("b", nn.initializers.normal(0.3), (self.features,))
        return self.scale * (x @ w) + b


class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(ScaledDense(5, scale=1.5, name="first")(x))
        return ScaledDense(3, scale=0.5, name="second")(x)


def scaled_dense_view(layer, n_inputs=1, **options):
    """The kind's view: the layer's own parameters, and ``fn(p, a) = scale·(a @ w) + b``."""
    scale = layer.attribute("scale")

    def fn(p, a):
        z = scale * (a @ p["w"])
        return z + p["b"] if "b" in p else z

    return fn, dict(layer.params())


@pytest.fixture
def scaled_dense_kind():
    kind = kinds.register_kind(kinds.LayerKind(
        "scaled_dense", (ScaledDense,), view=scaled_dense_view, kernel=("w",), bias=("b",),
        linear=True, relevance_rule=jxai.rules.Z(),
    ))
    yield kind
    kinds.unregister_kind("scaled_dense")


def setup():
    module = TwoLayers()
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    variables = module.init(jax.random.PRNGKey(0), x)
    return module, variables, x


def stabilize(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def oracle(variables, x, target, second_rule, eps, first_rule="epsilon"):
    """Float64 LRP on z1 = 1.5·x w1 + b1, a1 = relu(z1), z2 = 0.5·a1 w2 + b2."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["params"])
    x = np.asarray(x, np.float64)
    w1, b1 = 1.5 * p["first"]["w"], p["first"]["b"]
    w2, b2 = 0.5 * p["second"]["w"], p["second"]["b"]
    out = []
    for i in range(x.shape[0]):
        z1 = x[i] @ w1 + b1
        a1 = np.maximum(z1, 0)
        z2 = a1 @ w2 + b2
        r2 = np.zeros_like(z2)
        r2[target[i]] = z2[target[i]]
        if second_rule == "epsilon":
            r1 = a1 * (w2 @ (r2 / stabilize(z2, eps)))
        else:  # z+ without bias: a1 >= 0, so (a w)+ = a w+
            wp = np.maximum(w2, 0)
            r1 = a1 * (wp @ (r2 / stabilize(a1 @ wp, 1e-6)))
        if first_rule == "w_square":  # the scale cancels: w² / Σ w² of the raw weights
            squared = p["first"]["w"] ** 2
            out.append(squared @ (r1 / stabilize(squared.sum(axis=0), 1e-6)))
        else:
            out.append(x[i] * (w1 @ (r1 / stabilize(z1, eps))))
    return np.stack(out)


def test_unregistered_module_with_parameters_is_refused_with_the_kind_table_named():
    module, variables, x = setup()
    with pytest.raises(ValueError, match=r"layer 'first' \(ScaledDense\) has parameters but no "
                                         r"LRP rule.*jxai.kinds.register_kind adds one"):
        jxai.explain(module, variables, x, "lrp.epsilon")


def test_a_registered_kind_gets_the_presets_rules_and_matches_the_oracle(scaled_dense_kind):
    module, variables, x = setup()
    target = np.asarray(jnp.argmax(module.apply(variables, x), axis=-1))
    eps = 0.1
    relevance = jxai.explain(module, variables, x, "lrp.epsilon", epsilon=eps)
    expected = oracle(variables, x, target, "epsilon", eps)
    np.testing.assert_allclose(np.asarray(relevance, np.float64), expected, rtol=1e-4, atol=1e-6)
    # z+ modifies the kernel-like parameter "w" and drops the bias-like "b"
    composite = jxai.Composite([(jxai.last_layer, ZPlus()), (ScaledDense, Epsilon(eps))])
    relevance = jxai.explain(module, variables, x, composite)
    expected = oracle(variables, x, target, "zplus", eps)
    np.testing.assert_allclose(np.asarray(relevance, np.float64), expected, rtol=1e-4, atol=1e-6)
    # an explicit first-layer rule (applied after the VJP) sees the kind's names too
    composite = jxai.Composite([(jxai.first_layer, WSquare()), (ScaledDense, Epsilon(eps))])
    relevance = jxai.explain(module, variables, x, composite)
    expected = oracle(variables, x, target, "epsilon", eps, first_rule="w_square")
    np.testing.assert_allclose(np.asarray(relevance, np.float64), expected, rtol=1e-4, atol=1e-6)


def test_kind_lookup_follows_the_mro_and_selectors_match_by_kind():
    class MyDense(nn.Dense):
        pass

    assert kinds.kind_of(MyDense).name == "dense"
    assert kinds.kind_of(nn.ConvTranspose).name == "conv_transpose"
    assert kinds.kind_of(layers.GlobalAvgPool).rule_slot == "pool_rule"
    assert kinds.kind_of(nn.LayerNorm) is None or kinds.kind_of(nn.LayerNorm).name != "dense"
    assert [k.name for k in kinds.all_kinds() if k.linear][:3] == [
        "dense", "conv", "conv_transpose"]
    assert kinds.get_kind("batchnorm").folds_into == ("dense", "conv", "conv_transpose")
    with pytest.raises(KeyError, match="no layer kind 'dens'; known: activation"):
        kinds.selector("dens")


class ConvBN(nn.Module):
    branch: bool = False

    @nn.compact
    def __call__(self, x):
        z = nn.Conv(3, (3, 3), name="conv")(x)
        y = nn.BatchNorm(use_running_average=True, name="bn")(z)
        if self.branch:  # a second BatchNorm on the same convolution: no single folded form
            y = y + nn.BatchNorm(use_running_average=True, name="bn2")(z)
        return nn.Dense(2, name="fc")(nn.relu(y).reshape((x.shape[0], -1)))


def test_merge_batchnorm_is_a_canonizer_listed_by_the_composite():
    from jxai._engine import discover
    from jxai.canonizers import Canonizer, MergeBatchNorm, Rewrite

    assert jxai.Composite([]).canonizers == (MergeBatchNorm(),)
    assert jxai.Composite([], fold_batchnorm=False).canonizers == ()
    assert isinstance(MergeBatchNorm(), Canonizer)
    x = jnp.ones((1, 4, 4, 1))
    for branch, expected in ((False, ("conv", ("bn",))), (True, None)):
        module = ConvBN(branch)
        network = jxai.Network(module, module.init(jax.random.PRNGKey(0), x))
        rewrites = MergeBatchNorm().find(discover(network, x.shape))
        found = [(r.path, tuple(i.path for i in r.absorbed)) for r in rewrites]
        assert found == ([expected] if expected else [])
        assert all(isinstance(r, Rewrite) for r in rewrites)
    with pytest.raises(TypeError, match="composite canonizer 'merge' has no find"):
        jxai.Composite([], canonizers=("merge",))
