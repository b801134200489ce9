"""``jxai demo``: the relevance-share score against a literal formula, and tiny end-to-end runs
(the shipped checkpoint, and a short retraining)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from jxai import cli, demo
from jxai.demo import main, relevance_shares, why_skipped


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


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_demo_tiny_run_shows_the_shortcut(tmp_path, capsys, umask_022):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--n-images", "2",
                     "--methods", "lrp.epsilon,lrp.alpha_beta,lrp,gradient,cam"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[1/5] loading" in printed and "skipped" in printed and "[5/5]" in printed
    figures = ["comparison.png", "gradients.png", "lrp_composites.png", "lrp_rules.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["attributions.npz", "report.json", "report.md", *figures])
    # every output has a plain open()'s permissions under umask 022 (mkstemp gave 0600)
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["biased"] > 0.97 and report["accuracy"]["unbiased"] < 0.7
    assert report["accuracy"]["follows_marker"] > 0.95
    # the methods that need parameters get them from the demo and run
    assert set(report["summary"]["methods"]) == {"lrp.epsilon", "lrp.alpha_beta", "lrp",
                                                 "gradient"}
    assert report["figures"] == {
        "comparison.png": ["lrp.epsilon", "gradient"],
        "lrp_rules.png": ["lrp.epsilon", "lrp.alpha_beta"],
        "lrp_composites.png": ["lrp"],
        "gradients.png": ["gradient"],
    }
    # cam does not apply (no global average pooling): its whole message, one sentence
    assert list(report["skipped"]) == ["cam"]
    assert report["skipped"]["cam"].startswith("no jxai.layers.GlobalAvgPool module is called")
    assert report["skipped"]["cam"].endswith("works on any network.")
    markdown = (out / "report.md").read_text()
    assert "- `cam`: no jxai.layers.GlobalAvgPool" in markdown
    assert "missing" not in markdown and "_lrp" not in markdown and "Error" not in markdown
    assert "| lrp.epsilon |" in markdown and "- `lrp_rules.png`: `lrp.epsilon`" in markdown
    assert "- `lrp.alpha_beta`: alpha=1.5 (so beta=0.5)" in markdown
    for scores in report["summary"]["methods"].values():
        total = scores["marker_share"] + scores["object_share"] + scores["rest_share"]
        assert total == pytest.approx(1.0)
    lrp = report["summary"]["methods"]["lrp.epsilon"]
    assert lrp["marker_share"] > 2 * lrp["object_share"]  # the marker is 1.6 % of the image
    assert report["summary"]["lrp"]["exposes_shortcut"]
    assert "LRP exposes the shortcut" in report["verdict"]
    # family_figure's size: (1.45 in × columns + 1.3, 1.45 in × rows + 1.6) at 100 dpi
    columns = {"comparison.png": 3, "lrp_rules.png": 3, "lrp_composites.png": 2,
               "gradients.png": 2}
    for name, n in columns.items():
        with Image.open(out / name) as image:
            assert image.size == (round((1.45 * n + 1.3) * 100), 450), name
    saved = np.load(out / "attributions.npz")
    assert saved["lrp.epsilon"].shape == (2, 64, 64, 1)
    # The score in the report is the literal share of the saved maps.
    shares = relevance_shares(saved["lrp.epsilon"], saved["marker_mask"], saved["object_mask"])
    assert float(shares["marker"].mean()) == pytest.approx(lrp["marker_share"])
    assert not list(out.glob(".*"))  # no temporary files left


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        demo._atomic(tmp_path / "a.md", lambda f: f.write(b"text"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.md").stat().st_mode) == 0o640
    assert (tmp_path / "a.md").read_text() == "text"


def test_why_skipped_is_one_whole_sentence():
    def needs(x, *, composite):
        return x

    with pytest.raises(TypeError) as missing:
        needs(1)
    assert why_skipped(missing.value, "lrp") == (
        "needs the parameter composite: pass composite=… to jxai.explain.")
    long = ValueError("cam: no pooling after layer 'c'; CAM needs\nglobal average pooling" * 3)
    assert why_skipped(long, "cam") == " ".join(str(long).split())[len("cam: "):] + "."
    assert why_skipped(NameError("name 'x' is not defined"), "m") == (
        "failed with an unexpected NameError (name 'x' is not defined); this is a bug in jxai, "
        "please report it.")


def test_demo_retrains_when_asked(tmp_path):
    out = tmp_path / "retrained"
    assert main(["--out", str(out), "--retrain", "--epochs", "1", "--train-size", "128",
                 "--n-images", "1", "--methods", "gradient"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"] == "trained"
    assert (out / "checkpoint" / "network.json").is_file()
    from jxai.models import checkpoint

    assert checkpoint.load(out / "checkpoint").param_count() == 285_634


def test_a_method_outside_the_figure_lists_goes_to_its_registered_family(registered_cam_like):
    """A method none of demo.FAMILIES lists is filed by its registry family, not by its name."""
    assert demo._family(registered_cam_like) == "cam.png"
    assert demo._family("lrp.epsilon") == "lrp_rules.png"  # listed: its own figure
    groups = demo._figure_groups(["lrp.epsilon", registered_cam_like])
    assert groups["cam.png"][1] == [registered_cam_like]


@pytest.fixture
def registered_cam_like():
    """A user method named like a gradient method but registered in the cam family."""
    import jxai
    from jxai import contract

    name = "user_gradient_named_map"

    def fn(ctx, x, target):
        return ctx.backward(x, target).grad

    jxai.register_method(name, fn, family="cam")
    yield name
    contract._REGISTRY.pop(name, None)
