"""Shared loading of the LRP parity fixtures (``tests/fixtures/lrp``) for the iNNvestigate and
Zennit parity tests: the case tables, the converted models and their reference outputs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "lrp"
TOLERANCE = 1e-3


def cases(index: Path, library: str) -> list:
    """One pytest param per recorded case; cases the reference library could not run, or whose
    float32 reference is ill-conditioned, are skipped with the reason."""
    if not index.exists():
        return [pytest.param(None, id="fixtures-missing")]
    params = []
    for case in json.loads(index.read_text())["cases"]:
        marks = []
        if case.get("status", "ok") != "ok":
            marks.append(pytest.mark.skip(reason=f"{library} raised: {case['error']}"))
        elif not case["stable"]:
            marks.append(pytest.mark.skip(reason=unstable_reason(case)))
        params.append(pytest.param(case, id=f"{case['model']}-{case['id']}", marks=marks))
    return params


def unstable_reason(case: dict) -> str:
    if case.get("f64_rel_err") is None:
        return "no float64 rerun of the reference to show it is well-conditioned"
    return (
        f"reference ill-conditioned in float32 (its float64 rerun differs by "
        f"{case['f64_rel_err']:.1e})"
    )


def relative_l2(actual, expected) -> float:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def require(path: Path, generator: str) -> Path:
    if not path.exists():
        pytest.skip(
            f"fixture {path.relative_to(FIXTURES.parent.parent)} is missing; "
            f"regenerate with tests/fixtures/{generator}"
        )
    return path


@functools.cache
def network(model: str):
    import jxai

    return jxai.load_keras(str(FIXTURES / model / "model.h5"))


@functools.cache
def reference(model: str, filename: str, generator: str) -> dict:
    with np.load(require(FIXTURES / model / filename, generator)) as data:
        return {key: data[key] for key in data.files}


def rule_signature(composite) -> frozenset:
    """Every (rule class, composite mode) a composite assigns: what a
    test of "every preset" exercises of the engine (selectors and values aside)."""
    rules = [rule for _, rule in composite.rules]
    rules += [composite.activation_rule, composite.batchnorm_rule, composite.pool_rule,
              composite.sum_rule, getattr(composite, "relu_rule", None)]
    return frozenset((type(rule).__name__, composite.mode) for rule in rules if rule is not None)


def covering_presets(methods, params=None) -> list[str]:
    """The methods of ``methods`` that are needed so that every rule class any LRP preset among
    them assigns is run at least once (greedy set cover, in list order); other methods kept.

    The twin tests (NNX = linen, functional = module) compare the engine's placement of rules,
    which a preset exercises through its rule classes: the cover runs each of them in a fraction
    of the compilations. ``JXAI_EVERY_PRESET=1`` in the environment returns ``methods`` whole.
    """
    import os

    from jxai.composites import PRESETS, composite_for, preset

    methods = list(methods)
    if os.environ.get("JXAI_EVERY_PRESET") == "1":
        return methods
    params = params or {}
    signatures = {}
    for method in methods:
        given = params.get(method, {})
        if method == "lrp" and "composite" in given:
            signatures[method] = rule_signature(composite_for(given["composite"]))
        elif method in PRESETS:
            signatures[method] = rule_signature(preset(method, **given))
    needed = set().union(*signatures.values()) if signatures else set()
    chosen = []
    while needed:
        best = max(signatures, key=lambda m: len(signatures[m] & needed))
        chosen.append(best)
        needed -= signatures.pop(best)
    keep = set(chosen) | {m for m in methods if m not in signatures and m not in chosen}
    keep -= set(signatures)  # presets left out by the cover
    return [m for m in methods if m in keep]
