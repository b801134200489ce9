"""Models written the Flax way (activations, pooling, sums as functions) explain exactly like the
same weights built with jxai.layers modules, under every LRP preset, in both modes.

Each functional network has a module twin with the same parameter paths; one jit per network
computes every preset on both (compiled at a low optimisation level to keep the file fast).
"""

import inspect
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_fixtures import covering_presets

import jxai
from jxai import layers as L

RELU, AVG_POOL, MAX_POOL, MEAN, MAXIMUM = (
    jax.nn.relu,
    nn.avg_pool,
    nn.max_pool,
    jnp.mean,
    jnp.maximum,
)
TRACER_ADD = jax.core.Tracer.__add__
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ---------------------------------------------------------------------------------------------
# Six networks as Flax's examples write them, and their jxai.layers twins
# ---------------------------------------------------------------------------------------------


class VGG(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jax.nn.relu(nn.Conv(6, (3, 3), name="conv3")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(8, name="fc1")(x))
        return nn.Dense(3, name="fc2")(x)


class VGGModules(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = L.Activation("relu")(nn.Conv(4, (3, 3), name="conv1")(x))
        x = L.Activation("relu")(nn.Conv(4, (3, 3), name="conv2")(x))
        x = L.MaxPool((2, 2))(x)
        x = L.Activation("relu")(nn.Conv(6, (3, 3), name="conv3")(x))
        x = L.MaxPool((2, 2))(x)
        x = x.reshape((x.shape[0], -1))
        x = L.Activation("relu")(nn.Dense(8, name="fc1")(x))
        return nn.Dense(3, name="fc2")(x)


class UNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        skip = nn.relu(nn.Conv(4, (3, 3), name="enc1")(x))
        h = nn.max_pool(skip, (2, 2), strides=(2, 2))
        h = nn.relu(nn.Conv(6, (3, 3), name="enc2")(h))
        h = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name="up")(h)
        h = jnp.concatenate([h, skip], axis=-1)
        h = nn.relu(nn.Conv(4, (3, 3), name="dec")(h))
        h = nn.Conv(2, (1, 1), name="head")(h)
        return h.reshape((h.shape[0], -1))


class UNetModules(nn.Module):
    @nn.compact
    def __call__(self, x):
        skip = L.Activation("relu")(nn.Conv(4, (3, 3), name="enc1")(x))
        h = L.MaxPool((2, 2))(skip)
        h = L.Activation("relu")(nn.Conv(6, (3, 3), name="enc2")(h))
        h = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name="up")(h)
        h = jnp.concatenate([h, skip], axis=-1)
        h = L.Activation("relu")(nn.Conv(4, (3, 3), name="dec")(h))
        h = nn.Conv(2, (1, 1), name="head")(h)
        return h.reshape((h.shape[0], -1))


class CNN1D(nn.Module):
    @nn.compact
    def __call__(self, x):  # (batch, length, channels)
        x = nn.relu(nn.Conv(4, (3,), name="conv1")(x))
        x = nn.avg_pool(x, (2,), strides=(2,))
        x = nn.relu(nn.Conv(6, (3,), name="conv2")(x))
        x = nn.avg_pool(x, (2,), strides=(2,))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3, name="fc")(x)


class CNN1DModules(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = L.Activation("relu")(nn.Conv(4, (3,), name="conv1")(x))
        x = L.AvgPool((2,), (2,))(x)
        x = L.Activation("relu")(nn.Conv(6, (3,), name="conv2")(x))
        x = L.AvgPool((2,), (2,))(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3, name="fc")(x)


class GAPNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.maximum(nn.Conv(4, (3, 3), name="conv1")(x), 0)
        x = nn.relu(nn.Conv(6, (3, 3), strides=(2, 2), name="conv2")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(3, name="fc")(x)


class GAPNetModules(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = L.Activation("relu")(nn.Conv(4, (3, 3), name="conv1")(x))
        x = L.Activation("relu")(nn.Conv(6, (3, 3), strides=(2, 2), name="conv2")(x))
        x = L.GlobalAvgPool()(x)
        return nn.Dense(3, name="fc")(x)


MLP_ACTIVATIONS = [  # (function as Flax users call it, its jxai.layers.Activation twin)
    (lambda x: nn.relu(x), dict(function="relu")),
    (lambda x: nn.gelu(x), dict(function="gelu_tanh")),
    (lambda x: jax.nn.gelu(x, approximate=False), dict(function="gelu")),
    (lambda x: nn.silu(x), dict(function="silu")),
    (lambda x: nn.sigmoid(x), dict(function="sigmoid")),
    (lambda x: nn.tanh(x), dict(function="tanh")),
    (lambda x: nn.softplus(x), dict(function="softplus")),
    (lambda x: jax.nn.elu(x), dict(function="elu", alpha=1.0)),
    (lambda x: nn.leaky_relu(x), dict(function="leaky_relu", alpha=0.01)),
    (lambda x: nn.softmax(x), dict(function="softmax")),
]


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, (activation, _) in enumerate(MLP_ACTIVATIONS):
            x = activation(nn.Dense(6, name=f"fc{i}")(x))
        return nn.Dense(3, name="out")(x)


class MLPModules(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, (_, twin) in enumerate(MLP_ACTIVATIONS):
            x = L.Activation(**twin)(nn.Dense(6, name=f"fc{i}")(x))
        return nn.Dense(3, name="out")(x)


class ResidualBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3), use_bias=False, name="stem")(x)
        h = nn.relu(nn.BatchNorm(use_running_average=True, name="stem_bn")(h))
        r = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(h)
        r = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(r))
        r = nn.Conv(4, (3, 3), use_bias=False, name="conv2")(r)
        r = nn.BatchNorm(use_running_average=True, name="bn2")(r)
        h = nn.relu(h + r)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(3, name="fc")(h)


class ResidualBNModules(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(4, (3, 3), use_bias=False, name="stem")(x)
        h = L.Activation("relu")(nn.BatchNorm(use_running_average=True, name="stem_bn")(h))
        r = nn.Conv(4, (3, 3), use_bias=False, name="conv1")(h)
        r = L.Activation("relu")(nn.BatchNorm(use_running_average=True, name="bn1")(r))
        r = nn.Conv(4, (3, 3), use_bias=False, name="conv2")(r)
        r = nn.BatchNorm(use_running_average=True, name="bn2")(r)
        h = L.Activation("relu")(L.Sum()(h, r))
        h = L.GlobalAvgPool()(h)
        return nn.Dense(3, name="fc")(h)


NETWORKS = {  # name: (functional, module twin, per-sample input shape)
    "vgg": (VGG(), VGGModules(), (8, 8, 2)),
    "unet": (UNet(), UNetModules(), (8, 8, 2)),
    "cnn1d": (CNN1D(), CNN1DModules(), (16, 2)),
    "gap": (GAPNet(), GAPNetModules(), (8, 8, 2)),
    "mlp": (MLP(), MLPModules(), (5,)),
    "residual_bn": (ResidualBN(), ResidualBNModules(), (8, 8, 2)),
}

LRP_METHODS = [
    m
    for m in jxai.list_methods()
    if m.startswith("lrp.")
    or m in ("deep_taylor", "deep_taylor.bounded", "guided_backprop", "deconvnet")
]
PARAMS = {
    "deep_taylor.bounded": dict(low=-3.0, high=3.0),
    "lrp.epsilon_gamma_box": dict(low=-3.0, high=3.0),
    "lrp.alpha_beta": dict(alpha=2.0),
}
CONVENTIONS = [
    (m, "innvestigate")
    for m in LRP_METHODS
    if "convention" in inspect.signature(jxai.composites.PRESETS[m]).parameters
]


def init(module, shape, seed=0):
    """Random weights with non-zero biases and BatchNorm statistics."""
    key = jax.random.PRNGKey(seed)
    variables = module.init(key, jnp.zeros((1, *shape)))

    def perturb(path, v):
        noise = jax.random.normal(jax.random.fold_in(key, v.size + len(path)), v.shape)
        if str(path[-1].key) == "var":
            return 1.0 + 0.5 * jnp.abs(noise)
        return v + 0.3 * noise

    return jax.tree_util.tree_map_with_path(perturb, variables)


def data(shape, batch=2, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, *shape))


def explain_both(functional, modules, variables, x, methods):
    """``{"method (convention)": (functional result, module result)}`` from one compiled call."""

    def everything(variables, x):
        out = {}
        for method, convention in methods:
            params = dict(PARAMS.get(method, {}))
            if convention is not None:
                params["convention"] = convention
            out[f"{method} ({convention or 'paper'})"] = tuple(
                jxai.make_explainer(model, method, **params)(variables, x)
                for model in (functional, modules)
            )
        return out

    return jax.jit(everything).lower(variables, x).compile(FAST_COMPILE)(variables, x)


# ---------------------------------------------------------------------------------------------
# Every preset, both conventions, six networks
# ---------------------------------------------------------------------------------------------


def assert_twins_agree(name, methods):
    functional, modules, shape = NETWORKS[name]
    variables = init(functional, shape)
    # the twins share one parameter tree
    twin_variables = modules.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    assert jax.tree.structure(twin_variables) == jax.tree.structure(variables)
    x = data(shape)
    np.testing.assert_allclose(
        functional.apply(variables, x), modules.apply(variables, x), rtol=1e-5, atol=1e-6
    )
    results = explain_both(functional, modules, variables, x, methods)
    assert len(results) == len(methods)
    nonzero = 0
    for key, (mine, twin) in results.items():
        twin = np.asarray(twin)
        assert np.isfinite(twin).all(), key
        nonzero += bool(np.abs(twin).max() > 0)  # deep Taylor is 0 where the logit is < 0
        np.testing.assert_allclose(
            mine, twin, rtol=1e-5, atol=1e-6 * np.abs(twin).max(), err_msg=key
        )
    assert nonzero >= len(methods) - 2


@pytest.mark.slow
@pytest.mark.parametrize("name", NETWORKS)
def test_every_rule_matches_the_module_twin(name):
    """The presets that assign every rule class of every preset (`covering_presets`;
    ``JXAI_EVERY_PRESET=1``: all of them), guided backprop and deconvnet."""
    assert_twins_agree(name, [(m, None) for m in covering_presets(LRP_METHODS, PARAMS)])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn1d", "residual_bn"])
def test_innvestigate_convention_matches_the_module_twin(name):
    """Average pooling and sums get Norm(0) and BatchNorm its own rule in this convention."""
    assert len(CONVENTIONS) >= 14
    assert_twins_agree(name, CONVENTIONS)


@pytest.mark.parametrize("name", NETWORKS)
def test_discovery_sees_functions_like_modules(name):
    """Call order, kinds, activations, fed-by-input and non-negativity agree with the twin."""
    functional, modules, shape = NETWORKS[name]
    variables = init(functional, shape)

    def facts(module):
        network = jxai.Network(module, variables)
        layers = jxai._engine.discover(network, (2, *shape)).layers
        return [
            (
                layer.module_type,
                layer.activation,
                layer.fed_by_input,
                layer.nonnegative_input,
                layer.folds_into,
            )
            for layer in layers
        ]

    assert facts(functional) == facts(modules)


def test_function_calls_are_named_after_the_module_that_calls_them():
    network = jxai.Network(VGG(), init(VGG(), (8, 8, 2)))
    layers = jxai._engine.discover(network, (2, 8, 8, 2)).layers
    assert [(layer.path, layer.function) for layer in layers] == [
        ("conv1", None),
        ("relu_0", "relu"),
        ("conv2", None),
        ("relu_1", "relu"),
        ("max_pool_0", "max_pool"),
        ("conv3", None),
        ("relu_2", "relu"),
        ("max_pool_1", "max_pool"),
        ("fc1", None),
        ("relu_3", "relu"),
        ("fc2", None),
    ]
    # a composite selects them by path: guided backprop at one ReLU changes the explanation
    x = data((8, 8, 2))
    base = jxai.explain(network, x, "lrp.z")
    by_path = jxai.Composite([("relu_1", jxai.rules.GuidedBackprop())])
    assert np.abs(np.asarray(jxai.explain(network, x, by_path) - base)).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Gradient mode unchanged; what cannot be placed is named
# ---------------------------------------------------------------------------------------------


def test_gradient_mode_is_gradient_times_input():
    module = VGG()
    variables = init(module, (8, 8, 2))
    x = data((8, 8, 2), batch=3)

    def score(x):
        y = module.apply(variables, x)
        return jnp.take_along_axis(y, jnp.argmax(y, 1)[:, None], 1).sum()

    expected = np.asarray(x * jax.grad(score)(x))
    np.testing.assert_allclose(
        jxai.explain(module, variables, x, "lrp.z"), expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        jxai.explain(module, variables, x, "lrp.epsilon", epsilon=1e-9),
        expected,
        rtol=1e-3,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        jxai.explain(module, variables, x, "gradient"),
        expected / np.asarray(x),
        rtol=1e-4,
        atol=1e-5,
    )


class Leaky(nn.Module):
    """A custom nonlinearity jxai does not know, inside a named submodule."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, name="fc")(x)
        return jnp.where(h > 0, h, 0.1 * h)


class WithUnknown(nn.Module):
    nonlinearity: str = "where"

    @nn.compact
    def __call__(self, x):
        if self.nonlinearity == "where":
            x = Leaky(name="block")(x)
        else:
            x = jnp.sin(nn.Dense(4, name="fc")(x))
        return nn.Dense(2, name="head")(x)


def test_unknown_nonlinearity_is_named_in_relevance_mode():
    x = data((5,))
    leaky = WithUnknown("where")
    variables = init(leaky, (5,))
    with pytest.raises(
        ValueError, match=r"needs the relevance mode.*where \(select_n\) in module 'block'"
    ):
        jxai.explain(leaky, variables, x, "lrp.flat")
    sine = WithUnknown("sin")
    with pytest.raises(ValueError, match=r"operation\(s\) sin in module '\(the root module\)'"):
        jxai.explain(sine, init(sine, (5,)), x, "lrp.w_square")
    # the gradient mode propagates them by their gradient: LRP-0 is gradient × input
    grad = jax.grad(lambda x: leaky.apply(variables, x)[:, 0].sum())(x)
    np.testing.assert_allclose(
        jxai.explain(leaky, variables, x, "lrp.z", target=0), x * grad, rtol=1e-5, atol=1e-6
    )


# A reference jxai cannot see: a closure over nn.relu taken at import (a module's own field
# holding nn.relu is placed: tests/test_saved_activations.py).
_CLOSED_OVER_RELU = (lambda f: (lambda x: f(x)))(nn.relu)


class CapturedReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="head")(_CLOSED_OVER_RELU(nn.Dense(4, name="fc")(x)))


def test_relu_through_a_reference_jxai_cannot_see_is_refused_where_it_matters():
    module = CapturedReLU()
    variables = init(module, (5,))
    x = data((5,))
    for method in ("lrp.flat", "guided_backprop"):
        with pytest.raises(
            ValueError, match=r"relu \(max\(x, 0\)\) in module '\(the root module\)'"
        ):
            jxai.explain(module, variables, x, method)
    assert jxai.explain(module, variables, x, "lrp.epsilon").shape == x.shape


# ---------------------------------------------------------------------------------------------
# The swapped functions are restored and inert elsewhere
# ---------------------------------------------------------------------------------------------


def originals_in_place():
    return (
        jax.nn.relu is RELU
        and nn.relu is RELU
        and nn.avg_pool is AVG_POOL
        and nn.max_pool is MAX_POOL
        and jnp.mean is MEAN
        and jnp.maximum is MAXIMUM
        and jax.core.Tracer.__add__ is TRACER_ADD
    )


class Raises(nn.Module):
    @nn.compact
    def __call__(self, x):
        nn.relu(x)
        raise RuntimeError("the model broke while tracing")


def test_functions_are_restored_after_a_call_and_after_a_raising_call():
    module = VGG()
    jxai.explain(module, init(module, (8, 8, 2)), data((8, 8, 2)), "lrp.flat")
    assert originals_in_place()
    with pytest.raises(RuntimeError, match="the model broke"):
        jxai.explain(Raises(), {"params": {}}, data((3,)), "lrp.flat")
    assert originals_in_place()


def test_other_threads_see_the_plain_functions_while_jxai_traces():
    """While one thread traces, the swapped functions act as the originals in another."""
    started, release, seen = threading.Event(), threading.Event(), []

    class Slow(nn.Module):
        @nn.compact
        def __call__(self, x):
            started.set()
            release.wait(30)
            return nn.Dense(2, name="head")(nn.relu(x))

    def other():
        started.wait(30)
        y = jax.grad(lambda v: nn.relu(v).sum())(jnp.array([-1.0, 2.0]))
        seen.append(y.tolist())
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    module = Slow()
    jxai.explain(module, init(module, (3,)), data((3,)), "guided_backprop")
    thread.join()
    assert seen == [[0.0, 1.0]]
    assert originals_in_place()


class SoftmaxHead(nn.Module):
    functional: bool = True

    @nn.compact
    def __call__(self, x):
        logits = nn.Dense(3, name="head")(nn.relu(nn.Dense(4, name="fc")(x)))
        return nn.softmax(logits) if self.functional else L.Activation("softmax")(logits)


def test_functional_softmax_output_is_stripped_like_the_module():
    variables = init(SoftmaxHead(), (5,))
    x = data((5,))
    logits = nn.Dense(3).apply(
        {"params": variables["params"]["head"]},
        jax.nn.relu(nn.Dense(4).apply({"params": variables["params"]["fc"]}, x)),
    )
    network = jxai.Network(SoftmaxHead(), variables, {"input_shape": (5,)})
    stripped = network.without_output_activation()
    assert stripped.skip == {"softmax_0"}
    np.testing.assert_allclose(stripped(x), logits, rtol=1e-6)
    np.testing.assert_allclose(
        jxai.explain(SoftmaxHead(), variables, x, "lrp.epsilon"),
        jxai.explain(SoftmaxHead(functional=False), variables, x, "lrp.epsilon"),
        rtol=1e-6,
    )


# ---------------------------------------------------------------------------------------------
# x + y is a residual sum only when neither operand is a parameter of the model
# ---------------------------------------------------------------------------------------------


class PositionsAndResidual(nn.Module):
    """``h + pos`` with a learned ``(1, T, D)`` parameter (the activation's shape at batch 1: a
    bias, not a branch) in both orders, then a true residual ``h + relu(mlp(h))``."""

    @nn.compact
    def __call__(self, x):  # (batch, 3, 4)
        pos = self.param("pos", nn.initializers.normal(1.0), (1, 3, 4))
        h = nn.relu(pos + (nn.Dense(4, name="proj")(x) + pos))
        h = h + nn.relu(nn.Dense(4, name="mlp")(h))
        return nn.Dense(2, name="head")(jnp.mean(h, axis=1))


def test_adding_a_parameter_of_the_activations_shape_is_not_a_residual_sum():
    module = PositionsAndResidual()
    network = jxai.as_network(module, init(module, (3, 4)))
    for batch in (1, 2):
        context = jxai.Context(network, (batch, 3, 4), jnp.float32, None)
        assert [(layer.path, layer.kind) for layer in context.layers] == [
            ("proj", "dense"), ("relu_0", "activation"), ("mlp", "dense"),
            ("relu_1", "activation"), ("add_0", "sum"), ("mean_0", "global_avg_pool"),
            ("head", "dense")], batch
