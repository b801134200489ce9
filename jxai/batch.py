"""Explaining whole datasets: `explain_dataset`, the pipeline behind ``jxai explain``.

The pipeline has three stages that overlap in time::

    reader threads ──▶ batches (bounded queue) ──▶ device: one compiled, sharded program
      decode, preprocess,     pad to the compiled        │  (dispatch is asynchronous: batch k+1
      check the shape         batch size                 ▼   is sent before k is fetched)
                                                  results in input order ──▶ writer threads
                                                                              (atomic files)

Memory is bounded by ``workers + prefetch × batch_size`` decoded items plus two batches on the
device, whatever the dataset size. Every batch has the same (padded) shape, so one program is
compiled once and serves the whole run; padded rows are dropped. A bad item (corrupt file,
wrong shape) becomes a failed `Result` in its place and never stops the run. The batch is
sharded over every device and each device explains its own rows (`jxai.sharding`); on a CPU,
``jxai explain`` first splits the host into one device per core (`jxai.cpu`).

``autotune=True`` (``jxai explain --autotune``) compiles the step once per entry of
`CPU_VARIANTS` on XLA:CPU, times each on the first batch and keeps the fastest for the run.
Without it the step is compiled with the kernel library `jxai.explain` would choose for the same
network (`jxai.cpu.kernels`), so the two give the same bytes; autotune measures instead of
predicting (benchmarks/README_batch.md, "Kernel libraries"). The chosen variant is logged on the
``jxai.batch`` logger. On a mesh that spans several processes autotune is off: every process
must run the same program.

With several processes (``jax.distributed``; ``jxai explain --coordinator ...``, `jxai.launch`)
each process explains its share of the items on its own devices, without waiting for the others.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np

from jxai import _schedule, _xla_cpu, cpu, sharding
from jxai import io as jio
from jxai._checks import memo
from jxai._driver import (
    _reads_token_ids,
    _rematerialised,
    explain,
    model_input_names,
    output_size,
    resolve_target,
    sample_output_shape,
    split_model_inputs,
)
from jxai._targets import check_target_range
from jxai.contract import get_method

__all__ = ["CPU_VARIANTS", "Result", "explain_dataset", "image_preprocess_for"]

log = logging.getLogger(__name__)

# XLA:CPU compiler options tried by ``autotune``: its two kernel libraries (`jxai._xla_cpu.KERNELS`).
CPU_VARIANTS: dict[str, dict | None] = dict(_xla_cpu.KERNELS)


class Result(NamedTuple):
    """One explained item: its position in the input, its name, and the attribution or error."""

    index: int
    name: str
    attribution: np.ndarray | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Batch:
    entries: list[tuple[int, str, str | None]]   # (index, name, error) in input order
    rows: np.ndarray | None                       # (padded batch, ...) float32, good items only
    indices: np.ndarray | None                    # (padded batch,) dataset index of each row
    n_good: int
    rejected: dict[int, str] = field(default_factory=dict)  # row -> why its item failed


_END = object()


# -- the compiled step -------------------------------------------------------------------------
def _explain_step(network, method, target, params, mesh, *, stochastic: bool, labelled: bool,
                  batch: int, compiler_options: dict | None = None, inputs: bool = False,
                  position: int | None = None):
    """The jitted, sharded ``step(variables, x, *extras) -> attribution``, cached.

    Cached on everything static (module, skipped paths, method, target, parameters, mesh,
    batch), so calling `explain_dataset` again on the same network reuses the compiled program.

    ``extras`` are the per-row PRNG keys (``stochastic``), the per-row target classes
    (``labelled``) and the model's other inputs (``inputs``: a dict of arrays, one row per row
    of ``x``), all sharded like ``x``. The variables are an argument (replicated), not a
    closure: a closure would embed every weight in the program as a constant. With several target
    classes the output is (T, B, ...), so its batch axis is 1.
    """
    try:
        key = (network.module_key, network.skip, network.input_shape, method,
               tuple(target) if isinstance(target, list) else target,
               tuple(sorted(params.items())), mesh, stochastic, labelled, batch,
               tuple(sorted((compiler_options or {}).items())), inputs, position)
        hash(key)
    except TypeError:  # array parameters: no cache, compile for this call
        return _build_step(network, method, target, params, mesh, stochastic, labelled, batch,
                           compiler_options, inputs, position)
    return memo(_STEPS, key, lambda: _build_step(network, method, target, params, mesh,
                                                 stochastic, labelled, batch, compiler_options,
                                                 inputs, position),
                limit=32)


_STEPS: dict = {}


def _build_step(network, method, target, params, mesh, stochastic, labelled, batch,
                compiler_options=None, inputs=False, position=None):
    from jxai.network import Network

    module, metadata, skip = network.module, network.metadata, network.skip
    multi = _is_multi_target(target) and not labelled

    def targets_for(rows: int):
        if isinstance(target, (tuple, list)):  # (T, B): never mistaken for one class per row
            return np.broadcast_to(np.asarray(target, np.int32)[:, None], (len(target), rows))
        return target

    # Each device explains its own rows (`per_device`); on CPU devices one row at a time (see
    # `jxai.explain`'s micro_batch), on accelerators all of them at once.
    platform = mesh.devices.flat[0].platform
    on_cpu = platform == "cpu"
    micro_batch = "auto" if on_cpu else None

    def body(variables, x, *extras):
        with _xla_cpu.running_on(platform):  # the mesh's devices, not the default backend
            return explain_rows(variables, x, *extras)

    def explain_rows(variables, x, *extras):
        net = Network(module, variables, metadata, skip)
        keys = extras[0] if stochastic else None
        labels = extras[int(stochastic)] if labelled else None
        model_inputs = extras[-1] if inputs else {}
        if not stochastic:
            return _explain_traced(net, x, method, labels if labelled else targets_for(x.shape[0]),
                                   None, params, micro_batch, model_inputs, position)

        # one key per item, folded from its dataset index: results do not depend on the batch
        # size, the padding, the device count or which items a --resume skipped
        def one(args):
            xi, ki, li, mi = args
            out = _explain_traced(net, xi[None], method, li[None] if labelled else targets_for(1),
                                  ki, params, None, {k: v[None] for k, v in mi.items()},
                                  position)
            return out[:, 0] if multi else out[0]

        items = (x, keys, labels if labelled else keys, model_inputs)
        if on_cpu:
            out = _xla_cpu.canonical_convolutions(lambda xs: jax.lax.map(one, xs))(items)
        else:
            out = jax.vmap(one)(items)
        return jax.numpy.moveaxis(out, 0, 1) if multi else out

    return sharding.jit_batch_sharded(body, mesh, n_replicated=1,
                                      n_batched=1 + stochastic + labelled + inputs,
                                      batch_axis_out=1 if multi else 0,
                                      compiler_options=compiler_options, per_device=True)


def _explain_traced(network, x, method, target, key, params, micro_batch, inputs=None,
                    position=None):
    """`jxai.explain` on traced ``x`` (inside this module's jit and shard_map), with the
    model's other ``inputs`` (traced rows, by name) and a token ``position``.

    The output activation was handled by the caller (`explain_dataset`), and the batch reader
    has already rejected non-finite items (`jxai.explain` leaves that check to its caller when
    ``x`` is a tracer).
    """
    return explain(network, x, method, target=target, key=key, position=position,
                   strip_output_activation=False, micro_batch=micro_batch, **params,
                   **(inputs or {}))


def _is_multi_target(target) -> bool:
    """Several target classes at once (``(T, B, ...)`` results). ``"all"`` is one target: the
    sum over every output, as in `jxai.explain`."""
    return isinstance(target, (tuple, list))


def _takes_token_ids(network) -> bool:
    """Whether the network's metadata says it reads integer token ids (then the item length is
    set by the first item, not by the metadata's ``input_shape``: any sequence length works)."""
    dtype = (network.metadata or {}).get("input_dtype")
    return dtype is not None and np.issubdtype(np.dtype(dtype), np.integer)


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray | jax.Array)


def _explained_name(network, inputs: Mapping, input_name: str | None) -> str:
    """Which array of a dict of ``inputs`` is explained: ``input_name``, else the one key that is
    not a keyword input of the model's ``__call__`` (`jxai._driver.model_input_names`)."""
    keys = list(inputs)
    if input_name is not None:
        if input_name not in inputs:
            raise TypeError(f"explain_dataset: input_name={input_name!r} is not a key of inputs "
                            f"({', '.join(map(repr, keys))})")
        return input_name
    names, _ = model_input_names(network)
    others = [k for k in keys if k not in names]
    if len(others) == 1:
        return others[0]
    raise TypeError(
        f"explain_dataset: cannot tell which array of inputs ({', '.join(map(repr, keys))}) is "
        f"the one to explain: {'every key' if not others else ', '.join(map(repr, others))} "
        f"{'is a model input' if not others else 'are not keyword inputs of the model'} "
        f"(its keyword inputs: {', '.join(names) or 'none'}); name it with input_name=...")


def _take_model_inputs(network, method, inputs, input_name, params):
    """``(x inputs, {name: model input (N, ...)}, method parameters)`` for `explain_dataset`.

    The model inputs are the entries of a dict of ``inputs`` other than the explained one, and
    the keyword arrays that `jxai._driver.split_model_inputs` calls model inputs (the same rule
    as `jxai.explain`: a keyword the method does not take and the model's ``__call__`` does).
    Each needs one row per item (N rows): a ValueError naming it and both lengths otherwise.
    """
    given = {}
    if isinstance(inputs, Mapping):
        x_name = _explained_name(network, inputs, input_name)
        given = {k: v for k, v in inputs.items() if k != x_name}
        twice = sorted(set(given) & set(params))
        if twice:
            raise TypeError(f"explain_dataset: model input {twice[0]!r} given twice: in inputs "
                            "and as a keyword")
        inputs = inputs[x_name]
        if isinstance(inputs, list | tuple):
            inputs = np.asarray(inputs)
        if not _is_array(inputs) or inputs.ndim < 1:
            raise TypeError(f"explain_dataset: inputs[{x_name!r}] must be an array (N, ...), got "
                            f"{type(inputs).__name__}")
    elif input_name is not None:
        raise TypeError("explain_dataset: input_name= names the explained array of a dict of "
                        "inputs ({'input_ids': ids, 'attention_mask': mask}); inputs is "
                        f"{type(inputs).__name__}")
    candidates = {**params, **given}
    names, _ = model_input_names(network)
    for k, v in candidates.items():
        if k in names and isinstance(v, list | tuple):
            candidates[k] = np.asarray(v)
    # the split reads names (and, for a **kwargs model, "an array with a row per sample"):
    # probe it with each array's first row, not the whole dataset (it would copy it to a device)
    probe = {k: v[:1] if _is_array(v) and v.ndim >= 1 else v for k, v in candidates.items()}
    found, _ = split_model_inputs(network, method, probe, 1, owner="explain_dataset")
    stray = [k for k in given if k not in found]
    if stray:
        raise TypeError(f"explain_dataset: inputs[{stray[0]!r}] is not an input of the model "
                        f"(its keyword inputs: {', '.join(names) or 'none'}); pass method "
                        "parameters as keywords")
    if found:
        try:
            n = len(inputs)
        except TypeError:
            raise TypeError("explain_dataset: model inputs by name need inputs of known length "
                            "(an array, a list or files); got a "
                            f"{type(inputs).__name__}") from None
        if isinstance(inputs, str | os.PathLike) or (
                isinstance(inputs, list | tuple) and inputs
                and all(isinstance(v, str | os.PathLike) for v in inputs)):
            n = len(jio.list_inputs(inputs))
        for k in found:
            rows = np.shape(candidates[k])[0] if np.ndim(candidates[k]) else 0
            if rows != n:
                raise ValueError(
                    f"explain_dataset: model input {k} has {rows} rows (shape "
                    f"{tuple(np.shape(candidates[k]))}) but inputs has {n} items: it needs one "
                    f"row per item, shape ({n}, ...)")
    model_inputs = {k: candidates[k] if isinstance(candidates[k], np.ndarray)
                    else np.asarray(candidates[k]) for k in found}
    return inputs, model_inputs, {k: v for k, v in params.items() if k not in found}


# -- the Python entry point --------------------------------------------------------------------
def explain_dataset(
    network: Any,
    inputs: Any,
    method: str | Callable[[jax.Array], jax.Array],
    target: Any = "max",
    *,
    labels: Any = None,
    batch_size: int = 32,
    preprocess: jio.Preprocess | None = None,
    seed: int = 0,
    devices: list[jax.Device] | None = None,
    workers: int | None = None,
    prefetch: int = 2,
    stochastic: bool | None = None,
    skip: Callable[[str], bool] | None = None,
    strip_output_activation: bool = True,
    autotune: bool = False,
    input_name: str | None = None,
    position: int | None = None,
    **params: Any,
) -> Iterator[Result]:
    """Explain every item of ``inputs`` in batches and yield one `Result` per item, in order.

    Args:
      network: a `jxai.Network` (ignored when ``method`` is a function).
      inputs: an array (N, ...) (one item per row), a folder / glob / array path or a list of
        them (see `jxai.io.list_inputs`), a list of `jxai.io.Item`, or any iterable of arrays or
        of ``(name, array)`` pairs. Consumed lazily. Or a dict of arrays of N rows each, the
        explained one and the model's other inputs: ``{"input_ids": ids, "attention_mask":
        mask}`` (see "Model inputs" below). Integer items stay integers when an ``nn.Embed`` of
        the network reads them (token ids; their length is set by the first item, not by the
        metadata's ``input_shape``); other items become float32.
      method: a `jxai.explain` method name, or any jax-traceable ``fn(x) -> attribution`` on a
        batch.
      target: ``"max"``, an int, ``"all"``, or several targets for every item: a tuple of ints
        or ``jxai.several(i, j)`` (results ``(T, *item_shape)``). Per-item classes: ``labels``.
      labels: optional per-item target classes, indexed by the item's position (overrides
        ``target``).
      batch_size: items per compiled step (per process); rounded up to a multiple of the local
        device count. The last batch is padded to it and the padding dropped.
      preprocess: ``preprocess(raw, is_image=...) -> x`` applied to every raw item (a
        `jxai.io.Preprocess` fits). Default: image files get `image_preprocess_for(network)`
        (the network's input size, channels and value mapping); arrays are used as they are.
      seed: for stochastic methods (SmoothGrad...), item ``i`` uses
        ``fold_in(PRNGKey(seed), i)``, so results do not depend on batching or devices.
      devices: devices to shard the batch over (default: this process's devices, the first
        ``batch_size`` of them when the batch is smaller). Devices of several processes make
        every process step in lockstep with the others (one collective per batch).
      workers: reader threads (default: min(8, CPU count)); prefetch: batches read ahead.
      stochastic: whether the method draws random numbers (default: what the method declared
        at registration, `jxai.MethodSpec.stochastic`; ``False`` for functions).
      skip: ``skip(name) -> True`` passes an item over without reading it (``--resume``);
        indices, labels and random keys still count it, so results do not change.
      strip_output_activation: explain the logits (a final softmax/sigmoid removed), as
        `jxai.explain` does by default.
      autotune: on XLA:CPU, compile one step per `CPU_VARIANTS` entry, time each on the first
        batch and use the fastest (an extra compilation and a few extra batches; results equal
        the default's up to float32 rounding). Ignored on other backends and on a mesh that
        spans several processes (they must all run the same program).
      input_name: with a dict of ``inputs``, the key of the array to explain. Default: the one
        key that is not a keyword input of the model's ``__call__`` (``input_ids`` next to
        ``attention_mask`` and ``token_type_ids``); a TypeError when that is not exactly one.
      position: for a language model's ``(B, T, vocab)`` logits on token ids, the position of the
        target token, one int for every item, as in `jxai.explain` (default: each item's last
        real token, by its ``attention_mask``; ``p < 0`` counts back from it). An item whose
        position falls on its padding, or whose mask has no real token, becomes a failed
        `Result`; a token id or position out of range for every item is a ValueError.
        Per-item position arrays are not taken here.
      **params: method parameters passed to `jxai.explain` (``steps=32``, ``epsilon=0.1``...),
        and the model's other inputs by name (below).

    Model inputs: a keyword the method does not take and the model's ``__call__`` does is an
    input of the model, as in `jxai.explain` (`jxai._driver.split_model_inputs` decides):
    ``explain_dataset(net, ids, "lrp.attn_lrp", attention_mask=mask, token_type_ids=types)``,
    or the same arrays as entries of a dict of ``inputs``. Each needs one row per item (N rows,
    N the number of items; a ValueError naming it and both lengths otherwise; they need
    ``inputs`` of known length) and row ``i`` goes with item ``i``: the arrays are cut into the
    batches with x, padding rows included (the last row repeated, then dropped), sharded over
    the devices like x, and traced (new values compile nothing). With an ``attention_mask``,
    padded tokens get exactly zero relevance. An unknown name is the TypeError `jxai.explain`
    gives (with a did-you-mean). The ``jxai explain`` command takes x only (no model inputs).

    With several processes (``jax.distributed``), process ``p`` of ``P`` explains the items whose
    index ``i`` has ``i % P == p`` and yields only those, on its own devices: it never waits for
    another process, so a process that dies stops no other (`jxai.launch` reports it at the end).

    Yields:
      ``Result(index, name, attribution, error)``; ``attribution`` is numpy with the item's
      shape (``(T, *item_shape)`` for several targets) and ``None`` when ``error`` says why the
      item was skipped.

    Example:
      >>> for r in jxai.explain_dataset(net, "scans/", "lrp.epsilon", batch_size=64):
      ...     np.save(f"out/{r.name}.npy", r.attribution) if r.ok else print(r.error)
    """
    if callable(method) and not isinstance(method, str):
        if isinstance(inputs, Mapping) or input_name is not None or position is not None:
            raise TypeError("explain_dataset: a dict of model inputs, input_name= and position= "
                            "need a jxai method name; a function method receives x only")
        model_inputs = {}
    else:
        inputs, model_inputs, params = _take_model_inputs(network, method, inputs, input_name,
                                                          params)
    if position is not None and not isinstance(position, int | np.integer):
        raise TypeError(f"explain_dataset: position={position!r}: one int for every item "
                        "(per-item positions are not supported here; use jxai.explain)")
    position = None if position is None else int(position)
    mesh = sharding.local_mesh(batch_size) if devices is None else sharding.batch_mesh(devices)
    lockstep = sharding.spans_processes(mesh)  # then every process runs every step
    padded = sharding.padded_batch_size(batch_size, mesh)
    labelled = labels is not None
    if isinstance(target, np.ndarray) and target.ndim == 2 and target.shape[1] == 1:
        target = tuple(target[:, 0].tolist())  # jxai.several(i, j): the tuple form, hashable
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    tune = autotune and on_cpu and not lockstep
    if callable(method) and not isinstance(method, str):
        fn = method

        def build(options):
            return sharding.jit_batch_sharded(lambda x: fn(x), mesh, n_replicated=0,
                                              compiler_options=options)

        def kernels_for(rows):  # nothing known about the function's network
            return cpu.kernels(None)

        variables, expected, stochastic, multi = None, None, False, False
    else:
        if stochastic is None:
            stochastic = get_method(method).stochastic  # declared at registration
        if strip_output_activation:
            network = network.without_output_activation()

        def build(options):
            return _explain_step(network, method, target, params, mesh, stochastic=stochastic,
                                 labelled=labelled, batch=padded, compiler_options=options,
                                 inputs=bool(model_inputs), position=position)

        def kernels_for(rows):  # the choice `jxai.explain` makes, so the results are the same
            return _schedule.kernels_for(network, jax.ShapeDtypeStruct((1, *rows.shape[1:]), rows.dtype))

        variables = jax.device_put(network.variables, sharding.replicated(mesh))
        expected = None if _takes_token_ids(network) else network.input_shape
        multi = _is_multi_target(target) and not labelled

    def steps_for(rows) -> dict:
        """The compiled step(s), by kernel library: every `CPU_VARIANTS` entry to autotune,
        else the one `jxai.cpu.kernels` chooses for the network and item shape."""
        if tune:
            return {name: build(options) for name, options in CPU_VARIANTS.items()}
        if not on_cpu:
            return {"default": build(None)}
        name = kernels_for(rows)
        one = jax.ShapeDtypeStruct((1, *rows.shape[1:]), rows.dtype)
        checkpointed = network is not None and _rematerialised(
            network, one, {k: np.asarray(v[:1]) for k, v in model_inputs.items()})
        return {name: build(_xla_cpu.compiler_options(name, checkpointed))}

    for_images = image_preprocess_for(None if variables is None else network)
    reader = _BatchReader(_as_items(inputs), padded, preprocess, expected, workers, prefetch,
                          image_preprocess=for_images, skip=skip)
    in_sharding = sharding.batch_sharding(mesh)
    base_key = jax.random.PRNGKey(seed)
    fold = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))
    pending = steps = as_ids = token_rows = None
    try:
        while True:
            batch = reader.next()
            if not (sharding.any_process(batch is not _END) if lockstep else batch is not _END):
                break
            if batch is _END:  # other processes still have data: run a dummy step with them
                if reader.dummy is None:
                    raise RuntimeError(
                        f"process {jax.process_index()} ran out of items before reading any, "
                        "but must step in lockstep with the others; give it some inputs")
                batch = _Batch([], reader.dummy, np.zeros(padded, np.int64), 0)
            dispatched = None
            if batch.rows is not None:
                rows = {k: np.asarray(v[batch.indices]) for k, v in model_inputs.items()}
                if as_ids is None:  # integer items: token ids if an nn.Embed reads them
                    as_ids = (variables is not None and np.issubdtype(batch.rows.dtype, np.integer)
                              and _reads_token_ids(network, batch.rows, rows))
                if not as_ids:
                    batch.rows = batch.rows.astype(np.float32, copy=False)
                if labelled:
                    classes = np.asarray([int(labels[i]) for i in batch.indices], np.int32)
                if variables is not None and (as_ids or position is not None):
                    if token_rows is None:  # once: the arguments themselves (raise if wrong)
                        token_rows = _check_token_arguments(network, batch.rows, rows,
                                                            "max" if labelled else target,
                                                            position)
                    if token_rows:  # per item: positions on padding, empty masks -> failed
                        batch.rejected = _token_target_errors(
                            network, batch, rows, position,
                            target, classes if labelled else None)
                args = [sharding.put_batch(batch.rows, in_sharding)]
                if stochastic:
                    keys = np.asarray(fold(base_key, batch.indices.astype(np.uint32)))
                    args.append(sharding.put_batch(keys, in_sharding))
                if labelled:
                    if variables is not None:  # traced in the step: checked here, on the host
                        check_target_range(classes, output_size(network, batch.rows, rows),
                                           "labels", batch.indices)
                    args.append(sharding.put_batch(classes, in_sharding))
                if model_inputs:  # the same rows as x, padding included (the last row again)
                    args.append({k: sharding.put_batch(v, in_sharding) for k, v in rows.items()})
                if variables is not None:
                    args.insert(0, variables)
                if steps is None:  # the item shape is known now
                    steps = steps_for(batch.rows)
                if len(steps) > 1:
                    steps, dispatched = _fastest(steps, args)
                else:
                    dispatched = next(iter(steps.values()))(*args)
            if pending is not None:
                yield from _finish(*pending, multi)
            pending = (batch, dispatched)
        if pending is not None:
            yield from _finish(*pending, multi)
    finally:
        reader.close()


def _check_token_arguments(network, x, inputs: dict, target, position) -> bool:
    """Check ``target`` and ``position`` against the model once (a token id out of the
    vocabulary, a position outside ``-T..T-1``, ``position=`` on a model without a sequence
    output: ValueErrors, as `jxai.explain` gives them), on one row with every token real.
    Returns whether the items need checking one by one (a language model's sequence output,
    where the target position depends on each item's ``attention_mask``)."""
    row = {k: np.ones_like(v[:1]) if k == "attention_mask" else v[:1] for k, v in inputs.items()}
    resolve_target(network, x[:1], target, "logit", position, row)
    shape = sample_output_shape(network, x, row)
    return (np.issubdtype(x.dtype, np.integer) and x.ndim == 2 and len(shape) == 2
            and shape[0] == x.shape[1] and "attention_mask" in inputs)


def _token_target_errors(network, batch: _Batch, inputs: dict, position, target,
                         labels=None) -> dict:
    """``{row: error}`` for the items whose token target cannot be resolved: an
    ``attention_mask`` without a real token, a ``position`` on padding or before the first
    token (`jxai._targets.token_target`; inside the compiled step the mask is traced and
    unchecked). One host check per batch; row by row only when it fails."""
    n = batch.n_good

    def check(rows):
        targets = target if labels is None else labels[rows]
        resolve_target(network, batch.rows[rows], targets, "logit", position,
                       {k: v[rows] for k, v in inputs.items()})

    try:
        check(slice(0, n))
        return {}
    except ValueError:
        pass
    errors = {}
    for k in range(n):
        try:
            check(slice(k, k + 1))
        except ValueError as error:  # the message names "sample 0": the item alone
            text = re.sub(r"\bsample 0\b", "this item", str(error))
            errors[k] = text.replace("attention_mask row 0 ", "its attention_mask ")
    return errors


def _fastest(steps: dict, args: list, rounds: int = 2):
    """``({name: fastest step}, its output on args)``: each step compiled, then timed ``rounds``
    times in turn on the same batch (the minimum counts). A variant that fails to compile (an
    option this jaxlib does not know) is dropped with a warning."""
    times, outputs = {}, {}
    for name, step in steps.items():
        try:
            jax.block_until_ready(step(*args))
        except Exception as error:  # noqa: BLE001 - any compile failure drops the variant
            log.warning("autotune: variant %r failed to compile (%s); skipped", name,
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            continue
        times[name] = []
    if not times:
        raise RuntimeError("autotune: no variant of the step compiled")
    for _ in range(rounds):
        for name in times:
            start = time.perf_counter()
            outputs[name] = jax.block_until_ready(steps[name](*args))
            times[name].append(time.perf_counter() - start)
    best = min(times, key=lambda name: min(times[name]))
    log.info("autotune: %s", ", ".join(
        f"{name} {min(t):.3f} s/batch" + (" (chosen)" if name == best else "")
        for name, t in times.items()))
    return {best: steps[best]}, outputs[best]


def _finish(batch: _Batch, out, multi: bool) -> Iterator[Result]:
    host = None
    if out is not None:
        host = sharding.fetch_local(out, 1 if multi else 0)
    k = 0
    for index, name, error in batch.entries:
        if error is not None:
            yield Result(index, name, None, error)
            continue
        attribution = host[:, k] if multi else host[k]
        k += 1
        if k - 1 in batch.rejected:
            yield Result(index, name, None, batch.rejected[k - 1])
            continue
        yield Result(index, name, np.array(attribution), None)


def _as_items(inputs) -> Iterable[tuple[str, Any]]:
    """Normalise the accepted input kinds to an iterable of (name, Item | array)."""
    if isinstance(inputs, np.ndarray) or isinstance(inputs, jax.Array):
        width = max(6, len(str(len(inputs) - 1)))
        return ((f"{i:0{width}d}", inputs[i]) for i in range(len(inputs)))
    if isinstance(inputs, (str, os.PathLike)) or (
            isinstance(inputs, (list, tuple)) and inputs
            and all(isinstance(s, (str, os.PathLike)) for s in inputs)):
        inputs = jio.list_inputs(inputs)

    def generate():
        for i, entry in enumerate(inputs):
            if isinstance(entry, jio.Item):
                yield entry.name, entry
            elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
                yield entry
            else:
                yield f"{i:06d}", entry

    return generate()


class _BatchReader:
    """Reads, preprocesses and batches items on background threads; ``next()`` gives batches.

    A producer thread walks the items, keeps up to ``workers + batch`` reads in flight on a
    thread pool, resolves them in order, and puts complete batches on a queue of ``prefetch``
    slots. ``close()`` stops it promptly (used on errors, Ctrl-C and early generator exit).
    """

    def __init__(self, items, batch_size, preprocess, expected_shape, workers, prefetch, *,
                 image_preprocess: jio.Preprocess, skip: Callable[[str], bool] | None = None):
        self.skip = skip
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.image_preprocess = image_preprocess
        self.expected = tuple(expected_shape) if expected_shape is not None else None
        self.dummy = None
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1),
                                        thread_name_prefix="jxai-read")
        self._window = (workers or min(8, os.cpu_count() or 1)) + batch_size
        self._thread = threading.Thread(target=self._produce, args=(items,), daemon=True,
                                        name="jxai-batcher")
        self._thread.start()

    # producer side
    def _read(self, entry) -> np.ndarray:
        _, source = entry
        if isinstance(source, jio.Item):
            raw = jio.load_item(source)
            is_image = source.row is None
        else:
            raw, is_image = np.asarray(source), False
        if self.preprocess is not None:
            return self.preprocess(raw, is_image=is_image)
        if is_image:
            return self.image_preprocess(raw)
        raw = np.asarray(raw)  # integers stay integers (token ids); the batch decides later
        return raw.astype(np.int32 if np.issubdtype(raw.dtype, np.integer) else np.float32,
                          copy=False)

    def _produce(self, items) -> None:
        try:
            window: deque[tuple[int, str, Future]] = deque()
            batch = ([], [], [])  # entries, rows, indices
            process, processes = jax.process_index(), jax.process_count()
            for index, entry in enumerate(items):
                if self._stop.is_set():
                    return
                if index % processes != process or (self.skip and self.skip(entry[0])):
                    continue
                window.append((index, entry[0], self._pool.submit(self._read, entry)))
                while len(window) >= self._window:
                    if self._resolve(window.popleft(), *batch):
                        batch = ([], [], [])
            while window:
                if self._resolve(window.popleft(), *batch):
                    batch = ([], [], [])
            if batch[0]:
                self._emit(*batch)
            self._put(_END)
        except BaseException as err:  # surfaced to the consumer, which re-raises it
            self._put(err)

    def _resolve(self, pending, entries, rows, indices) -> bool:
        index, name, future = pending
        try:
            x = future.result()
            if self.expected is None:
                self.expected = x.shape
            if x.shape != self.expected:
                raise jio.InputError(f"shape {x.shape} differs from the model input "
                                     f"{self.expected}; resize it or pass --size/--channels")
            if not np.isfinite(x).all():
                raise jio.InputError(f"{int(np.size(x) - np.isfinite(x).sum())} values are NaN "
                                     "or inf")
            entries.append((index, name, None))
            rows.append(x)
            indices.append(index)
        except Exception as err:  # a bad item never stops the run
            message = str(err) if isinstance(err, jio.InputError) else (
                f"{type(err).__name__}: {err}")
            entries.append((index, name, message))
        if len(rows) == self.batch_size:
            self._emit(entries, rows, indices)
            return True
        return False

    def _emit(self, entries, rows, indices) -> None:
        stacked = padded_indices = None
        if rows:
            stacked = np.stack(rows)
            if not np.issubdtype(stacked.dtype, np.integer):
                stacked = stacked.astype(np.float32, copy=False)
            stacked = sharding.pad_batch(stacked, self.batch_size)
            padded_indices = sharding.pad_batch(np.asarray(indices, np.int64), self.batch_size)
            self.dummy = stacked
        self._put(_Batch(list(entries), stacked, padded_indices, len(rows)))

    def _put(self, value) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return
            except queue.Full:
                continue

    # consumer side
    def next(self):
        while True:
            try:
                value = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return _END
                continue
            if isinstance(value, BaseException):
                raise value
            return value

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._thread.join(timeout=5)


def image_preprocess_for(network, *, size=None, channels=None, mode=None) -> jio.Preprocess:
    """Image preprocessing that fits ``network``: its input size and channels, and one value rule.

    The rule: image files are mapped to [0, 1] by their bit depth (8-bit ÷ 255, 16-bit ÷ 65535;
    floating-point images are used as stored), and that is what the model receives, unless its
    metadata names a keras.applications mode (``caffe``, ``torch`` or ``tf``), which is then
    applied on the 0–255 scale (8-bit values as stored, 16-bit ÷ 257), or ``mean_std`` (a ViT's
    ``(x / 255 − mean) / std``), which is ``tf`` or ``torch`` for their statistics and an error for
    others. The zoo's ``identity``
    and ``unit_scale`` both mean [0, 1]: its image models were trained on [0, 1] images
    (``jxai.models.data``). Explicit arguments (``mode``: a `jxai.io.MODES` name) win.
    """
    shape = network.input_shape if network is not None else None
    if shape is not None and len(shape) == 3:
        size = size or tuple(shape[:2])
        channels = channels or shape[2]
    if mode is None:
        spec = (network.metadata.get("preprocessing") if network is not None else None) or {}
        name = spec.get("name") if isinstance(spec, dict) else spec
        mode = _mean_std_mode(spec) if name == "mean_std" else (
            name if name in _KERAS_MODES else "unit")
    return jio.Preprocess(size=size, channels=channels, mode=mode)


# metadata preprocessing names that are jxai.io modes of their own; every other name -> "unit"
_KERAS_MODES = ("caffe", "torch", "tf")
# (x / 255 − mean) / std with these statistics is exactly a keras.applications mode
_MEAN_STD_MODES = {"tf": ((0.5,) * 3, (0.5,) * 3),
                   "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _mean_std_mode(spec: dict) -> str:
    """The `jxai.io` mode that equals a model's ``mean_std`` normalisation (a ViT's), or a
    ValueError: an image file given other statistics would reach the model unnormalised."""
    mean, std = spec.get("mean", (0.5,) * 3), spec.get("std", (0.5,) * 3)
    for mode, (m, s) in _MEAN_STD_MODES.items():
        if np.allclose(mean, m, atol=1e-6) and np.allclose(std, s, atol=1e-6):
            return mode
    raise ValueError(
        f"the model normalises images with mean={list(mean)}, std={list(std)}, which the image "
        "reader does not apply (it knows mean=std=0.5 and ImageNet's statistics): give prepared "
        ".npy arrays, (x / 255 - mean) / std, instead of image files")
