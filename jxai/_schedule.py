"""Hardware placement: how an explanation's independent pieces are laid out on the devices.

Method code says *what* is independent; this module decides *where and in which order* it runs.
Three kinds of pieces:

- **chunks of a method** (a wrapper's noisy copies or path points, occlusion's windows):
  `sum_chunks` sums ``fn`` over items ``batch_size`` at a time, `map_chunks` stacks the results;
  methods reach both through `jxai.Context.sum_chunks` / ``map_chunks``. ``batch_size="auto"``
  is `chunk_size`: 1 on CPU, wide on accelerators.
- **samples of a batch**: on CPU, a convolutional network is explained one sample at a time
  inside the compiled call (`row_groups`, `in_row_groups`).
- **CPU cores**: traced in a `jxai.cpu` region (several XLA:CPU devices), the groups of samples,
  the windows and the chunks are shared out between the devices (`jxai.cpu.split`,
  `jxai.cpu.sum_chunks`); `kernels_for` picks XLA:CPU's kernel library for a network.

Every function here runs at trace time (inside the driver's ``jit``), except `row_groups`,
`convolutions` and `kernels_for`, which the driver calls before compiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jxai import _xla_cpu, cpu
from jxai._checks import check_size, memo
from jxai._engine import discover, variables_at
from jxai.composites import Composite
from jxai.network import Network

__all__ = [
    "chunk_size",
    "convolutions",
    "has_convolutions",
    "in_row_groups",
    "kernels_for",
    "leading_size",
    "map_chunks",
    "output_shape",
    "row_groups",
    "sum_chunks",
]


# --------------------------------------------------------------------------------------------
# Chunks of a method
# --------------------------------------------------------------------------------------------


def chunk_size(method: str, batch_size: Any, accelerator: int = 16) -> int | None:
    """Resolve a wrapper's ``batch_size``: an int >= 1, ``None`` (everything at once) or ``"auto"``.

    ``"auto"`` is 1 on CPU and ``accelerator`` on GPU and TPU (the platform the trace is for:
    `jxai._xla_cpu.platform`).
    On CPU the input batch already gives XLA's kernels all the rows they can use: the time per
    row of its convolutions grows once a call's activations leave the caches, so evaluating more
    path points or noisy copies together only costs (measured per network in ``benchmarks/README_batch.md``).
    Accelerators want wide calls to fill their cores.
    """
    size = check_size(method, "batch_size", batch_size)
    if size == "auto":
        return 1 if _xla_cpu.needed() else accelerator
    return size


def leading_size(tree) -> int:
    """Size of the common leading axis of every leaf of ``tree``."""
    sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"chunked_sum: leaves disagree on their leading size: {sorted(sizes)}")
    return sizes.pop()


def sum_chunks(fn: Callable, items, batch_size: int | None):
    """``sum_i fn(items[i])`` over the leading axis of the pytree ``items``, bounded in memory.

    The ``m`` items are cut into ``c = ceil(m / batch_size)`` chunks of equal size
    ``ceil(m / c) <= batch_size``; each chunk is evaluated under ``vmap`` and ``lax.scan`` visits
    the chunks with a running sum as the carry. With equal chunks there is one loop body, so XLA
    allocates one chunk's buffers: peak memory is that of ``batch_size`` evaluations whatever
    ``m`` is. When ``c`` does not divide ``m`` the last chunk is padded with copies of the last
    item whose results are masked out (fewer than ``c`` wasted evaluations). ``batch_size=None``
    (or >= ``m``) evaluates all items in one ``vmap``. ``fn`` may return any pytree. Traced in a
    `jxai.cpu` region of ``N`` devices, the chunk count is rounded up to a multiple of ``N`` and
    each device scans its share.
    """
    count = leading_size(items)
    vmapped = jax.vmap(fn)

    def summed(chunk):
        return jax.tree.map(lambda leaf: jnp.sum(leaf, axis=0), vmapped(chunk))

    # On several CPU devices (`jxai.cpu.sum_chunks`) every device gets the same number of
    # chunks, at least one.
    devices = cpu.device_count()
    limit = count if batch_size is None else min(batch_size, count)
    limit = min(limit, -(-count // devices))
    if limit >= count:
        return summed(items)
    chunks = -(-count // limit)
    chunks = -(-chunks // devices) * devices
    size = -(-count // chunks)
    padding = chunks * size - count
    items = cpu.repeat_last(items, padding)
    valid = (jnp.arange(chunks * size) < count).reshape(chunks, size)
    head = jax.tree.map(lambda a: a.reshape(chunks, size, *a.shape[1:]), items)

    def masked_sum(chunk, keep):
        def reduce(leaf):
            mask = keep.reshape(keep.shape + (1,) * (leaf.ndim - 1))
            return jnp.sum(jnp.where(mask, leaf, jnp.zeros_like(leaf)), axis=0)

        return jax.tree.map(reduce, vmapped(chunk))

    # The running sum starts from zeros, not from an unrolled first chunk, which would get
    # buffers of its own and double the peak.
    shapes = jax.eval_shape(summed, jax.tree.map(lambda a: a[0], head))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry, chunk_and_mask):
        chunk, keep = chunk_and_mask
        return jax.tree.map(jnp.add, carry, masked_sum(chunk, keep)), None

    @_xla_cpu.for_xla_cpu
    def loop(part):
        return jax.lax.scan(body, zeros, part)[0]

    return cpu.sum_chunks(loop, (head, valid))


def map_chunks(fn: Callable, items, batch_size: int | None):
    """``stack_i fn(items[i])`` over the leading axis of ``items``, ``batch_size`` at a time.

    ``batch_size=None`` (or >= the item count) is one ``vmap``; otherwise ``lax.map`` visits
    chunks of ``batch_size`` items, and in a `jxai.cpu` region the items are shared out between
    the CPU devices (each maps over its consecutive share). Every output leaf is item-first.
    """
    count = leading_size(items)
    if batch_size is None or batch_size >= count:
        return jax.vmap(fn)(items)

    @_xla_cpu.for_xla_cpu
    def chunked(part):
        return jax.lax.map(fn, part, batch_size=batch_size)

    return cpu.split(chunked, items)


# --------------------------------------------------------------------------------------------
# Samples of a batch
# --------------------------------------------------------------------------------------------


def row_groups(micro_batch, method, x, traced, kind, network=None) -> int | None:
    """Resolve ``explain(..., micro_batch=)``: ``"auto"`` is 1 on an unsharded CPU batch of a
    convolutional ``network``."""
    batch = x.shape[0]
    micro_batch = check_size("explain", "micro_batch", micro_batch)
    if micro_batch is None:
        return None
    if micro_batch != "auto":
        if traced and micro_batch < batch:
            raise ValueError(
                f"micro_batch={micro_batch} cannot cut the array parameters "
                f"{sorted(traced)} into groups of samples; pass micro_batch=None"
            )
        if kind == "callable" and micro_batch < batch:
            raise ValueError("micro_batch cannot be used with a callable target (it sees the "
                             "whole output); pass micro_batch=None")
        return micro_batch
    if not _xla_cpu.needed() or traced or kind == "callable" or batch < 2:
        return None
    if not isinstance(method, str | Composite):  # a user's callable may mix samples
        return None
    if not isinstance(x, jax.core.Tracer) and len(x.sharding.device_set) > 1:
        return None
    if network is not None and not has_convolutions(network, x):
        return None
    return 1


def in_row_groups(explain_rows, network, x, data, key, kind, rows, inputs=None):
    """``explain_rows`` on groups of ``rows`` samples, one group after another (`lax.map`).

    In a `jxai.cpu` region the groups are shared out between the CPU devices. The per-sample
    target data (class indices, positions, a cotangent with a batch axis) and the model's other
    inputs (``{name: (B, ...)}``) are cut with the input; group ``g`` gets the key
    ``fold_in(key, g)``. Every output leaf is batch-first.
    """
    groups = x.shape[0] // rows
    inputs = inputs or {}
    per_sample = kind in ("index", "max_at") or (
        kind == "cotangent" and data.ndim >= 1 and data.shape[0] == x.shape[0]
        and data.ndim == len(output_shape(network, x, inputs))
    )

    def group(args):
        xs, ds, k, extra = args
        return explain_rows(network, xs, ds if per_sample else data, k, {}, extra)

    @_xla_cpu.for_xla_cpu
    def loop(part):
        return jax.lax.map(group, part)

    cut = lambda a: a.reshape(groups, rows, *a.shape[1:])  # noqa: E731
    keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(groups))
    items = (cut(x), cut(data) if per_sample else jnp.zeros(groups), keys,
             {name: cut(value) for name, value in inputs.items()})
    out = cpu.split(loop, items)
    return jax.tree.map(lambda leaf: leaf.reshape(x.shape[0], *leaf.shape[2:]), out)


def output_shape(network: Network, x, inputs=None) -> tuple:
    """The shape of ``network``'s output on ``x`` (an abstract trace, nothing computed), given
    the model's other inputs ``{name: array or ShapeDtypeStruct}``."""
    return jax.eval_shape(lambda v, x, extra: network.module.apply(v, x, **extra),
                          network.variables, x, dict(inputs or {})).shape


# --------------------------------------------------------------------------------------------
# What the network's convolutions ask of XLA:CPU
# --------------------------------------------------------------------------------------------



def has_convolutions(network: Network, x) -> bool:
    """Whether ``network`` has convolution layers (the per-sample loop pays only for those).

    Matrix products get cheaper per row as the batch grows, and a loop over samples adds a
    step per row: a dense-only network (the tabular MLP, 4096 rows) is 3× faster whole.
    """
    return convolutions(network, x) is not None


def convolutions(network: Network, x) -> float | None:
    """The share of ``network``'s convolution work (multiply-adds per sample) in layers of at most
    `jxai.cpu.NARROW_CHANNELS` input and output channels; None without convolutions (cached).

    The trace is the one a one-sample group needs anyway. The work of a layer is its kernel size
    times its output positions (a transposed convolution: its input positions; a locally
    connected layer: its kernel, which has one filter per position).
    """
    # keyed on the module: its variables' values do not matter
    key = (network.module_key, network.skip, tuple(x.shape[1:]), jnp.dtype(x.dtype))
    return memo(_CONVOLUTION_SHARES, key, lambda: _narrow_share(network, x))


def _narrow_share(network: Network, x) -> float | None:
    facts = discover(network, (1, *x.shape[1:]), x.dtype)
    layers = [layer for layer in facts.layers if layer.is_conv]  # convolution kinds, any framework
    if not layers:
        return None
    total = narrow = 0.0
    for layer in layers:
        params = variables_at(network.variables, layer.path).get("params", {})
        kernel = tuple(getattr(params.get("kernel"), "shape", ()))  # none found: no work counted
        positions = (layer.input_shape[1:-1] if layer.kind == "conv_transpose"
                     else () if issubclass(layer.module_type, nn.ConvLocal)  # kernel per position
                     else layer.output_shape[1:-1])
        work = float(np.prod(kernel)) * float(np.prod(positions))
        total += work
        if len(kernel) >= 2 and max(kernel[-2:]) <= cpu.NARROW_CHANNELS:
            narrow += work
    return narrow / total if total else 0.0


_CONVOLUTION_SHARES: dict = {}


def kernels_for(network: Network, x) -> str:
    """The XLA:CPU kernel library to compile ``network``'s explanation of ``x`` with
    (`jxai.cpu.kernels` of its narrow share). `jxai.explain_dataset` asks here too, so that its
    steps and in-memory `explain` compile alike and give the same bytes."""
    return cpu.kernels(convolutions(network, x))
