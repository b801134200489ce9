"""Pictures of transformer attributions: text heatmaps (HTML and PNG) and ViT patch overlays.

Text. Each token is drawn on a background coloured by its relevance. Per sequence b the colour
coordinate of token i is

    t_bi = (1 + R_bi / s_b) / 2,    s_b = max_{j unmasked} |R_bj|      (``scale="sequence"``)

so zero relevance sits at the colour map's centre (white for ``bwr``), positive relevance is red
and negative blue, and the most relevant token of each sequence is fully saturated.
``scale="shared"`` uses one s for the whole batch (sequences then compare with each other).
Padded tokens (``mask`` False) take no part in s and are omitted or drawn grey.

* `token_colors`: the RGB background of every token (the numbers both pictures draw).
* `text_html`: an HTML fragment (inline styles only, every token ``html.escape``-d, no scripts),
  optionally written atomically to a file as a complete document.
* `text_heatmap`: a matplotlib figure, the tokens laid out in wrapped lines, one block per
  sequence.

Images. `patch_overlay` draws per-patch (or per-pixel) relevance of a vision transformer over
its input: pixel relevance is summed per patch (`jxai.transformer.patch_relevance`), the patch
grid resized to the image (`jxai.transformer.upsample`, bilinear or nearest) and blended over it.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle

from jxai.plot import render

__all__ = ["patch_overlay", "text_heatmap", "text_html", "token_colors"]

PADDING = ("omit", "grey")
SCALES = ("sequence", "shared")
_GREY = (0.85, 0.85, 0.85)


# ---------------------------------------------------------------------------------------------
# tokens and their colours


def _token_batch(tokens, vocab) -> tuple[list[list[str]], bool]:
    """Token strings as a list of sequences, and whether the input was a single sequence."""
    if vocab is not None:
        ids = np.asarray(tokens)
        if ids.dtype.kind not in "iu":
            raise ValueError(
                f"text heatmap: with a vocabulary, tokens must be integer ids; got dtype {ids.dtype}"
            )
        single = ids.ndim == 1
        ids = ids[None] if single else ids
        if ids.ndim != 2:
            raise ValueError(f"text heatmap: token ids of shape {ids.shape}; give (L,) or (B, L)")

        def word(i):
            try:
                return str(vocab[int(i)])
            except (KeyError, IndexError):
                size = len(vocab)
                raise ValueError(
                    f"text heatmap: token id {int(i)} is not in the vocabulary ({size} entries)"
                ) from None

        return [[word(i) for i in row] for row in ids], single
    if isinstance(tokens, str):
        raise ValueError(
            "text heatmap: tokens is one string; give the list of token strings (the tokenizer's "
            "output), or integer ids with vocab="
        )
    tokens = list(tokens)
    if tokens and all(isinstance(t, str) for t in tokens):
        return [tokens], True
    if not all(isinstance(row, Sequence) and not isinstance(row, str)
               and all(isinstance(t, str) for t in row) for row in tokens):
        raise ValueError(
            "text heatmap: tokens must be a list of strings, a list of such lists (one per "
            "sequence), or integer ids with vocab= (a list or dict id -> string)"
        )
    return [list(row) for row in tokens], False


def _prepare(tokens, relevance, vocab, mask):
    """(token rows, relevance (B, L) float64, mask (B, L) bool) with every shape checked."""
    rows, single = _token_batch(tokens, vocab)
    r = np.asarray(relevance, dtype=np.float64)
    if single:
        r = r[None]
    if r.ndim == 3:  # (B, L, D): relevance per embedding dimension, summed per token
        r = r.sum(-1)
    lengths = {len(row) for row in rows}
    if r.ndim != 2 or r.shape[0] != len(rows) or lengths != {r.shape[1]}:
        raise ValueError(
            f"text heatmap: {len(rows)} sequence(s) of {sorted(lengths)} token(s) but relevance of "
            f"shape {np.shape(relevance)}; give one relevance per token ((L,) or (B, L), or "
            "(B, L, D) summed over the embedding); pad ragged sequences to one length and pass mask="
        )
    if mask is None:
        m = np.ones(r.shape, dtype=bool)
    else:
        m = np.asarray(mask)
        m = m[None] if single and m.ndim == 1 else m
        if m.shape != r.shape:
            raise ValueError(
                f"text heatmap: mask of shape {np.shape(mask)} for relevance of shape {r.shape}; "
                "give one entry per token (True/1 = real token, False/0 = padding)"
            )
        if m.dtype != bool:
            if not np.all((m == 0) | (m == 1)):
                raise ValueError("text heatmap: mask entries must be 0/1 or booleans")
            m = m.astype(bool)
    bad = ~np.isfinite(r) & m
    if bad.any():
        b, i = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            f"text heatmap: relevance is not finite ({r[b, i]}) at sequence {b}, token {i} "
            f"({rows[b][i]!r}); {int(bad.sum())} such value(s) among the unmasked tokens"
        )
    return rows, np.where(m, r, 0.0), m


def _scales(r: np.ndarray, m: np.ndarray, scale: str) -> np.ndarray:
    """s_b = max |R_b| over the unmasked tokens (per sequence or shared); zero stays zero."""
    if scale not in SCALES:
        raise ValueError(f"text heatmap: scale={scale!r}; use one of {', '.join(SCALES)}")
    peak = np.abs(np.where(m, r, 0.0)).max(axis=1)
    if scale == "shared":
        peak = np.full_like(peak, peak.max() if peak.size else 0.0)
    return peak


def token_colors(
    tokens,
    relevance,
    *,
    vocab=None,
    mask=None,
    scale: str = "sequence",
    cmap: str | mcolors.Colormap = "bwr",
) -> np.ndarray:
    """Background colour of every token: float RGB (B, L, 3) in [0, 1].

    ``t = (1 + R / s) / 2`` through ``cmap`` with s the largest |R| of the sequence's unmasked
    tokens (``scale="sequence"``) or of the batch (``"shared"``); a sequence whose relevance is
    all zero gets the centre colour. Padded tokens (mask False) are grey (0.85, 0.85, 0.85).
    A single sequence gives (1, L, 3).
    """
    _, r, m = _prepare(tokens, relevance, vocab, mask)
    return _colors(r, m, _scales(r, m, scale), cmap)


def _colors(r, m, s, cmap) -> np.ndarray:
    unit = np.divide(r, s[:, None], out=np.zeros_like(r), where=s[:, None] > 0)
    rgb = render.colorize((np.clip(unit, -1.0, 1.0) + 1.0) / 2.0, cmap)
    rgb[~m] = _GREY
    return rgb


def _text_color(rgb) -> str:
    """Black on light backgrounds, white on dark ones (relative luminance, sRGB weights)."""
    return "#000000" if 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] > 0.5 else "#ffffff"


def _check_padding(padding: str) -> None:
    if padding not in PADDING:
        raise ValueError(f"text heatmap: padding={padding!r}; use one of {', '.join(PADDING)}")


# ---------------------------------------------------------------------------------------------
# HTML


def text_html(
    tokens,
    relevance,
    *,
    vocab=None,
    mask=None,
    scale: str = "sequence",
    cmap: str | mcolors.Colormap = "bwr",
    padding: str = "omit",
    row_labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
) -> str:
    """Tokens on backgrounds coloured by relevance, as an HTML fragment.

    One ``<div>`` per sequence, one ``<span>`` per token with an inline ``background-color``
    (`token_colors`) and a ``title`` giving R and R / s; every token and label passes through
    ``html.escape`` (``<script>`` shows as text) and the fragment contains no script, no external
    resource, only inline styles. Tokens are separated by a space (subword markers such as
    ``##``, ``Ġ`` or ``▁`` are shown as the tokenizer wrote them).

    Args:
      tokens: a list of token strings, a list of such lists (one per sequence), or integer ids
        (L,) / (B, L) with ``vocab`` (a list, or a dict id -> string).
      relevance: (L,) or (B, L) relevance per token, or (B, L, D) summed over the embedding.
      mask: (B, L) True/1 for real tokens, False/0 for padding (padding's relevance is ignored).
      scale: ``"sequence"`` (each sequence divided by its own max |R|) or ``"shared"``.
      cmap: diverging colour map, centred on R = 0.
      padding: ``"omit"`` leaves padded tokens out, ``"grey"`` shows them on grey.
      row_labels: optional label per sequence, shown before it.
      path: when given, a complete UTF-8 HTML document holding the fragment is written there
        atomically (temporary file, then rename).

    Returns:
      The fragment (a string), e.g. for ``IPython.display.HTML``.
    """
    _check_padding(padding)
    rows, r, m = _prepare(tokens, relevance, vocab, mask)
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"text_html: {len(row_labels)} row labels for {len(rows)} sequences")
    s = _scales(r, m, scale)
    rgb = _colors(r, m, s, cmap)
    lines = ['<div class="jxai-text" style="font-family: monospace; line-height: 1.9;">']
    for b, row in enumerate(rows):
        spans = []
        if row_labels is not None:
            spans.append(f'<b>{html.escape(str(row_labels[b]))}</b>')
        for i, token in enumerate(row):
            if not m[b, i] and padding == "omit":
                continue
            color = rgb[b, i]
            hexcolor = mcolors.to_hex(color)
            if m[b, i]:
                rel = r[b, i] / s[b] if s[b] > 0 else 0.0
                note = f"R = {r[b, i]:.4g} (R / max|R| = {rel:+.3f})"
            else:
                note = "padding"
            spans.append(
                f'<span style="background-color: {hexcolor}; color: {_text_color(color)}; '
                f'padding: 0 2px; border-radius: 2px;" title="{html.escape(note)}">'
                f"{html.escape(token)}</span>"
            )
        lines.append(f'<div class="jxai-sequence" style="margin: 4px 0;">{" ".join(spans)}</div>')
    lines.append("</div>")
    fragment = "\n".join(lines)
    if path is not None:
        document = (
            '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
            "<title>jxai token relevance</title>\n</head>\n<body>\n"
            f"{fragment}\n</body>\n</html>\n"
        )
        from jxai.io import atomic_write

        atomic_write(path, lambda f: f.write(document.encode("utf-8")))
    return fragment


# ---------------------------------------------------------------------------------------------
# PNG (matplotlib)


def text_heatmap(
    tokens,
    relevance,
    *,
    vocab=None,
    mask=None,
    scale: str = "sequence",
    cmap: str | mcolors.Colormap = "bwr",
    padding: str = "omit",
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    width: float = 8.0,
    fontsize: float = 11.0,
    colorbar: bool = True,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Tokens on backgrounds coloured by relevance, as a matplotlib figure.

    The tokens of each sequence flow left to right and wrap at ``width`` inches; sequences
    follow each other top to bottom (with their ``row_labels``). Each token's box is a
    `matplotlib.patches.Rectangle` (in ``fig.artists``) filled with its `token_colors` colour,
    its text black or white for contrast. Arguments as in `text_html`.

    Args:
      width: figure width in inches (its height follows from the wrapped lines).
      fontsize: token font size in points.
      colorbar: a colour bar (R / s from −1 to 1) under the text.
      path: write the figure there (PNG, PDF, SVG by extension).

    Returns:
      The `matplotlib.figure.Figure` (Agg canvas, never shown).
    """
    _check_padding(padding)
    rows, r, m = _prepare(tokens, relevance, vocab, mask)
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"text_heatmap: {len(row_labels)} row labels for {len(rows)} sequences")
    if width <= 1.0:
        raise ValueError(f"text_heatmap: width={width} inches is too narrow; give more than 1")
    rgb = _colors(r, m, _scales(r, m, scale), cmap)

    # Lay out in inches, measuring every token with an off-screen Agg renderer.
    font = FontProperties(family="monospace", size=fontsize)
    measure = RendererAgg(1, 1, 72)  # at 72 dpi a pixel is a point

    def extent(text: str) -> float:
        w, _, _ = measure.get_text_width_height_descent(text, font, ismath=False)
        return w / 72.0

    margin, pad, gap = 0.15, 0.04, extent(" ")
    line = fontsize * 1.7 / 72.0
    placed = []  # (x, y_from_top, box width, text, colour, real token)
    y = margin + (0.35 if title else 0.0)
    for b, row in enumerate(rows):
        x = margin
        if row_labels is not None:
            placed.append((x, y, None, str(row_labels[b]), None, True))
            y += line
        for i, token in enumerate(row):
            if not m[b, i] and padding == "omit":
                continue
            shown = token.replace("\n", "\\n").replace("\t", "\\t")
            box = extent(shown) + 2 * pad if shown.strip() else extent("␣") + 2 * pad
            if x + box > width - margin and x > margin:
                x = margin
                y += line
            placed.append((x, y, box, shown, rgb[b, i], bool(m[b, i])))
            x += box + gap
        y += line * 1.4
    bar = 0.8 if colorbar else 0.0
    height = y + bar + margin

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    inches = fig.dpi_scale_trans
    if title:
        fig.text(margin, height - margin, title, transform=inches, va="top", fontsize=fontsize + 1,
                 fontweight="bold")
    for x, y_top, box, text, color, real in placed:
        base = height - y_top - line * 0.8
        if box is None:  # a row label
            fig.text(x, base + 0.25 * line, text, transform=inches, fontsize=fontsize,
                     fontweight="bold", va="baseline")
            continue
        fig.add_artist(Rectangle((x, base - 0.2 * line), box, 0.85 * line, transform=inches,
                                 facecolor=color, edgecolor="none"))
        fig.text(x + pad, base, text, transform=inches, fontproperties=font, va="baseline",
                 color=_text_color(color) if real else "#777777")
    if colorbar:
        ax = fig.add_axes((margin / width, (margin + 0.4) / height, 1 - 2 * margin / width,
                           0.18 / height))
        mappable = ScalarMappable(norm=mcolors.Normalize(-1.0, 1.0), cmap=render.get_cmap(cmap))
        label = "R / max|R| per sequence" if scale == "sequence" else "R / max|R| over the batch"
        fig.colorbar(mappable, cax=ax, orientation="horizontal", label=label)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


# ---------------------------------------------------------------------------------------------
# ViT patches


def _patch_maps(image: np.ndarray, relevance, patch_size, interpolation: str):
    """(B, H, W) relevance maps at the image's resolution, and the (B, h, w) grids they came from."""
    from jxai import transformer

    height, width = image.shape[1:3]
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim not in (3, 4) or r.shape[0] != image.shape[0]:
        raise ValueError(
            f"patch_overlay: relevance of shape {np.shape(relevance)} for {image.shape[0]} "
            f"image(s) of {height}×{width}; give per-pixel (H, W[, C]) or per-patch (h, w) "
            "relevance, with a batch axis when the image has one"
        )
    if not np.all(np.isfinite(r)):
        raise ValueError("patch_overlay: relevance has NaN or infinite values")
    pixel = r.shape[1:3] == (height, width)
    if r.ndim == 4 and not pixel:
        raise ValueError(
            f"patch_overlay: relevance of shape {np.shape(relevance)} has channels but is not "
            f"the image's {height}×{width}; per-patch relevance is (h, w)"
        )
    if pixel and patch_size is not None:
        grid = np.asarray(transformer.patch_relevance(r, patch_size), dtype=np.float64)
    elif pixel:
        grid = r.sum(-1) if r.ndim == 4 else r
    else:
        grid = r
        if patch_size is not None:
            ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
            if height % ph or width % pw or grid.shape[1:] != (height // ph, width // pw):
                raise ValueError(
                    f"patch_overlay: a {grid.shape[1]}×{grid.shape[2]} patch grid does not tile a "
                    f"{height}×{width} image with {ph}×{pw} patches"
                )
    maps = np.asarray(transformer.upsample(grid, (height, width), interpolation), dtype=np.float64)
    return maps, grid


def patch_overlay(
    image,
    relevance,
    patch_size: int | tuple[int, int] | None = None,
    *,
    interpolation: str = "bilinear",
    alpha: float = 0.5,
    cmap: str | mcolors.Colormap = "bwr",
    titles: Sequence[str] | None = None,
    colorbar: bool = True,
    cell_size: float = 2.5,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Patch relevance of a vision transformer over its input image.

    ``relevance`` is per pixel, (H, W) or (H, W, C) like the image, or per patch, (h, w) (the
    patch tokens on their grid, e.g. from `jxai.transformer.tokens_to_image` with
    ``resize=False``); with a batch axis when ``image`` has one ((B, H, W, C) images). With
    ``patch_size`` p, pixel relevance is summed over each p×p patch
    (`jxai.transformer.patch_relevance`: R_patch = Σ_{pixels, channels} R). The patch grid is
    resized to H×W by `jxai.transformer.upsample` (``interpolation`` ``"bilinear"`` or
    ``"nearest"``, one constant block per patch), divided by its max |R| and drawn with ``cmap``
    (centred on zero) at opacity ``alpha`` over the image.

    One row per image: the input, then the overlay (axes.images[0] is the image, [1] the
    upsampled map, (H, W), with color limits ±max|R|).

    Returns:
      The `matplotlib.figure.Figure` (Agg canvas).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"patch_overlay: alpha={alpha} must lie in [0, 1]")
    img = np.asarray(image)
    single = img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (1, 3, 4))
    if single:
        img, relevance = img[None], np.asarray(relevance)[None]
    if img.ndim == 3:
        img = img[..., None]
    if img.ndim != 4:
        raise ValueError(
            f"patch_overlay: image of shape {np.shape(image)}; give (H, W[, C]) or (B, H, W, C)"
        )
    maps, _ = _patch_maps(img, relevance, patch_size, interpolation)
    n = img.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"patch_overlay: {len(titles)} titles for {n} images")

    fig = Figure(figsize=(2 * cell_size + (0.8 if colorbar else 0.0), cell_size * n + 0.4),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(n, 2, squeeze=False))
    colormap = render.get_cmap(cmap)
    for k in range(n):
        shown = render.to_display_image(img[k])
        limit = float(np.abs(maps[k]).max())
        limit = limit if limit > 0 else 1.0
        axes[k, 0].imshow(shown)
        axes[k, 0].set_title(titles[k] if titles is not None else "input")
        axes[k, 1].imshow(shown)
        axes[k, 1].imshow(maps[k], cmap=colormap, vmin=-limit, vmax=limit, alpha=alpha,
                          interpolation="nearest")
        axes[k, 1].set_title("patch relevance")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        mappable = ScalarMappable(norm=mcolors.Normalize(-1.0, 1.0), cmap=colormap)
        fig.colorbar(mappable, ax=axes, shrink=0.8, label="relevance / max |R|")
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig
