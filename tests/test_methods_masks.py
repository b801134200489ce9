"""RISE, Score-CAM and SISE: float64 numpy oracles of the papers' formulas (RISE with the same
masks; Score-CAM and SISE on a network whose maps and gradients are known in closed form),
Otsu's threshold against scikit-image's definition, localisation on a model that only sees one
region, mask counts and shapes, keys, 1D and 2D inputs, and the errors.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import layers as L
from jxai.methods.masks import otsu_threshold, rise_masks

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------
# RISE
# --------------------------------------------------------------------------------------------


KERNEL = RNG.normal(size=(6 * 6 * 2, 3)).astype(np.float32)


def small(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ KERNEL)


def test_rise_masks_shapes_values_and_keep_rate():
    masks = np.asarray(rise_masks(jax.random.PRNGKey(0), 400, (12, 10), cells=4,
                                  probability=0.3))
    assert masks.shape == (400, 12, 10)
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert abs(masks.mean() - 0.3) < 0.03  # bilinear upsampling keeps the keep rate
    assert len({m.tobytes() for m in masks}) > 390  # 0.7^16: a few masks keep nothing
    one_d = rise_masks(jax.random.PRNGKey(0), 5, (40,), cells=8)
    assert one_d.shape == (5, 40)


def test_rise_equals_float64_oracle_with_the_same_masks():
    x = RNG.uniform(size=(2, 6, 6, 2)).astype(np.float32)
    key = jax.random.PRNGKey(7)
    ours = np.asarray(jxai.explain(small, x, "rise", target=1, n_masks=50, cells=3,
                                   probability=0.4, key=key, batch_size=16))
    masks = np.asarray(rise_masks(key, 50, (6, 6), cells=3, probability=0.4), np.float64)
    kernel = KERNEL.astype(np.float64)
    reference = np.zeros((2, 6, 6))
    for mask in masks:
        scores = np.tanh((x * mask[None, :, :, None]).reshape(2, -1) @ kernel)[:, 1]
        reference += scores[:, None, None] * mask[None]
    reference /= 50 * 0.4
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_rise_follows_the_key_and_is_deterministic_under_it():
    x = RNG.uniform(size=(1, 6, 6, 2)).astype(np.float32)
    a, b, c = (jxai.explain(small, x, "rise", target=0, n_masks=20, cells=3,
                            key=jax.random.PRNGKey(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4


def test_rise_finds_the_only_region_a_model_reads_2d_and_1d():
    def quadrant(x):  # reads the top-left 8x8 quadrant only
        return jnp.sum(x[:, :8, :8], axis=(1, 2, 3))[:, None]

    x = RNG.uniform(0.5, 1.0, size=(2, 16, 16, 1)).astype(np.float32)
    saliency = np.array(jxai.explain(quadrant, x, "rise", target=0, n_masks=500, cells=4))
    # RISE's map is E[score | the pixel kept]: the mean score plus the pixel's own effect
    saliency -= saliency.min(axis=(1, 2), keepdims=True)
    inside, outside = saliency[:, :8, :8].mean(), saliency[:, 8:, 8:].mean()
    assert inside > 2 * outside  # 3.0 with these masks; Monte Carlo noise is the rest

    def segment(x):  # reads samples 8..15 of a 32-long signal
        return jnp.sum(x[:, 8:16], axis=(1, 2))[:, None]

    signal = RNG.uniform(0.5, 1.0, size=(1, 32, 1)).astype(np.float32)
    saliency = np.array(jxai.explain(segment, signal, "rise", target=0, n_masks=500,
                                       cells=8))
    assert saliency.shape == (1, 32)
    assert np.argmax(saliency[0]) in range(8, 16)
    saliency -= saliency.min()
    assert saliency[0, 8:16].mean() > 3 * saliency[0, 24:].mean()


# --------------------------------------------------------------------------------------------
# A network whose maps and gradients are known: 1x1 conv -> ReLU -> global mean -> dense
# --------------------------------------------------------------------------------------------


class Pointwise(nn.Module):
    """A = ReLU(x W + b) per position; score = mean_s(A) V + c (1D or 2D)."""

    @nn.compact
    def __call__(self, x):
        a = nn.Conv(3, (1,) * (x.ndim - 2), name="conv")(x)
        a = L.Activation("relu", name="relu")(a)
        return nn.Dense(2, name="head")(L.GlobalAvgPool(name="gap")(a))


def pointwise(spatial, key=0):
    rng = np.random.default_rng(key)
    params = {
        "conv": {"kernel": rng.normal(size=(*(1,) * len(spatial), 2, 3)).astype(np.float32),
                 "bias": rng.normal(0, 0.2, 3).astype(np.float32)},
        "head": {"kernel": np.array([[1.0, -0.5], [-0.7, 0.2], [0.6, 0.9]], np.float32),
                 "bias": np.array([0.1, -0.2], np.float32)},
    }
    return jxai.Network(Pointwise(), {"params": params})


def _numpy_forward(network, x, with_maps=False):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), network.variables["params"])
    z = x.astype(np.float64) @ p["conv"]["kernel"].reshape(2, 3) + p["conv"]["bias"]
    a = np.maximum(z, 0)
    score = a.mean(axis=tuple(range(1, a.ndim - 1))) @ p["head"]["kernel"] + p["head"]["bias"]
    return (score, z, a, p) if with_maps else score


def _minmax_masks(maps):
    axes = tuple(range(1, maps.ndim - 1))
    low = maps.min(axis=axes, keepdims=True)
    return (maps - low) / (maps.max(axis=axes, keepdims=True) - low + 1e-6)


@pytest.mark.parametrize("spatial", [(5, 4), (12,)])
def test_score_cam_equals_float64_oracle(spatial):
    network = pointwise(spatial)
    x = RNG.uniform(-1, 1, size=(2, *spatial, 2)).astype(np.float32)
    ours = np.asarray(jxai.explain(network, x, "score_cam", target=0, layer="relu"))
    _, _, a, _ = _numpy_forward(network, x, True)
    masks = _minmax_masks(a)  # the layer has the input's resolution: no resizing
    base = _numpy_forward(network, np.zeros_like(x))[:, 0]
    alphas = np.stack([_numpy_forward(network, x * masks[..., k:k + 1])[:, 0] - base
                       for k in range(3)], axis=1)
    reference = np.maximum(np.einsum("bk,b...k->b...", alphas, a), 0)
    assert ours.shape == (2, *spatial)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def skimage_otsu(image, nbins=256):
    """scikit-image's threshold_otsu (0.2x), written out in numpy float64."""
    image = np.asarray(image, np.float64).ravel()
    if image.min() == image.max():
        return image.min()
    hist, edges = np.histogram(image, bins=nbins, range=(image.min(), image.max()))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    mean1 = np.cumsum(hist * centres) / weight1
    mean2 = (np.cumsum((hist * centres)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centres[np.argmax(variance12)]


def test_otsu_threshold_is_scikit_images_definition():
    maps = np.stack([
        RNG.uniform(size=(20, 20)),
        np.concatenate([RNG.normal(0.2, 0.05, 200), RNG.normal(0.8, 0.1, 200)]).reshape(20, 20),
        RNG.exponential(size=(20, 20)),
        np.full((20, 20), 0.3),
    ]).astype(np.float32)
    ours = np.asarray(otsu_threshold(jnp.asarray(maps)))
    reference = np.array([skimage_otsu(m) for m in maps])
    bin_width = (maps.reshape(4, -1).max(1) - maps.reshape(4, -1).min(1)) / 256
    np.testing.assert_allclose(ours, reference, atol=1e-5 + 1e-3 * bin_width.max())
    assert 0.4 < ours[1] < 0.6  # between the two modes


def _numpy_sise(network, x, target, temperature=100.0):
    """Seed 003's SISE (xai_utils) in float64 for layers conv (pre-ReLU) and relu."""
    score, z, a, p = _numpy_forward(network, x, True)
    positions = np.prod(a.shape[1:-1])
    head = p["head"]["kernel"][:, target]
    grads = {"conv": (z > 0) * head / positions, "relu": np.broadcast_to(head / positions, a.shape)}
    layer_maps = []
    for name, maps in (("conv", z), ("relu", a)):
        significance = grads[name].mean(axis=tuple(range(1, maps.ndim - 1)))  # (B, K)
        keep = significance > 0.0 * significance.max(axis=1, keepdims=True)
        masks = _minmax_masks(maps)
        scores = np.stack([_numpy_forward(network, x * masks[..., k:k + 1])[:, target]
                           for k in range(maps.shape[-1])], axis=1)
        area = masks.sum(axis=tuple(range(1, maps.ndim - 1))) + 1e-6
        summed = np.einsum("bk,b...k->b...", np.where(keep, scores / area, 0.0), masks)
        axes = tuple(range(1, summed.ndim))
        summed = summed - summed.min(axis=axes, keepdims=True)
        layer_maps.append(summed / summed.max(axis=axes, keepdims=True))
    low, high = layer_maps
    thresholds = np.array([skimage_otsu(m) for m in high]).reshape(-1, *(1,) * (high.ndim - 1))
    if temperature is None:
        gate = (high > thresholds).astype(float)
    else:
        gate = 1.0 / (1.0 + np.exp(-(high - thresholds) * temperature))
    return (low + high) * gate


@pytest.mark.parametrize("spatial,temperature", [((6, 5), 100.0), ((16,), None)])
def test_sise_equals_float64_oracle_of_the_seeds_code(spatial, temperature):
    network = pointwise(spatial, key=3)
    x = RNG.uniform(-1, 1, size=(2, *spatial, 2)).astype(np.float32)
    ours = np.asarray(jxai.explain(network, x, "sise", target=0, layers=("conv", "relu"),
                                   temperature=temperature))
    reference = _numpy_sise(network, x, 0, temperature)
    assert ours.shape == (2, *spatial)
    np.testing.assert_allclose(ours, reference, rtol=2e-4, atol=2e-4)


def test_sise_drops_channels_whose_average_gradient_is_below_threshold():
    network = pointwise((6, 6))
    x = RNG.uniform(-1, 1, size=(1, 6, 6, 2)).astype(np.float32)
    # class 0 reads channels 0 and 2 positively (head column [1, -0.7, 0.6]); grad_thr=0.7
    # keeps only channel 0 (0.6 < 0.7 * 1.0): the map is channel 0's mask, normalised
    only = np.asarray(jxai.explain(network, x, "sise", target=0, layers=("relu",),
                                   grad_thr=0.7))
    _, _, a, _ = _numpy_forward(network, x, True)
    mask = _minmax_masks(a)[..., 0]
    expected = (mask - mask.min()) / (mask.max() - mask.min())
    np.testing.assert_allclose(only, expected, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Localisation on networks that only see one region
# --------------------------------------------------------------------------------------------


def one_region_input(spatial):
    """Channel 0 lives in the first quadrant / quarter, channel 1 everywhere else."""
    x = np.zeros((1, *spatial, 2), np.float32)
    region = tuple(slice(0, n // 2) for n in spatial) if len(spatial) == 2 else (slice(0, 8),)
    x[(0, *region, 0)] = RNG.uniform(0.5, 1.0, x[(0, *region, 0)].shape)
    rest = np.ones(spatial, bool)
    rest[region] = False
    x[0, rest, 1] = RNG.uniform(0.5, 1.0, rest.sum())
    return x, region


class OneChannel(nn.Module):
    """Conv (channel 0 <- input 0, channel 1 <- input 1) -> ReLU -> pool -> conv -> head
    reading channel 0 only: the class depends on the region where input channel 0 lives.
    Pointwise kernels, so no map bleeds out of its region beyond the upsampling's half cell."""

    @nn.compact
    def __call__(self, x):
        window = (1,) * (x.ndim - 2)
        a = L.Activation("relu", name="relu1")(nn.Conv(2, window, name="conv1")(x))
        a = L.MaxPool((2,) * (x.ndim - 2), name="pool")(a)
        a = L.Activation("relu", name="relu2")(nn.Conv(2, window, name="conv2")(a))
        return nn.Dense(2, name="head")(L.GlobalAvgPool(name="gap")(a))


def one_channel_network(rank):
    window = (1,) * rank
    diagonal = np.zeros((*window, 2, 2), np.float32)
    diagonal[..., 0, 0] = diagonal[..., 1, 1] = 1.0 / np.prod(window)
    params = {"conv1": {"kernel": diagonal, "bias": np.zeros(2, np.float32)},
              "conv2": {"kernel": diagonal, "bias": np.zeros(2, np.float32)},
              "head": {"kernel": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
                       "bias": np.zeros(2, np.float32)}}
    return jxai.Network(OneChannel(), {"params": params})


@pytest.mark.parametrize("spatial", [(16, 16), (32,)])
@pytest.mark.parametrize("method,params", [("score_cam", {}), ("sise", {}),
                                           ("rise", {"n_masks": 2000, "cells": 4})])
def test_maps_land_on_the_only_region_the_class_depends_on(spatial, method, params):
    network = one_channel_network(len(spatial))
    x, region = one_region_input(spatial)
    heat = np.asarray(jxai.explain(network, x, method, target=0, **params))[0]
    assert heat.shape == spatial
    heat = heat - heat.min()  # RISE's map has the mean score as its floor
    inside = np.zeros(spatial, bool)
    inside[region] = True
    assert heat[inside].mean() > 3 * heat[~inside].mean(), method
    assert np.unravel_index(np.argmax(heat), spatial)[0] < spatial[0] // 2


def test_sise_auto_layers_are_the_pooling_inputs_and_the_last_convolution():
    network = one_channel_network(2)
    x, _ = one_region_input((16, 16))
    auto = jxai.explain(network, x, "sise", target=0)
    named = jxai.explain(network, x, "sise", target=0, layers=("relu1", "relu2"))
    np.testing.assert_array_equal(auto, named)


def test_seed_003_call_on_the_mnist1d_cnn():
    # SISE(x, model, label, [['conv1d_2']], grad_thr=0.): the Keras layer ends in its ReLU
    network = jxai.models.get("mnist1d_cnn", pretrained=False, filters=(8, 8, 8), hidden=16)
    x = RNG.normal(size=(2, 40, 1)).astype(np.float32)
    heat = np.asarray(jxai.explain(network, x, "sise", layers=("conv1d_2_relu",),
                                   grad_thr=0.0))
    assert heat.shape == (2, 40)
    np.testing.assert_allclose(heat.min(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(heat.max(1), 1.0, atol=1e-6)  # one layer: its normalised map


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,params,message", [
    ("rise", {"n_masks": 0}, "rise: n_masks must be an integer >= 1, got 0"),
    ("rise", {"probability": 0.0}, r"rise: probability must be in \(0, 1\], got 0.0"),
    ("rise", {"cells": 20}, "cells=20 is more than the input's smallest spatial axis"),
    ("sise", {"temperature": 0.0}, "sise: temperature must be > 0 or None"),
    ("sise", {"layers": ("relu9",)}, "sise: layer 'relu9' is not a module path"),
    ("sise", {"layers": ("head",)}, r"layer 'head' has output shape \(1, 2\)"),
    ("score_cam", {"layer": "gap"}, r"layer 'gap' has output shape"),
])
def test_bad_parameters_are_clear_errors(method, params, message):
    network = one_channel_network(2)
    x, _ = one_region_input((16, 16))
    with pytest.raises(ValueError, match=message):
        jxai.explain(network, x, method, target=0, **params)


def test_score_cam_without_a_convolution_names_the_layer_parameter():
    network = jxai.models.get("tabular_mlp", pretrained=False)
    with pytest.raises(ValueError, match="score_cam: the network has no flax.linen.Conv"):
        jxai.explain(network, np.ones((1, 37), np.float32), "score_cam")
