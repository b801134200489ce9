"""Data parallelism for batch explanation: the batch axis sharded over every device.

One `jax.sharding.Mesh` with a single axis ``"batch"`` spans all devices of all processes
(``jax.devices()``); inputs and attributions use ``NamedSharding(mesh, PartitionSpec("batch"))``
and the network variables are replicated. ``jax.jit`` then compiles **one** SPMD program that
runs the same explanation on each device's slice of the batch; samples are independent, so the
program needs no communication and the result equals the single-device one.

Several processes (``jax.distributed``, e.g. through ``jxai explain --coordinator``,
`jxai.launch`): `jxai.batch.explain_dataset` gives each process a mesh of its **own** devices
(`local_mesh`), so processes never wait for each other and one that dies cannot stall the rest.
A mesh that spans several processes (`spans_processes`; pass ``devices=jax.devices()``) is still
supported: every process reads its own items, builds its local rows with `put_batch`
(`jax.make_array_from_process_local_data`) and gets back only its rows with `fetch_local`; all
processes then run the same number of steps, and `any_process` lets them agree when one of them
runs out of data first. Launch commands are in ``benchmarks/README_batch.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXIS",
    "batch_mesh",
    "local_mesh",
    "spans_processes",
    "batch_sharding",
    "replicated",
    "padded_batch_size",
    "pad_batch",
    "put_batch",
    "fetch_local",
    "any_process",
    "jit_batch_sharded",
]

BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"batch"`` over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("batch_mesh needs at least one device")
    return Mesh(np.array(devices), (BATCH_AXIS,))


def local_mesh(batch_size: int | None = None) -> Mesh:
    """`batch_mesh` over this process's devices, at most ``batch_size`` of them (a device that
    would hold only padded rows is left out)."""
    devices = jax.local_devices()
    return batch_mesh(devices if batch_size is None else devices[:max(1, batch_size)])


def spans_processes(mesh: Mesh) -> bool:
    """Whether ``mesh`` holds devices of other processes (then every step is a collective)."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def batch_sharding(mesh: Mesh, batch_axis: int = 0, ndim: int | None = None) -> NamedSharding:
    """Shard axis ``batch_axis`` of an array over the mesh; other axes stay whole."""
    spec = [None] * (batch_axis + 1) if ndim is None else [None] * ndim
    spec[batch_axis] = BATCH_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole value (used for the network variables)."""
    return NamedSharding(mesh, PartitionSpec())


def local_device_count(mesh: Mesh) -> int:
    """Devices of ``mesh`` that belong to this process."""
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
    """The per-process batch rounded up to a multiple of this process's devices in ``mesh``.

    Every device gets the same number of rows, which `NamedSharding` requires.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    per = local_device_count(mesh)
    if per == 0:
        raise ValueError(f"process {jax.process_index()} has no device in the mesh {mesh}")
    return -(-batch_size // per) * per


def pad_batch(rows: np.ndarray, size: int) -> np.ndarray:
    """Pad ``rows`` along axis 0 to ``size`` by repeating the last row.

    Repeating a real row (rather than zeros) keeps padded lanes numerically ordinary, so no
    NaN from a division by an all-zero input can appear; the padded results are dropped.
    """
    n = rows.shape[0]
    if n == size:
        return rows
    if n == 0 or n > size:
        raise ValueError(f"cannot pad {n} rows to a batch of {size}")
    filler = np.broadcast_to(rows[-1:], (size - n, *rows.shape[1:]))
    return np.concatenate([rows, filler], axis=0)


def put_batch(local_rows: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place this process's rows as its part of a global batch sharded by ``sharding``.

    On this process's devices only this is a sharded `jax.device_put`; on a mesh that spans
    several processes, each process passes its own rows and the global batch is their
    concatenation in process order.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(local_rows, sharding)
    return jax.make_array_from_process_local_data(sharding, local_rows)


def fetch_local(array: jax.Array, batch_axis: int = 0) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order, as numpy.

    For a fully addressable array (one process) this is ``np.asarray``; otherwise the
    addressable shards are concatenated along the batch axis (replicas skipped).
    """
    if array.is_fully_addressable:
        return np.asarray(array)
    pieces: dict[int, np.ndarray] = {}
    for shard in array.addressable_shards:
        start = shard.index[batch_axis].start or 0
        if start not in pieces:
            pieces[start] = np.asarray(shard.data)
    return np.concatenate([pieces[k] for k in sorted(pieces)], axis=batch_axis)


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([flag], np.int32))
    return bool(np.any(flags))


def jit_batch_sharded(fn: Callable[..., jax.Array], mesh: Mesh, *, n_replicated: int = 1,
                      n_batched: int = 1, batch_axis_out: int = 0,
                      compiler_options: dict | None = None,
                      per_device: bool = False) -> Callable[..., jax.Array]:
    """``jax.jit(fn)`` for ``fn(*replicated_args, *batched_args)`` on the batch mesh.

    The first ``n_replicated`` arguments (pytrees, e.g. the network variables) are copied to every
    device, the next ``n_batched`` are sharded along axis 0, and the output along
    ``batch_axis_out``. One program is compiled per input shape, as with any ``jax.jit``;
    ``compiler_options`` are XLA options for that compilation (see `jxai.batch.CPU_VARIANTS`).

    ``per_device=True`` runs ``fn`` on each device's rows (``jax.shard_map``) instead of letting
    XLA partition the whole-batch program: for functions whose rows are independent, it lets
    ``fn`` loop over its local rows (`jxai.explain`'s ``micro_batch``), which a partitioner
    cannot split along a loop axis.
    """
    in_shardings = (replicated(mesh),) * n_replicated + (batch_sharding(mesh),) * n_batched
    out_sharding = batch_sharding(mesh, batch_axis_out)
    if per_device:
        specs = tuple(s.spec for s in in_shardings)
        # check_vma=False: custom VJPs (the LRP rules) do not say how their residuals vary
        # over the mesh; every value is split along the batch or replicated.
        fn = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=out_sharding.spec,
                           check_vma=False)
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_sharding,
                   compiler_options=compiler_options)
