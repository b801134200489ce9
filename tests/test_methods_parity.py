"""Parity of the gradient-family methods with Captum 0.8 and iNNvestigate 2.1.2.

The reference outputs are committed fixtures (``tests/fixtures/methods/``), written by
``tests/fixtures/generate_method_fixtures.py`` from the same weights on two small networks: a
VGG-shaped CNN (conv-relu ×3 with max pooling, dense head) and the CAM architecture (conv-relu ×2,
global average pooling, dense). Captum ran in float64 (exact), iNNvestigate in float32; jxai runs
in float32, so the tolerance is float32 rounding through a few layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import layers

FIXTURES = Path(__file__).parent / "fixtures" / "methods"
WEIGHTS = dict(np.load(FIXTURES / "weights.npz"))
CAPTUM = dict(np.load(FIXTURES / "captum.npz"))
INNVESTIGATE = dict(np.load(FIXTURES / "innvestigate.npz"))
CASES = json.loads((FIXTURES / "cases.json").read_text())
RTOL = 2e-5  # max |jxai - reference| / max |reference|


class SmallCNN(nn.Module):
    """The fixture networks; module names are the layer paths the CAM cases use."""

    gap: bool = False

    @nn.compact
    def __call__(self, x):
        convs = [("conv1", 6), ("conv2", 8)] + ([] if self.gap else [("conv3", 8)])
        for name, channels in convs:
            x = nn.Conv(channels, (3, 3), padding="SAME", name=name)(x)
            x = layers.Activation("relu", name="act" + name[-1])(x)
            if not self.gap and name in ("conv2", "conv3"):
                x = layers.MaxPool((2, 2), name="pool" + name[-1])(x)
        if self.gap:
            return nn.Dense(4, name="dense")(layers.GlobalAvgPool(name="gap")(x))
        x = x.reshape(x.shape[0], -1)
        x = layers.Activation("relu", name="act_dense1")(nn.Dense(16, name="dense1")(x))
        return nn.Dense(5, name="dense2")(x)


def network(model: str) -> jxai.Network:
    params = {}
    for key, value in WEIGHTS.items():
        parts = key.split("/")
        if parts[0] == model and len(parts) == 3:
            params.setdefault(parts[1], {})[parts[2]] = jnp.asarray(value)
    return jxai.Network(SmallCNN(gap=model == "gap"), {"params": params})


def inputs(model: str):
    return jnp.asarray(WEIGHTS[f"{model}/x"]), jnp.asarray(WEIGHTS[f"{model}/target"])


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def cases(library: str):
    return [pytest.param(c, id=c["id"]) for c in CASES if c["library"] == library]


@pytest.mark.parametrize("model", ["cnn", "gap"])
def test_networks_match_the_reference_logits(model):
    x, _ = inputs(model)
    assert relative_error(network(model)(x), CAPTUM[f"{model}/logits"]) < 1e-5
    assert relative_error(network(model)(x), INNVESTIGATE[f"{model}/logits"]) < 1e-5


def _jxai_params(case, model):
    params = {}
    for name, value in case["params"].items():
        if name == "neuron_selection_mode":
            continue
        if isinstance(value, str) and value.startswith("weights:"):
            value = jnp.asarray(WEIGHTS[f"{model}/{value.split(':', 1)[1]}"])
        elif isinstance(value, str) and value.startswith("captum:"):
            value = jnp.asarray(CAPTUM[value.split(":", 1)[1]])
        elif isinstance(value, list):
            value = tuple(value)
        params[name] = value
    if "method" in params:  # Captum's wrapped attribution method inside NoiseTunnel
        params["wrapped"] = params.pop("method")
    return params


@pytest.mark.parametrize("case", cases("captum"))
def test_captum_parity(case):
    model = case["model"]
    x, target = inputs(model)
    params = _jxai_params(case, model)
    result = jxai.explain(network(model), x, case["method"], target=target, **params)
    assert relative_error(result, CAPTUM[case["id"]]) < RTOL


@pytest.mark.parametrize("model", ["cnn", "gap"])
@pytest.mark.parametrize("quadrature", ["riemann_left", "riemann_right", "riemann_middle",
                                        "riemann_trapezoid", "gausslegendre"])
def test_captum_convergence_delta(model, quadrature):
    x, target = inputs(model)
    baseline = jnp.asarray(WEIGHTS[f"{model}/baseline"])
    _, delta = jxai.explain(network(model), x, "integrated_gradients", target=target, steps=16,
                            quadrature=quadrature, baseline=baseline, return_delta=True)
    expected = CAPTUM[f"{model}/ig_{quadrature}/delta"]
    scale = np.max(np.abs(CAPTUM[f"{model}/logits"]))
    np.testing.assert_allclose(np.asarray(delta), expected, atol=1e-5 * scale)


INN_TO_JXAI = {"steps": "steps", "postprocess": "postprocess"}


@pytest.mark.parametrize("case", cases("innvestigate"))
def test_innvestigate_parity(case):
    model = case["model"]
    x, target = inputs(model)
    params = {INN_TO_JXAI[k]: v for k, v in case["params"].items() if k in INN_TO_JXAI}
    if case["method"] == "integrated_gradients":
        # iNNvestigate: left Riemann sum over k/n, k = 0..n-1, reference 0, 64 steps by default.
        params = dict(steps=params.get("steps", 64), quadrature="riemann_left", baseline=0.0)
    if case["method"] in ("guided_backprop", "deconvnet"):
        params["convention"] = "innvestigate"  # iNNvestigate seeds these with the logit
    selection = case["params"]["neuron_selection_mode"]
    chosen = "max" if selection == "max_activation" else target
    result = jxai.explain(network(model), x, case["method"], target=chosen, **params)
    assert relative_error(result, INNVESTIGATE[case["id"]]) < RTOL
