"""Loading networks by name: trained zoo weights, `jxai.load`, the one checkpoint format, corrupt
Keras files, and the value rule for image files.

Oracles: the shipped checkpoint's arrays read back by orbax directly, tf.keras' recorded outputs
of the Keras fixtures, the literal preprocessing formulas (x / 255, x / 65535, Keras' caffe mode)
and the trained network's logits on the in-memory images it was trained on.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from jxai.models import checkpoint, data

import jxai
from jxai import io as jio
from jxai.batch import image_preprocess_for

PIL = pytest.importorskip("PIL.Image")

SHIPPED = Path(jxai.models.__file__).resolve().parent / "checkpoints" / "clever_hans_cnn"
KERAS = Path(__file__).parent / "fixtures" / "keras" / "tf214"


def _leaves(network):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(network.variables)}


def _same_weights(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return la.keys() == lb.keys() and all(np.array_equal(la[k], lb[k]) for k in la)


@pytest.fixture(scope="module")
def trained():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped weights load without a word
        return jxai.models.get("clever_hans_cnn")


@pytest.fixture
def mlp_h5(tmp_path):
    """tf.keras 2.14's ``mlp.h5`` fixture, decompressed, with its recorded (x, y)."""
    path = tmp_path / "mlp.h5"
    path.write_bytes(gzip.decompress((KERAS / "mlp.h5.gz").read_bytes()))
    recorded = np.load(KERAS / "mlp.npz")
    return path, recorded["x0"], recorded["y0"]


# -- jxai.models.get: trained where shipped -----------------------------------------------------
def test_get_gives_the_shipped_trained_weights(trained):
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(SHIPPED / "variables")
    want = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(dict(saved))}
    got = _leaves(trained)
    assert got.keys() == want.keys() and len(got) == 10
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert trained.param_count() == 285_634
    assert trained.metadata["extra"]["scores"]["biased_test_accuracy"] == 1.0
    assert jxai.models.pretrained_names() == ["clever_hans_cnn"]
    assert _same_weights(jxai.models.get("clever_hans_cnn", pretrained=True), trained)


def test_trained_clever_hans_cnn_classifies_held_out_images(trained):
    _, biased, _ = data.clever_hans(n_train=2, n_test=16, seed=11)
    predicted = np.asarray(trained(biased.x)).argmax(-1)
    np.testing.assert_array_equal(predicted, biased.y)


def test_random_weights_warn_unless_asked_for():
    with pytest.warns(UserWarning, match=r"jxai\.models\.get\('mnist1d_cnn'\): no trained weights "
                      r"ship for 'mnist1d_cnn', so its weights are RANDOM .*jxai\.load\("
                      r".*pass pretrained=False"):
        warned = jxai.models.get("mnist1d_cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = jxai.models.get("mnist1d_cnn", pretrained=False)
        untrained = jxai.models.get("clever_hans_cnn", pretrained=False)
    assert _same_weights(warned, quiet)  # the same random draw (key 0) either way
    assert not _same_weights(untrained, jxai.models.get("clever_hans_cnn"))
    # trained weights exist for the default configuration only
    with pytest.warns(UserWarning, match=r"the trained weights of 'clever_hans_cnn' are for "
                      r"hidden=64, not hidden=32, so its weights are RANDOM"):
        jxai.models.get("clever_hans_cnn", hidden=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default options spelled out: still the trained ones
        same = jxai.models.get("clever_hans_cnn", hidden=64, input_shape=[64, 64, 1])
    assert _same_weights(same, jxai.models.get("clever_hans_cnn"))


def test_pretrained_true_without_trained_weights_is_an_error():
    with pytest.raises(ValueError, match=r"get\('unet', pretrained=True\): no trained weights "
                       r"ship for 'unet' \(trained weights ship for: clever_hans_cnn\)"):
        jxai.models.get("unet", pretrained=True)
    with pytest.raises(ValueError, match=r"are for hidden=64, not hidden=32"):
        jxai.models.get("clever_hans_cnn", pretrained=True, hidden=32)


# -- jxai.load ------------------------------------------------------------------------------------
def test_load_shipped_folder_and_zoo_name(trained):
    assert _same_weights(jxai.load(SHIPPED), trained)
    assert _same_weights(jxai.load(str(SHIPPED)), trained)
    assert _same_weights(jxai.load("clever_hans_cnn"), trained)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same_weights(jxai.load("mnist1d_cnn", pretrained=False),
                             jxai.models.get("mnist1d_cnn", pretrained=False))


def test_load_keras_file_and_its_saved_folder(mlp_h5, tmp_path):
    path, x, y = mlp_h5
    network = jxai.load(path)
    np.testing.assert_allclose(np.asarray(network(x)), y, rtol=1e-5, atol=1e-6)
    folder = jxai.save_network(network.without_output_activation(), tmp_path / "mlp_ckpt")
    restored = jxai.load(folder)
    assert restored.skip == network.without_output_activation().skip
    np.testing.assert_array_equal(np.asarray(restored(x)),
                                  np.asarray(network.without_output_activation()(x)))
    record = json.loads((Path(folder) / "network.json").read_text())
    assert (record["format"], record["version"], record["kind"]) == ("jxai.network", 2, "keras")


def test_zoo_network_saved_by_save_network_loads(tmp_path):
    net = jxai.models.get("mnist1d_cnn", pretrained=False, key=3, hidden=16)
    folder = jxai.save_network(net, tmp_path / "ck", extra={"note": "x"})
    restored = jxai.load(folder)
    x = np.random.default_rng(0).normal(size=(2, 40, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(restored(x)), np.asarray(net(x)))
    assert restored.metadata["config"]["hidden"] == 16
    assert restored.metadata["extra"] == {"note": "x"}
    with pytest.raises(FileExistsError, match="already holds a saved network"):
        jxai.save_network(net, folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not a jxai checkpoint"):
        jxai.save_network(net, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def test_checkpoints_of_earlier_versions_still_load(mlp_h5, tmp_path):
    """Both older layouts are read by the same reader (jxai.load_network)."""
    path, x, y = mlp_h5
    keras_folder = Path(jxai.save_network(jxai.load(path), tmp_path / "k"))
    record = json.loads((keras_folder / "network.json").read_text())
    (keras_folder / "network.json").write_text(json.dumps({
        "format": "jxai.keras-network", "version": 1, "architecture": record["architecture"],
        "metadata": record["metadata"], "skip": []}))
    np.testing.assert_allclose(np.asarray(jxai.load(keras_folder)(x)), y, rtol=1e-5, atol=1e-6)

    net = jxai.models.get("mnist1d_cnn", pretrained=False, key=2)
    zoo_folder = Path(checkpoint.save(tmp_path / "z", net))
    record = json.loads((zoo_folder / "network.json").read_text())
    (zoo_folder / "network.json").write_text(json.dumps({
        "format": 1, "name": record["name"], "config": record["config"],
        "metadata": record["metadata"], "extra": {}}))
    assert _same_weights(jxai.load(zoo_folder), net)

    (zoo_folder / "network.json").write_text(json.dumps({"format": "other", "version": 7}))
    with pytest.raises(ValueError, match=r"unknown checkpoint format 'other' version 7"):
        jxai.load(zoo_folder)


def test_load_refuses_what_it_does_not_know(tmp_path, mlp_h5):
    listing = (r"jxai\.load accepts a Keras file \(\.h5, \.hdf5, \.keras\), a checkpoint folder "
               r"holding network\.json and variables/ .* or a jxai\.models name: .*clever_hans_cnn"
               r".*tabular_mlp")
    with pytest.raises(ValueError, match=r"cannot load 'resnet50': it is no file, folder or zoo "
                       r"model name\. " + listing):
        jxai.load("resnet50")
    with pytest.raises(ValueError, match=r"zoo model name \(did you mean 'tabular_mlp'\?\)"):
        jxai.load("tabular-mlp")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"notes\.txt': it is a file without a Keras suffix"):
        jxai.load(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"it is a folder without network\.json\. " + listing):
        jxai.load(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"pretrained=False applies to zoo names only"):
        jxai.load(mlp_h5[0], pretrained=False)


# -- corrupt Keras files --------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "problem"), [
    (np.void(b"\xff\xfe\x80garbage"), r"is not JSON text but void b'\\xff\\xfe\\x80garbage'"),
    (np.bytes_(b"\xff\xfe\x80garbage"), r"is not JSON text: byte 0 is not UTF-8"),
    (b"\xff\xfe\x80garbage", r"is not valid JSON \(Expecting value: line 1 column 1"),
    (42, r"is not JSON text but int64 42"),
    ("{not json", r"is not valid JSON \(Expecting property name"),
    ("[1, 2]", r"is JSON list, not an object"),
])
def test_model_config_that_is_not_json_text_is_one_clear_error(tmp_path, value, problem):
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = value
        f.attrs["keras_version"] = "2.14.0"
        f.create_group("model_weights")
    with pytest.raises(ValueError) as caught:
        jxai.load(path)
    message = str(caught.value)
    assert "\n" not in message and caught.value.__cause__ is None  # no json traceback behind it
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    assert message.startswith(f"{path}: model_config ")
    assert message.endswith("; it is not a Keras model file, or it is corrupt")
    assert caught.match(problem)


# -- the value rule for image files ---------------------------------------------------------------
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)


def _unit(raw):
    return raw.astype(np.float32) / np.float32(255)


def _caffe(raw):
    return raw.astype(np.float32)[..., ::-1] - CAFFE_BGR_MEAN


# What each zoo model receives from an 8-bit image file of its own size (literal formulas).
EXPECTED = {
    "chest_xray": _caffe,  # VGG16's keras.applications caffe mode, on 0-255
    "clever_hans_cnn": _unit,  # trained on [0, 1] images
    "mnist1d_cnn": _unit,
    "steel_cam": _unit,  # trained on digits scaled to [0, 1]
    "steel_gradcam": _unit,
    "tabular_mlp": _unit,
    "unet": _unit,  # the seed's image / 255
    "unet_explain": _unit,
    "vgg7": _unit,  # the seed's image / 255
    "vit": lambda raw: raw.astype(np.float32) / np.float32(127.5) - 1,  # HF's (x/255 - .5)/.5
    "bert": _unit,  # token models: an image file still maps by its bit depth
    "llama": _unit,
}


def _zoo_shell(name):
    """The zoo network's module and metadata, without initialising millions of weights."""
    module, _, metadata = jxai.models.get_module(name)
    return jxai.Network(module, {"params": {}}, metadata)


def _through_the_pipeline(network, path):
    """What `jxai.explain_dataset` / `jxai explain` feed the model for an image file."""
    return image_preprocess_for(network)(jio.load_item(jio.list_inputs(str(path))[0]))


def test_every_zoo_model_has_its_image_rule():
    assert sorted(EXPECTED) == sorted(jxai.models.NAMES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_image_file_values_follow_one_rule(name, tmp_path):
    network = _zoo_shell(name)
    shape = network.input_shape
    if len(shape) != 3:  # signals and table rows: an image file still maps by its bit depth
        shape = (4, 5, 1)
    raw = np.random.default_rng(len(name)).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "image.png"
    PIL.fromarray(raw[..., 0] if shape[-1] == 1 else raw).save(path)
    got = _through_the_pipeline(network, path)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, EXPECTED[name](raw))


def test_vit_images_are_normalised_by_its_statistics_or_refused(tmp_path):
    imagenet = dict(image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    module, _, metadata = jxai.models.get_module("vit", image_size=8, patch_size=4, **imagenet)
    network = jxai.Network(module, {"params": {}}, metadata)
    raw = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    PIL.fromarray(raw).save(tmp_path / "image.png")
    expected = (raw / 255.0 - np.array(imagenet["image_mean"])) / np.array(imagenet["image_std"])
    np.testing.assert_allclose(_through_the_pipeline(network, tmp_path / "image.png"), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jxai.models.preprocess(network, raw), expected, rtol=1e-5,
                               atol=1e-5)
    clip = dict(image_mean=(0.481, 0.458, 0.408), image_std=(0.269, 0.261, 0.276))
    module, _, metadata = jxai.models.get_module("vit", image_size=8, patch_size=4, **clip)
    with pytest.raises(ValueError, match=r"normalises images with mean=\[0.481, 0.458, 0.408\].*"
                                         r"give prepared \.npy arrays"):
        image_preprocess_for(jxai.Network(module, {"params": {}}, metadata))


def test_sixteen_bit_images_map_by_their_bit_depth(tmp_path):
    raw = np.random.default_rng(0).integers(0, 65536, (64, 64), dtype=np.uint16)
    PIL.fromarray(raw).save(tmp_path / "gray16.tif")
    got = _through_the_pipeline(_zoo_shell("clever_hans_cnn"), tmp_path / "gray16.tif")
    np.testing.assert_array_equal(got, raw[..., None].astype(np.float32) / np.float32(65535))


def test_image_file_reaches_the_trained_model_as_it_was_trained(trained, tmp_path):
    """A held-out image written as an 8-bit PNG gives the logits of the [0, 1] array itself (up to
    8-bit rounding); the raw 0-255 values would give logits hundreds of times larger."""
    _, biased, _ = data.clever_hans(n_train=2, n_test=4, seed=12)
    logits = trained.without_output_activation()
    for k in range(len(biased.x)):
        path = tmp_path / f"{k}.png"
        PIL.fromarray(np.round(biased.x[k, ..., 0] * 255).astype(np.uint8)).save(path)
        x = _through_the_pipeline(trained, path)[None]
        want = np.asarray(logits(biased.x[k:k + 1]))
        np.testing.assert_allclose(np.asarray(logits(x)), want, rtol=0.02,
                                   atol=0.02 * np.abs(want).max())
        assert np.asarray(logits(x)).argmax() == biased.y[k]
