"""Parity of `lrp.attn_lrp` and `lrp.cp_lrp` with LXT, the reference AttnLRP implementation.

Oracle: LXT 2.1's efficient implementation (gradient × input with patched modules) on PyTorch
and transformers 4.57, run on the same weights. `tests/fixtures/lxt/generate_lxt_fixtures.py`
writes three tiny random models as the hubs publish them (config.json + model.safetensors:
BertForSequenceClassification, LlamaForCausalLM, ViTForImageClassification) and ``lxt.npz``
with the inputs, the target (each sample's predicted class or next token), the logits and LXT's
relevance: per token ``Σ_d e ⊙ ∂y/∂e`` at the word-embedding output (before position and type
embeddings are added) for BERT and LLaMA, per pixel ``x ⊙ ∂y/∂x`` for ViT.

LXT keeps the plain gradient (LRP-0) on linear layers and embeddings; jxai's presets put ε = 1e-6
on the hidden linear layers, which moves the result by 2e-5 to 9e-5 relative L2 on these models; with ε = 1e-9 they
agree to float32 rounding (≤ 6e-7). LLaMA's SwiGLU product is a `jxai.transformer.Multiply` layer:
AttnLRP splits it uniformly, CP-LRP holds the gate constant (`jxai.rules.HeldGate`), as LXT.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import jxai

FIXTURES = Path(__file__).parent / "fixtures" / "lxt"
TOLERANCE = 1e-3  # relative L2, per sample
LENGTH = 8  # tokens per sequence (BERT, LLaMA)

@functools.cache
def _case(family: str):
    return jxai.load_pretrained(FIXTURES / family), dict(np.load(FIXTURES / family / "lxt.npz"))


def _input(data):
    return data["pixels"] if "pixels" in data else data["input_ids"]


def _explain(family: str, method, padded: bool = False, **options) -> np.ndarray:
    """jxai's relevance for the fixture's input and target; ``padded``: with its attention mask
    (and BERT's token types), the LLaMA target at each sample's last real token (the default
    position)."""
    net, data = _case(family)
    x = _input(data)
    if padded:
        options.update({k: data[k] for k in ("attention_mask", "token_type_ids") if k in data})
        target = data["target_padded"]
    else:
        target = data["target"]
        if family == "llama":  # the next token after the last position
            options["position"] = LENGTH - 1
    return np.asarray(jxai.explain(net, x, method, target=target, **options))


def _relative_l2(got, want) -> np.ndarray:
    """Per sample ``‖got − want‖₂ / ‖want‖₂``."""
    got, want = (np.asarray(a, np.float64).reshape(len(want), -1) for a in (got, want))
    return np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)


@pytest.mark.parametrize("family", ["bert", "llama", "vit"])
def test_the_weights_are_the_same(family):
    net, data = _case(family)
    np.testing.assert_allclose(net.apply(_input(data)), data["logits"], rtol=1e-4, atol=1e-5)
    if "attention_mask" in data:
        extra = {k: data[k] for k in ("attention_mask", "token_type_ids") if k in data}
        np.testing.assert_allclose(net.apply(_input(data), **extra), data["logits_padded"],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama", "vit"])
def test_lxt_relevance_is_not_the_plain_gradient(family):
    """The fixture's rules act: AttnLRP, CP-LRP and input × gradient differ pairwise."""
    _, data = _case(family)
    variants = [data["attn_lrp"], data["cp_lrp"], data["input_x_gradient"]]
    for i, a in enumerate(variants):
        for b in variants[i + 1:]:
            assert _relative_l2(a, b).min() > 0.1


def test_lxt_bert_patch_map_equals_its_primitives_on_stock_bert():
    """LXT's own BERT map (its copy of modeling_bert) and LXT's primitives hooked onto the stock
    transformers modules give the same relevance: the construction used for the BERT CP-LRP and
    ViT references, for which LXT ships no map."""
    _, data = _case("bert")
    assert _relative_l2(data["attn_lrp_primitives"], data["attn_lrp"]).max() <= 1e-6


PARITY = [
    pytest.param(family, method, marks=marks, id=f"{family}-{method}")
    for family, method, marks in [
        ("bert", "attn_lrp", ()),
        ("bert", "cp_lrp", ()),
        ("llama", "attn_lrp", ()),
        ("llama", "cp_lrp", ()),
        ("vit", "attn_lrp", ()),
        ("vit", "cp_lrp", ()),
    ]
]


@pytest.mark.parametrize(("family", "method"), PARITY)
def test_parity_with_lxt(family, method):
    _, data = _case(family)
    relevance = _explain(family, f"lrp.{method}")
    assert relevance.shape == data[method].shape
    error = _relative_l2(relevance, data[method])
    assert error.max() <= TOLERANCE, f"relative L2 per sample {error}"


@pytest.mark.parametrize(("family", "method"), [p for p in PARITY if "vit" not in p.id])
def test_parity_with_lxt_on_a_padded_batch(family, method):
    """The second sequence padded after 5 tokens (attention mask; BERT: token types 0 then 1):
    LXT's relevance, and jxai's, is exactly 0 on the padding."""
    _, data = _case(family)
    want = data[f"{method}_padded"]
    assert np.all(want[1, 5:] == 0) and np.all(want[:, :5] != 0)
    relevance = _explain(family, f"lrp.{method}", padded=True)
    error = _relative_l2(relevance, want)
    assert error.max() <= TOLERANCE, f"relative L2 per sample {error}"
    assert np.all(relevance[1, 5:] == 0)


def test_bert_parity_with_lrp0_is_float32_rounding():
    """With ε → 0 (LXT's plain gradient on linear layers) what remains is rounding: the
    LayerNorm, GELU, tanh pooler and attention conventions are LXT's exactly."""
    _, data = _case("bert")
    relevance = _explain("bert", "lrp.attn_lrp", epsilon=1e-9)
    assert _relative_l2(relevance, data["attn_lrp"]).max() <= 1e-5


def test_llama_cp_lrp_holds_the_gate_as_lxt_does():
    """LXT's CP-LRP holds a gated MLP's gate constant; with the uniform rule at the product
    instead (AttnLRP's), jxai's CP-LRP is LXT's CP attention with AttnLRP's gated MLP — the
    fixture's third reference — and 0.1+ away from LXT's CP-LRP: the gate rule is what counts."""
    from jxai import composites, rules, transformer

    net, data = _case("llama")
    ids, options = data["input_ids"], {"target": data["target"], "position": LENGTH - 1}
    uniform_gate = composites.Composite(
        [(transformer.PRODUCTS, rules.Uniform()), *composites.cp_lrp().rules], activation_rule=
        rules.Pass(), name="cp_lrp with a uniform gate")
    cp = jxai.explain(net, ids, "lrp", composite=uniform_gate, **options)
    assert _relative_l2(cp, data["cp_lrp_uniform_gate"]).max() <= TOLERANCE
    assert _relative_l2(cp, data["cp_lrp"]).min() > 0.1
