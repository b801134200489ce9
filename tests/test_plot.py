"""jxai.plot, checked by content: shapes, dtypes, the colour at known pixels, files written.

Oracles: matplotlib's own colour tables at their end points and centre, NumPy reductions,
`jax.image.resize` for bilinear upsampling, and the blend formula for overlays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from jxai import plot


def rgb255(color):
    return np.rint(np.asarray(color[:3]) * 255).astype(np.uint8)


@pytest.fixture
def signed_map():
    r = np.zeros((5, 7))
    r[1, 2] = 2.0  # the maximum
    r[3, 5] = -1.0  # half the maximum, negative
    r[4, 6] = -2.0  # the minimum
    return r


# matplotlib's definitions: seismic (0,0,.3)→(0,0,1)→(1,1,1)→(1,0,0)→(.5,0,0) at 0, ¼, ½, ¾, 1;
# bwr (0,0,1)→(1,1,1)→(1,0,0) at 0, ½, 1.
SYMMETRIC = {
    "seismic": {"max": (0.5, 0, 0), "min": (0, 0, 0.3), "-half": (0, 0, 1)},
    "bwr": {"max": (1, 0, 0), "min": (0, 0, 1), "-half": (0.5, 0.5, 1)},
}


@pytest.mark.parametrize("cmap", ["seismic", "bwr"])
def test_symmetric_maps_are_white_at_zero(signed_map, cmap):
    rgb = plot.heatmap(signed_map, cmap=cmap)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])  # R = 0 → centre → white
    np.testing.assert_array_equal(rgb[1, 2], rgb255(SYMMETRIC[cmap]["max"]))  # +max|R|
    np.testing.assert_array_equal(rgb[4, 6], rgb255(SYMMETRIC[cmap]["min"]))  # −max|R|
    np.testing.assert_array_equal(rgb[3, 5], rgb255(SYMMETRIC[cmap]["-half"]))  # −max|R| / 2
    assert (rgb == 255).all(axis=-1).sum() == signed_map.size - 3  # every zero is white


def test_coldnhot_black_centre_cyan_to_white(signed_map):
    rgb = plot.heatmap(signed_map, cmap="coldnhot")
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 2], [255, 255, 255])
    np.testing.assert_array_equal(rgb[4, 6], [0, 255, 255])
    np.testing.assert_array_equal(rgb[3, 5], [0, 0, 255])


@pytest.mark.parametrize("cmap", ["plasma", "jet", "gray"])
def test_minmax_maps_ends_of_the_colour_map(cmap):
    r = np.array([[-3.0, 1.0], [5.0, 1.0]])
    rgb = plot.heatmap(r, normalize="minmax", cmap=cmap)
    table = matplotlib.colormaps[cmap]
    np.testing.assert_array_equal(rgb[0, 0], rgb255(table(0.0)))
    np.testing.assert_array_equal(rgb[1, 0], rgb255(table(1.0)))
    if cmap == "gray":  # (1 − (−3)) / 8 = 0.5 → mid grey
        np.testing.assert_array_equal(rgb[0, 1], [128, 128, 128])
    np.testing.assert_allclose(plot.normalize(r, "minmax"), (r + 3) / (8 + 1e-8))


def test_channel_reductions():
    a = np.random.default_rng(0).normal(size=(4, 6, 3))
    np.testing.assert_allclose(plot.reduce_channels(a, "sum"), a.sum(-1))
    np.testing.assert_allclose(plot.reduce_channels(a, "max"), a.max(-1))
    np.testing.assert_allclose(plot.reduce_channels(a, "abs_sum"), np.abs(a).sum(-1))
    np.testing.assert_allclose(plot.reduce_channels(a, "l2"), np.linalg.norm(a, axis=-1))
    # heatmap applies the reduction before normalising: the seeds' sum over channels
    expected = plot.colorize((a.sum(-1) / np.abs(a.sum(-1)).max() + 1) / 2, "seismic")
    np.testing.assert_array_equal(
        plot.heatmap(a), np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8)
    )
    with pytest.raises(ValueError, match="unknown channel reduction"):
        plot.reduce_channels(a, "mean")


def test_aucmedi_guided_backprop_pipeline():
    """AUCMEDI: tf.reduce_max over channels, then (h − min) / (max − min + 1e-8)."""
    gradient = np.random.default_rng(5).normal(size=(6, 6, 3))
    h = gradient.max(axis=-1)
    expected = (h - h.min()) / (h.max() - h.min() + 1e-8)
    rgb = plot.heatmap(gradient, reduce="max", normalize="minmax", cmap="gray")
    # gray is the identity ramp; the 257-entry table quantises t to multiples of 1/256
    np.testing.assert_allclose(rgb[..., 0] / 255.0, expected, atol=1 / 256 + 1 / 255)
    assert rgb[..., 0].max() == 255 and rgb[..., 0].min() == 0


def test_percentile_clipping_ignores_an_outlier():
    r = np.linspace(-1, 1, 101).reshape(1, 101)
    r[0, 50] = 1e11  # one blown-up value (Zennit issue #148)
    values = plot.normalize(r, "percentile", percentile=98)
    assert values[0, 50] == 1.0
    assert values[0, 100] > 0.9  # the rest keeps its contrast
    assert abs(plot.normalize(r, "symmetric")[0, 100]) < 1e-9  # where max|R| flattens it


def test_bilinear_upsampling_matches_jax_image_resize():
    cam = np.random.default_rng(1).random((7, 5))
    ours = plot.upsample(cam, (28, 20))
    reference = jax.image.resize(jnp.asarray(cam), (28, 20), "bilinear")
    np.testing.assert_allclose(ours, np.asarray(reference), atol=1e-6)
    rgb = plot.heatmap(cam, normalize="minmax", cmap="jet", size=(28, 20))
    assert rgb.shape == (28, 20, 3)


def test_overlay_blends_with_alpha():
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 1] = 200
    cam = np.zeros((2, 2))
    cam[0, 0] = 1.0
    plain = plot.heatmap(cam, normalize="minmax", cmap="gray", size=(4, 4))
    blended = plot.heatmap(cam, normalize="minmax", cmap="gray", image=image, alpha=0.25)
    assert blended.shape == (4, 4, 3)  # the CAM was upsampled to the image
    expected = 0.75 * image / 255.0 + 0.25 * plain / 255.0
    np.testing.assert_allclose(blended / 255.0, expected, atol=1 / 255)
    np.testing.assert_array_equal(
        plot.heatmap(cam, normalize="minmax", cmap="gray", image=image, alpha=0.0), image
    )


def test_heatmap_writes_png(tmp_path, signed_map):
    path = tmp_path / "map.png"
    rgb = plot.heatmap(jnp.asarray(signed_map)[None, ..., None], cmap="bwr", path=path)
    assert rgb.shape == (5, 7, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)


def test_heatmap_rejects_batches():
    with pytest.raises(ValueError, match="renders one map"):
        plot.heatmap(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="unknown colour map"):
        plot.heatmap(np.zeros((4, 4)), cmap="no-such-map")


def test_grid_rows_inputs_columns_methods(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.random((2, 16, 16, 3))
    maps = {"lrp.epsilon": rng.normal(size=(2, 16, 16, 3)), "grad_cam": rng.random((2, 4, 4))}
    path = tmp_path / "grid.png"
    fig = plot.grid(maps, images=images, row_labels=["a", "b"], path=path)
    assert isinstance(fig, Figure) and path.stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 2 * 3  # 2 rows × (input + 2 methods)
    assert [ax.get_title() for ax in axes[:3]] == ["input", "lrp.epsilon", "grad_cam"]
    # each cell shows exactly what heatmap() returns; the CAM is upsampled to the input
    np.testing.assert_array_equal(
        axes[1].images[0].get_array(), plot.heatmap(maps["lrp.epsilon"][0])
    )
    assert axes[2].images[0].get_array().shape == (16, 16, 3)
    with pytest.raises(ValueError, match="expected \\(B, H, W\\)"):
        plot.grid({"a": np.zeros((2, 4, 4)), "b": np.zeros((3, 4, 4))})


def test_signal_figure(tmp_path):
    t = np.arange(40)
    x = np.sin(t / 4.0)
    relevance = np.where((t > 5) & (t < 12), 1.0, 0.0) - np.where(t > 30, 0.5, 0.0)
    path = tmp_path / "signal.png"
    fig = plot.signal(
        x[:, None],
        relevance[:, None],
        template=np.linspace(-1, 1, 12),
        threshold=0.5,
        titles=["class 3"],
        path=path,
    )
    assert path.stat().st_size > 0
    ax_signal, ax_bars = fig.axes[:2]
    labels = [line.get_label() for line in ax_signal.lines]
    assert labels == ["input", "template"]
    np.testing.assert_allclose(ax_signal.lines[0].get_ydata(), x)
    # the 12-point template is stretched to 40 points and rescaled to the signal's range
    expected = x.min() + (np.linspace(-1, 1, 40) + 1) / 2 * (x.max() - x.min())
    np.testing.assert_allclose(ax_signal.lines[1].get_ydata(), expected)
    # the highlighted points are exactly those with normalised relevance > 0.5
    np.testing.assert_array_equal(ax_signal.collections[0].get_offsets()[:, 0], t[6:12])
    heights = [bar.get_height() for bar in ax_bars.patches]
    np.testing.assert_allclose(heights, relevance / np.abs(relevance).max())


def test_tabular_figure(tmp_path):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 6))
    relevance = values * np.array([0.1, 3.0, 1.0, 0.5, 2.0, 0.2])
    names = ["melt", "pressure", "time", "mold", "area", "volume"]
    path = tmp_path / "tabular.png"
    fig = plot.tabular(relevance, values, names, max_display=4, path=path)
    assert path.stat().st_size > 0
    ax_bar = fig.axes[0]
    shown = [tick.get_text() for tick in ax_bar.get_yticklabels()]
    assert shown == ["mold", "time", "area", "pressure"]  # most important at the top
    widths = [bar.get_width() for bar in ax_bar.patches]
    np.testing.assert_allclose(widths, np.abs(relevance).mean(0)[[3, 2, 4, 1]])
    swarm = fig.axes[1]
    assert len(swarm.collections) == 4 and len(swarm.collections[0].get_offsets()) == 200


def test_segmentation_figure(tmp_path):
    yy, xx = np.mgrid[:32, :32]
    mask = ((yy - 16) ** 2 + (xx - 16) ** 2 < 60).astype(float)
    image = np.random.default_rng(4).random((32, 32, 3))
    relevance = mask[..., None] * np.ones((1, 1, 3)) - 0.2
    path = tmp_path / "segmentation.png"
    fig = plot.segmentation(image, relevance, mask, prediction=mask * 0.9, path=path)
    assert path.stat().st_size > 0
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["input", "mask", "prediction", "relevance", "relevance on input"]
    rel = next(ax for ax in fig.axes if ax.get_title() == "relevance").images[0].get_array()
    centre, corner = np.asarray(rel[16, 16]), np.asarray(rel[0, 0])
    # inside the lesion R = 0.8 = max|R| → seismic's top (0.5, 0, 0); outside −0.2 → t = 0.375,
    # halfway between blue (0, 0, 1) and white
    np.testing.assert_allclose(centre, [0.5, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(corner, [0.5, 0.5, 1.0], atol=1e-9)


def test_wrap_title_breaks_at_separators_and_cuts_long_pieces():
    assert plot.wrap_title("lrp.epsilon_alpha2_beta1_flat", 12) == (
        "lrp.epsilon_\nalpha2_\nbeta1_flat")
    assert plot.wrap_title("integrated gradients", 12) == "integrated\ngradients"
    assert plot.wrap_title("LRP-αβ\nα=1.5, β=0.5", 20) == "LRP-αβ\nα=1.5, β=0.5"  # kept
    assert plot.wrap_title("abcdefghijkl", 5) == "abcde\nfghij\nkl"
    assert plot.wrap_title("a b c d e f g h", 1, max_lines=3) == "a\nb\n…"
    with pytest.raises(ValueError, match="width must be at least 1, got 0"):
        plot.wrap_title("x", 0)


def test_scale_row_share_and_max():
    a = np.array([[1.0, -3.0], [0.0, 4.0]])  # Σ|a| = 8
    b = np.array([[2.0, 2.0], [2.0, 2.0]])  # Σ|b| = 8, spread out
    zero = np.zeros((2, 2))
    values, limit = plot.scale_row([a, b, zero], "share")
    np.testing.assert_allclose(values[0], a / 8)
    np.testing.assert_allclose(values[1], b / 8)
    np.testing.assert_array_equal(values[2], zero)  # an empty map stays empty
    assert limit == pytest.approx(4 / 8)  # the row's largest |share|: a's 4
    values, limit = plot.scale_row([a, b], "max")
    np.testing.assert_allclose(values[0], a / 4)
    np.testing.assert_allclose(values[1], b / 2)
    assert limit == 1.0
    assert plot.scale_row([zero], "share")[1] == 1.0
    with pytest.raises(ValueError, match="unknown scale 'sum'; use one of share, max"):
        plot.scale_row([a], "sum")


def _family_inputs():
    rng = np.random.default_rng(5)
    images = rng.random((2, 16, 16, 1))
    maps = {
        "lrp.epsilon_alpha2_beta1_flat": rng.normal(size=(2, 16, 16, 1)),
        "integrated gradients": rng.normal(size=(2, 16, 16, 1)),
        "Grad-CAM": rng.random((2, 4, 4)),  # low resolution: upsampled to 16 × 16
    }
    marker = np.zeros((2, 16, 16), bool)
    marker[:, 1:4, 11:15] = True
    obj = np.zeros((2, 16, 16), bool)
    obj[:, 6:12, 5:10] = True
    return images, maps, {"marker": marker, "object": obj}


def test_family_figure_shares_one_scale_per_row(tmp_path):
    images, maps, regions = _family_inputs()
    path = tmp_path / "family.png"
    fig = plot.family_figure(maps, images, row_labels=["a", "b"], regions=regions, gamma=0.5,
                             column_notes=["1", "2", "3"], title="LRP", path=path)
    cells = [ax for ax in fig.axes if ax.images and ax.get_xticks().size == 0]
    assert len(cells) == 2 * 4  # 2 rows × (input + 3 methods)
    for row in range(2):
        expected, limit = plot.scale_row(
            [plot.reduce_channels(maps[k][row]) if maps[k].ndim == 4
             else plot.upsample(maps[k][row], (16, 16)) for k in maps], "share")
        for j, values in enumerate(expected):
            image = cells[4 * row + 1 + j].images[0]
            np.testing.assert_allclose(image.get_array(), values)
            # one symmetric scale per row; the square-root law puts limit/4 at ¾ of the map
            assert image.norm(limit) == pytest.approx(1.0)
            assert image.norm(-limit) == pytest.approx(0.0)
            assert image.norm(0.0) == pytest.approx(0.5)
            assert image.norm(limit / 4) == pytest.approx(0.75)
    # titles wrapped to the cell and not overlapping; every text at least 9 pt
    fig.canvas.draw()  # the constrained layout places the axes at draw time
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in cells[:4]]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False))
    assert cells[1].get_title() == "lrp.epsilon_\nalpha2_beta1_flat"  # 17 characters a line
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    assert min(sizes) >= 9
    # regions: the marker's box runs along its outer pixel edges, on every cell
    boxes = [p for p in cells[5].patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert [(b.get_xy(), b.get_width(), b.get_height()) for b in boxes] == [
        ((10.5, 0.5), 4, 3), ((4.5, 5.5), 5, 6)]
    assert all(len(ax.patches) == 2 for ax in cells)
    assert cells[-1].get_xlabel() == "3" and cells[0].get_ylabel() == "a"
    with Image.open(path) as png:
        assert png.size == (round((1.45 * 4 + 1.3) * 100), round((1.45 * 2 + 1.6) * 100))


def test_family_figure_max_scale_and_errors():
    images, maps, regions = _family_inputs()
    fig = plot.family_figure(maps, images, scale="max")
    cell = next(ax for ax in fig.axes if ax.get_title() == "Grad-CAM")
    values = cell.images[0].get_array()
    assert np.abs(values).max() == pytest.approx(1.0) and cell.images[0].norm(1.0) == 1.0
    with pytest.raises(ValueError, match="2 images for 3 rows"):
        plot.family_figure({"a": np.zeros((3, 4, 4))}, images)
    with pytest.raises(ValueError, match="region 'marker' has shape \\(16, 16\\); expected"):
        plot.family_figure(maps, images, regions={"marker": regions["marker"][0]})
    with pytest.raises(ValueError, match="gamma must lie in \\(0, 1\\], got 2"):
        plot.family_figure(maps, images, gamma=2)
    with pytest.raises(ValueError, match="1 column notes for 3 methods"):
        plot.family_figure(maps, images, column_notes=["x"])
