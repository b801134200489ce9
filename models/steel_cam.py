"""The steel-defect CAM CNN of the seed and its Grad-CAM variant (NEU surface defects, 6 classes).

CAM network (93,062 parameters at 200×200×1), Keras' automatic names:
``conv2d`` (32) → ``max_pooling2d`` → ``conv2d_1`` (64) → ``max_pooling2d_1`` → ``conv2d_2`` (64)
→ ``max_pooling2d_2`` → ``conv2d_3`` (64) → ``global_average_pooling2d`` → ``dense`` (6, softmax).
All convolutions 3×3 ``same`` with ReLU, poolings 2×2. The class activation map of class c is
``M_c(x, y) = Σ_k w_k^c f_k(x, y)`` over the 25×25×64 output of ``conv2d_3``.

Grad-CAM variant (682,950 parameters): the same four convolutions, a fourth pooling
(``max_pooling2d_3``, 25 → 12), ``Flatten``, ``dense`` (64, ReLU) and ``dense_1`` (6, softmax).

Both architectures only need the input to survive the poolings, so they also learn small offline
images (scikit-learn's 8×8 digits upsampled to 32×32).

Reference: Zhou et al. (2016), Learning Deep Features for Discriminative Localization (CAM);
Selvaraju et al. (2017), Grad-CAM.
"""

from __future__ import annotations

import flax.linen as nn

from jxai import layers

from ._registry import KerasNames, conv, dense, flatten, output_activation_metadata, register

__all__ = ["NEU_CLASSES", "SteelCAM", "SteelGradCAM"]

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


def _features(x, filters, names, pool_last: bool):
    for i, features in enumerate(filters):
        x = conv(x, features, (3, 3), name=names("conv2d"))
        if i < len(filters) - 1 or pool_last:
            x = layers.MaxPool((2, 2), name=names("max_pooling2d"))(x)
    return x


class SteelCAM(nn.Module):
    """Four conv layers, global average pooling, one softmax dense layer (CAM-ready)."""

    filters: tuple[int, ...] = (32, 64, 64, 64)
    classes: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        names = KerasNames()
        x = _features(x, self.filters, names, pool_last=False)
        x = layers.GlobalAvgPool(name="global_average_pooling2d")(x)
        return dense(x, self.classes, name=names("dense"), activation="softmax")


class SteelGradCAM(nn.Module):
    """Four conv + pool layers, flatten, Dense(64, ReLU), Dense(6, softmax)."""

    filters: tuple[int, ...] = (32, 64, 64, 64)
    hidden: int = 64
    classes: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        names = KerasNames()
        x = _features(x, self.filters, names, pool_last=True)
        x = flatten(x)
        x = dense(x, self.hidden, name=names("dense"))
        return dense(x, self.classes, name=names("dense"), activation="softmax")


def _metadata(classes, out_name):
    return {
        **output_activation_metadata("softmax", out_name),
        "preprocessing": {"name": "identity"},
        "task": "classification",
        "classes": list(NEU_CLASSES) if classes == 6 else list(range(classes)),
    }


@register("steel_cam", "steel-defect CAM CNN with global average pooling (200×200×1, 6 classes)",
          seed_params=93_062)
def _make_cam(input_shape=(200, 200, 1), filters=(32, 64, 64, 64), classes=6):
    module = SteelCAM(tuple(filters), int(classes))
    return module, tuple(input_shape), _metadata(classes, "dense")


@register("steel_gradcam", "steel-defect Grad-CAM CNN with flatten + dense (200×200×1, 6 classes)",
          seed_params=682_950)
def _make_gradcam(input_shape=(200, 200, 1), filters=(32, 64, 64, 64), hidden=64, classes=6):
    h, w = input_shape[:2]
    if min(h, w) < 16:
        raise ValueError(f"steel_gradcam needs at least 16×16 inputs (four poolings), got "
                         f"{tuple(input_shape)}")
    module = SteelGradCAM(tuple(filters), int(hidden), int(classes))
    return module, tuple(input_shape), _metadata(classes, "dense_1")
