"""Pretrained transformers from safetensors folders, without PyTorch (`jxai.load_pretrained`).

    net = jxai.load_pretrained("vit-base-patch16-224/")          # config.json + model.safetensors
    logits = net.apply(pixels)                                   # NHWC
    net = jxai.load_pretrained("Qwen2-0.5B/", dtype="float32")   # sharded bf16, cast on load
    logits = net.apply(input_ids, attention_mask=mask)           # (B, T, vocab)

Architectures: ViTForImageClassification, BertForSequenceClassification, LlamaForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM (``config["architectures"]``) and timm's
``vit_*`` (``config["architecture"]``), onto `jxai.models`' ``vit``, ``bert`` and ``llama``.
Folders saved by transformers 4.x (rotary settings in ``rope_theta`` / ``rope_scaling``) and 5.x
(in ``rope_parameters``) both load; parity fixtures of each in tests/fixtures/hf and hf5.
`files` reads the folder (the ``safetensors`` library, memory-mapped), `families` maps configs and
tensor names, `loader` checks the fit and builds the `Network`.
"""

from .families import ARCHITECTURES
from .files import is_pretrained_folder
from .loader import load_pretrained

__all__ = ["ARCHITECTURES", "is_pretrained_folder", "load_pretrained"]
