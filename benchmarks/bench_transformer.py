"""AttnLRP and CP-LRP against jxai's own gradient on transformers, and peak memory with and
without rematerialised blocks.

    python benchmarks/bench_transformer.py                       # zoo ViT, BERT, LLaMA: time
    python benchmarks/bench_transformer.py --models llama --runs 9 --batch 4
    python benchmarks/bench_transformer.py --models stock        # the stock-linen transformer
    python benchmarks/bench_transformer.py --memory              # LLaMA: length and depth sweeps
    python benchmarks/bench_transformer.py --memory --scheduler memory

Timing: random weights, float32, explicit targets (a class; for LLaMA the token 3 at the last
position), each method compiled once, then timed in interleaved rounds whose order rotates, so
that the machine's noise hits them alike; the table gives medians, minima and the ratios of the
medians to the gradient's (``jxai.explain(net, x, "gradient")``: one forward and one backward
pass, the floor of every backward-pass method) and to input × gradient's. The zoo models
(``--models vit bert llama``) are realistic small configurations (`CONFIGS`); ``stock`` is a
``--depth``-block pre-norm transformer of stock linen layers (nn.MultiHeadDotProductAttention).

Memory (``--memory``): the LLaMA-style config of `CONFIGS`, the explanation compiled inside
``jax.jit`` (``jxai.explain`` traced with the variables and ids as arguments) for the gradient
and AttnLRP, with ``remat=False``, ``True`` and ``"sqrt"`` (`jxai.models._blocks`), compiled as
``jxai.explain`` compiles them on XLA:CPU (a checkpointed model with
`jxai._xla_cpu.REMAT_OPTIONS`: without them XLA:CPU merges the recomputation back into the
forward pass). Reported: the compiled executable's ``memory_analysis()`` scratch (temp) bytes,
and the argument bytes (the weights, the same for every setting); compile only, nothing runs, so
4096 tokens fit the 2-core machine's time. A length sweep (``--lengths``, batch 1,
``--memory-depth`` layers) and a depth sweep (``--depths``, batch ``--memory-batch`` ×
``--memory-length`` tokens). ``--scheduler memory`` also starts XLA with its memory-minimising
scheduler for every compilation (checkpointed models get it anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "--scheduler" in sys.argv and "memory" in sys.argv[sys.argv.index("--scheduler") + 1:][:1]:
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SCHEDULER_FLAG}".strip()

import flax.linen as nn  # noqa: E402 - XLA_FLAGS must be set before JAX starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jxai.models as zoo  # noqa: E402

import jxai  # noqa: E402
from jxai import _xla_cpu  # noqa: E402
from jxai.composites import attn_lrp, cp_lrp  # noqa: E402
from jxai.rules import Rule  # noqa: E402


class Block(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x))
        x = x + y
        y = nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(nn.LayerNorm()(x))))
        return x + y


class Transformer(nn.Module):
    dim: int = 128
    heads: int = 4
    depth: int = 2
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.dim, name="embed")(x)
        for _ in range(self.depth):
            x = Block(self.dim, self.heads)(x)
        return nn.Dense(self.classes, name="head")(jnp.mean(x, axis=1))


# Realistic small configurations (random weights).
CONFIGS = {
    "vit": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                intermediate_size=1024, image_size=128, patch_size=16, num_labels=100),
    "bert": dict(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024, sequence_length=128, num_labels=2),
    "llama": dict(vocab_size=8000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, sequence_length=128),
}
TIMED = {
    "gradient": ("gradient", {}),
    "input_t_gradient": ("input_t_gradient", {}),
    "lrp.attn_lrp": ("lrp.attn_lrp", {}),
    "lrp.cp_lrp": ("lrp.cp_lrp", {}),
}
STOCK_EXTRA = {"lrp.attn_lrp gamma=0.05": ("lrp.attn_lrp", {"gamma": 0.05})}


class OutputGradient(Rule):
    """The plain gradient (LRP-0 in the gradient convention, LXT's choice for linear layers)."""

    gradient_rule = True

    def backward(self, layer, a, gradient):
        return layer.vjp(gradient, a)


def _is_output(layer) -> bool:
    return layer.is_output


def output_lrp0(composite):
    """``composite`` with LRP-0 (the plain gradient) on the output layer: ε there needs the
    output ``z`` for its stabiliser (``R/(z + ε)``), so the whole logit tensor (batch × length ×
    vocabulary for a language model) is computed, which the gradient never does (XLA drops the
    unused logits: the VJP of the head needs only its kernel)."""
    return dataclasses.replace(composite, rules=((_is_output, OutputGradient()),
                                                 *composite.rules),
                               name=f"{composite.name} + LRP-0 output")


VARIANTS = {
    "attn_lrp, LRP-0 output": ("lrp", {"composite": output_lrp0(attn_lrp())}),
    "cp_lrp, LRP-0 output": ("lrp", {"composite": output_lrp0(cp_lrp())}),
}


def zoo_case(name: str, batch: int, seq: int | None):
    """``(network, x, explain keyword arguments, description)`` of a zoo model."""
    config = dict(CONFIGS[name])
    if seq is not None and name != "vit":
        config["sequence_length"] = seq
    net = zoo.get(name, pretrained=False, key=1, **config)
    key = jax.random.key(0)
    if name == "vit":
        size = config["image_size"]
        x = jax.random.normal(key, (batch, size, size, 3))
        kwargs = {"target": jnp.arange(batch) % config["num_labels"]}
        tokens = (size // config["patch_size"]) ** 2 + 1
    else:
        tokens = config["sequence_length"]
        x = jax.random.randint(key, (batch, tokens), 0, config["vocab_size"])
        kwargs = ({"target": 3, "position": tokens - 1} if name == "llama"
                  else {"target": jnp.arange(batch) % 2})
    shown = {k: v for k, v in config.items() if k not in ("sequence_length",)}
    return net, x, kwargs, f"{name} {shown}, batch {batch}, {tokens} tokens"


def stock_case(args):
    module = Transformer(dim=args.dim, depth=args.depth)
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.seq or 64, 48))
    variables = jax.jit(module.init)(jax.random.PRNGKey(1), x[:1])
    kwargs = {"target": jnp.zeros((args.batch,), jnp.int32)}  # no extra forward pass
    return (jxai.Network(module, variables), x, kwargs,
            f"stock transformer dim {args.dim}, depth {args.depth}, batch {args.batch}, "
            f"seq {args.seq or 64}")


def time_methods(network, x, kwargs, methods, runs):
    """``{method: [seconds...]}``, interleaved rounds with a rotating order."""
    calls = {}
    for name, (method, params) in methods.items():
        start = time.perf_counter()
        jax.block_until_ready(jxai.explain(network, x, method, **kwargs, **params))
        print(f"  compiled {name:<26} {time.perf_counter() - start:6.1f} s", flush=True)
        calls[name] = lambda method=method, params=params: jxai.explain(
            network, x, method, **kwargs, **params)
    times = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(runs):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - start)
    return times


def compiled_costs(network, x, kwargs, methods) -> dict:
    """``{method: (flops, bytes accessed)}`` of the compiled explanation (XLA's cost analysis:
    independent of the machine's load)."""
    module, metadata = network.module, network.metadata
    costs = {}
    for name, (method, params) in methods.items():
        def explain(variables, x, method=method, params=params):
            return jxai.explain(jxai.Network(module, variables, metadata), x, method, **kwargs,
                                **params)

        analysis = jax.jit(explain).lower(network.variables, x).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        costs[name] = (analysis.get("flops", 0.0), analysis.get("bytes accessed", 0.0))
    return costs


def print_times(title, times, runs, costs=None):
    floor = statistics.median(times["gradient"])
    floor_min = min(times["gradient"])
    ixg = statistics.median(times["input_t_gradient"]) if "input_t_gradient" in times else None
    print(f"\n{title}, float32, {jax.devices()[0].device_kind}, {runs} interleaved runs "
          f"(median), load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':<28}{'median ms':>11}{'min ms':>9}{'x gradient':>12}{'(min)':>7}"
          f"{'x (x*grad)':>12}{'flops x':>9}{'bytes x':>9}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio_ixg = f"{median / ixg:.2f}" if ixg else "-"
        cost = ""
        if costs:
            cost = (f"{costs[name][0] / costs['gradient'][0]:>9.2f}"
                    f"{costs[name][1] / costs['gradient'][1]:>9.2f}")
        print(f"{name:<28}{1e3 * median:>11.2f}{1e3 * min(samples):>9.2f}"
              f"{median / floor:>12.2f}{min(samples) / floor_min:>7.2f}{ratio_ixg:>12}{cost}")


# ------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------


REMAT = (False, True, "sqrt")  # the zoo's remat= settings (jxai.models._blocks)


def peak_bytes(network, x, method, kwargs) -> dict:
    """The compiled explanation's memory analysis (nothing runs): scratch (temp), arguments
    (variables and ids), outputs. Compiled as `jxai.explain` compiles it on XLA:CPU: a model with
    checkpointed blocks gets `jxai._xla_cpu.REMAT_OPTIONS`, which keep the rematerialisation."""
    module, metadata = network.module, network.metadata

    def explain(variables, x):
        return jxai.explain(jxai.Network(module, variables, metadata), x, method, **kwargs)

    rematerialised = bool(metadata.get("config", {}).get("remat"))
    options = _xla_cpu.compiler_options(None, rematerialised) if jax.default_backend() == "cpu" \
        else None
    compiled = jax.jit(explain, compiler_options=options).lower(network.variables, x).compile()
    analysis = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    temp = analysis.temp_size_in_bytes
    io = analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    return {"temp": temp, "args": analysis.argument_size_in_bytes, "peak": temp + io,
            "flops": float(cost.get("flops", float("nan")))}


def memory_row(length: int, depth: int, batch: int, methods) -> dict:
    config = dict(CONFIGS["llama"], sequence_length=length, num_hidden_layers=depth)
    ids = jnp.zeros((batch, length), jnp.int32)
    kwargs = {"target": 3, "position": length - 1}
    row = {}
    for remat in REMAT:
        net = zoo.get("llama", pretrained=False, key=1, remat=remat, **config)
        for method in methods:
            row[method, remat] = peak_bytes(net, ids, method, kwargs)
    return row


def print_memory(title, key_name, keys, rows, methods, stream_mb):
    print(f"\n{title} (scratch = compiled temp bytes, MB; + arguments = peak; compile only; "
          f"one residual stream s = {stream_mb:.2f} MB; flops = XLA's count, ratio to plain)")
    for method in methods:
        print(f"{method}:")
        print(f"{key_name:>8}{'args':>9}" + "".join(f"{'remat=' + str(r):>16}" for r in REMAT)
              + f"{'True/plain':>12}{'sqrt/plain':>12}{'flops True':>12}{'flops sqrt':>12}")
        for key in keys:
            temps = [rows[key][method, r]["temp"] / 1e6 for r in REMAT]
            flops = [rows[key][method, r]["flops"] for r in REMAT]
            args = rows[key][method, False]["args"] / 1e6
            print(f"{key:>8}{args:>9.1f}" + "".join(f"{t:>16.1f}" for t in temps)
                  + f"{temps[1] / temps[0]:>12.2f}{temps[2] / temps[0]:>12.2f}"
                  + f"{flops[1] / flops[0]:>12.2f}{flops[2] / flops[0]:>12.2f}", flush=True)


def run_memory(args) -> None:
    methods = ("gradient", "lrp.attn_lrp")
    hidden = CONFIGS["llama"]["hidden_size"]
    print(f"LLaMA-style {dict(CONFIGS['llama'], sequence_length='*', num_hidden_layers='*')}, "
          f"float32, backend {jax.default_backend()}")
    rows = {}
    for length in args.lengths:
        rows[length] = memory_row(length, args.memory_depth, 1, methods)
        print(f"  length {length}: done", flush=True)
    print_memory(f"length sweep, {args.memory_depth} layers, batch 1", "tokens", args.lengths,
                 rows, methods, args.lengths[0] * hidden * 4 / 1e6)
    rows = {}
    for depth in args.depths:
        rows[depth] = memory_row(args.memory_length, depth, args.memory_batch, methods)
        print(f"  depth {depth}: done", flush=True)
    stream = args.memory_batch * args.memory_length * hidden * 4 / 1e6
    print_memory(f"depth sweep, batch {args.memory_batch} x {args.memory_length} tokens",
                 "layers", args.depths, rows, methods, stream)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["vit", "bert", "llama"],
                        choices=["vit", "bert", "llama", "stock"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=None, help="tokens (BERT, LLaMA, stock)")
    parser.add_argument("--dim", type=int, default=128, help="stock transformer width")
    parser.add_argument("--depth", type=int, default=2, help="stock transformer depth")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--methods", nargs="*", default=None, help="default: all")
    parser.add_argument("--variants", action="store_true",
                        help="also AttnLRP/CP-LRP with LRP-0 on the output layer (profile)")
    parser.add_argument("--costs", action=argparse.BooleanOptionalAction, default=True,
                        help="XLA's flop and byte counts of each compiled method (load-free)")
    parser.add_argument("--memory", action="store_true", help="the memory sweeps instead")
    parser.add_argument("--scheduler", choices=["default", "memory"], default="default")
    parser.add_argument("--lengths", nargs="*", type=int,
                        default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--memory-depth", type=int, default=4)
    parser.add_argument("--depths", nargs="*", type=int, default=[4, 16, 36, 64])
    parser.add_argument("--memory-length", type=int, default=128)
    parser.add_argument("--memory-batch", type=int, default=16)
    args = parser.parse_args(argv)
    if args.memory:
        run_memory(args)
        return 0
    for name in args.models:
        if name == "stock":
            network, x, kwargs, title = stock_case(args)
            methods = {**TIMED, **STOCK_EXTRA}
        else:
            network, x, kwargs, title = zoo_case(name, args.batch, args.seq)
            methods = dict(TIMED, **(VARIANTS if args.variants else {}))
        if args.methods is not None:
            methods = {m: methods[m] for m in methods if m in args.methods or m == "gradient"}
        print(title, flush=True)
        times = time_methods(network, x, kwargs, methods, args.runs)
        costs = compiled_costs(network, x, kwargs, methods) if args.costs else None
        print_times(title, times, args.runs, costs)
    return 0


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    sys.exit(main())
