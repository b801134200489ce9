"""Cost of the gradient-family methods relative to one gradient, and IG's memory bound.

    python benchmarks/bench_methods.py                    # VGG16 224x224, batch 8, m = 4
    python benchmarks/bench_methods.py --size 64 --repeats 3 --steps 2   # quick check

Targets of issue 3 (CPU, ratios to one jxai input × gradient in the same run):

* Grad-CAM <= 1.1x (only the head after the layer is back-propagated);
* Integrated Gradients with m steps and SmoothGrad with m samples <= 1.1 m;
* peak memory of IG with 256 steps at ``batch_size=16`` within 1.5x that of 16 gradients.

Timing: every method is compiled and run once (warm-up), then ``--repeats`` rounds run every
method in turn (interleaved, so drifting load on a shared machine hits all alike); medians are
reported. Memory: XLA's compiled memory analysis (``jax.jit(f).lower(...).compile()
.memory_analysis()``) of the same functions, so nothing runs: temporaries + arguments + outputs.
"16 gradients" is 16 vmapped gradients of the batch, summed (IG with 16 steps in one chunk).
Compiled FLOPs (``cost_analysis``) show what each method back-propagates (a loop body is
counted once, so for chunked IG the figure is one chunk's).

The model is VGG16 (13 convolutions with ReLU modules, 5 max pools, dense 4096-4096-1000) with
random Glorot weights; the input is N(0, 1). Results: benchmarks/README_methods.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import flax.linen as nn
import jax

import jxai
from jxai import layers
from jxai._targets import parse_target

VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


class VGG16(nn.Module):
    """VGG16 with Keras layer names; ReLUs are `jxai.layers.Activation` modules."""

    classes: int = 1000

    @nn.compact
    def __call__(self, x):
        for block, n_convs, filters in VGG16_BLOCKS:
            for i in range(1, n_convs + 1):
                x = nn.Conv(filters, (3, 3), padding="SAME", name=f"block{block}_conv{i}")(x)
                x = layers.Activation("relu", name=f"block{block}_conv{i}_relu")(x)
            x = layers.MaxPool((2, 2), name=f"block{block}_pool")(x)
        x = x.reshape(x.shape[0], -1)
        for name in ("fc1", "fc2"):
            x = layers.Activation("relu", name=f"{name}_relu")(nn.Dense(4096, name=name)(x))
        return nn.Dense(self.classes, name="predictions")(x)


def compiled(network, x, method, **params):
    """The jitted function jxai.explain runs for ``method`` (target "max"), for memory analysis."""
    fn = jxai.get_method(method).fn
    target, _ = parse_target("max", x.shape[0])

    def run(variables, inputs):
        ctx = jxai.Context(jxai.Network(network.module, variables), tuple(inputs.shape),
                           inputs.dtype, jax.random.PRNGKey(0))
        return fn(ctx, inputs, target, **params)

    return jax.jit(run).lower(network.variables, x).compile()


def memory(compiled_fn) -> dict:
    analysis = compiled_fn.memory_analysis()
    temp = int(analysis.temp_size_in_bytes)
    total = temp + int(analysis.argument_size_in_bytes) + int(analysis.output_size_in_bytes)
    cost = compiled_fn.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"temp_MiB": temp / 2**20, "peak_MiB": total / 2**20,
            "GFLOP": float(cost.get("flops", float("nan"))) / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=4, help="m: IG steps, SmoothGrad samples")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=256)
    parser.add_argument("--memory-only", action="store_true", help="skip the timing")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    module = VGG16()
    x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, args.size, args.size, 3))
    network = jxai.Network(module, module.init(jax.random.PRNGKey(0), x[:1]))
    m = args.steps
    # Explicit targets (the argmax classes), as in bench_libraries.py. With target="max" a
    # wrapper first runs one forward pass on the clean input to fix the class along the path or
    # over the noise; the last row shows that cost.
    target = jax.numpy.argmax(network(x), axis=1)
    methods = {
        "input_t_gradient": dict(method="input_t_gradient", target=target),
        "grad_cam": dict(method="grad_cam", target=target),
        f"integrated_gradients (m={m})": dict(method="integrated_gradients", steps=m,
                                             batch_size=m, target=target),
        f"smoothgrad (m={m})": dict(method="smoothgrad", n=m, batch_size=m, target=target),
        f"integrated_gradients (m={m}), target='max'": dict(
            method="integrated_gradients", steps=m, batch_size=m),
    }
    rows = timing(network, x, methods, args) if not args.memory_only else []
    analyses = memory_table(network, x, args)
    sixteen = analyses["16 gradients (IG 16 steps, one chunk)"]["peak_MiB"]
    chunked = analyses[f"IG {args.memory_steps} steps, batch_size=16"]["peak_MiB"]
    print(f"\nIG {args.memory_steps} steps at batch_size=16 / 16 gradients, peak memory: "
          f"{chunked / sixteen:.3f} (goal <= 1.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), machine=platform.platform(), jax=jax.__version__,
                           timing=rows, memory=analyses, memory_ratio=chunked / sixteen), f,
                      indent=1)


def timing(network, x, methods, args):
    m = args.steps
    first = {}
    for name, params in methods.items():
        start = time.perf_counter()
        jax.block_until_ready(jxai.explain(network, x, **params))
        first[name] = time.perf_counter() - start
    times = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, params in methods.items():
            start = time.perf_counter()
            jax.block_until_ready(jxai.explain(network, x, **params))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["input_t_gradient"])
    rows = []
    print(f"VGG16 {args.size}x{args.size}, batch {args.batch}, {jax.devices()[0].platform}, "
          f"{args.repeats} interleaved rounds, m = {m}")
    print(f"{'method':44s} {'first call s':>12s} {'median s':>9s} {'ratio':>7s} {'goal':>8s}")
    targets = {"input_t_gradient": 1.0, "grad_cam": 1.1}
    for name in methods:
        median = statistics.median(times[name])
        target = targets.get(name, 1.1 * m)
        rows.append(dict(method=name, first_s=first[name], median_s=median, ratio=median / base,
                         target=target, times=times[name]))
        print(f"{name:44s} {first[name]:12.2f} {median:9.3f} {median / base:7.2f} "
              f"{'<= ' + format(target, '.1f'):>8s}", flush=True)
    return rows


def memory_table(network, x, args):
    steps = args.memory_steps
    analyses = {
        "1 gradient": memory(compiled(network, x, "gradient")),
        "16 gradients (IG 16 steps, one chunk)": memory(
            compiled(network, x, "integrated_gradients", steps=16, batch_size=None)),
        f"IG {steps} steps, batch_size=16": memory(
            compiled(network, x, "integrated_gradients", steps=steps, batch_size=16)),
        "grad_cam": memory(compiled(network, x, "grad_cam")),
        "forward only (occlusion, 1 window)": memory(
            compiled(network, x, "occlusion", window=args.size, batch_size=1)),
    }
    print(f"\n{'compiled function':40s} {'temp MiB':>9s} {'peak MiB':>9s} {'GFLOP':>9s}")
    for name, row in analyses.items():
        print(f"{name:40s} {row['temp_MiB']:9.1f} {row['peak_MiB']:9.1f} {row['GFLOP']:9.1f}",
              flush=True)
    return analyses


if __name__ == "__main__":
    main()
