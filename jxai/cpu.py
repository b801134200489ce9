"""Every CPU core busy: independent samples and chunks run on separate XLA:CPU devices.

XLA:CPU leaves cores idle on the networks jxai explains. YNNPACK, its default convolution back
end, runs a convolution with 32 or fewer output channels on one thread whatever its size, and
the seed U-Net spends most of its time in such layers (16 and 32 channels at 256² and 128²).
Giving XLA a wider batch does not help: per-sample cost grows with the batch on this back end
(`jxai.explain`'s ``micro_batch``). Independent work on separate devices does: the host is split
into ``N`` XLA devices (`use_cores`, before JAX starts), and each one loops over its share of
the samples or occlusion windows (`split`) or of a wrapper's chunks (`sum_chunks`) in one
compiled ``shard_map`` program. Each device is an independent stream of kernels, so the
single-threaded layers of different samples run side by side. Measured on this project's
2-core CPU (seed U-Net 256², batch 8, one sample per loop step): gradient 0.50 → 0.34 s, LRP-ε 0.52 → 0.35 s; VGG16 224² (wide layers, already
multi-threaded): 1.55 → 1.52 s.

The split is opt-in, because the device count is process-wide: ``jax.devices()`` then lists
``N`` CPU devices. ``jxai explain`` and ``jxai demo`` turn it on themselves; in a script::

    import jax
    import jxai
    jxai.use_cpu_cores()          # before the first JAX computation
    jxai.explain(network, x, "lrp.epsilon")   # the batch is spread over the cores

A call with nothing to share (a gradient of one sample) runs on one device (`shares_work`).
Results equal those of one device bit for bit where samples are explained one at a time (the
default on CPU for convolutional networks). A wrapper's sum over chunks is reassociated (each
device sums its chunks, then the devices' sums are added), and a batch explained whole (a
callable target) is compiled for several devices: both change float32 rounding only.

Which of XLA:CPU's kernel libraries each program is compiled with is chosen here too
(`use_kernels`, `kernels`): Eigen is faster for networks of narrow convolutions on a host that
is one device, YNNPACK on split hosts and wide networks.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import re
import threading
import weakref
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jxai import _xla_cpu
from jxai._xla_cpu import KERNELS, compiler_options

__all__ = ["AUTO_MAX", "AXIS", "KERNELS", "NARROW_CHANNELS", "NARROW_SHARE", "compiler_options",
           "device_count", "kernels", "mesh_for", "region", "repeat_last", "replicate",
           "shares_work", "split", "sum_chunks", "uncommitted", "use_cores", "use_kernels"]

AXIS = "cores"
AUTO_MAX = 8
# `kernels("auto")`: Eigen when at least this share of a network's convolution work is in layers
# of <= NARROW_CHANNELS input and output channels (and the host is one device).
NARROW_SHARE = 0.25
NARROW_CHANNELS = 64
_KERNEL_CHOICES = ("auto", *KERNELS)
_KERNELS = ["auto"]

# The mesh of the parallel region being traced (set by the driver around its trace; reset to
# None inside a region, so nested loops run on their device instead of splitting again).
_REGION: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("jxai_cpu_region",
                                                                      default=None)
# Work actually shared out while tracing (see `shares_work`).
_SHARED: contextvars.ContextVar[list | None] = contextvars.ContextVar("jxai_cpu_shared",
                                                                      default=None)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def use_cores(count: int | str = "auto") -> int:
    """Split the host CPU into ``count`` XLA devices so jxai can run independent work on each.

    Must run before JAX initialises its backends (the first computation, ``jax.devices()``...).
    ``"auto"``: one device per usable core, at most `AUTO_MAX` (8): work is shared out in equal
    parts, so a batch smaller than the device count is padded, and the padded rows take cores
    from the real ones (measured only on 2 cores; choose ``count`` on a large machine). A
    device count the user already chose (``JAX_NUM_CPU_DEVICES`` or
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) is kept.
    Returns the number of CPU devices JAX will have.

    Raises:
      ValueError: ``count`` is not ``"auto"`` or an integer >= 1.
      RuntimeError: JAX already started with another device count.
    """
    if count == "auto":
        count = min(usable_cores(), AUTO_MAX)
    elif isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"use_cpu_cores: count must be an integer >= 1 or 'auto', got {count!r}")
    count = int(count)
    chosen = _count_in_environment()
    if chosen is not None:
        return chosen
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialised
        have = _started_count()
        if have != count:
            raise RuntimeError(
                f"JAX's CPU backend already started with {have} device(s), so it cannot be split "
                f"into {count}; call jxai.use_cpu_cores() right after importing jax, before any "
                f"computation, or set JAX_NUM_CPU_DEVICES={count} in the environment"
            ) from None
    return count


def use_kernels(name: str = "auto") -> str:
    """Choose XLA:CPU's kernel library for the programs jxai compiles from now on.

    ``"ynnpack"`` (XLA's default), ``"eigen"``, or ``"auto"`` (default): Eigen for a network
    whose convolution work is mostly narrow (at least `NARROW_SHARE` of it in layers of at most
    `NARROW_CHANNELS` input and output channels) when the host is one CPU device, YNNPACK
    otherwise. Measured on this project's 2-core CPU, one device, batches 1 and 4
    (benchmarks/README_batch.md, "Kernel libraries"): Eigen is 11-26% faster on the seed U-Net,
    VGG-7 and steel CAM networks (narrow shares 0.58, 0.40, 1.0), 1-4% on VGG16 224² (0.13),
    6-14% slower on the 512² chest X-ray VGG (0.12); with one device per core (`use_cores`)
    YNNPACK is faster on each (U-Net gradient, batch 8: 390 vs 410 ms). The choice is
    process-wide, so every program of a process (one device or several, `jxai.explain` or
    `jxai.explain_dataset`) makes it alike and their results stay equal bit for bit; the two
    libraries differ by float32 rounding. Only programs jxai compiles itself follow it, not
    `jxai.explain` or a `jxai.make_explainer` function inside your own ``jit`` (pass
    ``compiler_options=jxai.cpu.compiler_options(name)`` to that ``jit``). Returns the name.

    Raises:
      ValueError: ``name`` is not one of ``"auto"``, ``"ynnpack"``, ``"eigen"``.
    """
    if name not in _KERNEL_CHOICES:
        raise ValueError(f"use_cpu_kernels: name must be one of {list(_KERNEL_CHOICES)}, "
                         f"got {name!r}")
    _KERNELS[0] = name
    return name


def kernels(narrow_share: float | None) -> str:
    """The `KERNELS` entry for a CPU program (see `use_kernels`), given the share
    of its network's convolution work in narrow layers (None: unknown)."""
    if _KERNELS[0] != "auto":
        return _KERNELS[0]
    if narrow_share is None or _started_count() > 1:
        return "ynnpack"
    return "eigen" if narrow_share >= NARROW_SHARE else "ynnpack"


def _count_in_environment() -> int | None:
    """The CPU device count set by ``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS``, if any."""
    flag = re.search(r"--xla_force_host_platform_device_count=(\d+)",
                     os.environ.get("XLA_FLAGS", ""))
    if flag:
        return int(flag.group(1))
    value = os.environ.get("JAX_NUM_CPU_DEVICES", "").strip()
    return int(value) if value.isdigit() else None


def _started_count() -> int:
    return len(jax.local_devices(backend="cpu"))


def mesh_for(x) -> Mesh | None:
    """The mesh of CPU devices to spread ``x``'s explanation over, or None to run on one device.

    Only for a concrete ``x`` (not inside the caller's ``jit``, whose devices jxai does not
    choose) that lives on one CPU device, when this process has several.
    """
    if isinstance(x, jax.core.Tracer) or _xla_cpu.platform_of(x) != "cpu":
        return None
    if jax.process_count() > 1 or len(x.sharding.device_set) > 1:
        return None
    devices = jax.local_devices(backend="cpu")
    return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


# (mesh, ids of the leaves) -> (weak references to the leaves, the replicated tree)
_REPLICAS: collections.OrderedDict = collections.OrderedDict()
_REPLICAS_KEPT = 2
_REPLICAS_LOCK = threading.Lock()


def replicate(variables, mesh: Mesh):
    """``variables`` with a copy on every device of ``mesh``, made once per set of arrays.

    Without it each call would copy the weights to the other devices again (VGG16, 528 MB:
    0.15 s of a 1.6 s batch). The copies are kept for the last two sets of variables while their
    arrays are alive, at the cost of one more copy of the weights per extra device.
    """
    leaves, _ = jax.tree.flatten(variables)
    key = (mesh, tuple(id(leaf) for leaf in leaves))
    with _REPLICAS_LOCK:
        hit = _REPLICAS.get(key)
        if hit is not None and all(r() is leaf for r, leaf in zip(hit[0], leaves, strict=True)):
            _REPLICAS.move_to_end(key)
            return hit[1]
    replicated = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    try:
        refs = [weakref.ref(leaf) for leaf in leaves]
    except TypeError:  # a leaf without weak references (a Python scalar): copy each call
        return replicated
    with _REPLICAS_LOCK:
        _REPLICAS[key] = (refs, replicated)
        while len(_REPLICAS) > _REPLICAS_KEPT:
            _REPLICAS.popitem(last=False)
    return replicated


def uncommitted(tree, mesh: Mesh):
    """``tree`` with every array the caller committed to one device copied to all of ``mesh``.

    A ``jit`` refuses arguments committed to different device sets; uncommitted arrays (the
    usual case) are left as they are.
    """
    everywhere = NamedSharding(mesh, PartitionSpec())

    def place(leaf):
        if isinstance(leaf, jax.Array) and leaf.committed and leaf.sharding != everywhere:
            return jax.device_put(leaf, everywhere)
        return leaf

    return jax.tree.map(place, tree)


@contextlib.contextmanager
def region(mesh: Mesh | None):
    """Trace the body of this ``with`` with ``mesh`` as the parallel region (None: none)."""
    token = _REGION.set(mesh)
    try:
        yield
    finally:
        _REGION.reset(token)


def shares_work(fn: Callable, mesh: Mesh, *args) -> bool:
    """Whether ``fn(*args)``, traced in a region over ``mesh``, shares any work out.

    A program that opens a region but splits nothing (a gradient at batch 1) would run whole on
    every device of the mesh, each repeating the others' work; the driver traces once (abstractly,
    nothing is computed) and runs such a call on one device.
    """
    shared: list = []
    token = _SHARED.set(shared)
    try:
        with region(mesh):
            jax.make_jaxpr(fn)(*args)
    finally:
        _SHARED.reset(token)
    return bool(shared)


def _note_shared() -> None:
    shared = _SHARED.get()
    if shared is not None:
        shared.append(True)


def device_count() -> int:
    """Devices of the region being traced (1 outside a region or inside one's loop body)."""
    mesh = _REGION.get()
    return 1 if mesh is None else mesh.devices.size


def split(fn: Callable, xs):
    """``fn(xs)`` for a ``fn`` that treats the rows of ``xs`` independently, split over the region.

    The leading axis is padded (by repeating the last row) to a multiple of the device count;
    each device runs ``fn`` on its consecutive share (typically a ``lax.map`` over it) and the
    results are concatenated, padding dropped. Outside a region this is ``fn(xs)``.
    """
    mesh = _REGION.get()
    count = jax.tree.leaves(xs)[0].shape[0]
    if mesh is None or count < 2:
        return fn(xs)
    devices = mesh.devices.size
    padded = -(-count // devices) * devices
    xs = repeat_last(xs, padded - count)
    _note_shared()
    out = _split(fn, mesh, xs, PartitionSpec(AXIS))
    return jax.tree.map(lambda a: a[:count], out)


def repeat_last(tree, extra: int):
    """Every leaf of ``tree`` with its last row repeated ``extra`` more times (padding whose
    results are dropped or masked: a real row keeps the padded work numerically ordinary)."""
    if extra == 0:
        return tree
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)]), tree)


def sum_chunks(fn: Callable, chunks):
    """``fn(chunks)`` for a ``fn`` that sums over the leading axis, split over the region.

    ``fn(part)`` must return the sum of its per-chunk terms, so that the whole is the sum of
    the devices' parts; the leading axis must be a multiple of `device_count`. Outside a
    region this is ``fn(chunks)``.
    """
    mesh = _REGION.get()
    if mesh is None:
        return fn(chunks)
    _note_shared()
    return _split(fn, mesh, chunks, PartitionSpec(), summed=True)


def _split(fn, mesh: Mesh, xs, out_spec: PartitionSpec, summed: bool = False):
    """``fn`` on each device's consecutive share of ``xs``'s leading axis (``jax.shard_map``).

    ``fn`` is traced once, outside any region, on one share; every array it closes over (the
    network's variables, the target, the key: tracers of the enclosing ``jit``) becomes an
    explicit, replicated argument of the ``shard_map``, so that inside it every value has the
    per-device type ``shard_map`` expects. ``summed``: the devices' results are added up.
    """
    devices = mesh.devices.size
    share = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((a.shape[0] // devices, *a.shape[1:]), a.dtype), xs)
    with region(None):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(share)

    def local(consts, part):
        outs = jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(closed.jaxpr, consts))(
            *jax.tree.leaves(part))
        if summed:
            outs = jax.lax.psum(outs, AXIS)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    # check_vma=False: custom VJPs (the LRP rules) do not annotate how their residuals vary
    # over the mesh; every value here is either split along the axis or replicated.
    per_device = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
                               out_specs=out_spec, check_vma=False)
    return per_device(list(closed.consts), xs)
