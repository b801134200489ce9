"""Engine properties: LRP-0 = gradient × input, α1β0 = z⁺, conservation through residual sums,
concatenations and pooling, BatchNorm folding, targets, compilation, transforms, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import _compile, rules
from jxai import layers as L


class ConvNet(nn.Module):
    """VGG-shaped: convs with module and functional ReLUs, max- and average-pooling, dense head."""

    bias: bool = True
    functional_relu: bool = True
    average: bool = True  # average-pool (else max-pool) after the second convolution

    @nn.compact
    def __call__(self, x):
        relu = nn.relu if self.functional_relu else L.Activation("relu")
        x = nn.Conv(4, (3, 3), use_bias=self.bias, name="conv1")(x)
        x = L.Activation("relu", name="relu1")(x)
        x = L.MaxPool((2, 2), name="pool1")(x)
        x = nn.Conv(6, (3, 3), use_bias=self.bias, name="conv2")(x)
        x = relu(x)
        x = (L.AvgPool if self.average else L.MaxPool)((2, 2), name="pool2")(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(8, use_bias=self.bias, name="fc1")(x)
        x = L.Activation("relu", name="relu_fc1")(x)
        return nn.Dense(3, use_bias=self.bias, name="fc2")(x)


class ResidualNet(nn.Module):
    """A residual block (module sum and plain +), a concatenation and global pooling, no bias."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3), use_bias=False, name="stem")(x)
        h = L.Activation("relu")(h)
        branch = nn.Conv(4, (3, 3), use_bias=False, name="branch")(h)
        branch = L.Activation("relu")(branch)
        h = L.Sum(name="add")(h, branch)
        other = nn.Conv(2, (1, 1), use_bias=False, name="side")(h)
        h = jnp.concatenate([h, nn.relu(other)], axis=-1)
        h = h + nn.relu(nn.Conv(6, (3, 3), use_bias=False, name="second")(h))
        h = L.GlobalAvgPool(name="gap")(h)
        return nn.Dense(3, use_bias=False, name="head")(h)


class BNNet(nn.Module):
    bn: bool = True

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv")(x)
        if self.bn:
            x = nn.BatchNorm(use_running_average=True, name="bn")(x)
        x = L.Activation("relu")(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3, name="fc")(x)


def init(module, shape, seed=0, scale=0.2):
    key = jax.random.PRNGKey(seed)
    variables = module.init(key, jnp.zeros((1, *shape)))
    return jax.tree.map(
        lambda v: v + scale * jax.random.normal(jax.random.fold_in(key, v.size), v.shape), variables
    )


def data(shape, batch=3, seed=1, positive=False):
    x = jax.random.normal(jax.random.PRNGKey(seed), (batch, *shape))
    return jnp.abs(x) if positive else x


def target_logit(module, variables, x):
    y = module.apply(variables, x)
    return np.asarray(jnp.max(y, axis=1))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30)


# ---------------------------------------------------------------------------------------------
# Equivalences and conservation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("functional_relu", [True, False])
def test_lrp_zero_equals_gradient_times_input(functional_relu):
    module = ConvNet(functional_relu=functional_relu)
    variables = init(module, (10, 10, 2))
    x = data((10, 10, 2))

    def score(x):
        y = module.apply(variables, x)
        return jnp.take_along_axis(y, jnp.argmax(y, 1)[:, None], 1).sum()

    expected = x * jax.grad(score)(x)
    for method in ["lrp.z", "input_t_gradient"]:
        assert rel_err(jxai.explain(module, variables, x, method), expected) < 1e-5
    # the z-rule as an explicit custom VJP on every layer gives the same
    composite = jxai.Composite([((nn.Dense, nn.Conv), rules.Z())])
    assert rel_err(jxai.explain(module, variables, x, composite), expected) < 1e-5


def test_alpha1_beta0_equals_zplus_on_non_negative_inputs():
    module = ConvNet(functional_relu=False)
    variables = init(module, (10, 10, 2))
    x = data((10, 10, 2), positive=True)
    a = jxai.explain(module, variables, x, "lrp.alpha_1_beta_0_IB")
    b = jxai.explain(module, variables, x, "lrp.z_plus_fast")
    c = jxai.explain(module, variables, x, "lrp.z_plus")
    assert rel_err(a, b) < 1e-4 and rel_err(c, b) < 1e-4


@pytest.mark.parametrize(
    "method,params",
    [
        ("lrp.epsilon", dict(epsilon=1e-9)),
        ("lrp.z", {}),
        ("lrp.z_plus", {}),
        ("lrp.alpha_2_beta_1", {}),
        ("lrp.epsilon_plus_flat", dict(epsilon=1e-9)),
        ("lrp.epsilon_gamma_box", dict(low=-5.0, high=5.0)),
    ],
)
def test_conservation_through_sums_concatenation_and_pooling(method, params):
    module = ResidualNet()
    variables = init(module, (8, 8, 2))
    x = data((8, 8, 2), positive=True)
    relevance = jxai.explain(module, variables, x, method, **params)
    total = np.asarray(relevance.sum(axis=(1, 2, 3)))
    logit = target_logit(module, variables, x)
    np.testing.assert_allclose(total, logit, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["lrp.flat", "lrp.w_square", "deep_taylor", "lrp.epsilon"])
def test_conservation_in_relevance_mode(method):
    # (an average pooling over dead units would drop their input-independent relevance, as in
    # iNNvestigate; max-pooling routes it to one unit)
    module = ConvNet(bias=False, functional_relu=False, average=False)
    variables = init(module, (10, 10, 2))
    x = data((10, 10, 2))
    total = np.asarray(jxai.explain(module, variables, x, method).sum(axis=(1, 2, 3)))
    logit = target_logit(module, variables, x)
    if method == "deep_taylor":
        logit = np.maximum(logit, 0)
    np.testing.assert_allclose(total, logit, rtol=2e-4, atol=1e-6)


def test_relevance_mode_places_functional_activations():
    class Functional(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="b")(nn.relu(nn.Dense(4, name="a")(x)))

    class Modules(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2, name="b")(L.Activation("relu")(nn.Dense(4, name="a")(x)))

    variables = init(Functional(), (5,))
    x = data((5,))
    np.testing.assert_allclose(
        jxai.explain(Functional(), variables, x, "lrp.flat"),
        jxai.explain(Modules(), variables, x, "lrp.flat"),
        rtol=1e-6,
    )

    class Sine(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(jnp.sin(nn.Dense(4)(x)))

    with pytest.raises(ValueError, match="operation\\(s\\) sin in module"):
        jxai.explain(Sine(), init(Sine(), (5,)), x, "lrp.flat")


def test_first_layer_flat_conserves_and_reaches_zero_pixels():
    module = ConvNet(bias=False, functional_relu=False)
    variables = init(module, (10, 10, 2))
    x = np.array(data((10, 10, 2), positive=True))
    x[:, :3] = 0.0  # a black band: Flat still gives it relevance, gradient × input cannot
    relevance = np.asarray(
        jxai.explain(module, variables, x, "lrp.sequential_preset_a_flat", epsilon=1e-9)
    )
    np.testing.assert_allclose(
        relevance.sum(axis=(1, 2, 3)), target_logit(module, variables, x), rtol=1e-4
    )
    assert np.abs(relevance[:, :3]).sum() > 0
    plain = np.asarray(jxai.explain(module, variables, x, "lrp.sequential_preset_a", epsilon=1e-9))
    assert np.abs(plain[:, :3]).sum() == 0


def test_layerwise_relevances_are_conserved():
    module = ConvNet(bias=False, functional_relu=False)
    variables = init(module, (10, 10, 2))
    x = data((10, 10, 2), positive=True)
    relevance, per_layer = jxai.explain(
        module, variables, x, "lrp.epsilon", epsilon=1e-9, return_layers=True
    )
    logit = target_logit(module, variables, x)
    assert set(per_layer) >= {"conv1", "conv2", "fc1", "fc2", "pool2"}
    for path in ["conv1", "conv2", "fc1", "fc2"]:
        sums = np.asarray(per_layer[path].reshape(x.shape[0], -1).sum(1))
        np.testing.assert_allclose(sums, logit, rtol=1e-4, err_msg=path)


# ---------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------


def test_batchnorm_is_folded_into_the_preceding_convolution():
    module = BNNet()
    variables = init(module, (6, 6, 2))
    variables["batch_stats"]["bn"]["var"] = jnp.abs(variables["batch_stats"]["bn"]["var"]) + 0.5
    x = data((6, 6, 2))
    # the same network with the BatchNorm folded by hand: s = γ/√(var+ε), W' = W·s, b' = β − mean·s
    bn = variables["batch_stats"]["bn"]
    p = variables["params"]
    s = p["bn"]["scale"] / jnp.sqrt(bn["var"] + 1e-5)

    class Folded(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), name="conv")(x)
            x = L.Activation("relu")(x)
            return nn.Dense(3, name="fc")(x.reshape((x.shape[0], -1)))

    folded = {
        "params": {
            "conv": {"kernel": p["conv"]["kernel"] * s, "bias": p["bn"]["bias"] - bn["mean"] * s},
            "fc": p["fc"],
        }
    }
    np.testing.assert_allclose(
        module.apply(variables, x), Folded().apply(folded, x), rtol=1e-5, atol=1e-6
    )
    for method in ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.epsilon_plus_flat"]:
        ours = (
            jxai.explain(module, variables, x, method, epsilon=0.01)
            if "alpha" not in method
            else jxai.explain(module, variables, x, method)
        )
        ref = (
            jxai.explain(Folded(), folded, x, method, epsilon=0.01)
            if "alpha" not in method
            else jxai.explain(Folded(), folded, x, method)
        )
        assert rel_err(ours, ref) < 1e-4, method
    # without folding, the BatchNorm keeps LRP-0 and the α-β result differs
    unfolded = jxai.explain(module, variables, x, "lrp.alpha_2_beta_1", convention="innvestigate")
    assert rel_err(unfolded, jxai.explain(module, variables, x, "lrp.alpha_2_beta_1")) > 1e-3


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = L.Activation("relu")(nn.Dense(8)(x))
            return nn.Dense(4)(x)

    module = MLP()
    variables = init(module, (6,))
    return jxai.Network(module, variables, {"input_shape": (6,)}), data((6,), batch=5)


def test_targets_int_array_all_mask_callable(mlp):
    network, x = mlp
    y = np.asarray(network(x))
    per_class = [np.asarray(jxai.explain(network, x, "lrp.epsilon", target=c)) for c in range(4)]
    chosen = np.array([2, 0, 3, 1, 2])
    by_array = np.asarray(jxai.explain(network, x, "lrp.epsilon", target=chosen))
    np.testing.assert_allclose(
        by_array, np.stack([per_class[c][i] for i, c in enumerate(chosen)]), rtol=1e-5
    )
    maximum = np.asarray(jxai.explain(network, x, "lrp.epsilon"))
    np.testing.assert_allclose(
        maximum, np.stack([per_class[c][i] for i, c in enumerate(y.argmax(1))]), rtol=1e-5
    )
    everything = np.asarray(jxai.explain(network, x, "lrp.epsilon", target="all"))
    np.testing.assert_allclose(everything, sum(per_class), rtol=1e-4, atol=1e-6)
    mask = np.zeros_like(y)
    mask[:, 1] = 1
    np.testing.assert_allclose(
        jxai.explain(network, x, "lrp.epsilon", target=mask), per_class[1], rtol=1e-5
    )
    by_callable = jxai.explain(
        network, x, "lrp.epsilon", target=lambda out: jax.nn.one_hot(jnp.full(out.shape[0], 3), 4)
    )
    np.testing.assert_allclose(by_callable, per_class[3], rtol=1e-5)


def test_several_targets_in_one_call(mlp):
    network, x = mlp
    stacked = np.asarray(jxai.explain(network, x, "lrp.epsilon", target=jxai.several(0, 2, 3)))
    assert stacked.shape == (3, *x.shape)
    for t, c in enumerate([0, 2, 3]):
        np.testing.assert_allclose(
            stacked[t], jxai.explain(network, x, "lrp.epsilon", target=c), rtol=1e-5
        )
    per_sample = np.array([[0, 1, 2, 3, 0], [1, 1, 1, 1, 1]])
    out = np.asarray(jxai.explain(network, x, "gradient", target=per_sample))
    np.testing.assert_allclose(out[1], jxai.explain(network, x, "gradient", target=1), rtol=1e-5)


def test_seed_one_divides_by_the_logit(mlp):
    network, x = mlp
    logit = np.asarray(network(x)).max(1)
    a = np.asarray(jxai.explain(network, x, "lrp.epsilon", epsilon=0.01))
    b = np.asarray(jxai.explain(network, x, "lrp.epsilon", epsilon=0.01, seed="one"))
    np.testing.assert_allclose(b * logit[:, None], a, rtol=1e-4, atol=1e-7)


def test_softmax_output_is_explained_at_the_logits():
    class WithSoftmax(nn.Module):
        softmax: bool = True

        @nn.compact
        def __call__(self, x):
            x = nn.Dense(3, name="fc")(L.Activation("relu")(nn.Dense(5, name="hidden")(x)))
            return L.Activation("softmax", name="out")(x) if self.softmax else x

    variables = init(WithSoftmax(), (4,))
    x = data((4,))
    for method in ["lrp.epsilon", "gradient"]:
        a = jxai.explain(WithSoftmax(), variables, x, method)
        b = jxai.explain(WithSoftmax(softmax=False), variables, x, method)
        np.testing.assert_allclose(a, b, rtol=1e-6)
    network = jxai.Network(WithSoftmax(), variables, {"input_shape": (4,)})
    np.testing.assert_allclose(
        network.without_output_activation()(x), WithSoftmax(softmax=False).apply(variables, x)
    )


# ---------------------------------------------------------------------------------------------
# Compilation and transforms
# ---------------------------------------------------------------------------------------------


def test_second_call_with_same_shapes_does_not_retrace(mlp):
    network, x = mlp
    jxai.explain(network, x, "lrp.epsilon", epsilon=0.3, target=1)
    before = _compile.TRACE_COUNT[0]
    jxai.explain(network, x + 1.0, "lrp.epsilon", epsilon=0.3, target=2)
    jxai.explain(network, x * 2.0, "lrp.epsilon", epsilon=0.3, target=np.arange(5) % 4)
    assert _compile.TRACE_COUNT[0] == before
    jxai.explain(network, x, "lrp.epsilon", epsilon=0.4, target=1)  # a new static parameter
    assert _compile.TRACE_COUNT[0] == before + 1


ALL_RULES = [
    rules.Z(),
    rules.Epsilon(0.1),
    rules.Epsilon(0.1, std_scaled=True),
    rules.Gamma(0.25),
    rules.Gamma(0.25, generalized=True),
    rules.AlphaBeta(2, 1),
    rules.ZPlus(),
    rules.ZPlusFast(),
    rules.WSquare(),
    rules.Flat(),
    rules.ZBox(-3.0, 3.0),
]


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: type(r).__name__)
def test_every_rule_under_jit_vmap_and_lax_map(rule):
    module = ConvNet(functional_relu=False)
    variables = init(module, (10, 10, 2))
    x = data((10, 10, 2), batch=4)
    first = rule if rule.explicit else rules.Epsilon(0.1)
    composite = jxai.Composite([(jxai.first_layer, first), ((nn.Dense, nn.Conv), rule)])
    expected = np.asarray(jxai.explain(module, variables, x, composite))
    assert np.isfinite(expected).all()
    f = jxai.make_explainer(module, composite)
    one = lambda xi: f(variables, xi[None])[0]  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(variables, x), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(one))(x), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jax.lax.map(one, x, batch_size=2), expected, rtol=1e-4, atol=1e-6)


def test_guided_backprop_reaches_functional_relus():
    functional = ConvNet(functional_relu=True)
    modules = ConvNet(functional_relu=False)
    variables = init(functional, (10, 10, 2))
    x = data((10, 10, 2))
    a = jxai.explain(functional, variables, x, "guided_backprop")
    b = jxai.explain(modules, variables, x, "guided_backprop")
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert rel_err(a, jxai.explain(functional, variables, x, "gradient")) > 1e-2
    assert jax.nn.relu(jnp.array([-1.0, 2.0])).tolist() == [0.0, 2.0]  # restored after tracing


def test_no_weight_gradient_is_computed(mlp):
    """Only input cotangents: one forward and one transposed matmul per dense layer."""
    network, x = mlp
    f = jxai.make_explainer(network, "lrp.epsilon", epsilon=0.1)
    hlo = jax.jit(f).lower(network.variables, x).compile().as_text()
    # forward (2) + modified backward (2): a weight gradient would add 2 more dots
    assert hlo.count(" dot(") == 4, hlo


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(mlp):
    network, x = mlp
    with pytest.raises(ValueError, match="NaN or inf"):
        jxai.explain(network, x.at[0, 1].set(jnp.nan), "lrp.epsilon")
    with pytest.raises(ValueError, match="expects"):
        jxai.explain(network, x[:, :4], "lrp.epsilon")
    with pytest.raises(ValueError, match="batch axis"):
        jxai.explain(network, x[0], "lrp.epsilon")
    with pytest.raises(ValueError, match="did you mean 'lrp.epsilon'"):
        jxai.explain(network, x, "lrp.epsilom")
    with pytest.raises(ValueError, match="epsilon > 0"):
        jxai.explain(network, x, "lrp.epsilon", epsilon=0.0)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        jxai.explain(network, x, "lrp.alpha_beta", alpha=3.0, beta=1.0)
    with pytest.raises(ValueError, match="low <= high"):
        jxai.explain(network, x, "deep_taylor.bounded", low=1.0, high=-1.0)
    with pytest.raises(TypeError, match="accepted: epsilon"):
        jxai.explain(network, x, "lrp.epsilon", alpha=1.0)
    with pytest.raises(ValueError, match="target"):
        jxai.explain(network, x, "lrp.epsilon", target="first")


def test_unsupported_layer_is_named():
    class WithPReLU(nn.Module):  # a parametrised layer without a kind (LayerNorm has one now)
        @nn.compact
        def __call__(self, x):
            x = nn.PReLU(name="norm")(nn.Dense(4)(x))
            return nn.Dense(2)(x)

    module = WithPReLU()
    variables = init(module, (3,))
    with pytest.raises(ValueError, match=r"'norm' \(PReLU\)"):
        jxai.explain(module, variables, data((3,)), "lrp.epsilon")
    assert jxai.explain(module, variables, data((3,)), "gradient").shape == (3, 3)


def test_explicit_rule_inside_network_in_gradient_mode_is_refused():
    module = ConvNet(functional_relu=False)
    variables = init(module, (10, 10, 2))
    composite = jxai.Composite([("fc1", rules.Flat())], mode="gradient")
    with pytest.raises(ValueError, match="fed directly by the model input"):
        jxai.explain(module, variables, data((10, 10, 2)), composite)


@pytest.mark.parametrize(
    "shape,window,strides,padding",
    [
        ((2, 8, 6, 3), (2, 2), None, "VALID"),
        ((2, 40, 3), (2,), None, "VALID"),
        ((2, 7, 6, 3), (2, 2), None, "VALID"),
        ((2, 8, 8, 2), (3, 3), (2, 2), "SAME"),
    ],
)
def test_max_pool_module_matches_flax_values_and_gradient_routing(shape, window, strides, padding):
    """The tiled (gather) form routes the gradient to the first maximum, like select_and_scatter."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    x = (
        x.at[(0,) + (0,) * (len(shape) - 1)]
        .set(5.0)
        .at[(0,) + (1,) * (len(shape) - 2) + (0,)]
        .set(5.0)
    )
    module = L.MaxPool(window, strides, padding)
    reference = lambda x: nn.max_pool(x, window, strides or window, padding)  # noqa: E731
    np.testing.assert_array_equal(module.apply({}, x), reference(x))
    weights = jax.random.normal(jax.random.PRNGKey(1), reference(x).shape)
    ours = jax.grad(lambda x: (module.apply({}, x) * weights).sum())(x)
    theirs = jax.grad(lambda x: (reference(x) * weights).sum())(x)
    np.testing.assert_array_equal(ours, theirs)


class _ConfiguredByDict(nn.Module):
    """A stock linen model configured by a dict field (Flax hashes modules by their fields)."""

    cfg: dict

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.cfg["hidden"])(x))
        return nn.Dense(self.cfg["classes"])(x)


def test_a_module_that_does_not_hash_is_explained_and_cached():
    module = _ConfiguredByDict({"hidden": 8, "classes": 3})
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    variables = module.init(jax.random.PRNGKey(1), x)
    network = jxai.Network(module, variables)
    grad = jax.vmap(jax.grad(lambda v: module.apply(variables, v[None])[0, 2]))(x)
    np.testing.assert_allclose(jxai.explain(network, x, "gradient", target=2), grad, rtol=1e-6)
    before = _compile.TRACE_COUNT[0]
    relevance = jxai.explain(network, x + 1.0, "lrp.epsilon", target=2)
    jxai.explain(network, x, "lrp.epsilon", target=1)  # the same module object: no new trace
    assert _compile.TRACE_COUNT[0] == before + 1
    assert relevance.shape == x.shape
    explainer = jax.jit(jxai.make_explainer(network, "lrp.epsilon", target=2))
    np.testing.assert_allclose(explainer(variables, x + 1.0), relevance, rtol=1e-5, atol=1e-7)
    flipped = jxai.metrics.pixel_flipping(network, x + 1.0, relevance, target=2, steps=5)
    np.testing.assert_allclose(flipped.curve[:, 0], module.apply(variables, x + 1.0)[:, 2],
                               rtol=1e-5)
