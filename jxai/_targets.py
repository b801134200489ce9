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

__all__ = ["Target", "check_target_range", "parse_target", "several", "takes_output_index",
           "token_target"]

KINDS = ("max", "index", "all", "cotangent", "callable", "max_at")
SEEDS = ("logit", "one")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Target:
    """The output neuron(s) to explain and the initial relevance.

    kind: ``"max"`` (per-sample argmax of the flattened output), ``"index"`` (``data`` holds one
      flattened output index per sample), ``"all"`` (every output), ``"cotangent"`` (``data`` is the
      output cotangent itself, e.g. a segmentation mask), ``"callable"`` (``fn(y)`` gives it),
      ``"max_at"`` (a sequence output ``(B, T, V)``: the largest logit at the position
      ``data[b]`` of each sample, e.g. the predicted next token of a language model).
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
        if self.kind == "max_at":
            return self.pinned(y).mask(y)
        flat = y.reshape(y.shape[0], -1)
        index = jnp.argmax(flat, axis=1) if self.kind == "max" else self.data
        index = jnp.broadcast_to(index, (y.shape[0],))
        return jax.nn.one_hot(index, flat.shape[1], dtype=y.dtype).reshape(y.shape)

    def pinned(self, y) -> Target:
        """A ``"max_at"`` target resolved on the output ``y`` (B, T, V): the ``"index"`` target
        ``position · V + argmax_v y[b, position, v]`` (other kinds: unchanged)."""
        if self.kind != "max_at":
            return self
        batch, vocab = y.shape[0], y.shape[-1]
        rows = y.reshape(batch, -1, vocab)[jnp.arange(batch), self.data]
        index = self.data * vocab + jnp.argmax(rows, axis=-1).astype(jnp.int32)
        return dataclasses.replace(self, data=index.astype(jnp.int32), kind="index")

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


def several(*indices) -> np.ndarray:
    """Several targets for every sample: ``several(0, 5)`` is the ``(T, 1)`` int32 array
    ``[[0], [5]]``, which `jxai.explain` broadcasts to every sample and answers with
    ``(T, B, *x.shape[1:])``: one explanation per target, stacked in front of the batch.

    A flat list of class indices, ``target=[0, 5]``, means one class per sample instead (and must
    have the batch's length); ``several(*classes)`` takes the same indices as the arguments, or as
    one sequence (``several([0, 5])``). A ``(T, B)`` int array gives each sample its own T targets.
    """
    if len(indices) == 1 and isinstance(indices[0], list | tuple | np.ndarray | jax.Array):
        indices = tuple(np.asarray(indices[0]).reshape(-1).tolist())
    if not indices:
        raise ValueError("several() needs at least one output index, e.g. jxai.several(0, 5)")
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int | np.integer)]
    if bad:
        raise TypeError(f"several() takes integer output indices, got {bad[0]!r}")
    return np.asarray(indices, np.int32)[:, None]


def check_target_range(targets, n_outputs: int, name: str = "target", positions=None) -> None:
    """A ValueError unless every integer in ``targets`` is an output index ``0..n_outputs-1``.

    ``n_outputs`` is the number of (flattened) outputs per sample. Negative indices are errors
    too: they do not count from the end as Python's do. The message names the first bad value,
    its position when ``targets`` is an array (``positions[i]`` instead of ``i`` for a 1-D
    ``targets`` cut from a longer sequence, e.g. the dataset indices of a batch's labels) and
    the network's output size.
    """
    values = np.asarray(targets)
    bad = (values < 0) | (values >= n_outputs)
    if not bad.any():
        return
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    shown = where if positions is None else (int(np.asarray(positions)[where[0]]),)
    label = name if values.ndim == 0 else f"{name}[{', '.join(map(str, shown))}] ="
    value = int(values[where])
    negative = " (negative indices do not count from the end)" if value < 0 else ""
    raise ValueError(
        f"{label} {value} is out of range{negative}: the network has {n_outputs} output"
        f"{'' if n_outputs == 1 else 's'} per sample (valid targets 0..{n_outputs - 1})"
    )


def takes_output_index(target) -> bool:
    """Whether ``target`` may hold output indices (so its range needs the output size)."""
    return not isinstance(target, str) and not callable(target)


def parse_target(target, batch: int, seed: str = "logit", n_outputs: int | None = None
                 ) -> tuple[Target, bool]:
    """Turn the user's ``target`` into a `Target` and whether it holds several targets.

    Integer targets (``n_outputs``: the flattened outputs per sample, None = unknown):

    * an int, or a 0-d int array: that output for every sample;
    * a 1-D int array, list or tuple: ONE target per sample; its length must be ``batch``
      (Captum's convention), whatever its values;
    * a 2-D ``(T, B)`` int array: T targets per sample, ``(T, 1)`` (`several`) broadcast to every
      sample; ``multi=True`` and the caller vmaps over the first axis of ``data``.

    Indices are checked against ``0..n_outputs-1`` when their values are known (not traced inside
    the caller's jit, where an out-of-range index selects nothing and explains zeros).
    Float arrays are output cotangents (a mask shaped like, or broadcastable to, the output).
    """
    if seed not in SEEDS:
        raise ValueError(f"seed must be one of {SEEDS}, got {seed!r}")
    if isinstance(target, str):
        if target not in ("max", "all"):
            raise ValueError(
                f"target {target!r} is not understood: use 'max', 'all', an int, a (B,) int array "
                "(one per sample), jxai.several(i, j) or a (T, B) int array for several targets, "
                "a cotangent array shaped like the output, or a callable of the output"
            )
        return Target(jnp.zeros((), jnp.int32), target, seed), False
    if callable(target):
        return Target(jnp.zeros((), jnp.int32), "callable", seed, target), False
    if isinstance(target, bool):
        raise TypeError(f"target={target!r}: a boolean is not an output index")
    if isinstance(target, int | np.integer):
        target = np.asarray(target)
    array = target if isinstance(target, jax.Array) else np.asarray(target)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        if array.dtype == bool:
            raise TypeError("a boolean target array is not understood: pass output indices "
                            "or a float cotangent (mask) shaped like the output")
        return Target(jnp.asarray(array), "cotangent", seed), False
    if n_outputs is not None and not isinstance(array, jax.core.Tracer):
        check_target_range(array, n_outputs)
    data = jnp.asarray(array, jnp.int32)
    if array.ndim == 0:
        return Target(jnp.broadcast_to(data, (batch,)), "index", seed), False
    if array.ndim == 1:
        if array.shape[0] != batch:
            raise ValueError(
                f"target has {array.shape[0]} indices for a batch of {batch}: a 1-D int target "
                f"is one index per sample and needs {batch}. For several targets for every "
                f"sample use jxai.several({', '.join(map(str, _head(array)))}) (a (T, 1) array), "
                "or a (T, B) array for T targets per sample"
            )
        return Target(data, "index", seed), False
    if array.ndim == 2 and array.shape[1] in (1, batch):
        return Target(jnp.broadcast_to(data, (array.shape[0], batch)), "index", seed), True
    raise ValueError(
        f"integer target of shape {tuple(array.shape)} does not fit a batch of {batch}: use an "
        f"int, ({batch},) for one target per sample, (T, {batch}) for T targets per sample, or "
        "jxai.several(i, j, ...) = (T, 1) for the same targets for every sample"
    )


def _head(array, limit: int = 4) -> list:
    """The first values of a concrete index array (for a message); "i, j" when traced."""
    if isinstance(array, jax.core.Tracer):
        return ["i", "j"]
    values = np.asarray(array).tolist()
    return values[:limit] + (["..."] if len(values) > limit else [])


def token_target(target, position, batch: int, length: int, vocab: int, mask=None,
                 seed: str = "logit") -> tuple[Target, bool]:
    """The target of a sequence output ``(B, T, V)`` on token ids (a language model's logits):
    token ``target`` at ``position``, as a flattened ``"index"`` target ``position · V + token``
    (``"max"``: the ``"max_at"`` target, the largest logit at ``position``).

    ``target``: ``"max"``, a token id ``0..V-1``, a ``(B,)`` array of them (one per sample), or
    several for every sample (`several`, ``(T', 1)``, or ``(T', B)``); ``"all"``, a cotangent
    array and a callable are not token ids and keep their meaning (without ``position``).
    ``position``: None (default) the last real token of each sample (the last with
    ``mask != 0``; ``T - 1`` without a mask); an int ``p >= 0``, the position ``p``; ``p < 0``,
    counted back from each sample's last real token (``-1`` is that token); or a ``(B,)`` int
    array, one per sample. Out-of-range tokens and positions, and positions on padding, are
    ValueErrors naming the valid range (when the values are known: not inside the caller's jit).
    """
    mask_known = mask is not None and not isinstance(mask, jax.core.Tracer)
    if isinstance(target, str) and target == "all" or callable(target) and not isinstance(
            target, str) or _is_cotangent(target):
        if position is not None:
            raise ValueError(f"position= picks a token position for a token-id target; target="
                             f"{target if isinstance(target, str) else type(target).__name__} "
                             "selects the outputs itself: drop position=")
        return parse_target(target, batch, seed, length * vocab)
    if mask is None:
        last = jnp.full((batch,), length - 1, jnp.int32)
    else:
        real = jnp.asarray(mask) != 0
        last = (length - 1 - jnp.argmax(real[:, ::-1], axis=1)).astype(jnp.int32)
    positions = _positions(position, batch, length, last, mask if mask_known else None)
    if isinstance(target, str):
        if target != "max":
            parse_target(target, batch, seed)  # the usual message for an unknown string
        return Target(positions, "max_at", seed), False
    tokens, multi = parse_target(target, batch, seed, None)
    if not isinstance(tokens.data, jax.core.Tracer) and not isinstance(target, jax.core.Tracer):
        values = np.asarray(tokens.data)
        bad = (values < 0) | (values >= vocab)
        if bad.any():
            value = int(values[np.nonzero(bad)][0])
            raise ValueError(
                f"target token {value} is out of range: the model's output has {vocab} logits per "
                f"position (valid token ids 0..{vocab - 1}); a flattened output index is not a "
                "token id here: pass the token id and position= instead")
    return Target(positions * vocab + tokens.data, "index", seed), multi


def _is_cotangent(target) -> bool:
    if isinstance(target, str | int | np.integer | bool) or callable(target):
        return False
    array = target if isinstance(target, jax.Array) else np.asarray(target)
    return not jnp.issubdtype(array.dtype, jnp.integer)


def _positions(position, batch: int, length: int, last, mask):
    """(B,) absolute positions from ``position`` (see `token_target`), checked when known."""
    if position is None:
        if mask is not None:
            empty = ~np.asarray(mask != 0).any(axis=1)
            if empty.any():
                raise ValueError(f"attention_mask row {int(np.argmax(empty))} has no real token "
                                 "(all zeros): there is no last token to explain")
        return last
    if isinstance(position, bool) or isinstance(position, float):
        raise TypeError(f"position={position!r}: an int (or one per sample) is a position")
    traced = isinstance(position, jax.core.Tracer)
    array = position if traced or isinstance(position, jax.Array) else np.asarray(position)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise TypeError(f"position must be an int or a ({batch},) int array, got dtype "
                        f"{array.dtype}")
    if array.ndim == 1 and array.shape[0] != batch or array.ndim > 1:
        raise ValueError(f"position of shape {tuple(array.shape)} does not fit a batch of "
                         f"{batch}: pass an int or one position per sample, shape ({batch},)")
    values = jnp.broadcast_to(jnp.asarray(array, jnp.int32), (batch,))
    absolute = jnp.where(values < 0, last + 1 + values, values)
    if traced or isinstance(values, jax.core.Tracer) or isinstance(last, jax.core.Tracer):
        return absolute
    given, at = np.asarray(values), np.asarray(absolute)
    lengths = np.asarray(last) + 1
    for b in range(batch):
        if not -lengths[b] <= given[b] < length:
            raise ValueError(
                f"position {int(given[b])} is out of range for sample {b}: valid positions are "
                f"0..{length - 1}, or -{int(lengths[b])}..-1 counted back from its last real "
                f"token (-1 is the last; it has {int(lengths[b])} tokens up to it)")
        if mask is not None and np.asarray(mask)[b, at[b]] == 0:
            raise ValueError(
                f"position {int(given[b])} of sample {b} is a padded token (attention_mask 0 at "
                f"{int(at[b])}); its logits explain nothing: pick a real token (position=-1 is "
                "the last real one)")
    return absolute
