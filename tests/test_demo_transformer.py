"""``jxai demo --transformer``: the marker-token data, the marker share, and a tiny end-to-end run.

Oracles: shares computed by hand on small maps; the data's construction (one marker per sequence,
its id deciding the label); and the property that defines the demo: after training, AttnLRP puts
far more relevance on the marker than a uniform map (1/T) would, while the same untrained
network does not (so the check fails on a model that did not learn, or a wrong explanation).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from jxai.models import clever_hans_vit, get
from jxai.models.clever_hans import make_clever_hans
from jxai.models.marker_tokens import CLS, FIRST_FILLER, MARKERS, make_marker_tokens

import jxai
from jxai import demo, demo_transformer

LENGTH = 16


def test_marker_sequences():
    data = make_marker_tokens(200, length=LENGTH, vocab=32, seed=3)
    assert data.x.shape == (200, LENGTH) and data.x.dtype == np.int32
    assert np.all(data.x[:, 0] == CLS)
    is_marker = np.isin(data.x, MARKERS)
    np.testing.assert_array_equal(is_marker, data.marker_mask)  # exactly the marked position
    assert np.all(is_marker.sum(1) == 1) and np.all(data.marker_position >= 1)
    np.testing.assert_array_equal(data.x[np.arange(200), data.marker_position],
                                  np.asarray(MARKERS)[data.y])
    fillers = data.x[:, 1:][~is_marker[:, 1:]]
    assert fillers.min() >= FIRST_FILLER and data.x.max() < 32
    assert data.y.sum() == 100  # balanced
    again = make_marker_tokens(200, length=LENGTH, vocab=32, seed=3)
    np.testing.assert_array_equal(again.x, data.x)
    swapped = data.swapped()
    np.testing.assert_array_equal(swapped.y, 1 - data.y)
    changed = swapped.x != data.x
    np.testing.assert_array_equal(changed, data.marker_mask)
    with pytest.raises(ValueError, match="vocab 3"):
        make_marker_tokens(4, vocab=3)


def test_marker_shares_by_hand():
    relevance = np.array([[1.0, -2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 2.0, 0.0]])
    mask = np.zeros((3, 4), bool)
    mask[0, 1] = mask[1, 2] = mask[2, 0] = True
    shares = demo_transformer.marker_shares(relevance, mask)
    np.testing.assert_allclose(shares["abs"], [2 / 6, 0.0, 1 / 4])
    np.testing.assert_allclose(shares["positive"], [0.0, 0.0, 0.0])
    mask[2] = [False, False, True, False]
    np.testing.assert_allclose(demo_transformer.marker_shares(relevance, mask)["positive"],
                               [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="exactly one token"):
        demo_transformer.marker_shares(relevance, np.ones((3, 4), bool))


def test_usage_error_is_one_line(tmp_path, capsys):
    assert demo.main(["--transformer", "--epochs", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "jxai demo --transformer: error: --epochs 0: expected an integer >= 1\n"
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One small end-to-end run of both parts (the demo's own size flags), shared by the tests
    that read its files."""
    out = tmp_path_factory.mktemp("demo_transformer") / "out"
    assert demo.main(["--transformer", "--out", str(out), "--train-size", "1024",
                      "--epochs", "4", "--n-sequences", "8", "--vit-train-size", "1024",
                      "--vit-epochs", "4", "--n-images", "6"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_tiny_run_finds_the_marker(tiny_run):
    out, report = tiny_run
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "heatmaps.html",
                                              "heatmaps.png", "attributions.npz",
                                              "vit_overlay.png", "vit_attributions.npz"}
    assert set(report["outputs"]) == {p.name for p in out.iterdir()}
    assert report["accuracy"]["held_out"] > 0.95
    assert report["accuracy"]["follows_swapped_marker"] > 0.95
    methods = report["methods"]
    assert set(methods) == set(demo_transformer.METHODS), report["skipped"]
    assert methods["lrp.attn_lrp"]["abs_share"] > 3 / LENGTH
    assert methods["lrp.attn_lrp"]["top1"] > 0.9
    assert "AttnLRP" in (out / "report.md").read_text()
    html = (out / "heatmaps.html").read_text()
    assert html.count("<h3>sequence ") == 8 and html.count("M0") + html.count("M1") >= 8 * 3
    # Removing the tokens AttnLRP ranks first (the marker) hurts the true logit more than
    # removing those it ranks last.
    assert report["faithfulness"]["methods"]["lrp.attn_lrp"]["abpc"] > 0
    saved = np.load(out / "attributions.npz")
    # The saved map is the marker share's input: recompute the share from it.
    shares = demo_transformer.marker_shares(
        saved["lrp.attn_lrp"],
        np.arange(LENGTH)[None] == saved["marker_position"][:, None])
    np.testing.assert_allclose(shares["abs"].mean(), methods["lrp.attn_lrp"]["abs_share"])


def test_tiny_vit_learns_the_tag_and_attn_lrp_finds_it(tiny_run):
    out, report = tiny_run
    vit = report["vit"]
    # The shortcut: right on the biased images, and with the tag moved to the other corner the
    # prediction follows the tag, not the object.
    assert vit["accuracy"]["held_out"] > 0.95
    assert vit["accuracy"]["follows_swapped_tag"] > 0.9
    assert vit["accuracy"]["object_with_swapped_tag"] < 0.1
    assert set(vit["methods"]) == set(demo_transformer.VIT_METHODS), vit["skipped"]
    uniform = vit["uniform_share"]
    assert 0.02 < uniform["patch"] < 0.15 and 0.005 < uniform["pixel"] < 0.03
    attn = vit["methods"]["lrp.attn_lrp"]
    assert attn["patch_abs_share"] > 4 * uniform["patch"]
    assert attn["pixel_abs_share"] > 8 * uniform["pixel"]
    # Removing the patches AttnLRP ranks first (the tag) drops the true logit at once.
    assert vit["faithfulness"]["methods"]["lrp.attn_lrp"]["abpc"] > 1.0
    saved = np.load(out / "vit_attributions.npz")
    assert saved["images"].shape == (6, 64, 64, 1)
    patches, pixels = saved["lrp.attn_lrp/patch"], saved["lrp.attn_lrp/pixel"]
    np.testing.assert_allclose(patches.sum((1, 2)), pixels.sum((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        demo_transformer.region_shares(patches, saved["tag_patches"])["abs"].mean(),
        attn["patch_abs_share"])
    text = (out / "report.md").read_text()
    assert "tiny ViT" in text and "Grad-CAM" in text
    assert (out / "vit_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_untrained_vit_does_not_single_out_the_tag():
    """The contrast: the same ViT with random weights puts less than 4× the uniform share on
    the tag patches (the bright tag alone gets it some), so the bound above needs training."""
    data = make_clever_hans(12, seed=10_001)
    x = jnp.asarray(clever_hans_vit.standardize(data.x))
    relevance = jxai.explain(clever_hans_vit.tiny_vit(key=0), x, "lrp.attn_lrp", target=data.y)
    grid, _ = demo_transformer.vit_maps(relevance, 8, 64)
    tags = clever_hans_vit.tag_patches(data.marker_mask)
    assert demo_transformer.region_shares(grid, tags)["abs"].mean() < 4 * tags.mean()


def test_vit_helpers_by_hand():
    mask = np.zeros((1, 16, 16), bool)
    mask[0, 6:10, 1:3] = True  # rows 6..9 straddle the two patch rows, columns in the first
    np.testing.assert_array_equal(clever_hans_vit.tag_patches(mask, 8)[0],
                                  [[True, False], [True, False]])
    # the counterfactual twin: same images but the tag in the other corner
    data, swapped = make_clever_hans(6, seed=4), clever_hans_vit.counterfactual(6, seed=4)
    np.testing.assert_array_equal(swapped.y, data.y)
    np.testing.assert_array_equal(swapped.marker_class, 1 - data.y)
    np.testing.assert_array_equal(swapped.object_mask, data.object_mask)
    outside = ~(data.marker_mask | swapped.marker_mask)
    np.testing.assert_array_equal(swapped.x[..., 0][outside], data.x[..., 0][outside])
    # per-patch and per-pixel maps hold the same total; a grid is spread over its pixels
    pixel = np.random.default_rng(0).normal(size=(2, 16, 16, 1))
    grid, flat = demo_transformer.vit_maps(pixel, 8, 16)
    np.testing.assert_allclose(grid[0, 1, 0], pixel[0, 8:, :8].sum(), rtol=1e-6)
    np.testing.assert_allclose(flat, pixel[..., 0])
    grid2, spread = demo_transformer.vit_maps(grid, 8, 16)
    np.testing.assert_allclose(spread[0, 9, 3], grid[0, 1, 0] / 64, rtol=1e-6)
    np.testing.assert_allclose(grid2, grid)
    with pytest.raises(ValueError, match="neither per pixel"):
        demo_transformer.vit_maps(np.zeros((1, 5, 5)), 8, 16)


def test_region_shares_by_hand():
    relevance = np.array([[[1.0, -2.0], [3.0, 0.0]]])
    region = np.array([[[True, True], [False, False]]])
    shares = demo_transformer.region_shares(relevance, region)
    np.testing.assert_allclose(shares["abs"], [3 / 6])
    np.testing.assert_allclose(shares["positive"], [1 / 4])
    with pytest.raises(ValueError, match="empty"):
        demo_transformer.region_shares(relevance, np.zeros_like(region))


def test_bad_vit_argument_is_a_one_line_usage_error(tmp_path, capsys):
    assert demo.main(["--transformer", "--n-images", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == "jxai demo --transformer: error: --n-images 0: expected an integer >= 1\n"
    assert demo.main(["--transformer", "--vit-epochs", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vit-epochs" in err


def test_untrained_network_does_not_single_out_the_marker():
    """The contrast to the trained run: the same architecture with random weights spreads
    AttnLRP's relevance, so the > 3/T property above needs a model that learned the marker."""
    data = make_marker_tokens(16, length=LENGTH, vocab=32, seed=10_001)
    net = get("bert", pretrained=False, key=0, vocab_size=32,
                          max_position_embeddings=LENGTH, sequence_length=LENGTH,
                          **demo_transformer.BERT_CONFIG)
    relevance = jxai.explain(net, jnp.asarray(data.x), "lrp.attn_lrp", target=data.y)
    assert demo_transformer.marker_shares(relevance, data.marker_mask)["abs"].mean() < 3 / LENGTH
