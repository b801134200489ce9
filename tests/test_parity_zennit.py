"""Parity with Zennit 0.5.1 composites and single rules (issue 2 section 6).

References come from ``tests/fixtures/generate_zennit_fixtures.py`` (torch 2.13 + Zennit, run in
a separate environment; CI never imports either). It rebuilt the Keras models of
``tests/fixtures/lrp/<model>/model.h5`` in torch with the same weights (logits equal to 1e-5),
ran Zennit with ``attr_output`` = one-hot at the per-sample argmax (output relevance 1) and
stored the attributions in the Keras (channels-last) layout.

jxai reads the same ``.h5`` and runs ``jxai.explain(network, x, method, target=target,
seed="one")`` for LRP (Zennit's initial relevance 1) and the default gradient seed for
gradient, guided backprop and deconvnet. Single Zennit rules (Zennit applies one rule to every
Linear/Conv layer, Pass on ReLU, Norm on sums and average pooling) are written as a jxai
`Composite`. The BatchNorm model ran with Zennit's ``SequentialMergeBatchNorm``, which jxai's
composites do by default (``fold_batchnorm=True``).

Skipped only when a fixture file is missing, or (with the reason) when the float32 reference
is ill-conditioned (its float64 rerun differs by more than 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
from lrp_fixtures import FIXTURES, TOLERANCE, cases, network, reference, relative_l2, require

INDEX = FIXTURES / "zennit_cases.json"


def _cases() -> list:
    return cases(INDEX, "Zennit")


def _require(path):
    return require(path, "generate_zennit_fixtures.py")


def _network(model: str):
    return network(model)


def _reference(model: str):
    return reference(model, "zennit.npz", "generate_zennit_fixtures.py")


def single_rule_composite(rule_name: str, params: dict):
    """Zennit's one-rule-everywhere composite in jxai terms: the rule on every Dense/Conv/
    ConvTranspose, Norm on sums and average pooling, ReLU passes relevance (jxai default),
    BatchNorm folded (Zennit's canonizer)."""
    import flax.linen as nn

    from jxai import rules
    from jxai.composites import Composite

    stabilizer = params.get("stabilizer", 1e-6)
    make = {
        "Epsilon": lambda: rules.Epsilon(epsilon=params["epsilon"], bias=True),
        "ZPlus": lambda: rules.ZPlus(bias=True, stabilizer=stabilizer),
        "AlphaBeta": lambda: rules.AlphaBeta(alpha=params["alpha"], beta=params["beta"],
                                             bias=True, stabilizer=stabilizer),
        "Gamma": lambda: rules.Gamma(gamma=params["gamma"], generalized=True,
                                     stabilizer=stabilizer),
        "Flat": lambda: rules.Flat(stabilizer=stabilizer),
        "WSquare": lambda: rules.WSquare(bias=True, stabilizer=stabilizer),
    }[rule_name]
    return Composite([((nn.Dense, nn.Conv, nn.ConvTranspose), make())],
                     pool_rule=rules.Norm(), name=f"zennit-{rule_name}")


def _explain(case: dict, x, target):
    import jxai

    network = _network(case["model"])
    params = case["zennit_params"]
    seed = "one" if case["seed"] == "one" else "logit"  # "logit" = plain one-hot cotangent
    method = case["jxai_method"]
    kwargs = {}
    if method == "lrp.epsilon_gamma_box":
        kwargs = {"low": params["low"], "high": params["high"]}
    if method[:1].isupper():  # a single Zennit rule
        method = single_rule_composite(method, params)
    return jxai.explain(network, x, method, target=target, seed=seed, **kwargs)


@pytest.mark.parametrize("case", _cases())
def test_matches_zennit(case):
    if case is None:
        _require(INDEX)
    _require(FIXTURES / case["model"] / "model.h5")
    ref = _reference(case["model"])
    expected = ref[case["id"]]
    result = np.asarray(_explain(case, ref["x"], ref["target"]))
    assert result.shape == expected.shape, (
        f"{case['id']} on {case['model']}: shape {result.shape}, Zennit {expected.shape}")
    err = relative_l2(result, expected)
    assert err <= TOLERANCE, (
        f"{case['id']} on {case['model']} ({case['jxai_method']}, seed {case['seed']}, "
        f"Zennit params {case['zennit_params']}): relative L2 error {err:.2e} > {TOLERANCE:g}")


def test_one_seed_is_logit_seed_over_logit():
    """LRP is linear in the output relevance: Zennit's one-seeded result times the target
    logit is the logit-seeded (iNNvestigate-convention) result of the same composite."""
    _require(FIXTURES / "vgg" / "model.h5")
    import jxai

    ref = _reference("vgg")
    target = ref["target"]
    logit = ref["logits"][np.arange(len(target)), target]
    seeded = np.asarray(jxai.explain(_network("vgg"), ref["x"], "lrp.epsilon_plus",
                                     target=target, seed="logit"))
    scale = logit.reshape((-1,) + (1,) * (seeded.ndim - 1))
    assert relative_l2(seeded, scale * ref["lrp.epsilon_plus"]) <= TOLERANCE
