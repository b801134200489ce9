"""Every usage error of the ``jxai`` commands is ONE line on stderr and exit status 2, never a
traceback, and is found before anything costlier happens.

One table, one row per mistake: ``(id, argv, expected substring of the line, stage)``. The
stage says how far the command may get before it refuses, and the test checks that it got no
further:

* ``args``: the flags, the method and its parameters, the inputs, the output folder: the model
  is never loaded and ``--out`` never created;
* ``model``: the model cannot be loaded;
* ``target``: the model is loaded, the target classes do not fit its outputs: nothing compiled;
* ``compile``: the method refuses its arguments while the first step is compiled.

After ``model``, ``target`` and ``compile`` the ``--out`` folder the command created for the
run is removed again, so no row leaves anything behind. argv entries ``{name}`` are paths of
the files made by the ``files`` fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import jxai
from jxai import batch_cli, cli

MODEL = "tabular_mlp"  # 37 inputs, 1 output: tiny, and every class index >= 1 is out of range

EXPLAIN_ROWS = [
    # -- the method and its parameters (checked against the method's signature)
    ("method typo", ["--method", "lrp.epsilom"],
     "unknown method 'lrp.epsilom'; did you mean 'lrp.epsilon'", "args"),
    ("param not an int", ["--method", "integrated_gradients", "--param", "steps=abc"],
     "--param steps=abc: steps takes an integer", "args"),
    ("param float for an int", ["--method", "integrated_gradients", "--param", "steps=2.5"],
     "--param steps=2.5: steps takes an integer", "args"),
    ("param name typo", ["--method", "integrated_gradients", "--param", "stepz=3"],
     "'integrated_gradients' takes no parameter 'stepz'; did you mean 'steps'?", "args"),
    ("param without value", ["--method", "gradient", "--param", "n"],
     "--param 'n': expected KEY=VALUE", "args"),
    ("param not a number", ["--method", "lrp.epsilon", "--param", "epsilon=small"],
     "--param epsilon=small: epsilon takes a number", "args"),
    ("param not a bool", ["--method", "lrp.epsilon", "--param", "bias=maybe"],
     "--param bias=maybe: bias takes true or false", "args"),
    ("wrapped method's param", ["--method", "smoothgrad", "--param", "wrapped=lrp.epsilon",
                                "--param", "epsilon=x"],
     "--param epsilon=x: epsilon takes a number", "args"),
    ("wrapped method typo", ["--method", "smoothgrad", "--param", "wrapped=lrp.epsilom"],
     "smoothgrad: wrapped='lrp.epsilom': unknown method 'lrp.epsilom'", "args"),
    ("param of another method", ["--method", "gradient", "--param", "steps=4"],
     "'gradient' takes no parameter 'steps'", "args"),
    ("required params missing", ["--method", "deep_taylor.bounded"],
     "deep_taylor.bounded needs --param low=... --param high=...", "args"),
    ("the run's seed is no param", ["--method", "gradient", "--param", "seed=1"],
     "'gradient' takes no parameter 'seed'", "args"),
    ("param named like the pipeline's", ["--method", "integrated_gradients", "--param",
                                         "batch_size=4"],
     "--param batch_size: jxai explain cannot pass integrated_gradients's 'batch_size'", "args"),
    # -- the other flags
    ("batch size 0", ["--method", "gradient", "--batch-size", "0"],
     "--batch-size 0: expected an integer >= 1", "args"),
    ("batch size negative", ["--method", "gradient", "--batch-size", "-3"],
     "--batch-size -3: expected an integer >= 1", "args"),
    ("workers 0", ["--method", "gradient", "--workers", "0"],
     "--workers 0: expected an integer >= 1", "args"),
    ("seed negative", ["--method", "gradient", "--seed", "-1"],
     "--seed -1: expected an integer in 0..4294967295", "args"),
    ("seed not an int", ["--method", "gradient", "--seed", "x"],
     "argument --seed: invalid int value: 'x'", "args"),
    ("format", ["--method", "gradient", "--format", "bogus"],
     "argument --format: invalid choice: 'bogus'", "args"),
    ("size without x", ["--method", "gradient", "--size", "12"],
     "--size 12: expected HEIGHTxWIDTH", "args"),
    ("size not numbers", ["--method", "gradient", "--size", "axb"],
     "--size axb: expected HEIGHTxWIDTH", "args"),
    ("size zero", ["--method", "gradient", "--size", "0x4"],
     "--size 0x4: height and width must be >= 1", "args"),
    ("channels", ["--method", "gradient", "--channels", "2"],
     "argument --channels: invalid choice: 2", "args"),
    ("preprocess", ["--method", "gradient", "--preprocess", "bogus"],
     "argument --preprocess: invalid choice: 'bogus'", "args"),
    ("unknown flag", ["--method", "gradient", "--bogus"],
     "unrecognized arguments: --bogus", "args"),
    ("method missing", [], "the following arguments are required: --method", "args"),
    # -- inputs
    ("inputs missing", ["!no-inputs", "--method", "gradient"],
     "the following arguments are required: inputs", "args"),
    ("input does not exist", ["!inputs={missing}", "--method", "gradient"],
     "does not exist", "args"),
    ("glob matches nothing", ["!inputs={tmp}/none*.npy", "--method", "gradient"],
     "matches no file", "args"),
    ("npz member missing", ["!inputs={npz}", "--method", "gradient", "--array-key", "nope"],
     "has no array 'nope'", "args"),
    # -- targets: form and count before the model, range after it
    ("target word", ["--method", "gradient", "--target", "cat"],
     "--target cat: expected max, all, an integer", "args"),
    ("labels file missing", ["--method", "gradient", "--target", "{tmp}/labels.txt"],
     "labels.txt: no such labels file", "args"),
    ("labels count", ["--method", "gradient", "--target", "{labels_short}"],
     "2 labels for 3 inputs", "args"),
    ("labels not integers", ["--method", "gradient", "--target", "{labels_float}"],
     "labels must be integers", "args"),
    ("target too large", ["--method", "gradient", "--target", "99999"],
     "--target 99999 is out of range: the network has 1 output per sample", "target"),
    ("target negative", ["--method", "gradient", "--target", "-5"],
     "--target -5 is out of range (negative indices do not count from the end)", "target"),
    ("one of several targets", ["--method", "gradient", "--target", "0,3"],
     "--target[1] = 3 is out of range", "target"),
    ("label out of range", ["--method", "gradient", "--target", "{labels_range}"],
     "labels_range.txt: label[2] = 3 is out of range", "target"),
    # -- the output folder: made and probed before the model is loaded
    ("out under a file", ["--method", "gradient", "--out", "{file}/out"],
     "cannot write there (Not a directory)", "args"),
    ("out is a file", ["--method", "gradient", "--out", "{file}"],
     "exists and is not a folder", "args"),
    # -- the model
    ("unknown zoo name", ["!model=tabular-mlp", "--method", "gradient"],
     "cannot load 'tabular-mlp': it is no file, folder or zoo model name", "model"),
    ("model file not Keras", ["!model={npy}", "--method", "gradient"],
     "x.npy': it is a file without a Keras suffix", "model"),
    ("h5 not HDF5", ["!model={not_keras}", "--method", "gradient"],
     "neither HDF5 nor a zip archive", "model"),
    ("h5 model_config not JSON", ["!model={bad_config}", "--method", "gradient"],
     "model_config is not valid JSON", "model"),
    # -- what only the method can tell, at its first compile
    ("CAM without convolutions", ["--method", "grad_cam"],
     "grad_cam: the network has no flax.linen.Conv layer", "compile"),
    ("composite typo", ["--method", "gradient", "--param", "composite=lrp.epsilom"],
     "composite 'lrp.epsilom' is not a preset name", "compile"),
]

CONVERT_ROWS = [
    ("arguments missing", [], "the following arguments are required: model, outdir"),
    ("model missing", ["{missing}", "{tmp}/ckpt"], "missing.npy: no such file"),
    ("model not Keras", ["{not_keras}", "{tmp}/ckpt"], "neither HDF5 nor a zip archive"),
    ("model_config not JSON", ["{bad_config}", "{tmp}/ckpt"], "model_config is not valid JSON"),
    ("outdir is a file", ["{bad_config}", "{file}"], "exists and is not a folder"),
    ("outdir holds other files", ["{bad_config}", "{full}"], "is not a jxai checkpoint"),
    ("outdir holds a checkpoint", ["{bad_config}", "{old_checkpoint}"],
     "already holds a converted network; pass --overwrite"),
    ("outdir under a file", ["{bad_config}", "{file}/ckpt"],
     "OUTDIR's folder {file}: exists and is not a folder"),
    ("outdir's folder cannot be made", ["{bad_config}", "{file}/sub/ckpt"],
     "cannot write there (Not a directory)"),
    ("unknown flag", ["{bad_config}", "{tmp}/ckpt", "--bogus"], "unrecognized arguments"),
]

DEMO_ROWS = [  # each refused before the network is loaded or trained
    ("n-images 0", ["--n-images", "0"], "--n-images 0: expected an integer >= 1"),
    ("n-images not an int", ["--n-images", "x"], "argument --n-images: invalid int value"),
    ("epochs 0", ["--retrain", "--epochs", "0"], "--epochs 0: expected an integer >= 1"),
    ("train size negative", ["--retrain", "--train-size", "-1"],
     "--train-size -1: expected an integer >= 1"),
    ("method typo", ["--methods", "lrp.epsilom,gradient"],
     "unknown method 'lrp.epsilom'; did you mean 'lrp.epsilon'"),
    ("no method", ["--methods", " , "], "name at least one method, or all"),
    ("checkpoint missing", ["--checkpoint", "{tmp}/nowhere"], "no network.json there"),
    ("out is a file", ["--out", "{file}"], "exists and is not a folder"),
    ("unknown flag", ["--bogus"], "unrecognized arguments: --bogus"),
]

JXAI_ROWS = [
    ("unknown command", ["explian"], "unknown command 'explian'; did you mean 'explain'?"),
    ("unknown command, no match", ["frobnicate"], "commands: demo, convert, explain"),
]


@pytest.fixture
def files(tmp_path):
    """The inputs and broken files the rows name, all tiny."""
    x = np.random.RandomState(0).rand(3, 37).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    (tmp_path / "labels_short.txt").write_text("0\n0\n")
    (tmp_path / "labels_range.txt").write_text("0\n0\n3\n")
    np.save(tmp_path / "labels_float.npy", np.array([0.0, 0.5, 0.0]))
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "not_keras.h5").write_text("hello")
    with h5py.File(tmp_path / "bad_config.h5", "w") as f:
        f.attrs["model_config"] = "{not json"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "old_checkpoint").mkdir()
    (tmp_path / "old_checkpoint" / "network.json").write_text("{}")
    return {"tmp": str(tmp_path), "npy": str(tmp_path / "x.npy"), "npz": str(tmp_path / "x.npz"),
            "missing": str(tmp_path / "missing.npy"), "file": str(tmp_path / "afile"),
            "labels_short": str(tmp_path / "labels_short.txt"),
            "labels_range": str(tmp_path / "labels_range.txt"),
            "labels_float": str(tmp_path / "labels_float.npy"),
            "not_keras": str(tmp_path / "not_keras.h5"),
            "bad_config": str(tmp_path / "bad_config.h5"), "full": str(tmp_path / "full"),
            "old_checkpoint": str(tmp_path / "old_checkpoint")}


def _explain_argv(row_argv: list[str], files: dict) -> list[str]:
    """``explain MODEL INPUT ... --out OUT --quiet`` with the row's flags; ``!model=``,
    ``!inputs=`` and ``!no-inputs`` replace the defaults."""
    model, inputs, flags = MODEL, ["{npy}"], []
    for arg in row_argv:
        if arg.startswith("!model="):
            model = arg[len("!model="):]
        elif arg.startswith("!inputs="):
            inputs = [arg[len("!inputs="):]]
        elif arg == "!no-inputs":
            inputs = []
        else:
            flags.append(arg)
    if "--out" not in flags:
        flags += ["--out", "{tmp}/out"]
    argv = ["explain", model, *inputs, *flags, "--quiet"]
    return [arg.format(**files) for arg in argv]


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "expected", "stage"), [row[1:] for row in EXPLAIN_ROWS],
                         ids=[row[0] for row in EXPLAIN_ROWS])
def test_explain_usage_error_is_one_line(argv, expected, stage, files, monkeypatch, capsys):
    loaded, compiled = [], []
    load, explain_dataset = batch_cli.load_model, batch_cli.explain_dataset
    monkeypatch.setattr(batch_cli, "load_model", lambda spec: loaded.append(spec) or load(spec))
    monkeypatch.setattr(batch_cli, "explain_dataset",
                        lambda *a, **k: compiled.append(a) or explain_dataset(*a, **k))

    assert cli.main(_explain_argv(argv, files)) == 2
    line = _one_error_line(capsys, "jxai explain")
    assert expected in line
    assert bool(loaded) == (stage != "args")        # the model only after the arguments
    assert bool(compiled) == (stage == "compile")   # nothing compiled before the targets pass
    assert not os.path.exists(os.path.join(files["tmp"], "out"))  # nothing written, no folder


@pytest.mark.parametrize(("argv", "expected"), [row[1:] for row in CONVERT_ROWS],
                         ids=[row[0] for row in CONVERT_ROWS])
def test_convert_usage_error_is_one_line(argv, expected, files, capsys):
    before = sorted(os.listdir(files["tmp"]))
    assert cli.main(["convert", *(arg.format(**files) for arg in argv)]) == 2
    assert expected.format(**files) in _one_error_line(capsys, "jxai convert")
    assert sorted(os.listdir(files["tmp"])) == before  # no checkpoint, no temporary folder
    assert os.listdir(files["full"]) == ["notes.txt"]


@pytest.mark.parametrize(("argv", "expected"), [row[1:] for row in DEMO_ROWS],
                         ids=[row[0] for row in DEMO_ROWS])
def test_demo_usage_error_is_one_line(argv, expected, files, monkeypatch, capsys):
    from jxai import demo

    def must_not_load(*args, **kwargs):
        raise AssertionError("the network was loaded or trained before the flags were checked")

    monkeypatch.setattr(demo, "_load_or_train", must_not_load)
    argv = [arg.format(**files) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", os.path.join(files["tmp"], "demo")]
    assert cli.main(["demo", *argv]) == 2
    assert expected in _one_error_line(capsys, "jxai demo")
    assert not os.path.exists(os.path.join(files["tmp"], "demo"))


@pytest.mark.parametrize(("argv", "expected"), [row[1:] for row in JXAI_ROWS],
                         ids=[row[0] for row in JXAI_ROWS])
def test_jxai_usage_error_is_one_line(argv, expected, capsys):
    assert cli.main(argv) == 2
    assert expected in _one_error_line(capsys, "jxai")


def test_explain_help_lists_zoo_models_and_methods(capsys):
    assert cli.main(["explain", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for name in [*jxai.models.NAMES, *jxai.list_methods()]:
        assert f" {name}," in help_text or f" {name} " in help_text, name


def test_typed_params_reach_the_method(files, capsys):
    """``--param steps=2`` arrives as the int 2 and ``sigma_mode`` / ``wrapped`` as strings: the
    files equal in-memory `jxai.explain` with the same keywords."""
    network = jxai.models.get(MODEL, pretrained=False)
    x = np.load(files["npy"])
    out = os.path.join(files["tmp"], "ig")
    assert cli.main(["explain", MODEL, files["npy"], "--method", "integrated_gradients",
                     "--param", "steps=2", "--param", "wrapped=lrp.epsilon",
                     "--param", "epsilon=1", "--out", out, "--quiet"]) == 0
    want = np.asarray(jxai.explain(network, x, "integrated_gradients", steps=2,
                                   wrapped="lrp.epsilon", epsilon=1.0))
    got = np.stack([np.load(os.path.join(out, f"x_{i:06d}.npy")) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_no_traceback_reaches_the_terminal(files):
    """The installed entry point in a fresh process (``python -m jxai.cli``): a target the model
    does not have, found after loading it, is one line on stderr and exit status 2."""
    out = os.path.join(files["tmp"], "out")
    command = [sys.executable, "-m", "jxai.cli", "explain", MODEL, files["npy"], "--method",
               "gradient", "--target", "7", "--out", out]
    env = dict(os.environ, PYTHONWARNINGS="ignore::UserWarning")  # the zoo's untrained warning
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "jxai explain: error: --target 7 is out of range: the network has 1 output per sample "
        "(valid targets 0..0)"]
    assert not os.path.exists(out)
