"""The injection-moulding tabular MLP of the seed (37 inputs → five Dense(10, ReLU) → Dense(1)).

The seed predicts a moulded part's weight (regression, linear output, MSE) from 5 process and 32
mould-shape features, min–max scaled with the training set's column ranges. 831 parameters:
380 + 4·110 + 11. Keras' automatic names ``dense`` ... ``dense_5``.

``n_features`` and ``output_activation`` let the same network learn offline tables
(scikit-learn's breast-cancer table: 30 features, sigmoid output).
"""

from __future__ import annotations

import flax.linen as nn

from ._registry import KerasNames, dense, output_activation_metadata, register

__all__ = ["TabularMLP"]


class TabularMLP(nn.Module):
    """``depth`` Dense(``units``, ReLU) layers and one Dense(``outputs``) layer."""

    units: int = 10
    depth: int = 5
    outputs: int = 1
    output_activation: str = "linear"

    @nn.compact
    def __call__(self, x, train: bool = False):
        names = KerasNames()
        for _ in range(self.depth):
            x = dense(x, self.units, name=names("dense"))
        return dense(x, self.outputs, name=names("dense"), activation=self.output_activation)


@register("tabular_mlp", "injection-moulding tabular MLP (37 features, regression)",
          seed_params=831)
def _make(n_features=37, units=10, depth=5, outputs=1, output_activation="linear",
          preprocessing=None, input_shape=None):
    if input_shape is not None:
        n_features = int(input_shape[-1])
    module = TabularMLP(int(units), int(depth), int(outputs), output_activation)
    metadata = {
        **output_activation_metadata(output_activation, f"dense_{depth}"),
        "preprocessing": preprocessing or {"name": "identity"},
        "task": "regression" if output_activation in (None, "linear") else "classification",
    }
    return module, (int(n_features),), metadata
