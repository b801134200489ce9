"""The chest X-ray (cardiomegaly) classifier of the seed: VGG16 + an extra block + a small head.

Layers, with the seed's Keras names (512×512×3 input):

* VGG16 blocks 1–5 (``block1_conv1`` ... ``block5_pool``): 3×3 ``same`` convolutions with ReLU
  (64, 64 | 128, 128 | 256×3 | 512×3 | 512×3) and 2×2 max pooling → 16×16×512;
* ``block6_conv1..3``: three 3×3 ``valid`` convolutions (512, ReLU) and ``block6_pool`` → 5×5×512;
* ``Flatten`` → ``first_dense`` (100, ReLU) → dropout 0.1 → ``second_dense`` (20, ReLU) →
  dropout 0.1 → ``clf`` (2, softmax).

Input preprocessing is Keras' caffe-style ``vgg16.preprocess_input`` (RGB [0, 255] → BGR minus the
ImageNet means); grayscale X-rays are repeated to three channels first.

``width_divisor`` divides every convolution's filter count (the head keeps 100 → 20 → 2); it
exists so tests can round-trip a small copy through Keras. The input must be at least 256×256:
the three valid convolutions need 7×7 after block 5, and block 6's pooling one more row.

Reference: Simonyan & Zisserman (2015), Very Deep Convolutional Networks for Large-Scale Image
Recognition.
"""

from __future__ import annotations

import flax.linen as nn

from jxai import layers

from ._registry import conv, dense, flatten, output_activation_metadata, register

__all__ = ["VGG16_BLOCKS", "ChestXRayClassifier", "vgg16_features"]

# (block, number of convolutions, filters)
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def vgg16_features(x, width_divisor: int = 1):
    """VGG16 without its top, Keras layer names (``block{b}_conv{i}``, ``block{b}_pool``)."""
    for block, n_convs, filters in VGG16_BLOCKS:
        for i in range(1, n_convs + 1):
            x = conv(x, filters // width_divisor, (3, 3), name=f"block{block}_conv{i}")
        x = layers.MaxPool((2, 2), (2, 2), name=f"block{block}_pool")(x)
    return x


class ChestXRayClassifier(nn.Module):
    """VGG16 blocks 1–5, the extra valid block 6, and the 100 → 20 → 2 softmax head."""

    width_divisor: int = 1
    dropout: float = 0.1
    classes: int = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = vgg16_features(x, self.width_divisor)
        for i in range(1, 4):
            x = conv(x, 512 // self.width_divisor, (3, 3), padding="VALID", name=f"block6_conv{i}")
        x = layers.MaxPool((2, 2), (2, 2), name="block6_pool")(x)
        x = flatten(x)
        x = dense(x, 100, name="first_dense")
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout_1")(x)
        x = dense(x, 20, name="second_dense")
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout_2")(x)
        return dense(x, self.classes, name="clf", activation="softmax")


@register("chest_xray", "VGG16 + extra block chest X-ray classifier (512×512×3, 2 classes)",
          seed_params=23_076_274)
def _make(input_shape=(512, 512, 3), width_divisor=1, dropout=0.1, classes=2):
    h, w = input_shape[:2]
    if min(h, w) < 256:
        raise ValueError(
            f"chest_xray needs an input of at least 256×256 (three valid 3×3 convolutions and a "
            f"2×2 pooling after five VGG poolings), got input_shape={tuple(input_shape)}"
        )
    if input_shape[-1] != 3:
        raise ValueError(
            f"chest_xray takes 3-channel (BGR, caffe-preprocessed) images, got {tuple(input_shape)}"
            "; repeat grayscale X-rays to three channels before preprocessing."
        )
    module = ChestXRayClassifier(int(width_divisor), float(dropout), int(classes))
    metadata = {
        **output_activation_metadata("softmax", "clf"),
        "preprocessing": {"name": "caffe"},
        "task": "classification",
        "classes": ["no cardiomegaly", "cardiomegaly"] if classes == 2 else list(range(classes)),
    }
    return module, tuple(input_shape), metadata
