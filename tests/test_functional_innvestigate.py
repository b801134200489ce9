"""Stock linen models written the way Flax users write them — activations and pooling as plain
functions (`nn.relu`, `nn.max_pool`, `nn.avg_pool`, `jnp.mean`) — given the weights of the
iNNvestigate fixtures (`tests/fixtures/lrp`), against iNNvestigate 2.1.2's stored outputs for the
four presets that need the relevance mode.

The Keras fixtures fuse their ReLUs into Conv/Dense layers (`activation="relu"`); a functional
`nn.relu` is the same computation. Under ``convention="innvestigate"`` deep Taylor treats a fused
ReLU and a separate ReLU layer differently (see tests/test_parity_residual_bn.py), which changes
the result only where relevance reaches units the ReLU set to zero: after average pooling. So the
deep Taylor cases run on the networks without average pooling (vgg, cnn1d, mlp).
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from lrp_fixtures import FIXTURES, network, reference, relative_l2, require

import jxai

TOLERANCE = 1e-4


class VGG(nn.Module):
    """The fixture `vgg`: conv-relu ×2, max pool, conv-relu, max pool, dense-relu ×2, dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="block1_conv1")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="block1_conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="block2_conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32, name="fc1")(x))
        x = nn.relu(nn.Dense(16, name="fc2")(x))
        return nn.Dense(5, name="predictions")(x)


class CNN1D(nn.Module):
    """The fixture `cnn1d`: three 1-D convolutions (one strided, valid), max pool, two dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (5,), name="conv1d")(x))
        x = nn.relu(nn.Conv(8, (3,), strides=(2,), padding="VALID", name="conv1d_1")(x))
        x = nn.relu(nn.Conv(16, (3,), name="conv1d_2")(x))
        x = nn.max_pool(x, (2,), strides=(2,))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16, name="dense")(x))
        return nn.Dense(10, name="logits")(x)


class GAP(nn.Module):
    """The fixture `gap`: conv-relu, average pool, two conv-relu, global mean, dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (3, 3), name="conv2")(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="conv3")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(4, name="logits")(x)


class MLP(nn.Module):
    """The fixture `mlp`: four dense-relu layers of 10 units and one output."""

    @nn.compact
    def __call__(self, x):
        for i in range(4):
            x = nn.relu(nn.Dense(10, name=f"dense_{i}")(x))
        return nn.Dense(1, name="output")(x)


MODELS = {"vgg": VGG, "cnn1d": CNN1D, "gap": GAP, "mlp": MLP}
CASES = [(model, method) for model in MODELS for method in ("lrp.flat", "lrp.w_square")] + [
    (model, method) for model in ("vgg", "cnn1d", "mlp")
    for method in ("deep_taylor", "deep_taylor.bounded")]


def _functional(model: str) -> jxai.Network:
    """The stock linen twin, holding the converted Keras variables (same layer names)."""
    require(FIXTURES / model / "model.h5", "generate_lrp_fixtures.py")
    converted = network(model)
    return jxai.Network(MODELS[model](), converted.variables,
                        {"input_shape": converted.input_shape})


def _bounds(model: str, method: str) -> dict:
    cases = json.loads((FIXTURES / "innvestigate_cases.json").read_text())["cases"]
    (case,) = [c for c in cases if c["model"] == model and c["id"] == method]
    assert case["stable"], case
    return case["kwargs"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_functional_twin_computes_the_keras_logits(model):
    ref = reference(model, "innvestigate.npz", "generate_lrp_fixtures.py")
    logits = np.asarray(_functional(model).apply(ref["x"]))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("model", "method"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_relevance_mode_presets_on_functional_models_match_innvestigate(model, method):
    ref = reference(model, "innvestigate.npz", "generate_lrp_fixtures.py")
    result = jxai.explain(_functional(model), ref["x"], method, convention="innvestigate",
                          **_bounds(model, method))
    err = relative_l2(result, ref[method])
    assert err <= TOLERANCE, f"{method} on functional {model}: {err:.2e} from iNNvestigate 2.1.2"
