"""Batch explanation: reading and preprocessing inputs, atomic outputs, the streaming pipeline,
and ``jxai explain`` end to end on a folder of generated images (one of them corrupt).

Oracles: literal numpy formulas for the preprocessing modes (Keras ``preprocess_input``), the
same function applied in memory for the pipeline, and in-memory `jxai.explain` on the same
batches for the command's output files (byte equality).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jxai import io as jio

PIL = pytest.importorskip("PIL.Image")


# -- inputs ------------------------------------------------------------------------------------
def _write_png(path, array):
    PIL.fromarray(array).save(path)


def test_list_inputs_folder_glob_and_arrays(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    rgb = np.zeros((4, 5, 3), np.uint8)
    for name in ["b.png", "a.PNG", "sub/c.jpg", "notes.txt"]:
        path = tmp_path / "imgs" / name
        if name.endswith("txt"):
            path.write_text("not an image")
        else:
            PIL.fromarray(rgb).save(path, format="JPEG" if name.endswith("jpg") else "PNG")
    items = jio.list_inputs(tmp_path / "imgs")
    assert [i.name for i in items] == ["a.PNG", "b.png", os.path.join("sub", "c.jpg")]
    assert [i.name for i in jio.list_inputs(str(tmp_path / "imgs" / "*.png"))] == ["b.png"]
    recursive = jio.list_inputs(str(tmp_path / "imgs" / "**" / "*.jpg"))
    assert [i.name for i in recursive] == [os.path.join("sub", "c.jpg")]

    data = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    np.save(tmp_path / "x.npy", data)
    rows = jio.list_inputs(tmp_path / "x.npy")
    assert [r.name for r in rows][:2] == ["x_000000", "x_000001"] and len(rows) == 7
    np.testing.assert_array_equal(jio.load_item(rows[5]), data[5])
    assert str(jio.output_path("o", rows[5].name, "npy")) == os.path.join("o", "x_000005.npy")

    with pytest.raises(FileNotFoundError, match="matches no file"):
        jio.list_inputs(str(tmp_path / "*.tif"))
    with pytest.raises(ValueError, match="would both be written"):
        jio.list_inputs([tmp_path / "imgs" / "b.png", tmp_path / "imgs"])


def test_npz_members_are_memory_mapped_when_stored(tmp_path):
    x = np.random.RandomState(0).rand(6, 2, 2).astype(np.float32)
    np.savez(tmp_path / "stored.npz", x=x, y=np.arange(6))
    np.savez_compressed(tmp_path / "packed.npz", images=x)
    mapped, key = jio.open_array(str(tmp_path / "stored.npz"))
    assert key == "x" and isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, x)
    loaded, key = jio.open_array(str(tmp_path / "packed.npz"))
    assert key == "images" and not isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, x)
    np.testing.assert_array_equal(jio.open_array(str(tmp_path / "stored.npz"), "y")[0],
                                  np.arange(6))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(ValueError, match="--array-key"):
        jio.list_inputs(tmp_path / "two.npz")


def test_read_image_modes_and_corrupt_file(tmp_path):
    gray16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    PIL.fromarray(gray16).save(tmp_path / "g.tif")
    out = jio.read_image(str(tmp_path / "g.tif"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, gray16)
    palette = PIL.fromarray(np.full((2, 2, 3), 200, np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert jio.read_image(str(tmp_path / "p.png")).shape == (2, 2, 3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(jio.InputError, match="cannot decode the image"):
        jio.read_image(str(tmp_path / "bad.png"))


# -- preprocessing (oracle: keras.applications.imagenet_utils formulas written out) ------------
def test_preprocess_modes_match_keras_formulas():
    rgb = np.random.RandomState(1).randint(0, 256, (4, 5, 3)).astype(np.uint8)
    x = rgb.astype(np.float64)
    caffe = jio.Preprocess(mode="caffe")(rgb)
    np.testing.assert_allclose(caffe, x[..., ::-1] - [103.939, 116.779, 123.68], atol=1e-4)
    torch = jio.Preprocess(mode="torch")(rgb)
    want = (x / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(torch, want, atol=1e-5)
    np.testing.assert_allclose(jio.Preprocess(mode="tf")(rgb), x / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(jio.Preprocess(mode="unit")(rgb), x / 255.0, atol=1e-7)
    np.testing.assert_array_equal(jio.Preprocess(mode="raw")(rgb), x.astype(np.float32))
    # 16-bit: unit divides by 65535, caffe sees 0..255
    gray16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_allclose(jio.Preprocess(mode="unit")(gray16)[..., 0], [[0.0, 1.0]])
    three = jio.Preprocess(mode="caffe", channels=3)(gray16)
    np.testing.assert_allclose(three[0, 1], 255.0 - np.array([103.939, 116.779, 123.68]),
                               atol=1e-4)
    with pytest.raises(jio.InputError, match="needs 3 channels"):
        jio.Preprocess(mode="caffe")(gray16)
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        jio.Preprocess(mode="imagenet")


def test_preprocess_channels_resize_and_alpha():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    rgb = jio.Preprocess(channels=3, mode="raw")(gray)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    rgba = np.dstack([np.full((4, 4, 3), [10, 20, 30], np.uint8), np.full((4, 4), 255, np.uint8)])
    luma = jio.Preprocess(channels=1, mode="raw")(rgba)
    np.testing.assert_allclose(luma, 0.299 * 10 + 0.587 * 20 + 0.114 * 30, rtol=1e-6)
    constant = np.full((6, 8, 3), 77, np.uint8)
    resized = jio.Preprocess(size=(3, 5), mode="raw")(constant)
    assert resized.shape == (3, 5, 3)
    np.testing.assert_allclose(resized, 77.0, rtol=1e-6)
    ramp = np.tile(np.arange(8, dtype=np.float32), (2, 1))  # bilinear keeps a linear ramp's mean
    assert abs(jio.resize(ramp, (2, 4)).mean() - ramp.mean()) < 1e-4


# -- outputs -----------------------------------------------------------------------------------
def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out" / "a.npy"
    jio.save_output(target, np.ones(3), "npy")
    np.testing.assert_array_equal(np.load(target), np.ones(3))

    def broken(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jio.atomic_write(target, broken)
    np.testing.assert_array_equal(np.load(target), np.ones(3))
    assert sorted(os.listdir(target.parent)) == ["a.npy"]
    (target.parent / f".b.npy.123{jio.TEMP_MARKER}").write_bytes(b"x")
    assert jio.remove_stale_temporaries(tmp_path) == 1


def test_output_formats(tmp_path):
    a = np.array([[-2.0, 0.0], [1.0, 2.0]], np.float32)
    jio.save_output(tmp_path / "a.npz", a, "npz", name="img.png", method="lrp.epsilon")
    with np.load(tmp_path / "a.npz") as z:
        np.testing.assert_array_equal(z["attribution"], a)
        assert str(z["name"]) == "img.png" and str(z["method"]) == "lrp.epsilon"
    jio.save_output(tmp_path / "a.png", a, "png")
    rgb = np.asarray(PIL.open(tmp_path / "a.png"))
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 255])      # most negative: blue
    np.testing.assert_array_equal(rgb[0, 1], [255, 255, 255])  # zero: white
    np.testing.assert_array_equal(rgb[1, 1], [255, 0, 0])      # most positive: red
    np.testing.assert_array_equal(rgb[1, 0], [255, 128, 128])  # half: light red
    with pytest.raises(ValueError, match="use --format npy"):
        jio.save_output(tmp_path / "b.png", np.zeros((2, 3, 4, 5)), "png")


# -- the pipeline with a plain function (no engine) --------------------------------------------
def test_pipeline_order_padding_and_bad_items():
    import jax.numpy as jnp

    from jxai.batch import explain_dataset

    x = np.random.RandomState(0).rand(19, 5, 3).astype(np.float32)
    items = [(f"i{k}", x[k]) for k in range(19)]
    items.insert(4, ("wrong", np.zeros((2, 2), np.float32)))
    items.insert(11, ("nan-shape", np.zeros((5, 3, 1), np.float32)))
    calls = []

    def fn(batch):
        calls.append(batch.shape)  # traced once per compiled shape
        return jnp.tanh(batch) * batch.sum(axis=(1, 2), keepdims=True)

    results = list(explain_dataset(None, items, fn, batch_size=4, workers=2, prefetch=1))
    assert [r.name for r in results] == [name for name, _ in items]
    assert [r.index for r in results] == list(range(21))
    bad = {r.name: r.error for r in results if not r.ok}
    assert set(bad) == {"wrong", "nan-shape"} and "differs from the model input" in bad["wrong"]
    good = np.stack([r.attribution for r in results if r.ok])
    want = np.tanh(x) * x.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(good, want, rtol=1e-6)
    assert calls == [(4, 5, 3)]  # 19 good items: 4 full batches + 1 padded, one compilation


def test_progress_line():
    import io

    from jxai.progress import Progress

    stream = io.StringIO()
    progress = Progress(100, stream=stream)
    progress.samples.clear()
    progress.samples.extend([(0.0, 0), (10.0, 40)])
    progress.done, progress.failed = 40, 2
    line = progress.line(now=progress.start + 10.0)
    assert "40/100" in line and "4.0 items/s" in line and "ETA 0:15" in line
    assert "failed 2" in line and "elapsed 0:10" in line


# -- end to end with the engine ----------------------------------------------------------------
def tiny_network(size: int = 8, channels: int = 3, classes: int = 3):
    """A two-layer CNN small enough to compile in a second (also used by test_sharding)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jxai

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(classes, name="dense")(x)

    module = Tiny()
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, channels)))
    return jxai.Network(module, variables, {"name": "tiny", "input_shape": (size, size, channels)})


@pytest.fixture
def image_folder(tmp_path):
    """11 RGB PNGs (one 16-bit grayscale TIFF among them), one of another size, one corrupt."""
    rng = np.random.RandomState(3)
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(10):
        _write_png(folder / f"img{k:02d}.png", rng.randint(0, 256, (8, 8, 3)).astype(np.uint8))
    PIL.fromarray((rng.rand(8, 8) * 65535).astype(np.uint16)).save(folder / "gray16.tif")
    _write_png(folder / "large.png", rng.randint(0, 256, (12, 10, 3)).astype(np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return folder


def _reference(network, folder, names, method, batch, **params):
    """In-memory oracle: Pillow decode, /255, batches padded like the pipeline, jxai.explain."""
    import jxai

    rows = []
    for name in names:
        image = np.asarray(PIL.open(folder / name))
        x = image.astype(np.float32)
        if x.shape[:2] != (8, 8):  # documented order: resize the raw values, then scale
            x = jio.resize(x, (8, 8))
        if x.ndim == 2:  # 16-bit gray: three channels, then to [0, 1]
            x = np.repeat(x[..., None], 3, axis=-1) / 65535.0
        else:
            x = x / 255.0
        rows.append(x.astype(np.float32))
    out = {}
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        padded = np.stack(chunk + [chunk[-1]] * (batch - len(chunk)))
        result = np.asarray(jxai.explain(network, padded, method, **params))
        for k, name in enumerate(names[start:start + batch]):
            out[name] = result[k]
    return out


def _cli(monkeypatch, network, *argv):
    from jxai import batch_cli

    monkeypatch.setattr(batch_cli, "load_model", lambda spec: network)
    return batch_cli.main([str(a) for a in argv])


def test_cli_outputs_equal_in_memory_explain(tmp_path, image_folder, monkeypatch, capsys):
    network = tiny_network()
    out = tmp_path / "out"
    status = _cli(monkeypatch, network, "tiny", image_folder, "--method", "lrp.epsilon",
                  "--batch-size", 4, "--out", out, "--quiet")
    assert status == 1  # one corrupt input
    err = capsys.readouterr().err
    assert "failed      1" in err and "broken.png" in err and "explained   12" in err
    assert (out / "failures.txt").read_text().startswith("broken.png\t")
    good = sorted(p.name for p in image_folder.iterdir() if p.name != "broken.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [n.rsplit(".", 1)[0] + ".npy" for n in good] + ["failures.txt"])
    want = _reference(network, image_folder, good, "lrp.epsilon", 4)
    for name in good:
        got = np.load(out / (name.rsplit(".", 1)[0] + ".npy"))
        assert got.tobytes() == want[name].tobytes(), name


def test_cli_resume_after_interruption(tmp_path, image_folder, monkeypatch, capsys):
    network = tiny_network()
    args = ["tiny", image_folder, "--method", "gradient", "--batch-size", 4, "--quiet"]
    assert _cli(monkeypatch, network, *args, "--out", tmp_path / "full") == 1
    calls = []
    original = jio.BackgroundWriter.submit

    def interrupting(self, path, attribution, name):
        calls.append(name)
        if len(calls) == 6:
            raise KeyboardInterrupt
        original(self, path, attribution, name)

    monkeypatch.setattr(jio.BackgroundWriter, "submit", interrupting)
    part = tmp_path / "part"
    assert _cli(monkeypatch, network, *args, "--out", part) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not [n for n in os.listdir(part) if n.startswith(".")]  # no temporary left
    written = sorted(n for n in os.listdir(part) if n.endswith(".npy"))
    assert len(written) == 5  # broken.png came first: 5 of the 6 submitted were written
    for name in written:  # only complete files
        assert np.load(part / name).shape == (8, 8, 3)

    calls.clear()

    def counting(self, path, attribution, name):
        calls.append(name)
        original(self, path, attribution, name)

    monkeypatch.setattr(jio.BackgroundWriter, "submit", counting)
    assert _cli(monkeypatch, network, *args, "--out", part, "--resume") == 1
    assert len(calls) == 12 - 5  # finished items are not recomputed
    full = sorted(os.listdir(tmp_path / "full"))
    assert sorted(os.listdir(part)) == full
    for name in full:
        if name.endswith(".npy"):
            assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name


def test_cli_targets_formats_and_errors(tmp_path, image_folder, monkeypatch, capsys):
    import jxai

    network = tiny_network()
    out = tmp_path / "multi"
    glob = str(image_folder / "img0[0-4].png")
    assert _cli(monkeypatch, network, "tiny", glob, "--method", "gradient", "--target", "0,2",
                "--batch-size", 2, "--out", out, "--format", "npz", "--quiet") == 0
    x = np.stack([np.asarray(PIL.open(image_folder / f"img0{k}.png")) / 255.0
                  for k in range(5)]).astype(np.float32)
    want = np.asarray(jxai.explain(network, x[:2], "gradient",
                                   target=np.array([[0, 0], [2, 2]])))
    with np.load(out / "img01.npz") as z:
        assert z["attribution"].shape == (2, 8, 8, 3) and str(z["method"]) == "gradient"
        np.testing.assert_allclose(z["attribution"], want[:, 1], rtol=1e-5, atol=1e-7)

    labels = tmp_path / "labels.txt"
    labels.write_text("2\n0\n1\n1\n0\n")
    out = tmp_path / "labelled"
    assert _cli(monkeypatch, network, "tiny", glob, "--method", "gradient", "--target", labels,
                "--batch-size", 4, "--out", out, "--format", "png", "--quiet") == 0
    per_item = np.asarray(jxai.explain(network, x, "gradient", target=np.array([2, 0, 1, 1, 0])))
    png = np.asarray(PIL.open(out / "img03.png"))
    np.testing.assert_array_equal(png, jio.heatmap_rgb(per_item[3]))

    assert _cli(monkeypatch, network, "tiny", glob, "--method", "gradient", "--target", "cat",
                "--out", out) == 2
    assert _cli(monkeypatch, network, "tiny", glob, "--method", "gradient", "--param", "n",
                "--out", out) == 2
    assert _cli(monkeypatch, network, "tiny", str(tmp_path / "none*.png"), "--method",
                "gradient", "--out", out) == 2
    err = capsys.readouterr().err
    assert "expected max, all" in err and "KEY=VALUE" in err and "matches no file" in err


def test_stochastic_methods_use_one_key_per_item_and_target_all():
    import jax

    import jxai
    from jxai.batch import explain_dataset

    network = tiny_network()
    x = np.random.RandomState(5).rand(5, 8, 8, 3).astype(np.float32)

    def run(batch):
        return np.stack([r.attribution for r in explain_dataset(
            network, x, "smoothgrad", batch_size=batch, seed=7, n=4)])

    every = np.stack([r.attribution for r in explain_dataset(network, x, "gradient", "all",
                                                             batch_size=4)])
    np.testing.assert_allclose(every[:4], np.asarray(jxai.explain(network, x[:4], "gradient",
                                                                  target="all")), rtol=1e-6)
    two, four = run(2), run(4)
    np.testing.assert_allclose(two, four, rtol=1e-6, atol=1e-7)
    base = jax.random.PRNGKey(7)
    for i in (0, 3):
        want = jxai.explain(network, x[i:i + 1], "smoothgrad", n=4,
                            key=jax.random.fold_in(base, i))
        np.testing.assert_allclose(four[i], np.asarray(want)[0], rtol=1e-5, atol=1e-7)


def test_zoo_model_on_array_rows(tmp_path, capsys):
    """The real loader (a jxai.models name) on .npy rows, with a NaN row reported and skipped."""
    import jxai.models

    import jxai
    from jxai import batch_cli

    network = jxai.models.get("mnist1d_cnn", pretrained=False).without_output_activation()
    x = np.random.RandomState(0).randn(6, 40, 1).astype(np.float32)
    x[2, 5, 0] = np.nan
    np.save(tmp_path / "signals.npy", x)
    out = tmp_path / "out"
    assert batch_cli.main(["mnist1d_cnn", str(tmp_path / "signals.npy"), "--method", "gradient",
                           "--out", str(out), "--batch-size", "4", "--quiet"]) == 1
    assert "signals_000002: 1 values are NaN or inf" in capsys.readouterr().err
    good = [0, 1, 3, 4, 5]
    want = np.asarray(jxai.explain(network, x[good[:4]], "gradient"))
    np.testing.assert_allclose(np.load(out / "signals_000004.npy"), want[3], rtol=1e-5,
                               atol=1e-7)


def test_real_ctrl_c_then_resume(tmp_path):
    """SIGINT to a running ``jxai explain`` process: exit 130, only complete files, and a
    ``--resume`` run completes the set with the same numbers as in-memory `jxai.explain`.

    The process starts through the console script's entry (`jxai.cli.run`), so on a multi-core
    machine it splits the CPU into one device per core, as the installed ``jxai`` command does.
    """
    import signal
    import subprocess
    import sys
    import time

    import jxai.models

    import jxai

    n = 800
    x = np.random.RandomState(1).randn(n, 40, 1).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    out = tmp_path / "out"
    command = [sys.executable, "-c", "import sys; from jxai.cli import run; "
               "sys.argv.insert(1, 'explain'); run()", "mnist1d_cnn", str(tmp_path / "rows.npy"),
               "--method", "gradient", "--batch-size", "8", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if out.is_dir() and len(os.listdir(out)) >= 40:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:  # finished before the signal landed: nothing left to test
        pytest.skip("the run finished before SIGINT arrived")
    assert process.returncode == 130, err[-2000:]
    names = os.listdir(out)
    assert 0 < len(names) < n and not [m for m in names if not m.endswith(".npy")]
    for name in names:
        assert np.load(out / name).shape == (40, 1)

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed     {len(names)}" in resumed.stderr
    assert len(os.listdir(out)) == n
    network = jxai.models.get("mnist1d_cnn", pretrained=False)
    for i in (0, len(names), n - 1):
        start = i - i % 8
        want = np.asarray(jxai.explain(network, x[start:start + 8], "gradient"))[i - start]
        np.testing.assert_allclose(np.load(out / f"rows_{i:06d}.npy"), want, rtol=1e-5,
                                   atol=1e-6)


def test_keras_file_model(tmp_path, capsys):
    """MODEL as a Keras .h5 file (the converter's fixture): outputs equal jxai.explain on the
    loaded network's logits, images resized to its 12×12 input."""
    import gzip
    import shutil

    import jxai
    from jxai import batch_cli

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "keras", "tf214",
                           "gap_cnn.h5.gz")
    if not os.path.exists(fixture):
        pytest.skip("converter fixture gap_cnn.h5.gz not present")
    model = tmp_path / "gap_cnn.h5"
    with gzip.open(fixture) as source, open(model, "wb") as target:
        shutil.copyfileobj(source, target)
    images = tmp_path / "images"
    images.mkdir()
    rgb = np.random.RandomState(2).randint(0, 256, (3, 12, 12, 3)).astype(np.uint8)
    for k in range(3):
        _write_png(images / f"{k}.png", rgb[k])
    out = tmp_path / "out"
    assert batch_cli.main([str(model), str(images), "--method", "lrp.epsilon", "--out", str(out),
                           "--batch-size", "4", "--quiet"]) == 0
    network = jxai.load_keras(str(model))
    padded = np.concatenate([rgb, rgb[-1:]]).astype(np.float32) / 255.0
    want = np.asarray(jxai.explain(network, padded, "lrp.epsilon"))
    for k in range(3):
        np.testing.assert_allclose(np.load(out / f"{k}.npy"), want[k], rtol=1e-5, atol=1e-7)


def test_autotune_times_the_cpu_variants_and_keeps_one(caplog):
    import logging

    import jax

    from jxai import batch

    network = tiny_network()
    x = np.random.RandomState(5).rand(10, 8, 8, 3).astype(np.float32)
    plain = [r.attribution for r in batch.explain_dataset(network, x, "gradient", batch_size=4)]
    with caplog.at_level(logging.INFO, logger="jxai.batch"):
        tuned = list(batch.explain_dataset(network, x, "gradient", batch_size=4, autotune=True))
    assert [r.index for r in tuned] == list(range(10))
    np.testing.assert_allclose(np.stack([r.attribution for r in tuned]), np.stack(plain),
                               rtol=1e-5, atol=1e-6)
    report = [r.getMessage() for r in caplog.records if "autotune" in r.getMessage()]
    if jax.default_backend() == "cpu":
        assert len(report) == 1 and report[0].count("(chosen)") == 1
        assert all(name in report[0] for name in batch.CPU_VARIANTS)
    else:
        assert report == []


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's kernel libraries")
@pytest.mark.parametrize("kernels", ["auto", "ynnpack", "eigen"])
def test_explain_dataset_compiles_with_the_kernels_explain_chooses(kernels, monkeypatch):
    import jxai
    from jxai import _schedule, _xla_cpu, batch, cpu

    network = tiny_network()  # 4 channels: narrow, so "auto" is Eigen on one device
    x = np.random.RandomState(6).rand(6, 8, 8, 3).astype(np.float32)
    monkeypatch.setattr(cpu, "_KERNELS", ["auto"])
    jxai.use_cpu_kernels(kernels)
    chosen = _schedule.kernels_for(network, x)
    options = []
    step = batch._explain_step

    def spy(*args, compiler_options=None, **kwargs):
        options.append(compiler_options)
        return step(*args, compiler_options=compiler_options, **kwargs)

    monkeypatch.setattr(batch, "_explain_step", spy)
    got = [r.attribution for r in batch.explain_dataset(network, x, "lrp.epsilon", batch_size=3)]
    assert options == [_xla_cpu.compiler_options(chosen)]
    want = np.asarray(jxai.explain(network, x, "lrp.epsilon"))
    assert np.stack(got).tobytes() == want.tobytes()


def test_autotune_drops_a_variant_that_does_not_compile(caplog):
    import logging

    import jax.numpy as jnp

    from jxai.batch import _fastest

    def broken(x):
        raise ValueError("No such compile option: xla_cpu_made_up")

    steps = {"good": lambda x: jnp.tanh(x), "broken": broken}
    with caplog.at_level(logging.WARNING, logger="jxai.batch"):
        kept, out = _fastest(steps, [jnp.ones(3)])
    assert list(kept) == ["good"]
    np.testing.assert_allclose(out, np.tanh(np.ones(3)), rtol=1e-6)
    assert "'broken' failed to compile" in caplog.text and "xla_cpu_made_up" in caplog.text
    with pytest.raises(RuntimeError, match="no variant"):
        _fastest({"broken": broken}, [jnp.ones(3)])


def test_cli_autotune_reports_its_choice(tmp_path, image_folder, monkeypatch, capsys):
    import jax

    network = tiny_network()
    out = tmp_path / "out"
    status = _cli(monkeypatch, network, "tiny", image_folder, "--method", "gradient",
                  "--batch-size", 4, "--out", out, "--autotune")
    assert status == 1  # the corrupt input, as without --autotune
    err = capsys.readouterr().err
    if jax.default_backend() == "cpu":
        assert err.count("autotune:") == 1 and "(chosen)" in err
    want = _reference(network, image_folder, ["img00.png", "img01.png"], "gradient", 4)
    for name in want:
        np.testing.assert_allclose(np.load(out / name.replace(".png", ".npy")), want[name],
                                   rtol=1e-5, atol=1e-6)


# -- token models: the model's other inputs (attention_mask...) cut with x --------------------
# Oracle: in-memory `jxai.explain` on the whole array with the same attention_mask (itself
# checked against jax.grad and the padded-equals-short property in tests/test_token_models.py).
TOKEN_CONFIG = {
    "bert": {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
             "intermediate_size": 32, "sequence_length": 6},
    "llama": {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "sequence_length": 6},
}


def _token_net(name):
    import jxai.models as zoo

    return zoo.get(name, pretrained=False, key=1, **TOKEN_CONFIG[name])


def _padded_ids(n=7, length=6):
    """``(ids, mask)``: n rows of token ids, some right-padded (id 0, mask 0)."""
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 50, (n, length)).astype(np.int32)
    mask = np.ones((n, length), np.int32)
    for row, real in [(1, 4), (3, 2), (6, 5)]:
        mask[row, real:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _attributions(results):
    results = list(results)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert [r.index for r in results] == list(range(len(results)))
    return np.stack([r.attribution for r in results])


def test_token_model_inputs_by_dict_and_by_keyword_equal_explain():
    import jxai
    from jxai.batch import explain_dataset

    net = _token_net("bert")
    ids, mask = _padded_ids()
    types = (np.arange(6)[None] >= 3).astype(np.int32).repeat(len(ids), 0)
    want = np.asarray(jxai.explain(net, ids, "lrp.attn_lrp", target=1, attention_mask=mask,
                                   token_type_ids=types))
    by_dict = _attributions(explain_dataset(  # 7 items in batches of 3: the last one padded
        net, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        "lrp.attn_lrp", target=1, batch_size=3))
    assert by_dict.dtype == np.float32 and by_dict.shape == ids.shape
    np.testing.assert_allclose(by_dict, want, rtol=1e-5, atol=1e-6)
    assert np.all(by_dict[mask == 0] == 0) and np.abs(by_dict[mask == 1]).min() > 0
    by_keyword = _attributions(explain_dataset(net, ids, "lrp.attn_lrp", target=1,
                                               batch_size=3, attention_mask=mask,
                                               token_type_ids=types))
    np.testing.assert_allclose(by_keyword, want, rtol=1e-5, atol=1e-6)
    named = _attributions(explain_dataset(  # input_name= picks x (any key)
        net, {"token_type_ids": types, "attention_mask": mask, "ids": ids}, "lrp.attn_lrp",
        target=1, batch_size=3, input_name="ids"))
    np.testing.assert_allclose(named, want, rtol=1e-5, atol=1e-6)
    labels = np.array([0, 1, 1, 0, 1, 0, 0])  # per-item classes with a per-item mask
    by_label = _attributions(explain_dataset(net, ids, "gradient", labels=labels, batch_size=3,
                                             attention_mask=mask))
    np.testing.assert_allclose(
        by_label, np.asarray(jxai.explain(net, ids, "gradient", target=labels,
                                          attention_mask=mask)), rtol=1e-5, atol=1e-7)


def test_decoder_position_and_stochastic_methods_through_explain_dataset():
    import jax

    import jxai
    from jxai.batch import explain_dataset

    net = _token_net("llama")
    ids, mask = _padded_ids()
    items = {"input_ids": ids, "attention_mask": mask}
    for method, position in [("lrp.cp_lrp", None), ("gradient", -2)]:  # None: last real token
        got = _attributions(explain_dataset(net, items, method, target=7,
                                            position=position, batch_size=3))
        want = np.asarray(jxai.explain(net, ids, method, target=7, position=position,
                                       attention_mask=mask))
        assert not np.isnan(got).any() and np.all(got[mask == 0] == 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(position))
    drawn = _attributions(explain_dataset(net, items, "smoothgrad", target=7, n=3, seed=2,
                                          batch_size=4))
    for i in (1, 6):  # one key per item, folded from its index (padded rows included)
        alone = jxai.explain(net, ids[i:i + 1], "smoothgrad", target=7, n=3,
                             key=jax.random.fold_in(jax.random.PRNGKey(2), i),
                             attention_mask=mask[i:i + 1])
        np.testing.assert_allclose(drawn[i], np.asarray(alone)[0], rtol=1e-5, atol=1e-7)
    assert np.all(drawn[mask == 0] == 0)
    # a position on one item's padding fails that item only; the others are explained
    results = list(explain_dataset(net, items, "gradient", target=7, position=3, batch_size=4))
    assert [r.index for r in results if not r.ok] == [3]
    assert results[3].error.startswith("position 3 of this item is a padded token")
    with pytest.raises(ValueError, match=r"^target token 57 is out of range"):
        list(explain_dataset(net, items, "gradient", target=57))
    with pytest.raises(ValueError, match=r"^position= picks a token position"):
        list(explain_dataset(_token_net("bert"), items, "gradient", target=1, position=0))


def test_model_input_errors():
    from jxai.batch import explain_dataset

    net = _token_net("bert")
    ids, mask = _padded_ids()
    with pytest.raises(ValueError, match=r"^explain_dataset: model input attention_mask has 5 "
                       r"rows \(shape \(5, 6\)\) but inputs has 7 items: it needs one row per "
                       r"item, shape \(7, \.\.\.\)"):
        next(explain_dataset(net, ids, "gradient", attention_mask=mask[:5]))
    with pytest.raises(ValueError, match=r"model input token_type_ids has 6 rows .* 7 items"):
        next(explain_dataset(net, {"input_ids": ids, "token_type_ids": mask[:6]}, "gradient"))
    with pytest.raises(TypeError, match=r"^explain_dataset: 'gradient' takes no parameter "
                       r"'atention_mask' and the model takes no input of that name; did you "
                       r"mean 'attention_mask'\?"):
        next(explain_dataset(net, ids, "gradient", atention_mask=mask))
    with pytest.raises(TypeError, match=r"^explain_dataset: cannot tell which array of inputs "
                       r"\('input_ids', 'atention_mask'\) is the one to explain: 'input_ids', "
                       r"'atention_mask' are not keyword inputs of the model \(its keyword "
                       r"inputs: attention_mask, token_type_ids, train\); name it with "
                       r"input_name="):
        next(explain_dataset(net, {"input_ids": ids, "atention_mask": mask}, "gradient"))
    with pytest.raises(TypeError, match=r"did you mean 'attention_mask'"):  # x named: the rest
        next(explain_dataset(net, {"input_ids": ids, "atention_mask": mask}, "gradient",
                             input_name="input_ids"))
    with pytest.raises(TypeError, match=r"^explain_dataset: model input 'attention_mask' given "
                       r"twice"):
        next(explain_dataset(net, {"input_ids": ids, "attention_mask": mask}, "gradient",
                             attention_mask=mask))
    with pytest.raises(TypeError, match=r"^explain_dataset: input_name= names the explained "
                       r"array of a dict"):
        next(explain_dataset(net, ids, "gradient", input_name="input_ids"))
    with pytest.raises(TypeError, match=r"^explain_dataset: inputs\['steps'\] is not an input "
                       r"of the model"):
        next(explain_dataset(net, {"input_ids": ids, "steps": 4}, "integrated_gradients",
                             input_name="input_ids"))


_TWO_DEVICES = """
import json, sys
import numpy as np
import jax
sys.path.insert(0, {tests!r})
import jxai
from jxai.batch import explain_dataset
from test_batch import _padded_ids, _token_net

net, (ids, mask) = _token_net("bert"), _padded_ids()
got = np.stack([r.attribution for r in explain_dataset(
    net, {{"input_ids": ids, "attention_mask": mask}}, "lrp.attn_lrp", target=1, batch_size=3)])
want = np.asarray(jxai.explain(net, ids, "lrp.attn_lrp", target=1, attention_mask=mask))
print(json.dumps({{"devices": len(jax.devices()), "error": float(np.abs(got - want).max()),
                   "scale": float(np.abs(want).max()),
                   "padding_zero": bool(np.all(got[mask == 0] == 0))}}))
"""


def test_model_inputs_are_sharded_with_x_over_two_devices():
    """Batches of 3 padded to 4 rows, 2 per device: each device's mask rows are its x rows."""
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2 and report["padding_zero"]
    assert report["error"] <= 1e-5 * report["scale"], report
