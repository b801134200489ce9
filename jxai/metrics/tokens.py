"""Faithfulness of token and patch relevance: the area between the MoRF and LeRF curves.

The protocol of the AttnLRP paper (Achtibat et al., ICML 2024, following Blücher et al. 2024):
remove the input units of a transformer — tokens of a language model, patches of a ViT — in the
order of the explanation, most relevant first (MoRF) and least relevant first (LeRF), read the
target output after each step, and report the area between the two curves

    ABPC = AUC(LeRF) − AUC(MoRF)

(trapezoidal areas over the removed fraction k/L ∈ [0, 1], L = steps). Removing what the
explanation calls relevant should make the output fall fast (small AUC(MoRF)) and removing what it
calls irrelevant should leave the output alone (large AUC(LeRF)): higher ABPC = more faithful. A
random ranking has ABPC 0 in expectation (MoRF and LeRF are then the same random process).

* `token_perturbation` — integer token ids (BERT- and LLaMA-style models of `jxai.models`, or
  `jxai.load_pretrained`): a removed token's id is replaced by ``mask_token`` (the tokenizer's
  unknown or mask token, e.g. BERT's ``[UNK]`` = 100 or ``[MASK]`` = 103). Removal changes the
  id, not the embedding: the sequence length and the positions of the other tokens stay, and the
  model sees an input a tokenizer could produce (zeroing the word embedding instead is not
  offered: no token embeds to zero, so that input is off the model's data). The model's other
  inputs pass by name
  (``attention_mask=mask``); padded tokens (mask 0) and tokens in ``keep`` are never removed, and
  the steps of each sample are counted over its own removable tokens.
* `patch_perturbation` — images of a ViT: whole ``p×p`` patches of the patch grid are replaced by
  a baseline value; the relevance of a patch is the sum of its pixel relevance
  (`jxai.transformer.patch_relevance`). The region curves of `pixel_flipping` with regions =
  patches, both orders in one compiled call.

Both are one jitted function per (model structure, shapes, settings); the perturbed copies are
built inside it and evaluated with ``vmap`` in chunks of ``batch_size`` steps (``lax.map``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jxai.metrics import _common as C
from jxai.network import Network

__all__ = ["ABPC", "patch_perturbation", "token_perturbation"]


class ABPC(NamedTuple):
    """MoRF and LeRF perturbation curves and the area between them."""

    morf: jax.Array  # (B, steps + 1) target score, most relevant removed first
    lerf: jax.Array  # (B, steps + 1) target score, least relevant removed first
    abpc: jax.Array  # (B,) AUC(lerf) − AUC(morf), trapezoidal over the fraction k / steps

    @property
    def fraction(self) -> np.ndarray:
        """Nominal fraction of the units removed at each curve point, k / steps."""
        return np.linspace(0.0, 1.0, self.morf.shape[-1])


def _abpc(morf, lerf) -> ABPC:
    fraction = jnp.linspace(0.0, 1.0, morf.shape[-1])
    area = jnp.trapezoid(lerf - morf, fraction, axis=-1)
    return ABPC(morf, lerf, area)


def _check_activation(activation):
    if activation not in C.ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; use None, 'softmax' or 'sigmoid'")


# -- tokens --------------------------------------------------------------------------------
def _token_scores(module, skip, variables, ids, inputs, target, position, activation):
    """(B,) target output: a class logit, or a token's logit at ``position`` for (B, T, V)."""
    y = Network(module, variables, skip=skip).apply(ids, **inputs)
    if y.ndim == 3:
        y = y[jnp.arange(y.shape[0]), position]
    y = y.reshape(y.shape[0], -1)
    if activation == "softmax":
        y = jax.nn.softmax(y, axis=-1)
    elif activation == "sigmoid":
        y = jax.nn.sigmoid(y)
    return jnp.take_along_axis(y, target[:, None], axis=1)[:, 0]


@partial(jax.jit, static_argnames=("parts", "steps", "activation", "batch_size"))
def _token_curves(variables, ids, relevance, removable, target, position, mask_token, inputs,
                  *, parts, steps, activation, batch_size):
    module, skip = parts
    relevance = relevance.astype(jnp.float32)
    ranks = jnp.stack([C.order_ranks(relevance, o, removable) for o in ("morf", "lerf")])
    n = jnp.sum(removable, axis=1)  # (B,) removable tokens per sample
    k = jnp.arange(steps + 1)
    counts = jnp.round(k[:, None] * n[None, :] / steps).astype(jnp.int32)  # (steps+1, B)
    which = jnp.repeat(jnp.arange(2), steps + 1)  # 0 = MoRF, 1 = LeRF
    counts = jnp.concatenate([counts, counts])

    def at(args):
        order, count = args
        removed = ranks[order] < count[:, None]
        perturbed = jnp.where(removed, mask_token, ids)
        return _token_scores(module, skip, variables, perturbed, inputs, target, position,
                             activation)

    scores = jax.lax.map(at, (which, counts), batch_size=batch_size)  # (2(steps+1), B)
    return scores[: steps + 1].T, scores[steps + 1 :].T


def _last_real(mask, length):
    mask = np.asarray(mask) != 0 if mask is not None else None
    if mask is None:
        return None
    return length - 1 - np.argmax(mask[:, ::-1], axis=1)


def token_perturbation(
    network,
    input_ids,
    attribution,
    target="max",
    *,
    mask_token: int,
    steps: int | None = None,
    position=None,
    keep=None,
    attention_mask=None,
    inputs: dict | None = None,
    activation: str | None = None,
    batch_size: int | None = 8,
    **explain_params,
) -> ABPC:
    """MoRF/LeRF token-removal curves and their area between (ABPC) for a token model.

    Each sample's removable tokens (real tokens, ``attention_mask != 0``, not in ``keep``;
    n of them) are ranked by relevance. Curve point k (k = 0..L, L = ``steps``) replaces the
    first round(k·n/L) of them by ``mask_token`` and records the target output

        MoRF_k = f(x with the round(k·n/L) most relevant tokens → mask_token)_c
        LeRF_k = f(x with the round(k·n/L) least relevant tokens → mask_token)_c
        ABPC   = Σ_k (LeRF_k − MoRF_k + LeRF_{k+1} − MoRF_{k+1}) / (2L)

    The removed tokens keep their positions (and their attention mask), only their ids change.

    Args:
      network: a `jxai.Network` reading (B, T) integer ids (classifier: (B, K) logits; language
        model: (B, T, V) logits, scored at ``position``).
      input_ids: (B, T) integer token ids.
      attribution: (B, T) token relevance, or (B, T, D) (summed over D), or a method name for
        `jxai.explain` (called with the same target, position and model inputs).
      target: ``"max"`` (the predicted class / next token on the unperturbed input), an int or
        a (B,) int array (a class, or a token id of a language model).
      mask_token: the id written in place of a removed token (the tokenizer's unknown or mask
        token). Required: no id is neutral for every vocabulary.
      steps: L, the number of removal steps (default: T, one token per step when nothing is
        padded).
      position: language models only: the position whose next-token logit is scored: None (each
        sample's last real token), an int ``p >= 0``, ``p < 0`` counting back from the last real
        token, or a (B,) int array. As in `jxai.explain`.
      keep: optional (B, T) bool, True for tokens never removed (e.g. ``[CLS]``/``[SEP]``/BOS).
      attention_mask: optional (B, T) mask passed to the model; tokens with 0 are never removed.
      inputs: the model's other inputs by name, e.g. ``{"token_type_ids": types}``.
      activation: None, ``"softmax"`` or ``"sigmoid"`` on the outputs before scoring (the
        AttnLRP paper reads the logit: None).
      batch_size: curve points evaluated together (None: all at once).
      **explain_params: passed to `jxai.explain` when ``attribution`` is a method name.

    Returns:
      `ABPC` (morf (B, L+1), lerf (B, L+1), abpc (B,)).

    References: R. Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation
    for Transformers", ICML 2024; J. Blücher, J. Vielhaben, N. Strodthoff, "Decoupling Pixel
    Flipping and Occlusion Strategy for Consistent XAI Benchmarks", TMLR 2024.
    """
    network, parts = C.network_parts(network)
    ids = jnp.asarray(input_ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(
            f"token_perturbation: input_ids must be (B, T) integer token ids, got shape "
            f"{ids.shape} dtype {ids.dtype}; for images use patch_perturbation"
        )
    batch, length = ids.shape
    _check_activation(activation)
    if isinstance(mask_token, bool) or not isinstance(mask_token, (int, np.integer)):
        raise TypeError(f"mask_token must be an int token id, got {mask_token!r}")
    if mask_token < 0:
        raise ValueError(f"mask_token must be a token id >= 0, got {mask_token}")
    steps = length if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    model_inputs = dict(inputs or {})
    if attention_mask is not None:
        model_inputs["attention_mask"] = attention_mask
    for name, value in model_inputs.items():
        value = jnp.asarray(value)
        if value.shape[:1] != (batch,):
            raise ValueError(
                f"token_perturbation: model input {name!r} has shape {value.shape}; expected "
                f"one row per sample ({batch} rows)"
            )
        model_inputs[name] = value
    mask = model_inputs.get("attention_mask")
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(
            f"token_perturbation: attention_mask has shape {mask.shape}, input_ids {ids.shape}"
        )
    removable = np.ones(ids.shape, bool) if mask is None else np.asarray(mask) != 0
    if keep is not None:
        keep = np.asarray(keep)
        if keep.shape != ids.shape:
            raise ValueError(f"keep has shape {keep.shape}, input_ids {ids.shape}")
        removable = removable & ~keep.astype(bool)

    out = jax.eval_shape(lambda v, x, i: Network(network.module, v, skip=network.skip).apply(
        x, **i), network.variables, ids, model_inputs)
    if out.ndim == 3:  # a language model: scored at one position per sample
        last = _last_real(mask, length)
        last = np.full(batch, length - 1) if last is None else last
        if position is None:
            pos = last
        elif np.ndim(position) == 0:
            p = int(position)
            pos = np.full(batch, p) if p >= 0 else last + 1 + p
        else:
            pos = np.asarray(position).astype(int)
            if pos.shape != (batch,):
                raise ValueError(f"position must be an int or ({batch},), got {pos.shape}")
        if np.any(pos < 0) or np.any(pos >= length):
            raise ValueError(f"position {position!r} falls outside the {length} tokens")
        pos = jnp.asarray(pos, jnp.int32)
    elif position is not None:
        raise ValueError("position is for language models ((B, T, V) logits); this network "
                         f"gives {out.shape}")
    else:
        pos = jnp.zeros((batch,), jnp.int32)

    if isinstance(target, str):
        if target != "max":
            raise ValueError(f"target must be 'max', an int or a ({batch},) int array")
        y = jax.jit(_token_scores_all, static_argnames=("parts",))(
            network.variables, ids, model_inputs, pos, parts=parts)
        target = jnp.argmax(y, axis=-1).astype(jnp.int32)
    else:
        target = C.resolve_target(network, ids, target)
        n_out = out.shape[-1] if out.ndim == 3 else int(np.prod(out.shape[1:]))
        if not isinstance(target, jax.core.Tracer) and (
            np.any(np.asarray(target) < 0) or np.any(np.asarray(target) >= n_out)
        ):
            raise ValueError(f"target {np.asarray(target).tolist()} outside 0..{n_out - 1} "
                             "(the outputs of one sample" + (" at one position)" if out.ndim == 3
                                                             else ")"))

    if isinstance(attribution, str):
        from jxai._driver import explain

        extra = {"position": pos} if out.ndim == 3 else {}
        relevance = explain(network, ids, attribution, target=target, **extra,
                            **model_inputs, **explain_params)
    else:
        if explain_params:
            raise TypeError(
                f"unexpected keyword arguments {sorted(explain_params)}: explain parameters are "
                "only used when attribution is a method name"
            )
        relevance = attribution
    relevance = jnp.asarray(relevance)
    if relevance.ndim == 3 and relevance.shape[:2] == ids.shape:
        relevance = relevance.sum(-1)
    if relevance.shape != ids.shape:
        raise ValueError(
            f"token_perturbation: attribution has shape {relevance.shape}; expected the ids' "
            f"shape {ids.shape} (or {ids.shape} + (D,), summed over D)"
        )
    morf, lerf = _token_curves(
        network.variables, ids, relevance, jnp.asarray(removable), target, pos,
        jnp.asarray(mask_token, ids.dtype), model_inputs,
        parts=parts, steps=steps, activation=activation, batch_size=batch_size,
    )
    return _abpc(morf, lerf)


def _token_scores_all(variables, ids, inputs, position, *, parts):
    module, skip = parts
    y = Network(module, variables, skip=skip).apply(ids, **inputs)
    if y.ndim == 3:
        y = y[jnp.arange(y.shape[0]), position]
    return y.reshape(y.shape[0], -1)


# -- patches -------------------------------------------------------------------------------
def patch_perturbation(
    network,
    x,
    attribution,
    target="max",
    *,
    patch_size: int | tuple[int, int],
    steps: int | None = None,
    baseline=0.0,
    activation: str | None = None,
    key=None,
    batch_size: int | None = 8,
    **explain_params,
) -> ABPC:
    """MoRF/LeRF patch-removal curves and ABPC for an image model on a patch grid (a ViT).

    The (H/p)·(W/p) = R patches are ranked by their relevance (sum of the pixel relevance inside,
    `jxai.transformer.patch_relevance`); curve point k replaces the first round(k·R/L) whole
    patches (all channels) by ``baseline`` and records the target output. ABPC as in
    `token_perturbation`. This is `region_perturbation` with regions = patches, run in both
    orders (one compiled call).

    Args:
      network: a `jxai.Network` on (B, H, W, C) images.
      x: (B, H, W, C) images, H and W multiples of the patch size.
      attribution: pixel relevance (B, H, W[, C]), a patch grid (B, H/p, W/p), or a method name.
      patch_size: p, or (ph, pw).
      steps: L (default: R, one patch per step).
      baseline: a number, ``"mean"``, ``"uniform"`` (needs ``key``) or an array like x.
      Other arguments as in `jxai.metrics.pixel_flipping`.

    Returns:
      `ABPC` (morf (B, L+1), lerf (B, L+1), abpc (B,)).
    """
    network, parts = C.network_parts(network)
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"patch_perturbation: x must be (B, H, W, C) images, got {x.shape}")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    batch, height, width, _ = x.shape
    if ph < 1 or pw < 1 or height % ph or width % pw:
        raise ValueError(
            f"patch_perturbation: {height}×{width} images are not a whole number of {ph}×{pw} "
            "patches"
        )
    grid = (height // ph, width // pw)
    target = C.resolve_target(network, x, target)
    relevance = C.resolve_attribution(network, x, attribution, target, explain_params)
    if relevance.shape == (batch, *grid) and grid != (height, width):
        relevance = jnp.repeat(jnp.repeat(relevance, ph, axis=1), pw, axis=2) / (ph * pw)
    steps = grid[0] * grid[1] if steps is None else int(steps)
    C.location_layout(x.shape, relevance.shape, -1)  # pixel relevance: x's shape, or no channels
    C.step_counts(1, steps)  # validates steps
    _check_activation(activation)
    morf, lerf = _patch_curves(
        network.variables, x, C.location_relevance(relevance, (height, width)), target,
        C.make_baseline(baseline, x, True, key),
        parts=parts, locations=(height, width), region=(ph, pw), steps=steps,
        activation=activation, batch_size=batch_size,
    )
    return _abpc(morf, lerf)


@partial(jax.jit, static_argnames=("parts", "locations", "region", "steps", "activation",
                                   "batch_size"))
def _patch_curves(variables, x, location_rel, target, baseline, *, parts, locations, region,
                  steps, activation, batch_size):
    """Both orders in one compiled call: the region curves of `pixel_flipping` (same pieces of
    `jxai.metrics._common`), regions = patches, MoRF and LeRF steps mapped together."""
    module, skip = parts
    ids, n_regions = C.region_ids(locations, region)  # trace-time constants
    counts = jnp.asarray(C.step_counts(n_regions, steps))
    relevance = C.region_relevance(location_rel, ids, n_regions)  # (B, R) patch relevance
    ranks = jnp.stack([C.order_ranks(relevance, o) for o in ("morf", "lerf")])
    which = jnp.repeat(jnp.arange(2), steps + 1)  # 0 = MoRF, 1 = LeRF

    def at(args):
        order, count = args
        mask = C.expand_mask(ranks[order] < count, ids, locations, True)
        return C.score(module, skip, variables, jnp.where(mask, baseline, x), target, activation)

    scores = jax.lax.map(at, (which, jnp.concatenate([counts, counts])), batch_size=batch_size)
    return scores[: steps + 1].T, scores[steps + 1 :].T
