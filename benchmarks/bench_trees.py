"""TreeSHAP speed: jxai's `tree_shap` (JAX) against `shap.TreeExplainer` (its C++ code), same CPU.

    python benchmarks/bench_trees.py                       # jxai here, shap in its own venv
    python benchmarks/bench_trees.py --rounds 7 --json trees.json
    /work/venvs/shap/bin/python benchmarks/bench_trees.py --lib shap    # shap alone (JSON out)

Models (fitted in each process from fixed seeds; the two processes must fit identical trees,
which the tree checksum printed in the table shows):

* ``rf_classifier``: RandomForestClassifier(100 trees) on a 1,000 × 37 `make_classification`
  table (seed 004's shape; `tests/fixtures/shap_trees/models.py`), explaining ``predict_proba``.
* ``rf_regressor``: the seed's own model, RandomForestRegressor(random_state=1) (100 trees grown
  until pure: ~4× the leaves) on a 1,000 × 37 `make_regression` table.

Path-dependent: all 1,000 rows; interventional: 200 rows against 100 background rows. jxai's
first call (trace + compile + run) is reported apart from the medians of the later calls; shap
has no compile step. The jxai rounds are split before and after the shap process so that drift
in the machine's load falls on both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures", "shap_trees"))

import models  # noqa: E402  (the fixture's seeds and checksum)

N_ROWS, N_INTERVENTIONAL, N_BACKGROUND = 1000, 200, 100


def build(name: str):
    """(model, rows explained, background rows), deterministic."""
    from sklearn.datasets import make_regression
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    if name == "rf_classifier":
        x, y = models.tabular_classification()
        model = RandomForestClassifier(n_estimators=100, random_state=1, n_jobs=1)
    elif name == "rf_regressor":
        x, y = make_regression(n_samples=N_ROWS, n_features=37, n_informative=12, noise=1.0,
                               random_state=4)
        model = RandomForestRegressor(random_state=1, n_jobs=1)  # seed 004's forest
    else:
        raise ValueError(name)
    model.fit(x, y)
    return model, x[:N_ROWS], x[:N_BACKGROUND]


def timed(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_shap(names, rounds: int) -> dict:
    import shap

    out = {"shap": shap.__version__}
    for name in names:
        model, x, background = build(name)
        path = shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
        inter = shap.TreeExplainer(model, data=background, feature_perturbation="interventional")
        out[name] = dict(
            checksum=models.checksum(model)[:12],
            path=timed(lambda p=path, x=x: p.shap_values(x, check_additivity=False), rounds),
            interventional=timed(lambda e=inter, x=x: e.shap_values(
                x[:N_INTERVENTIONAL], check_additivity=False), max(1, rounds // 2)))
    return out


def run_jxai(names, rounds: int, results: dict | None = None) -> dict:
    import jax

    import jxai

    out = results or {"jax": jax.__version__, "devices": str(jax.devices())}
    for name in names:
        model, x, background = build(name)
        trees = jxai.trees.from_sklearn(model)
        x32 = jax.numpy.asarray(x, jax.numpy.float32)

        def path(x32=x32, trees=trees):
            jxai.trees.tree_shap_all(trees, x32)[0].block_until_ready()

        def inter(x32=x32, trees=trees, background=background):
            jxai.trees.tree_shap_all(trees, x32[:N_INTERVENTIONAL],
                                     background=background)[0].block_until_ready()

        entry = out.setdefault(name, dict(checksum=models.checksum(model)[:12], path=[],
                                          interventional=[]))
        if "path_first" not in entry:
            entry["paths"] = [list(b.shape) for b in jxai.trees.treeshap.cached_paths(trees)]
            entry["path_first"] = timed(path, 1)[0]
            entry["interventional_first"] = timed(inter, 1)[0]
        entry["path"] += timed(path, rounds)
        entry["interventional"] += timed(inter, max(1, rounds // 2))
    return out


def table(mine: dict, theirs: dict) -> str:
    lines = [
        f"jax {mine['jax']} ({mine['devices']}), shap {theirs['shap']}",
        "",
        "| model | algorithm | rows | jxai first call s | jxai median s | jxai rows/s | "
        "shap median s | shap rows/s | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in (k for k in mine if isinstance(mine[k], dict)):
        a, b = mine[name], theirs[name]
        same = "same trees" if a["checksum"] == b["checksum"] else "TREES DIFFER"
        for algo, rows in (("path", N_ROWS), ("interventional", N_INTERVENTIONAL)):
            ours, ref = statistics.median(a[algo]), statistics.median(b[algo])
            lines.append(f"| {name} ({same}) | {algo} | {rows} | {a[algo + '_first']:.2f} | "
                         f"{ours:.3f} | {rows / ours:.0f} | {ref:.3f} | {rows / ref:.0f} | "
                         f"{ref / ours:.2f}× |")
    lines.append("")
    for name in (k for k in mine if isinstance(mine[k], dict)):
        lines.append(f"{name}: path buckets (paths, width) {mine[name]['paths']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lib", choices=("both", "jxai", "shap"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="rf_classifier,rf_regressor")
    parser.add_argument("--shap-python", default="/work/venvs/shap/bin/python")
    parser.add_argument("--json", help="write every timing here")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    if args.lib == "shap":
        print(json.dumps(run_shap(names, args.rounds)))
        return
    if args.lib == "jxai":
        print(json.dumps(run_jxai(names, args.rounds)))
        return
    half = max(1, args.rounds // 2)
    mine = run_jxai(names, half)
    done = subprocess.run([args.shap_python, os.path.abspath(__file__), "--lib", "shap",
                           "--rounds", str(args.rounds), "--models", args.models],
                          check=True, capture_output=True, text=True)
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    mine = run_jxai(names, args.rounds - half, mine)
    print(table(mine, theirs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jxai": mine, "shap": theirs}, f, indent=1)


if __name__ == "__main__":
    main()
