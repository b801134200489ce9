"""DeepLIFT (rescale rule) and DeepSHAP: attributions that sum to ``f(x) − f(x₀)``.

DeepLIFT (Shrikumar, Greenside, Kundaje, ICML 2017) explains the difference of the target score
between the input ``x`` and a reference ``x₀``. In jxai's gradient × input convention it is

    attribution = (x − x₀) ⊙ m,

where ``m`` is a backward pass in which every nonlinearity's derivative is replaced by its
*multiplier*: for an elementwise activation ``f`` the rescale rule ``(f(a) − f(a₀)) / (a − a₀)``
(the true derivative ``f'(a)`` where ``|a − a₀| < 1e-6``), for a max pooling shap's rule
(`jxai.rules.DeepLiftMaxPool`); linear layers (dense, convolutions, BatchNorm in inference mode,
average pooling, sums) keep their gradient. Multipliers obey the chain rule, and at every layer
``Σ Δin ⊙ m_in = Σ Δout ⊙ m_out``, so the attributions sum to ``S_t(x) − S_t(x₀)`` exactly
(summation-to-delta) on any network made of these layers.

How: the network is evaluated once on the doubled batch ``[x; x₀]`` (``2B`` rows) with the
rules `jxai.rules.DeepLiftRescale` on every activation and `jxai.rules.DeepLiftMaxPool` on every
max pooling; inside their custom VJPs the rules see the whole doubled tensors and pair row ``i``
with row ``i + B`` (Captum's and shap's construction). The driver's per-sample loop runs outside
the method, so the pairing is intact whatever the scheduler does.

DeepSHAP (``deep_shap``; Lundberg & Lee 2017, shap's ``DeepExplainer``, Captum's
``DeepLiftShap``) averages DeepLIFT over a background set ``{x₀⁽ʲ⁾}``: its attributions sum to
``S_t(x) − mean_j S_t(x₀⁽ʲ⁾)``. The background is walked through in chunks
(`jxai.Context.sum_chunks`), so memory is that of ``batch_size`` doubled passes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jxai import kinds
from jxai._targets import Target
from jxai.composites import Composite
from jxai.methods._common import reference_samples
from jxai.methods._registry import register_method
from jxai.methods.path import make_baseline
from jxai.rules import DeepLiftMaxPool, DeepLiftRescale

__all__ = ["DEEPLIFT", "deep_shap", "deeplift"]

DEEPLIFT = Composite(
    [
        (kinds.selector("activation"), DeepLiftRescale()),
        (kinds.selector("max_pool", "global_max_pool"), DeepLiftMaxPool()),
    ],
    fold_batchnorm=False,  # an inference-mode BatchNorm is affine: its own gradient is exact
    activation_rule=None,
    mode="gradient",
    name="deeplift",
)
"""The rules of DeepLIFT-rescale, for a network evaluated on the doubled batch ``[x; x₀]``."""

# Primitives of jax.numpy that are nonlinear: left unplaced (called outside any layer or placed
# function) they would keep their gradient and break summation-to-delta silently.
_NONLINEAR_PRIMITIVES = frozenset({
    "max", "min", "tanh", "logistic", "exp", "exp2", "log", "log1p", "expm1", "erf", "erfc",
    "pow", "integer_pow", "sqrt", "rsqrt", "cbrt", "abs", "sign", "sin", "cos", "reduce_max",
    "reduce_min", "argmax", "select_n", "clamp", "round", "floor", "ceil",
})
_NOT_ELEMENTWISE = ("softmax", "log_softmax")


def _check_network(ctx, method: str):
    """Refuse what the rescale rule cannot handle: a softmax inside the network, an unplaced
    nonlinear operation (both would keep their gradient and break summation-to-delta)."""
    for layer in ctx.layers:
        if layer.kind == "activation" and layer.activation in _NOT_ELEMENTWISE:
            raise ValueError(
                f"{method}: layer {layer.path!r} is a {layer.activation} inside the network; the "
                "rescale rule needs elementwise activations (a final softmax/sigmoid is stripped "
                "by jxai.explain: strip_output_activation=True)"
            )
    for operation, path, relu_like in ctx.facts.unplaced:
        primitive = operation.split(" ")[0].split("(")[0]
        if relu_like or primitive in _NONLINEAR_PRIMITIVES:
            raise ValueError(
                f"{method}: the nonlinear operation {operation} in module "
                f"{path or '(the root module)'!r} is not a layer jxai can give the rescale rule; "
                "write it as a jax.nn / flax.linen activation or a jxai.layers module "
                "(Activation, MaxPool) called inside the module, or use a gradient method"
            )


def _output_mask(ctx, x, target: Target, method: str):
    """The target's output weights on ``x`` (``"max"``: the class predicted for ``x``)."""
    if target.seed != "logit":
        raise ValueError(
            f"{method}: seed={target.seed!r} does not apply: DeepLIFT distributes the difference "
            "of the target score S_t(x) − S_t(x₀); leave seed='logit'"
        )
    y, _ = ctx.forward(x)  # unused (and dropped by XLA) unless the target reads the output
    return target.mask(y)


def multipliers(ctx, x, start, mask):
    """DeepLIFT's multipliers ``m`` at the input and the target scores ``S_t(x)``, ``S_t(x₀)``.

    One forward pass and one VJP of the network on ``[x; start]`` under `DEEPLIFT`, both halves
    seeded with ``mask`` (the rules keep the halves' cotangents equal).
    """
    batch = x.shape[0]
    doubled = jnp.concatenate([x, start], axis=0)
    seed = Target(jnp.concatenate([mask, mask], axis=0), kind="cotangent")
    back = ctx.backward(doubled, seed, composite=DEEPLIFT)
    scores = seed.score(back.output)
    return back.grad[:batch], scores[:batch], scores[batch:]


def _check_delta(method: str, return_delta: bool, multiply_by_inputs: bool):
    if return_delta and not multiply_by_inputs:
        raise ValueError(f"{method}: return_delta=True needs multiply_by_inputs=True (the gap "
                         "is that of the attributions' sum; the multipliers have none)")


def _total(attribution):
    return jnp.sum(attribution.reshape(attribution.shape[0], -1), axis=1)


@register_method("deeplift", family="gradient")
def deeplift(ctx, x, target, *, baseline: float | jax.Array | Callable = 0.0,
             multiply_by_inputs: bool = True, return_delta: bool = False):
    """DeepLIFT-rescale, ``(x − x₀) ⊙ m`` with ``m`` the rescale multipliers (module docstring).

    Args:
      baseline: the reference ``x₀``: a scalar, an array broadcasting to ``x`` (one sample or
        the batch), or a callable ``f(x) -> array`` (hashable: part of the compiled function's
        key).
      multiply_by_inputs: ``True`` (default): the attributions ``(x − x₀) ⊙ m``; ``False``: the
        multipliers ``m`` (Captum's ``multiply_by_inputs=False``).
      return_delta: also return the summation-to-delta gap per sample,
        ``Σ_i R_i − (S_t(x) − S_t(x₀))`` (Captum's convergence delta; ~0 up to rounding).

    Returns:
      Shaped like ``x``; with ``return_delta`` a pair ``(attribution, delta)``, ``delta`` (B,).

    Parity: Captum 0.9's ``DeepLift`` and shap 0.51's ``DeepExplainer`` (one background row) on
    networks of elementwise activations, linear layers and poolings; at max pooling shap's rule
    (Captum's does not fire after a ReLU module, its issue #1104).
    """
    _check_network(ctx, "deeplift")
    start = make_baseline("deeplift", baseline, x)
    mask = _output_mask(ctx, x, target, "deeplift")
    m, end_score, start_score = multipliers(ctx, x, start, mask)
    _check_delta("deeplift", return_delta, multiply_by_inputs)
    if not multiply_by_inputs:
        return m
    attribution = (x - start) * m
    if not return_delta:
        return attribution
    return attribution, _total(attribution) - (end_score - start_score)


def check_background(method: str, background, x):
    """``background`` as an ``(M, *x.shape[1:])`` array of ``x``'s dtype, M ≥ 1."""
    return reference_samples(method, "background", background, x,
                             "shap's DeepExplainer takes a few hundred training rows")


@register_method("deep_shap", family="gradient")
def deep_shap(ctx, x, target, *, background=None, multiply_by_inputs: bool = True,
              batch_size: int | str | None = "auto", return_delta: bool = False):
    """DeepSHAP: DeepLIFT averaged over a background set, ``mean_j (x − x₀⁽ʲ⁾) ⊙ m⁽ʲ⁾``.

    shap's ``DeepExplainer(model, background).shap_values(x)`` for the target output, and
    Captum's ``DeepLiftShap``. The attributions sum to ``S_t(x) − mean_j S_t(x₀⁽ʲ⁾)`` (the
    additivity shap checks).

    Args:
      background: reference samples, shape ``(M, *x.shape[1:])`` (required; one sample shaped
        ``x.shape[1:]`` is DeepLIFT against it).
      multiply_by_inputs: ``False`` returns the mean multipliers ``mean_j m⁽ʲ⁾`` (Captum's).
      batch_size: background rows per chunk (each a doubled pass over the batch); ``"auto"``:
        1 on CPU, 16 on accelerators; ``None``: all at once.
      return_delta: also return ``Σ_i R_i − (S_t(x) − mean_j S_t(x₀⁽ʲ⁾))`` per sample.
    """
    _check_network(ctx, "deep_shap")
    _check_delta("deep_shap", return_delta, multiply_by_inputs)
    background = check_background("deep_shap", background, x)
    count = background.shape[0]
    mask = _output_mask(ctx, x, target, "deep_shap")

    def one(reference):
        start = jnp.broadcast_to(reference, x.shape)
        m, _, start_score = multipliers(ctx, x, start, mask)
        return (x - start) * m if multiply_by_inputs else m, start_score

    total, start_scores = ctx.sum_chunks(one, background, batch_size, name="deep_shap")
    attribution = total / count
    if not return_delta:
        return attribution
    end_score = target_score(ctx, x, mask)
    return attribution, _total(attribution) - (end_score - start_scores / count)


def target_score(ctx, x, mask):
    """``S_t(x) = Σ mask ⊙ f(x)`` per sample."""
    y, _ = ctx.forward(x)
    return _total(mask * y)
