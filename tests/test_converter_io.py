"""Keras converter I/O: weights into hand-written Flax modules, orbax round trip, the CLI, and
clear errors for corrupt, truncated, refused and mismatching files."""

from __future__ import annotations

import os
import shutil
import zipfile

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jxai.converters.keras import (
    KerasFormatError,
    UnsupportedLayerError,
    WeightMismatchError,
    load_keras,
    load_network,
    load_weights,
    save_network,
    unnamed,
)
from jxai.converters.keras.cli import main as convert_main
from jxai.converters.keras.graph import parse_model
from test_converter_keras import make_keras_file, reference, relative_error


@pytest.fixture(scope="session")
def keras_file(tmp_path_factory):
    return make_keras_file(tmp_path_factory)


class GapCNN(nn.Module):
    """The fixture ``gap_cnn`` written by hand in Flax, submodules named like the Keras layers."""

    filters: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.filters, (3, 3), padding="SAME", name="conv1")(x))
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", name="conv2")(x))
        return nn.softmax(nn.Dense(3, name="predictions")(x.mean(axis=(1, 2))))


class FirstLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(16, name="hidden1")(x)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="hidden1")(x))
        x = jnp.tanh(nn.Dense(8, name="hidden2")(x))
        return nn.sigmoid(nn.Dense(1, name="out")(x))


# ------------------------------------------------------------------------------ load_weights
@pytest.mark.parametrize(("writer", "filename"), [
    ("keras3", "gap_cnn.weights.h5"), ("tf214", "gap_cnn_weights.h5"), ("tf214", "gap_cnn.h5"),
    ("keras3", "gap_cnn.h5"), ("keras3", "gap_cnn.keras"), ("tf214", "gap_cnn.keras"),
])
def test_load_weights_into_hand_written_module(keras_file, writer, filename):
    module = GapCNN()
    variables = load_weights(module, keras_file(writer, filename), input_shape=(12, 12, 3))
    xs, ys = reference(writer, "gap_cnn")
    assert relative_error(module.apply(variables, xs[0]), ys[0]) < 1e-5


@pytest.mark.parametrize(("writer", "filename"), [
    ("keras3", "mlp.weights.h5"), ("tf214", "mlp_weights.h5"),
])
def test_load_weights_with_template_variables(keras_file, writer, filename):
    module = MLP()
    template = module.init(jax.random.key(0), jnp.zeros((1, 10)))
    variables = load_weights(module, keras_file(writer, filename), template)
    xs, ys = reference(writer, "mlp")
    assert relative_error(module.apply(variables, xs[0]), ys[0]) < 1e-5


def test_load_weights_names_first_mismatching_layer_and_both_shapes(keras_file):
    with pytest.raises(WeightMismatchError, match=r"conv1.*\(3, 3, 3, 5\).*\(3, 3, 3, 4\)"):
        load_weights(GapCNN(filters=5), keras_file("keras3", "gap_cnn.weights.h5"),
                     input_shape=(12, 12, 3))
    with pytest.raises(WeightMismatchError, match=r"conv1.*\(3, 3, 3, 5\).*\(3, 3, 3, 4\)"):
        load_weights(GapCNN(filters=5), keras_file("tf214", "gap_cnn_weights.h5"),
                     input_shape=(12, 12, 3))


def test_load_weights_from_another_model_fails_clearly(keras_file):
    with pytest.raises(WeightMismatchError, match="conv1.*no weights in the file"):
        load_weights(GapCNN(), keras_file("keras3", "mlp.weights.h5"), input_shape=(12, 12, 3))
    for filename in ("mlp_weights.h5", "mlp.h5"):  # strict: the file has layers the module lacks
        with pytest.raises(WeightMismatchError, match=r"\['hidden2', 'out'\].*strict=False"):
            load_weights(FirstLayer(), keras_file("tf214", filename), input_shape=(10,))
        partial = load_weights(FirstLayer(), keras_file("tf214", filename), input_shape=(10,),
                               strict=False)
        reference_net = load_keras(keras_file("tf214", "mlp.h5"))
        np.testing.assert_array_equal(partial["params"]["hidden1"]["kernel"],
                                      reference_net.variables["params"]["hidden1"]["kernel"])


class GapCNNAutoNames(nn.Module):
    """`GapCNN` with the Keras automatic names, which tf.keras 2.14 also uses as group names."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv2d")(x))
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="batch_normalization")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", name="conv2d_1")(x))
        return nn.softmax(nn.Dense(3, name="dense")(x.mean(axis=(1, 2))))


class VggNestedFlat(nn.Module):
    """The fixture ``vgg_nested`` (a nested ``conv_base`` model + head) as one flat module."""

    @nn.compact
    def __call__(self, x):
        for name, filters in (("block1_conv1", 4), ("block1_conv2", 4), ("pool", 0),
                              ("block2_conv1", 8), ("pool", 0), ("block_extra_conv", 8),
                              ("pool", 0)):
            if filters:
                x = nn.relu(nn.Conv(filters, (3, 3), padding="SAME", name=name)(x))
            else:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Dense(16, name="fc1")(x.reshape(x.shape[0], -1)))
        return nn.softmax(nn.Dense(2, name="predictions")(x))


def test_unnamed_groups_match_by_keras_automatic_names(keras_file):
    """tf.keras 2.14 .weights.h5 (groups ``conv2d``, ``conv2d_1``, ``batch_normalization``...
    record no layer name): a module using the automatic names loads by name, with no tracing."""
    assert unnamed.split_counter("conv2d_transpose_3") == ("conv2d_transpose", 3)
    assert unnamed.split_counter("conv2d") == ("conv2d", 0)
    module = GapCNNAutoNames()
    template = module.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    variables = load_weights(module, keras_file("tf214", "gap_cnn.weights.h5"), template)
    xs, ys = reference("tf214", "gap_cnn")
    assert relative_error(module.apply(variables, xs[0]), ys[0]) < 1e-5
    # The same arrays as the legacy file (which records names) gives the seed-named module.
    legacy = load_weights(GapCNN(), keras_file("tf214", "gap_cnn_weights.h5"),
                          input_shape=(12, 12, 3))
    np.testing.assert_array_equal(variables["params"]["conv2d_1"]["kernel"],
                                  legacy["params"]["conv2"]["kernel"])
    np.testing.assert_array_equal(variables["batch_stats"]["batch_normalization"]["var"],
                                  legacy["batch_stats"]["bn1"]["var"])


def test_unnamed_groups_match_by_call_order(keras_file, tmp_path):
    """Module names differ from the class-counter groups: matched by call order and type."""
    module = GapCNN()
    variables = load_weights(module, keras_file("tf214", "gap_cnn.weights.h5"),
                             input_shape=(12, 12, 3))
    xs, ys = reference("tf214", "gap_cnn")
    assert relative_error(module.apply(variables, xs[0]), ys[0]) < 1e-5
    # A nested Keras model (``functional/conv2d..conv2d_2`` beside the top-level ``conv2d``)
    # into a flat module: the weights inside tf.keras 2.14's vgg_nested.keras archive.
    with zipfile.ZipFile(keras_file("tf214", "vgg_nested.keras")) as archive:
        weights = tmp_path / "vgg_nested.weights.h5"
        weights.write_bytes(archive.read("model.weights.h5"))
    with h5py.File(weights, "r") as f:
        assert "_layer_checkpoint_dependencies/functional/_layer_checkpoint_dependencies/" \
               "conv2d_2/vars/0" in f
    module = VggNestedFlat()
    variables = load_weights(module, weights, input_shape=(16, 16, 3))
    xs, ys = reference("tf214", "vgg_nested")
    assert relative_error(module.apply(variables, xs[0]), ys[0]) < 1e-5
    # strict: groups the module does not take are reported; strict=False keeps the first ones.
    with pytest.raises(WeightMismatchError, match=r"\['dense_1', 'dense_2'\].*strict=False"):
        load_weights(FirstLayer(), keras_file("tf214", "mlp.weights.h5"), input_shape=(10,))
    partial = load_weights(FirstLayer(), keras_file("tf214", "mlp.weights.h5"),
                           input_shape=(10,), strict=False)
    with h5py.File(keras_file("tf214", "mlp.weights.h5"), "r") as f:
        np.testing.assert_array_equal(partial["params"]["hidden1"]["kernel"],
                                      f["_layer_checkpoint_dependencies/dense/vars/0"][()])


def test_unnamed_groups_mismatch_names_first_layer_and_both_shapes(keras_file):
    path = keras_file("tf214", "gap_cnn.weights.h5")
    with pytest.raises(WeightMismatchError,
                       match=r"conv1.*\(3, 3, 3, 5\).*\(3, 3, 3, 4\).*'conv2d'"):
        load_weights(GapCNN(filters=5), path, input_shape=(12, 12, 3))
    # Without input_shape the call order is unknown: the error says what to pass.
    template = GapCNN().init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    with pytest.raises(WeightMismatchError, match="no layer names.*conv1.*input_shape="):
        load_weights(GapCNN(), path, template)
    # A module layer whose Keras class has no group left in the file.
    with pytest.raises(WeightMismatchError, match=r"'conv1' \(Conv\) has no conv2d or "
                                                  r"depthwise_conv2d group left"):
        load_weights(GapCNN(), keras_file("tf214", "mlp.weights.h5"), input_shape=(12, 12, 3))


# ------------------------------------------------------------------------- checkpoint + CLI
def test_save_and_load_network_round_trip(keras_file, tmp_path):
    network = load_keras(keras_file("tf214", "preprocess.h5"))
    save_network(network, tmp_path / "ckpt")
    restored = load_network(tmp_path / "ckpt")
    xs, ys = reference("tf214", "preprocess")
    assert relative_error(restored.apply(xs[0]), ys[0]) < 1e-5
    assert restored.module.graph == network.module.graph
    assert restored.metadata["keras_version"] == "2.14.0"
    with pytest.raises(FileExistsError):
        save_network(network, tmp_path / "ckpt")


def test_save_keeps_stripped_output_activation(keras_file, tmp_path):
    network = load_keras(keras_file("keras3", "vgg_nested.keras")).without_output_activation()
    save_network(network, tmp_path / "logits")
    restored = load_network(tmp_path / "logits")
    xs, _ = reference("keras3", "vgg_nested")
    np.testing.assert_allclose(np.asarray(restored.apply(xs[0])),
                               np.asarray(network.apply(xs[0])), rtol=1e-6)


def test_cli_prints_summary_and_writes_checkpoint(keras_file, tmp_path, capsys):
    out = tmp_path / "converted"
    assert convert_main([keras_file("tf214", "vgg_nested.h5"), str(out)]) == 0
    printed = capsys.readouterr().out
    network = load_keras(keras_file("tf214", "vgg_nested.h5"))
    assert "conv_base/block1_conv1" in printed and "(None, 16, 16, 4)" in printed
    assert f"Total params: {network.param_count():,}" in printed
    # block1_conv1: 3*3*3*4 + 4 parameters, as Keras' summary counts them
    assert any(line.startswith("conv_base/block1_conv1") and line.rstrip().endswith(" 112")
               for line in printed.splitlines())
    restored = load_network(out)
    xs, ys = reference("tf214", "vgg_nested")
    assert relative_error(restored.apply(xs[0]), ys[0]) < 1e-5


def test_cli_reports_refused_model(keras_file, tmp_path, capsys):
    assert convert_main([keras_file("keras3", "lambda_model.keras"), str(tmp_path / "x")]) == 2
    assert "times_two" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("writer", "filename"), [
    ("tf214", "lambda_model.h5"), ("tf214", "lambda_model.keras"),
    ("keras3", "lambda_model.keras"), ("keras3", "lambda_model.h5"),
])
def test_lambda_layer_is_refused_by_name(keras_file, writer, filename):
    with pytest.raises(UnsupportedLayerError, match=r"'times_two' is a Lambda layer.*never runs"):
        load_keras(keras_file(writer, filename))


@pytest.mark.parametrize(("writer", "filename"), [
    ("tf214", "custom_model.h5"), ("keras3", "custom_model.keras"),
])
def test_custom_class_is_refused_by_name(keras_file, writer, filename):
    with pytest.raises(UnsupportedLayerError, match=r"'doubler'.*custom class.*Doubler"):
        load_keras(keras_file(writer, filename))


@pytest.mark.parametrize(("writer", "filename"), [
    ("tf214", "gap_cnn.h5"), ("keras3", "gap_cnn.keras"), ("keras3", "gap_cnn.h5"),
])
def test_truncated_files_give_clear_errors(keras_file, tmp_path, writer, filename):
    data = open(keras_file(writer, filename), "rb").read()
    for fraction in (0.3, 0.7):
        path = tmp_path / f"cut_{fraction}_{filename}"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(KerasFormatError, match="truncated or corrupt"):
            load_keras(path)


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(KerasFormatError, match="neither HDF5 nor a zip"):
        load_keras(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(KerasFormatError, match="not a Keras file"):
        load_keras(foreign)
    with pytest.raises(FileNotFoundError):
        load_keras(tmp_path / "missing.h5")


def test_corrupt_config_json(keras_file, tmp_path):
    path = tmp_path / "bad.h5"
    shutil.copy(keras_file("tf214", "mlp.h5"), path)
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = '{"class_name": "Sequential", "config": {'
    with pytest.raises(KerasFormatError, match="not valid JSON"):
        load_keras(path)


def test_savedmodel_directory_says_how_to_resave(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(KerasFormatError, match=r"SavedModel.*m.save\('model.h5'\)"):
        load_keras(tmp_path / "saved")


def test_weights_only_file_to_load_keras_points_to_load_weights(keras_file):
    with pytest.raises(KerasFormatError, match="load_weights"):
        load_keras(keras_file("keras3", "mlp.weights.h5"))


def test_weights_that_do_not_fit_the_architecture(keras_file, tmp_path):
    path = tmp_path / "swapped.h5"
    shutil.copy(keras_file("tf214", "mlp.h5"), path)
    with h5py.File(path, "a") as f:
        del f["model_weights/hidden2/hidden2/kernel:0"]
        f["model_weights/hidden2/hidden2/kernel:0"] = np.zeros((16, 9), np.float32)
    with pytest.raises(WeightMismatchError, match=r"hidden2.*\(in, 8\).*\(16, 9\)"):
        load_keras(path)


def _functional(layer: dict, node) -> dict:
    return {"class_name": "Functional", "config": {
        "name": "m", "input_layers": [["x", 0, 0]], "output_layers": [["op", 0, 0]],
        "layers": [{"class_name": "InputLayer", "name": "x", "inbound_nodes": [],
                    "config": {"name": "x", "batch_input_shape": [None, 3]}},
                   {**layer, "name": "op", "inbound_nodes": [node]}]}}


def test_unknown_tf_op_and_serialised_code_are_refused():
    bessel = {"class_name": "TFOpLambda", "config": {"name": "op", "function": "math.bessel_i0"}}
    with pytest.raises(UnsupportedLayerError, match="'op'.*math.bessel_i0"):
        parse_model(_functional(bessel, ["x", 0, 0, {}]), 2)
    dense = {"class_name": "Dense", "config": {"name": "op", "units": 2}}
    code = {"args": [{"class_name": "__keras_tensor__",
                      "config": {"keras_history": ["x", 0, 0]}}],
            "kwargs": {"f": {"class_name": "__lambda__", "config": {"code": "AAAA"}}}}
    with pytest.raises(UnsupportedLayerError, match="never executes code"):
        parse_model(_functional(dense, code), 3)
