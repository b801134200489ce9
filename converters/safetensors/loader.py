"""`load_pretrained`: a Hugging Face or timm model folder → a `jxai.Network`, without PyTorch."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jxai.network import Network

from .families import family_for
from .files import Checkpoint, read_config

__all__ = ["load_pretrained"]


REMAT_FAMILIES = ("bert", "llama")  # zoo models with a remat option


def load_pretrained(path: str | os.PathLike, dtype: Any = None, remat: bool | str = False) -> Network:
    """A published transformer folder as a `Network` of `jxai.models`' ViT, BERT or LLaMA.

    The folder is what ``save_pretrained(..., safe_serialization=True)`` or timm's
    ``save_for_hf`` write and the hubs publish: ``config.json`` with ``model.safetensors``, or
    shards ``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``. The
    architecture comes from ``config["architectures"]`` (ViTForImageClassification,
    BertForSequenceClassification, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
    MistralForCausalLM) or timm's ``architecture`` (``vit_{size}_patch{P}_{SIZE}``); the sizes
    from the config. Every tensor is read once from the memory-mapped files and mapped by name
    (`jxai.converters.safetensors.families`). Nothing in the folder is executed: no remote code,
    no pickle.

    Args:
      path: the model folder.
      dtype: None keeps each tensor's stored dtype (a bfloat16 checkpoint gives bfloat16
        parameters and computes in bfloat16); a floating dtype (``jnp.float32``, ``"float32"``)
        casts every parameter to it.
      remat: True rematerialises each encoder/decoder layer in the backward pass (BERT and
        LLaMA-style models; ``nn.remat``, the same parameter names): peak memory of a gradient or
        an explanation keeps one residual stream per layer and one layer's intermediates instead
        of every layer's, for one more forward pass. ``"sqrt"`` also checkpoints groups of
        ⌈√depth⌉ layers: about 2√depth residual streams, for two more forward passes
        (`jxai.models._blocks`).

    Returns:
      A `Network` whose metadata holds the zoo ``name`` (``vit``, ``bert``, ``llama``) and its
      ``config`` (so `jxai.save_network` writes it and `jxai.load` restores it), ``architecture``,
      ``source`` (the folder), ``checkpoint_dtypes`` and the usual ``input_shape`` and
      ``layer_names``. ``net.apply(pixels)`` (ViT, NHWC) or ``net.apply(input_ids,
      attention_mask=mask)`` gives the logits.

    Raises:
      ValueError: an unknown architecture (naming it and the supported ones), an unsupported
        setting, or weights that do not fit: one error listing every missing, unexpected and
        mis-shaped tensor.
    """
    import jxai.models
    from jxai.models._blocks import check_remat
    from jxai.models._registry import _trace  # one abstract pass: parameter shapes, call order

    folder = Path(os.path.abspath(os.fspath(path)))
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; jxai.load_pretrained takes a model folder "
                         "(config.json + model.safetensors)")
    config = read_config(folder)
    architecture, family = family_for(config, folder)
    options = family.options(config, folder)
    remat = check_remat(remat)
    if remat:
        if family.zoo_name not in REMAT_FAMILIES:
            raise ValueError(f"remat={remat!r}: {architecture} ({family.zoo_name}) has no "
                             f"rematerialised variant; it exists for {', '.join(REMAT_FAMILIES)}")
        options["remat"] = remat
    module, input_shape, metadata = jxai.models.get_module(family.zoo_name, **options)
    abstract, order, _ = _trace(module, input_shape)
    leaves = {tuple(str(getattr(k, "key", k)) for k in p): tuple(leaf.shape)
              for p, leaf in jax.tree_util.tree_leaves_with_path(abstract["params"])}
    cast = None if dtype is None else jnp.dtype(dtype)
    if cast is not None and not jnp.issubdtype(cast, jnp.floating):
        raise ValueError(f"dtype={dtype!r}: parameters can only be cast to a floating dtype")
    with Checkpoint(folder) as checkpoint:
        plan = _plan(checkpoint, family, leaves, architecture, folder, options)
        params: dict[tuple[str, ...], Any] = {}
        for name, targets in plan.items():
            array = checkpoint.read(name)
            for target in targets:
                value = target.transform(array)
                params[target.path] = value if cast is None else value.astype(cast)
        stored = sorted({checkpoint.dtypes[name] for name in plan})
    metadata.update(layer_names=order, architecture=architecture, source=str(folder),
                    checkpoint_dtypes=stored)
    return Network(module, {"params": _nest(params)}, metadata)


def _plan(checkpoint: Checkpoint, family, leaves, architecture, folder, options):
    """checkpoint name → its targets, after checking that the tensors fill the model exactly."""
    plan: dict[str, list] = {}
    unexpected, misshaped = [], []
    filled: dict[tuple[str, ...], str] = {}
    tied = options.get("tie_word_embeddings", False)
    for name in checkpoint.names():
        if any(re.fullmatch(p, name) for p in family.ignored) or (tied and name ==
                                                                   "lm_head.weight"):
            continue  # buffers, and a head that the config ties to the embeddings
        shape = checkpoint.shapes[name]
        targets = family.targets(name, leaves)
        if not targets:
            unexpected.append(f"{name} {shape}")
            continue
        for target in targets:
            got = jax.eval_shape(target.transform, jax.ShapeDtypeStruct(shape, jnp.float32))
            want = leaves[target.path]
            if tuple(got.shape) != want:
                misshaped.append(f"{name} {shape} → {'/'.join(target.path)} needs {want} "
                                 f"(got {tuple(got.shape)})")
            filled[target.path] = name
        plan[name] = targets
    missing = [f"{'/'.join(p)} {shape}" for p, shape in leaves.items() if p not in filled]
    if missing or unexpected or misshaped:
        parts = [f"{len(items)} {what} ({'; '.join(items)})" for what, items in (
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("mis-shaped", misshaped)) if items]
        raise ValueError(f"{folder}: the weights do not fit {architecture} as config.json "
                         f"describes it: {', '.join(parts)}. Is config.json the one these "
                         "weights were saved with?")
    return plan


def _nest(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree
