"""Attention rollout (Abnar & Zuidema 2020): how much each input token reaches an output token
through the attention maps alone, residual connections counted as identity attention.

Per attention layer ``l`` the weights ``A_l`` (B, heads, T, T) are fused over the heads (mean by
default), mixed with the identity for the residual stream and re-normalised by rows,

.. math:: \\hat A_l = \\mathrm{rownorm}\\big((1 - \\rho)\\, \\bar A_l + \\rho I\\big), \\qquad
   \\tilde A = \\hat A_L \\cdots \\hat A_2 \\hat A_1,

and the relevance of input token ``j`` for output token ``i`` (the class token, ``i = 0``) is
``Ã[i, j]``. It does not depend on the target: rollout explains what the model attends to, not
which class that supports.

The attention weights are read from the model's own forward pass: every placed attention call
(``nn.dot_product_attention``, ``jax.nn.dot_product_attention``, the ``attention_fn`` of
``nn.MultiHeadDotProductAttention``; `jxai.transformer`) is evaluated a second time with one-hot
values, ``attention(q, k, I) = A``, so masks, biases, causal masking and the model's own scaling
are those of the forward pass (`attention_weights`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jxai import transformer
from jxai._functions import current_trace, placing
from jxai.adapters import bypassing, is_bypassed
from jxai.methods._common import check_choice
from jxai.methods._registry import register_method

__all__ = ["attention_rollout", "attention_weights", "rollout"]


class _AttentionRecorder:
    """A function site (`jxai._functions.placing`) that records each attention call's weights
    and runs every other placed function as it is."""

    def __init__(self):
        self.weights: list[jax.Array] = []
        self.trace = current_trace()

    def takes_calls(self) -> bool:
        return not is_bypassed() and current_trace() is self.trace

    def place(self, call):
        with bypassing():  # the function's own calls (softmax, +...) are not placed again
            if call.module_type is not transformer.DotProductAttention:
                return call.apply(call.inputs)
            query, key, value = call.inputs
            out = call.apply(call.inputs)
            length = key.shape[-3]  # [batch..., length, heads, depth]
            one_hot = jnp.broadcast_to(
                jnp.eye(length, dtype=value.dtype)[:, None, :],
                (*key.shape[:-1], length),
            )
            try:
                weights = call.apply((query, key, one_hot))  # [batch..., T_q, heads, T_k]
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"attention_rollout: the attention call {call.name!r} does not accept values "
                    f"of depth {length} (the key length) in place of depth {value.shape[-1]}, "
                    "which is how jxai reads its weights; use nn.dot_product_attention"
                ) from error
        self.weights.append(jnp.moveaxis(weights, -2, -3))
        return out


def attention_weights(network, x, **model_inputs) -> list[jax.Array]:
    """The attention weights of every placed attention call of ``network`` on ``x``, in call
    order, each ``[batch..., heads, T_q, T_k]``: ``A = attention(q, k, I)`` as the model
    computes it (see the module docstring). ``model_inputs`` go to the model by name."""
    recorder = _AttentionRecorder()
    with placing(recorder):
        network.adapter.apply(network.module, network.variables, x, **model_inputs)
    return recorder.weights


def rollout(weights, residual: float = 0.5, head_fusion: str = "mean"):
    """``Ã = Â_L ⋯ Â_1`` (B, T, T) from per-layer weights ``[(B, heads, T, T), ...]``."""
    check_choice("attention_rollout", "head_fusion", head_fusion, ("mean", "max", "min"))
    fuse = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}[head_fusion]
    result = None
    for layer in weights:
        if layer.shape[-1] != layer.shape[-2]:
            raise ValueError(
                f"attention_rollout: an attention layer maps {layer.shape[-1]} keys to "
                f"{layer.shape[-2]} queries; rollout needs self-attention (square maps)"
            )
        fused = fuse(layer, axis=-3)
        mixed = (1.0 - residual) * fused + residual * jnp.eye(fused.shape[-1], dtype=fused.dtype)
        total = jnp.sum(mixed, axis=-1, keepdims=True)
        mixed = mixed / jnp.where(total == 0, 1.0, total)
        result = mixed if result is None else mixed @ result
    return result


@register_method("attention_rollout", family="other")
def attention_rollout(ctx, x, target, *, residual: float = 0.5, head_fusion: str = "mean",
                      token: int = 0, resize: bool = True, interpolation: str = "bilinear"):
    """Attention rollout (Abnar & Zuidema 2020): row ``token`` of ``Â_L ⋯ Â_1``.

    .. math:: \\hat A_l = \\mathrm{rownorm}\\big((1-\\rho)\\,\\mathrm{fuse}_h A_{l,h} + \\rho I\\big),
       \\qquad R_j = (\\hat A_L \\cdots \\hat A_1)_{\\text{token}, j}

    Args:
      residual: ρ, the identity's weight for the residual connection (0.5 in the paper; 0 is
        the raw product of the attention maps).
      head_fusion: ``"mean"`` over the heads (the paper), ``"max"`` or ``"min"``.
      token: the output token whose row is read (0: the class token of ViT and BERT; -1 the
        last token of a decoder).
      resize, interpolation: images (ViT): the prefix tokens (class token) dropped, the patch
        tokens laid out on the patch grid and resized to the image (``"bilinear"``/
        ``"nearest"``; ``resize=False``: the grid). Token inputs give ``(B, T)``.

    The model's other inputs (``attention_mask=``...) reach the forward pass; a padded token,
    which no token attends to, gets 0. The target is not used (rollout is class-agnostic). Reference: Abnar & Zuidema, "Quantifying
    Attention Flow in Transformers", ACL 2020.
    """
    weights = attention_weights(ctx.network, x, **ctx.inputs_for(x))  # masks: ctx.inputs
    if not weights:
        raise ValueError(
            f"attention_rollout: {ctx.network!r} makes no attention call jxai can place "
            "(nn.dot_product_attention, jax.nn.dot_product_attention, "
            "nn.MultiHeadDotProductAttention)"
        )
    tokens = weights[0].shape[-1]
    if not -tokens <= token < tokens:
        raise ValueError(f"attention_rollout: token={token} is not one of the {tokens} tokens")
    flow = rollout(weights, residual, head_fusion)
    relevance = flow.reshape(-1, tokens, tokens)[:, token, :].reshape(*flow.shape[:-2], tokens)
    if x.ndim == 4:  # an image: tokens -> patch grid (-> image)
        return transformer.tokens_to_image(relevance, ctx.layers, x.shape, resize, interpolation,
                                           "attention_rollout")
    return relevance
