"""Noise wrappers: SmoothGrad, SmoothGrad² and VarGrad around any registered method.

Each draws ``n`` noisy copies :math:`x + \\epsilon_j`, explains every copy with the wrapped method
(the gradient by default; ``lrp.epsilon``, ``integrated_gradients``, … work the same way) and
reduces the ``n`` explanations:

.. math::
    \\text{smoothgrad} = \\frac1n \\sum_j R(x + \\epsilon_j), \\quad
    \\text{smoothgrad\\_sq} = \\frac1n \\sum_j R(x + \\epsilon_j)^2, \\quad
    \\text{vargrad} = \\text{smoothgrad\\_sq} - \\text{smoothgrad}^2

(Captum's ``NoiseTunnel`` definitions; VarGrad is the population variance.) The copies are
vmapped ``batch_size`` at a time and summed chunk by chunk, so memory is that of ``batch_size``
explanations. The noise comes from the engine's key; pass ``noise=`` to use given noise.

On integer token ids (a model reading them with ``nn.Embed``) the noise is added to the
embedding ``e`` (the Embed output, `jxai.Context.with_embedding`) and the wrapped method
explains each noisy embedding per token (the gradient: its L2 norm per token; input ×
gradient: :math:`\\sum_d (e + \\epsilon)_d \\partial S/\\partial e_d`); ``sigma_mode="relative"``
scales by the spread of each sample's embedding.

References: Smilkov et al., "SmoothGrad: removing noise by adding noise", arXiv:1706.03825
(2017); Adebayo et al., "Local explanation methods for deep neural networks lack sensitivity to
parameter values", ICLR-W 2018 (VarGrad); Hooker et al., NeurIPS 2019 (SmoothGrad²).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jxai.methods._common import check_choice, check_positive_int, pin_target
from jxai.methods._registry import register_method

__all__ = ["noise_scale", "smoothgrad", "smoothgrad_sq", "vargrad"]

SIGMA_MODES = ("relative", "absolute")


def noise_scale(x: jax.Array, sigma: float, sigma_mode: str) -> jax.Array:
    """Noise standard deviation per sample, broadcastable to ``x``.

    ``"absolute"``: ``sigma`` itself (Captum ``stdevs``, iNNvestigate). ``"relative"``:
    ``sigma * (max(x_b) - min(x_b))`` for each sample ``b`` (Smilkov et al.; Zennit's
    ``noise_level``, tf-keras-vis' ``smooth_noise``).
    """
    check_choice("smoothgrad", "sigma_mode", sigma_mode, SIGMA_MODES)
    if sigma_mode == "absolute":
        return jnp.asarray(sigma, dtype=x.dtype)
    axes = tuple(range(1, x.ndim))
    spread = jnp.max(x, axis=axes, keepdims=True) - jnp.min(x, axis=axes, keepdims=True)
    return sigma * spread


def _moments(ctx, x, target, *, name, wrapped, n, sigma, sigma_mode, noise, batch_size,
             inner, need_square, need_mean):
    target = pin_target(ctx, x, target)
    base = ctx.embedding_of(x) if ctx.tokens else x  # token ids: noise on their embedding
    if noise is not None:
        noise = jnp.asarray(noise, dtype=base.dtype)
        if noise.shape[1:] != base.shape:
            what = "embedding batch (B, T, D)" if ctx.tokens else "input batch"
            raise ValueError(
                f"{name}: noise has shape {noise.shape}; expected (n, *{base.shape}), one noise "
                f"array per sample, each shaped like the {what}"
            )
        count, items = noise.shape[0], noise

        def perturb(item):
            return base + item
    else:
        count = check_positive_int(name, "n", n)
        scale = noise_scale(base, sigma, sigma_mode)
        items = jax.random.split(jax.random.fold_in(ctx.key, 0), count)

        def perturb(item):
            return base + scale * jax.random.normal(item, base.shape, dtype=base.dtype)

    inner_keys = jax.random.split(jax.random.fold_in(ctx.key, 1), count)

    def attribute(key, noisy):
        if ctx.tokens:
            return ctx.with_key(key).with_embedding(noisy).attribute(wrapped, x, target, **inner)
        return ctx.with_key(key).attribute(wrapped, noisy, target, **inner)

    def explain(item_and_key):
        item, key = item_and_key
        relevance = attribute(key, perturb(item))
        out = {}
        if need_mean:
            out["mean"] = relevance
        if need_square:
            out["square"] = relevance * relevance
        return out

    sums = ctx.sum_chunks(explain, (items, inner_keys), batch_size, name=name)
    return {key: value / count for key, value in sums.items()}


def _document_args(function):
    function.__doc__ += _DOC_ARGS
    return function


_DOC_ARGS = """
    Args:
      wrapped: the method explaining each noisy copy (default ``"gradient"``); other keyword
        arguments are passed to it (``jxai.explain(net, x, "smoothgrad", wrapped="lrp.epsilon",
        epsilon=0.1)``).
      n: number of noisy copies (default 32).
      sigma: noise standard deviation (default 0.15), relative to each sample's value range
        (``sigma_mode="relative"``, default, as Smilkov et al. recommend 10–20 %) or absolute
        (``sigma_mode="absolute"``: Captum's ``NoiseTunnel(stdevs=...)``; iNNvestigate's
        ``smoothgrad`` is ``n=64, sigma=1, sigma_mode="absolute"``).
      noise: optional array ``(n, *x.shape)`` added as is (``n``, ``sigma`` are then unused);
        for reproducing another library's noise (token ids: ``(n, B, T, D)``, added to the
        embedding).
      batch_size: noisy copies explained together; ``None`` = all at once; ``"auto"``
        (default) = 1 on CPU, 16 on accelerators (`jxai._schedule.chunk_size`).
"""


@register_method("smoothgrad", family="gradient", stochastic=True)
@_document_args
def smoothgrad(ctx, x, target, *, wrapped: str = "gradient", n: int = 32, sigma: float = 0.15,
               sigma_mode: str = "relative", noise=None, batch_size: int | str | None = "auto", **inner):
    """SmoothGrad: the mean explanation over noisy copies of the input."""
    return _moments(ctx, x, target, name="smoothgrad", wrapped=wrapped, n=n, sigma=sigma,
                    sigma_mode=sigma_mode, noise=noise, batch_size=batch_size, inner=inner,
                    need_square=False, need_mean=True)["mean"]


@register_method("smoothgrad_sq", family="gradient", stochastic=True)
@_document_args
def smoothgrad_sq(ctx, x, target, *, wrapped: str = "gradient", n: int = 32, sigma: float = 0.15,
                  sigma_mode: str = "relative", noise=None, batch_size: int | str | None = "auto",
                  **inner):
    """SmoothGrad²: the mean of the squared explanations over noisy copies of the input."""
    return _moments(ctx, x, target, name="smoothgrad_sq", wrapped=wrapped, n=n, sigma=sigma,
                    sigma_mode=sigma_mode, noise=noise, batch_size=batch_size, inner=inner,
                    need_square=True, need_mean=False)["square"]


@register_method("vargrad", family="gradient", stochastic=True)
@_document_args
def vargrad(ctx, x, target, *, wrapped: str = "gradient", n: int = 32, sigma: float = 0.15,
            sigma_mode: str = "relative", noise=None, batch_size: int | str | None = "auto", **inner):
    """VarGrad: the variance of the explanations over noisy copies, ``E[R²] - E[R]²``."""
    moments = _moments(ctx, x, target, name="vargrad", wrapped=wrapped, n=n, sigma=sigma,
                       sigma_mode=sigma_mode, noise=noise, batch_size=batch_size, inner=inner,
                       need_square=True, need_mean=True)
    return moments["square"] - moments["mean"] * moments["mean"]

