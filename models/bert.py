"""BERT encoder for sequence classification (Devlin et al. 2019) as stock Flax linen, named like
Hugging Face's ``BertForSequenceClassification`` so its checkpoints map onto it by name.

    input_ids (B, T) ─ bert/embeddings: LayerNorm(word_embeddings[ids]
                         + position_embeddings[0..T-1] + token_type_embeddings[types])
    ─ bert/encoder/layer_{i}: a = attention/output/LayerNorm(x + attention/output/dense(
                                      attention/self(x, mask)))
                              x = output/LayerNorm(a + output/dense(gelu(intermediate/dense(a))))
                                                                                   (post-norm)
    ─ bert/pooler: tanh(dense(x[:, 0])) ─ classifier  → logits (B, num_labels)

``net.apply(input_ids, attention_mask=mask, token_type_ids=None)``: ``mask`` (B, T) is 1 for
tokens and 0 for padding (no token attends to padding); token types default to 0. Token ids given
as floats (a float pipeline's arrays) are cast to int32. Attention is explicit
``query``/``key``/``value`` `nn.Dense` layers around `flax.linen.dot_product_attention`; the
activation is the exact (erf) GELU, `nn.gelu(approximate=False)`.

Reference: Devlin et al. (2019), BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding, NAACL.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from ._blocks import check_remat, remat_block, run_blocks
from ._registry import register
from .vit import Projection, SelfAttention

__all__ = ["BertConfig", "BertForSequenceClassification", "BertLayer", "BertModel",
           "as_token_ids", "padding_mask"]

_init = nn.initializers.normal(0.02)


def as_token_ids(input_ids):
    """Integer token ids; float arrays (from a float pipeline) are rounded to int32."""
    input_ids = jnp.asarray(input_ids)
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        input_ids = jnp.round(input_ids).astype(jnp.int32)
    return input_ids


def padding_mask(attention_mask, batch, length):
    """(B, T) 1/0 mask → boolean (B, 1, 1, T): every query sees the non-padded keys; None → None."""
    if attention_mask is None:
        return None
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != (batch, length):
        raise ValueError(f"attention_mask has shape {attention_mask.shape}, the input ids "
                         f"{(batch, length)}: give one 1/0 entry per token")
    return (attention_mask != 0)[:, None, None, :]


class _AddNorm(nn.Module):
    """HF ``BertSelfOutput``/``BertOutput``: ``LayerNorm(residual + dense(x))``."""

    features: int
    eps: float

    @nn.compact
    def __call__(self, x, residual):
        y = nn.Dense(self.features, kernel_init=_init, name="dense")(x)
        return nn.LayerNorm(self.eps, name="LayerNorm")(residual + y)


class _Attention(nn.Module):
    hidden_size: int
    heads: int
    eps: float

    @nn.compact
    def __call__(self, x, mask):
        y = SelfAttention(self.heads, self.hidden_size // self.heads, name="self")(x, mask)
        return _AddNorm(self.hidden_size, self.eps, name="output")(y, x)


class BertLayer(nn.Module):
    """One post-norm encoder block (HF ``BertLayer``)."""

    hidden_size: int
    heads: int
    intermediate_size: int
    eps: float = 1e-12

    @nn.compact
    def __call__(self, x, mask=None):
        a = _Attention(self.hidden_size, self.heads, self.eps, name="attention")(x, mask)
        h = nn.gelu(Projection(self.intermediate_size, name="intermediate")(a), approximate=False)
        return _AddNorm(self.hidden_size, self.eps, name="output")(h, a)


class _Embeddings(nn.Module):
    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    type_vocab_size: int
    eps: float

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        length = input_ids.shape[1]
        if length > self.max_position_embeddings:
            raise ValueError(f"BERT: {length} tokens, the model has position embeddings for "
                             f"{self.max_position_embeddings}")
        embed = {name: nn.Embed(size, self.hidden_size, embedding_init=_init, name=name)
                 for name, size in (("word_embeddings", self.vocab_size),
                                    ("position_embeddings", self.max_position_embeddings),
                                    ("token_type_embeddings", self.type_vocab_size))}
        x = (embed["word_embeddings"](input_ids)
             + embed["position_embeddings"](jnp.arange(length)[None])
             + embed["token_type_embeddings"](token_type_ids))
        return nn.LayerNorm(self.eps, name="LayerNorm")(x)


class _Encoder(nn.Module):
    layers: int
    hidden_size: int
    heads: int
    intermediate_size: int
    eps: float
    remat: bool | str = False

    def setup(self):
        block = remat_block(BertLayer, self.remat)
        self.layer = [block(self.hidden_size, self.heads, self.intermediate_size, self.eps,
                            name=f"layer_{i}") for i in range(self.layers)]

    def __call__(self, x, mask):
        return run_blocks(self, "layer", x, mask, remat=self.remat)


class BertConfig(nn.Module):
    """The fields of Hugging Face's ``BertConfig`` that the encoder reads (shared by `BertModel`
    and `BertForSequenceClassification`; defaults: BERT-base). ``remat``: True rematerialises each
    encoder layer in the backward pass, "sqrt" groups of √depth layers too
    (`jxai.models._blocks`)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    remat: bool | str = False

    def config(self) -> dict:
        """The `BertConfig` fields of this module, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(BertConfig)
                if f.name not in ("parent", "name")}


class BertModel(BertConfig):
    """HF ``BertModel``: embeddings, encoder and the tanh pooler; returns (tokens, pooled)."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        input_ids = as_token_ids(input_ids)
        batch, length = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = _Embeddings(self.vocab_size, self.hidden_size, self.max_position_embeddings,
                        self.type_vocab_size, self.layer_norm_eps,
                        name="embeddings")(input_ids, as_token_ids(token_type_ids))
        x = _Encoder(self.num_hidden_layers, self.hidden_size, self.num_attention_heads,
                     self.intermediate_size, self.layer_norm_eps, self.remat, name="encoder")(
            x, padding_mask(attention_mask, batch, length))
        pooled = jnp.tanh(Projection(self.hidden_size, name="pooler")(x[:, 0]))
        return x, pooled


class BertForSequenceClassification(BertConfig):
    """BERT with a linear ``classifier`` on the pooled first token: ids (B, T) → logits."""

    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, train: bool = False):
        _, pooled = BertModel(**self.config(), name="bert")(
            input_ids, attention_mask, token_type_ids)
        return nn.Dense(self.num_labels, kernel_init=_init, name="classifier")(pooled)


@register("bert", "BERT encoder for sequence classification (HF BertForSequenceClassification); "
          "sizes from config.json via jxai.load_pretrained")
def _make(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
          intermediate_size=512, max_position_embeddings=512, type_vocab_size=2,
          layer_norm_eps=1e-12, num_labels=2, labels=None, sequence_length=128, remat=False):
    """Defaults: BERT-Tiny (L=2, H=128, A=2; 4.4 M parameters), for random-weight experiments.
    ``sequence_length`` only sets the metadata's ``input_shape`` (any length up to
    ``max_position_embeddings`` runs). ``remat``: True rematerialises each encoder layer in the
    backward pass (the same parameters, less memory, one more forward pass); "sqrt" also groups
    of ⌈√depth⌉ layers (memory ∝ √depth; `jxai.models._blocks`)."""
    if hidden_size % num_attention_heads:
        raise ValueError(f"bert: hidden_size {hidden_size} is not a multiple of "
                         f"num_attention_heads {num_attention_heads}")
    module = BertForSequenceClassification(
        vocab_size=int(vocab_size), hidden_size=int(hidden_size),
        num_hidden_layers=int(num_hidden_layers), num_attention_heads=int(num_attention_heads),
        intermediate_size=int(intermediate_size),
        max_position_embeddings=int(max_position_embeddings),
        type_vocab_size=int(type_vocab_size), layer_norm_eps=float(layer_norm_eps),
        remat=check_remat(remat), num_labels=int(num_labels))
    metadata = {
        "output_activation": None,
        "output_activation_path": None,
        "preprocessing": {"name": "identity"},  # token ids from the checkpoint's tokenizer
        "input_dtype": "int32",
        "task": "classification",
        "classes": list(labels) if labels is not None else list(range(int(num_labels))),
    }
    length = min(int(sequence_length), int(max_position_embeddings))
    return module, (length,), metadata
