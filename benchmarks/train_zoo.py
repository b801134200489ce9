"""Full-accuracy training runs of the zoo on offline data (not part of CI).

    python benchmarks/train_zoo.py              # every recipe, checkpoints in ./zoo_checkpoints
    python benchmarks/train_zoo.py mnist1d_cnn --out DIR
    python benchmarks/train_zoo.py clever_hans_cnn --out models/checkpoints  # demo checkpoint

Prints one progress line per epoch and a final table of test scores; writes an orbax checkpoint
and a ``scores.json`` per recipe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jxai.models import checkpoint, recipes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(recipes.RECIPES),
                        help=f"recipes to run (default: all of {', '.join(recipes.RECIPES)})")
    parser.add_argument("--out", default="zoo_checkpoints", help="checkpoint directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table = {}
    for name in args.recipes:
        if name not in recipes.RECIPES:
            parser.error(f"unknown recipe {name!r}; known: {', '.join(recipes.RECIPES)}")
        print(f"== {name}", flush=True)
        kwargs = {"seed": args.seed}
        if args.epochs is not None:
            kwargs["epochs"] = args.epochs
        start = time.perf_counter()
        network, scores = recipes.RECIPES[name](**kwargs)
        scores["train_seconds"] = round(time.perf_counter() - start, 1)
        summary = {k: v for k, v in scores.items() if k != "history"}
        checkpoint.save(out / name, network, extra={"scores": summary})
        (out / f"{name}.scores.json").write_text(json.dumps(scores, indent=2) + "\n")
        table[name] = summary
    print("\nrecipe                  scores")
    for name, summary in table.items():
        numbers = {k: v for k, v in summary.items()
                   if "accuracy" in k or "dice" in k or k == "train_seconds"}
        print(f"{name:<23} " + "  ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
