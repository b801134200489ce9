"""jxai against iNNvestigate, Zennit and Captum: same model, same weights, same batch.

    python benchmarks/bench_libraries.py                        # VGG16 and U-Net, every method
    python benchmarks/bench_libraries.py --models vgg16 --batch 4 --repeats 7

Each library runs in its own process and environment (jxai: this interpreter; iNNvestigate 2.1.2:
``/work/venvs/tf214``; Zennit and Captum: ``/work/venvs/torch``), driven over a line protocol
(`_worker.py`). The driver

1. builds the model in Flax (VGG16 224×224 with He-normal random weights, or the seed U-Net
   256×256 from `jxai.models`), exports its weights to ``.npz`` and a fixed random batch;
2. has every worker rebuild the model from those weights and checks that its forward pass
   matches jxai's (``forward max |Δ|`` in the header) — the libraries explain the same function;
3. explains the batch once per (library, method) as warm-up (graph building / compilation, the
   "first call" column) and keeps that attribution to compare with jxai's (``corr``: Pearson
   correlation; 1.000 means the same numbers, lower values come from different conventions such
   as noise, quadrature or ε, listed in benchmarks/README.md);
4. then times ``--repeats`` rounds, **interleaved** (round r runs every library and method before
   round r + 1), so drifting load on a shared machine hits all libraries alike, and reports
   medians, images/s and the ratio library time / jxai time (> 1: jxai is faster).

The targets are the argmax classes of jxai's forward pass, given explicitly to every library.
Methods: gradient, LRP-ε, iNNvestigate's ``lrp.sequential_preset_a_flat`` and Zennit's
``EpsilonPlusFlat`` (jxai runs both), Integrated Gradients with 32 steps, SmoothGrad with 32
samples, Grad-CAM (last convolution block).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _worker import IG_STEPS, METHODS, SMOOTHGRAD_SAMPLES, load_weights  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VENVS = os.environ.get("JXAI_VENVS", "/work/venvs")
LIBRARIES = {
    "jxai": ([sys.executable, os.path.join(HERE, "bench_libraries.py"), "--worker"], "jxai"),
    "innvestigate": ([os.path.join(VENVS, "tf214/bin/python"),
                      os.path.join(HERE, "run_innvestigate.py")], "innvestigate"),
    "zennit": ([os.path.join(VENVS, "torch/bin/python"), os.path.join(HERE, "run_torch.py")],
               "torch"),
    "captum": ([os.path.join(VENVS, "torch/bin/python"), os.path.join(HERE, "run_torch.py")],
               "torch"),
}
MODELS = {"vgg16": (224, 224, 3), "unet": (256, 256, 3)}
GRAD_CAM_LAYER = {"vgg16": "block5_conv3_relu", "unet": "conv2d_17_relu"}


# -- the models in Flax ------------------------------------------------------------------------
def flax_model(name: str):
    """``(module, input_shape)`` for a benchmark model name."""
    import flax.linen as nn
    from jxai.models import get_module
    from jxai.models._registry import dense, flatten
    from jxai.models.chest_xray import vgg16_features

    if name == "vgg16":
        class VGG16(nn.Module):
            """VGG16 (Simonyan & Zisserman 2015) with Keras layer names and a linear output."""

            @nn.compact
            def __call__(self, x):
                x = flatten(vgg16_features(x))
                x = dense(x, 4096, name="fc1")
                x = dense(x, 4096, name="fc2")
                return dense(x, 1000, name="predictions", activation="linear")

        return VGG16(), MODELS["vgg16"]
    if name == "unet":
        module, shape, _ = get_module("unet_explain")
        return module, shape
    raise ValueError(f"unknown benchmark model {name!r}; choose from {sorted(MODELS)}")


def random_weights(name: str, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """He-normal kernels and small biases for every layer (shapes from the Flax module)."""
    import jax
    import jax.numpy as jnp

    module, shape = flax_model(name)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    rng = np.random.default_rng(seed)
    params = {}
    for layer, p in shapes["params"].items():
        kernel = p["kernel"].shape
        fan_in = int(np.prod(kernel[:-1]))
        params[layer] = {
            "kernel": (rng.standard_normal(kernel) * np.sqrt(2.0 / fan_in)).astype(np.float32),
            "bias": np.full(p["bias"].shape, 0.01, np.float32),
        }
    return params


def network_from(name: str, params):
    import jax.numpy as jnp

    import jxai

    module, shape = flax_model(name)
    variables = {"params": {k: {n: jnp.asarray(v) for n, v in p.items()}
                            for k, p in params.items()}}
    return jxai.Network(module, variables, {"name": name, "input_shape": shape})


def jxai_params(model: str, method: str) -> dict:
    return {
        # jxai's default chunk ("auto": 1 path point / noisy copy at a time on CPU, 16 on GPU).
        "integrated_gradients": {"steps": IG_STEPS},
        "smoothgrad": {"n": SMOOTHGRAD_SAMPLES, "sigma": 0.15},
        "grad_cam": {"layer": GRAD_CAM_LAYER[model], "resize": False},
    }.get(method, {})


# -- the jxai worker ---------------------------------------------------------------------------
def jxai_worker() -> None:
    import jax
    from _worker import serve

    import jxai

    # One XLA device per core, as `jxai explain` does (jxai.cpu); the variant
    # 'jxai+--xla_force_host_platform_device_count=1' keeps one device.
    cores = jxai.use_cpu_cores()
    state = {}

    def setup(model, weights, inputs, labels, forward_out):
        net = network_from(model, load_weights(weights))
        x = np.load(inputs)
        np.save(forward_out, np.asarray(net.apply(x)))
        state.update(net=net, model=model, x=x, labels=np.load(labels).astype(np.int32))
        return {"library": f"jxai {jxai.__version__} / jax {jax.__version__} "
                           f"({jax.devices()[0].platform}, {cores} CPU device(s))"}

    def run(method, library="jxai"):
        out = jxai.explain(state["net"], state["x"], method, target=state["labels"],
                           **jxai_params(state["model"], method))
        return np.asarray(jax.block_until_ready(out))

    serve(setup, run)


# -- the driver --------------------------------------------------------------------------------
class Worker:
    def __init__(self, library: str):
        command, _ = LIBRARIES[library]
        if not os.path.exists(command[0]):
            raise FileNotFoundError(f"{library}: interpreter {command[0]} not found")
        self.library = library
        env = dict(os.environ)
        if library.startswith("jxai+"):  # a jxai variant with extra XLA flags
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + library[5:]).strip()
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1, env=env)

    def call(self, cmd: str, **args):
        self.process.stdin.write(json.dumps({"cmd": cmd, "args": args}) + "\n")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.library} worker died (see its stderr above)")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"{self.library}: {reply['error']}")
        return reply

    def close(self):
        try:
            self.call("quit")
        except (RuntimeError, BrokenPipeError):
            pass
        self.process.wait(timeout=60)


def available(library: str, model: str, method: str) -> bool:
    """What each library offers (the workers raise NotImplementedError for the rest)."""
    if library == "innvestigate":
        return method not in ("grad_cam", "lrp.epsilon_plus_flat")
    if library == "zennit":
        return method not in ("grad_cam", "lrp.sequential_preset_a_flat")
    if library.startswith("jxai"):
        return True
    if library == "captum":
        return method in ("gradient", "integrated_gradients", "smoothgrad", "grad_cam") or (
            method == "lrp.epsilon" and model == "vgg16")
    return True


def correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def bench_model(model, args, workdir) -> list[dict]:
    shape = MODELS[model]
    weights_path = os.path.join(workdir, f"{model}_weights.npz")
    inputs_path = os.path.join(workdir, f"{model}_x{args.batch}.npy")
    labels_path = os.path.join(workdir, f"{model}_labels{args.batch}.npy")
    params = random_weights(model)
    np.savez(weights_path, **{f"{layer}/{n}": v for layer, p in params.items()
                              for n, v in p.items()})
    rng = np.random.default_rng(1)
    if model == "vgg16":  # caffe-preprocessed range
        x = rng.uniform(-120.0, 130.0, (args.batch, *shape)).astype(np.float32)
    else:
        x = rng.uniform(0.0, 1.0, (args.batch, *shape)).astype(np.float32)
    np.save(inputs_path, x)
    logits = np.asarray(network_from(model, params).apply(x))
    np.save(labels_path, logits.reshape(len(x), -1).argmax(axis=1))
    del params

    for lib in args.libraries:
        if lib.startswith("jxai+"):  # e.g. "jxai+--xla_cpu_use_onednn=true"
            LIBRARIES[lib] = (LIBRARIES["jxai"][0], lib)
    libraries = [lib for lib in args.libraries if lib in LIBRARIES]
    workers, processes = {}, {}
    for lib in libraries:  # zennit and captum share one torch process
        _, env = LIBRARIES[lib]
        if env not in processes:
            processes[env] = Worker(lib)
        workers[lib] = processes[env]
    header = {}
    reference = None
    for env, worker in processes.items():
        out = os.path.join(workdir, f"{model}_forward_{env}.npy")
        info = worker.call("setup", model=model, weights=weights_path, inputs=inputs_path,
                           labels=labels_path, forward_out=out)
        forward = np.load(out).reshape(len(x), -1)
        if reference is None:
            reference = logits.reshape(len(x), -1)
        delta = float(np.abs(forward - reference).max() / (np.abs(reference).max() or 1.0))
        header[env] = f"{info['library']}; forward max |Δ| / max |y| = {delta:.1e}"
        print(f"[{model}] {header[env]}", file=sys.stderr)

    methods = [m for m in args.methods if m in METHODS]
    pairs = [(m, lib) for m in methods for lib in libraries if available(lib, model, m)]
    saved, first = {}, {}
    for method, lib in pairs:  # warm-up: compile / build graphs, keep one attribution each
        path = os.path.join(workdir, f"{model}_{lib}_{method}.npy")
        extra = {} if lib == "innvestigate" else {"library": lib}
        start = time.perf_counter()
        workers[lib].call("run", method=method, save=path, **extra)
        first[(method, lib)] = time.perf_counter() - start
        saved[(method, lib)] = np.load(path)
        print(f"[{model}] warm-up {lib:13s} {method:30s} {first[(method, lib)]:8.2f} s",
              file=sys.stderr)
    times = {pair: [] for pair in pairs}
    for r in range(args.repeats):
        for method, lib in pairs:
            if r >= args.lib_repeats.get(lib, args.repeats):
                continue
            extra = {} if lib == "innvestigate" else {"library": lib}
            times[(method, lib)].append(workers[lib].call("run", method=method, **extra)["seconds"])
        print(f"[{model}] round {r + 1}/{args.repeats} done", file=sys.stderr)
    for worker in processes.values():
        worker.close()

    rows = []
    for method, lib in pairs:
        median = statistics.median(times[(method, lib)])
        base = statistics.median(times[(method, "jxai")]) if (method, "jxai") in times else None
        rows.append({
            "model": model, "method": method, "library": lib, "median_s": median,
            "images_per_s": len(x) / median, "ratio_to_jxai": median / base if base else None,
            "first_call_s": first[(method, lib)], "times_s": times[(method, lib)],
            "corr_with_jxai": correlation(saved[(method, lib)], saved.get((method, "jxai"),
                                                                           np.zeros(0))),
        })
    return rows, header


def print_table(rows, batch, header) -> None:
    print(f"\nbatch {batch}; medians of interleaved runs; ratio = library time / jxai time "
          "(> 1: jxai faster)")
    for model, lines in header.items():
        for line in lines.values():
            print(f"  {model}: {line}")
    print("\n| model | method | library | median [s] | runs | images/s | ratio to jxai "
          "| first call [s] | corr |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['ratio_to_jxai']:.2f}" if r["ratio_to_jxai"] else "-"
        corr = f"{r['corr_with_jxai']:.3f}" if r["corr_with_jxai"] is not None else "-"
        print(f"| {r['model']} | {r['method']} | {r['library']} | {r['median_s']:.3f} | "
              f"{len(r['times_s'])} | {r['images_per_s']:.2f} | {ratio} | "
              f"{r['first_call_s']:.1f} | {corr} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg16,unet")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--libraries", default="jxai,innvestigate,zennit,captum",
                        help="comma list; 'jxai+FLAGS' adds jxai run with extra XLA_FLAGS, "
                             "e.g. 'jxai+--xla_cpu_use_onednn=true', or on one CPU device: "
                             "'jxai+--xla_force_host_platform_device_count=1'")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lib-repeats", default="",
                        help="fewer rounds for slow libraries, e.g. 'zennit=2,captum=3' (the "
                             "table shows how many runs each median is over)")
    parser.add_argument("--workdir", default="/tmp/jxai-bench")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        jxai_worker()
        return 0
    args.models = args.models.split(",")
    args.methods = args.methods.split(",")
    args.libraries = args.libraries.split(",")
    args.lib_repeats = {k: int(v) for k, v in
                        (pair.split("=") for pair in args.lib_repeats.split(",") if pair)}
    os.makedirs(args.workdir, exist_ok=True)
    rows, header = [], {}
    for model in args.models:
        model_rows, header[model] = bench_model(model, args, args.workdir)
        rows += model_rows
    print_table(rows, args.batch, header)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "repeats": args.repeats, "header": header,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
