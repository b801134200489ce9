"""The architectures `load_pretrained` knows: ``config.json`` → a `jxai.models` configuration,
and each checkpoint tensor → the Flax parameters it fills.

Hugging Face names map by one rule (`hf_path`): ``a.b.{i}.c.weight`` → ``a/b_{i}/c/<leaf>``, the
leaf read off the Flax module there (``kernel`` of a Dense or Conv, ``scale`` of a norm,
``embedding`` of an Embed; ``gamma``/``beta`` are old names of a norm's weight/bias); PyTorch's
``Linear`` weight (out, in) is transposed to the Dense kernel (in, out), a ``Conv2d`` weight
(O, I, H, W) to HWIO. timm's ``vit_*`` names are first renamed to Hugging Face's by a table
(`timm_vit_names`), their fused ``qkv`` split into query, key and value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

__all__ = ["ARCHITECTURES", "Family", "Target", "family_for", "hf_path", "timm_vit_names"]


@dataclass(frozen=True)
class Target:
    """One Flax parameter filled from a checkpoint tensor: ``path`` and ``transform(array)``."""

    path: tuple[str, ...]
    transform: Callable[[Any], Any]


def _identity(a):
    return a


def _linear(a):
    """PyTorch Linear (out, in) → Dense kernel (in, out)."""
    return a.T


def _conv(a):
    """PyTorch Conv2d (O, I, H, W) → Flax Conv kernel (H, W, I, O)."""
    return jnp.transpose(a, (2, 3, 1, 0))


def _rows(i: int, n: int):
    """The i-th of n equal row blocks (timm's fused qkv: [q; k; v] stacked on the output axis)."""

    def take(a):
        size = a.shape[0] // n
        return a[i * size:(i + 1) * size]

    return take


def _then(first, second):
    return lambda a: second(first(a))


def hf_path(name: str, leaves: dict[tuple[str, ...], tuple[int, ...]]) -> list[Target]:
    """The Flax target of a Hugging Face tensor name, given the model's parameter ``leaves``
    (path → shape); [] when the name has no place in the model."""
    parts = name.split(".")
    merged: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and merged:
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    owner, leaf = tuple(merged), parts[-1]
    kinds = {path[-1] for path in leaves if path[:-1] == owner}
    if leaf in ("weight", "gamma"):
        if "kernel" in kinds:
            shape = leaves[(*owner, "kernel")]
            return [Target((*owner, "kernel"), _conv if len(shape) == 4 else _linear)]
        for kind in ("scale", "embedding"):
            if kind in kinds:
                return [Target((*owner, kind), _identity)]
    if leaf in ("bias", "beta") and "bias" in kinds:
        return [Target((*owner, "bias"), _identity)]
    if (*owner, leaf) in leaves:  # a parameter of its own (ViT's cls_token)
        return [Target((*owner, leaf), _identity)]
    return []


# -- timm vit_* ---------------------------------------------------------------------------------
_TIMM_VIT = [  # timm name pattern → Hugging Face ViTForImageClassification name
    (r"cls_token", "vit.embeddings.cls_token"),
    (r"pos_embed", "vit.embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"vit.embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"vit.encoder.layer.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"vit.encoder.layer.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)",
     r"vit.encoder.layer.\1.attention.output.dense.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"vit.encoder.layer.\1.intermediate.dense.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"vit.encoder.layer.\1.output.dense.\2"),
    (r"norm\.(weight|bias)", r"vit.layernorm.\1"),
    (r"head\.(weight|bias)", r"classifier.\1"),
]
_QKV = re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def timm_vit_names(name: str) -> list[tuple[str, Callable]]:
    """timm ``vit_*`` tensor → [(Hugging Face name, transform before the HF rule)]; the fused
    ``qkv`` gives three."""
    match = _QKV.fullmatch(name)
    if match:
        block, kind = match.groups()
        return [(f"vit.encoder.layer.{block}.attention.attention.{part}.{kind}", _rows(i, 3))
                for i, part in enumerate(("query", "key", "value"))]
    for pattern, replacement in _TIMM_VIT:
        if re.fullmatch(pattern, name):
            return [(re.sub(pattern, replacement, name), _identity)]
    return []


def timm_path(name: str, leaves) -> list[Target]:
    targets = []
    for hf_name, first in timm_vit_names(name):
        targets += [Target(t.path, _then(first, t.transform)) for t in hf_path(hf_name, leaves)]
    return targets


# -- config.json → the zoo configuration -------------------------------------------------------
def _get(config, key, default=None):
    value = config.get(key)
    return default if value is None else value


def _labels(config) -> list[str] | None:
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
    return None


def _require(config, where: str, **expected) -> None:
    """Refuse settings the model does not implement (instead of loading a different network)."""
    for key, allowed in expected.items():
        value = config.get(key)
        if value is not None and value not in allowed:
            raise ValueError(f"{where}: {key}={value!r} is not supported (supported: "
                             f"{', '.join(map(repr, allowed))})")


def vit_options(config, folder) -> dict[str, Any]:
    _require(config, "ViTForImageClassification", hidden_act=("gelu",))
    size = _get(config, "image_size", 224)
    patch = _get(config, "patch_size", 16)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"ViTForImageClassification: non-square image_size {size} is not "
                             "supported")
        size = size[0]
    labels = _labels(config)
    processor = _preprocessor(folder)
    return dict(hidden_size=_get(config, "hidden_size", 768),
                num_hidden_layers=_get(config, "num_hidden_layers", 12),
                num_attention_heads=_get(config, "num_attention_heads", 12),
                intermediate_size=_get(config, "intermediate_size", 3072),
                image_size=size, patch_size=patch, num_channels=_get(config, "num_channels", 3),
                num_labels=len(labels) if labels else _get(config, "num_labels", 2),
                layer_norm_eps=_get(config, "layer_norm_eps", 1e-12),
                qkv_bias=_get(config, "qkv_bias", True),
                image_mean=processor.get("image_mean", [0.5, 0.5, 0.5]),
                image_std=processor.get("image_std", [0.5, 0.5, 0.5]), labels=labels)


def _preprocessor(folder) -> dict[str, Any]:
    import json

    path = folder / "preprocessor_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


_TIMM_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
               "large": (1024, 24, 16), "huge": (1280, 32, 16)}
_TIMM_NAME = re.compile(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(\d+)")
_TIMM_ARGS = {"img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "qkv_bias", "global_pool", "class_token", "in_chans", "num_classes"}


def timm_vit_options(config, folder) -> dict[str, Any]:
    architecture = str(config["architecture"]).split(".")[0]
    match = _TIMM_NAME.fullmatch(architecture)
    if match is None:
        raise ValueError(
            f"timm architecture {architecture!r} is not supported: jxai loads the plain "
            "vit_{tiny,small,base,large,huge}_patch{P}_{SIZE} models (class token, learned "
            "positions, pre-norm blocks, token pooling)")
    width, depth, heads = _TIMM_SIZES[match.group(1)]
    args = dict(config.get("model_args") or {})
    unknown = sorted(set(args) - _TIMM_ARGS)
    if unknown:
        raise ValueError(f"timm {architecture}: model_args {unknown} are not supported (only "
                         f"{sorted(_TIMM_ARGS)})")
    if args.get("class_token", True) is not True:
        raise ValueError(f"timm {architecture}: class_token=False is not supported")
    pool = args.get("global_pool", config.get("global_pool", "token"))
    if pool != "token":
        raise ValueError(f"timm {architecture}: global_pool={pool!r} is not supported (token)")
    width = args.get("embed_dim", width)
    ratio = args.get("mlp_ratio", 4.0)
    pretrained = config.get("pretrained_cfg") or {}
    labels = config.get("label_names")
    return dict(hidden_size=width, num_hidden_layers=args.get("depth", depth),
                num_attention_heads=args.get("num_heads", heads),
                intermediate_size=int(width * ratio),
                image_size=args.get("img_size", int(match.group(3))),
                patch_size=args.get("patch_size", int(match.group(2))),
                num_channels=args.get("in_chans", 3),
                num_labels=_get(config, "num_classes", 1000), layer_norm_eps=1e-6,
                qkv_bias=args.get("qkv_bias", True),
                image_mean=list(pretrained.get("mean", (0.5, 0.5, 0.5))),
                image_std=list(pretrained.get("std", (0.5, 0.5, 0.5))),
                labels=list(labels) if isinstance(labels, (list, tuple)) else None)


def bert_options(config, folder) -> dict[str, Any]:
    _require(config, "BertForSequenceClassification", hidden_act=("gelu",),
             position_embedding_type=("absolute",))
    labels = _labels(config)
    return dict(vocab_size=_get(config, "vocab_size", 30522),
                hidden_size=_get(config, "hidden_size", 768),
                num_hidden_layers=_get(config, "num_hidden_layers", 12),
                num_attention_heads=_get(config, "num_attention_heads", 12),
                intermediate_size=_get(config, "intermediate_size", 3072),
                max_position_embeddings=_get(config, "max_position_embeddings", 512),
                type_vocab_size=_get(config, "type_vocab_size", 2),
                layer_norm_eps=_get(config, "layer_norm_eps", 1e-12),
                num_labels=len(labels) if labels else _get(config, "num_labels", 2),
                labels=labels)


def _rope(config, where) -> tuple[float, list | None]:
    """(rope_theta, rope_scaling) of a decoder config, in either layout:

    transformers 4.x writes ``rope_theta`` and ``rope_scaling`` (None or a dict with ``rope_type``
    or ``type``, ``factor``, ...) at the top level; transformers 5.x writes one
    ``rope_parameters`` dict holding ``rope_theta``, ``rope_type`` and the scaling fields.
    A per-layer-type ``rope_parameters`` (a dict of dicts), a partial rotary factor or two
    layouts that disagree are refused rather than guessed.
    """
    parameters = config.get("rope_parameters")
    if parameters is None:
        scaling = config.get("rope_scaling") or {}
        theta = _get(config, "rope_theta", 10000.0)
    else:
        if not isinstance(parameters, dict) or any(isinstance(v, dict)
                                                   for v in parameters.values()):
            raise ValueError(f"{where}: rope_parameters={parameters!r} is not supported (one "
                             "dict with rope_theta and rope_type is; per-layer-type rotary "
                             "settings are not)")
        theta = _get(parameters, "rope_theta", _get(config, "rope_theta", 10000.0))
        top = config.get("rope_theta")
        if top is not None and float(top) != float(theta):
            raise ValueError(f"{where}: config.json gives rope_theta={top!r} and "
                             f"rope_parameters.rope_theta={theta!r}; they must agree")
        if parameters.get("partial_rotary_factor", 1.0) not in (1.0, 1):
            raise ValueError(f"{where}: rope_parameters.partial_rotary_factor="
                             f"{parameters['partial_rotary_factor']!r} is not supported "
                             "(supported: 1.0)")
        scaling = parameters
    key = "rope_scaling" if parameters is None else "rope_parameters"
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        return float(theta), ["linear", float(scaling["factor"])]
    if kind == "llama3":
        return float(theta), ["llama3", float(scaling["factor"]),
                              float(scaling["low_freq_factor"]),
                              float(scaling["high_freq_factor"]),
                              float(scaling["original_max_position_embeddings"])]
    raise ValueError(f"{where}: {key} type {kind!r} is not supported (default, linear, llama3)")


def decoder_options(config, folder, architecture) -> dict[str, Any]:
    _require(config, architecture, hidden_act=("silu",), mlp_bias=(False,),
             partial_rotary_factor=(1.0, 1))
    if config.get("use_sliding_window"):
        raise ValueError(f"{architecture}: use_sliding_window=True is not supported")
    heads = _get(config, "num_attention_heads", 32)
    bias = bool(config.get("attention_bias", False))
    qkv_bias, o_bias = bias, bias
    if architecture == "Qwen2ForCausalLM":  # Qwen2 always has q/k/v biases, never an o bias
        qkv_bias, o_bias = True, False
    window = config.get("sliding_window") if architecture == "MistralForCausalLM" else None
    rope_theta, rope_scaling = _rope(config, architecture)
    return dict(vocab_size=_get(config, "vocab_size", 32000),
                hidden_size=_get(config, "hidden_size", 4096),
                intermediate_size=_get(config, "intermediate_size", 11008),
                num_hidden_layers=_get(config, "num_hidden_layers", 32),
                num_attention_heads=heads,
                num_key_value_heads=_get(config, "num_key_value_heads", heads),
                head_dim=config.get("head_dim"),
                rms_norm_eps=_get(config, "rms_norm_eps", 1e-6),
                rope_theta=rope_theta, rope_scaling=rope_scaling,
                qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=architecture == "Qwen3ForCausalLM",
                sliding_window=window,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


@dataclass(frozen=True)
class Family:
    """How one architecture loads: the zoo model, its options and the tensor-name rule."""

    zoo_name: str
    options: Callable[[dict, Any], dict[str, Any]]
    targets: Callable[[str, dict], list[Target]]
    ignored: tuple[str, ...] = ()  # buffers some exports include (regular expressions)


_DECODER_IGNORED = (r".*rotary_emb\.inv_freq",)


def _decoder(architecture):
    return Family("llama", lambda c, f: decoder_options(c, f, architecture), hf_path,
                  _DECODER_IGNORED)


ARCHITECTURES: dict[str, Family] = {
    "ViTForImageClassification": Family("vit", vit_options, hf_path),
    "BertForSequenceClassification": Family("bert", bert_options, hf_path,
                                            (r"bert\.embeddings\.position_ids",)),
    "LlamaForCausalLM": _decoder("LlamaForCausalLM"),
    "Qwen2ForCausalLM": _decoder("Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": _decoder("Qwen3ForCausalLM"),
    "MistralForCausalLM": _decoder("MistralForCausalLM"),
}
TIMM_VIT = Family("vit", timm_vit_options, timm_path)


def family_for(config: dict, folder) -> tuple[str, Family]:
    """(architecture name, `Family`) from ``config["architectures"]`` or timm's
    ``architecture``; an unknown one is an error naming it and the supported ones."""
    supported = f"{', '.join(ARCHITECTURES)} and timm vit_*"
    if "architectures" in config:
        names = config.get("architectures") or []
        known = [n for n in names if n in ARCHITECTURES]
        if not known:
            raise ValueError(f"{folder}: architecture {', '.join(map(str, names)) or '(none)'} "
                             f"is not supported; jxai.load_pretrained loads {supported}")
        return known[0], ARCHITECTURES[known[0]]
    if "architecture" in config:
        name = str(config["architecture"])
        if not name.startswith("vit_"):
            raise ValueError(f"{folder}: timm architecture {name!r} is not supported; "
                             f"jxai.load_pretrained loads {supported}")
        return name, TIMM_VIT
    raise ValueError(f"{folder}/config.json names no architecture ('architectures' of "
                     f"transformers or 'architecture' of timm); jxai.load_pretrained loads "
                     f"{supported}")
