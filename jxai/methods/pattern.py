"""PatternNet and PatternAttribution (Kindermans et al., ICLR 2018), with fitted patterns.

Both are the gradient's backward pass with every Dense/Conv/ConvTranspose kernel ``w`` replaced
(rule `jxai.rules.PatternKernel`), seeded like every jxai method (the target logit; ``seed="one"``
for 1), everything else as in the gradient: the forward ReLUs' masks gate the signal, max pooling
routes it to the forward maxima, reshapes, sums, average poolings and BatchNorms (not folded:
the patterns are fitted on the layers as they are) pass it by their own Jacobian.

* ``pattern.net``: the kernels replaced by the patterns ``a``: the back-projected *signal*
  ``s = A₁ᵀ … Aₗᵀ y`` at the input (the paper's PatternNet).
* ``pattern.attribution``: the kernels replaced by ``w ⊙ a``: the contribution of the signal,
  ``r = (w⊙a)₁ᵀ … (w⊙a)ₗᵀ y`` (the paper's PatternAttribution). Like iNNvestigate 1.x's
  ``PatternAttribution`` (``_prepare_pattern`` returns ``pattern * weight``; nothing multiplies
  the result by the input), jxai does not multiply by the input: for a linear model
  ``y = wᵀx`` the attribution is ``w ⊙ a · y``, the root point's difference ``w ⊙ (x − x₀)``
  of the paper, already input-shaped.

The patterns come from `jxai.patterns.fit` and are passed as a traced array parameter
(``patterns=``, a dict of arrays: never hashed, never compiled in; VGG16's are 100+ MB). A
network layer without a pattern, a pattern for a layer the network does not have, or one of the
wrong shape is a ValueError naming the layer.

Family ``"gradient"``, not ``"lrp"``: the result is a modified *gradient* (a signal at the
input, relevance is not conserved and no LRP rule or composite applies), computed by one forward
pass and one VJP with the gradient's own masks, like guided backprop and deconvnet.

Difference from iNNvestigate 1.x: its analyzers rescale the backward signal at every bottleneck
tensor of rank > 2 to ``[-1, 1]`` (``reverse_project_bottleneck_layers=True``, a guard against
overflow in float32). That is a positive factor per sample, so its maps equal jxai's up to a
positive scale per sample; jxai returns the unscaled result.
"""

from __future__ import annotations

import dataclasses

from jxai import patterns as jpatterns
from jxai._targets import Target
from jxai.composites import Composite
from jxai.methods._registry import register_method
from jxai.rules import PatternKernel

__all__ = ["pattern_attribution", "pattern_composite", "pattern_net"]


@dataclasses.dataclass(frozen=True)
class _AtPath:
    """A composite selector for the layer call at ``path`` exactly (``#k`` suffix included)."""

    path: str

    def __call__(self, layer) -> bool:
        return layer.path == self.path


def pattern_composite(kernels: dict, name: str) -> Composite:
    """`PatternKernel` with ``kernels[path]`` at each layer; nothing else changes the gradient."""
    return Composite(
        [(_AtPath(path), PatternKernel(kernel)) for path, kernel in kernels.items()],
        fold_batchnorm=False,
        activation_rule=None,
        mode="gradient",
        name=name,
    )


def _kernels(ctx, patterns, method: str, times_weights: bool) -> dict:
    matched = jpatterns.check(patterns, ctx.network, ctx.facts, method)
    if not times_weights:
        return matched
    weights = jpatterns.kernel_arrays(ctx.network, matched)
    return {path: weights[path] * pattern for path, pattern in matched.items()}


def _seeded(target: Target) -> Target:
    """The target whose backward seed is its initial relevance: the selected output value
    (``seed="logit"``) or 1 (``seed="one"``), as iNNvestigate starts its reverse pass; the
    gradient convention's ``cotangent`` would start from 1 (``y ⊙ c`` being the relevance)."""
    return Target(target.data, "callable", "logit", target.relevance)


@register_method("pattern.net", family="gradient")
def pattern_net(ctx, x, target, *, patterns=None):
    """PatternNet: the signal back-projected with the patterns in place of the weights.

    Args:
      patterns: ``{layer path: pattern}`` from `jxai.patterns.fit` (required; traced).

    Returns:
      The signal at the input, shaped like ``x``.
    """
    composite = pattern_composite(_kernels(ctx, patterns, "pattern.net", False), "pattern.net")
    return ctx.backward(x, _seeded(target), composite).grad


@register_method("pattern.attribution", family="gradient")
def pattern_attribution(ctx, x, target, *, patterns=None):
    """PatternAttribution: the backward pass with ``w ⊙ a`` in place of the weights ``w``.

    Args:
      patterns: ``{layer path: pattern}`` from `jxai.patterns.fit` (required; traced).

    Returns:
      The attribution at the input, shaped like ``x`` (not multiplied by ``x``: iNNvestigate
      1.x's, module docstring).
    """
    kernels = _kernels(ctx, patterns, "pattern.attribution", True)
    composite = pattern_composite(kernels, "pattern.attribution")
    return ctx.backward(x, _seeded(target), composite).grad
