"""The model zoo: parameter counts against the seeds' Keras summaries, forward shapes, metadata,
preprocessing against Keras, and Keras → zoo round trips against outputs tf.keras 2.14 computed
(fixtures: tests/fixtures/generate_zoo_fixtures.py)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import jxai.models as zoo
import numpy as np
import pytest

import jxai

ZOO = Path(__file__).parent / "fixtures" / "zoo"
STEMS = sorted(p.name[: -len(".json")] for p in ZOO.glob("*.json"))


def param_count(name, **kwargs):
    """Parameter count from abstract shapes (no weights allocated), and the abstract tree."""
    module, shape, _ = zoo.get_module(name, **kwargs)
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *shape)))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])), variables


# Totals printed by the seeds' model.summary() (000 and 004), at the seeds' input sizes.
SEED_TOTALS = {
    "unet": 1_941_105,
    "unet_explain": 1_941_105,
    "steel_cam": 93_062,
    "steel_gradcam": 682_950,
    "tabular_mlp": 831,
}


@pytest.mark.parametrize("name", sorted(SEED_TOTALS))
def test_parameter_count_equals_seed_summary(name):
    count, _ = param_count(name)
    assert count == SEED_TOTALS[name]
    assert zoo.spec(name).seed_params == SEED_TOTALS[name]


def test_seed_layer_param_counts():
    # Per-layer numbers from the seeds' summaries.
    _, unet = param_count("unet")
    p = unet["params"]
    sizes = {k: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v)) for k, v in p.items()}
    assert sizes["conv2d"] == 448 and sizes["conv2d_9"] == 590_080
    assert sizes["conv2d_transpose"] == 131_200 and sizes["conv2d_transpose_3"] == 2_064
    assert sizes["conv2d_10"] == 295_040 and sizes["conv2d_18"] == 17
    _, grad = param_count("steel_gradcam")
    assert grad["params"]["dense"]["kernel"].shape == (9216, 64)  # seed: dense_1 589,888


def test_chest_classifier_matches_seed():
    count, variables = param_count("chest_xray")
    p = variables["params"]
    vgg = sum(int(np.prod(a.shape)) for k, v in p.items() if k[:6] in {f"block{i}" for i in
              range(1, 6)} for a in jax.tree.leaves(v))
    assert vgg == 14_714_688  # seed 001: "vgg16 (Model) (None, 16, 16, 512) 14714688"
    assert p["block1_conv1"]["kernel"].shape == (3, 3, 3, 64)  # seed: 1792 parameters
    assert p["block6_conv3"]["kernel"].shape == (3, 3, 512, 512)
    assert p["first_dense"]["kernel"].shape == (5 * 5 * 512, 100)  # valid convs 16→10, pool → 5
    assert p["second_dense"]["kernel"].shape == (100, 20)
    assert p["clf"]["kernel"].shape == (20, 2)
    assert count == 14_714_688 + 3 * (9 * 512 * 512 + 512) + 12_800 * 100 + 100 + 2_020 + 42


# name -> (options for a small copy, expected output shape per sample)
SMALL = {
    "unet": ({"input_shape": (32, 32, 3), "base_filters": 2}, (32, 32, 1)),
    "unet_explain": ({"input_shape": (32, 32, 3), "base_filters": 2}, (32 * 32,)),
    "chest_xray": ({"input_shape": (256, 256, 3), "width_divisor": 64}, (2,)),
    "vgg7": ({"input_shape": (64, 64, 3), "filters": (4, 4, 8, 8, 8), "hidden": 8}, (8,)),
    "mnist1d_cnn": ({}, (10,)),
    "steel_cam": ({"input_shape": (24, 24, 1)}, (6,)),
    "steel_gradcam": ({"input_shape": (32, 32, 1)}, (6,)),
    "tabular_mlp": ({}, (1,)),
    "clever_hans_cnn": ({}, (2,)),
    "vit": ({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "image_size": 16, "patch_size": 8, "num_labels": 4}, (4,)),
    "bert": ({"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
              "intermediate_size": 32, "sequence_length": 6}, (2,)),
    "llama": ({"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
               "sequence_length": 6}, (6, 50)),
}


def test_every_model_has_a_small_configuration():
    assert sorted(SMALL) == sorted(zoo.NAMES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_shapes_and_metadata(name):
    options, out_shape = SMALL[name]
    net = zoo.get(name, pretrained=False, key=1, **options)
    assert isinstance(net, jxai.Network)
    meta = net.metadata
    assert meta["name"] == name and tuple(meta["input_shape"]) == net.input_shape
    assert "preprocessing" in meta and meta["layer_names"]
    x = jax.random.uniform(jax.random.key(2), (3, *net.input_shape))
    y = np.asarray(net(x))
    assert y.shape == (3, *out_shape) and np.isfinite(y).all()
    activation = meta["output_activation"]
    stripped = net.without_output_activation()
    logits = np.asarray(stripped(x))
    assert logits.shape == y.shape
    if activation == "softmax":
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), y, rtol=1e-5, atol=1e-7)
    elif activation == "sigmoid":
        np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(logits)), y, rtol=1e-5, atol=1e-7)
    else:
        assert activation is None and meta["output_activation_path"] is None
        np.testing.assert_array_equal(logits, y)


def test_dropout_only_in_training_mode():
    net = zoo.get("clever_hans_cnn", pretrained=False, key=0)
    x = jax.random.uniform(jax.random.key(1), (4, 64, 64, 1))
    a = net.apply(x)
    np.testing.assert_array_equal(a, net.apply(x, train=False))
    b = net.apply(x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)


def test_layer_names_follow_call_order_and_keras():
    for stem in STEMS:
        record = json.loads((ZOO / f"{stem}.json").read_text())
        net = zoo.get(record["zoo_name"], pretrained=False, **record["options"])
        # Keras' own (automatic or seed-given) names of the weighted layers, in model order.
        assert net.metadata["layer_names"] == record["layer_names"], stem
        assert net.param_count() == record["params"], stem


def test_caffe_preprocessing_equals_keras():
    data = np.load(ZOO / "chest_small.npz")
    raw = data["x_raw"].astype(np.float32)
    before = raw.copy()
    out = zoo.preprocess(zoo.get("chest_xray", pretrained=False, **SMALL["chest_xray"][0]), raw)
    np.testing.assert_array_equal(raw, before)  # Keras modifies float input in place; we do not
    np.testing.assert_allclose(out[:, :16, :16], data["x_caffe_corner"], rtol=0, atol=1e-5)
    # The literal formula: BGR order, ImageNet means.
    np.testing.assert_allclose(out[..., 0], raw[..., 2] - 103.939, atol=1e-4)
    np.testing.assert_allclose(out[..., 2], raw[..., 0] - 123.68, atol=1e-4)


def test_preprocessing_errors_are_clear():
    with pytest.raises(ValueError, match="3 channels"):
        zoo.preprocess("caffe", np.zeros((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="minimum"):
        zoo.preprocess("minmax", np.zeros((1, 4)))
    with pytest.raises(ValueError, match="unknown preprocessing"):
        zoo.preprocess({"name": "bogus"}, np.zeros(1))
    np.testing.assert_allclose(
        zoo.preprocess({"name": "minmax", "minimum": [0, 1], "maximum": [2, 1]}, [[1.0, 5.0]]),
        [[0.5, 0.0]])


def test_bad_configurations_raise_with_the_reason():
    with pytest.raises(KeyError, match="known models"):
        zoo.get("resnet50")
    with pytest.raises(ValueError, match="multiples of 16"):
        zoo.get_module("unet", input_shape=(100, 100, 3))
    with pytest.raises(ValueError, match="at least 256"):
        zoo.get_module("chest_xray", input_shape=(128, 128, 3))


# -- Keras -> zoo round trips -------------------------------------------------------------------

def _inputs(stem, net, data):
    if "x" in data:
        return data["x"]
    raw = data["x_raw"].astype(np.float32)
    return np.concatenate([zoo.preprocess(net, raw), raw / np.float32(127.5) - np.float32(1.0)])


def _unzip(tmp_path, name):
    target = tmp_path / name
    with gzip.open(ZOO / f"{name}.gz") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


@pytest.mark.parametrize("stem", STEMS)
def test_legacy_h5_by_layer_name_reproduces_keras(stem, tmp_path):
    """Independent of the converter: copy each Keras layer's (kernel, bias) into the zoo module
    parameter of the same name, then compare with the outputs tf.keras 2.14 computed."""
    record = json.loads((ZOO / f"{stem}.json").read_text())
    net = zoo.get(record["zoo_name"], pretrained=False, **record["options"])
    params = jax.tree.map(np.asarray, dict(net.variables["params"]))
    with h5py.File(_unzip(tmp_path, f"{stem}_legacy.h5"), "r") as f:
        for name in f.attrs["layer_names"]:
            name = name.decode() if isinstance(name, bytes) else name
            weight_names = [w.decode() if isinstance(w, bytes) else w
                            for w in f[name].attrs["weight_names"]]
            if not weight_names:
                continue
            kernel, bias = (np.asarray(f[name][w]) for w in weight_names)
            assert params[name]["kernel"].shape == kernel.shape, name
            params[name] = {"kernel": kernel, "bias": bias}
    net = jxai.Network(net.module, {"params": params}, net.metadata)
    data = np.load(ZOO / f"{stem}.npz")
    np.testing.assert_allclose(np.asarray(net(_inputs(stem, net, data))), data["y"],
                               rtol=0, atol=1e-5)


def _load_weights():
    keras_converter = pytest.importorskip("jxai.converters.keras")
    if not hasattr(keras_converter, "load_weights"):
        pytest.skip("jxai.converters.keras.load_weights has not landed yet")
    return keras_converter.load_weights


def _as_network(loaded, net):
    if isinstance(loaded, jxai.Network):
        return loaded
    variables = loaded if "params" in loaded else {"params": loaded}
    return jxai.Network(net.module, variables, net.metadata)


@pytest.mark.parametrize("suffix", [".weights.h5", "_legacy.h5"])
@pytest.mark.parametrize("stem", STEMS)
def test_converter_load_weights_round_trip(stem, suffix, tmp_path):
    """The converter's load_weights maps a Keras weights file onto the zoo module: legacy files by
    layer name; tf.keras 2.14 ``.weights.h5`` (groups named by class counter, no layer names) by
    name where the zoo uses the Keras automatic names (U-Net, MNIST-1D, steel, tabular) and by
    call order where the seed named its layers (chest ``block1_conv1``, VGG7, Clever Hans)."""
    load_weights = _load_weights()
    record = json.loads((ZOO / f"{stem}.json").read_text())
    net = zoo.get(record["zoo_name"], pretrained=False, key=7, **record["options"])
    variables = load_weights(net.module, _unzip(tmp_path, f"{stem}{suffix}"), net.variables,
                             input_shape=net.input_shape)
    loaded = _as_network(variables, net)
    data = np.load(ZOO / f"{stem}.npz")
    np.testing.assert_allclose(np.asarray(loaded(_inputs(stem, net, data))), data["y"],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["unet_explain", "chest_xray", "mnist1d_cnn", "steel_cam",
                                  "tabular_mlp"])
def test_lrp_epsilon_conserves_relevance_on_zoo_modules(name):
    """Every activation, pooling and concatenation of a zoo model is LRP-ready: with zero biases
    (the Keras initialisation) LRP-ε relevance at the input sums to the explained logit."""
    options, _ = SMALL[name]
    net = zoo.get(name, pretrained=False, key=4, **options)
    x = jax.random.uniform(jax.random.key(5), (2, *net.input_shape))
    relevance = np.asarray(jxai.explain(net, x, "lrp.epsilon", epsilon=1e-9), np.float64)
    logits = np.asarray(net.without_output_activation()(x), np.float64).reshape(2, -1)
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), logits.max(1), rtol=1e-3)
