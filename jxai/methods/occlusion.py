"""Occlusion: the drop of the target score when a sliding window is replaced by a baseline.

For every window position :math:`w` the occluded input :math:`x^{(w)}` takes the baseline inside
the window and ``x`` elsewhere; each feature receives the mean score drop over the windows that
cover it:

.. math:: R_i = \\frac{1}{|\\{w : i \\in w\\}|} \\sum_{w \\ni i} \\big(S_t(x) - S_t(x^{(w)})\\big)

(Captum's ``Occlusion``). Along each axis of length :math:`n` the windows of size :math:`w`
start every :math:`s` positions, :math:`\\lceil (n - w)/s \\rceil + 1` of them, the last clipped
at the border as in Captum, so every feature is covered. Windows are forward passes only,
vmapped ``batch_size`` at a time with ``lax.map``; the per-window score drops are spread back to
the features with one small matrix product per axis (a box is separable).

Reference: Zeiler, Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jxai.methods._common import pin_target
from jxai.methods._registry import register_method
from jxai.methods.path import make_baseline

__all__ = ["occlusion", "window_shape"]


def window_shape(method: str, name: str, value, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """A window or stride over every feature axis of ``x`` (all axes but the batch).

    An int applies to the spatial axes (all feature axes but the last, the channels, which the
    window then covers whole); for a ``(B, F)`` input it applies to ``F``. A tuple gives either
    every feature axis, or the spatial axes only (channels covered whole).
    """
    features = x_shape[1:]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if len(features) == 1:
            shape = (int(value),)
        else:
            shape = (int(value),) * (len(features) - 1) + (features[-1],)
    else:
        shape = tuple(int(v) for v in value)
        if len(shape) == len(features) - 1:
            shape = shape + (features[-1],)
        if len(shape) != len(features):
            raise ValueError(
                f"{method}: {name}={value!r} has {len(shape)} entries; the input {x_shape} has "
                f"{len(features)} feature axes: give all of them or the {len(features) - 1} "
                "spatial ones"
            )
    for size, extent in zip(shape, features, strict=True):
        if size < 1 or size > extent:
            raise ValueError(
                f"{method}: {name}={shape} does not fit the input's feature shape {features}; "
                "each entry must be between 1 and the axis length"
            )
    return shape


def _membership(n: int, window: int, stride: int, size: int) -> np.ndarray:
    """``(n, size)`` 0/1 matrix: window ``k`` along one axis covers positions ``[k s, k s + w)``."""
    matrix = np.zeros((n, size))
    for start in range(n):
        matrix[start, start * stride : start * stride + window] = 1.0
    return matrix


def _spread(drops: jax.Array, memberships) -> jax.Array:
    """Sum each window's value over the features it covers.

    A window is a box, so the sum is separable: contract each grid axis of ``drops``
    ``(B, *grid)`` with that axis' membership matrix (a box filter, one small matmul per axis).
    """
    out = drops
    for axis, matrix in enumerate(memberships, start=1):
        out = jnp.moveaxis(jnp.tensordot(out, matrix, axes=([axis], [0])), -1, axis)
    return out


@register_method("occlusion", family="perturbation")
def occlusion(ctx, x, target, *, window=8, stride=None, baseline=0.0,
              batch_size: int | str | None = "auto"):
    """Occlusion sensitivity with a sliding window (see the module doc for the formula).

    Args:
      window: window size; an int covers that many positions on every spatial axis and all
        channels (default 8), a tuple gives every feature axis or the spatial ones.
      stride: step between windows, same forms (default: the window, non-overlapping).
      baseline: value inside the window: a scalar (default 0) or an array broadcasting to ``x``.
      batch_size: windows evaluated together (vmapped); ``None`` = all windows at once;
        ``"auto"`` (default) = 1 on CPU, 32 on accelerators (`jxai._schedule.chunk_size`).

    Returns an array shaped like ``x``.
    """
    window = window_shape("occlusion", "window", window, x.shape)
    stride = window if stride is None else window_shape("occlusion", "stride", stride, x.shape)
    features = x.shape[1:]
    grid = tuple(
        -(-(size - w) // s) + 1 for size, w, s in zip(features, window, stride, strict=True)
    )
    target = pin_target(ctx, x, target)
    fill = make_baseline("occlusion", baseline, x)
    clean_score = target.score(ctx.forward(x)[0])
    positions = [jnp.arange(size) for size in features]

    def score_drop(index):
        corner = jnp.unravel_index(index, grid)
        inside = None
        axes = zip(positions, corner, window, stride, strict=True)
        for axis, (pos, start, w, s) in enumerate(axes):
            hit = (pos >= start * s) & (pos < start * s + w)
            shape = [1] * len(features)
            shape[axis] = features[axis]
            hit = hit.reshape(shape)
            inside = hit if inside is None else inside & hit
        occluded = jnp.where(inside[None], fill, x)
        return clean_score - target.score(ctx.forward(occluded)[0])

    indices = jnp.arange(int(np.prod(grid)))
    drops = ctx.map_chunks(score_drop, indices, batch_size, name="occlusion",
                           accelerator=32)  # (W, B)
    drops = drops.T.reshape(x.shape[0], *grid)
    memberships = [
        _membership(n, w, s, size)
        for n, w, s, size in zip(grid, window, stride, features, strict=True)
    ]
    total = _spread(drops, [jnp.asarray(m, x.dtype) for m in memberships])
    coverage = np.ones(())
    for matrix in memberships:
        coverage = np.multiply.outer(coverage, matrix.sum(axis=0))
    # A stride larger than the window leaves gaps no window covers: they get 0.
    inverse = np.divide(1.0, coverage, out=np.zeros_like(coverage), where=coverage > 0)
    return total * jnp.asarray(inverse, x.dtype)[None]
