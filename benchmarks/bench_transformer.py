"""AttnLRP and CP-LRP against the input gradient on a small stock-linen transformer.

    python benchmarks/bench_transformer.py                        # batch 8, seq 64, dim 128
    python benchmarks/bench_transformer.py --runs 9 --depth 4

The transformer: a patch-embedding Dense (64 tokens of 48 features), ``--depth`` pre-norm blocks
(nn.LayerNorm → nn.MultiHeadDotProductAttention (4 heads) → residual → nn.LayerNorm →
Dense-GELU-Dense (4×dim) → residual), mean pooling over tokens, a Dense head of 10 classes,
random weights, float32, explicit targets. Each method is compiled once, then timed in
interleaved rounds whose order rotates, so that the machine's noise hits them alike; the table
gives medians, minima and the ratios of the medians to the gradient's and to input × gradient's
(the plain relevance of the same one backward pass).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import jxai


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


METHODS = {
    "gradient": ("gradient", {}),
    "input_t_gradient": ("input_t_gradient", {}),
    "lrp.attn_lrp": ("lrp.attn_lrp", {}),
    "lrp.cp_lrp": ("lrp.cp_lrp", {}),
    "lrp.attn_lrp gamma=0.05": ("lrp.attn_lrp", {"gamma": 0.05}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args(argv)

    module = Transformer(dim=args.dim, depth=args.depth)
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.seq, 48))
    variables = jax.jit(module.init)(jax.random.PRNGKey(1), x[:1])
    network = jxai.Network(module, variables)
    target = jnp.zeros((args.batch,), jnp.int32)  # explicit targets: no extra forward pass

    calls = {}
    for name in args.methods:
        method, params = METHODS[name]
        start = time.perf_counter()
        jax.block_until_ready(jxai.explain(network, x, method, target=target, **params))
        print(f"compiled {name:<28} {time.perf_counter() - start:6.1f} s", flush=True)
        calls[name] = lambda method=method, params=params: jxai.explain(
            network, x, method, target=target, **params
        )

    times = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(args.runs):  # the order rotates, so no method is always timed first
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(calls[name]())
            times[name].append(time.perf_counter() - start)

    floor = statistics.median(times["gradient"]) if "gradient" in times else None
    ixg = statistics.median(times["input_t_gradient"]) if "input_t_gradient" in times else None
    print(
        f"\ntransformer dim {args.dim}, depth {args.depth}, batch {args.batch}, seq {args.seq}, "
        f"float32, {jax.devices()[0].device_kind}, {args.runs} interleaved runs (median)"
    )
    print(f"{'method':<30}{'median ms':>11}{'min ms':>9}{'x gradient':>12}{'x (x*grad)':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = f"{median / floor:.2f}" if floor else "-"
        ratio_ixg = f"{median / ixg:.2f}" if ixg else "-"
        print(f"{name:<30}{1e3 * median:>11.2f}{1e3 * min(samples):>9.2f}{ratio:>12}"
              f"{ratio_ixg:>12}")
    return 0


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    sys.exit(main())
