"""Vision Transformer (Dosovitskiy et al. 2021) as stock Flax linen, named like Hugging Face's
``ViTForImageClassification`` so its checkpoints map onto it by name.

    pixels (B, H, W, C) ─ vit/embeddings: patch_embeddings/projection (p×p conv, stride p),
      then [cls_token; patches] + position_embeddings (one layer of the ``added_tokens`` kind)
    ─ vit/encoder/layer_{i}: x + attention(layernorm_before(x)),
                             x + output(gelu(intermediate(layernorm_after(x))))    (pre-norm)
    ─ vit/layernorm ─ classifier(x[:, 0])  → logits (B, num_labels)

A parameter's path is the checkpoint name with ``.{i}.`` written ``_{i}/`` and ``.`` as ``/``
(``vit.encoder.layer.0.attention.attention.query.weight`` →
``vit/encoder/layer_0/attention/attention/query/kernel``); `jxai.load_pretrained` maps Hugging Face
folders by that rule and timm's ``vit_*`` names through a table (its fused ``qkv`` split in three).
Attention is explicit ``query``/``key``/``value``/``output/dense`` `nn.Dense` layers around
`flax.linen.dot_product_attention` (looked up at call time, so a patched version applies), the
MLP's activation the exact (erf) GELU, `nn.gelu(approximate=False)`.

LRP: the patch convolution is an ``nn.Conv`` layer (ε/γ/flat apply to it; pixel relevance is
input × cotangent there, LXT's convention), and the class token and position embeddings are
constants added by a layer of the `jxai.transformer.AddedTokens` kind: bias-like, they keep their
share of the relevance (the gradient passes through the addition). ``lrp.attn_lrp``,
``lrp.cp_lrp`` and every other LRP preset run on it (``tests/test_vit_explain.py``).

Input: NHWC pixels prepared as the checkpoint was trained on (Hugging Face's image processors
give ``(x / 255 - mean) / std``; the metadata's ``image_mean``/``image_std`` hold mean and std).

Reference: Dosovitskiy et al. (2021), An Image is Worth 16x16 Words, ICLR.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jxai.transformer import AddedTokens

from ._registry import register

__all__ = ["Projection", "SelfAttention", "ViTForImageClassification", "ViTLayer", "ViTModel"]

_init = nn.initializers.normal(0.02)  # Hugging Face's initializer_range for ViT and BERT


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with explicit projections (HF ``*SelfAttention``):
    ``softmax(q kᵀ / √d + mask) v`` per head, q/k/v = ``query``/``key``/``value`` `nn.Dense`.

    ``mask``: boolean, broadcastable to (B, heads, T_q, T_k); False entries get no attention.
    Returns the heads concatenated, (B, T, heads · head_dim), before the output projection.
    """

    heads: int
    head_dim: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x, mask=None):
        batch, length = x.shape[:2]

        def project(name):
            y = nn.Dense(self.heads * self.head_dim, use_bias=self.use_bias, kernel_init=_init,
                         name=name)(x)
            return y.reshape(batch, length, self.heads, self.head_dim)

        q, k, v = project("query"), project("key"), project("value")
        out = nn.dot_product_attention(q, k, v, mask=mask)
        return out.reshape(batch, length, self.heads * self.head_dim)


class Projection(nn.Module):
    """The checkpoints' wrappers whose only weight is ``dense`` (``intermediate``, ``output``)."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, use_bias=self.use_bias, kernel_init=_init,
                        name="dense")(x)


class _Attention(nn.Module):
    """HF ``ViTAttention``: ``attention`` (q/k/v and the product) then ``output/dense``."""

    hidden_size: int
    heads: int
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, x):
        y = SelfAttention(self.heads, self.hidden_size // self.heads, self.qkv_bias,
                          name="attention")(x)
        return Projection(self.hidden_size, name="output")(y)


class ViTLayer(nn.Module):
    """One pre-norm encoder block (HF ``ViTLayer``, timm ``Block``)."""

    hidden_size: int
    heads: int
    intermediate_size: int
    eps: float = 1e-12
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(self.eps, name="layernorm_before")(x)
        x = x + _Attention(self.hidden_size, self.heads, self.qkv_bias, name="attention")(h)
        h = nn.LayerNorm(self.eps, name="layernorm_after")(x)
        h = nn.gelu(Projection(self.intermediate_size, name="intermediate")(h), approximate=False)
        return x + Projection(self.hidden_size, name="output")(h)


class _PatchEmbeddings(nn.Module):
    hidden_size: int
    patch_size: int

    @nn.compact
    def __call__(self, pixels):
        p = self.patch_size
        return nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                       kernel_init=_init, name="projection")(pixels)


class _Embeddings(AddedTokens, nn.Module):
    """Patches by a p×p stride-p convolution (`patches`), then (``__call__``) the class token in
    front and the position embeddings added: ``z = [cls; patches] + positions``.

    Two methods so that LRP sees two layers: the patch convolution, an ``nn.Conv`` like any other
    (ε, γ, flat... apply to it), and the addition of the two constants, a layer of the
    `jxai.transformer.AddedTokens` kind (the constants are bias-like: they keep their share of
    the relevance, z-rule; in the gradient × input convention that is the plain gradient, LXT's
    choice). The parameters keep their checkpoint names, ``embeddings/cls_token``,
    ``embeddings/position_embeddings``, ``embeddings/patch_embeddings/projection``.
    """

    hidden_size: int
    patch_size: int
    image_size: int

    prefix_tokens = 1  # the class token (`AddedTokens`)

    def setup(self):
        self.patch_embeddings = _PatchEmbeddings(self.hidden_size, self.patch_size)
        patches = (self.image_size // self.patch_size) ** 2
        self.cls_token = self.param("cls_token", _init, (1, 1, self.hidden_size))
        self.position_embeddings = self.param("position_embeddings", _init,
                                              (1, patches + 1, self.hidden_size))

    def patches(self, pixels):
        """Pixels (B, H, W, C) → patch tokens (B, N, D), row-major over the patch grid."""
        batch, height, width = pixels.shape[:3]
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT: input images are {height}×{width}, the model's learned position "
                f"embeddings are for {self.image_size}×{self.image_size} (resize the images; "
                "position interpolation is not implemented)")
        x = self.patch_embeddings(pixels)
        return x.reshape(batch, -1, self.hidden_size)

    def __call__(self, patches):
        """Patch tokens (B, N, D) → ``[cls; patches] + positions`` (B, N + 1, D)."""
        cls = jnp.broadcast_to(self.cls_token, (patches.shape[0], 1, self.hidden_size))
        return jnp.concatenate([cls.astype(patches.dtype), patches], axis=1) + \
            self.position_embeddings

    @staticmethod
    def added_constants(params):
        """``[cls; 0] + positions`` (1, N + 1, D): what ``__call__`` adds to the padded patches."""
        cls, positions = params["cls_token"], params["position_embeddings"]
        padding = jnp.zeros((1, positions.shape[1] - 1, cls.shape[-1]), cls.dtype)
        return jnp.concatenate([cls, padding], axis=1) + positions


class _Encoder(nn.Module):
    layers: int
    hidden_size: int
    heads: int
    intermediate_size: int
    eps: float
    qkv_bias: bool

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            x = ViTLayer(self.hidden_size, self.heads, self.intermediate_size, self.eps,
                         self.qkv_bias, name=f"layer_{i}")(x)
        return x


class ViTModel(nn.Module):
    """HF ``ViTModel`` without its pooler: the encoded tokens after the final LayerNorm."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True

    @nn.compact
    def __call__(self, pixels):
        embeddings = _Embeddings(self.hidden_size, self.patch_size, self.image_size,
                                 name="embeddings")
        x = embeddings(embeddings.patches(pixels))
        x = _Encoder(self.num_hidden_layers, self.hidden_size, self.num_attention_heads,
                     self.intermediate_size, self.layer_norm_eps, self.qkv_bias,
                     name="encoder")(x)
        return nn.LayerNorm(self.layer_norm_eps, name="layernorm")(x)


class ViTForImageClassification(ViTModel):
    """ViT with a linear ``classifier`` on the class token: pixels (B, H, W, C) → logits.

    The `ViTModel` fields (HF's config names), then ``num_channels`` and ``num_labels``."""

    num_channels: int = 3
    num_labels: int = 1000

    @nn.compact
    def __call__(self, pixels, train: bool = False):
        encoder_fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ViTModel)
                          if f.name not in ("parent", "name")}
        x = ViTModel(**encoder_fields, name="vit")(pixels)
        return nn.Dense(self.num_labels, kernel_init=_init, name="classifier")(x[:, 0])


@register("vit", "Vision Transformer classifier (HF ViTForImageClassification, timm vit_*); "
          "sizes from config.json via jxai.load_pretrained")
def _make(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
          image_size=224, patch_size=16, num_channels=3, num_labels=1000, layer_norm_eps=1e-12,
          qkv_bias=True, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), labels=None):
    """Defaults: ViT-Ti/16 at 224×224 (5.7 M parameters), for random-weight experiments."""
    if hidden_size % num_attention_heads:
        raise ValueError(f"vit: hidden_size {hidden_size} is not a multiple of "
                         f"num_attention_heads {num_attention_heads}")
    if image_size % patch_size:
        raise ValueError(f"vit: image_size {image_size} is not a multiple of patch_size "
                         f"{patch_size}")
    module = ViTForImageClassification(
        hidden_size=int(hidden_size), num_hidden_layers=int(num_hidden_layers),
        num_attention_heads=int(num_attention_heads), intermediate_size=int(intermediate_size),
        image_size=int(image_size), patch_size=int(patch_size),
        layer_norm_eps=float(layer_norm_eps), qkv_bias=bool(qkv_bias),
        num_channels=int(num_channels), num_labels=int(num_labels))
    metadata = {
        "output_activation": None,
        "output_activation_path": None,
        # what HF's / timm's image processor does to 8-bit pixels: (x / 255 - mean) / std
        "preprocessing": {"name": "mean_std", "mean": list(image_mean), "std": list(image_std)},
        "image_mean": list(image_mean),
        "image_std": list(image_std),
        "task": "classification",
        "classes": list(labels) if labels is not None else list(range(int(num_labels))),
    }
    return module, (int(image_size), int(image_size), int(num_channels)), metadata
