"""A tiny Vision Transformer for the Clever Hans images (`clever_hans`), trained in seconds on a CPU.

The image twin of the marker-token BERT of ``jxai demo --transformer``: the zoo's ViT
(`jxai.models.get("vit", pretrained=False, ...)`, `VIT_CONFIG`: 2 pre-norm blocks, hidden size
32, 2 heads, 8×8 patches, so a 64×64 image is an 8×8 grid of 64 patch tokens after the class
token) is trained with optax (`jxai.models.train.fit`) on images whose corner tag decides the
label (``bias=1.0``). The tag is brighter and easier to find than the ring/cross, so the ViT takes
the shortcut; `counterfactual` gives the same images with the tag in the other corner, where a
model that reads the tag flips its prediction.

Input: the grayscale pixels standardised, ``x' = (x − PIXEL_MEAN) / PIXEL_STD`` (`standardize`);
the network, its explanations and the patch-removal baseline 0 (mid-gray) are all in that space.

`tag_patches` marks the patch tokens that hold part of the tag (the ground truth for per-patch
relevance), `tag_pixels` its pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .clever_hans import CLASSES, SIZE, CleverHans, make_clever_hans

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "VIT_CONFIG", "counterfactual", "standardize",
           "tag_patches", "tag_pixels", "tiny_vit", "train_tiny_vit"]

# Enough to find a bright 6×6 tag in a corner patch within ~2 epochs of 2000 images.
VIT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "patch_size": 8}
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # centred inputs leave the loss plateau ~3× sooner than [0, 1]
LEARNING_RATE = 2e-3


def standardize(images) -> np.ndarray:
    """``(x − PIXEL_MEAN) / PIXEL_STD`` as float32, (N, 64, 64, 1)."""
    return ((np.asarray(images, np.float32) - PIXEL_MEAN) / PIXEL_STD).astype(np.float32)


def tiny_vit(key: int = 0):
    """The untrained `VIT_CONFIG` ViT on 64×64 grayscale images, two classes (ring, cross)."""
    from jxai.models import get

    return get("vit", pretrained=False, key=key, image_size=SIZE, num_channels=1,
               num_labels=len(CLASSES), image_mean=(PIXEL_MEAN,), image_std=(PIXEL_STD,),
               labels=CLASSES, **VIT_CONFIG)


def tag_pixels(data: CleverHans) -> np.ndarray:
    """(N, 64, 64) bool: the tag's pixels (dilated by one, `CleverHans.marker_mask`)."""
    return np.asarray(data.marker_mask, bool)


def tag_patches(marker_mask, patch_size: int = VIT_CONFIG["patch_size"]) -> np.ndarray:
    """(N, H/p, W/p) bool: the patches that hold at least one tag pixel, on the ViT's grid
    (row-major, as `jxai.transformer.patch_relevance` sums pixel relevance)."""
    mask = np.asarray(marker_mask, bool)
    if mask.ndim != 3 or mask.shape[1] % patch_size or mask.shape[2] % patch_size:
        raise ValueError(f"tag_patches: marker mask of shape {mask.shape} is not (N, H, W) with "
                         f"H and W multiples of the patch size {patch_size}")
    n, h, w = mask.shape
    return mask.reshape(n, h // patch_size, patch_size, w // patch_size, patch_size).any((2, 4))


def counterfactual(n: int, *, seed: int) -> CleverHans:
    """The ``make_clever_hans(n, seed=seed)`` images with every tag in the *other* class's corner.

    ``bias=0.0`` draws the same random numbers as ``bias=1.0`` (only the comparison with the
    uniform draw changes), so background, object, noise and tag brightness are identical and
    only the tag's corner differs: ``marker_class = 1 − y``."""
    return make_clever_hans(n, seed=seed, bias=0.0)


def train_tiny_vit(n_train: int = 2000, epochs: int = 4, *, seed: int = 0,
                   log: Callable[[str], Any] | None = None):
    """Train `tiny_vit` with Adam on ``n_train`` biased Clever Hans images (``bias=1.0``).

    Returns ``(network, history)`` (`jxai.models.train.fit`); the network takes `standardize`d
    pixels."""
    from jxai.models import train

    data = make_clever_hans(n_train, seed=seed, bias=1.0)
    return train.fit(tiny_vit(key=seed), standardize(data.x), data.y, epochs=epochs,
                     learning_rate=LEARNING_RATE, key=seed, log=log)
