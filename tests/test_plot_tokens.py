"""Text heatmaps (HTML, PNG) and ViT patch overlays: jxai.plot.tokens (Agg canvas, no pyplot)."""

import re

import numpy as np
import pytest
from matplotlib.patches import Rectangle

from jxai import plot, transformer

TOKENS = [["the", "<script>alert(1)</script>", "cat", "[PAD]"], ["a", "dog", "barks", "loud"]]
RELEVANCE = np.array([[0.5, -1.0, 0.2, 9.0], [2.0, 0.0, -1.0, 0.5]])
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])


def _bwr(u):
    """Independent oracle of matplotlib's ``bwr`` at R / max|R| = u: blue (0, 0, 1) → white →
    red (1, 0, 0), linear in each half."""
    u = np.asarray(u, dtype=np.float64)[..., None]
    neg = np.concatenate([1 + u, 1 + u, np.ones_like(u)], -1)
    pos = np.concatenate([np.ones_like(u), 1 - u, 1 - u], -1)
    return np.where(u < 0, neg, pos)


def _spans(fragment):
    """[(token text, (r, g, b) in [0, 1])] of every token span of an HTML fragment."""
    found = re.findall(r'<span style="background-color: #([0-9a-f]{6});[^>]*>([^<]*)</span>',
                       fragment)
    return [(text, tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))) for h, text in found]


def test_token_colors_follow_the_formula_per_sequence():
    rgb = plot.token_colors(TOKENS, RELEVANCE, mask=MASK)
    assert rgb.shape == (2, 4, 3)
    # sequence 0: the padded 9.0 takes no part in the scale, max |R| = 1
    expected0 = _bwr(RELEVANCE[0, :3] / 1.0)
    expected1 = _bwr(RELEVANCE[1] / 2.0)
    np.testing.assert_allclose(rgb[0, :3], expected0, atol=1 / 256 + 1e-9)
    np.testing.assert_allclose(rgb[1], expected1, atol=1 / 256 + 1e-9)
    np.testing.assert_allclose(rgb[0, 3], (0.85, 0.85, 0.85))  # padding is grey
    np.testing.assert_allclose(rgb[1, 1], (1.0, 1.0, 1.0))  # R = 0: the map's centre, white
    # per-sequence scale: multiplying one sequence by 10 changes nothing; a shared scale does
    scaled = RELEVANCE * np.array([[1.0], [10.0]])
    np.testing.assert_array_equal(plot.token_colors(TOKENS, scaled, mask=MASK), rgb)
    shared = plot.token_colors(TOKENS, scaled, mask=MASK, scale="shared")
    np.testing.assert_allclose(shared[0, :3], _bwr(RELEVANCE[0, :3] / 20.0), atol=1 / 256 + 1e-9)


def test_all_zero_sequence_is_white_not_nan():
    rgb = plot.token_colors(["a", "b"], np.zeros(2))
    np.testing.assert_allclose(rgb, np.ones((1, 2, 3)))


def test_html_escapes_and_colours_sign():
    fragment = plot.text_html(TOKENS, RELEVANCE, mask=MASK, row_labels=["<b>x</b>", "y"])
    assert "<script" not in fragment.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in fragment
    assert "&lt;b&gt;x&lt;/b&gt;" in fragment
    spans = dict(_spans(fragment))
    red, green, blue = spans["the"]  # R = +0.5: red-ish
    assert red == 1.0 and blue < 0.6 and green < 0.6
    red, green, blue = spans["&lt;script&gt;alert(1)&lt;/script&gt;"]  # R = -1: pure blue
    assert (red, green, blue) == (0.0, 0.0, 1.0)
    red, green, blue = spans["barks"]  # R = -1 of max 2: light blue
    assert blue == 1.0 and red < 0.6
    assert spans["a"] == (1.0, 0.0, 0.0)


def test_html_padding_omitted_or_grey():
    omitted = plot.text_html(TOKENS, RELEVANCE, mask=MASK)
    assert "[PAD]" not in omitted
    assert len(_spans(omitted)) == 7
    grey = plot.text_html(TOKENS, RELEVANCE, mask=MASK, padding="grey")
    spans = dict(_spans(grey))
    assert spans["[PAD]"] == pytest.approx((0.85, 0.85, 0.85), abs=1 / 255)
    # the padded token's relevance (NaN here) is ignored, and so is its value in the scale
    nan_pad = RELEVANCE.copy()
    nan_pad[0, 3] = np.nan
    assert plot.text_html(TOKENS, nan_pad, mask=MASK) == omitted


def test_html_file_is_a_complete_document_written_atomically(tmp_path):
    path = tmp_path / "sub" / "tokens.html"
    fragment = plot.text_html(TOKENS, RELEVANCE, mask=MASK, path=path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and fragment in text
    assert "<script" not in text.lower()
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.html"]  # no temporary left


def test_ids_with_a_vocabulary_and_embedding_axis():
    vocab = ["a", "dog", "barks", "loud", "<pad>"]
    ids = np.array([[0, 1, 2, 3], [1, 2, 4, 4]])
    rel = np.arange(8.0).reshape(2, 4) - 3.0
    words = [[vocab[i] for i in row] for row in ids]
    assert plot.text_html(ids, rel, vocab=vocab) == plot.text_html(words, rel)
    assert plot.text_html(ids, rel, vocab=dict(enumerate(vocab))) == plot.text_html(words, rel)
    per_dim = np.stack([rel, 2 * rel, -rel], -1) / 2.0  # sums to rel over the embedding axis
    np.testing.assert_allclose(plot.token_colors(words, per_dim), plot.token_colors(words, rel))
    with pytest.raises(ValueError, match="token id 7 is not in the vocabulary"):
        plot.text_html(np.array([0, 7]), np.ones(2), vocab=vocab)


@pytest.mark.parametrize(
    "tokens, relevance, mask, message",
    [
        (["a", "b", "c"], np.ones(2), None, "relevance of shape"),
        (TOKENS, np.ones((2, 3)), None, "relevance of shape"),
        (["a", "b"], np.array([1.0, np.nan]), None, r"not finite \(nan\) at sequence 0, token 1"),
        (["a", "b"], np.array([np.inf, 1.0]), None, "not finite"),
        (TOKENS, RELEVANCE, np.ones((2, 3)), "mask of shape"),
        (TOKENS, RELEVANCE, np.full((2, 4), 2), "mask entries"),
        ("a b c", np.ones(3), None, "one string"),
        ([["a", "b"], ["c"]], np.ones((2, 2)), None, "pad ragged sequences"),
    ],
)
def test_bad_input_is_a_clear_error(tokens, relevance, mask, message):
    with pytest.raises(ValueError, match=message):
        plot.text_html(tokens, relevance, mask=mask)
    with pytest.raises(ValueError, match=message):
        plot.text_heatmap(tokens, relevance, mask=mask)


def test_bad_options():
    with pytest.raises(ValueError, match="padding="):
        plot.text_html(TOKENS, RELEVANCE, padding="hide")
    with pytest.raises(ValueError, match="scale="):
        plot.text_heatmap(TOKENS, RELEVANCE, scale="batch")


def test_png_written_with_the_token_colours(tmp_path):
    path = tmp_path / "tokens.png"
    many = [row * 6 for row in TOKENS]  # long enough to wrap at 4 inches
    rel = np.tile(RELEVANCE, 6)
    mask = np.tile(MASK, 6)
    fig = plot.text_heatmap(many, rel, mask=mask, row_labels=["one", "two"], width=4.0,
                            path=path, title="tokens")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    boxes = [a for a in fig.artists if isinstance(a, Rectangle)]
    assert len(boxes) == int(mask.sum())  # padded tokens omitted
    rgb = plot.token_colors(many, rel, mask=mask)
    colours = [tuple(b.get_facecolor()[:3]) for b in boxes]
    expected = [tuple(c) for c, keep in zip(rgb.reshape(-1, 3), mask.ravel(), strict=True) if keep]
    np.testing.assert_allclose(colours, expected)
    lines = {round(b.get_y(), 6) for b in boxes}
    assert len(lines) > 2  # wrapped into several lines per sequence
    assert all(b.get_x() + b.get_width() <= 4.0 for b in boxes)
    grey = plot.text_heatmap(many, rel, mask=mask, padding="grey", colorbar=False)
    assert len([a for a in grey.artists if isinstance(a, Rectangle)]) == mask.size


def _patch_sums(pixels, p):
    """NumPy oracle: relevance summed over each p×p patch and the channels."""
    b, h, w, c = pixels.shape
    return pixels.reshape(b, h // p, p, w // p, p, c).sum(axis=(2, 4, 5))


def test_patch_overlay_pixel_relevance_summed_per_patch():
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(32, 24, 3))
    pixels = rng.normal(size=(32, 24, 3))
    fig = plot.patch_overlay(image, pixels, patch_size=8, interpolation="nearest")
    ax_input, ax_overlay = fig.axes[:2]
    assert ax_input.images[0].get_array().shape == (32, 24, 3)
    assert ax_overlay.images[0].get_array().shape == (32, 24, 3)
    shown = np.asarray(ax_overlay.images[1].get_array())
    assert shown.shape == (32, 24)
    sums = _patch_sums(pixels[None], 8)[0]
    np.testing.assert_allclose(shown, np.kron(sums, np.ones((8, 8))), rtol=1e-5, atol=1e-5)
    limit = np.abs(sums).max()
    np.testing.assert_allclose(ax_overlay.images[1].get_clim(), (-limit, limit), rtol=1e-5)
    assert ax_overlay.images[1].get_alpha() == 0.5


def test_patch_overlay_grid_matches_transformer_upsample(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    grids = rng.normal(size=(2, 4, 4)).astype(np.float32)
    path = tmp_path / "patches.png"
    fig = plot.patch_overlay(images, grids, patch_size=8, path=path, titles=["cat", "dog"])
    assert path.stat().st_size > 1000
    expected = np.asarray(transformer.upsample(grids, (32, 32)))
    overlays = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(overlays) == 2
    for k, ax in enumerate(overlays):
        np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), expected[k], rtol=1e-6)
    # pixel relevance given with the patch size goes through patch_relevance then upsample
    pixels = rng.normal(size=(2, 32, 32, 3))
    fig = plot.patch_overlay(images, pixels, patch_size=8)
    expected = np.asarray(transformer.upsample(transformer.patch_relevance(pixels, 8), (32, 32)))
    overlays = [ax for ax in fig.axes if len(ax.images) == 2]
    for k, ax in enumerate(overlays):
        np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), expected[k], rtol=1e-5,
                                   atol=1e-5)


def test_patch_overlay_bad_input():
    image = np.zeros((32, 32, 3))
    with pytest.raises(ValueError, match="does not tile"):
        plot.patch_overlay(image, np.ones((3, 3)), patch_size=8)
    with pytest.raises(ValueError, match="NaN"):
        plot.patch_overlay(image, np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="has channels but is not"):
        plot.patch_overlay(image, np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="alpha"):
        plot.patch_overlay(image, np.ones((4, 4)), alpha=2.0)
    with pytest.raises(ValueError, match="relevance of shape"):
        plot.patch_overlay(np.zeros((2, 32, 32, 3)), np.ones((3, 4, 4)))
