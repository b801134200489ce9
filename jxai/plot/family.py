"""One figure per method family: inputs in rows, methods in columns, one colour scale per row.

    fig = jxai.plot.family_figure({"LRP-ε": r_eps, "LRP-z⁺": r_zplus}, images=x,
                                  regions={"marker": marker_mask}, path="lrp.png")

`grid` normalises every cell on its own, so a pale map and a saturated map cannot be told apart.
`family_figure` makes the maps of one input comparable:

* ``scale="share"`` (default) divides each map by its own total magnitude, v = R / Σ_p |R_p|, so
  every map is a distribution of relevance over the pixels whatever the method's unit (logits,
  logits per pixel, squared gradients, CAM activations), and draws the whole row on one symmetric
  scale ±max over the row's maps of max_p |v_p|. A method that concentrates its relevance is
  darker than one that spreads it; the colour bar reads "percent of the map's Σ|R| per pixel".
* ``scale="max"`` divides each map by its own max |R| (every map uses the full colour range, as
  `grid` does); one colour bar for the figure.

Titles are wrapped to the cell width (at spaces, ``.`` and ``_``), so long method names never run
into each other; ``regions`` (ground-truth masks) are outlined on every cell, input included.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter

from jxai.plot import render

__all__ = ["SCALES", "family_figure", "scale_row", "wrap_title"]

SCALES = ("share", "max")

# Outline colours and line styles, one per region in order: visible on white (the colour map's
# zero), on saturated red and blue, and on a dark grey input.
_REGION_STYLES = (("#00b300", "-"), ("#c000c0", "--"), ("#ff8c00", ":"), ("#00bcd4", "-."))
_FONT = 10  # titles, row labels, legend
_SMALL = 9  # tick labels, column notes


def wrap_title(title: str, width: int, max_lines: int = 3) -> str:
    """Break ``title`` into lines of at most ``width`` characters.

    Existing newlines are kept; lines break after spaces, ``.`` and ``_`` (method names such as
    ``lrp.epsilon_alpha2_beta1_flat`` have no spaces), and a single piece longer than ``width``
    is cut hard. More than ``max_lines`` lines end in "…".
    """
    if width < 1:
        raise ValueError(f"wrap_title: width must be at least 1, got {width}")
    lines: list[str] = []
    for paragraph in str(title).split("\n"):
        current = ""
        for piece in re.split(r"(?<=[ ._])", paragraph):
            while len(piece.rstrip()) > width:  # one unbreakable piece wider than a line
                if current:
                    lines.append(current.rstrip())
                    current = ""
                lines.append(piece[:width])
                piece = piece[width:]
            if len(current) + len(piece.rstrip()) > width and current:
                lines.append(current.rstrip())
                current = ""
            current += piece
        lines.append(current.rstrip())
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width - 1, 0)] + "…"
    return "\n".join(lines)


def _as_map(attribution, reduce: str, size) -> np.ndarray:
    """One (H, W[, C]) attribution → a 2-D float map at ``size`` (channels reduced, upsampled)."""
    r = np.asarray(attribution, dtype=np.float64)
    if r.ndim == 3:
        r = render.reduce_channels(r, reduce)
    if r.ndim != 2:
        raise ValueError(
            f"family_figure: one map must be (H, W) or (H, W, C), got shape {np.shape(attribution)}"
        )
    return render.upsample(r, size) if size is not None else r


def scale_row(maps: Sequence[np.ndarray], scale: str = "share") -> tuple[list[np.ndarray], float]:
    """The values drawn for one input's maps and the symmetric colour limit of the row.

    ``share``: v = R / Σ_p |R_p| per map; limit = max over the maps of max_p |v_p|.
    ``max``: v = R / max_p |R_p| per map; limit = 1.
    An all-zero map stays zero; a row of all-zero maps gets limit 1.

    Args:
      maps: 2-D maps of one input (already reduced over channels and at a common size).
      scale: ``share`` or ``max``.

    Returns:
      (scaled maps, limit): each map drawn on [−limit, limit].
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    scaled = []
    for m in maps:
        m = np.asarray(m, dtype=np.float64)
        total = np.abs(m).sum() if scale == "share" else np.abs(m).max(initial=0.0)
        scaled.append(m / total if total > 0 else np.zeros_like(m))
    if scale == "max":
        return scaled, 1.0
    limit = max((float(np.abs(v).max(initial=0.0)) for v in scaled), default=0.0)
    return scaled, limit if limit > 0 else 1.0


def _percent(smallest: float):
    """A tick formatter for shares in percent, with one significant digit on the smallest tick."""
    decimals = max(0, -math.floor(math.log10(smallest * 100))) if smallest > 0 else 0
    return FuncFormatter(lambda v, _: f"{v * 100:.{decimals}f}%" if v else "0")


def _norm(limit: float, gamma: float) -> mcolors.Normalize:
    """[−limit, limit] → [0, 1], zero at ½, |v| raised to ``gamma`` (linear for gamma = 1)."""
    if gamma == 1.0:
        return mcolors.Normalize(-limit, limit)

    def forward(v):
        return np.sign(v) * np.abs(v) ** gamma

    def inverse(u):
        return np.sign(u) * np.abs(u) ** (1.0 / gamma)

    return mcolors.FuncNorm((forward, inverse), vmin=-limit, vmax=limit)


def _outline(ax, mask: np.ndarray, color: str, style: str, shape: str) -> None:
    mask = np.asarray(mask, bool)
    if not mask.any():
        return
    if shape == "contour":
        ax.contour(mask.astype(np.float64), levels=[0.5], colors=color, linewidths=1.4,
                   linestyles=style)
        return
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    # the box runs along the outer pixel edges of the mask (pixel centres sit on integers)
    ax.add_patch(Rectangle((cols[0] - 0.5, rows[0] - 0.5), cols[-1] - cols[0] + 1,
                           rows[-1] - rows[0] + 1, fill=False, edgecolor=color, linestyle=style,
                           linewidth=1.4))


def _check(maps, titles, images, row_labels, regions, column_notes):
    n_rows = maps[0].shape[0]
    for title, m in zip(titles, maps, strict=True):
        if m.ndim not in (3, 4) or m.shape[0] != n_rows:
            raise ValueError(
                f"family_figure: attribution {title!r} has shape {m.shape}; expected (B, H, W) "
                f"or (B, H, W, C) with B = {n_rows} like the first one"
            )
    if images is not None and images.shape[0] != n_rows:
        raise ValueError(f"family_figure: {images.shape[0]} images for {n_rows} rows of maps")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"family_figure: {len(row_labels)} row labels for {n_rows} rows")
    if column_notes is not None and len(column_notes) != len(maps):
        raise ValueError(
            f"family_figure: {len(column_notes)} column notes for {len(maps)} methods")
    if len(regions) > len(_REGION_STYLES):
        raise ValueError(f"family_figure: at most {len(_REGION_STYLES)} regions, got "
                         f"{len(regions)}")
    for name, mask in regions.items():
        if mask.ndim != 3 or mask.shape[0] != n_rows:
            raise ValueError(
                f"family_figure: region {name!r} has shape {mask.shape}; expected (B, H, W) "
                f"boolean masks with B = {n_rows}"
            )
    return n_rows


def family_figure(
    attributions: Mapping[str, object] | Sequence[object],
    images=None,
    *,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    scale: str = "share",
    gamma: float = 1.0,
    regions: Mapping[str, object] | None = None,
    outline: str = "box",
    column_notes: Sequence[str] | None = None,
    title: str | None = None,
    caption: str | None = None,
    reduce: str = "sum",
    cmap: str | mcolors.Colormap = "seismic",
    cell_size: float = 1.45,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Compare one family of methods: rows = inputs, columns = input and methods.

    Args:
      attributions: ``{title: (B, H, W[, C]) array}`` or a sequence of arrays (then ``titles``).
        Low-resolution maps (CAMs) are upsampled bilinearly to the image size.
      images: optional (B, H, W[, C]) inputs, drawn in the first column.
      titles: column titles for a sequence of arrays; wrapped to the cell width.
      row_labels: one label per input, beside its row.
      scale: ``share`` (each map / its Σ|R|, one symmetric scale per row, a colour bar per row in
        percent) or ``max`` (each map / its max |R|, one colour bar); see `scale_row`.
      gamma: colour exponent: a value v on the scale [−limit, limit] gets the colour-map position
        ½ + ½·sign(v)·(|v| / limit)^gamma. 1 is linear; 0.5 (square root) makes weak relevance
        visible next to a hot spot; the colour bar is drawn with the same law, its ticks at
        the true values.
      regions: ``{name: (B, H, W) bool}`` ground-truth regions (at the images' size), outlined
        on every cell and named in a legend.
      outline: ``box`` (the region's bounding box, leaves the relevance inside visible) or
        ``contour`` (the mask's outline).
      column_notes: one short text per method, written under its bottom cell (e.g. a score).
      title: figure title.
      caption: text under the figure, after the sentence that explains the colour ``scale``
        (which is always there); wrapped to the figure's width.
      reduce, cmap: channel reduction and colour map, as in `jxai.plot.heatmap`.
      cell_size: inches per cell; at ``dpi`` 100 the default cell is 145 pixels.
      path: write the figure (PNG, PDF, SVG by extension).

    Returns:
      The `matplotlib.figure.Figure`; each cell's drawn values are ``ax.images[0].get_array()``.
    """
    if isinstance(attributions, Mapping):
        titles = list(attributions.keys()) if titles is None else list(titles)
        maps = [np.asarray(a) for a in attributions.values()]
    else:
        maps = [np.asarray(a) for a in attributions]
        titles = list(titles) if titles is not None else [f"method {i}" for i in range(len(maps))]
    if not maps:
        raise ValueError("family_figure needs at least one attribution array")
    if len(titles) != len(maps):
        raise ValueError(f"family_figure: {len(maps)} attribution arrays but {len(titles)} titles")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; use one of {', '.join(SCALES)}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"family_figure: gamma must lie in (0, 1], got {gamma}")
    if outline not in ("box", "contour"):
        raise ValueError(f"unknown outline {outline!r}; use 'box' or 'contour'")
    imgs = None if images is None else np.asarray(images)
    regions = {name: np.asarray(m, bool) for name, m in (regions or {}).items()}
    n_rows = _check(maps, titles, imgs, row_labels, regions, column_notes)

    has_input = imgs is not None
    n_cols = len(maps) + has_input
    colormap = render.get_cmap(cmap).resampled(257)  # zero on the map's exact centre colour
    # characters per title line: a cell is cell_size·72 points, a character ≈ 0.6 em
    width_chars = max(6, int(cell_size * 72 / (0.6 * _FONT)))
    fig = Figure(figsize=(cell_size * n_cols + 1.3, cell_size * n_rows + 1.6),
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid_spec = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[1] * n_cols + [0.07])
    size = None if imgs is None else imgs.shape[1:3]
    for i in range(n_rows):
        values, limit = scale_row([_as_map(m[i], reduce, size) for m in maps], scale)
        axes = [fig.add_subplot(grid_spec[i, j]) for j in range(n_cols)]
        if has_input:
            axes[0].imshow(render.to_display_image(imgs[i]), interpolation="nearest")
            if i == 0:
                axes[0].set_title("input", fontsize=_FONT)
        for j, v in enumerate(values):
            ax = axes[j + has_input]
            ax.imshow(v, cmap=colormap, norm=_norm(limit, gamma), interpolation="nearest")
            if i == 0:
                ax.set_title(wrap_title(titles[j], width_chars), fontsize=_FONT)
            if i == n_rows - 1 and column_notes is not None:
                ax.set_xlabel(column_notes[j], fontsize=_SMALL)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            for mask, (color, style) in zip(regions.values(), _REGION_STYLES, strict=False):
                _outline(ax, mask[i], color, style, outline)
        if row_labels is not None:
            axes[0].set_ylabel(row_labels[i], fontsize=_FONT)
        if scale == "share" or i == 0:
            rows = slice(i, i + 1) if scale == "share" else slice(0, n_rows)
            bar = fig.colorbar(axes[-1].images[0], cax=fig.add_subplot(grid_spec[rows, -1]))
            # ticks at colour positions 0, ¼, ½, ¾, 1: the values ±limit, ±limit·½^(1/gamma), 0
            half = limit * 0.5 ** (1.0 / gamma)
            bar.ax.yaxis.set_major_locator(FixedLocator([-limit, -half, 0.0, half, limit]))
            if scale == "share":
                bar.ax.yaxis.set_major_formatter(_percent(half))
            else:
                bar.set_label("R / max |R| (each map)", fontsize=_FONT)
            bar.ax.tick_params(labelsize=_SMALL)
    if title:
        fig.suptitle(title, fontsize=_FONT + 2, fontweight="bold")
    explained = (
        "Colour: each map divided by its Σ|R| (percent of the map's relevance per pixel); one "
        "symmetric scale per row, ±max over the row's maps"
        if scale == "share" else "Colour: each map divided by its own max |R|"
    )
    if gamma != 1.0:
        law = "the square root of" if gamma == 0.5 else f"the power {gamma:g} of"
        explained += f"; colour intensity follows {law} the value"
    explained += "."
    # wrapped to the figure's width (≈ 0.55 em per character at the small font size)
    line_chars = max(40, int(fig.get_figwidth() * 72 / (0.55 * _SMALL)))
    caption = "\n".join(textwrap.wrap(f"{explained} {caption or ''}".strip(), line_chars))
    handles = [Line2D([], [], color=color, linestyle=style, linewidth=1.6, label=name)
               for name, (color, style) in zip(regions, _REGION_STYLES, strict=False)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   title=caption, fontsize=_FONT, title_fontsize=_SMALL, frameon=False)
    else:
        fig.supxlabel(caption, fontsize=_SMALL)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig
