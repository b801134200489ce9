"""Rematerialised blocks (``remat=True`` of the zoo's BERT and LLaMA-style models).

Oracles: the same model without remat (same parameters): logits, gradients and every LRP
composite must be the same function, ≤1e-6 relative in float64 (remat changes only what is
stored for the backward pass; the remat model runs the engine's hoisted rule VJPs, the plain one
its ordinary ones); the compiled executable's own memory analysis for the saving.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import jxai.models as zoo
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from token_fixtures import FromEmbeddings

import jxai
from jxai._engine import discover
from jxai._inline import has_checkpoints, inline_checkpoints

SMALL = {
    "bert": ({"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
              "intermediate_size": 32, "sequence_length": 6}, "word_embeddings"),
    "llama": ({"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
               "sequence_length": 6}, "embed_tokens"),
}
METHODS = ["gradient", "lrp.attn_lrp", "lrp.cp_lrp"]


def _nets(name, remat=True):
    """The plain model and its ``remat`` twin; under "sqrt" 3 layers (groups of 2 and 1)."""
    config = dict(SMALL[name][0], num_hidden_layers=3 if remat == "sqrt" else 2)
    return (zoo.get(name, pretrained=False, key=1, **config),
            zoo.get(name, pretrained=False, key=1, remat=remat, **config))


def _float64_twin(name, net):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), net.variables)
    return jxai.Network(FromEmbeddings(net.module, SMALL[name][1], last_position=True),
                        {"params": {"model": variables["params"]}})


def _embeddings(batch=2, length=6, dim=16):
    return jax.random.normal(jax.random.key(3), (batch, length, dim), jnp.float64)


@pytest.mark.parametrize("remat", [True, "sqrt"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_parameters_and_logits(name, remat):
    expected = remat
    plain, remat = _nets(name, remat)
    assert jax.tree.map(jnp.shape, plain.variables) == jax.tree.map(jnp.shape, remat.variables)
    for a, b in zip(jax.tree.leaves(plain.variables), jax.tree.leaves(remat.variables),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 50)
    np.testing.assert_allclose(remat.module.apply(remat.variables, ids),
                               plain.module.apply(plain.variables, ids), rtol=0, atol=1e-6)
    assert remat.metadata["config"]["remat"] is expected


@pytest.mark.parametrize("remat", [True, "sqrt"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_discovery_sees_inside_remat(name, remat):
    plain, remat = _nets(name, remat)
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 50)
    facts, remat_facts = (discover(n, ids.shape, ids.dtype) for n in (plain, remat))
    assert remat_facts.rematerialised and not facts.rematerialised
    assert len(facts.layers) > 20
    assert remat_facts.layers == facts.layers  # fed_by_input, activations, output: all found
    # a "sqrt" group is a lifted function: its scope ("model.blocks_0_1") is in the op's path
    unplaced = [(op, re.sub(r"[^/]*\.blocks_\d+_\d+/", "", path), relu)
                for op, path, relu in remat_facts.unplaced]
    assert unplaced == list(facts.unplaced)
    assert facts.layers[0].kind == "embed" and facts.layers[0].fed_by_input


def _checkpoints(jaxpr) -> list:
    """The ``jax.checkpoint`` equations at the top level of a jaxpr, each with its inner ones."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return [_checkpoints(e.params["jaxpr"]) for e in jaxpr.eqns
            if e.primitive.name in ("remat2", "checkpoint", "remat")]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_sqrt_remat_nests_groups_of_root_depth_blocks(name):
    """remat="sqrt", 5 layers: two checkpointed groups (⌈√5⌉ = 3 layers, then 2), each layer
    inside checkpointed too; remat=True: five checkpoints side by side."""
    ids = jnp.zeros((1, 6), jnp.int32)
    config = dict(SMALL[name][0], num_hidden_layers=5)
    structure = {}
    for remat in (True, "sqrt"):
        net = zoo.get(name, pretrained=False, key=1, remat=remat, **config)
        structure[remat] = _checkpoints(jax.make_jaxpr(net.module.apply)(net.variables, ids))
    assert structure[True] == [[]] * 5
    assert structure["sqrt"] == [[[]] * 3, [[]] * 2]
    with pytest.raises(ValueError, match=r"remat='every': use False, True .* or 'sqrt'"):
        zoo.get(name, pretrained=False, remat="every", **config)


def test_inline_checkpoints_keeps_the_function():
    def f(x, w):
        inner = jax.checkpoint(lambda y: jnp.tanh(y @ w) * jnp.arange(3.0))
        return jax.checkpoint(lambda y: inner(y) + 1)(x).sum()

    x, w = jnp.ones((2, 3)), jnp.eye(3) * 0.5
    closed = jax.make_jaxpr(f)(x, w)
    assert has_checkpoints(closed)
    flat = inline_checkpoints(closed)
    assert not has_checkpoints(flat)
    assert "tanh" in {e.primitive.name for e in flat.jaxpr.eqns}
    np.testing.assert_allclose(jax.core.eval_jaxpr(flat.jaxpr, flat.consts, x, w)[0], f(x, w))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize(("method", "remat"), [(m, True) for m in METHODS]
                         + [("lrp.attn_lrp", "sqrt"), ("lrp.cp_lrp", "sqrt")])
def test_remat_explanations_equal_plain_float64(name, method, remat):
    plain, remat = _nets(name, remat)
    with jax.enable_x64(True):
        e = _embeddings()
        target = jnp.array([3, 7]) if name == "llama" else jnp.array([1, 0])
        reference = np.asarray(jxai.explain(_float64_twin(name, plain), e, method,
                                            target=target))  # the stock engine, no remat
        got = np.asarray(jxai.explain(_float64_twin(name, remat), e, method, target=target))
    assert got.dtype == np.float64 and np.abs(reference).max() > 1e-3
    assert np.abs(got - reference).max() <= 1e-6 * np.abs(reference).max()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_remat_on_token_ids(name):
    plain, remat = _nets(name)
    ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 50)
    kwargs = {"target": 7, "position": 5} if name == "llama" else {"target": 1}
    reference = jxai.explain(plain, ids, "lrp.attn_lrp", **kwargs)
    got = jxai.explain(remat, ids, "lrp.attn_lrp", **kwargs)
    assert got.shape == ids.shape
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())


MEMORY_CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                     num_key_value_heads=2, sequence_length=64)


def _attn_lrp_temp(remat, depth) -> float:
    """Scratch bytes of the compiled AttnLRP (batch 8 x 64 tokens), compiled as jxai.explain
    compiles a checkpointed model on XLA:CPU (`jxai._xla_cpu.REMAT_OPTIONS`)."""
    net = zoo.get("llama", pretrained=False, key=1, remat=remat, num_hidden_layers=depth,
                  **MEMORY_CONFIG)
    ids = jnp.zeros((8, 64), jnp.int32)

    def explain(variables, ids):
        return jxai.explain(jxai.Network(net.module, variables, net.metadata), ids,
                            "lrp.attn_lrp", target=3, position=63)

    options = jxai._xla_cpu.compiler_options(None, rematerialised=True)
    compiled = jax.jit(explain, compiler_options=options).lower(net.variables, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_memory_grows_with_depth_as_promised():
    """From 4 to 16 layers: remat=True adds one residual stream per layer (12·s, s = batch ×
    tokens × hidden × 4 B), remat="sqrt" adds 2(√16 − √4)·s = 4·s, no remat adds every layer's
    intermediates (observed: 12.0·s, 4.1·s and 400·s)."""
    s = 8 * 64 * 32 * 4
    growth = {remat: _attn_lrp_temp(remat, 16) - _attn_lrp_temp(remat, 4)
              for remat in (False, True, "sqrt")}
    assert 9 * s <= growth[True] <= 15 * s, growth
    assert 2 * s <= growth["sqrt"] <= 6 * s, growth
    assert growth[False] > 20 * growth[True], growth


def test_explain_compiles_checkpointed_models_with_the_remat_options(monkeypatch):
    """On XLA:CPU jxai.explain keeps a checkpointed model's barriers (else XLA merges the
    recomputation back into the forward pass and remat saves nothing); others compile as before."""
    asked = []
    original = jxai._xla_cpu.compiler_options

    def spy(kernels, rematerialised=False):
        asked.append(rematerialised)
        return original(kernels, rematerialised)

    monkeypatch.setattr(jxai._xla_cpu, "compiler_options", spy)
    config = dict(MEMORY_CONFIG, num_hidden_layers=3, sequence_length=5)  # a fresh compilation
    ids = jnp.zeros((1, 5), jnp.int32)
    for remat in (False, "sqrt"):
        net = zoo.get("llama", pretrained=False, key=2, remat=remat, **config)
        jxai.explain(net, ids, "gradient", target=1, position=4)
    assert asked == [False, True]
    assert original(None, True) == jxai._xla_cpu.REMAT_OPTIONS


def test_load_pretrained_remat(tmp_path):
    from pathlib import Path

    hf = Path(__file__).parent / "fixtures" / "hf"
    plain = jxai.load_pretrained(hf / "llama")
    remat = jxai.load_pretrained(hf / "llama", remat=True)
    assert flatten_dict(plain.variables).keys() == flatten_dict(remat.variables).keys()
    ref = dict(np.load(hf / "llama" / "reference.npz"))
    run = [jax.jit(n.module.apply)(n.variables, ref["input_ids"],
                                   attention_mask=ref["attention_mask"]) for n in (plain, remat)]
    np.testing.assert_allclose(run[1], run[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"remat=True: ViTForImageClassification \(vit\) has "
                       r"no rematerialised variant; it exists for bert, llama"):
        jxai.load_pretrained(hf / "vit", remat=True)


class _StockBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + nn.Dense(x.shape[-1])(nn.relu(nn.Dense(4 * x.shape[-1])(nn.LayerNorm()(x))))


class _StockModel(nn.Module):
    """A user's model: stock linen blocks, rematerialised with nn.remat or not."""

    remat: bool = False

    @nn.compact
    def __call__(self, x):
        block = nn.remat(_StockBlock) if self.remat else _StockBlock
        for i in range(3):
            x = block(name=f"block_{i}")(x)
        return nn.Dense(3)(jnp.mean(x, axis=1))


def test_a_users_remat_model_gets_the_remat_options_and_the_same_explanation(monkeypatch):
    asked = []
    original = jxai._xla_cpu.compiler_options
    monkeypatch.setattr(jxai._xla_cpu, "compiler_options",
                        lambda kernels, rematerialised=False: asked.append(rematerialised)
                        or original(kernels, rematerialised))
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    variables = _StockModel().init(jax.random.key(1), x)
    results = [jxai.explain(_StockModel(remat=remat), variables, x, "lrp.epsilon_plus", target=2)
               for remat in (False, True)]
    assert asked == [False, True]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5,
                               atol=1e-6 * float(np.abs(results[0]).max()))
