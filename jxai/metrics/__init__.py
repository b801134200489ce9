"""Numbers that say whether an explanation is faithful, jit-compiled.

    di = jxai.metrics.drop_increase(network, x, relevance, frac=0.15)
    print(di.drop.mean(), di.increase.mean())          # the histopathology seed's table
    pf = jxai.metrics.pixel_flipping(network, x, "lrp.epsilon", order="morf", steps=20)

Perturbation metrics (`perturbation`): drop/increase rate, pixel flipping and region
perturbation with AOPC, insertion and deletion AUC, faithfulness correlation. The sanity check
(`randomisation`): cascading model-parameter randomisation. LRP bookkeeping (`conservation`):
per-layer relevance totals. Properties of the map alone (`complexity`): sparseness (Gini) and
complexity (entropy). Transformers (`tokens`): MoRF/LeRF token- and patch-removal curves and
the area between them (ABPC), the AttnLRP paper's faithfulness protocol.

Every metric taking a network accepts an attribution array or a method name (then computed with
`jxai.explain` for the same targets, at the logits: a final softmax/sigmoid is stripped for the
explanation, not for the scores); ``target`` is ``"max"`` (the predicted class), an int or a
(B,) int array.
"""

from jxai.metrics._common import average_ranks, pearson, spearman
from jxai.metrics.complexity import complexity, sparseness
from jxai.metrics.conservation import ConservationReport, conservation
from jxai.metrics.perturbation import (
    Curve,
    DropIncrease,
    PixelFlipping,
    deletion,
    drop_increase,
    faithfulness_correlation,
    insertion,
    pixel_flipping,
    region_perturbation,
)
from jxai.metrics.randomisation import (
    Randomisation,
    model_parameter_randomisation,
    parameter_layers,
)
from jxai.metrics.tokens import ABPC, patch_perturbation, token_perturbation

__all__ = [
    "ABPC",
    "ConservationReport",
    "Curve",
    "DropIncrease",
    "PixelFlipping",
    "Randomisation",
    "average_ranks",
    "complexity",
    "conservation",
    "deletion",
    "drop_increase",
    "faithfulness_correlation",
    "insertion",
    "model_parameter_randomisation",
    "parameter_layers",
    "patch_perturbation",
    "pearson",
    "pixel_flipping",
    "region_perturbation",
    "sparseness",
    "spearman",
    "token_perturbation",
]
