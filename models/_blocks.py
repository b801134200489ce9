"""Rematerialised transformer blocks (``remat=True`` of the zoo's BERT and LLaMA-style models).

Which blocks are checkpointed, and why every block: with groups of ``k`` consecutive blocks
checkpointed together (Chen et al. 2016), the backward pass keeps the ``L/k`` group inputs and
one group's intermediates, ``(L/k)·s + k·A`` for depth ``L``, block input ``s`` (batch × length
× hidden) and one block's intermediates ``A``. That is smallest at ``k = √(L·s/A)`` — the
``√L`` rule when a layer stores as much as it passes on (``A = s``) — and ``k = 1``, every
block, whenever ``L < A/s``. In a transformer block ``A/s`` is about 4 + 3·intermediate/hidden
+ heads·length/hidden (the MLP activations and the heads × length² attention weights): 20 at
length 128 and hidden 256, hundreds at 4096, so every block is the optimum at every depth a
transformer has, and peak memory is ``L·s + A``: one residual stream per block (the only term
growing with depth, with a slope ``A/s`` times smaller than without remat) and one block's
intermediates (the only term growing with length²).
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
