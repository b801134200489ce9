"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, Layer-CAM and Guided Grad-CAM.

All read the activations :math:`A` of one layer (shape ``(B, *spatial, C)``, channels last) and
the gradient :math:`G = \\partial S_t / \\partial A` of the target score there, both from one
``ctx.backward(x, target, taps=(layer,))``. Only the part of the network after the layer is
back-propagated: the gradient with respect to the input is never used, and XLA drops it.

The layer is a module path (``layer="features/conv5"``, as in ``network.metadata["layer_names"]``
or ``[info.path for info in ctx.layers]``). By default it is the last ``flax.linen.Conv``; when
the module called right after it is a ``jxai.layers.Activation`` with the same output shape (a
Keras ``Conv2D(activation=...)`` converts to the pair), its output (the rectified map) is used.

Vision transformers: a layer whose output is tokens (B, T, D) for an image input (B, H, W, C) is
read on the patch grid: the prefix tokens (the class token) are dropped and the patch tokens laid
out as (B, gh, gw, D) (`jxai.transformer.token_grid`), so Grad-CAM's weights are the gradients
averaged over the patch tokens, ``w_d = mean_t G_t,d``, and the map ``ReLU(Σ_d w_d A_t,d)`` lives on
the patch grid, resized to the image. ``layer`` may name a module that is not itself a layer,
such as a transformer block (``layer="vit/encoder/layer_3"``): its last layer call is read (a
ViT block's second residual sum, the block's output). The last block's patch tokens get no
gradient when the head reads the class token only: take an earlier block, or the last block's
``layernorm_before`` (whose patch tokens feed the class token through attention).

Output convention: one map per sample without a channel axis: ``(B, *x_spatial)`` with
``resize=True`` (bilinear, half-pixel centres, as ``torch.nn.functional.interpolate(...,
align_corners=False)``), ``(B, *layer_spatial)`` with ``resize=False`` (Captum's ``LayerGradCam``
returns the same values as ``(B, 1, *layer_spatial)``). Guided Grad-CAM is shaped like ``x``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jxai import transformer
from jxai.methods._common import resize_map
from jxai.methods._registry import register_method

__all__ = ["cam", "default_layer", "grad_cam", "grad_cam_pp", "guided_grad_cam", "layer_cam"]


def default_layer(ctx, method: str) -> str:
    """The last convolution's path (or the `Activation` module right after it, same shape)."""
    infos = list(ctx.layers)
    convolutions = [i for i, info in enumerate(infos) if info.kind == "conv"]
    if not convolutions:
        kinds = sorted({info.module_type.__name__ for info in infos})
        raise ValueError(
            f"{method}: the network has no flax.linen.Conv layer to take as the default; pass "
            f"layer='<module path>' naming a layer with spatial axes (module types present: "
            f"{', '.join(kinds)})"
        )
    index = convolutions[-1]
    chosen = infos[index]
    if index + 1 < len(infos):
        following = infos[index + 1]
        if (following.kind == "activation"
                and tuple(following.output_shape) == tuple(chosen.output_shape)):
            chosen = following
    return chosen.path


def _check_layer(ctx, method: str, layer: str) -> str:
    """``layer`` itself, or for the path of a module that is not a layer (a transformer block,
    ``"vit/encoder/layer_3"``) the last layer called inside it, whose output is the module's
    (a ViT block's second residual sum, ``".../add_1"``)."""
    paths = [info.path for info in ctx.layers]
    inside = [p for p in paths if p.startswith(layer.rstrip("/") + "/")]
    if layer not in paths and inside:
        return inside[-1]
    if layer not in paths:
        raise ValueError(
            f"{method}: layer {layer!r} is not a module path of this network; known paths: "
            f"{', '.join(paths)}"
        )
    return layer


def layer_activations(ctx, x, target, method: str, layer: str | None, extra_taps=()):
    """``(A, G, backward)`` at the layer: activations, their gradients, the whole `Backward`."""
    path = default_layer(ctx, method) if layer is None else _check_layer(ctx, method, layer)
    backward = ctx.backward(x, target, taps=(path, *extra_taps))
    activations, grads = backward.activations[path], backward.grads[path]
    if activations.ndim == 3 and x.ndim == 4:  # tokens (B, T, D) of a vision transformer
        activations, grads = _on_patch_grid(ctx, activations, method), _on_patch_grid(
            ctx, grads, method)
    if activations.ndim < 3:
        raise ValueError(
            f"{method}: layer {path!r} has output shape {activations.shape} with no spatial axes; "
            "class activation maps need a (B, *spatial, C) layer such as a convolution"
        )
    return activations, grads, backward


def _on_patch_grid(ctx, tokens, method: str):
    """ViT tokens (B, T, D) → (B, gh, gw, D): the class (prefix) tokens dropped, the patch
    tokens on the patch grid (`jxai.transformer.token_grid`), so the maps are the CNN ones with
    the patch grid as the spatial axes."""
    prefix, grid = transformer.token_grid(ctx.layers, tokens.shape[1], method)
    return tokens[:, prefix:].reshape(tokens.shape[0], *grid, tokens.shape[-1])


def _finish(heatmap, x, relu: bool, resize: bool, interpolation: str, method: str):
    if relu:
        heatmap = jax.nn.relu(heatmap)
    if not resize:
        return heatmap
    spatial_rank = heatmap.ndim - 1
    if x.ndim - 2 == spatial_rank:
        spatial = x.shape[1:-1]  # (B, *spatial, C)
    elif x.ndim - 1 == spatial_rank:
        spatial = x.shape[1:]  # (B, *spatial), no channel axis
    else:
        raise ValueError(
            f"{method}: cannot resize a map with {spatial_rank} spatial axes to an input of shape "
            f"{x.shape}; pass resize=False to get the map at the layer's resolution"
        )
    return resize_map(heatmap, tuple(spatial), interpolation)


def _spatial_axes(a):
    return tuple(range(1, a.ndim - 1))


@register_method("grad_cam", family="cam")
def grad_cam(ctx, x, target, *, layer: str | None = None, relu: bool = True,
             resize: bool = True, interpolation: str = "bilinear"):
    """Grad-CAM: channels weighted by their spatially averaged gradients.

    .. math:: w_c = \\frac{1}{Z} \\sum_{s} G_{s,c}, \\qquad M_s = \\mathrm{ReLU}\\Big(\\sum_c w_c
       A_{s,c}\\Big)

    Args:
      layer: module path of the layer (default: the last convolution, see the module doc).
      relu: apply the final ReLU (the paper; default). ``relu=False`` is Captum's
        ``LayerGradCam`` default (``relu_attributions=False``).
      resize: bilinearly resize to the input's spatial shape (default) or keep the layer's.
      interpolation: ``"bilinear"`` or ``"nearest"``.

    Reference: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017.
    """
    return _grad_cam_map(ctx, x, target, layer, relu, resize, interpolation, "grad_cam")


def _grad_cam_map(ctx, x, target, layer, relu, resize, interpolation, method):
    activations, grads, _ = layer_activations(ctx, x, target, method, layer)
    weights = jnp.mean(grads, axis=_spatial_axes(grads), keepdims=True)
    heatmap = jnp.sum(weights * activations, axis=-1)
    return _finish(heatmap, x, relu, resize, interpolation, method)


@register_method("grad_cam_pp", family="cam")
def grad_cam_pp(ctx, x, target, *, layer: str | None = None, relu: bool = True,
                resize: bool = True, interpolation: str = "bilinear"):
    """Grad-CAM++: channels weighted by positive gradients with pixel-wise coefficients.

    With :math:`G` the gradient of the score (the paper's exponential-score closed form):

    .. math:: \\alpha_{s,c} = \\frac{G_{s,c}^2}{2 G_{s,c}^2 + \\sum_{s'} A_{s',c} G_{s,c}^3},
       \\quad w_c = \\sum_s \\alpha_{s,c} \\mathrm{ReLU}(G_{s,c}), \\quad
       M_s = \\mathrm{ReLU}\\Big(\\sum_c w_c A_{s,c}\\Big)

    where a zero denominator counts as 1. Options as in `grad_cam`.

    Reference: Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations
    for Deep Convolutional Networks", WACV 2018.
    """
    activations, grads, _ = layer_activations(ctx, x, target, "grad_cam_pp", layer)
    axes = _spatial_axes(grads)
    squared = grads * grads
    total_activation = jnp.sum(activations, axis=axes, keepdims=True)
    denominator = 2.0 * squared + total_activation * squared * grads
    denominator = jnp.where(denominator != 0.0, denominator, 1.0)
    alphas = squared / denominator
    weights = jnp.sum(alphas * jax.nn.relu(grads), axis=axes, keepdims=True)
    heatmap = jnp.sum(weights * activations, axis=-1)
    return _finish(heatmap, x, relu, resize, interpolation, "grad_cam_pp")


@register_method("layer_cam", family="cam")
def layer_cam(ctx, x, target, *, layer: str | None = None, relu: bool = True,
              resize: bool = True, interpolation: str = "bilinear"):
    """Layer-CAM: each position weighted by its own positive gradient.

    .. math:: M_s = \\mathrm{ReLU}\\Big(\\sum_c \\mathrm{ReLU}(G_{s,c})\\, A_{s,c}\\Big)

    Options as in `grad_cam`. Reference: Jiang et al., "LayerCAM: Exploring Hierarchical Class
    Activation Maps for Localization", IEEE TIP 2021.
    """
    activations, grads, _ = layer_activations(ctx, x, target, "layer_cam", layer)
    heatmap = jnp.sum(jax.nn.relu(grads) * activations, axis=-1)
    return _finish(heatmap, x, relu, resize, interpolation, "layer_cam")


def _pooling_after(ctx, layer_path: str) -> str:
    infos = list(ctx.layers)
    start = next(i for i, info in enumerate(infos) if info.path == layer_path)
    for info in infos[start + 1:]:
        if info.kind == "global_avg_pool":
            return info.path
    raise ValueError(
        f"cam: no jxai.layers.GlobalAvgPool module is called after layer {layer_path!r}; CAM is "
        "defined for global-average-pooling networks (conv -> GAP -> dense). Use "
        "method='grad_cam', which equals CAM up to a positive factor on such networks and works "
        "on any network"
    )


@register_method("cam", family="cam")
def cam(ctx, x, target, *, layer: str | None = None, relu: bool = False,
        resize: bool = True, interpolation: str = "bilinear"):
    """CAM: the feature maps weighted by the head's weights of the target class.

    .. math:: M_s = \\sum_c w^t_c A_{s,c}, \\qquad S_t = \\sum_c w^t_c \\,\\mathrm{GAP}(A)_c + b_t

    The network must global-average-pool the layer (a ``jxai.layers.GlobalAvgPool`` module after
    it). :math:`w^t_c = \\partial S_t / \\partial\\, \\mathrm{GAP}(A)_c`, read at the pooling
    output, is the dense weight of class ``t`` when the head is one dense layer (the CAM
    architecture); with a deeper head it is that head's local linearization. No ReLU by default
    (the paper); ``relu=True`` clips negative evidence. Options as in `grad_cam`.

    Reference: Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.
    """
    path = default_layer(ctx, "cam") if layer is None else _check_layer(ctx, "cam", layer)
    pooling = _pooling_after(ctx, path)
    activations, _, backward = layer_activations(ctx, x, target, "cam", path, (pooling,))
    class_weights = backward.grads[pooling]
    class_weights = class_weights.reshape(class_weights.shape[0], *(1,) * (activations.ndim - 2),
                                          class_weights.shape[-1])
    heatmap = jnp.sum(class_weights * activations, axis=-1)
    return _finish(heatmap, x, relu, resize, interpolation, "cam")


@register_method("guided_grad_cam", family="cam")
def guided_grad_cam(ctx, x, target, *, layer: str | None = None,
                    interpolation: str = "bilinear"):
    """Guided Grad-CAM: guided backprop times the Grad-CAM map resized to the input.

    .. math:: R = R^{\\text{guided}} \\odot \\mathrm{resize}(M^{\\text{Grad-CAM}})

    broadcast over channels; shaped like ``x``. Captum's ``GuidedGradCam`` upsamples with
    ``"nearest"`` by default; pass ``interpolation="nearest"`` to match it.

    Reference: Selvaraju et al., ICCV 2017.
    """
    heatmap = _grad_cam_map(ctx, x, target, layer, True, True, interpolation, "guided_grad_cam")
    guided = ctx.attribute("guided_backprop", x, target)
    if heatmap.ndim < guided.ndim:
        heatmap = heatmap[..., None]
    return guided * heatmap
