"""The MNIST-1D 1D CNN of the seed (40 samples × 1 channel, 10 digit classes).

The seed loads a trained ``MNIST1D.h5`` (0.877 test accuracy) and explains its ``conv1d_2`` layer,
so the network has at least three ``Conv1D`` layers; it does not print the rest. This is a compact
network of that family, with Keras' automatic names:

``conv1d`` (32, k=5) → ``max_pooling1d`` (2) → ``conv1d_1`` (64, k=3) → ``max_pooling1d_1`` (2)
→ ``conv1d_2`` (64, k=3) → ``Flatten`` → ``dense`` (64, ReLU) → dropout 0.2 → ``dense_1``
(10, softmax). All convolutions ``same`` with ReLU. 60,426 parameters.

Inputs are the ``mnist1d`` package's standardised signals (zero mean, unit variance), shaped
(B, 40, 1).

Reference: Greydanus (2020), Scaling down deep learning (MNIST-1D), arXiv:2011.14439.
"""

from __future__ import annotations

import flax.linen as nn

from jxai import layers

from ._registry import KerasNames, conv, dense, flatten, output_activation_metadata, register

__all__ = ["MNIST1DCNN"]


class MNIST1DCNN(nn.Module):
    """Three Conv1D layers, two poolings, a dense hidden layer and a 10-way softmax."""

    filters: tuple[int, int, int] = (32, 64, 64)
    hidden: int = 64
    classes: int = 10
    dropout: float = 0.2

    @nn.compact
    def __call__(self, x, train: bool = False):
        names = KerasNames()
        x = conv(x, self.filters[0], (5,), name=names("conv1d"))
        x = layers.MaxPool((2,), name=names("max_pooling1d"))(x)
        x = conv(x, self.filters[1], (3,), name=names("conv1d"))
        x = layers.MaxPool((2,), name=names("max_pooling1d"))(x)
        x = conv(x, self.filters[2], (3,), name=names("conv1d"))
        x = flatten(x)
        x = dense(x, self.hidden, name=names("dense"))
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return dense(x, self.classes, name=names("dense"), activation="softmax")


@register("mnist1d_cnn", "MNIST-1D 1D CNN (40×1 signals, 10 classes)")
def _make(input_shape=(40, 1), filters=(32, 64, 64), hidden=64, classes=10, dropout=0.2):
    if input_shape[0] % 4:
        raise ValueError(f"mnist1d_cnn input length must be a multiple of 4, got {input_shape}")
    module = MNIST1DCNN(tuple(filters), int(hidden), int(classes), float(dropout))
    metadata = {
        **output_activation_metadata("softmax", "dense_1"),
        "preprocessing": {"name": "identity"},
        "task": "classification",
        "classes": list(range(classes)),
    }
    return module, tuple(input_shape), metadata
