"""Turning an attribution into pixels: channel reduction, normalisation, colour maps, overlays.

Everything here is NumPy on the host: an attribution is computed on the accelerator once, and
drawing it is cheap. The pipeline of `heatmap` is

    attribution (H, W[, C]) ──reduce──▶ map (H, W) ──upsample──▶ (H', W') ──normalize──▶ t ∈ [0, 1]
        ──colour map──▶ RGB ──overlay on the input (optional, alpha)──▶ uint8 (H', W', 3)

Conventions (each a named option; the defaults follow the seeds):

* ``reduce="sum"`` sums relevance over channels (relevance is additive: the relevance of a pixel
  is the sum over its colour channels, as iNNvestigate's examples and the seeds'
  ``plot_interpretation`` do). ``"max"`` is AUCMEDI's signed channel maximum, ``"abs_sum"`` the
  sum of magnitudes, ``"l2"`` the Euclidean norm over channels.
* ``normalize="symmetric"`` divides by max |R| so the map lies in [−1, 1] and zero sits exactly in
  the middle of the colour map (white for ``seismic``/``bwr``, black for ``coldnhot``), as
  ``plt.imshow(a / np.max(np.abs(a)), cmap="seismic", clim=(-1, 1))`` in the seeds.
  ``"minmax"`` maps [min, max] to [0, 1] (AUCMEDI: ``(h − min) / (max − min + 1e-8)``).
  ``"percentile"`` is symmetric with the scale set by the ``percentile``-th percentile of |R|
  instead of the maximum, values beyond it clipped: one outlier (ResNet relevance reaching 1e11,
  Zennit issue #148) no longer turns the rest of the map into the colour of zero.
* Colour maps are sampled on 257 points, so t = 0.5 is a node of the table and a symmetric map's
  zero gets the colour map's exact centre colour.

Reference: Zennit's ``zennit.image`` (``imgify``, ``coldnhot``) and Captum's
``visualize_image_attr`` give the same operations for PyTorch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import matplotlib.colors as mcolors
import numpy as np

__all__ = [
    "COLORMAPS",
    "REDUCTIONS",
    "NORMALIZATIONS",
    "colorize",
    "get_cmap",
    "heatmap",
    "normalize",
    "overlay",
    "reduce_channels",
    "save_png",
    "to_display_image",
    "upsample",
]

REDUCTIONS = ("sum", "max", "abs_sum", "l2", "none")
NORMALIZATIONS = ("symmetric", "minmax", "percentile", "none")

# cyan (most negative) → blue → black (zero) → red → yellow → white (most positive): the
# diverging map of Zennit's examples, good on dark backgrounds and readable in greyscale print,
# since |R| grows with brightness on both sides.
_COLDNHOT = mcolors.LinearSegmentedColormap.from_list(
    "coldnhot",
    [
        (0.0, (0.0, 1.0, 1.0)),
        (0.25, (0.0, 0.0, 1.0)),
        (0.5, (0.0, 0.0, 0.0)),
        (2.0 / 3.0, (1.0, 0.0, 0.0)),
        (5.0 / 6.0, (1.0, 1.0, 0.0)),
        (1.0, (1.0, 1.0, 1.0)),
    ],
    N=257,
)

COLORMAPS = ("seismic", "bwr", "coldnhot", "plasma", "jet", "gray", "hot", "viridis")
_LUT_SIZE = 257  # odd: t = 0.5 falls exactly on entry 128


def get_cmap(cmap: str | mcolors.Colormap) -> mcolors.Colormap:
    """A matplotlib colour map by name (``"coldnhot"`` included) or the map itself."""
    if isinstance(cmap, mcolors.Colormap):
        return cmap
    if cmap == "coldnhot":
        return _COLDNHOT
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"unknown colour map {cmap!r}; use one of {', '.join(COLORMAPS)} or any matplotlib "
            "colour map name or Colormap object"
        ) from None


def _lut(cmap: str | mcolors.Colormap) -> np.ndarray:
    """(257, 3) float table of the colour map sampled at i / 256."""
    # resampled() re-evaluates the map's own definition at i / 256 (a plain lookup at 0.5
    # would return the 256-entry table's entry 128, which sits at 128/255, slightly off-centre)
    table = get_cmap(cmap).resampled(_LUT_SIZE)
    return np.asarray(table(np.arange(_LUT_SIZE)))[:, :3]


def reduce_channels(attribution: np.ndarray, reduce: str = "sum", axis: int = -1) -> np.ndarray:
    """Collapse the channel axis of an attribution into one value per location.

    ``sum``: Σ_c R_c (signed, additive). ``max``: max_c R_c (AUCMEDI's guided backprop map).
    ``abs_sum``: Σ_c |R_c|. ``l2``: sqrt(Σ_c R_c²). ``none``: return the input unchanged.
    """
    r = np.asarray(attribution, dtype=np.float64)
    if reduce == "sum":
        return r.sum(axis=axis)
    if reduce == "max":
        return r.max(axis=axis)
    if reduce == "abs_sum":
        return np.abs(r).sum(axis=axis)
    if reduce == "l2":
        return np.sqrt((r * r).sum(axis=axis))
    if reduce == "none":
        return r
    raise ValueError(f"unknown channel reduction {reduce!r}; use one of {', '.join(REDUCTIONS)}")


def normalize(relevance: np.ndarray, mode: str = "symmetric", percentile: float = 99.5):
    """Scale one map for display.

    ``symmetric``: R / max|R| ∈ [−1, 1]. ``minmax``: (R − min) / (max − min + 1e-8) ∈ [0, 1].
    ``percentile``: clip(R / P_q(|R|), −1, 1) with q = ``percentile``. ``none``: unchanged.
    An all-zero map stays all zero (no division by zero).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if mode == "symmetric":
        scale = np.max(np.abs(r)) if r.size else 0.0
        return r / scale if scale > 0 else np.zeros_like(r)
    if mode == "minmax":
        lo, hi = (r.min(), r.max()) if r.size else (0.0, 0.0)
        return (r - lo) / (hi - lo + 1e-8)
    if mode == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        scale = np.percentile(np.abs(r), percentile) if r.size else 0.0
        if scale <= 0:
            scale = np.max(np.abs(r)) if r.size else 0.0
        return np.clip(r / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(r)
    if mode == "none":
        return r
    raise ValueError(f"unknown normalisation {mode!r}; use one of {', '.join(NORMALIZATIONS)}")


def _unit(values: np.ndarray, mode: str) -> np.ndarray:
    """Normalised values → colour-map coordinate t ∈ [0, 1]."""
    if mode in ("symmetric", "percentile"):
        return (np.clip(values, -1.0, 1.0) + 1.0) / 2.0
    return np.clip(values, 0.0, 1.0)


def colorize(unit: np.ndarray, cmap: str | mcolors.Colormap = "seismic") -> np.ndarray:
    """Map t ∈ [0, 1] through a colour map; returns float RGB in [0, 1] with a trailing axis 3."""
    t = np.nan_to_num(np.asarray(unit, dtype=np.float64), nan=0.5)
    index = np.rint(np.clip(t, 0.0, 1.0) * (_LUT_SIZE - 1)).astype(np.int64)
    return _lut(cmap)[index]


def upsample(relevance: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size`` = (height, width).

    Pixel centres are aligned (half-pixel convention, as ``jax.image.resize``, OpenCV's
    ``INTER_LINEAR`` and PIL): output pixel i samples the input at (i + 0.5)·(n_in / n_out) − 0.5,
    clamped to the border. Used to lay a low-resolution CAM over its input image.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"upsample expects a 2-D map (H, W), got shape {r.shape}")
    out_h, out_w = (int(s) for s in size)
    if (out_h, out_w) == r.shape:
        return r

    def weights(n_in, n_out):
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        pos = np.clip(pos, 0.0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    y0, y1, wy = weights(r.shape[0], out_h)
    x0, x1, wx = weights(r.shape[1], out_w)
    top = r[y0][:, x0] * (1 - wx) + r[y0][:, x1] * wx
    bottom = r[y1][:, x0] * (1 - wx) + r[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def to_display_image(image: np.ndarray) -> np.ndarray:
    """An input image as float RGB in [0, 1], shape (H, W, 3).

    uint8 images are divided by 255; float images are min–max scaled (inputs are often
    preprocessed, e.g. VGG mean subtraction); grey images (H, W) or (H, W, 1) become three
    identical channels.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(
            f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {img.shape}"
        )
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    img = img.astype(np.float64)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def overlay(rgb: np.ndarray, image: np.ndarray, alpha: float | np.ndarray = 0.5) -> np.ndarray:
    """Blend a heatmap over an image: (1 − α)·image + α·heatmap, all float RGB in [0, 1].

    ``alpha`` may be a scalar or a per-pixel (H, W) array (e.g. |R| normalised, so that
    irrelevant regions show the plain image).
    """
    base = to_display_image(image)
    if base.shape[:2] != rgb.shape[:2]:
        raise ValueError(
            f"overlay: image is {base.shape[:2]} but the heatmap is {rgb.shape[:2]}; pass "
            "size=image.shape[:2] to heatmap() to upsample the map first"
        )
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if np.any(a < 0) or np.any(a > 1):
        raise ValueError("overlay alpha must lie in [0, 1]")
    return (1.0 - a) * base + a * rgb


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write an (H, W, 3) uint8 array as a PNG file."""
    from PIL import Image  # a dependency of matplotlib

    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"save_png expects an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    Image.fromarray(rgb, mode="RGB").save(os.fspath(path), format="PNG")


def heatmap(
    attribution,
    *,
    reduce: str = "sum",
    channel_axis: int | None = -1,
    normalize: str = "symmetric",
    percentile: float = 99.5,
    cmap: str | mcolors.Colormap = "seismic",
    size: Sequence[int] | None = None,
    image=None,
    alpha: float = 0.5,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Render one attribution map as an RGB uint8 image.

    Args:
      attribution: (H, W, C) with channels on ``channel_axis`` (reduced by ``reduce``), or an
        already reduced (H, W) map (e.g. a CAM). A leading batch axis of size 1 is dropped.
        JAX arrays are accepted.
      reduce: channel reduction, one of ``sum``, ``max``, ``abs_sum``, ``l2``.
      channel_axis: axis of the channels in a 3-D attribution; None means the map is 2-D.
      normalize: ``symmetric`` (R / max|R|, zero at the colour map's centre), ``minmax``
        (AUCMEDI, [min, max] → [0, 1]), ``percentile`` (symmetric, clipped at the
        ``percentile``-th percentile of |R|) or ``none`` (values already in [0, 1]).
      cmap: ``seismic``, ``bwr``, ``coldnhot``, ``plasma``, ``jet``, ``gray`` or any matplotlib
        colour map.
      size: (height, width) to upsample the map to (bilinear). Defaults to the image's size when
        ``image`` is given and differs from the map's.
      image: optional input image (H, W), (H, W, 1) or (H, W, 3) to blend under the heatmap.
      alpha: heatmap opacity of the overlay (the seeds use 0.5 with ``jet``).
      path: when given, the PNG is written there too.

    Returns:
      (H', W', 3) uint8 array.

    Example:
      >>> rgb = jxai.plot.heatmap(relevance[0], cmap="seismic", path="lrp.png")
    """
    r = np.asarray(attribution, dtype=np.float64)
    if r.ndim == 4 and r.shape[0] == 1:
        r = r[0]
    if r.ndim == 3 and channel_axis is not None:
        r = reduce_channels(r, reduce, axis=channel_axis)
    if r.ndim != 2:
        raise ValueError(
            f"heatmap renders one map: expected (H, W) or (H, W, C), got shape "
            f"{np.shape(attribution)}; index the batch (attribution[i]) or use jxai.plot.grid"
        )
    if size is None and image is not None:
        size = np.shape(image)[:2]
    if size is not None:
        r = upsample(r, size)
    t = _unit(_normalize(r, normalize, percentile), normalize)
    rgb = colorize(t, cmap)
    if image is not None:
        rgb = overlay(rgb, image, alpha)
    out = _to_uint8(rgb)
    if path is not None:
        save_png(out, path)
    return out


_normalize = normalize  # `heatmap` has a parameter of the same name
