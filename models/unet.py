"""The breast-cancer segmentation U-Net of the seed (256×256×3 → 256×256×1, 1,941,105 parameters).

Encoder: five blocks of two 3×3 ``same`` convolutions (16, 32, 64, 128, 256 filters, ReLU,
``he_normal``) with dropout between them and 2×2 max pooling after the first four. Decoder: four
blocks of a 2×2 stride-2 ``Conv2DTranspose`` (no activation), concatenation with the encoder output
of the same size, and two 3×3 convolutions with dropout. Output: a 1×1 convolution with a sigmoid.

The explanation variant of the seed (``get_model(flatten=True, last_activation="linear")``) is
``jxai.models.get("unet_explain")``: linear output, flattened to (B, H·W) so each output pixel is a
class a method can target.

Layer names are Keras' automatic names in a fresh session (``conv2d``, ..., ``conv2d_18``,
``conv2d_transpose``, ..., ``conv2d_transpose_3``), the names `.weights.h5` files use.

Reference: Ronneberger, Fischer & Brox (2015), U-Net: Convolutional Networks for Biomedical Image
Segmentation.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jxai import layers

from ._registry import (
    KerasNames,
    activate,
    conv,
    flatten,
    glorot_uniform,
    he_normal,
    output_activation_metadata,
    register,
)

__all__ = ["UNet", "bce_dice_loss", "dice_coefficient"]

# Dropout after the first convolution of blocks 1..9, as in the seed.
SEED_DROPOUT = (0.1, 0.1, 0.2, 0.2, 0.3, 0.2, 0.2, 0.1, 0.1)


class UNet(nn.Module):
    """The seed's U-Net.

    Attributes:
      base_filters: filters of the first block (16 in the seed); block k has base·2^(k-1).
      last_activation: "sigmoid" (segmentation) or "linear" (explanation variant).
      flatten: flatten the (H, W, 1) output to (H·W,) (explanation variant).
      dropout: the nine dropout rates.
    """

    base_filters: int = 16
    last_activation: str = "sigmoid"
    flatten: bool = False
    dropout: tuple[float, ...] = SEED_DROPOUT

    @nn.compact
    def __call__(self, x, train: bool = False):
        names = KerasNames()
        f = self.base_filters

        def block(x, features, rate):
            x = conv(x, features, (3, 3), name=names("conv2d"), kernel_init=he_normal)
            x = nn.Dropout(rate, deterministic=not train, name=names("dropout"))(x)
            return conv(x, features, (3, 3), name=names("conv2d"), kernel_init=he_normal)

        skips = []
        for level in range(4):
            x = block(x, f * 2**level, self.dropout[level])
            skips.append(x)
            x = layers.MaxPool((2, 2), name=names("max_pooling2d"))(x)
        x = block(x, f * 16, self.dropout[4])
        for level in range(3, -1, -1):
            x = nn.ConvTranspose(
                f * 2**level, (2, 2), strides=(2, 2), padding="SAME", transpose_kernel=True,
                kernel_init=glorot_uniform, name=names("conv2d_transpose"),
            )(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = block(x, f * 2**level, self.dropout[8 - level])
        out_name = names("conv2d")
        x = nn.Conv(1, (1, 1), padding="VALID", kernel_init=glorot_uniform, name=out_name)(x)
        x = activate(x, self.last_activation, out_name)
        return flatten(x) if self.flatten else x


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """The seed's Dice coefficient ``(2·Σ t·p + 1) / (Σ t + Σ p + 1)`` over the whole batch."""
    t = jnp.ravel(y_true).astype(jnp.float32)
    p = jnp.ravel(y_pred).astype(jnp.float32)
    return (2.0 * jnp.sum(t * p) + smooth) / (jnp.sum(t) + jnp.sum(p) + smooth)


def bce_dice_loss(y_true, logits):
    """The seed's ``bce_dice_loss``: binary cross-entropy + (1 − Dice), from logits."""
    t = y_true.astype(jnp.float32)
    bce = jnp.mean(jnp.maximum(logits, 0) - logits * t + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    return bce + 1.0 - dice_coefficient(t, nn.sigmoid(logits))


def _make(input_shape=(256, 256, 3), base_filters=16, last_activation="sigmoid", flatten=False,
          dropout=SEED_DROPOUT):
    h, w = input_shape[:2]
    if h % 16 or w % 16:
        raise ValueError(
            f"U-Net input height and width must be multiples of 16 (four 2×2 poolings and four "
            f"stride-2 transposed convolutions), got input_shape={tuple(input_shape)}"
        )
    module = UNet(base_filters, last_activation, bool(flatten), tuple(dropout))
    out_name = f"conv2d_{18}"
    metadata = {
        **output_activation_metadata(last_activation, out_name),
        "preprocessing": {"name": "unit_scale", "scale": 255.0},
        "task": "segmentation",
        "classes": ["background", "tumour"],
    }
    return module, tuple(input_shape), metadata


register("unet", "breast-cancer segmentation U-Net (256×256×3, sigmoid output)",
         seed_params=1_941_105)(_make)


@register("unet_explain", "the U-Net's explanation variant: linear output, flattened",
          seed_params=1_941_105)
def _make_explain(**kwargs):
    kwargs.setdefault("last_activation", "linear")
    kwargs.setdefault("flatten", True)
    return _make(**kwargs)
