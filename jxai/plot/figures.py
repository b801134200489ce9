"""Figures for the seeds' four kinds of data: images, 1-D signals, tables and segmentations.

Every function returns a `matplotlib.figure.Figure` built with the Agg canvas directly (no
``pyplot``, no display, nothing kept in pyplot's global figure list) and writes it to ``path``
when one is given. Heatmap cells reuse `jxai.plot.render`, so a figure shows exactly what
`jxai.plot.heatmap` returns.

* `grid`: rows are inputs, columns are methods (the seeds' method comparisons).
* `signal`: a 1-D input with its relevance as background shading and bars, the class template
  overlaid (MNIST-1D).
* `tabular`: mean |R| per feature as a bar chart beside a per-sample beeswarm coloured by the
  feature value, in the manner of SHAP's summary plot (tabular MLP seed).
* `segmentation`: input, mask, prediction and relevance overlay for a U-Net (breast-ultrasound
  seed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from jxai.plot import render

__all__ = ["grid", "segmentation", "signal", "tabular"]

# Low feature values blue, high values red, as in SHAP's summary plots.
_FEATURE_VALUE_CMAP = mcolors.LinearSegmentedColormap.from_list(
    "feature_value", ["#1e88e5", "#7c4dff", "#ff0d57"]
)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | os.PathLike | None, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def _norm_label(normalize: str) -> tuple[float, float, str]:
    if normalize in ("symmetric", "percentile"):
        label = "relevance / max |R|" if normalize == "symmetric" else "relevance (clipped)"
        return -1.0, 1.0, label
    return 0.0, 1.0, "relevance (min–max)"


def _as_batch(name: str, array, ndim_single: int) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == ndim_single:
        a = a[None]
    return a


def grid(
    attributions: Mapping[str, object] | Sequence[object],
    images=None,
    *,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    reduce: str = "sum",
    normalize: str = "symmetric",
    percentile: float = 99.5,
    cmap: str | mcolors.Colormap = "seismic",
    overlay_alpha: float | None = None,
    colorbar: bool = True,
    cell_size: float = 2.0,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Method-comparison grid: one row per input, one column per method.

    Args:
      attributions: ``{method name: (B, H, W[, C]) array}`` or a sequence of such arrays (then
        ``titles`` names the columns). Low-resolution maps (CAMs) are upsampled to the image.
      images: optional (B, H, W[, C]) inputs, shown in a first column (and under the heatmaps
        when ``overlay_alpha`` is set).
      titles: column titles for a sequence of attributions.
      row_labels: one label per input (e.g. "class 3, p=0.98").
      reduce, normalize, percentile, cmap: as in `jxai.plot.heatmap`; every cell is normalised
        on its own.
      overlay_alpha: blend each heatmap over its input with this opacity; None draws the
        heatmap alone.
      colorbar: add one colour bar for the whole grid.
      cell_size: inches per cell.
      path: write the figure (PNG, PDF, SVG by extension).

    Returns:
      The `matplotlib.figure.Figure`.
    """
    if isinstance(attributions, Mapping):
        titles = list(attributions.keys())
        maps = [np.asarray(a) for a in attributions.values()]
    else:
        maps = [np.asarray(a) for a in attributions]
        titles = list(titles) if titles is not None else [f"method {i}" for i in range(len(maps))]
    if not maps:
        raise ValueError("grid needs at least one attribution array")
    if len(titles) != len(maps):
        raise ValueError(f"grid: {len(maps)} attribution arrays but {len(titles)} titles")
    n_rows = maps[0].shape[0]
    for title, m in zip(titles, maps, strict=True):
        if m.ndim not in (3, 4) or m.shape[0] != n_rows:
            raise ValueError(
                f"grid: attribution {title!r} has shape {m.shape}; expected (B, H, W) or "
                f"(B, H, W, C) with B = {n_rows} like the first one"
            )
    imgs = None if images is None else np.asarray(images)
    if imgs is not None and imgs.shape[0] != n_rows:
        raise ValueError(f"grid: {imgs.shape[0]} images for {n_rows} rows of attributions")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"grid: {len(row_labels)} row labels for {n_rows} rows")

    n_cols = len(maps) + (imgs is not None)
    fig = _new_figure(cell_size * n_cols + (0.8 if colorbar else 0.0), cell_size * n_rows + 0.4)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for i in range(n_rows):
        col = 0
        if imgs is not None:
            axes[i, 0].imshow(render.to_display_image(imgs[i]))
            if i == 0:
                axes[i, 0].set_title("input")
            col = 1
        for j, (title, m) in enumerate(zip(titles, maps, strict=True)):
            a = m[i]
            channel_axis = -1 if a.ndim == 3 else None
            size = None if imgs is None else imgs[i].shape[:2]
            rgb = render.heatmap(
                a,
                reduce=reduce,
                channel_axis=channel_axis,
                normalize=normalize,
                percentile=percentile,
                cmap=cmap,
                size=size,
                image=imgs[i] if (imgs is not None and overlay_alpha is not None) else None,
                alpha=overlay_alpha if overlay_alpha is not None else 0.5,
            )
            ax = axes[i, col + j]
            ax.imshow(rgb)
            if i == 0:
                ax.set_title(title)
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i])
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        vmin, vmax, label = _norm_label(normalize)
        mappable = ScalarMappable(norm=mcolors.Normalize(vmin, vmax), cmap=render.get_cmap(cmap))
        fig.colorbar(mappable, ax=axes, shrink=0.8, label=label)
    return _finish(fig, path, dpi)


def signal(
    x,
    relevance,
    *,
    template=None,
    scale_template: bool = True,
    threshold: float | None = None,
    normalize: str = "symmetric",
    cmap: str | mcolors.Colormap = "seismic",
    titles: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """A 1-D signal with its relevance: shading behind the curve and a bar per sample point.

    Args:
      x: (L,), (L, 1), (B, L) or (B, L, 1) signals (e.g. MNIST-1D, L = 40).
      relevance: the same shape as ``x`` (a trailing channel axis is summed).
      template: optional class template (T,) or (B, T), overlaid dashed after being stretched
        linearly over the signal's length (MNIST-1D templates have 12 points) and, with
        ``scale_template``, min–max rescaled to the signal's range.
      scale_template: rescale the template to the signal's range (MNIST-1D signals are scaled
        and standardised copies of their template, so the raw template looks flat).
      threshold: mark the points whose normalised relevance exceeds it (the seed's
        "highlighted input").
      normalize, cmap: as in `jxai.plot.heatmap`.
      titles: one title per signal.
      path: write the figure.

    Returns:
      The `matplotlib.figure.Figure`, two axes per signal (curve, relevance bars).
    """
    xs = np.asarray(x, dtype=np.float64)
    rs = np.asarray(relevance, dtype=np.float64)
    if xs.shape != rs.shape:
        raise ValueError(f"signal: x has shape {xs.shape} but relevance has shape {rs.shape}")
    if xs.ndim >= 2 and xs.shape[-1] == 1:
        xs, rs = xs[..., 0], rs[..., 0]
    elif xs.ndim == 3:
        xs, rs = xs.mean(axis=-1), rs.sum(axis=-1)
    xs, rs = _as_batch("x", xs, 1), _as_batch("relevance", rs, 1)
    if xs.ndim != 2:
        raise ValueError(f"signal: expected (L,), (B, L) or (B, L, C) arrays, got {np.shape(x)}")
    n, length = xs.shape
    templates = None
    if template is not None:
        templates = np.asarray(template, dtype=np.float64)
        templates = np.broadcast_to(_as_batch("template", templates, 1), (n, templates.shape[-1]))
    if titles is not None and len(titles) != n:
        raise ValueError(f"signal: {len(titles)} titles for {n} signals")

    vmin, vmax, label = _norm_label(normalize)
    colormap = render.get_cmap(cmap)
    fig = _new_figure(7.0, 3.0 * n)
    subfigs = np.atleast_1d(fig.subfigures(n, 1))
    t = np.arange(length)
    for i in range(n):
        ax_sig, ax_rel = subfigs[i].subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]}
        )
        values = render.normalize(rs[i], normalize, 99.5)
        unit = render._unit(values, normalize)
        lo, hi = xs[i].min(), xs[i].max()
        if templates is not None:
            stretched = np.interp(
                np.linspace(0, 1, length), np.linspace(0, 1, templates.shape[1]), templates[i]
            )
            t_lo, t_hi = stretched.min(), stretched.max()
            if scale_template and t_hi > t_lo:
                stretched = lo + (stretched - t_lo) * (hi - lo) / (t_hi - t_lo)
            lo, hi = min(lo, stretched.min()), max(hi, stretched.max())
        pad = 0.1 * (hi - lo if hi > lo else 1.0)
        ax_sig.imshow(
            render.colorize(unit, colormap)[None],
            aspect="auto",
            extent=(-0.5, length - 0.5, lo - pad, hi + pad),
            alpha=0.55,
            interpolation="nearest",
            zorder=0,
        )
        ax_sig.plot(t, xs[i], color="black", lw=1.6, zorder=2, label="input")
        if templates is not None:
            ax_sig.plot(
                t, stretched, color="tab:green", lw=1.4, ls="--", zorder=3, label="template"
            )
        if threshold is not None:
            keep = values > threshold
            ax_sig.scatter(
                t[keep],
                xs[i][keep],
                s=28,
                color="gold",
                edgecolor="black",
                zorder=4,
                label=f"relevance > {threshold:g}",
            )
        ax_sig.set_xlim(-0.5, length - 0.5)
        ax_sig.set_ylim(lo - pad, hi + pad)
        ax_sig.set_ylabel("signal")
        ax_sig.legend(loc="best", fontsize="small", framealpha=0.8)
        if titles is not None:
            ax_sig.set_title(titles[i])
        ax_rel.bar(t, values, color=render.colorize(unit, colormap), edgecolor="0.3", lw=0.4)
        ax_rel.axhline(0.0, color="0.3", lw=0.6)
        ax_rel.set_ylim(min(vmin, values.min()) * 1.05, max(vmax, values.max()) * 1.05)
        ax_rel.set_ylabel("relevance")
        ax_rel.set_xlabel("position")
        subfigs[i].colorbar(
            ScalarMappable(norm=mcolors.Normalize(vmin, vmax), cmap=colormap),
            ax=[ax_sig, ax_rel],
            shrink=0.8,
            label=label,
        )
    return _finish(fig, path, dpi)


def _beeswarm_offsets(values: np.ndarray, n_bins: int = 60, width: float = 0.4) -> np.ndarray:
    """Vertical offsets that stack points with close values side by side (a beeswarm)."""
    n = values.size
    if n == 0:
        return np.zeros(0)
    lo, hi = values.min(), values.max()
    span = hi - lo if hi > lo else 1.0
    bins = np.minimum(((values - lo) / span * n_bins).astype(np.int64), n_bins - 1)
    offsets = np.zeros(n)
    order = np.argsort(values, kind="stable")
    count = np.zeros(n_bins, dtype=np.int64)
    for k in order:  # host-side layout of a few thousand points
        c = count[bins[k]]
        offsets[k] = ((c + 1) // 2) * (1 if c % 2 else -1)
        count[bins[k]] += 1
    largest = max(1, np.abs(offsets).max())
    return offsets * (width / largest)


def tabular(
    relevance,
    values=None,
    feature_names: Sequence[str] | None = None,
    *,
    max_display: int = 20,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Feature importance for tabular models, as in SHAP's summary plot.

    Left: mean |R| over the samples per feature, sorted, largest on top. Right: one dot per
    sample and feature at its relevance, stacked where they crowd, coloured by the feature's value
    (blue low, red high, scaled between the 5th and 95th percentile of that feature).

    Args:
      relevance: (N, F) attributions.
      values: (N, F) feature values (the model inputs); None colours every dot grey.
      feature_names: F names; default ``feature i``.
      max_display: show the most important ``max_display`` features.
      path: write the figure.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2:
        raise ValueError(f"tabular: relevance must be (N, F), got shape {np.shape(relevance)}")
    n, f = r.shape
    v = None if values is None else np.asarray(values, dtype=np.float64).reshape(-1, f)
    if v is not None and v.shape != r.shape:
        raise ValueError(f"tabular: values have shape {np.shape(values)}, relevance {r.shape}")
    names = list(feature_names) if feature_names is not None else [f"feature {i}" for i in range(f)]
    if len(names) != f:
        raise ValueError(f"tabular: {len(names)} feature names for {f} features")

    importance = np.abs(r).mean(axis=0)
    shown = np.argsort(-importance, kind="stable")[:max_display][::-1]  # largest at the top
    fig = _new_figure(11.0, 0.4 * len(shown) + 1.6)
    ax_bar, ax_swarm = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.6]})
    ypos = np.arange(len(shown))
    ax_bar.barh(ypos, importance[shown], color="#1e88e5")
    ax_bar.set_yticks(ypos, [names[k] for k in shown])
    ax_bar.set_xlabel("mean |relevance|")
    ax_bar.set_title("importance")
    for row, k in enumerate(shown):
        offsets = _beeswarm_offsets(r[:, k])
        if v is None:
            colors = "0.5"
        else:
            lo, hi = np.percentile(v[:, k], [5, 95])
            if hi <= lo:
                lo, hi = v[:, k].min(), v[:, k].max()
            scaled = np.clip((v[:, k] - lo) / (hi - lo), 0, 1) if hi > lo else np.full(n, 0.5)
            colors = _FEATURE_VALUE_CMAP(scaled)
        ax_swarm.scatter(r[:, k], row + offsets, s=10, c=colors, alpha=0.85, linewidths=0)
    ax_swarm.axvline(0.0, color="0.4", lw=0.8)
    ax_swarm.set_xlabel("relevance (impact on the output)")
    ax_swarm.set_title("per sample")
    if v is not None:
        cbar = fig.colorbar(
            ScalarMappable(norm=mcolors.Normalize(0, 1), cmap=_FEATURE_VALUE_CMAP),
            ax=ax_swarm,
            ticks=[0, 1],
            aspect=40,
        )
        cbar.ax.set_yticklabels(["low", "high"])
        cbar.set_label("feature value")
    return _finish(fig, path, dpi)


def segmentation(
    image,
    relevance,
    mask=None,
    prediction=None,
    *,
    reduce: str = "sum",
    normalize: str = "symmetric",
    cmap: str | mcolors.Colormap = "seismic",
    overlay_alpha: float = 0.6,
    threshold: float = 0.5,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Figure:
    """Segmentation explanation: input, mask, prediction, relevance and relevance over the input.

    The ground-truth mask is drawn as a contour on the relevance panels, so one sees whether the
    relevance lies inside the lesion.

    Args:
      image: (H, W[, C]) input.
      relevance: (H, W[, C]) attribution of the explained output (e.g. the summed tumour logits).
      mask: optional ground-truth mask (H, W[, 1]) in {0, 1} or probabilities.
      prediction: optional predicted mask (H, W[, 1]) probabilities; thresholded at ``threshold``
        for its contour.
      reduce, normalize, cmap: as in `jxai.plot.heatmap`.
      overlay_alpha: maximum opacity of the relevance over the input; scaled by |R| so
        irrelevant regions show the plain image.
    """
    img = render.to_display_image(image)
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 3:
        r = render.reduce_channels(r, reduce)
    if r.ndim != 2:
        raise ValueError(f"segmentation: relevance must be (H, W[, C]), got {np.shape(relevance)}")
    r = render.upsample(r, img.shape[:2])

    def plane(name, m):
        if m is None:
            return None
        m = np.asarray(m, dtype=np.float64)
        m = m[..., 0] if m.ndim == 3 else m
        if m.shape != img.shape[:2]:
            raise ValueError(f"segmentation: {name} has shape {m.shape}, image {img.shape[:2]}")
        return m

    gt, pred = plane("mask", mask), plane("prediction", prediction)
    values = render.normalize(r, normalize)
    rgb = render.colorize(render._unit(values, normalize), cmap)
    magnitude = np.abs(values) if normalize != "minmax" else values
    blended = render.overlay(rgb, img, overlay_alpha * np.clip(magnitude, 0, 1))

    panels = [("input", img, None)]
    if gt is not None:
        tint = img.copy()
        tint[gt > 0.5] = 0.5 * tint[gt > 0.5] + 0.5 * np.array([0.1, 0.9, 0.2])
        panels.append(("mask", tint, None))
    if pred is not None:
        panels.append(("prediction", pred, "gray"))
    panels += [("relevance", rgb, None), ("relevance on input", blended, None)]
    fig = _new_figure(2.6 * len(panels) + 0.8, 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, data, panel_cmap) in zip(axes, panels, strict=True):
        if panel_cmap is None:
            ax.imshow(data)
        else:
            ax.imshow(data, cmap=panel_cmap, vmin=0.0, vmax=1.0)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        if title.startswith("relevance") or title == "prediction":
            if gt is not None and gt.min() < 0.5 < gt.max():
                ax.contour(gt, levels=[0.5], colors="lime", linewidths=1.2)
            draw_pred = pred is not None and title.startswith("relevance")
            if draw_pred and pred.min() < threshold < pred.max():
                ax.contour(
                    pred, levels=[threshold], colors="orange", linewidths=1.0, linestyles="--"
                )
    vmin, vmax, label = _norm_label(normalize)
    fig.colorbar(
        ScalarMappable(norm=mcolors.Normalize(vmin, vmax), cmap=render.get_cmap(cmap)),
        ax=axes.tolist(),
        shrink=0.8,
        label=label,
    )
    return _finish(fig, path, dpi)
