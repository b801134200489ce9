"""The compiled explanation: one ``jax.jit`` per (method, static parameters, shapes), cached.

`split_params` cuts a call's parameters into static ones (hashable: numbers, strings, tuples,
`StaticArray`) and traced ones (arrays). `compiled` returns the jitted function for everything
static, cached, so a second call with new values of the same shapes neither retraces nor
recompiles (`TRACE_COUNT` counts traces). `program` is that function before ``jit``: a
`jxai.Context` per group of samples, the method called on it, the groups and several targets
laid out by the scheduler (`jxai._schedule`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jxai import _schedule, _xla_cpu, cpu
from jxai._checks import memo, unkey
from jxai._targets import Target
from jxai.composites import PRESETS, Composite, composite_for, preset
from jxai.contract import Context, get_method
from jxai.network import Network

__all__ = ["TRACE_COUNT", "StaticArray", "compiled", "program", "shares_work", "split_params"]

# Counts traces of the compiled driver (a test checks that a second call does not retrace).
TRACE_COUNT = [0]


class StaticArray:
    """A host array compared and hashed by value: a parameter the method needs as a concrete
    value (``feature_mask``: its group count sets the program's shapes), compiled in."""

    def __init__(self, value):
        self.value = np.asarray(value)
        self._key = (self.value.shape, str(self.value.dtype), self.value.tobytes())

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def __eq__(self, other):
        return isinstance(other, StaticArray) and self._key == other._key

    def __hash__(self):
        return hash(self._key)


def _array_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(v, jax.Array | np.ndarray) for v in value.values())


def split_params(params: dict, static_arrays=()) -> tuple[tuple, dict]:
    """Static (hashable) and traced (arrays) parameters; the names in ``static_arrays`` (the
    method's `jxai.MethodSpec.static_arrays`) are made static `StaticArray`s."""
    static, traced = {}, {}
    for name, value in params.items():
        if name in static_arrays and isinstance(value, jax.Array | np.ndarray | list):
            static[name] = StaticArray(value)
        elif isinstance(value, jax.Array | np.ndarray):
            traced[name] = jnp.asarray(value)
        elif _array_dict(value):  # {name: array} (fitted patterns): traced, never hashed
            traced[name] = {k: jnp.asarray(v) for k, v in value.items()}
        else:
            try:
                hash(value)
            except TypeError:
                if isinstance(value, list):
                    value = tuple(value)
                else:
                    raise TypeError(
                        f"parameter {name}={value!r} is neither hashable nor an array"
                    ) from None
            static[name] = value
    return tuple(sorted(static.items(), key=lambda item: item[0])), traced


@functools.lru_cache(maxsize=256)
def compiled(module, skip, method, static, multi, return_layers, kind, seed, fn, rows, platform,
             mesh, kernels=None, rematerialised=False):
    """The jitted explanation for everything static (cached), compiled with XLA:CPU's ``kernels``
    (a `jxai._xla_cpu.KERNELS` name; None: XLA's default) and, for a model with checkpointed
    blocks on XLA:CPU (``rematerialised``), the options that keep them (`_xla_cpu.REMAT_OPTIONS`)."""
    run = program(module, skip, method, static, multi, return_layers, kind, seed, fn, rows,
                  platform, mesh)

    def traced(*args):
        TRACE_COUNT[0] += 1
        return run(*args)

    return jax.jit(traced, compiler_options=_xla_cpu.compiler_options(kernels, rematerialised))


def program(module, skip, method, static, multi, return_layers, kind, seed, fn, rows, platform,
            mesh):
    """``run(variables, x, target_data, key, traced, inputs={})``: the explanation, before
    ``jit``, traced for devices of ``platform``; ``rows`` samples at a time (None: the batch
    whole), in a `jxai.cpu` region over ``mesh``. ``inputs``: the model's other inputs
    (``{name: (B, ...) array}``), cut into the same groups of samples as ``x``."""
    module = unkey(module)  # a ModuleKey for a module that does not hash
    method_fn = get_method(method).fn
    params = dict(static)
    pins = kind == "max_at" and not _argmax_in_seed(method)

    def explain_rows(network, x, data, key, traced, inputs=None):
        ctx = Context(network, tuple(x.shape), x.dtype, key, inputs)
        target = Target(data, kind, seed, fn)
        if pins:  # resolved once on x, so that the copies of a wrapper explain the same token
            target = target.pinned(ctx.forward(x)[0])
        return _mask_padding(_explain(ctx, x, target, traced), x, ctx.inputs)

    def _explain(ctx, x, target, traced):
        if return_layers:
            composite = _composite_of(method, params)
            taps = tuple(layer.path for layer in ctx.layers)
            relevance, back = ctx.relevance(x, target, composite, taps)
            per_layer = {
                p: back.grads[p] if back.mode == "relevance" else back.activations[p] * back.grads[p]
                for p in taps
            }
            return relevance, per_layer
        return method_fn(ctx, x, target, **params, **traced)

    def run(variables, x, target_data, key, traced, inputs=None):
        network = Network(module, variables, skip=skip)
        inputs = inputs or {}

        def one(data):
            if rows is None or x.shape[0] <= rows or x.shape[0] % rows:
                return explain_rows(network, x, data, key, traced, inputs)
            return _schedule.in_row_groups(explain_rows, network, x, data, key, kind, rows,
                                           inputs)

        with _xla_cpu.running_on(platform), cpu.region(mesh):
            if multi:
                return jax.vmap(one)(target_data)
            return one(target_data)

    return run


def _argmax_in_seed(method) -> bool:
    """Whether ``method`` makes one backward pass seeded on ``x`` itself (gradient, input ×
    gradient, LRP), where a ``"max_at"`` target may take its argmax inside the seed; any other
    method gets the target resolved on ``x`` first (one more forward pass)."""
    if isinstance(method, Composite):
        return True
    if not isinstance(method, str):
        return False
    return method in ("gradient", "input_t_gradient", "lrp") or get_method(method).family == "lrp"


PADDING_MASK = "attention_mask"


def _mask_padding(result, x, inputs):
    """Token relevance ``(..., B, T)`` times ``attention_mask != 0``: padded tokens get exactly
    zero (most methods give them zero anyway: the model's mask cuts them off; this makes it
    exact for every method). Other results and inputs pass unchanged; a tuple's first element
    (the attribution of ``return_delta`` / ``return_layers``) is masked."""
    mask = inputs.get(PADDING_MASK)
    if mask is None or not jnp.issubdtype(x.dtype, jnp.integer) or mask.shape != x.shape:
        return result
    if isinstance(result, tuple):
        return (_mask_padding(result[0], x, inputs), *result[1:])
    if not hasattr(result, "shape") or tuple(result.shape[-x.ndim:]) != tuple(x.shape):
        return result
    return jnp.where(mask != 0, result, jnp.zeros((), result.dtype))


_SHARES: dict = {}


def shares_work(static_args: tuple, mesh, *args) -> bool:
    """Whether the explanation, in a region over ``mesh``, shares out any work (cached).

    One abstract trace per configuration; see `jxai.cpu.shares_work`."""
    leaves, tree = jax.tree.flatten(args)
    key = (static_args, mesh, tree,
           tuple((tuple(jnp.shape(a)), str(jnp.result_type(a))) for a in leaves))
    return memo(_SHARES, key,
                lambda: cpu.shares_work(program(*static_args, mesh), mesh, *args))


def _composite_of(method, params) -> Composite:
    if isinstance(method, Composite):
        return method
    if method == "lrp":
        return composite_for(params["composite"])
    if method in PRESETS:
        return preset(method, **params)
    raise ValueError(f"return_layers=True needs an LRP method, got {method!r}")
