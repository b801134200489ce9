"""The histopathology VGG-7 classifier of the seed (224×224×3 RGB tiles, 8 tissue classes).

The seed (Kather et al.'s colorectal histology "HMT" tiles, 8 classes, 0.888 test accuracy) names
the network VGG-7 without printing it. This is the usual reading of the name: seven weight layers
in VGG style, five 3×3 ``same`` convolutions with ReLU, each followed by 2×2 max pooling
(32, 64, 128, 128, 256 filters: 224 → 7), then ``Flatten`` → ``fc1`` (256, ReLU) → dropout 0.5 →
``predictions`` (8, softmax). Keras names follow ``keras.applications.vgg16``
(``block{b}_conv1``, ``block{b}_pool``, ``fc1``, ``predictions``). 3,749,576 parameters.

Preprocessing: RGB in [0, 255] scaled to [0, 1] (the seed's ``ImageDataGenerator(rescale=1/255)``).

Reference: Simonyan & Zisserman (2015); Kather et al. (2016), Multi-class texture analysis in
colorectal cancer histology, Scientific Reports 6:27988.
"""

from __future__ import annotations

import flax.linen as nn

from jxai import layers

from ._registry import conv, dense, flatten, output_activation_metadata, register

__all__ = ["HMT_CLASSES", "VGG7"]

HMT_CLASSES = ("tumour", "stroma", "complex", "lympho", "debris", "mucosa", "adipose", "empty")


class VGG7(nn.Module):
    """VGG-style blocks (3×3 ``same`` conv + ReLU, 2×2 max-pool) per entry of ``filters``, then
    ``Flatten`` → ``fc1`` (ReLU) → dropout → ``predictions`` (softmax). With the default five
    blocks and two dense layers it is the seven-weight-layer VGG-7; the demo's bias-detection CNN
    (`jxai.models.bias_cnn`) is the same family with three blocks."""

    filters: tuple[int, ...] = (32, 64, 128, 128, 256)
    hidden: int = 256
    classes: int = 8
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        for block, features in enumerate(self.filters, start=1):
            x = conv(x, features, (3, 3), name=f"block{block}_conv1")
            x = layers.MaxPool((2, 2), (2, 2), name=f"block{block}_pool")(x)
        x = flatten(x)
        x = dense(x, self.hidden, name="fc1")
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return dense(x, self.classes, name="predictions", activation="softmax")


@register("vgg7", "histopathology VGG-7 (224×224×3, 8 tissue classes)")
def _make(input_shape=(224, 224, 3), filters=(32, 64, 128, 128, 256), hidden=256, classes=8,
          dropout=0.5):
    h, w = input_shape[:2]
    n = len(filters)
    if h % 2**n or w % 2**n:
        raise ValueError(
            f"vgg7 input height and width must be multiples of {2**n} ({n} 2×2 poolings), got "
            f"input_shape={tuple(input_shape)}"
        )
    module = VGG7(tuple(filters), int(hidden), int(classes), float(dropout))
    metadata = {
        **output_activation_metadata("softmax", "predictions"),
        "preprocessing": {"name": "unit_scale", "scale": 255.0},
        "task": "classification",
        "classes": list(HMT_CLASSES) if classes == 8 else list(range(classes)),
    }
    return module, tuple(input_shape), metadata
