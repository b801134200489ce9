"""A synthetic "Clever Hans" image set: a real class signal and a shortcut marker in a corner.

Modelled on the chest X-ray seed's bias experiment, where a VGG16 reached 100 % training accuracy
on a subset whose classes could be told apart by an artefact instead of the anatomy. Each 64×64
grayscale image holds

* a smooth random background (low-frequency noise) with pixel noise;
* the **object**, which defines the class: a ring (class 0) or a cross (class 1) of random size,
  position and contrast in the centre of the image;
* the **marker**, a bright 6×6 square tag in a top corner: top-right for class 0, top-left for
  class 1 with probability ``bias``, the other corner otherwise.

With ``bias=1.0`` (the training set) the marker alone predicts the class perfectly and is far
easier to learn than the shapes, so a CNN takes the shortcut. With ``bias=0.5`` the marker carries
no information; the drop from the biased to the unbiased accuracy measures the shortcut, and
ground-truth masks of the object and of the marker let one measure where an explanation puts its
relevance.

Masks are the drawn pixels dilated by one pixel (explanations of edges fall just outside them).

Reference: Lapuschkin et al. (2019), Unmasking Clever Hans predictors and assessing what machines
really learn, Nature Communications 10:1096.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CLASSES", "CleverHans", "make_clever_hans"]

CLASSES = ("ring", "cross")
SIZE = 64
MARKER = 6  # side of the square tag
MARKER_MARGIN = 3  # pixels between the tag and the image border (before jitter)


@dataclass(frozen=True)
class CleverHans:
    """A batch of the synthetic set.

    Attributes:
      x: (N, 64, 64, 1) float32 images in [0, 1].
      y: (N,) int32 class of the object (0 ring, 1 cross).
      object_mask: (N, 64, 64) bool, the object's pixels (dilated by one).
      marker_mask: (N, 64, 64) bool, the marker's pixels (dilated by one).
      marker_class: (N,) int32, the class the marker's corner stands for.
    """

    x: np.ndarray
    y: np.ndarray
    object_mask: np.ndarray
    marker_mask: np.ndarray
    marker_class: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index) -> CleverHans:
        """The samples at ``index`` (a slice, an int array or a bool mask)."""
        return CleverHans(self.x[index], self.y[index], self.object_mask[index],
                          self.marker_mask[index], self.marker_class[index])


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int = 8) -> np.ndarray:
    """Bilinear upsampling of a (cells+1)² grid of uniform noise: smooth blobs, values in [0, 1]."""
    grid = rng.uniform(0.0, 1.0, (n, cells + 1, cells + 1))
    pos = np.linspace(0.0, cells, size)
    i0 = np.minimum(pos.astype(int), cells - 1)
    t = pos - i0
    rows = grid[:, i0, :] * (1 - t)[None, :, None] + grid[:, i0 + 1, :] * t[None, :, None]
    return rows[:, :, i0] * (1 - t)[None, None, :] + rows[:, :, i0 + 1] * t[None, None, :]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary dilation (3×3 square) of (N, H, W) masks."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(mask)
    h, w = mask.shape[1:]
    for dy in range(3):
        for dx in range(3):
            out |= padded[:, dy:dy + h, dx:dx + w]
    return out


def make_clever_hans(n: int, *, seed: int = 0, bias: float = 1.0,
                     balanced: bool = True) -> CleverHans:
    """Generate ``n`` images of the Clever Hans set.

    Args:
      n: number of images.
      seed: seed of the NumPy generator (the same seed gives the same images).
      bias: probability that the marker sits in its class's corner (1.0: a perfect shortcut,
        0.5: no information).
      balanced: alternate the classes exactly (otherwise draw them at random).

    Returns:
      A `CleverHans` batch.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias is a probability in [0, 1], got {bias}")
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2) if balanced else rng.integers(0, 2, n)
    y = rng.permutation(y).astype(np.int32)

    background = 0.15 + 0.25 * _smooth_noise(rng, n, SIZE)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)

    # The object: centre in the middle, clear of the marker rows.
    cy = rng.uniform(26, 42, n)[:, None, None]
    cx = rng.uniform(20, 44, n)[:, None, None]
    extent = rng.uniform(8, 13, n)[:, None, None]
    dy, dx = yy[None] - cy, xx[None] - cx
    ring = np.abs(np.hypot(dy, dx) - extent) <= 1.5
    cross = ((np.abs(dx) <= 1.5) & (np.abs(dy) <= extent)) | (
        (np.abs(dy) <= 1.5) & (np.abs(dx) <= extent))
    obj = np.where(y[:, None, None] == 0, ring, cross)
    contrast = rng.uniform(0.25, 0.45, n)[:, None, None]
    image = background + contrast * obj

    # The marker: class-0 corner is top-right, class-1 corner top-left.
    marker_class = np.where(rng.uniform(size=n) < bias, y, 1 - y).astype(np.int32)
    top = MARKER_MARGIN + rng.integers(-1, 2, n)
    offset = MARKER_MARGIN + rng.integers(-1, 2, n)
    left = np.where(marker_class == 1, offset, SIZE - MARKER - offset)
    rows = (yy[None] >= top[:, None, None]) & (yy[None] < (top + MARKER)[:, None, None])
    cols = (xx[None] >= left[:, None, None]) & (xx[None] < (left + MARKER)[:, None, None])
    marker = rows & cols
    image = np.where(marker, rng.uniform(0.85, 1.0, n)[:, None, None], image)

    image = image + rng.normal(0.0, 0.03, image.shape)
    x = np.clip(image, 0.0, 1.0).astype(np.float32)[..., None]
    return CleverHans(x, y, _dilate(obj), _dilate(marker), marker_class)
