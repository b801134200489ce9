"""DeepLIFT-rescale (``deeplift``) and DeepSHAP (``deep_shap``): a float64 numpy oracle,
summation-to-delta on every model shape, parity with Captum 0.9 (``DeepLift``, ``DeepLiftShap``)
and shap 0.51 (``DeepExplainer``, with its additivity check), and the errors.

Fixture: ``tests/fixtures/deeplift/deeplift.npz`` (``generate.py`` there: the zoo's tabular MLP
and a small MNIST-1D CNN copied into torch modules, references in float64).
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import layers as jl

FIXTURE = Path(__file__).parent / "fixtures" / "deeplift" / "deeplift.npz"
RESIDUAL = Path(__file__).parent / "fixtures" / "innvestigate_residual"
CNN_CONFIG = dict(filters=(8, 16, 16), hidden=32)
MLP_LAYERS = [f"dense_{i}" if i else "dense" for i in range(6)]
CNN_LAYERS = ["conv1d", "conv1d_1", "conv1d_2", "dense", "dense_1"]


def _fixture():
    if not FIXTURE.exists():
        pytest.skip(f"fixture missing; run {FIXTURE.parent / 'generate.py'}")
    return np.load(FIXTURE)


def _with_weights(network, data, prefix, names):
    params = {name: {"kernel": jnp.asarray(data[f"{prefix}_{name}_kernel"]),
                     "bias": jnp.asarray(data[f"{prefix}_{name}_bias"])} for name in names}
    return jxai.Network(network.module, {**network.variables, "params": params},
                        metadata=network.metadata)


def fixture_networks(data):
    mlp = jxai.models.get("tabular_mlp", pretrained=False, key=0)
    cnn = jxai.models.get("mnist1d_cnn", pretrained=False, key=0, **CNN_CONFIG)
    cnnmax = _with_weights(cnn, data, "cnn", CNN_LAYERS)
    cnnavg = jxai.Network(AvgPoolMNIST1D(), cnnmax.variables)
    return _with_weights(mlp, data, "mlp", MLP_LAYERS), cnnmax, cnnavg


class AvgPoolMNIST1D(nn.Module):
    """``mnist1d_cnn``'s layers (and parameter names) with average instead of max pooling,
    returning logits: the network on which Captum's DeepLift is right (no max pooling)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (5,), padding="SAME", name="conv1d")(x))
        x = nn.avg_pool(x, (2,), (2,))
        x = nn.relu(nn.Conv(16, (3,), padding="SAME", name="conv1d_1")(x))
        x = nn.avg_pool(x, (2,), (2,))
        x = nn.relu(nn.Conv(16, (3,), padding="SAME", name="conv1d_2")(x))
        x = nn.relu(nn.Dense(32, name="dense")(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, name="dense_1")(x)


def close(actual, expected, tolerance):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    error = float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))
    assert error <= tolerance, f"max relative error {error:.2e} > {tolerance:.0e}"
    return error


def logits(network, x):
    """The outputs jxai explains: a final softmax/sigmoid stripped, as jxai.explain does."""
    x = jnp.asarray(x)
    stripped = network.without_output_activation()
    y, _ = jxai.Context(stripped, tuple(x.shape), x.dtype, None).forward(x)
    return np.asarray(y, np.float64)


# --------------------------------------------------------------------------------------------
# The float64 oracle: a literal numpy DeepLIFT-rescale
# --------------------------------------------------------------------------------------------


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(6, name="d0")(x))
        x = jnp.tanh(nn.Dense(5, name="d1")(x))
        return nn.Dense(3, name="d2")(x)


def numpy_deeplift(params, x, x0, target):
    """DeepLIFT-rescale by hand: multipliers through d2 -> tanh -> d1 -> relu -> d0."""
    w = [np.asarray(params[f"d{i}"]["kernel"], np.float64) for i in range(3)]
    b = [np.asarray(params[f"d{i}"]["bias"], np.float64) for i in range(3)]
    z1, z1_0 = x @ w[0] + b[0], x0 @ w[0] + b[0]
    h1, h1_0 = np.maximum(z1, 0), np.maximum(z1_0, 0)
    z2, z2_0 = h1 @ w[1] + b[1], h1_0 @ w[1] + b[1]
    m_out = np.zeros((x.shape[0], 3))
    m_out[:, target] = 1.0
    m_h2 = m_out @ w[2].T
    m_z2 = m_h2 * (np.tanh(z2) - np.tanh(z2_0)) / (z2 - z2_0)
    m_z1 = (m_z2 @ w[1].T) * (h1 - h1_0) / (z1 - z1_0)
    return (x - x0) * (m_z1 @ w[0].T)


@pytest.fixture(scope="module")
def two_layer():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 7))
    module = TwoLayer()
    with jax.enable_x64(True):
        variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
    params = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["params"])
    return module, params, x, rng.normal(size=(4, 7)), rng.normal(size=(5, 7))


def test_float64_equals_numpy_deeplift_rescale(two_layer):
    module, params, x, x0, _ = two_layer
    with jax.enable_x64(True):
        network = jxai.Network(module, {"params": params})
        ours = jxai.explain(network, x, "deeplift", target=2, baseline=x0)
        assert ours.dtype == jnp.float64
        y, y0 = module.apply({"params": params}, x), module.apply({"params": params}, x0)
    expected = numpy_deeplift(params, x, x0, 2)
    close(ours, expected, 1e-12)
    np.testing.assert_allclose(expected.sum(1), np.asarray(y - y0)[:, 2], rtol=1e-12)


def test_float64_deep_shap_is_the_background_mean(two_layer):
    module, params, x, _, background = two_layer
    expected = np.mean([numpy_deeplift(params, x, np.broadcast_to(row, x.shape), 0)
                        for row in background], axis=0)
    with jax.enable_x64(True):
        network = jxai.Network(module, {"params": params})
        for batch_size in (1, 2, None):  # chunks of the background (2 leaves a remainder)
            ours = jxai.explain(network, x, "deep_shap", target=0, background=background,
                                batch_size=batch_size)
            close(ours, expected, 1e-12)
        multipliers = jxai.explain(network, x, "deep_shap", target=0, background=background,
                                   multiply_by_inputs=False)
    singles = [numpy_deeplift(params, x, np.broadcast_to(r, x.shape), 0) / (x - r)
               for r in background]
    close(multipliers, np.mean(singles, axis=0), 1e-10)


# --------------------------------------------------------------------------------------------
# Summation-to-delta on every model shape
# --------------------------------------------------------------------------------------------


class ModuleCNN(nn.Module):
    """VGG-style: conv -> ReLU module -> MaxPool module (twice), dense, tanh, dense."""

    @nn.compact
    def __call__(self, x):
        for features in (4, 6):
            x = jl.Activation("relu")(nn.Conv(features, (3, 3))(x))
            x = jl.MaxPool((2, 2))(x)
        x = jl.Activation("tanh")(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(x)


class FunctionalCNN(nn.Module):
    """The same with functional nn.relu / nn.max_pool, an ELU, a global max pool."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.elu(nn.Conv(6, (3, 3))(x))
        x = jl.GlobalMaxPool()(x)
        return nn.Dense(3)(nn.sigmoid(nn.Dense(8)(x)))


def _flax(module, shape, key=0):
    x = jax.random.normal(jax.random.PRNGKey(key), shape)
    return jxai.Network(module, module.init(jax.random.PRNGKey(key + 1), x)), x


def _cases():
    cases = {
        "tabular_mlp": lambda: (jxai.models.get("tabular_mlp", pretrained=False, key=0),
                                jax.random.uniform(jax.random.PRNGKey(0), (3, 37))),
        "mnist1d_cnn": lambda: (
            jxai.models.get("mnist1d_cnn", pretrained=False, key=0, **CNN_CONFIG),
            jax.random.normal(jax.random.PRNGKey(0), (3, 40, 1))),
        "cnn_relu_maxpool_modules": lambda: _flax(ModuleCNN(), (3, 10, 10, 2)),
        "cnn_functional_relu_maxpool": lambda: _flax(FunctionalCNN(), (3, 10, 10, 2)),
    }
    for model in ("resblock", "resblock_fused"):
        cases[model] = lambda model=model: _residual(model)
    return cases


def _residual(model):
    path = RESIDUAL / f"{model}.h5"
    if not path.exists():
        pytest.skip(f"fixture {path} is missing")
    network = jxai.load(str(path))
    shape = (3, *network.metadata["input_shape"]) if "input_shape" in network.metadata else None
    if shape is None:
        shape = (3, *np.load(RESIDUAL / f"{model}.npz")["x"].shape[1:])
    return network, jax.random.normal(jax.random.PRNGKey(0), shape)


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_summation_to_delta(name):
    """Σ R = S_t(x) − S_t(x₀) to float32 rounding, where gradient × Δx misses it; DeepSHAP sums
    to S_t(x) − mean S_t(background)."""
    network, x = CASES[name]()
    baseline = 0.3 * jax.random.normal(jax.random.PRNGKey(7), x.shape)
    target = 0
    y, y0 = logits(network, x)[:, target], logits(network, baseline)[:, target]
    relevance, delta = jxai.explain(network, x, "deeplift", target=target, baseline=baseline,
                                    return_delta=True, micro_batch=None)
    totals = np.asarray(relevance, np.float64).reshape(x.shape[0], -1).sum(1)
    scale = np.abs(y - y0).max()
    assert np.abs(totals - (y - y0)).max() <= 1e-5 * max(scale, 1.0)
    np.testing.assert_allclose(np.asarray(delta), totals - (y - y0), atol=1e-5 * max(scale, 1.0))
    gradient = np.asarray(jxai.explain(network, x, "gradient", target=target, micro_batch=None),
                          np.float64)
    gap = np.abs((gradient * np.asarray(x - baseline)).reshape(x.shape[0], -1).sum(1) - (y - y0))
    assert gap.max() > 100 * np.abs(totals - (y - y0)).max()  # the property is not trivial here

    background = jax.random.normal(jax.random.PRNGKey(8), (4, *x.shape[1:]))
    shap_values, delta = jxai.explain(network, x, "deep_shap", target=target,
                                      background=background, return_delta=True, micro_batch=None)
    expected = y - logits(network, background)[:, target].mean()
    totals = np.asarray(shap_values, np.float64).reshape(x.shape[0], -1).sum(1)
    assert np.abs(totals - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1.0)
    assert np.abs(np.asarray(delta)).max() <= 1e-5 * max(np.abs(expected).max(), 1.0)


def test_per_sample_loop_keeps_the_pairs():
    """On a CPU a convolutional network is explained one sample at a time (micro_batch="auto");
    the doubled batch is made inside, so the result equals the whole batch's."""
    network, x = _flax(ModuleCNN(), (3, 10, 10, 2))
    looped = jxai.explain(network, x, "deeplift", target=1, baseline=0.25)
    whole = jxai.explain(network, x, "deeplift", target=1, baseline=0.25, micro_batch=None)
    np.testing.assert_allclose(np.asarray(looped), np.asarray(whole), rtol=1e-5, atol=1e-7)


def test_baseline_forms_agree():
    network, x = _flax(FunctionalCNN(), (2, 10, 10, 2))
    one = 0.1 * jax.random.normal(jax.random.PRNGKey(3), x.shape[1:])
    by_array = jxai.explain(network, x, "deeplift", target=2,
                            baseline=np.broadcast_to(one, x.shape))
    by_sample = jxai.explain(network, x, "deeplift", target=2, baseline=one)
    by_callable = jxai.explain(network, x, "deeplift", target=2, micro_batch=None,
                               baseline=_Shift(np.asarray(one)))
    np.testing.assert_allclose(np.asarray(by_sample), np.asarray(by_array), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(by_callable), np.asarray(by_array), rtol=1e-6,
                               atol=1e-8)


class _Shift:
    """A hashable callable baseline returning a fixed sample (broadcast over the batch)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, x):
        return jnp.broadcast_to(jnp.asarray(self.value, x.dtype), x.shape)

    def __hash__(self):
        return hash(self.value.tobytes())

    def __eq__(self, other):
        return isinstance(other, _Shift) and np.array_equal(self.value, other.value)


# --------------------------------------------------------------------------------------------
# Parity: Captum 0.9 and shap 0.51
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity():
    data = _fixture()
    return data, fixture_networks(data)


def test_fixture_networks_are_the_torch_networks(parity):
    data, (mlp, cnnmax, cnnavg) = parity
    close(logits(mlp, data["mlp_x"]), data["torch_mlp_logits"], 1e-5)
    x = jnp.asarray(data["cnn_x"])
    close(logits(cnnmax, x), data["torch_cnnmax_logits"], 1e-5)
    close(logits(cnnavg, data["cnn_x"]), data["torch_cnnavg_logits"], 1e-5)


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_captum_deeplift_mlp(parity, x64):
    data, (mlp, _, _) = parity
    tolerance = 1e-12 if x64 else 2e-6  # 2e-16 and 2e-7 measured
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        net = jxai.Network(mlp.module, jax.tree.map(lambda v: jnp.asarray(v, dtype),
                                                    mlp.variables), metadata=mlp.metadata)
        x = jnp.asarray(data["mlp_x"], dtype)
        base = jnp.asarray(data["mlp_baseline"], dtype)
        close(jxai.explain(net, x, "deeplift", target=0, baseline=base), data["captum_mlp"],
              tolerance)
        close(jxai.explain(net, x, "deeplift", target=0), data["captum_mlp_zero"], tolerance)
        close(jxai.explain(net, x, "deeplift", target=0, baseline=base, multiply_by_inputs=False),
              data["captum_mlp_multipliers"], tolerance)


def _float64(network):
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), network.variables)
    return jxai.Network(network.module, variables, metadata=network.metadata)


def test_captum_deeplift_cnn_every_target(parity):
    """float64 (the references are): equal to rounding, 4e-16 measured (float32: 4e-7)."""
    data, (_, _, cnnavg) = parity
    with jax.enable_x64(True):
        x, base = np.float64(data["cnn_x"]), np.float64(data["cnn_baseline"])
        ours = jxai.explain(_float64(cnnavg), x, "deeplift", target=jxai.several(*range(10)),
                            baseline=base, micro_batch=None)
    close(np.swapaxes(np.asarray(ours), 0, 1), data["captum_cnnavg"], 1e-12)


def test_captum_deeplift_shap_cnn(parity):
    data, (_, _, cnnavg) = parity
    ours = jxai.explain(cnnavg, jnp.asarray(data["cnn_x"]), "deep_shap", target=3,
                        background=data["cnn_background"], micro_batch=None)
    close(ours, data["captum_cnnavg_shap"], 2e-6)


def test_shap_deep_explainer_mlp(parity):
    data, (mlp, _, _) = parity
    x = jnp.asarray(data["mlp_x"])
    ours = jxai.explain(mlp, x, "deep_shap", target=0, background=data["mlp_background"])
    close(ours, data["shap_mlp"], 2e-6)  # 3e-7 measured
    # shap's additivity check: Σ φ = f(x) − E_background f
    totals = np.asarray(ours, np.float64).sum(1)
    np.testing.assert_allclose(totals, logits(mlp, x)[:, 0] - data["shap_mlp_expected"][0],
                               atol=1e-5)


def test_shap_deep_explainer_cnn_with_max_pooling(parity):
    """shap keeps summation-to-delta at max pooling after a ReLU module; so does jxai, to the
    same numbers (every class)."""
    data, (_, cnnmax, _) = parity
    with jax.enable_x64(True):
        x = np.float64(data["cnn_x"])
        ours = jxai.explain(_float64(cnnmax), x, "deep_shap", target=jxai.several(*range(10)),
                            background=np.float64(data["cnn_background"]), micro_batch=None)
    ours = np.moveaxis(np.asarray(ours), 0, -1)  # (T, B, 40, 1) -> shap's (B, 40, 1, T)
    close(ours, data["shap_cnnmax"], 1e-12)  # 4e-16 measured (float32: 3e-7)
    totals = ours.reshape(x.shape[0], -1, 10).sum(1)  # shap's additivity check
    y = logits(cnnmax, x)
    np.testing.assert_allclose(totals, y - data["shap_cnnmax_expected"][None], atol=1e-5)


def test_captum_max_pool_misses_summation_to_delta(parity):
    """Captum's DeepLift takes the plain gradient at a max pool after a ReLU module (its issue
    #1104): its convergence delta on the MNIST-1D CNN is up to 0.07; jxai follows shap and
    keeps summation-to-delta, so the two differ there."""
    data, (_, cnnmax, _) = parity
    x, base = jnp.asarray(data["cnn_x"]), jnp.asarray(data["cnn_baseline"])
    assert np.abs(data["captum_cnnmax_delta"]).max() > 0.05
    ours, delta = jxai.explain(cnnmax, x, "deeplift", target=3, baseline=base,
                               return_delta=True, micro_batch=None)
    assert np.abs(np.asarray(delta)).max() < 1e-5
    expected = logits(cnnmax, x)[:, 3] - logits(cnnmax, base)[:, 3]
    np.testing.assert_allclose(np.asarray(ours, np.float64).reshape(3, -1).sum(1), expected,
                               atol=1e-5)
    difference = np.abs(np.asarray(ours) - data["captum_cnnmax"]).max()
    assert difference > 1e-3


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return _flax(ModuleCNN(), (2, 10, 10, 2))


@pytest.mark.parametrize("params, message", [
    (dict(background=np.zeros((4, 10, 10, 3), np.float32)),
     "deep_shap: background has shape (4, 10, 10, 3); expected (M, *(10, 10, 2)) to match the "
     "input samples of shape (10, 10, 2)"),
    (dict(background=np.zeros((0, 10, 10, 2), np.float32)),
     "deep_shap: background is empty (shape (0, 10, 10, 2)); pass at least one reference sample"),
    (dict(), "deep_shap: pass background=, reference samples shaped (M, *(10, 10, 2))"),
])
def test_deep_shap_bad_background(small, params, message):
    network, x = small
    with pytest.raises(ValueError) as error:
        jxai.explain(network, x, "deep_shap", **params)
    assert message in str(error.value)


def test_deeplift_errors(small):
    network, x = small
    with pytest.raises(ValueError, match=r"deeplift: baseline of shape \(3, 10, 10, 2\) does not "
                                         r"broadcast to the input shape \(2, 10, 10, 2\)"):
        jxai.explain(network, x, "deeplift", baseline=np.zeros((3, 10, 10, 2), np.float32))
    with pytest.raises(ValueError, match="deeplift: return_delta=True needs "
                                         "multiply_by_inputs=True"):
        jxai.explain(network, x, "deeplift", return_delta=True, multiply_by_inputs=False)
    with pytest.raises(ValueError, match="deeplift: seed='one' does not apply"):
        jxai.explain(network, x, "deeplift", seed="one")


class SoftmaxInside(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.softmax(nn.Dense(4)(x)))


def test_softmax_inside_is_refused():
    network, x = _flax(SoftmaxInside(), (2, 5))
    with pytest.raises(ValueError, match=r"deeplift: layer '.*softmax.*' is a softmax inside the "
                                         "network; the rescale rule needs elementwise"):
        jxai.explain(network, x, "deeplift")


class AbsInside(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.abs(nn.Dense(4)(x)) * 2.0)  # abs: unplaced; the product: linear


def test_unplaced_nonlinearity_is_refused():
    network, x = _flax(AbsInside(), (2, 5))
    with pytest.raises(ValueError, match=r"deeplift: the nonlinear operation abs in module "
                                         r"'\(the root module\)' is not a layer jxai can give "
                                         "the rescale rule"):
        jxai.explain(network, x, "deeplift")


def test_registered():
    assert {"deeplift", "deep_shap"} <= set(jxai.list_methods("gradient"))
