"""LRP engine speed against its own physical floor, the input gradient, in one process.

    python benchmarks/bench_engine.py                 # VGG16 224x224, batch 8, 7 interleaved runs
    python benchmarks/bench_engine.py --size 112 --runs 5

Each method is compiled once, then timed in interleaved rounds (gradient, LRP-ε, composites,
gradient, ...) so that the machine's noise hits all of them alike; the table reports medians and
the ratio to the median input-gradient time of the same run. Weights are random (speed does not
depend on them). No weight gradient is computed by any method (see tests/test_engine.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).parent))
from bench_methods import VGG16  # noqa: E402

import jxai  # noqa: E402

METHODS = {
    "gradient": ("gradient", {}),
    "lrp.epsilon": ("lrp.epsilon", {"epsilon": 0.1}),
    "lrp.z_plus_fast": ("lrp.z_plus_fast", {}),
    "lrp.epsilon_plus_flat": ("lrp.epsilon_plus_flat", {}),
    "lrp.sequential_preset_a_flat": ("lrp.sequential_preset_a_flat", {}),
    "lrp.sequential_preset_b_flat": ("lrp.sequential_preset_b_flat", {}),
    "lrp.epsilon_gamma_box": ("lrp.epsilon_gamma_box", {"low": -3.0, "high": 3.0}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args(argv)

    module = VGG16()
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3))
    variables = jax.jit(module.init)(jax.random.PRNGKey(1), x[:1])
    network = jxai.Network(module, variables)

    calls = {}
    for name in args.methods:
        method, params = METHODS[name]
        start = time.perf_counter()
        jax.block_until_ready(jxai.explain(network, x, method, **params))
        print(f"compiled {name:<30} {time.perf_counter() - start:6.1f} s", flush=True)
        calls[name] = lambda method=method, params=params: jxai.explain(
            network, x, method, **params
        )

    times = {name: [] for name in calls}
    for _ in range(args.runs):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)

    floor = statistics.median(times["gradient"]) if "gradient" in times else None
    print(
        f"\nVGG16 {args.size}x{args.size}, batch {args.batch}, float32, {jax.devices()[0].device_kind}, "
        f"{args.runs} interleaved runs (median)"
    )
    print(f"{'method':<32}{'median s':>10}{'images/s':>10}{'x gradient':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = f"{median / floor:.2f}" if floor else "-"
        print(f"{name:<32}{median:>10.3f}{args.batch / median:>10.1f}{ratio:>12}")
    return 0


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    sys.exit(main())
