"""Rematerialised transformer blocks (``remat=`` of the zoo's BERT and LLaMA-style models).

Three settings, for depth ``L``, block input ``s`` (batch × length × hidden) and one block's
intermediates ``A`` (the MLP activations and the heads × length² attention weights):

- ``remat=False``: every block's intermediates stay alive for the backward pass, ``L·A``.
- ``remat=True`` (``"block"``): every block under ``jax.checkpoint`` (`nn.remat`); the backward
  pass keeps the ``L`` block inputs and recomputes one block at a time: ``L·s + A``. Linear in
  depth, with a slope ``A/s`` times smaller (``A/s`` is about 4 + 3·intermediate/hidden +
  heads·length/hidden: 20 at length 128 and hidden 256, hundreds at 4096).
- ``remat="sqrt"``: two levels (Chen et al. 2016, "Training deep nets with sublinear memory
  cost"): groups of ``k = ⌈√L⌉`` consecutive blocks each under one ``jax.checkpoint``, and every
  block inside a group under its own. The backward pass keeps the ``⌈L/k⌉`` group inputs; while
  it goes through one group it recomputes that group's ``k`` block inputs, then one block's
  intermediates at a time: ``(L/k + k)·s + A = 2√L·s + A``, square root of depth. The price is
  a second recomputation: three forward passes in all (``"block"``: two).

Parameter names are the same in all three (checkpoints load unchanged), and explanations are the
same function: LRP rules are attached while a block is traced and replayed with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn

__all__ = ["REMAT_CHOICES", "REMAT_POLICY", "check_remat", "group_size", "remat_block",
           "run_blocks"]

REMAT_POLICY = None  # jax.checkpoint's policy: save nothing inside a block
REMAT_CHOICES = (False, True, "block", "sqrt")


def check_remat(remat) -> bool | str:
    """The ``remat`` setting as stored in a model config: False, True (every block) or "sqrt"."""
    if remat is None or remat is False or remat is True:
        return bool(remat)
    if remat == "block":
        return True
    if remat == "sqrt":
        return "sqrt"
    raise ValueError(f"remat={remat!r}: use False, True (every block rematerialised) or 'sqrt' "
                     "(groups of √depth blocks, peak memory ∝ √depth)")


def remat_block(block: type[nn.Module], remat: bool | str) -> type[nn.Module]:
    """``block`` itself, or ``nn.remat(block)`` when ``remat`` is set (True or "sqrt").

    ``nn.remat`` keeps the block's name and parameter paths and runs it under ``jax.checkpoint``
    with no policy (`REMAT_POLICY`): nothing computed inside the block is kept for the backward
    pass but its inputs; its forward pass runs again when the backward pass reaches it.
    """
    return nn.remat(block, policy=REMAT_POLICY) if remat else block


def group_size(depth: int) -> int:
    """Blocks per checkpointed group under ``remat="sqrt"``: ``⌈√depth⌉``."""
    return math.isqrt(depth - 1) + 1 if depth > 1 else 1  # ⌈√n⌉ = ⌊√(n − 1)⌋ + 1


def run_blocks(owner: nn.Module, attribute: str, x, *args, remat: bool | str = False):
    """``x`` through the blocks ``getattr(owner, attribute)`` (a list made in ``setup``), in order,
    each called as ``block(x, *args)``.

    Under ``remat="sqrt"`` each group of `group_size` blocks runs as one lifted
    ``nn.remat`` function of ``owner`` (the blocks inside are rematerialised themselves by
    `remat_block`), so the backward pass keeps one residual stream per group; otherwise the
    blocks run one after the other.
    """
    blocks: Sequence[nn.Module] = getattr(owner, attribute)
    if remat != "sqrt":
        for block in blocks:
            x = block(x, *args)
        return x
    k = group_size(len(blocks))
    for start in range(0, len(blocks), k):
        x = nn.remat(_group(attribute, start, start + k), policy=REMAT_POLICY)(owner, x, *args)
    return x


def _group(attribute: str, start: int, stop: int):
    def run(owner, x, *args):
        for block in getattr(owner, attribute)[start:stop]:
            x = block(x, *args)
        return x

    run.__name__ = f"blocks_{start}_{stop - 1}"
    return run
