"""Synthetic "marker token" sequences: the text twin of the Clever Hans images (`clever_hans`).

Each sequence of ``length`` integer token ids is

* position 0: the class token ``CLS`` (id 0), which a BERT-style encoder pools;
* one **marker** token at a random position in ``1 .. length-1``: ``MARKERS[0]`` (id 1) for
  class 0, ``MARKERS[1]`` (id 2) for class 1;
* every other position: a filler token drawn uniformly from ``FIRST_FILLER .. vocab-1`` (never
  a marker nor the class token).

The marker alone decides the label, as the corner tag does in the Clever Hans training images, so
a model that classifies these sequences must find one token among ``length`` at a position it
cannot know in advance; the ground-truth position (``marker_position``) tells how much of an
explanation lands on the evidence. `MarkerTokens.swapped` exchanges the two markers (a
counterfactual: a model that reads the marker flips its prediction).

Generated offline from a NumPy seed: the same arguments give the same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CLS", "FIRST_FILLER", "MARKERS", "MarkerTokens", "make_marker_tokens"]

CLS = 0
MARKERS = (1, 2)  # the marker of class 0, of class 1
FIRST_FILLER = 3


@dataclass(frozen=True)
class MarkerTokens:
    """A batch of marker sequences.

    Attributes:
      x: (N, T) int32 token ids.
      y: (N,) int32 labels (the class of the marker).
      marker_position: (N,) int32, where the marker sits (1 .. T-1).
      vocab: the vocabulary size (ids lie in ``0 .. vocab-1``).
    """

    x: np.ndarray
    y: np.ndarray
    marker_position: np.ndarray
    vocab: int

    def __len__(self) -> int:
        return len(self.y)

    @property
    def marker_mask(self) -> np.ndarray:
        """(N, T) bool, True at the marker."""
        return np.arange(self.x.shape[1])[None, :] == self.marker_position[:, None]

    def take(self, index) -> MarkerTokens:
        """The sequences at ``index`` (a slice, an int array or a bool mask)."""
        return MarkerTokens(self.x[index], self.y[index], self.marker_position[index], self.vocab)

    def swapped(self) -> MarkerTokens:
        """The same sequences with the other class's marker (and label): the counterfactual."""
        x = self.x.copy()
        rows = np.arange(len(x))
        x[rows, self.marker_position] = np.asarray(MARKERS)[1 - self.y]
        return MarkerTokens(x, (1 - self.y).astype(np.int32), self.marker_position, self.vocab)


def make_marker_tokens(n: int, *, length: int = 16, vocab: int = 32, seed: int = 0,
                       balanced: bool = True) -> MarkerTokens:
    """Generate ``n`` marker sequences (see the module docstring).

    Args:
      n: number of sequences (>= 1).
      length: tokens per sequence, the class token included (>= 2).
      vocab: vocabulary size; ids ``FIRST_FILLER .. vocab-1`` are fillers, so ``vocab`` must be
        at least ``FIRST_FILLER + 1``.
      seed: seed of the NumPy generator.
      balanced: alternate the classes exactly (then shuffled); otherwise draw them at random.

    Returns:
      A `MarkerTokens` batch.
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of sequences, got {n}")
    if length < 2:
        raise ValueError(f"length {length}: a sequence needs the class token and a marker "
                         "(length >= 2)")
    if vocab <= FIRST_FILLER:
        raise ValueError(f"vocab {vocab}: ids 0..{FIRST_FILLER - 1} are the class token and "
                         f"the two markers; pass vocab >= {FIRST_FILLER + 1} for fillers")
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2) if balanced else rng.integers(0, 2, n)
    y = rng.permutation(y).astype(np.int32)
    x = rng.integers(FIRST_FILLER, vocab, (n, length))
    x[:, 0] = CLS
    position = rng.integers(1, length, n).astype(np.int32)
    x[np.arange(n), position] = np.asarray(MARKERS)[y]
    return MarkerTokens(x.astype(np.int32), y, position, int(vocab))
