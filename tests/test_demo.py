"""``jxai demo``: the relevance-share score against a literal formula, and tiny end-to-end runs
(the shipped checkpoint, and a short retraining)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jxai import cli
from jxai.demo import main, relevance_shares


def test_relevance_shares_literal_formula():
    marker = np.zeros((2, 4, 4), bool)
    marker[:, 0, 0] = True
    obj = np.zeros((2, 4, 4), bool)
    obj[:, 2:, 2:] = True
    relevance = np.zeros((2, 4, 4, 1))
    relevance[0, 0, 0] = 3.0  # marker
    relevance[0, 3, 3] = 1.0  # object
    relevance[0, 1, 2] = 4.0  # elsewhere
    relevance[0, 1, 1] = -50.0  # negative relevance is ignored
    shares = relevance_shares(relevance, marker, obj)
    np.testing.assert_allclose(shares["marker"], [3 / 8, 0.0])
    np.testing.assert_allclose(shares["object"], [1 / 8, 0.0])
    np.testing.assert_allclose(shares["rest"], [4 / 8, 0.0])  # image 2: no positive relevance
    with pytest.raises(ValueError, match="does not match the masks"):
        relevance_shares(np.zeros((2, 5, 5)), marker, obj)


def test_demo_tiny_run_shows_the_shortcut(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--n-images", "2",
                     "--methods", "lrp.epsilon,gradient,cam"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[1/5] loading" in printed and "skipped" in printed and "[5/5]" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "attributions.npz", "comparison.png", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["biased"] > 0.97 and report["accuracy"]["unbiased"] < 0.7
    assert report["accuracy"]["follows_marker"] > 0.95
    assert set(report["summary"]["methods"]) == {"lrp.epsilon", "gradient"}
    assert "cam" in report["skipped"]
    for scores in report["summary"]["methods"].values():
        total = scores["marker_share"] + scores["object_share"] + scores["rest_share"]
        assert total == pytest.approx(1.0)
    lrp = report["summary"]["methods"]["lrp.epsilon"]
    assert lrp["marker_share"] > 2 * lrp["object_share"]  # the marker is 1.6 % of the image
    assert report["summary"]["lrp"]["exposes_shortcut"]
    assert "LRP exposes the shortcut" in report["verdict"]
    assert "| lrp.epsilon |" in (out / "report.md").read_text()
    with Image.open(out / "comparison.png") as image:
        width, height = image.size
    assert width > height > 100  # 2 rows, input + 2 method columns
    saved = np.load(out / "attributions.npz")
    assert saved["lrp.epsilon"].shape == (2, 64, 64, 1)
    # The score in the report is the literal share of the saved maps.
    shares = relevance_shares(saved["lrp.epsilon"], saved["marker_mask"], saved["object_mask"])
    assert float(shares["marker"].mean()) == pytest.approx(lrp["marker_share"])
    assert not list(out.glob(".*"))  # no temporary files left


def test_demo_retrains_when_asked(tmp_path):
    out = tmp_path / "retrained"
    assert main(["--out", str(out), "--retrain", "--epochs", "1", "--train-size", "128",
                 "--n-images", "1", "--methods", "gradient"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"] == "trained"
    assert (out / "checkpoint" / "network.json").is_file()
    from jxai.models import checkpoint

    assert checkpoint.load(out / "checkpoint").param_count() == 285_634
