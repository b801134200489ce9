"""Saliency from masked inputs: RISE, Score-CAM and SISE.

Each method scores the input multiplied by a set of soft masks with values in [0, 1] (random ones
for RISE, upsampled feature maps for Score-CAM and SISE) and adds the masks up weighted by the
scores. Masks are made and scored ``batch_size`` at a time under ``vmap`` and summed chunk by
chunk (`jxai.methods._common.chunked_sum`): memory is one chunk of forward passes whatever the
number of masks. Inputs are ``(B, *spatial, C)`` (images, 1D signals; channels last, a mask is
shared by the channels) or ``(B, F)`` tables (one spatial axis, no channels).

Output convention (as `jxai.methods.cam`): one map per sample without a channel axis,
``(B, *x_spatial)``. The score is the target score ``S_t`` of `jxai.explain` (its logit, as the
driver strips a final softmax; pass ``strip_output_activation=False`` for the probabilities the
papers use). ``target="max"`` is the class predicted for the unmasked input.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jxai import layers as jxai_layers
from jxai._checks import check_size
from jxai.methods._common import check_positive_int, chunked_sum, pin_target
from jxai.methods._registry import register_method
from jxai.methods.cam import _check_layer, default_layer
from jxai.methods.path import make_baseline

__all__ = ["otsu_threshold", "rise", "rise_masks", "score_cam", "sise", "sise_layers"]

# Input elements one chunk of masked copies may hold, for batch_size="auto" (see shapley.py).
AUTO_CHUNK_ELEMENTS = 2**18


def _spatial(x) -> tuple[int, ...]:
    """The axes a mask covers: all but batch and channels (a table: its one feature axis)."""
    return tuple(x.shape[1:]) if x.ndim == 2 else tuple(x.shape[1:-1])


def _apply(x, mask):
    """``x ⊙ M`` with one ``mask`` (``spatial``) shared by the batch and the channels."""
    return x * (mask if x.ndim == 2 else mask[..., None])[None].astype(x.dtype)


def _chunk(method, batch_size, x):
    size = check_size(method, "batch_size", batch_size)
    if size != "auto":
        return size
    return max(1, AUTO_CHUNK_ELEMENTS // int(np.prod(x.shape)))


# --------------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------------


def rise_masks(key, count: int, spatial: tuple[int, ...], cells: int = 8,
               probability: float = 0.5) -> jax.Array:
    """``count`` RISE masks ``(count, *spatial)`` from ``key`` (`rise` draws mask ``i`` from
    ``jax.random.split(key, count)[i]`` with `_rise_mask`).

    Each is a ``cells``-per-axis grid of Bernoulli(``probability``) bits, upsampled bilinearly
    (half-pixel centres) to ``(cells + 1) * c`` per axis with cell size ``c = ceil(n / cells)``,
    shifted by a uniform offset in ``[0, c)`` per axis and cropped to ``spatial``.
    """
    keys = jax.random.split(key, count)
    return jax.vmap(lambda k: _rise_mask(k, spatial, cells, probability))(keys)


def _rise_mask(key, spatial, cells, probability):
    bits_key, shift_key = jax.random.split(key)
    grid = jax.random.bernoulli(bits_key, probability, (cells,) * len(spatial))
    cell = [math.ceil(n / cells) for n in spatial]
    big = jax.image.resize(grid.astype(jnp.float32), [(cells + 1) * c for c in cell],
                           method="linear", antialias=False)
    shifts = jax.random.randint(shift_key, (len(spatial),), 0, jnp.asarray(cell))
    return jax.lax.dynamic_slice(big, tuple(shifts), spatial)


@register_method("rise", family="perturbation", stochastic=True)
def rise(ctx, x, target, *, n_masks: int = 2000, cells: int = 8, probability: float = 0.5,
         batch_size: int | str | None = "auto"):
    """RISE: the expected score under random masks that keep each region.

    .. math:: S(\\lambda) = \\frac{1}{N p} \\sum_{i=1}^{N} S_t(x \\odot M_i)\\, M_i(\\lambda)

    Args:
      n_masks: ``N`` masks (the paper: 4000 for ResNet-50, 8000 for VGG16).
      cells: ``s``, the grid of random bits per axis (the paper: 7 on 224² images).
      probability: ``p``, the chance a cell is kept.
      batch_size: masks scored together (vmapped); ``None``: all at once; ``"auto"``: about
        2^18 input elements per chunk.

    The masks (`rise_masks`) come from ``ctx.key`` (``explain(..., key=)``) and are shared by the
    samples of the batch. Returns ``(B, *x_spatial)``.

    Reference: Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018.
    """
    n_masks = check_positive_int("rise", "n_masks", n_masks)
    cells = check_positive_int("rise", "cells", cells)
    if not 0.0 < float(probability) <= 1.0:
        raise ValueError(f"rise: probability must be in (0, 1], got {probability!r}")
    spatial = _spatial(x)
    if cells > min(spatial):
        raise ValueError(f"rise: cells={cells} is more than the input's smallest spatial axis "
                         f"{spatial}; use at most {min(spatial)}")
    target = pin_target(ctx, x, target)

    def weighted(key):
        mask = _rise_mask(key, spatial, cells, probability)
        score = target.score(ctx.forward(_apply(x, mask))[0])
        return score.reshape(-1, *(1,) * len(spatial)) * mask[None].astype(x.dtype)

    keys = jax.random.split(ctx.key, n_masks)
    total = chunked_sum(weighted, keys, _chunk("rise", batch_size, x))
    return total / (n_masks * float(probability))


# --------------------------------------------------------------------------------------------
# Feature-map masks (Score-CAM, SISE)
# --------------------------------------------------------------------------------------------


def _resize(maps, spatial):
    """``(B, *s, ...)`` to ``(B, *spatial, ...)``: bilinear, half-pixel centres, no antialiasing."""
    shape = (maps.shape[0], *spatial, *maps.shape[1 + len(spatial):])
    return jax.image.resize(maps, shape, method="linear", antialias=False)


def _channel_masks(ctx, x, target, activations, batch_size, method):
    """Every channel's map as an input mask, scored: ``(B, K)`` arrays ``score``, ``low``,
    ``span``, ``area`` for the masks :math:`H_k = (A_k\\uparrow - low_k) / (span_k + 10^{-6})`.

    :math:`A_k\\uparrow` is the map upsampled to the input (bilinear), ``low``/``span`` its minimum
    and range, ``area`` the sum of :math:`H_k` (SISE's code normalises so; a constant map is a
    zero mask). ``score`` is :math:`S_t(x \\odot H_k)`. One channel's mask is made, used and
    dropped inside the chunk, so memory stays one chunk of masks; because resizing is linear, a
    weighted sum of masks is later one resize of the weighted maps (`_combine`).
    """
    spatial = _spatial(x)
    axes = tuple(range(1, len(spatial) + 1))

    def one(k):
        up = _resize(jnp.take(activations, k, axis=-1), spatial)  # (B, *spatial)
        low = up.min(axis=axes)
        span = up.max(axis=axes) - low
        shape = (-1, *(1,) * len(spatial))
        mask = (up - low.reshape(shape)) / (span.reshape(shape) + 1e-6)
        score = target.score(ctx.forward(_apply_per_sample(x, mask))[0])
        return score, low, span, mask.sum(axis=axes)

    channels = jnp.arange(activations.shape[-1])
    size = _chunk(method, batch_size, x)
    if size is None or size >= activations.shape[-1]:
        out = jax.vmap(one)(channels)
    else:
        out = jax.lax.map(one, channels, batch_size=size)
    return dict(zip(("score", "low", "span", "area"), (o.T for o in out), strict=True))


def _apply_per_sample(x, mask):
    return x * (mask if x.ndim == 2 else mask[..., None]).astype(x.dtype)


def _combine(activations, coefficients, spatial):
    """``sum_k c_k A_k`` upsampled to the input: ``(B, K)`` coefficients, ``(B, *spatial)``."""
    return _resize(jnp.einsum("bk,b...k->b...", coefficients, activations), spatial)


def _layer(ctx, method, layer):
    return default_layer(ctx, method) if layer is None else _check_layer(ctx, method, layer)


def _check_maps(method, path, activations, spatial):
    if activations.ndim != len(spatial) + 2:
        raise ValueError(
            f"{method}: layer {path!r} has output shape {tuple(activations.shape)}; a mask needs "
            f"a (B, *spatial, channels) map with {len(spatial)} spatial axes like the input's"
        )


@register_method("score_cam", family="cam")
def score_cam(ctx, x, target, *, layer: str | None = None, baseline=0.0, relu: bool = True,
              batch_size: int | str | None = "auto"):
    """Score-CAM: feature maps weighted by the score increase they cause as input masks.

    With :math:`A_k` the layer's maps upsampled to the input, :math:`H_k` their min-max
    normalisation and :math:`x_b` the baseline input (default zeros):

    .. math:: \\alpha_k = S_t(x \\odot H_k) - S_t(x_b), \\qquad
       L = \\mathrm{ReLU}\\Big(\\sum_k \\alpha_k A_k\\Big)

    (the paper's Eq. 5-6 with the target score itself: no softmax over the classes; the map is
    not normalised). One forward pass per channel, ``batch_size`` channels per chunk.

    Args:
      layer: module path (default: the last convolution, as `jxai.methods.cam`).
      baseline: :math:`x_b`: scalar or array broadcasting to ``x``.
      relu: apply the final ReLU (default, the paper).

    Returns ``(B, *x_spatial)``. Reference: Wang et al., "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks", CVPR Workshops 2020.
    """
    path = _layer(ctx, "score_cam", layer)
    target = pin_target(ctx, x, target)
    _, taps = ctx.forward(x, taps=(path,))
    spatial = _spatial(x)
    activations = taps[path]
    _check_maps("score_cam", path, activations, spatial)
    base_score = target.score(ctx.forward(make_baseline("score_cam", baseline, x))[0])
    scored = _channel_masks(ctx, x, target, activations, batch_size, "score_cam")
    heatmap = _combine(activations, scored["score"] - base_score[:, None], spatial)
    return jax.nn.relu(heatmap) if relu else heatmap


# --------------------------------------------------------------------------------------------
# SISE
# --------------------------------------------------------------------------------------------


_POOLING = (jxai_layers.MaxPool, jxai_layers.AvgPool, jxai_layers.GlobalAvgPool,
            jxai_layers.GlobalMaxPool)


def sise_layers(ctx, method: str = "sise") -> tuple[str, ...]:
    """``layers="auto"``: the ends of the convolutional blocks, low to high.

    The input of every pooling layer (the nearest earlier layer whose output is the pooling's
    input shape, with spatial axes) and the last convolution (`jxai.methods.cam.default_layer`:
    the last block of a network such as MNIST-1D's ends in a flatten, not a pooling).
    """
    infos = list(ctx.layers)
    found = []
    for index, info in enumerate(infos):
        if not issubclass(info.module_type, _POOLING):
            continue
        for before in reversed(infos[:index]):
            if (tuple(before.output_shape) == tuple(info.input_shape)
                    and len(before.output_shape) >= 3
                    and not issubclass(before.module_type, _POOLING)):
                found.append(before.path)
                break
    last = default_layer(ctx, method)
    if last not in found:
        found.append(last)
    order = {info.path: i for i, info in enumerate(infos)}
    return tuple(sorted(dict.fromkeys(found), key=order.__getitem__))


def otsu_threshold(maps, nbins: int = 256):
    """Otsu's threshold of each map ``(B, ...)`` -> ``(B,)``, scikit-image's definition.

    The histogram has ``nbins`` equal bins over ``[min, max]`` (the maximum in the last bin);
    with bin centres :math:`c`, counts :math:`h` and the split after bin :math:`j`, the between-
    class variance is :math:`w_0(j)\\,w_1(j+1)\\,(\\mu_0(j) - \\mu_1(j+1))^2` (cumulative counts
    and means from below and from above); the threshold is :math:`c_{j^*}` at its maximum (the
    first, on ties). A constant map's threshold is its value. ``skimage.filters.threshold_otsu``.
    """
    flat = maps.reshape(maps.shape[0], -1)

    def one(values):
        low, high = values.min(), values.max()
        width = jnp.where(high > low, (high - low) / nbins, 1.0)
        index = jnp.clip(jnp.floor((values - low) / width), 0, nbins - 1).astype(jnp.int32)
        counts = jnp.zeros(nbins, values.dtype).at[index].add(1.0)
        centres = low + (jnp.arange(nbins, dtype=values.dtype) + 0.5) * width
        below = jnp.cumsum(counts)
        above = jnp.cumsum(counts[::-1])[::-1]
        mean_below = jnp.cumsum(counts * centres) / jnp.maximum(below, 1.0)
        mean_above = (jnp.cumsum((counts * centres)[::-1]) / jnp.maximum(above[::-1], 1.0))[::-1]
        variance = below[:-1] * above[1:] * (mean_below[:-1] - mean_above[1:]) ** 2
        return jnp.where(high > low, centres[jnp.argmax(variance)], low)

    return jax.vmap(one)(flat)


def _normalise(maps):
    """Min-max to [0, 1] per sample (a constant map becomes 0)."""
    axes = tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    return jnp.where(span > 0, (maps - low) / jnp.where(span > 0, span, 1.0), 0.0)


@register_method("sise", family="cam")
def sise(ctx, x, target, *, layers: str | tuple[str, ...] = "auto", grad_thr: float = 0.0,
         temperature: float | None = 100.0, batch_size: int | str | None = "auto"):
    """SISE: block-wise feature maps as input masks, layer maps fused in cascade (seed 003).

    1. Feature maps :math:`A^l` of each layer in ``layers`` and their gradients :math:`G^l` of
       the target score (one backward pass).
    2. Channel :math:`k` is kept where its average gradient
       :math:`\\bar g_k = \\mathrm{mean}_s G^l_{s,k}` exceeds ``grad_thr`` times the largest
       (:math:`\\bar g_k > \\mu \\max_j \\bar g_j`, the authors' code; ``grad_thr=0``: a
       positive average gradient).
    3. Kept maps are upsampled bilinearly and min-max normalised into masks :math:`H_k`; each
       masked input is scored, and the layer's map is

       .. math:: E^l = \\mathrm{norm}\\Big(\\sum_{k\\ \\mathrm{kept}} S_t(x \\odot H_k)\\,
          \\frac{H_k}{\\sum_s H_{k,s} + 10^{-6}}\\Big)

       with norm the min-max to [0, 1].
    4. Fusion, low to high layers: :math:`F^1 = E^1`,
       :math:`F^l = (F^{l-1} + E^l) \\odot \\beta(E^l)` with :math:`\\beta` Otsu's binarisation
       (`otsu_threshold`, scikit-image's definition), softened as in the authors' code to
       :math:`\\sigma(T (E^l - \\theta_l))` with ``temperature`` T = 100; ``temperature=None``
       binarises hard (:math:`E^l > \\theta_l`, the paper's text). The authors' code also
       raises the threshold 1.5× when less than 10 % of the map lies above it; jxai does not.

    Args:
      layers: module paths, low to high, or ``"auto"`` (`sise_layers`: the inputs of the pooling
        layers and the last convolution). Seed 003 calls ``SISE(x, model, label,
        [['conv1d_2']], grad_thr=0.)`` on MNIST-1D: ``layers=("conv1d_2_relu",)`` here (the
        Keras layer's output is after its ReLU).
      grad_thr: :math:`\\mu` above; channels failing it are skipped (their forward pass is still
        computed, with weight 0: shapes are static).
      temperature: the fusion's sigmoid temperature, or None for a hard threshold.
      batch_size: masked inputs scored together; ``"auto"``: about 2^18 input elements.

    Returns ``(B, *x_spatial)`` in [0, 2^L). Works on 1D and 2D inputs.

    Reference: Sattarzadeh et al., "Explaining Convolutional Neural Networks through
    Attribution-Based Input Sampling and Block-Wise Feature Aggregation", AAAI 2021.
    """
    if layers == "auto":
        paths = sise_layers(ctx)
    else:
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        if not names:
            raise ValueError("sise: layers is empty; pass module paths or 'auto'")
        paths = tuple(_check_layer(ctx, "sise", name) for name in names)
    if temperature is not None and not float(temperature) > 0:
        raise ValueError(f"sise: temperature must be > 0 or None, got {temperature!r}")
    target = pin_target(ctx, x, target)
    spatial = _spatial(x)
    backward = ctx.backward(x, target, taps=paths)
    maps = []
    for path in paths:
        activations = backward.activations[path]
        _check_maps("sise", path, activations, spatial)
        significance = jnp.mean(backward.grads[path], axis=tuple(range(1, activations.ndim - 1)))
        keep = significance > grad_thr * jnp.max(significance, axis=1, keepdims=True)  # (B, K)
        scored = _channel_masks(ctx, x, target, activations, batch_size, "sise")
        # sum_k w_k H_k = resize(sum_k w_k / (span_k + 1e-6) A_k) - a constant, which the
        # min-max normalisation removes
        weights = jnp.where(keep, scored["score"] / (scored["area"] + 1e-6), 0.0)
        maps.append(_normalise(_combine(activations, weights / (scored["span"] + 1e-6),
                                        spatial)))
    fused = maps[0]
    for layer_map in maps[1:]:
        threshold = otsu_threshold(layer_map).reshape(-1, *(1,) * len(spatial))
        if temperature is None:
            gate = (layer_map > threshold).astype(layer_map.dtype)
        else:
            gate = jax.nn.sigmoid(float(temperature) * (layer_map - threshold))
        fused = (fused + layer_map) * gate
    return fused

