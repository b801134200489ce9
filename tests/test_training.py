"""Training, offline data and orbax checkpoints of the model zoo (short runs only)."""

from __future__ import annotations

import json
import random

import jax
import jax.numpy as jnp
import jxai.models as zoo
import numpy as np
import pytest
from jxai.models import checkpoint, data, train
from jxai.models.clever_hans import MARKER, make_clever_hans
from jxai.models.unet import bce_dice_loss, dice_coefficient

CHECKPOINTS = __import__("pathlib").Path(zoo.__file__).parent / "checkpoints"


def test_short_training_run_lowers_the_loss():
    split = data.breast_cancer(seed=0)
    net = zoo.get("tabular_mlp", pretrained=False, key=0, n_features=30,
                  output_activation="sigmoid")
    before = train.evaluate(net, split.x_train, split.y_train, loss="binary_cross_entropy")
    lines = []
    trained, history = train.fit(net, split.x_train, split.y_train, loss="binary_cross_entropy",
                                 epochs=15, batch_size=32, learning_rate=1e-2, key=0,
                                 x_test=split.x_test, y_test=split.y_test, log=lines.append)
    after = train.evaluate(trained, split.x_train, split.y_train, loss="binary_cross_entropy")
    assert after["loss"] < 0.5 * before["loss"]
    assert history.final["test_accuracy"] > 0.85
    assert len(lines) == 15 and lines[-1].startswith("epoch 15/15")
    # The input network is untouched.
    np.testing.assert_array_equal(
        net.variables["params"]["dense"]["kernel"],
        zoo.get("tabular_mlp", pretrained=False, key=0, n_features=30,
                output_activation="sigmoid").variables["params"]["dense"]["kernel"])


def test_cnn_training_with_dropout_lowers_the_loss():
    split = data.mnist1d()
    x, y = split.x_train[:512], split.y_train[:512]
    net = zoo.get("mnist1d_cnn", pretrained=False, key=0)
    before = train.evaluate(net, x, y)["loss"]
    trained, _ = train.fit(net, x, y, epochs=3, batch_size=64, learning_rate=3e-3, log=None)
    assert train.evaluate(trained, x, y)["loss"] < 0.8 * before


def test_evaluate_matches_numpy_oracles():
    net = zoo.get("mnist1d_cnn", pretrained=False, key=3)
    x = np.random.default_rng(0).normal(size=(37, 40, 1)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 37)
    probs = np.asarray(net(x), np.float64)
    scores = train.evaluate(net, x, y, batch_size=16)  # padded last batch
    assert scores["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert scores["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(37), y])), rel=1e-4)


def test_bce_dice_loss_is_the_seed_formula():
    rng = np.random.default_rng(0)
    t = (rng.uniform(size=(2, 8, 8, 1)) > 0.5).astype(np.float64)
    logits = rng.normal(size=(2, 8, 8, 1))
    p = 1 / (1 + np.exp(-logits))
    bce = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    dice = (2 * np.sum(t * p) + 1) / (np.sum(t) + np.sum(p) + 1)
    assert float(dice_coefficient(jnp.asarray(t), jnp.asarray(p))) == pytest.approx(dice, rel=1e-5)
    assert float(bce_dice_loss(jnp.asarray(t), jnp.asarray(logits))) == pytest.approx(
        bce + 1 - dice, rel=1e-5)


def test_fit_rejects_bad_arguments():
    net = zoo.get("tabular_mlp", pretrained=False)
    with pytest.raises(ValueError, match="unknown loss"):
        train.fit(net, np.zeros((4, 37)), np.zeros(4), loss="hinge", log=None)
    with pytest.raises(ValueError, match="differ in length"):
        train.fit(net, np.zeros((4, 37)), np.zeros(5), loss="mse", log=None)


# -- data ---------------------------------------------------------------------------------------

def test_clever_hans_images_masks_and_shortcut():
    biased = make_clever_hans(64, seed=1, bias=1.0)
    assert biased.x.shape == (64, 64, 64, 1) and biased.x.dtype == np.float32
    assert biased.x.min() >= 0 and biased.x.max() <= 1
    assert np.bincount(biased.y).tolist() == [32, 32]
    np.testing.assert_array_equal(biased.marker_class, biased.y)
    # The marker is a 6x6 square dilated by one pixel, in the top corner of its class.
    assert (biased.marker_mask.sum((1, 2)) == (MARKER + 2) ** 2).all()
    rows, cols = np.nonzero(biased.marker_mask.any(0))
    assert rows.max() < 16
    for i in range(64):
        c = np.nonzero(biased.marker_mask[i].any(0))[0].mean()
        assert (c < 32) == (biased.y[i] == 1)
    assert not (biased.marker_mask & biased.object_mask).any()
    assert (biased.object_mask.sum((1, 2)) > 50).all()
    # Under the marker the image is bright; the object is brighter than its surroundings.
    core = biased.marker_mask.copy()  # erode the dilated mask back to the drawn square
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            core &= np.roll(biased.marker_mask, (dy, dx), axis=(1, 2))
    assert (core.sum((1, 2)) == MARKER**2).all()
    assert biased.x[..., 0][core].min() > 0.7
    unbiased = make_clever_hans(400, seed=2, bias=0.5)
    assert 0.4 < np.mean(unbiased.marker_class == unbiased.y) < 0.6
    again = make_clever_hans(64, seed=1, bias=1.0)
    np.testing.assert_array_equal(again.x, biased.x)
    with pytest.raises(ValueError, match="probability"):
        make_clever_hans(4, bias=1.5)


def test_mnist1d_offline_and_global_random_state_kept():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    split = data.mnist1d()
    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert split.x_train.shape == (4000, 40, 1) and split.x_test.shape == (1000, 40, 1)
    assert sorted(np.unique(split.y_test)) == list(range(10))


def test_tables_and_digits():
    table = data.breast_cancer(seed=0)
    assert table.x_train.shape[1] == 30 and len(table.x_train) + len(table.x_test) == 569
    assert table.x_train.min() == 0 and table.x_train.max() == 1
    from sklearn.datasets import load_breast_cancer
    raw = load_breast_cancer().data
    spec = table.info["preprocessing"]
    scaled = zoo.preprocess(spec, raw)
    for row in table.x_test[:5]:
        assert np.isclose(scaled, row, atol=1e-6).all(axis=1).any()
    digits = data.digits(size=32, seed=0)
    assert digits.x_train.shape[1:] == (32, 32, 1) and digits.x_train.max() == 1.0
    np.testing.assert_array_equal(digits.x_train[0, ::4, ::4, 0],
                                  digits.x_train[0, 3::4, 3::4, 0])


# -- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    net = zoo.get("mnist1d_cnn", pretrained=False, key=5, hidden=32)
    path = checkpoint.save(tmp_path / "ck", net, extra={"test_accuracy": 0.5})
    loaded = checkpoint.load(path)
    assert loaded.metadata["config"]["hidden"] == 32
    assert loaded.metadata["extra"] == {"test_accuracy": 0.5}
    assert loaded.metadata["output_activation_path"] == "dense_1_softmax"
    x = np.random.default_rng(0).normal(size=(2, 40, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(net(x)))
    other = zoo.get("mnist1d_cnn", pretrained=False, key=6, hidden=32)
    checkpoint.save(path, other)  # replaces the old checkpoint in one rename
    np.testing.assert_array_equal(np.asarray(checkpoint.load(path)(x)), np.asarray(other(x)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a jxai checkpoint"):
        checkpoint.load(tmp_path)
    net = zoo.get("mnist1d_cnn", pretrained=False, key=0)
    path = checkpoint.save(tmp_path / "ck", net)
    record = json.loads((path / "network.json").read_text())
    record["config"]["hidden"] = 16  # the saved dense kernels no longer fit
    (path / "network.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not fit mnist1d_cnn"):
        checkpoint.load(path)
    with pytest.raises(ValueError, match="zoo 'name'/'config'"):
        import jxai
        checkpoint.save(tmp_path / "x", jxai.Network(net.module, net.variables))


def test_committed_demo_checkpoint_took_the_shortcut():
    """The shipped bias-detection CNN: perfect with the marker, chance without it."""
    net = checkpoint.load(CHECKPOINTS / "clever_hans_cnn")
    assert net.param_count() == 285_634
    sizes = sum(f.stat().st_size for f in (CHECKPOINTS / "clever_hans_cnn").rglob("*"))
    assert sizes < 2_000_000
    _, biased, unbiased = data.clever_hans(n_train=2, n_test=200, seed=77)
    assert train.evaluate(net, biased.x, biased.y)["accuracy"] > 0.97
    predictions = train.predict(net, unbiased.x).argmax(-1)
    assert np.mean(predictions == unbiased.marker_class) > 0.95  # follows the marker
    assert np.mean(predictions == unbiased.y) < 0.7  # not the object


def test_jit_step_is_compiled_once(monkeypatch):
    calls = []
    original = jax.jit

    def counting(fn, *args, **kwargs):
        calls.append(getattr(fn, "__name__", "?"))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(train.jax, "jit", counting)
    net = zoo.get("tabular_mlp", pretrained=False)
    x = np.zeros((64, 37), np.float32)
    train.fit(net, x, np.zeros(64, np.float32), loss="mse", epochs=3, batch_size=16, log=None)
    assert calls.count("step") == 1
