"""Single-backward-pass methods: gradient, input × gradient, guided backprop, deconvnet.

Each is one forward pass and one vector–Jacobian product with respect to the input, seeded by the
target's cotangent (the one-hot of the explained logit by default). Guided backprop and deconvnet
change only how the backward pass crosses ReLUs; the engine does that with the
``"guided_backprop"`` and ``"deconvnet"`` composites, so they cost exactly one gradient.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jxai.contract import token_relevance
from jxai.methods._common import check_choice
from jxai.methods._registry import as_composite, register_method

__all__ = [
    "deconvnet",
    "gradient",
    "guided_backprop",
    "input_t_gradient",
    "postprocess_heatmap",
]

POSTPROCESS = (None, "abs", "square")
CHANNEL_REDUCTIONS = (None, "max", "sum", "mean", "abs_max", "norm")
NORMALIZATIONS = (None, "minmax")


@register_method("gradient", family="gradient")
def gradient(ctx, x, target, *, postprocess: str | None = None, composite=None):
    """The gradient of the target score with respect to the input (saliency).

    .. math:: R_i = \\partial S_t(x) / \\partial x_i, \\quad \\text{then } |R_i| \\text{ or } R_i^2

    Args:
      postprocess: ``None`` (the signed gradient, iNNvestigate's default), ``"abs"`` (Captum's
        ``Saliency`` default, Simonyan et al.) or ``"square"``.
      composite: optional rules for a modified gradient: a preset name (``"guided_backprop"``,
        ``"lrp.epsilon"``), a `jxai.Composite` or its rule list. ``None``: the plain gradient.

    On integer token ids (a model reading them with `nn.Embed`) the gradient is taken at the
    embedding ``e`` and reduced per token to its L2 norm :math:`\\|\\partial S_t/\\partial e\\|_2`
    (``"square"``: the squared norm), shaped like the ids.

    Reference: Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks", ICLR-W 2014.
    """
    check_choice("gradient", "postprocess", postprocess, POSTPROCESS)
    result = ctx.backward(x, target, composite=as_composite(composite))
    grad = result.grad
    if result.embedding is not None:  # token ids: one number per token
        squared = (grad * grad).sum(-1)
        return squared if postprocess == "square" else jnp.sqrt(squared)
    if postprocess == "abs":
        return jnp.abs(grad)
    if postprocess == "square":
        return grad * grad
    return grad


@register_method("input_t_gradient", family="gradient")
def input_t_gradient(ctx, x, target, *, composite=None):
    """Input times gradient: :math:`R_i = x_i \\, \\partial S_t / \\partial x_i`.

    iNNvestigate's ``input_t_gradient``, Captum's ``InputXGradient``. On a bias-free ReLU network
    it equals LRP-0 and Integrated Gradients with a zero baseline.

    On integer token ids the input is the embedding ``e`` of each token (`nn.Embed`'s output):
    :math:`R_t = \\sum_d e_{t,d} \\, \\partial S / \\partial e_{t,d}`, shaped like the ids.

    Reference: Shrikumar et al., "Not Just a Black Box", arXiv:1605.01713 (2016).
    """
    result = ctx.backward(x, target, composite=as_composite(composite))
    if result.embedding is not None:
        return token_relevance(result)
    return x * result.grad


def postprocess_heatmap(attribution, reduce_channels: str | None, normalize: str | None,
                        eps: float = 1e-8):
    """Optional channel reduction and per-sample min–max scaling (the AUCMEDI heatmap).

    ``reduce_channels`` reduces the last (channel) axis: ``"max"`` (AUCMEDI), ``"sum"``,
    ``"mean"``, ``"abs_max"`` (max of absolute values) or ``"norm"`` (Euclidean norm).
    ``normalize="minmax"`` maps each sample to [0, 1] as ``(h - min) / (max - min + eps)``.
    """
    check_choice("heatmap", "reduce_channels", reduce_channels, CHANNEL_REDUCTIONS)
    check_choice("heatmap", "normalize", normalize, NORMALIZATIONS)
    out = attribution
    if reduce_channels == "max":
        out = jnp.max(out, axis=-1)
    elif reduce_channels == "sum":
        out = jnp.sum(out, axis=-1)
    elif reduce_channels == "mean":
        out = jnp.mean(out, axis=-1)
    elif reduce_channels == "abs_max":
        out = jnp.max(jnp.abs(out), axis=-1)
    elif reduce_channels == "norm":
        out = jnp.sqrt(jnp.sum(out * out, axis=-1))
    if normalize == "minmax":
        axes = tuple(range(1, out.ndim))
        low = jnp.min(out, axis=axes, keepdims=True)
        high = jnp.max(out, axis=axes, keepdims=True)
        out = (out - low) / (high - low + eps)
    return out


CONVENTIONS = ("paper", "innvestigate")


def _modified_gradient(name, composite, ctx, x, target, reduce_channels, normalize, aucmedi,
                       convention):
    check_choice(name, "convention", convention, CONVENTIONS)
    if aucmedi:
        if reduce_channels is not None or normalize is not None:
            raise ValueError(
                f"{name}: aucmedi=True already means reduce_channels='max', normalize='minmax'; "
                "leave those two unset or drop aucmedi"
            )
        reduce_channels, normalize = "max", "minmax"
    if convention == "innvestigate":
        target = seeded_with_output(target)
    grad = ctx.backward(x, target, composite=as_composite(composite)).grad
    return postprocess_heatmap(grad, reduce_channels, normalize)


def seeded_with_output(target):
    """The target whose backward pass starts from the selected output values, not from 1.

    iNNvestigate's reverse analyzers other than ``gradient`` start from the model output masked
    to the selected neuron; through guided ReLUs that is not a rescaling when the logit is
    negative, so it has to be the seed itself.
    """
    selected = target

    def output_seed(y):
        return selected.mask(y) * y

    return dataclasses.replace(target, kind="callable", fn=output_seed, seed="logit")


@register_method("guided_backprop", family="gradient")
def guided_backprop(ctx, x, target, *, reduce_channels: str | None = None,
                    normalize: str | None = None, aucmedi: bool = False,
                    convention: str = "paper"):
    """Guided backpropagation: the gradient with every ReLU passing only positive signal back.

    At a ReLU with input :math:`z` and incoming gradient :math:`g`, the backward pass returns
    :math:`g \\cdot [z > 0] \\cdot [g > 0]` (the gradient keeps only :math:`[z > 0]`, deconvnet
    only :math:`[g > 0]`). ReLUs are the ``jxai.layers.Activation("relu")`` modules (and the
    functional ReLUs the engine's ``"guided_backprop"`` composite covers).

    Args:
      reduce_channels, normalize: see `postprocess_heatmap`; both ``None`` by default, giving an
        array shaped like ``x`` (iNNvestigate, Captum).
      aucmedi: the AUCMEDI heatmap: maximum over channels, then per-sample min–max to [0, 1]
        (``(h - min) / (max - min + 1e-8)``), shape ``x.shape[:-1]``.
      convention: ``"paper"`` (default; the backward pass starts from 1 at the target, as in
        Captum and Zennit) or ``"innvestigate"``: iNNvestigate 2.1.2 starts its guided-backprop
        and deconvnet passes from the target *logit* (its default head mapping); for a positive
        logit that is the paper's result times the logit, for a negative one the guided ReLUs
        then pass the opposite signal.

    Reference: Springenberg et al., "Striving for Simplicity: The All Convolutional Net",
    ICLR-W 2015.
    """
    return _modified_gradient("guided_backprop", "guided_backprop", ctx, x, target,
                              reduce_channels, normalize, aucmedi, convention)


@register_method("deconvnet", family="gradient")
def deconvnet(ctx, x, target, *, reduce_channels: str | None = None,
              normalize: str | None = None, aucmedi: bool = False, convention: str = "paper"):
    """DeconvNet: the backward pass crosses each ReLU as a ReLU of the incoming signal.

    At a ReLU the backward pass returns :math:`\\max(g, 0)`, ignoring the forward input's sign.
    Options as in `guided_backprop` (``aucmedi=True``: channel max, min–max to [0, 1];
    ``convention="innvestigate"``: the backward pass starts from the target logit).

    Reference: Zeiler, Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
    """
    return _modified_gradient("deconvnet", "deconvnet", ctx, x, target,
                              reduce_channels, normalize, aucmedi, convention)
