"""Shared test pieces for token models: the model run on float embeddings instead of ids."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class FromEmbeddings(nn.Module):
    """The token model ``model`` run on float word embeddings (B, T, D) given as its input: the
    output of its embedding module named ``embed`` is replaced by them. ``last_position``: a
    language model's logits at the last position only (B, vocab)."""

    model: nn.Module
    embed: str
    last_position: bool = False

    @nn.compact
    def __call__(self, embeddings, attention_mask=None):
        ids = jnp.zeros(embeddings.shape[:2], jnp.int32)

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.name == self.embed:
                return embeddings
            return out

        with nn.intercept_methods(interceptor):
            y = self.model(ids, attention_mask=attention_mask)
        return y[:, -1] if self.last_position and y.ndim == 3 else y
