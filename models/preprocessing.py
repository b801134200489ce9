"""Input preprocessing of the zoo models, named so a `Network`'s metadata can carry it.

Each zoo model records ``metadata["preprocessing"] = {"name": ..., **parameters}``;
`preprocess(network, raw)` applies it. Raw inputs are what the seed's data pipeline read from disk
(8-bit RGB images, raw table rows...). The functions are pure NumPy/JAX and never modify their
input in place (Keras' NumPy ``preprocess_input`` does, a classic trap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CAFFE_BGR_MEAN",
    "PREPROCESSORS",
    "caffe",
    "identity",
    "mean_std",
    "minmax",
    "preprocess",
    "unit_scale",
]

# Per-channel ImageNet mean in BGR order, as keras.applications.imagenet_utils (mode="caffe").
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def caffe(x, **_):
    """Keras' ``vgg16.preprocess_input`` (caffe mode) for channels-last RGB in [0, 255].

    ``x_bgr = x[..., ::-1] - [103.939, 116.779, 123.68]``: flip RGB to BGR, subtract the ImageNet
    channel means, no scaling. Grayscale inputs must be repeated to three channels first (the
    chest X-ray seed does ``np.concatenate([X, X, X], axis=3)``).

    Reference: Simonyan & Zisserman (2015), VGG; keras.applications.imagenet_utils.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != 3:
        raise ValueError(
            f"caffe preprocessing expects channels-last RGB with 3 channels, got shape {x.shape}; "
            "repeat a grayscale image to 3 channels first (np.repeat(x, 3, axis=-1))."
        )
    return x[..., ::-1] - np.asarray(CAFFE_BGR_MEAN, np.float32)


def unit_scale(x, scale: float = 255.0, **_):
    """``x / scale``: 8-bit images to [0, 1] (the U-Net seed's ``image / 255.0``)."""
    return np.asarray(x, dtype=np.float32) / np.float32(scale)


def minmax(x, minimum=None, maximum=None, **_):
    """Column-wise ``(x - min) / (max - min)`` with the training set's min and max.

    The tabular seed scales every column this way before the MLP. Constant columns (max == min)
    map to 0.
    """
    if minimum is None or maximum is None:
        raise ValueError(
            "minmax preprocessing needs the training set's 'minimum' and 'maximum' per column; "
            "they are stored in the trained network's metadata['preprocessing']."
        )
    x = np.asarray(x, dtype=np.float32)
    lo = np.asarray(minimum, np.float32)
    span = np.asarray(maximum, np.float32) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def identity(x, **_):
    """The input as float32 (data already prepared by `jxai.models.data`)."""
    return np.asarray(x, dtype=np.float32)


def mean_std(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **_):
    """``(x / 255 − mean) / std`` per channel: Hugging Face's and timm's image processors
    (rescale by 1/255, then normalise) for 8-bit channels-last images in [0, 255]."""
    x = np.asarray(x, dtype=np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


PREPROCESSORS = {
    "caffe": caffe,
    "mean_std": mean_std,
    "unit_scale": unit_scale,
    "minmax": minmax,
    "identity": identity,
}


def preprocess(network_or_spec: Any, raw) -> np.ndarray:
    """Apply a zoo model's preprocessing to raw inputs.

    Args:
      network_or_spec: a `jxai.Network` from the zoo (its ``metadata["preprocessing"]``), or the
        spec itself: a name (``"caffe"``) or a mapping ``{"name": ..., **parameters}``.
      raw: a batch of raw inputs.
    """
    spec = network_or_spec
    if hasattr(spec, "metadata"):
        spec = spec.metadata.get("preprocessing", "identity")
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise TypeError(f"preprocessing spec must be a name or a mapping with 'name', got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        fn = PREPROCESSORS[spec["name"]]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing {spec['name']!r}; known: {', '.join(PREPROCESSORS)}"
        ) from None
    return fn(raw, **params)
