"""CAM family and occlusion against literal formulas.

On the CAM architecture (conv-relu, conv-relu, global average pooling, dense) everything is
known in closed form: the activations ``A`` of the last conv block come from Flax's
``capture_intermediates`` and the gradient of logit ``t`` there is ``W[:, t] / (h·w)`` at every
position. CAM, Grad-CAM, Grad-CAM++ and Layer-CAM are then numpy one-liners. Occlusion is checked
against a literal loop over windows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxai
from jxai import layers


class GapCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = layers.Activation("relu", name="act1")(nn.Conv(5, (3, 3), name="conv1")(x))
        x = layers.Activation("relu", name="act2")(nn.Conv(6, (3, 3), name="conv2")(x))
        return nn.Dense(4, name="dense")(layers.GlobalAvgPool(name="gap")(x))


class PoolCNN(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> flatten -> dense: no GAP."""

    @nn.compact
    def __call__(self, x):
        x = layers.Activation("relu", name="act1")(nn.Conv(4, (3, 3), name="conv1")(x))
        x = layers.MaxPool((2, 2), name="pool1")(x)
        x = layers.Activation("relu", name="act2")(nn.Conv(5, (3, 3), name="conv2")(x))
        return nn.Dense(3, name="dense")(x.reshape(x.shape[0], -1))


def gap_setup():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 10, 2))
    module = GapCNN()
    variables = module.init(jax.random.PRNGKey(0), x)
    network = jxai.Network(module, variables)
    _, state = module.apply(variables, x, capture_intermediates=True)
    activations = np.asarray(state["intermediates"]["act2"]["__call__"][0], np.float64)
    kernel = np.asarray(variables["params"]["dense"]["kernel"], np.float64)
    target = np.array([0, 3, 1])
    return network, x, activations, kernel, target


def test_default_layer_is_the_last_conv_after_its_activation():
    network, x, activations, kernel, target = gap_setup()
    default = jxai.explain(network, x, "grad_cam", target=target, resize=False)
    named = jxai.explain(network, x, "grad_cam", target=target, resize=False, layer="act2")
    np.testing.assert_array_equal(np.asarray(default), np.asarray(named))


def test_cam_is_the_dense_weighted_feature_map():
    network, x, activations, kernel, target = gap_setup()
    cam = jxai.explain(network, x, "cam", target=target, resize=False)
    expected = np.einsum("bhwc,cb->bhw", activations, kernel[:, target])
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-6)


def test_grad_cam_at_the_last_conv_of_a_gap_net_is_cam_up_to_a_positive_scale():
    network, x, activations, kernel, target = gap_setup()
    cam = np.asarray(jxai.explain(network, x, "cam", target=target, resize=False), np.float64)
    grad_cam = np.asarray(jxai.explain(network, x, "grad_cam", target=target, resize=False,
                                       relu=False), np.float64)
    scale = (grad_cam.reshape(3, -1) * cam.reshape(3, -1)).sum(1) / (cam.reshape(3, -1) ** 2).sum(1)
    assert np.all(scale > 0)
    np.testing.assert_allclose(scale, 1 / 100, rtol=1e-5)  # 1 / (h * w)
    np.testing.assert_allclose(grad_cam, cam / 100, rtol=1e-4, atol=1e-7)
    with_relu = jxai.explain(network, x, "grad_cam", target=target, resize=False)
    np.testing.assert_allclose(with_relu, np.maximum(cam, 0) / 100, rtol=1e-4, atol=1e-7)


def test_grad_cam_pp_and_layer_cam_literal_formulas():
    network, x, activations, kernel, target = gap_setup()
    grads = np.broadcast_to(kernel[:, target].T[:, None, None, :] / 100, activations.shape)
    squared, cubed = grads**2, grads**3
    denominator = 2 * squared + activations.sum(axis=(1, 2), keepdims=True) * cubed
    alphas = squared / np.where(denominator != 0, denominator, 1)
    weights = (alphas * np.maximum(grads, 0)).sum(axis=(1, 2), keepdims=True)
    expected_pp = np.maximum((weights * activations).sum(-1), 0)
    pp = jxai.explain(network, x, "grad_cam_pp", target=target, resize=False)
    np.testing.assert_allclose(pp, expected_pp, rtol=1e-4, atol=1e-8)
    expected_layer = np.maximum((np.maximum(grads, 0) * activations).sum(-1), 0)
    layer_cam = jxai.explain(network, x, "layer_cam", target=target, resize=False)
    np.testing.assert_allclose(layer_cam, expected_layer, rtol=1e-4, atol=1e-8)


def _bilinear_half_pixel(maps, size):
    """Literal bilinear upsampling with half-pixel centres (align_corners=False), separable."""
    def axis_weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        frac = src - low
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), low] += 1 - frac
        matrix[np.arange(n_out), high] += frac
        return matrix

    rows = axis_weights(maps.shape[1], size[0])
    cols = axis_weights(maps.shape[2], size[1])
    return np.einsum("ih,bhw,jw->bij", rows, maps, cols)


def test_resize_is_bilinear_to_the_input_shape():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 12, 3))
    module = PoolCNN()
    network = jxai.Network(module, module.init(jax.random.PRNGKey(0), x))
    small = np.asarray(jxai.explain(network, x, "grad_cam", resize=False), np.float64)
    assert small.shape == (2, 6, 6)
    large = jxai.explain(network, x, "grad_cam")
    assert large.shape == (2, 12, 12)
    np.testing.assert_allclose(large, _bilinear_half_pixel(small, (12, 12)), rtol=1e-5,
                               atol=1e-6 * np.abs(small).max())
    nearest = jxai.explain(network, x, "grad_cam", interpolation="nearest")
    np.testing.assert_allclose(nearest, np.repeat(np.repeat(small, 2, 1), 2, 2), rtol=1e-6)


def test_guided_grad_cam_is_guided_backprop_times_the_map():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 12, 3))
    module = PoolCNN()
    network = jxai.Network(module, module.init(jax.random.PRNGKey(0), x))
    guided = np.asarray(jxai.explain(network, x, "guided_backprop"))
    heat = np.asarray(jxai.explain(network, x, "grad_cam"))
    out = jxai.explain(network, x, "guided_grad_cam")
    np.testing.assert_allclose(out, guided * heat[..., None], rtol=1e-5, atol=1e-9)


def test_cam_errors_name_the_layer_and_the_fix():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 12, 12, 3))
    module = PoolCNN()
    network = jxai.Network(module, module.init(jax.random.PRNGKey(0), x))
    with pytest.raises(ValueError, match="no jxai.layers.GlobalAvgPool"):
        jxai.explain(network, x, "cam")
    with pytest.raises(ValueError, match="'conv9' is not a module path.*act2"):
        jxai.explain(network, x, "grad_cam", layer="conv9")
    with pytest.raises(ValueError, match="no spatial axes"):
        jxai.explain(network, x, "grad_cam", layer="dense")
    mlp = nn.Dense(3)
    flat = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="no flax.linen.Conv"):
        jxai.explain(jxai.Network(mlp, mlp.init(jax.random.PRNGKey(0), flat)), flat, "grad_cam")


def test_several_targets_give_one_map_each():
    network, x, activations, kernel, target = gap_setup()
    both = jxai.explain(network, x, "cam", target=jxai.several(0, 2), resize=False)
    assert both.shape == (2, 3, 10, 10)
    for row, cls in enumerate((0, 2)):
        expected = np.einsum("bhwc,c->bhw", activations, kernel[:, cls])
        np.testing.assert_allclose(both[row], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ occlusion
def _occlusion_literal(network, x, target, window, stride, baseline):
    x = np.asarray(x)
    features = x.shape[1:]
    counts = [-(-(n - w) // s) + 1 for n, w, s in zip(features, window, stride, strict=True)]
    total = np.zeros_like(x, np.float64)
    coverage = np.zeros(features)
    clean = np.asarray(network(x))[np.arange(len(x)), target]
    for corner in np.ndindex(*counts):
        box = tuple(slice(c * s, c * s + w) for c, s, w in zip(corner, stride, window, strict=True))
        occluded = x.copy()
        occluded[(slice(None), *box)] = baseline
        drop = clean - np.asarray(network(jnp.asarray(occluded)))[np.arange(len(x)), target]
        total[(slice(None), *box)] += drop.reshape(-1, *[1] * len(features))
        coverage[box] += 1
    return total / coverage


@pytest.mark.parametrize("window,stride", [((3, 3), (2, 2)), ((4, 4, 1), (3, 3, 1))])
def test_occlusion_literal_loop(window, stride):
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 9, 2))
    module = PoolCNN()
    network = jxai.Network(module, module.init(jax.random.PRNGKey(4), x))
    target = np.array([1, 2])
    out = jxai.explain(network, x, "occlusion", target=target, window=window, stride=stride,
                       baseline=0.5, batch_size=7)
    full_window = window if len(window) == 3 else (*window, 2)
    full_stride = stride if len(stride) == 3 else (*stride, 2)
    expected = _occlusion_literal(network, x, target, full_window, full_stride, 0.5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_occlusion_on_tabular_input():
    module = nn.Dense(2)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7))
    network = jxai.Network(module, module.init(jax.random.PRNGKey(1), x))
    out = jxai.explain(network, x, "occlusion", window=1, target=0)
    kernel = np.asarray(network.variables["params"]["kernel"])
    np.testing.assert_allclose(out, np.asarray(x) * kernel[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit the input's feature shape"):
        jxai.explain(network, x, "occlusion", window=9)
