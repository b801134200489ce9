"""The demo's bias-detection CNN: a small VGG-style classifier for the Clever Hans images.

A scaled-down relative of the chest X-ray classifier (`chest_xray`), whose seed found a dataset
bias with LRP: three 3×3 ``same`` convolutions with ReLU, each followed by 2×2 max pooling
(16, 32, 64 filters: 64 → 8), ``Flatten`` (the spatial layout reaches the head, so a corner
marker can matter), ``fc1`` (64, ReLU) → dropout 0.25 → ``predictions`` (2, softmax).
285,634 parameters: 1.1 MB in float32, small enough to ship a trained checkpoint.

Inputs are 64×64×1 grayscale images in [0, 1] (`jxai.models.clever_hans`).
"""

from __future__ import annotations

from ._registry import output_activation_metadata, register
from .vgg7 import VGG7

__all__ = ["BiasCNN"]


class BiasCNN(VGG7):
    """Conv/pool ×3, flatten, Dense(64, ReLU), Dense(2, softmax): VGG-7's family, smaller."""

    filters: tuple[int, ...] = (16, 32, 64)
    hidden: int = 64
    classes: int = 2
    dropout: float = 0.25


@register("clever_hans_cnn", "the demo's bias-detection CNN (64×64×1 Clever Hans images)")
def _make(input_shape=(64, 64, 1), filters=(16, 32, 64), hidden=64, classes=2, dropout=0.25):
    h, w = input_shape[:2]
    n = len(filters)
    if h % 2**n or w % 2**n:
        raise ValueError(f"clever_hans_cnn input height and width must be multiples of {2**n}, "
                         f"got input_shape={tuple(input_shape)}")
    module = BiasCNN(tuple(filters), int(hidden), int(classes), float(dropout))
    metadata = {
        **output_activation_metadata("softmax", "predictions"),
        "preprocessing": {"name": "identity"},
        "task": "classification",
        "classes": ["ring", "cross"] if classes == 2 else list(range(classes)),
        "last_conv": f"block{n}_conv1",
    }
    return module, tuple(input_shape), metadata
