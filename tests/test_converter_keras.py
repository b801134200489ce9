"""Keras -> Flax parity: every committed fixture model reproduces the output Keras computed.

Fixtures (tests/fixtures/keras/{tf214,keras3}/) were written by tf.keras 2.14 and by Keras 3.15
with tests/fixtures/generate_keras_fixtures.py; the ``.npz`` next to each model holds the inputs
and Keras' own ``predict`` outputs, the independent oracle here.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jxai.converters.keras import (
    GraphSpec,
    KerasModel,
    graph_from_json,
    graph_to_json,
    load_keras,
)

import jxai
from jxai import layers as jl
from jxai.network import module_path

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
WRITERS = ("tf214", "keras3")
REFUSED = {"lambda_model", "custom_model"}


def _manifest(writer: str) -> dict:
    return json.loads((FIXTURES / writer / "manifest.json").read_text())


def model_files() -> list[tuple[str, str]]:
    out = []
    for writer in WRITERS:
        for model, files in sorted(_manifest(writer).items()):
            if model in REFUSED or not isinstance(files, list):
                continue
            out += [(writer, f) for f in files if f.endswith((".h5", ".keras"))
                    and not f.endswith(".weights.h5") and not f.endswith("_weights.h5")]
    return out


def make_keras_file(tmp_path_factory):
    """``get(writer, filename)`` -> path of the decompressed (gunzipped) fixture file."""
    root = tmp_path_factory.mktemp("keras_fixtures")

    def get(writer: str, filename: str) -> str:
        target = root / writer / filename
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            with gzip.open(FIXTURES / writer / f"{filename}.gz") as src:
                target.write_bytes(src.read())
        return str(target)

    return get


@pytest.fixture(scope="session")
def keras_file(tmp_path_factory):
    return make_keras_file(tmp_path_factory)


def reference(writer: str, model: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    data = np.load(FIXTURES / writer / f"{model}.npz")
    xs = [data[f"x{i}"] for i in range(8) if f"x{i}" in data]
    ys = [data[f"y{i}"] for i in range(8) if f"y{i}" in data]
    return xs, ys


def relative_error(got, want) -> float:
    """max |got - want| / max |want| (normwise relative error of one output)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def run(network, xs):
    out = network.apply(tuple(xs)) if len(xs) > 1 else network.apply(xs[0])
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize(("writer", "filename"), model_files())
def test_matches_keras_predict(keras_file, writer, filename):
    network = load_keras(keras_file(writer, filename))
    xs, ys = reference(writer, filename.split(".")[0])
    outs = run(network, xs)
    assert len(outs) == len(ys)
    for got, want in zip(outs, ys, strict=True):
        assert relative_error(got, want) < 1e-5


def test_fixtures_cover_every_required_layer(keras_file):
    """The parity fixtures (both writers together) contain every layer class the issue lists."""
    required = {
        "InputLayer", "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
        "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization", "LayerNormalization",
        "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
        "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
        "GlobalMaxPooling1D", "Flatten", "Reshape", "Permute", "Dropout", "SpatialDropout2D",
        "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Add", "Subtract", "Multiply",
        "Average", "Maximum", "Concatenate", "UpSampling1D", "UpSampling2D", "ZeroPadding1D",
        "ZeroPadding2D", "Cropping1D", "Cropping2D", "Rescaling", "Normalization", "TFOpLambda",
        "SlicingOpLambda", "GetItem", "Stack", "TrueDivide", "Functional", "Sequential",
    }
    seen = set()

    def walk(graph: GraphSpec):
        for layer in graph.layers:
            seen.add(layer.class_name)
            if layer.graph is not None:
                walk(layer.graph)

    for writer, filename in model_files():
        network = load_keras(keras_file(writer, filename))
        seen.add(network.module.graph.class_name)
        walk(network.module.graph)
    assert required <= seen, sorted(required - seen)


def test_modules_are_stock_flax_and_jxai_layers(keras_file):
    """Module paths are Keras names; layers the engine intercepts are the expected classes."""
    network = load_keras(keras_file("tf214", "vgg_nested.h5"))
    found: dict[str, type] = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            found[module_path(context.module)] = type(context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        network.apply(np.zeros((1, 16, 16, 3), np.float32))
    assert found["conv_base/block1_conv1"] is nn.Conv
    assert found["conv_base/block1_conv1_activation"] is jl.Activation
    assert found["conv_base/block1_pool"] is jl.MaxPool
    assert found["conv_base"] is KerasModel
    assert found["fc1"] is nn.Dense
    assert found["predictions_activation"] is jl.Activation
    params = network.variables["params"]
    assert set(params["conv_base"]) == {"block1_conv1", "block1_conv2", "block2_conv1"}
    assert network.metadata["output_activation"] == "softmax"
    assert network.metadata["output_activation_path"] == "predictions_activation"
    assert network.metadata["input_shape"] == [16, 16, 3]
    assert network.metadata["keras_version"] == "2.14.0"
    assert network.metadata["layer_names"][:2] == ["xray", "conv_base"]


def test_residual_add_is_a_sum_module_and_shared_layers_share_params(keras_file):
    network = load_keras(keras_file("keras3", "multi_io.keras"))
    found = {}

    def record(next_fun, args, kwargs, context):
        found.setdefault(module_path(context.module), []).append(type(context.module))
        return next_fun(*args, **kwargs)

    xs, _ = reference("keras3", "multi_io")
    with nn.intercept_methods(record):
        run(network, xs)
    assert found["add"] == [jl.Sum]
    assert found["shared"] == [nn.Dense, nn.Dense]  # one parameter set, called twice
    assert found["sub/sub_dense"] == [nn.Dense, nn.Dense]
    assert set(network.variables["params"]["sub"]) == {"sub_dense"}
    assert network.metadata["input_shape"] is None
    assert network.metadata["input_shapes"] == [[6], [4, 4, 2]]


@pytest.mark.parametrize(("writer", "filename", "model"), [
    ("tf214", "vgg_nested.h5", "vgg_nested"), ("keras3", "vgg_nested.keras", "vgg_nested"),
    ("keras3", "unet.keras", "unet"), ("tf214", "mlp.h5", "mlp"),
])
def test_without_output_activation_gives_the_logits(keras_file, writer, filename, model):
    network = load_keras(keras_file(writer, filename))
    xs, ys = reference(writer, model)
    logits = np.asarray(network.without_output_activation().apply(xs[0]))
    function = network.metadata["output_activation"]
    squash = jax.nn.softmax if function == "softmax" else jax.nn.sigmoid
    assert relative_error(squash(jnp.asarray(logits)), ys[0]) < 1e-5
    assert np.max(np.abs(logits - ys[0])) > 1e-2  # the activation really was removed


def test_spec_round_trips_through_json(keras_file):
    for writer, filename in [("tf214", "preprocess.h5"), ("keras3", "multi_io.keras"),
                             ("tf214", "seq_nested.h5"), ("keras3", "layers2d.keras")]:
        graph = load_keras(keras_file(writer, filename)).module.graph
        again = graph_from_json(graph_to_json(graph))
        assert again == graph
        assert hash(again) == hash(graph)


def test_jit_and_batch_independence(keras_file):
    network = load_keras(keras_file("tf214", "layers2d.h5"))
    xs, ys = reference("tf214", "layers2d")
    jitted = jax.jit(network.apply)(xs[0])
    assert relative_error(jitted, ys[0]) < 1e-5
    single = network.apply(xs[0][1:2])
    assert relative_error(single, ys[0][1:2]) < 1e-5


def test_gradient_through_converted_network(keras_file):
    """jxai.explain works on a converted network and agrees with jax.grad of the target logit."""
    if not hasattr(jxai, "explain"):
        pytest.skip("engine not available")
    network = load_keras(keras_file("keras3", "gap_cnn.keras")).without_output_activation()
    xs, _ = reference("keras3", "gap_cnn")
    x = jnp.asarray(xs[0])
    attribution = np.asarray(jxai.explain(network, x, "gradient", target=1))
    expected = jax.grad(lambda v: network.apply(v)[:, 1].sum())(x)
    np.testing.assert_allclose(attribution, np.asarray(expected), rtol=1e-5, atol=1e-6)
