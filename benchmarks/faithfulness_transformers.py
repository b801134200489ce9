"""AttnLRP's faithfulness protocol on transformers: MoRF/LeRF curves and their area between.

    python benchmarks/faithfulness_transformers.py              # the table of README_transformer.md
    python benchmarks/faithfulness_transformers.py --n 16 --methods lrp.attn_lrp random

For each model and method: relevance per token (per image patch for the ViT), then
`jxai.metrics.token_perturbation` / `patch_perturbation` remove the most relevant first (MoRF)
and the least relevant first (LeRF), and ABPC = AUC(LeRF) − AUC(MoRF) on the explained logit
(higher = more faithful); mean ± standard error over the items. Models: the tiny random-weight
BERT, LLaMA-style and ViT folders of `tests/fixtures/lxt` (Hugging Face layouts, read with
`jxai.load_pretrained`; random weights, so their rows check the machinery, not a trained model)
and the trained marker-token BERT of ``jxai demo --transformer`` (its table is the demo's own
``report.json``). Inputs are drawn from a fixed seed; a removed token becomes id 0, a removed
patch the value 0.
"""

from __future__ import annotations

import argparse
import json
import tempfile
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


def demo_rows() -> list[dict]:
    from jxai import demo_transformer

    with tempfile.TemporaryDirectory() as out:
        demo_transformer.main(["--out", out])
        report = json.loads((Path(out) / "report.json").read_text())
    table = (report.get("faithfulness") or {}).get("methods", {})
    rows = []
    for method, values in table.items():
        per = np.asarray(values["per_sequence_abpc"])
        rows.append({"model": "demo marker BERT (trained)", "method": method,
                     "abpc": float(per.mean()),
                     "stderr": float(per.std(ddof=1) / np.sqrt(len(per)))})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="items per model (default 32)")
    parser.add_argument("--length", type=int, default=12, help="tokens per sequence")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--no-demo", action="store_true", help="skip the trained demo model")
    args = parser.parse_args(argv)
    rows = fixture_rows(args.n, args.length, args.methods)
    if not args.no_demo:
        rows += demo_rows()
    print("\n| model | method | ABPC (mean ± s.e.) |\n|---|---|---:|")
    for row in rows:
        print(f"| {row['model']} | `{row['method']}` | {row['abpc']:+.3f} ± {row['stderr']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
