"""Rematerialised transformer blocks (``remat=True`` of the zoo's BERT and LLaMA-style models).

Which blocks are checkpointed, and why every block: a block's input (batch × length × hidden)
is small next to what the block computes inside (heads × length² attention weights, the MLP's
intermediate activations, several times hidden). Checkpointing every block keeps the depth
inputs and one block's intermediates at a time, ``L·s + A`` for depth ``L``, block input ``s``
and block intermediates ``A``; checkpointing groups of ``√L`` blocks (Chen et al. 2016, for
chains whose layers store as much as they pass on) keeps ``√L·s + √L·A``, more whenever
``A > s`` (``A/s`` is about 4 + 3·intermediate/hidden + heads·length/hidden: 20 at length 128,
hundreds at 4096), so per-block checkpointing is the smaller of the two at every depth a
transformer has. What still grows with depth is ``L·s``, one residual stream per block.
"""

from __future__ import annotations

import flax.linen as nn

__all__ = ["REMAT_POLICY", "remat_block"]

REMAT_POLICY = None  # jax.checkpoint's policy: save nothing inside a block


def remat_block(block: type[nn.Module], remat: bool) -> type[nn.Module]:
    """``block`` itself, or ``nn.remat(block)`` when ``remat``: rematerialised blocks.

    ``nn.remat`` keeps the block's name and parameter paths (checkpoints load unchanged) and
    runs it under ``jax.checkpoint`` with no policy (`REMAT_POLICY`): nothing computed inside a
    block is kept for the backward pass but the block's inputs; each block's forward pass runs
    again, one block at a time, when the backward pass reaches it. Peak memory is then the
    residual stream at every block boundary plus one block's intermediates, instead of every
    block's intermediates (see the module docstring); the price is one more forward pass.
    Explanations see the same layers: LRP rules are attached while the block is traced, and
    replayed with it.
    """
    return nn.remat(block, policy=REMAT_POLICY) if remat else block
