"""LLaMA-style decoder (Touvron et al. 2023) as stock Flax linen, named like Hugging Face's
``LlamaForCausalLM`` so its checkpoints map onto it by name; Qwen2 (q/k/v biases), Qwen3 (q/k
RMSNorm per head) and Mistral (sliding-window attention) configurations are options of it.

    input_ids (B, T) ─ model/embed_tokens
    ─ model/layers_{i}: x + self_attn(input_layernorm(x)), x + mlp(post_attention_layernorm(x))
        self_attn: q/k/v_proj → rotary embedding on q, k → causal grouped-query attention → o_proj
        mlp:       down_proj(silu(gate_proj(x)) ⊙ up_proj(x))                        (SwiGLU)
    ─ model/norm (RMSNorm) ─ lm_head, or model/embed_tokens.attend when the embeddings are tied
    → logits (B, T, vocab_size)

``net.apply(input_ids, attention_mask=mask)``: ``mask`` (B, T) is 1 for tokens and 0 for padding;
positions are 0..T-1 (as Hugging Face's forward pass without ``position_ids``). Rotary embedding
follows Hugging Face's ``rotate_half`` convention: the two halves of each head, not interleaved
pairs. Attention is explicit ``q_proj``/``k_proj``/``v_proj``/``o_proj`` `nn.Dense` layers around
`flax.linen.dot_product_attention` (looked up at call time); key/value heads are repeated to the
query heads (HF's ``repeat_kv``) before it.

Reference: Touvron et al. (2023), LLaMA; Su et al. (2021), RoFormer (rotary embedding); Shazeer
(2020), GLU variants (SwiGLU); Ainslie et al. (2023), GQA.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from jxai.transformer import Multiply

from ._blocks import check_remat, remat_block, run_blocks
from ._registry import register
from .bert import as_token_ids

__all__ = ["LlamaAttention", "LlamaConfig", "LlamaDecoderLayer", "LlamaForCausalLM",
           "LlamaModel", "rope_frequencies", "rotate_half"]

_init = nn.initializers.normal(0.02)


def rope_frequencies(head_dim: int, theta: float, scaling: tuple | None = None):
    """The rotary inverse frequencies ``θ^(-2i/d)``, i < d/2, with HF's ``rope_scaling``:
    ``("linear", factor)`` divides them by the factor, ``("llama3", factor, low, high, original)``
    is LLaMA 3.1's smooth interpolation between long and short wavelengths."""
    inv = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    if scaling is None:
        return inv
    if scaling[0] == "linear":
        return inv / scaling[1]
    _, factor, low, high, original = scaling  # "llama3"
    wavelength = 2 * math.pi / inv
    low_wavelength, high_wavelength = original / low, original / high
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    scaled = jnp.where(wavelength > low_wavelength, inv / factor, inv)
    middle = (wavelength >= high_wavelength) & (wavelength <= low_wavelength)
    return jnp.where(middle, blended, scaled)


def rotate_half(x):
    """``[-x₂, x₁]`` for the halves ``x = [x₁, x₂]`` of the last axis (HF's convention)."""
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotary_tables(length: int, inv_freq, dtype):
    """cos and sin of ``position · frequency`` for positions 0..T-1, (T, head_dim), as HF builds
    them (float32, the frequencies repeated for both halves, then cast)."""
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def causal_mask(length: int, attention_mask=None, sliding_window: int | None = None):
    """Boolean (B or 1, 1, T, T): query i sees key j ≤ i (and j > i - window), not padding."""
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (j > i - sliding_window)
    mask = allowed[None, None]
    if attention_mask is not None:
        attention_mask = jnp.asarray(attention_mask)
        if attention_mask.ndim != 2 or attention_mask.shape[1] != length:
            raise ValueError(f"attention_mask has shape {attention_mask.shape}, expected "
                             f"(batch, {length}): one 1/0 entry per token")
        mask = mask & (attention_mask != 0)[:, None, None, :]
    return mask


class LlamaAttention(nn.Module):
    """Grouped-query causal attention with rotary position embedding."""

    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        batch, length = x.shape[:2]

        def project(name, heads):
            y = nn.Dense(heads * self.head_dim, use_bias=self.qkv_bias, kernel_init=_init,
                         name=name)(x)
            return y.reshape(batch, length, heads, self.head_dim)

        q, k, v = (project("q_proj", self.heads), project("k_proj", self.kv_heads),
                   project("v_proj", self.kv_heads))
        if self.qk_norm:  # Qwen3: RMSNorm over each head's features, before the rotation
            q = nn.RMSNorm(self.eps, name="q_norm")(q)
            k = nn.RMSNorm(self.eps, name="k_norm")(k)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, head_dim)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)  # HF's repeat_kv
        out = nn.dot_product_attention(q, k, v, mask=mask)
        out = out.reshape(batch, length, self.heads * self.head_dim)
        return nn.Dense(self.hidden_size, use_bias=self.o_bias, kernel_init=_init,
                        name="o_proj")(out)


class _MLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) ⊙ up_proj(x))``, the product a `Multiply` layer
    (gate first)."""

    hidden_size: int
    intermediate_size: int

    @nn.compact
    def __call__(self, x):
        def dense(features, name):
            return nn.Dense(features, use_bias=False, kernel_init=_init, name=name)

        gate = nn.silu(dense(self.intermediate_size, "gate_proj")(x))
        up = dense(self.intermediate_size, "up_proj")(x)
        # a layer, so that AttnLRP splits the product (uniform rule) and CP-LRP holds the gate
        return dense(self.hidden_size, "down_proj")(Multiply()(gate, up))


class LlamaDecoderLayer(nn.Module):
    """One pre-norm decoder block (HF ``LlamaDecoderLayer``)."""

    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float = 1e-6
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        h = nn.RMSNorm(self.eps, name="input_layernorm")(x)
        x = x + LlamaAttention(self.hidden_size, self.heads, self.kv_heads, self.head_dim,
                               self.qkv_bias, self.o_bias, self.qk_norm, self.eps,
                               name="self_attn")(h, cos, sin, mask)
        h = nn.RMSNorm(self.eps, name="post_attention_layernorm")(x)
        return x + _MLP(self.hidden_size, self.intermediate_size, name="mlp")(h)


class LlamaConfig(nn.Module):
    """The fields of Hugging Face's Llama/Qwen2/Qwen3/Mistral ``config.json`` that the decoder
    reads (shared by `LlamaModel` and `LlamaForCausalLM`; defaults: a 20-million-parameter
    decoder). ``remat``: True rematerialises each decoder layer, "sqrt" groups of √depth layers
    too (`jxai.models._blocks`)."""

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    remat: bool | str = False

    def config(self) -> dict:
        """The `LlamaConfig` fields of this module, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LlamaConfig)
                if f.name not in ("parent", "name")}


class LlamaModel(LlamaConfig):
    """HF ``LlamaModel``: embeddings, decoder layers, final RMSNorm; `attend` is the tied head."""

    def setup(self):
        self.embed_tokens = nn.Embed(self.vocab_size, self.hidden_size, embedding_init=_init)
        block = remat_block(LlamaDecoderLayer, self.remat)
        self.layers = [
            block(self.hidden_size, self.intermediate_size, self.num_attention_heads,
                  self.num_key_value_heads, self.head_dim, self.rms_norm_eps, self.qkv_bias,
                  self.o_bias, self.qk_norm, name=f"layers_{i}")
            for i in range(self.num_hidden_layers)]
        self.norm = nn.RMSNorm(self.rms_norm_eps)

    def __call__(self, input_ids, attention_mask=None):
        input_ids = as_token_ids(input_ids)
        length = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        inv_freq = rope_frequencies(self.head_dim, self.rope_theta, self.rope_scaling)
        cos, sin = rotary_tables(length, inv_freq, x.dtype)
        mask = causal_mask(length, attention_mask, self.sliding_window)
        x = run_blocks(self, "layers", x, cos, sin, mask, remat=self.remat)
        return self.norm(x)

    def attend(self, x):
        """Logits through the tied input embeddings: ``x · embed_tokensᵀ``."""
        return self.embed_tokens.attend(x)


class LlamaForCausalLM(LlamaConfig):
    """LLaMA-style decoder with its language-model head: ids (B, T) → logits (B, T, vocab)."""

    tie_word_embeddings: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, train: bool = False):
        model = LlamaModel(**self.config(), name="model")
        x = model(input_ids, attention_mask)
        if self.tie_word_embeddings:
            return model.attend(x)
        return nn.Dense(self.vocab_size, use_bias=False, kernel_init=_init, name="lm_head")(x)


@register("llama", "LLaMA-style decoder (HF LlamaForCausalLM, Qwen2/Qwen3ForCausalLM, "
          "MistralForCausalLM); sizes from config.json via jxai.load_pretrained")
def _make(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
          num_attention_heads=8, num_key_value_heads=4, head_dim=None, rms_norm_eps=1e-6,
          rope_theta=10000.0, rope_scaling=None, qkv_bias=False, o_bias=False, qk_norm=False,
          sliding_window=None, tie_word_embeddings=False, sequence_length=128, remat=False):
    """Defaults: a 20-million-parameter LLaMA-style decoder, for random-weight experiments.
    ``rope_scaling``: None, ``["linear", factor]`` or ``["llama3", factor, low_freq_factor,
    high_freq_factor, original_max_position_embeddings]``. ``sequence_length`` only sets the
    metadata's ``input_shape``. ``remat``: True rematerialises each decoder layer in the backward
    pass (the same parameters, less memory, one more forward pass); "sqrt" also groups of
    ⌈√depth⌉ layers (memory ∝ √depth, two more forward passes; `jxai.models._blocks`)."""
    if num_attention_heads % num_key_value_heads:
        raise ValueError(f"llama: num_attention_heads {num_attention_heads} is not a multiple of "
                         f"num_key_value_heads {num_key_value_heads}")
    head_dim = int(head_dim) if head_dim is not None else hidden_size // num_attention_heads
    if head_dim % 2:
        raise ValueError(f"llama: head_dim {head_dim} must be even for the rotary embedding")
    module = LlamaForCausalLM(
        vocab_size=int(vocab_size), hidden_size=int(hidden_size),
        intermediate_size=int(intermediate_size), num_hidden_layers=int(num_hidden_layers),
        num_attention_heads=int(num_attention_heads),
        num_key_value_heads=int(num_key_value_heads), head_dim=head_dim,
        rms_norm_eps=float(rms_norm_eps), rope_theta=float(rope_theta),
        rope_scaling=tuple(rope_scaling) if rope_scaling is not None else None,
        qkv_bias=bool(qkv_bias), o_bias=bool(o_bias), qk_norm=bool(qk_norm),
        sliding_window=int(sliding_window) if sliding_window is not None else None,
        remat=check_remat(remat), tie_word_embeddings=bool(tie_word_embeddings))
    metadata = {
        "output_activation": None,
        "output_activation_path": None,
        "preprocessing": {"name": "identity"},  # token ids from the checkpoint's tokenizer
        "input_dtype": "int32",
        "task": "causal_lm",
    }
    return module, (int(sequence_length),), metadata
