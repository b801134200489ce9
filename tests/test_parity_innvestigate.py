"""Parity with iNNvestigate 2.1.2 on small models of the seed shapes (issue 2 section 6).

The reference outputs were written by ``tests/fixtures/generate_lrp_fixtures.py`` (TF 2.14 +
iNNvestigate 2.1.2, run in a separate environment; CI never imports either). Each case of
``tests/fixtures/lrp/innvestigate_cases.json`` is one (model x analyzer x neuron selection):
jxai reads the same ``model.h5`` with its own converter and must reproduce iNNvestigate's
attribution to a relative L2 error of 1e-3 in float32.

Where iNNvestigate deviates from the paper (alpha-beta with the full bias in both denominators,
BatchNorm as its own layer with iNNvestigate's fused surrogate, its deep Taylor rule choice,
exact-zero-only guards), jxai follows the paper by default; the LRP cases therefore pass
``convention="innvestigate"`` (see `needs_innvestigate_convention`).

Cases are skipped only when a fixture file is missing, or -- listed with the reason -- when the
float32 reference itself is ill-conditioned (its float64 rerun differs by more than 1e-4), or
when iNNvestigate raised on the model (nothing to compare against).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from lrp_fixtures import FIXTURES, TOLERANCE, cases, network, reference, relative_l2, require

INDEX = FIXTURES / "innvestigate_cases.json"

def needs_innvestigate_convention(case: dict) -> bool:
    """Every LRP / deep Taylor analyzer runs with ``convention="innvestigate"``.

    Known places where iNNvestigate 2.1.2 deviates from the paper, so that the default
    (paper) convention cannot match it on these fixtures:

    * alpha-beta with bias (``lrp.alpha_*``, sequential presets): full bias in both denominators;
    * BatchNorm (model ``resbn``): not folded; the rule runs on a surrogate elementwise layer with
      kernel ``gamma / sqrt(var**2 + eps)`` and bias ``beta - mean / sqrt(var**2 + eps)``;
    * deep Taylor: ``contains_activation`` is true for every Dense/Conv (``linear`` included), so
      every kernel layer gets z+ without bias; BatchNorm and Activation('relu') layers pass
      relevance by their gradient (its 'deep_taylor_relu' mapping is registered before the
      BatchNorm one and is true for a BatchNorm, so w^2 on BatchNorm never runs: see
      tests/test_parity_residual_bn.py); average / global-average pooling and Add pass relevance
      by their plain gradient (uniform split, copy);
    * stabilizers: only exact zeros are replaced (by 1e-7) in z-rule denominators, including
      average pooling and Add (a 1e-6 sign-aligned stabilizer moves ``gap``/``lrp.flat``, where
      one global-average-pooling output is 3e-5, by 2e-3).
    """
    return case["analyzer"].startswith(("lrp.", "deep_taylor"))


def _cases() -> list:
    return cases(INDEX, "iNNvestigate")


def _require(path):
    return require(path, "generate_lrp_fixtures.py")


def _network(model: str):
    return network(model)


def _reference(model: str):
    return reference(model, "innvestigate.npz", "generate_lrp_fixtures.py")


def _analyze(case: dict, x):
    import jxai

    params = dict(case["kwargs"])
    if needs_innvestigate_convention(case):
        params["convention"] = "innvestigate"
    analyzer = jxai.create_analyzer(
        case["analyzer"], _network(case["model"]),
        neuron_selection_mode=case["mode"], **params,
    )
    if case["mode"] == "index":
        return analyzer.analyze(x, neuron_selection=case["selection"])
    return analyzer.analyze(x)


@pytest.mark.parametrize("case", _cases())
def test_matches_innvestigate(case):
    if case is None:
        _require(INDEX)
    _require(FIXTURES / case["model"] / "model.h5")
    ref = _reference(case["model"])
    expected = ref[case["id"]]
    result = np.asarray(_analyze(case, ref["x"]))
    assert result.shape == expected.shape, (
        f"{case['id']} on {case['model']}: shape {result.shape}, iNNvestigate {expected.shape}")
    err = relative_l2(result, expected)
    assert err <= TOLERANCE, (
        f"{case['id']} on {case['model']} (mode {case['mode']}, kwargs {case['kwargs']}): "
        f"relative L2 error {err:.2e} > {TOLERANCE:g} against iNNvestigate 2.1.2")


@pytest.mark.parametrize("model", ["vgg", "unet", "cnn1d", "gap", "mlp", "resbn"])
def test_converted_logits_match_keras(model):
    """The converter reproduces the Keras outputs the references were computed on."""
    _require(FIXTURES / model / "model.h5")
    ref = _reference(model)
    logits = np.asarray(_network(model).apply(ref["x"]))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-5)


def test_fixture_index_is_complete():
    """Every case recorded as ok has its array; the fixtures stay small."""
    meta = json.loads(_require(INDEX).read_text())
    for case in meta["cases"]:
        if case["status"] == "ok":
            assert case["id"] in _reference(case["model"]), (case["model"], case["id"])
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 3 * 2**20, f"parity fixtures are {total / 2**20:.1f} MiB (budget 3 MiB)"
