"""Per-layer relevance conservation report for LRP methods.

LRP redistributes the output relevance layer by layer; the z-rule on a bias-free ReLU network
conserves it exactly (Σ_i R_i is the same at every layer), ε absorbs some relevance, biases
absorb or inject relevance, and numerical blow-ups (Zennit issue #148: ResNet relevance reaching
1e11) show up as totals far from the output score. `conservation` gives the totals of every
layer next to the initial relevance, so one sees where relevance is lost or created.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from jxai._driver import explain
from jxai.metrics import _common as C

__all__ = ["ConservationReport", "conservation"]


@dataclass(frozen=True)
class ConservationReport:
    """Relevance totals per sample at the initial output, at every layer output and at the input.

    Attributes:
      output: (B,) initial relevance: the target logit (``seed="logit"``) or 1 (``"one"``).
      layers: module paths in call order (input side first).
      totals: (L, B) Σ of the relevance at each layer's output.
      input: (B,) Σ of the attribution (the relevance at the input).
    """

    output: np.ndarray
    layers: tuple[str, ...]
    totals: np.ndarray
    input: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """(L + 1, B) totals / output for every layer and then the input (1 = conserved)."""
        stacked = np.concatenate([self.totals, self.input[None]], axis=0)
        safe = np.where(self.output == 0, np.nan, self.output)
        return stacked / safe

    def table(self) -> str:
        """A plain-text table: layer, mean Σ R, and the mean / min / max of Σ R / R_output."""
        names = [*self.layers, "(input)"]
        sums = np.concatenate([self.totals, self.input[None]], axis=0)
        ratio = self.ratio
        width = max(len("layer"), *(len(n) for n in names))
        lines = [
            f"{'layer':<{width}}  {'mean ΣR':>12}  {'ratio mean':>10}  {'min':>8}  {'max':>8}",
            f"{'(output)':<{width}}  {np.mean(self.output):>12.5g}  {1.0:>10.4f}",
        ]
        for name, s, r in zip(names, sums, ratio, strict=True):
            lines.append(
                f"{name:<{width}}  {np.mean(s):>12.5g}  {np.nanmean(r):>10.4f}  "
                f"{np.nanmin(r):>8.4f}  {np.nanmax(r):>8.4f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def conservation(
    network,
    x,
    method: str = "lrp.z",
    target="max",
    *,
    seed: str = "logit",
    **explain_params: Any,
) -> ConservationReport:
    """Relevance totals at every layer of an LRP explanation (``jxai.explain(...,
    return_layers=True)``).

        output_b = R_out (the target logit of sample b, or 1),
        totals[l, b] = Σ_i R_i^(l) at the output of layer l,   input_b = Σ_i R_i(x_b).

    Exact conservation means totals[l, b] = output_b for every layer.

    Args:
      network: a `jxai.Network` (explained at its outputs: strip a softmax first with
        ``network.without_output_activation()``).
      x: (B, ...) inputs.
      method: an LRP method name (``"lrp.z"``, ``"lrp.epsilon"``, presets...).
      target: ``"max"``, an int or a (B,) int array.
      seed: the initial relevance convention passed to `jxai.explain`.
      **explain_params: method parameters (``epsilon=...``).

    Returns:
      A `ConservationReport`; ``print(report)`` shows the table.
    """
    network, parts = C.network_parts(network)
    x = jnp.asarray(x)
    target = C.resolve_target(network, x, target)
    attribution, per_layer = explain(
        network, x, method, target=target, seed=seed, return_layers=True, **explain_params
    )
    batch = x.shape[0]
    if seed == "logit":
        module, skip = parts.value
        output = C.score(module, skip, network.variables, x, target, None)
    elif seed == "one":
        output = jnp.ones((batch,), x.dtype)
    else:
        raise ValueError(f"seed must be 'logit' or 'one', got {seed!r}")
    order = {p: i for i, p in enumerate(C.call_order(network, x))}
    layers = tuple(sorted(per_layer, key=lambda p: (order.get(p, len(order)), p)))
    totals = [jnp.sum(jnp.reshape(per_layer[p], (batch, -1)), axis=1) for p in layers]
    return ConservationReport(
        output=np.asarray(output, dtype=np.float64),
        layers=layers,
        totals=np.asarray(jnp.stack(totals), dtype=np.float64).reshape(len(layers), batch),
        input=np.asarray(jnp.sum(jnp.reshape(attribution, (batch, -1)), axis=1), np.float64),
    )
