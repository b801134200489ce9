"""Pretrained transformers from safetensors folders (`jxai.load_pretrained`) against PyTorch.

Oracle: tests/fixtures/hf/<family>/reference.npz, the logits that transformers 4.57.6 / timm
1.0.15 compute on the same inputs with the weights in the folder (tests/fixtures/hf/generate.py;
random unit-scale weights, so logits are O(1) and a wrong mapping shows far above 1e-4), and
tests/fixtures/hf5/<family>/reference.npz, the same for folders saved by transformers 5.25.0
(tests/fixtures/hf5/generate_hf5_fixtures.py: rotary settings in ``rope_parameters``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jxai

HF = Path(__file__).parent / "fixtures" / "hf"
HF5 = Path(__file__).parent / "fixtures" / "hf5"
TOLERANCE = 1e-4  # float32 logits, max absolute difference

# family folder -> (config architecture, zoo model)
FAMILIES = {
    "vit": ("ViTForImageClassification", "vit"),
    "vit_timm": ("vit_tiny_patch16_224", "vit"),
    "bert": ("BertForSequenceClassification", "bert"),
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "llama"),
    "qwen3": ("Qwen3ForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "llama"),
}


# transformers 5.x folder -> (config architecture, stored dtype)
FAMILIES5 = {
    "vit": ("ViTForImageClassification", "float32"),
    "bert": ("BertForSequenceClassification", "float32"),
    "llama": ("LlamaForCausalLM", "float32"),
    "llama_bf16": ("LlamaForCausalLM", "bfloat16"),
    "llama_rope_llama3": ("LlamaForCausalLM", "float32"),
    "qwen2": ("Qwen2ForCausalLM", "float32"),
    "qwen3": ("Qwen3ForCausalLM", "float32"),
    "mistral": ("MistralForCausalLM", "float32"),
}


def reference(family, root=HF):
    return dict(np.load(root / family / "reference.npz"))


def logits(network, ref):
    """The network on the fixture's inputs, by name as the PyTorch model got them."""
    apply = jax.jit(network.module.apply)  # compiled: faster than op-by-op on a small model
    if "pixels" in ref:
        return np.asarray(apply(network.variables, ref["pixels"]), np.float32)
    extra = {"token_type_ids": ref["token_type_ids"]} if "token_type_ids" in ref else {}
    return np.asarray(apply(network.variables, ref["input_ids"],
                            attention_mask=ref["attention_mask"], **extra), np.float32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_pytorch(family):
    network = jxai.load_pretrained(HF / family)
    ref = reference(family)
    architecture, zoo_name = FAMILIES[family]
    assert network.metadata["architecture"] == architecture
    assert network.metadata["name"] == zoo_name
    assert network.metadata["checkpoint_dtypes"] == ["float32"]
    got = logits(network, ref)
    assert got.shape == ref["logits"].shape
    assert np.abs(ref["logits"]).max() > 0.5  # O(1) logits: the tolerance means something
    np.testing.assert_allclose(got, ref["logits"], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", sorted(FAMILIES5))
def test_transformers5_folders_match_pytorch(family):
    """Folders written by transformers 5.x (``rope_parameters``, 5.x shard/tie handling); the
    bfloat16 one cast to float32 on load, its reference being the float32 model of those
    weights."""
    architecture, stored = FAMILIES5[family]
    cast = {"dtype": jnp.float32} if stored != "float32" else {}
    network = jxai.load_pretrained(HF5 / family, **cast)
    ref = reference(family, HF5)
    assert network.metadata["architecture"] == architecture
    assert network.metadata["checkpoint_dtypes"] == [stored]
    got = logits(network, ref)
    assert got.shape == ref["logits"].shape
    assert np.abs(ref["logits"]).max() > 0.5
    np.testing.assert_allclose(got, ref["logits"], rtol=0, atol=TOLERANCE)


def test_transformers5_layout_is_what_the_fixtures_hold():
    """The 5.x details the fixtures above exercise: rotary settings only in rope_parameters
    (a theta of 1e6 for Qwen2 and llama3 scaling, which a loader reading only the 4.x keys would
    miss), a sharded index, tied heads stored once."""
    config = {f: json.loads((HF5 / f / "config.json").read_text()) for f in FAMILIES5}
    assert all(c["transformers_version"].startswith("5.") for c in config.values())
    for family in ("llama", "llama_rope_llama3", "qwen2", "qwen3", "mistral"):
        assert "rope_theta" not in config[family] and "rope_scaling" not in config[family]
        assert "rope_parameters" in config[family]
    assert config["qwen2"]["rope_parameters"]["rope_theta"] == 1e6
    assert config["llama_rope_llama3"]["rope_parameters"]["rope_type"] == "llama3"
    index = json.loads((HF5 / "llama" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for family in ("qwen2", "llama_rope_llama3"):
        assert config[family]["tie_word_embeddings"]
        assert "lm_head.weight" not in load_file(HF5 / family / "model.safetensors")


def _with_config(family, tmp_path, root=HF5, drop=(), **changes) -> Path:
    folder = tmp_path / family
    shutil.copytree(root / family, folder)
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in drop}
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_rope_parameters_and_the_4x_keys_give_the_same_network(tmp_path):
    """The 5.x rope_parameters and the equivalent 4.x rope_theta + rope_scaling load the same
    network; the scaling is not dropped (the unscaled network differs)."""
    ref = reference("llama_rope_llama3", HF5)
    five = json.loads((HF5 / "llama_rope_llama3" / "config.json").read_text())
    parameters = dict(five["rope_parameters"])
    theta = parameters.pop("rope_theta")
    old = _with_config("llama_rope_llama3", tmp_path / "old", drop=("rope_parameters",),
                       rope_theta=theta, rope_scaling=parameters)
    plain = _with_config("llama_rope_llama3", tmp_path / "plain",
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    new = logits(jxai.load_pretrained(HF5 / "llama_rope_llama3"), ref)
    np.testing.assert_array_equal(logits(jxai.load_pretrained(old), ref), new)
    assert np.abs(logits(jxai.load_pretrained(plain), ref) - new).max() > 1e-3


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     r"LlamaForCausalLM: rope_parameters=.*per-layer-type rotary settings are not"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}, "rope_theta": 5e5},
     r"rope_theta=500000\.0 and rope_parameters\.rope_theta=10000\.0; they must agree"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     r"LlamaForCausalLM: rope_parameters type 'yarn' is not supported \(default, linear, "
     r"llama3\)"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                          "partial_rotary_factor": 0.5}},
     r"rope_parameters\.partial_rotary_factor=0\.5 is not supported"),
])
def test_unsupported_rope_parameters_are_refused(tmp_path, change, message):
    folder = _with_config("llama", tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        jxai.load_pretrained(folder)


def test_fixture_features_are_exercised():
    """What the families above cover: a sharded index, GQA, tied heads, biases, q/k norm,
    a sliding window shorter than the sequence, padding."""
    index = json.loads((HF / "llama" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (HF / "llama" / "model.safetensors").exists()
    config = {f: json.loads((HF / f / "config.json").read_text()) for f in FAMILIES}
    assert config["llama"]["num_key_value_heads"] < config["llama"]["num_attention_heads"]
    assert config["mistral"]["num_key_value_heads"] == 1
    assert config["mistral"]["sliding_window"] < reference("mistral")["input_ids"].shape[1]
    assert config["qwen2"]["tie_word_embeddings"] and config["qwen3"]["tie_word_embeddings"]
    params = jxai.load_pretrained(HF / "qwen2").variables["params"]["model"]["layers_0"]
    assert set(params["self_attn"]["q_proj"]) == {"kernel", "bias"}
    assert "bias" not in params["self_attn"]["o_proj"]
    assert "q_norm" in jxai.load_pretrained(HF / "qwen3").variables["params"]["model"][
        "layers_0"]["self_attn"]
    assert reference("bert")["attention_mask"].min() == 0
    assert reference("llama")["attention_mask"].min() == 0


def test_timm_fused_qkv_is_split_in_three():
    network = jxai.load_pretrained(HF / "vit_timm")
    stored = load_file(HF / "vit_timm" / "model.safetensors")["blocks.1.attn.qkv.weight"]
    attention = network.variables["params"]["vit"]["encoder"]["layer_1"]["attention"]["attention"]
    width = stored.shape[1]
    for i, part in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(np.asarray(attention[part]["kernel"]),
                                      stored[i * width:(i + 1) * width].T)


def test_bfloat16_loads_as_stored_or_cast():
    ref = reference("llama_bf16")
    stored = jxai.load_pretrained(HF / "llama_bf16")
    assert stored.metadata["checkpoint_dtypes"] == ["bfloat16"]
    assert {leaf.dtype for leaf in jax.tree.leaves(stored.variables)} == {jnp.dtype("bfloat16")}
    low = logits(stored, ref)
    # computed in bfloat16 (8 bits of mantissa): close, not equal
    assert 1e-4 < np.abs(low - ref["logits"]).max() < 0.1 * np.abs(ref["logits"]).max()
    cast = jxai.load_pretrained(HF / "llama_bf16", dtype=jnp.float32)
    assert {leaf.dtype for leaf in jax.tree.leaves(cast.variables)} == {jnp.dtype("float32")}
    np.testing.assert_allclose(logits(cast, ref), ref["logits"], rtol=0, atol=TOLERANCE)
    for a, b in zip(jax.tree.leaves(stored.variables), jax.tree.leaves(cast.variables),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    with pytest.raises(ValueError, match=r"dtype='int8': parameters can only be cast to a "
                                         r"floating dtype"):
        jxai.load_pretrained(HF / "llama_bf16", dtype="int8")


def _copy(family, tmp_path) -> Path:
    folder = tmp_path / family
    shutil.copytree(HF / family, folder)
    return folder


def test_misfit_weights_are_one_error_listing_each(tmp_path):
    folder = _copy("bert", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["bert.pooler.dense.bias"]
    tensors["bert.extra.weight"] = np.zeros((3, 4), np.float32)
    tensors["classifier.weight"] = np.zeros((4, 32), np.float32)  # the config says 3 labels
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError) as caught:
        jxai.load_pretrained(folder)
    message = str(caught.value)
    assert message == (
        f"{folder}: the weights do not fit BertForSequenceClassification as config.json "
        "describes it: 1 missing from the checkpoint (bert/pooler/dense/bias (32,)), "
        "1 unexpected in the checkpoint (bert.extra.weight (3, 4)), 1 mis-shaped "
        "(classifier.weight (4, 32) → classifier/kernel needs (32, 3) (got (32, 4))). "
        "Is config.json the one these weights were saved with?")


def test_sharded_index_naming_a_missing_shard_is_refused(tmp_path):
    folder = _copy("llama", tmp_path)
    (folder / "model-00002-of-00007.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json names shards that "
                                         r"are not files in the folder: "
                                         r"model-00002-of-00007\.safetensors"):
        jxai.load_pretrained(folder)


def test_unknown_architectures_are_named(tmp_path):
    folder = _copy("llama", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config,
                                                    "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"architecture GPT2LMHeadModel is not supported; "
                                         r"jxai\.load_pretrained loads ViTForImageClassification, "
                                         r"BertForSequenceClassification, LlamaForCausalLM, "
                                         r"Qwen2ForCausalLM, Qwen3ForCausalLM, "
                                         r"MistralForCausalLM and timm vit_\*"):
        jxai.load_pretrained(folder)
    timm = _copy("vit_timm", tmp_path)
    config = json.loads((timm / "config.json").read_text())
    (timm / "config.json").write_text(json.dumps({**config,
                                                  "architecture": "vit_base_patch16_siglip_224"}))
    with pytest.raises(ValueError, match=r"timm architecture 'vit_base_patch16_siglip_224' is "
                                         r"not supported: jxai loads the plain vit_"):
        jxai.load_pretrained(timm)


def test_unsupported_settings_and_pickles_are_refused(tmp_path):
    folder = _copy("llama", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0}}))
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: rope_scaling type 'yarn' is not "
                                         r"supported \(default, linear, llama3\)"):
        jxai.load_pretrained(folder)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(HF / "bert" / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match=r"no model\.safetensors or model\.safetensors\.index"
                                         r"\.json \(found pytorch_model\.bin: PyTorch/TF "
                                         r"pickles are never loaded"):
        jxai.load(pickled)


def test_load_and_convert_read_the_folder(tmp_path):
    ref = reference("bert")
    direct = logits(jxai.load_pretrained(HF / "bert"), ref)
    np.testing.assert_array_equal(logits(jxai.load(HF / "bert"), ref), direct)
    from jxai.converters.keras.cli import main

    assert main([str(HF / "bert"), str(tmp_path / "converted"), "--quiet"]) == 0
    restored = jxai.load(tmp_path / "converted")
    assert restored.metadata["name"] == "bert"
    np.testing.assert_allclose(logits(restored, ref), direct, rtol=0, atol=1e-6)


def test_gradient_of_vit_logit_wrt_pixels():
    ref = reference("vit")
    network = jxai.load_pretrained(HF / "vit")
    got = np.asarray(jxai.explain(network, ref["pixels"], "gradient", target=3))
    oracle = jax.jit(jax.grad(lambda x: network.apply(x)[:, 3].sum()))(ref["pixels"])
    assert np.abs(oracle).max() > 1e-3
    np.testing.assert_allclose(got, np.asarray(oracle), rtol=1e-4, atol=1e-6)


def _embedding_gradient(network, ids, score, **kwargs):
    """d score / d (word embeddings) through a zero offset added at the embedding output, and
    the score at ``offset`` (for finite differences)."""
    batch, length = ids.shape
    width = network.module.hidden_size

    def run(offset):
        def add(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            if isinstance(context.module, nn.Embed) and context.module.name in (
                    "word_embeddings", "embed_tokens") and context.method_name == "__call__":
                return out + offset
            return out

        with nn.intercept_methods(add):
            return score(network.apply(ids, **kwargs))

    zero = jnp.zeros((batch, length, width), jnp.float32)
    return jax.jit(run), jax.jit(jax.grad(run))(zero), zero


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_gradient_of_a_logit_wrt_input_embeddings(family):
    """The gradient wrt the embeddings of the token ids equals central differences; padding (BERT)
    and later tokens (causal LLaMA) get exactly zero."""
    ref = reference(family)
    network = jxai.load_pretrained(HF / family)
    kwargs = {"attention_mask": ref["attention_mask"]}
    if family == "bert":
        kwargs["token_type_ids"] = ref["token_type_ids"]

        def score(out):  # class 1 of the padded second sequence
            return out[1, 1]
    else:
        def score(out):  # the logit of token 7 after position 5 of the first sequence
            return out[0, 5, 7]

    run, gradient, zero = _embedding_gradient(network, ref["input_ids"], score, **kwargs)
    direction = jax.random.normal(jax.random.key(0), zero.shape)
    step = 2e-3  # float32: truncation ~ step², rounding ~ 1e-7 / step
    numeric = (run(zero + step * direction) - run(zero - step * direction)) / (2 * step)
    analytic = jnp.vdot(gradient, direction)
    assert abs(float(analytic)) > 1e-2
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-3)
    if family == "llama":  # causal: a logit at position 5 does not depend on later tokens
        assert float(jnp.abs(gradient[0, 6:]).max()) == 0.0
    else:  # the second sequence is padded after 6 tokens: no token attends to padding
        assert float(jnp.abs(gradient[1, 6:]).max()) == 0.0
        assert float(jnp.abs(gradient[1, :6]).min()) > 0.0
