"""Pieces shared by the methods: target pinning, resizing, argument checks.

Everything here runs inside the engine's jitted function. Sums and maps over many evaluations
(a wrapper's noisy copies or path points, occlusion's windows) are the scheduler's:
``ctx.sum_chunks`` / ``ctx.map_chunks`` (`jxai.Context`). ``chunk_size`` and ``chunked_sum``
remain importable from here, as the scheduler's `jxai._schedule.chunk_size` and
`jxai._schedule.sum_chunks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jxai._checks import check_positive_int
from jxai._schedule import chunk_size, leading_size
from jxai._schedule import sum_chunks as chunked_sum

__all__ = [
    "check_choice",
    "check_positive_int",
    "chunk_size",
    "chunked_sum",
    "leading_size",
    "pin_target",
    "resize_map",
    "with_key",
]


def check_choice(method: str, name: str, value: Any, choices) -> None:
    """Raise a ValueError naming the method, the parameter and the allowed values."""
    if value not in choices:
        raise ValueError(
            f"{method}: {name}={value!r} is not one of {', '.join(repr(c) for c in choices)}"
        )


def reference_samples(method: str, param: str, value, x, hint: str) -> jax.Array:
    """``value`` as ``(M, *x.shape[1:])`` reference samples of ``x``'s dtype, ``M >= 1``.

    The background of DeepSHAP and KernelSHAP, the baselines of expected gradients: one sample
    shaped like a row of ``x`` counts as ``M = 1``. Errors name ``method`` and ``param``; ``hint``
    says what users usually pass.
    """
    sample = tuple(x.shape[1:])
    if value is None:
        raise ValueError(f"{method}: pass {param}=, reference samples shaped (M, *{sample}) "
                         f"({hint})")
    value = jnp.asarray(value, dtype=x.dtype)
    if value.shape == sample:
        value = value[None]
    if value.shape[1:] != sample:
        verb = "have" if param.endswith("s") else "has"
        raise ValueError(f"{method}: {param} {verb} shape {tuple(value.shape)}; expected "
                         f"(M, *{sample}) to match the input samples of shape {sample}")
    if value.shape[0] == 0:
        raise ValueError(f"{method}: {param} is empty (shape {tuple(value.shape)}); pass at "
                         "least one reference sample")
    return value


def pin_target(ctx, x, target):
    """The target resolved on the clean input ``x``, so perturbed copies explain the same class.

    ``target="max"`` means the class the network predicts for ``x``. A wrapper that evaluates
    noisy or interpolated copies of ``x`` must keep that class (as Captum does with an explicit
    target and iNNvestigate's wrappers do by predicting on the clean batch first), not re-take
    the argmax on every copy.
    """
    if target.kind != "max":
        return target
    y, _ = ctx.forward(x)
    index = jnp.argmax(y.reshape(y.shape[0], -1), axis=1).astype(jnp.int32)
    return dataclasses.replace(target, data=index, kind="index")


def with_key(ctx, key):
    """``ctx.with_key(key)`` (`jxai.Context.with_key`): each sample of a wrapper gets its own
    randomness."""
    return ctx.with_key(key)


def resize_map(heatmap: jax.Array, spatial: tuple[int, ...], interpolation: str) -> jax.Array:
    """Resize ``(B, *s)`` maps to ``(B, *spatial)``: bilinear (half-pixel centres) or nearest.

    Half-pixel centres and no antialiasing are what ``torch.nn.functional.interpolate(...,
    align_corners=False)`` and OpenCV's ``resize`` do when upsampling.
    """
    check_choice("resize", "interpolation", interpolation, ("bilinear", "nearest"))
    if tuple(heatmap.shape[1:]) == tuple(spatial):
        return heatmap
    method = "linear" if interpolation == "bilinear" else "nearest"
    shape = (heatmap.shape[0], *spatial)
    return jax.image.resize(heatmap, shape, method=method, antialias=False)
