"""AttnLRP's faithfulness protocol on transformers: MoRF/LeRF curves and their area between.

    python benchmarks/faithfulness_transformers.py              # the table of README_transformer.md
    python benchmarks/faithfulness_transformers.py --n 16 --methods lrp.attn_lrp random

For each model and method: relevance per token (per image patch for the ViT), then
`jxai.metrics.token_perturbation` / `patch_perturbation` remove the most relevant first (MoRF)
and the least relevant first (LeRF), and ABPC = AUC(LeRF) − AUC(MoRF) on the explained logit
(higher = more faithful); mean ± standard error over the items. Models: the tiny random-weight
BERT, LLaMA-style and ViT folders of `tests/fixtures/lxt` (Hugging Face layouts, read with
`jxai.load_pretrained`; random weights, so their rows check the machinery, not a trained model)
and the two trained models of ``jxai demo --transformer``: the marker-token BERT and the
Clever Hans ViT, retrained here with the demo's sizes and seed and explained with every method
of `BERT_METHODS` / `VIT_METHODS` by the demo's protocol (a removed token becomes a filler id,
the class token kept; a removed patch the image's mean). On the fixtures inputs are drawn from a
fixed seed; a removed token becomes id 0, a removed patch the value 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jxai
from jxai.metrics import patch_perturbation, token_perturbation

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lxt"
METHODS = ("input_t_gradient", "integrated_gradients", "smoothgrad", "lrp.attn_lrp",
           "lrp.cp_lrp", "attention_rollout", "random")
# the trained demo models: every method of issue 18 §3 that applies (Grad-CAM: the ViT only)
BERT_METHODS = ("lrp.attn_lrp", "lrp.cp_lrp", "gradient", "input_t_gradient",
                "integrated_gradients", "smoothgrad", "attention_rollout", "random")
VIT_METHODS = (*BERT_METHODS[:-1], "grad_cam", "random")


def _maps(network, x, method, **options):
    if method == "random":  # the chance level: a uniform map
        return jax.random.uniform(jax.random.key(7), x.shape)
    return jxai.explain(network, x, method, **options)


def fixture_rows(n: int, length: int, methods) -> list[dict]:
    rows = []
    for family in ("bert", "llama", "vit"):
        network = jxai.load_pretrained(FIXTURES / family)
        config = json.loads((FIXTURES / family / "config.json").read_text())
        key = jax.random.key(0)
        if family == "vit":
            size = config["image_size"]
            x = jax.random.uniform(key, (n, size, size, config["num_channels"]))
        else:
            x = jax.random.randint(key, (n, length), 1, config["vocab_size"])
        for method in methods:
            options = {"resize": False} if family == "vit" and method == "attention_rollout" \
                else {}
            start = time.perf_counter()
            relevance = _maps(network, x, method, **options)
            if family == "vit":
                if relevance.ndim == 3 and relevance.shape[1:3] == x.shape[1:3]:
                    relevance = relevance[..., None] * jnp.ones_like(x)  # per pixel, no channels
                curves = patch_perturbation(network, x, relevance,
                                            patch_size=config["patch_size"])
            else:
                curves = token_perturbation(network, x, relevance, mask_token=0)
            abpc = np.asarray(curves.abpc)
            rows.append({"model": family, "method": method, "abpc": float(abpc.mean()),
                         "stderr": float(abpc.std(ddof=1) / np.sqrt(len(abpc))),
                         "seconds": time.perf_counter() - start})
            print(f"{family:6} {method:22} ABPC {rows[-1]['abpc']:+.3f} ± "
                  f"{rows[-1]['stderr']:.3f}", flush=True)
    return rows


def _row(model: str, method: str, per_item, seconds: float) -> dict:
    per = np.asarray(per_item, np.float64)
    row = {"model": model, "method": method, "abpc": float(per.mean()),
           "stderr": float(per.std(ddof=1) / np.sqrt(len(per))), "seconds": seconds}
    print(f"{model:28} {method:22} ABPC {row['abpc']:+.3f} ± {row['stderr']:.3f}", flush=True)
    return row


def trained_rows(n: int, bert_methods, vit_methods) -> list[dict]:
    """The two trained models of ``jxai demo --transformer`` (its default sizes and seed), every
    method on the same held-out items and with the demo's protocol: tokens after the class token
    become a filler id; ViT patches become the image's mean (`demo_transformer.vit_faithfulness`).
    """
    from jxai.models import clever_hans_vit as chv
    from jxai.models.clever_hans import SIZE, make_clever_hans
    from jxai.models.marker_tokens import make_marker_tokens

    from jxai import demo_transformer as demo

    rows = []
    train_set = make_marker_tokens(2000, length=16, vocab=32, seed=0)
    batch = make_marker_tokens(demo.N_HELD_OUT, length=16, vocab=32,
                               seed=10_001).take(slice(0, n))
    bert = demo.train_marker_bert(train_set, 32, 4, seed=0, log=None)
    for method in bert_methods:
        start = time.perf_counter()
        try:
            relevance = np.asarray(_maps(bert, jnp.asarray(batch.x), method, target=batch.y))
        except Exception as error:  # reported, the table goes on
            print(f"demo marker BERT: {method} skipped: {error}", flush=True)
            continue
        table, why = demo.token_faithfulness(bert, batch, {method: relevance})
        if table is None:
            print(f"demo marker BERT: {method} skipped: {why}", flush=True)
            continue
        rows.append(_row("demo marker BERT (trained)", method,
                         table["methods"][method]["per_sequence_abpc"],
                         time.perf_counter() - start))

    vit, _ = chv.train_tiny_vit(2000, 4, seed=0)
    images = make_clever_hans(demo.N_HELD_OUT, seed=10_001).take(np.arange(n))
    x = jnp.asarray(chv.standardize(images.x))
    patch = chv.VIT_CONFIG["patch_size"]
    for method in vit_methods:
        start = time.perf_counter()
        try:
            relevance = _maps(vit, x, method, target=images.y,
                              **demo.VIT_OPTIONS.get(method, {}))
            grid, _ = demo.vit_maps(relevance, patch, SIZE)
        except Exception as error:
            print(f"demo Clever Hans ViT: {method} skipped: {error}", flush=True)
            continue
        table = demo.vit_faithfulness(vit, x, images.y, {method: grid}, patch)
        rows.append(_row("demo Clever Hans ViT (trained)", method,
                         table["methods"][method]["per_image_abpc"],
                         time.perf_counter() - start))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="items per model (default 32)")
    parser.add_argument("--length", type=int, default=12, help="tokens per sequence")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="methods to run (default: METHODS on the fixtures, BERT_METHODS / "
                        "VIT_METHODS on the trained demo models)")
    parser.add_argument("--no-demo", action="store_true", help="skip the trained demo model")
    args = parser.parse_args(argv)
    rows = fixture_rows(args.n, args.length, args.methods or METHODS)
    if not args.no_demo:
        rows += trained_rows(args.n, args.methods or BERT_METHODS, args.methods or VIT_METHODS)
    print("\n| model | method | ABPC (mean ± s.e.) |\n|---|---|---:|")
    for row in rows:
        print(f"| {row['model']} | `{row['method']}` | {row['abpc']:+.3f} ± {row['stderr']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
