"""Model evaluations per second of jxai's perturbation methods against Captum doing the same work.

    python benchmarks/bench_perturbation.py                 # jxai here, Captum in the torch venv
    python benchmarks/bench_perturbation.py --repeats 5 --torch-python /work/venvs/torch/bin/python

The work: ``B`` rows of the zoo's tabular MLP (37 features) and MNIST-1D CNN (40 samples, full
size: 60,426 parameters), every feature its own group, baseline 0, the first output class.
``kernel_shap`` with ``n_samples`` coalitions and ``shapley_sampling`` with ``P`` orderings are
timed in jxai (compiled once, then the median of ``--repeats`` calls) and Captum's ``KernelShap``
/ ``ShapleyValueSampling`` on the same architecture in torch (same CPU, ``perturbations_per_eval``
= 64, median of the same number of calls); ``rise`` (no Captum counterpart) in jxai only. A model
evaluation is one row through the network: KernelSHAP ``B * n_samples`` (jxai adds 2 per row for
the empty and full coalitions, not counted), sampling ``B * (P * G + 1)``, RISE ``B * n_masks``.
The torch side runs in a separate venv (``--torch-python``) through a subprocess of this file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROWS = 16
KERNEL_SAMPLES = 512
PERMUTATIONS = 10
RISE_MASKS = 2000
MODELS = {"tabular_mlp": (37,), "mnist1d_cnn": (40, 1)}


def evaluations(method: str, groups: int) -> int:
    if method == "kernel_shap":
        return ROWS * KERNEL_SAMPLES
    if method == "shapley_sampling":
        return ROWS * (PERMUTATIONS * groups + 1)
    return ROWS * RISE_MASKS


def median_seconds(call, repeats: int) -> float:
    call()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# jxai
# --------------------------------------------------------------------------------------------


def run_jxai(repeats: int) -> dict:
    import jax
    import numpy as np

    import jxai

    results = {}
    for name, shape in MODELS.items():
        network = jxai.models.get(name, pretrained=False)
        x = np.random.default_rng(0).uniform(size=(ROWS, *shape)).astype(np.float32)
        groups = int(np.prod(shape))
        calls = {
            "kernel_shap": dict(n_samples=KERNEL_SAMPLES),
            "shapley_sampling": dict(n_permutations=PERMUTATIONS),
        }
        if name == "mnist1d_cnn":
            calls["rise"] = dict(n_masks=RISE_MASKS)
        for method, params in calls.items():
            def call(method=method, params=params):
                jax.block_until_ready(jxai.explain(network, x, method, target=0, **params))

            seconds = median_seconds(call, repeats)
            results[f"{name}/{method}"] = (seconds, evaluations(method, groups))
    return results


# --------------------------------------------------------------------------------------------
# Captum (run in the torch venv)
# --------------------------------------------------------------------------------------------


def run_captum(repeats: int) -> dict:
    import numpy as np
    import torch
    from captum.attr import KernelShap, ShapleyValueSampling
    from torch import nn

    torch.manual_seed(0)

    class MNIST1D(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv1d(1, 32, 5, padding=2), nn.Conv1d(32, 64, 3, padding=1)
            self.c3 = nn.Conv1d(64, 64, 3, padding=1)
            self.d1, self.d2 = nn.Linear(640, 64), nn.Linear(64, 10)

        def forward(self, x):  # (B, 40, 1), channels last as in jxai
            h = x.transpose(1, 2)
            h = nn.functional.max_pool1d(torch.relu(self.c1(h)), 2)
            h = nn.functional.max_pool1d(torch.relu(self.c2(h)), 2)
            h = torch.relu(self.c3(h)).transpose(1, 2).reshape(x.shape[0], -1)
            return self.d2(torch.relu(self.d1(h)))

    layers = [nn.Linear(37, 10), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(10, 10), nn.ReLU()]
    models = {"tabular_mlp": nn.Sequential(*layers, nn.Linear(10, 1)).eval(),
              "mnist1d_cnn": MNIST1D().eval()}
    results = {}
    for name, shape in MODELS.items():
        model = models[name]
        x = torch.tensor(np.random.default_rng(0).uniform(size=(ROWS, *shape)),
                         dtype=torch.float32)
        groups = int(np.prod(shape))
        mask = torch.arange(groups).reshape(1, *shape)

        def kernel(model=model, x=x, mask=mask):
            with torch.no_grad():
                KernelShap(model).attribute(x, baselines=0.0, target=0, feature_mask=mask,
                                            n_samples=KERNEL_SAMPLES, perturbations_per_eval=64)

        def sampling(model=model, x=x, mask=mask):
            with torch.no_grad():
                ShapleyValueSampling(model).attribute(
                    x, baselines=0.0, target=0, feature_mask=mask, n_samples=PERMUTATIONS,
                    perturbations_per_eval=64)

        for method, call in (("kernel_shap", kernel), ("shapley_sampling", sampling)):
            results[f"{name}/{method}"] = (median_seconds(call, repeats),
                                           evaluations(method, groups))
    return results


# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--torch-python", default=os.environ.get(
        "TORCH_PYTHON", "/work/venvs/torch/bin/python"))
    parser.add_argument("--captum", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.captum:
        print(json.dumps(run_captum(args.repeats)))
        return
    ours = run_jxai(args.repeats)
    try:
        output = subprocess.run([args.torch_python, __file__, "--captum", "--repeats",
                                 str(args.repeats)], check=True, capture_output=True,
                                text=True).stdout
        theirs = json.loads(output.strip().splitlines()[-1])
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"Captum side not run ({error}); jxai numbers only", file=sys.stderr)
        theirs = {}
    print("| model / method | evaluations | jxai s | jxai evals/s | Captum s | Captum evals/s "
          "| ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key, (seconds, count) in ours.items():
        row = f"| {key} | {count:,} | {seconds:.3f} | {count / seconds:,.0f} |"
        if key in theirs:
            other, _ = theirs[key]
            row += f" {other:.3f} | {count / other:,.0f} | {other / seconds:.1f}x |"
        else:
            row += " — | — | — |"
        print(row)


if __name__ == "__main__":
    main()
