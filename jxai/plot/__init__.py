"""Pictures of attributions: heatmaps (RGB uint8 arrays / PNG files) and matplotlib figures.

    rgb = jxai.plot.heatmap(relevance[0], cmap="seismic", path="lrp.png")
    fig = jxai.plot.grid({"lrp.epsilon": r1, "gradient": r2}, images=x, path="compare.png")

`render` turns one map into pixels (channel reduction, normalisation, colour maps, bilinear
upsampling, overlays); `figures` lays maps out (method grids, 1-D signals, tabular summaries,
segmentations); `family` draws one method family per figure, each row on one colour scale, with
ground-truth regions outlined (`family_figure`); `tokens` draws transformer attributions:
`text_html` and `text_heatmap` colour tokens by relevance, `patch_overlay` lays ViT patch
relevance over the image. Drawing uses the Agg canvas: no display is ever needed.
"""

from jxai.plot.family import family_figure, scale_row, wrap_title
from jxai.plot.figures import grid, segmentation, signal, tabular
from jxai.plot.render import (
    COLORMAPS,
    NORMALIZATIONS,
    REDUCTIONS,
    colorize,
    get_cmap,
    heatmap,
    normalize,
    overlay,
    reduce_channels,
    save_png,
    to_display_image,
    upsample,
)
from jxai.plot.tokens import patch_overlay, text_heatmap, text_html, token_colors

__all__ = [
    "COLORMAPS",
    "NORMALIZATIONS",
    "REDUCTIONS",
    "colorize",
    "family_figure",
    "get_cmap",
    "grid",
    "heatmap",
    "normalize",
    "overlay",
    "patch_overlay",
    "reduce_channels",
    "save_png",
    "scale_row",
    "segmentation",
    "signal",
    "tabular",
    "text_heatmap",
    "text_html",
    "to_display_image",
    "token_colors",
    "upsample",
    "wrap_title",
]
