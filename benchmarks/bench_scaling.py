"""How jxai's batch throughput scales with batch size and image size, and its memory per item.

    python benchmarks/bench_scaling.py                          # U-Net, gradient + LRP-ε
    python benchmarks/bench_scaling.py --model vgg16 --sizes 112,224 --batches 1,8,32
    python benchmarks/bench_scaling.py --pipeline 512           # + explain_dataset on .npy rows

For every (method, batch, image size) the explanation step that ``jxai explain`` compiles (the
batch-sharded jit around `jxai.explain`, `jxai.batch._explain_step`) is compiled once; XLA's
``memory_analysis()`` gives the bytes the program needs (arguments, outputs, temporaries;
divided by the batch: memory per item), and the median of ``--repeats`` timed calls after a
warm-up gives images/s. Points whose estimated memory exceeds ``--max-gb`` are skipped, not run.

``--pipeline N`` also streams N rows of an ``.npy`` file through `jxai.explain_dataset` (reader
threads, padding, device transfer, results back to numpy) at the largest batch that fits, to show
what the pipeline costs on top of the compiled step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_libraries import flax_model, jxai_params, random_weights  # noqa: E402

import jxai  # noqa: E402
from jxai import batch as jbatch  # noqa: E402
from jxai import sharding  # noqa: E402


def network_at(model: str, size: int):
    """The benchmark model with its input resized to ``size``×``size`` (same weights layout)."""
    import jax.numpy as jnp

    module, shape = flax_model(model)
    if model == "unet":
        from jxai.models import get_module

        module, shape, _ = get_module("unet_explain", input_shape=(size, size, 3))
    elif size != shape[0]:
        raise ValueError("VGG16's dense head fixes its input at 224×224; use --model unet to "
                         "sweep image sizes")
    params = random_weights(model) if model == "vgg16" else None
    if params is None:
        variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    else:
        variables = {"params": jax.tree.map(jnp.asarray, params)}
    return jxai.Network(module, variables, {"name": model, "input_shape": tuple(shape)})


def measure(network, model, method, batch, repeats, max_bytes):
    mesh = sharding.batch_mesh()
    padded = sharding.padded_batch_size(batch, mesh)
    params = jxai_params(model, method)
    step = jbatch._explain_step(network, method, "max", params, mesh, stochastic=False,
                                labelled=False, batch=padded)
    variables = jax.device_put(network.variables, sharding.replicated(mesh))
    x_spec = jax.ShapeDtypeStruct((padded, *network.input_shape), np.float32)
    start = time.perf_counter()
    compiled = step.lower(variables, x_spec).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    total = None
    if memory is not None:
        total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                 + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
        # the analysis is of one device's program: its rows, and its copy of the weights
        params_bytes = sum(a.nbytes for a in jax.tree.leaves(network.variables))
        per_item = (total - params_bytes) / (padded // sharding.local_device_count(mesh))
    else:
        per_item = None
    row = {"method": method, "batch": batch, "padded": padded, "size": network.input_shape[0],
           "compile_s": compile_s, "program_bytes": total, "bytes_per_item": per_item}
    if total is not None and total > max_bytes:
        row["skipped"] = f"needs {total / 2**30:.1f} GiB > --max-gb"
        return row
    x = sharding.put_batch(
        np.random.default_rng(0).uniform(0, 1, (padded, *network.input_shape))
        .astype(np.float32), sharding.batch_sharding(mesh))
    jax.block_until_ready(compiled(variables, x))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(variables, x))
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    row.update(median_s=median, images_per_s=batch / median)  # padded rows are not images
    return row


def pipeline(network, method, n, batch, model):
    """items/s of explain_dataset over n rows of an .npy file (reading and writing back)."""
    shape = network.input_shape
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "rows.npy")
        rows = np.lib.format.open_memmap(path, "w+", np.float32, (n, *shape))
        rows[:] = np.random.default_rng(0).uniform(0, 1, (n, *shape)).astype(np.float32)
        rows.flush()
        del rows
        params = jxai_params(model, method)
        # warm-up: compile on a batch's worth
        for _ in jbatch.explain_dataset(network, path, method, batch_size=batch, **params):
            break
        start = time.perf_counter()
        count = sum(r.ok for r in jbatch.explain_dataset(network, path, method,
                                                             batch_size=batch, **params))
        elapsed = time.perf_counter() - start
    return {"method": method, "batch": batch, "size": shape[0], "items": count,
            "pipeline_s": elapsed, "pipeline_items_per_s": count / elapsed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet", choices=("unet", "vgg16"))
    parser.add_argument("--methods", default="gradient,lrp.epsilon")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--batch-size-image", type=int, default=64,
                        help="image size for the batch sweep (default 64)")
    parser.add_argument("--sizes", default="64,128,256,512", help="image sizes to sweep")
    parser.add_argument("--size-batch", type=int, default=4, help="batch for the size sweep")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=6.0)
    parser.add_argument("--pipeline", type=int, default=0, help="rows for the pipeline run")
    parser.add_argument("--pipeline-batch", type=int, default=16,
                        help="batch of the pipeline run (default 16: many steps, so filling and "
                             "draining the queues is a small part of the run)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--cpu-devices", default="auto",
                        help="XLA devices to split the CPU into, as `jxai explain` does "
                             "(jxai.use_cpu_cores; default: one per core); 1 = one device")
    args = parser.parse_args(argv)
    jxai.use_cpu_cores(args.cpu_devices if args.cpu_devices == "auto" else int(args.cpu_devices))
    methods = args.methods.split(",")
    max_bytes = args.max_gb * 2**30
    device = f"{jax.devices()[0].device_kind} × {len(jax.devices())}"
    print(f"device: {device}; jax {jax.__version__}; model {args.model}", file=sys.stderr)
    rows = []
    image = args.batch_size_image if args.model == "unet" else 224
    network = network_at(args.model, image)
    for method in methods:
        for b in (int(v) for v in args.batches.split(",")):
            rows.append({"sweep": "batch", **measure(network, args.model, method, b,
                                                     args.repeats, max_bytes)})
            print(rows[-1], file=sys.stderr)
    if args.model == "unet":
        for size in (int(v) for v in args.sizes.split(",")):
            net = network_at(args.model, size)
            for method in methods:
                rows.append({"sweep": "size", **measure(net, args.model, method,
                                                        args.size_batch, args.repeats,
                                                        max_bytes)})
                print(rows[-1], file=sys.stderr)
    pipe = []
    if args.pipeline:
        for method in methods:
            pipe.append(pipeline(network, method, args.pipeline, args.pipeline_batch,
                                 args.model))
            print(pipe[-1], file=sys.stderr)

    print(f"\n{args.model} on {device}; medians of {args.repeats} calls after warm-up\n")
    print("| sweep | method | batch | image | images/s | median [s] | MiB per item | compile [s] |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mib = f"{r['bytes_per_item'] / 2**20:.1f}" if r["bytes_per_item"] else "-"
        if r["padded"] != r["batch"]:  # rounded up to the device count; extra rows wasted
            r = dict(r, batch=f"{r['batch']} (run as {r['padded']})")
        if "skipped" in r:
            print(f"| {r['sweep']} | {r['method']} | {r['batch']} | {r['size']} | skipped "
                  f"({r['skipped']}) | - | {mib} | {r['compile_s']:.1f} |")
        else:
            print(f"| {r['sweep']} | {r['method']} | {r['batch']} | {r['size']} | "
                  f"{r['images_per_s']:.2f} | {r['median_s']:.3f} | {mib} | "
                  f"{r['compile_s']:.1f} |")
    for p in pipe:
        print(f"\npipeline ({p['method']}, batch {p['batch']}, {p['items']} rows from .npy): "
              f"{p['pipeline_items_per_s']:.2f} items/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "rows": rows, "pipeline": pipe}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
