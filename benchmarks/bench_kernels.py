"""XLA:CPU's two kernel libraries, YNNPACK and Eigen, on every network jxai ships.

    python benchmarks/bench_kernels.py                          # the default table, one device
    python benchmarks/bench_kernels.py --models unet,vgg7 --batches 1,4 --methods gradient
    python benchmarks/bench_kernels.py --cpu-devices 2          # the per-core split

Every row is `jxai.explain` called as a user calls it (eager, the per-sample loop on), compiled
once per library in one process (`jxai.use_cpu_kernels`), then timed ``--repeats`` times with
the libraries alternating, so that both see the same machine load; the table gives the medians,
their ratio, the network's narrow share (`jxai._schedule.convolutions`) and what ``"auto"``
picks. The question it answers is whether `jxai.cpu.kernels` chooses the faster library.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def network(name: str):
    """A zoo model (seed architecture, random weights) or the bench's VGG16 / U-Net."""
    import jax.numpy as jnp
    from bench_libraries import flax_model, random_weights

    import jxai

    if name in ("vgg16", "unet"):
        module, shape = flax_model(name)
        params = {k: {n: jnp.asarray(v) for n, v in p.items()}
                  for k, p in random_weights(name).items()}
        return jxai.Network(module, {"params": params}, {"name": name, "input_shape": shape})
    return jxai.models.get(name, pretrained=False, key=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="unet,vgg16,chest_xray,vgg7,steel_cam,mnist1d_cnn,"
                                            "clever_hans_cnn,tabular_mlp")
    parser.add_argument("--methods", default="gradient,lrp.epsilon")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu-devices", type=int, default=1)
    args = parser.parse_args(argv)

    import jax

    import jxai
    from jxai import _schedule, cpu

    jxai.use_cpu_cores(args.cpu_devices)
    print(f"host: {cpu.usable_cores()} cores, {len(jax.devices())} CPU device(s), "
          f"jax {jax.__version__}")
    print("| model | narrow share | auto | method | batch | YNNPACK [ms] | Eigen [ms] "
          "| YNNPACK / Eigen |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {"tabular_mlp": 4096, "mnist1d_cnn": 64}  # tiny networks: a realistic batch
    for name in args.models.split(","):
        net = network(name)
        for method in args.methods.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                batch = rows.get(name, batch)
                x = jax.random.uniform(jax.random.PRNGKey(0), (batch, *net.input_shape))
                share = _schedule.convolutions(net, x)
                jxai.use_cpu_kernels("auto")
                auto = cpu.kernels(share)
                times = {"ynnpack": [], "eigen": []}
                for kernels in times:  # compile and warm up
                    jxai.use_cpu_kernels(kernels)
                    jxai.explain(net, x, method).block_until_ready()
                for _ in range(args.repeats):
                    for kernels, spent in times.items():
                        jxai.use_cpu_kernels(kernels)
                        start = time.perf_counter()
                        jxai.explain(net, x, method).block_until_ready()
                        spent.append(1000 * (time.perf_counter() - start))
                ynn, eig = (statistics.median(times[k]) for k in ("ynnpack", "eigen"))
                shown = "—" if share is None else f"{share:.2f}"
                print(f"| {name} | {shown} | {auto} | {method} | {batch} | {ynn:.1f} | {eig:.1f} "
                      f"| {ynn / eig:.2f} |", flush=True)
                if name in rows:
                    break


if __name__ == "__main__":
    main()
