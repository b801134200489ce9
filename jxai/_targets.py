"""What to explain: the target selection, turned into the cotangent that seeds the backward pass.

A `Target` is a pytree: its kind, seed convention and callable are static, its data (indices or a
cotangent array) is traced, so changing the target class never recompiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Target", "parse_target"]

KINDS = ("max", "index", "all", "cotangent", "callable")
SEEDS = ("logit", "one")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """The output neuron(s) to explain and the initial relevance.

    kind: ``"max"`` (per-sample argmax of the flattened output), ``"index"`` (``data`` holds one
      flattened output index per sample), ``"all"`` (every output), ``"cotangent"`` (``data`` is the
      output cotangent itself, e.g. a segmentation mask), ``"callable"`` (``fn(y)`` gives it).
    seed: ``"logit"`` starts with the selected output value as relevance (iNNvestigate, Captum);
      ``"one"`` starts with 1 (Zennit).
    """

    data: Any
    kind: str = dataclasses.field(default="max", metadata=dict(static=True))
    seed: str = dataclasses.field(default="logit", metadata=dict(static=True))
    fn: Callable | None = dataclasses.field(default=None, metadata=dict(static=True))

    def mask(self, y):
        """The selection mask (or cotangent) shaped like the output ``y``."""
        if self.kind == "cotangent":
            return jnp.broadcast_to(self.data.astype(y.dtype), y.shape)
        if self.kind == "callable":
            return jnp.broadcast_to(jnp.asarray(self.fn(y), y.dtype), y.shape)
        if self.kind == "all":
            return jnp.ones_like(y)
        flat = y.reshape(y.shape[0], -1)
        index = jnp.argmax(flat, axis=1) if self.kind == "max" else self.data
        index = jnp.broadcast_to(index, (y.shape[0],))
        return jax.nn.one_hot(index, flat.shape[1], dtype=y.dtype).reshape(y.shape)

    def cotangent(self, y):
        """Output cotangent in the gradient convention: the relevance at the output is ``y ⊙ c``.

        With ``seed="logit"`` it is the mask (relevance = the selected logit); with ``seed="one"``
        the mask divided by ``y`` (relevance = 1; outputs equal to 0 get none).
        """
        mask = self.mask(y)
        if self.seed == "one":
            safe = jnp.where(y == 0, 1.0, y)
            return jnp.where(y == 0, 0.0, mask / safe)
        return mask

    def relevance(self, y):
        """Initial relevance at the output (the relevance convention): ``y ⊙ mask`` or ``mask``."""
        mask = self.mask(y)
        return mask if self.seed == "one" else y * mask

    def score(self, y):
        """Per-sample scalar being explained: ``Σ mask ⊙ y`` over the non-batch axes."""
        return jnp.sum((self.mask(y) * y).reshape(y.shape[0], -1), axis=1)


def parse_target(target, batch: int, seed: str = "logit") -> tuple[Target, bool]:
    """Turn the user's ``target`` into a `Target` and whether it holds several targets.

    Several targets — a ``(T,)`` or ``(T, B)`` integer array — return ``multi=True``; the caller
    vmaps over the first axis of ``data``.
    """
    if seed not in SEEDS:
        raise ValueError(f"seed must be one of {SEEDS}, got {seed!r}")
    if isinstance(target, str):
        if target not in ("max", "all"):
            raise ValueError(
                f"target {target!r} is not understood: use 'max', 'all', an int, an int array "
                "(one per sample, or (T,)/(T, B) for several targets), a cotangent array shaped "
                "like the output, or a callable of the output"
            )
        return Target(jnp.zeros((), jnp.int32), target, seed), False
    if callable(target):
        return Target(jnp.zeros((), jnp.int32), "callable", seed, target), False
    if isinstance(target, int | np.integer):
        return Target(jnp.full((batch,), int(target), jnp.int32), "index", seed), False
    array = np.asarray(target) if not isinstance(target, jax.Array) else target
    if jnp.issubdtype(array.dtype, jnp.integer):
        if array.ndim == 0:
            return Target(jnp.full((batch,), int(array), jnp.int32), "index", seed), False
        if array.ndim == 1 and array.shape[0] == batch:
            return Target(jnp.asarray(array, jnp.int32), "index", seed), False
        if array.ndim == 1:
            data = jnp.broadcast_to(jnp.asarray(array, jnp.int32)[:, None], (array.shape[0], batch))
            return Target(data, "index", seed), True
        if array.ndim == 2 and array.shape[1] == batch:
            return Target(jnp.asarray(array, jnp.int32), "index", seed), True
        raise ValueError(
            f"integer target of shape {array.shape} does not fit a batch of {batch}: use (B,) "
            "for one target per sample, (T,) for T targets per sample, or (T, B)"
        )
    return Target(jnp.asarray(array), "cotangent", seed), False
