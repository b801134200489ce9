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
from jxai.models import get
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


def test_tiny_run_finds_the_marker(tmp_path):
    out = tmp_path / "out"
    assert demo.main(["--transformer", "--out", str(out), "--train-size", "1024",
                      "--epochs", "4", "--n-sequences", "8"]) == 0
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "heatmaps.html",
                                              "heatmaps.png", "attributions.npz"}
    report = json.loads((out / "report.json").read_text())
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


def test_untrained_network_does_not_single_out_the_marker():
    """The contrast to the trained run: the same architecture with random weights spreads
    AttnLRP's relevance, so the > 3/T property above needs a model that learned the marker."""
    data = make_marker_tokens(16, length=LENGTH, vocab=32, seed=10_001)
    net = get("bert", pretrained=False, key=0, vocab_size=32,
                          max_position_embeddings=LENGTH, sequence_length=LENGTH,
                          **demo_transformer.BERT_CONFIG)
    relevance = jxai.explain(net, jnp.asarray(data.x), "lrp.attn_lrp", target=data.y)
    assert demo_transformer.marker_shares(relevance, data.marker_mask)["abs"].mean() < 3 / LENGTH
