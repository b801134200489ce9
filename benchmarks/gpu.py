"""The benchmark table on a GPU/TPU: every method on VGG16 and the U-Net, batch and size sweeps.

    python benchmarks/gpu.py                    # -> benchmarks/results/accelerator_<device>.md
    python benchmarks/gpu.py --out $OUT --quick    # fewer points (a short lease)

Run it on a machine with an accelerator and a CUDA (or TPU) jaxlib; it refuses to run on CPU
unless ``--allow-cpu`` is given (for a dry run). The batch is sharded over every local device
(`jxai.sharding`), exactly as ``jxai explain`` does. Each point is compiled once, XLA's
``memory_analysis()`` gives the memory per item, and the median of ``--repeats`` calls after a
warm-up gives images/s. The device name, count, jax version and the peak memory the allocator saw
(``device.memory_stats()``) are recorded with the results.

The other libraries are not run here: the project's TensorFlow and torch environments are
CPU-only builds; compare them on CPU with ``bench_libraries.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _worker import METHODS  # noqa: E402
from bench_scaling import measure, network_at, pipeline  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer batches and sizes")
    parser.add_argument("--max-gb", type=float, default=None,
                        help="skip points needing more (default: 80%% of device memory)")
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long dry run of every code path (tiny sizes)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    if device.platform == "cpu" and not args.allow_cpu:
        print("gpu.py: no accelerator found (jax.devices() is CPU); run bench_libraries.py for "
              "CPU numbers, or pass --allow-cpu for a dry run", file=sys.stderr)
        return 2
    stats = device.memory_stats() or {}
    capacity = stats.get("bytes_limit")
    max_bytes = (args.max_gb * 2**30 if args.max_gb
                 else 0.8 * capacity if capacity else 16 * 2**30)
    name = f"{device.device_kind} × {len(jax.local_devices())}"
    print(f"device: {name}; jax {jax.__version__}", file=sys.stderr)
    table_batches = (1, 32) if args.quick else (1, 16, 64)
    sweep_batches = (1, 8, 64, 256) if args.quick else (1, 2, 4, 8, 16, 32, 64, 128, 256)
    sizes = (128, 256, 512) if args.quick else (64, 128, 256, 512, 1024)
    models, methods, image, items = ("vgg16", "unet"), METHODS, 256, 2048
    if args.smoke:
        table_batches, sweep_batches, sizes = (1,), (1, 2), (32, 64)
        models, methods, image, items = ("unet",), ("gradient", "grad_cam"), 64, 8
        args.repeats = 1

    rows = []
    started = time.perf_counter()
    for model in models:
        network = network_at(model, 224 if model == "vgg16" else image)
        for method in methods:
            for b in table_batches:
                row = measure(network, model, method, b, args.repeats, max_bytes)
                rows.append({"table": "methods", "model": model, **row})
                print(rows[-1], file=sys.stderr)
    unet = network_at("unet", image)
    for method in methods[:2]:
        for b in sweep_batches:
            rows.append({"table": "batch", "model": "unet",
                         **measure(unet, "unet", method, b, args.repeats, max_bytes)})
            print(rows[-1], file=sys.stderr)
        for size in sizes:
            rows.append({"table": "size", "model": "unet",
                         **measure(network_at("unet", size), "unet", method, 8, args.repeats,
                                   max_bytes)})
            print(rows[-1], file=sys.stderr)
    pipe = [pipeline(unet, method, items // 4 if args.quick else items,
                     min(64, items // 4), "unet") for method in methods[:2]]
    peak = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices())

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "accelerator_" + device.device_kind.replace(" ", "_"))
    lines = [f"# jxai on {name}", "",
             f"jax {jax.__version__}; medians of {args.repeats} calls after warm-up; total "
             f"{time.perf_counter() - started:.0f} s; peak device memory "
             f"{peak / 2**30:.1f} GiB", "",
             "| table | model | method | batch | image | images/s | median [ms] | MiB/item |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mib = f"{r['bytes_per_item'] / 2**20:.1f}" if r.get("bytes_per_item") else "-"
        speed = (f"{r['images_per_s']:.1f} | {r['median_s'] * 1e3:.2f}" if "median_s" in r
                 else f"skipped | {r.get('skipped', '')}")
        lines.append(f"| {r['table']} | {r['model']} | {r['method']} | {r['batch']} | "
                     f"{r['size']} | {speed} | {mib} |")
    for p in pipe:
        lines.append(f"\npipeline (explain_dataset over {p['items']} .npy rows, batch "
                     f"{p['batch']}, {p['method']}): {p['pipeline_items_per_s']:.1f} items/s")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump({"device": name, "jax": jax.__version__, "peak_bytes": peak, "rows": rows,
                   "pipeline": pipe}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
