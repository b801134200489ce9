"""Keras converter I/O: weights into hand-written Flax modules, orbax round trip, the CLI, and
clear errors for corrupt, truncated, refused and mismatching files."""

from __future__ import annotations

import os
import shutil

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


def test_keras2_weights_h5_without_names_is_explained(keras_file):
    with pytest.raises(KerasFormatError, match="no layer name"):
        load_weights(GapCNN(), keras_file("tf214", "gap_cnn.weights.h5"), input_shape=(12, 12, 3))


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
    assert convert_main([keras_file("keras3", "lambda_model.keras"), str(tmp_path / "x")]) == 1
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
