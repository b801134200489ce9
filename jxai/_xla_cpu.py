"""Workarounds for XLA:CPU loops: convolutions in the layout its fast kernels take, and the
loop-invariant work (kernel flips, weight transforms) done once, before the loop.

XLA:CPU runs a convolution with its fast kernels (YNNPACK / Eigen) only when the dimension
numbers are canonical: input and output ``(batch, *spatial, feature)``, kernel
``(*spatial, in, out)``. Its canonicalisation pass, which inserts the transposes that make any
convolution canonical, visits only the program's entry computation. A non-canonical convolution
inside a ``while`` body (``lax.scan``, ``lax.map``, ``fori_loop``) is left to a generic loop
emitter that is 5–10× slower. JAX's own autodiff produces exactly such convolutions: the input
gradient of ``conv(x, W)`` is a convolution with the kernel's ``in`` and ``out`` axes swapped in
the dimension numbers (``01oi``). So a gradient inside ``lax.scan`` — the chunk loop of
Integrated Gradients and SmoothGrad — ran 6× slower than the same gradient unrolled
(``benchmarks/README_batch.md``; upstream: jax-ml/jax#12868).

`canonical_convolutions(fn)` traces ``fn`` to a jaxpr and re-evaluates it with every
``conv_general_dilated`` rewritten as explicit transposes around a canonical convolution. The
transposes are layout changes only: the numbers are those of the original program. The rewrite
recurses into nested calls and loops; only the CPU backend needs it (`needed`).

It also moves each ``scan``'s loop-invariant work in front of the loop. The input gradient of a
convolution needs its kernel flipped and transposed (``rev`` + ``transpose``), and an LRP rule
its modified weights (``max(W, 0)``, ...): functions of the weights alone, the same in every
step. XLA's own loop-invariant code motion leaves ``rev`` and ``transpose`` in the body (it does
not hoist them on their own), so a per-sample loop over VGG16 flipped and transposed 58 MB of
kernels once per sample (13% of its gradient at batch 8). Hoisted, they run once per call; the
values are the same, computed once instead of once per step. Small arrays stay in the loop
(`HOIST_MIN_ELEMENTS`): there the extra compiled kernel costs more than it saves.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import numpy as np
from jax import lax
from jax.extend import core as jex_core

__all__ = ["KERNELS", "REMAT_OPTIONS", "canonical_convolutions", "compiler_options", "for_xla_cpu", "needed",
           "platform",
           "platform_of", "running_on"]

# XLA:CPU's two kernel libraries, chosen per compilation by its compiler options: YNNPACK fusions
# (XLA's default), or, with YNNPACK's fusion list emptied, Eigen's convolutions and matrix
# products with XLA's own loops around them. The same arithmetic up to float32 rounding.
KERNELS: dict[str, dict | None] = {
    "ynnpack": None,
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
}

_CALLS_TO_INLINE = {
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
}
# ``jax.checkpoint`` equations are bound as they are, not inlined: inlined, their recomputation
# loses its barriers and XLA merges it back into the forward pass (no memory saved). Convolutions
# inside a checkpointed block keep their layout (slower on CPU inside a loop, the same numbers).


# The platform whose devices will run the program being traced, where jxai knows it (the devices
# of the explained array, of explain_dataset's mesh); None: JAX's default backend.
_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("jxai_platform",
                                                                       default=None)


def needed() -> bool:
    """Whether the backend that will run the trace is XLA:CPU (see `running_on`)."""
    return platform() == "cpu"


def platform() -> str:
    """The platform the program being traced will run on: the one named by the innermost
    `running_on`, else JAX's default backend."""
    return _PLATFORM.get() or jax.default_backend()


@contextlib.contextmanager
def running_on(name: str | None):
    """Trace the body of this ``with`` for devices of platform ``name`` (None: no change).

    An array committed to the CPU on a GPU machine is explained on the CPU; the choices made
    while tracing (a loop over samples, the chunk size of IG, this module's rewrite) follow."""
    token = _PLATFORM.set(name or _PLATFORM.get())
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def platform_of(x) -> str:
    """The platform of the devices holding a concrete ``jax.Array`` ``x``; for anything else
    (a NumPy array, a tracer), the platform `platform` reports."""
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        return next(iter(x.sharding.device_set)).platform
    return platform()


# Rematerialisation on XLA:CPU. ``jax.checkpoint`` keeps its recomputed forward pass apart from
# the original one with optimization barriers; XLA:CPU's "cse_barrier_expander" pass removes the
# barriers and the common-subexpression elimination after it merges the recomputation back into
# the forward pass, so every intermediate is kept after all: a checkpointed LLaMA-style model
# (16 layers, batch 16 x 128 tokens) kept 8.4 MB per layer, plain 25 MB, against the 1 MB of its
# residual stream. With the pass disabled the barriers stay and the memory is what remat
# promises (benchmarks/README_transformer.md). Its concurrency-optimised scheduler also runs the
# recomputations early; the memory-minimising one places them where the backward pass needs them.
REMAT_OPTIONS = {
    "xla_disable_hlo_passes": "cse_barrier_expander",
    "xla_cpu_enable_concurrency_optimized_scheduler": False,
}


def compiler_options(kernels: str | None, rematerialised: bool = False) -> dict | None:
    """The ``jax.jit(..., compiler_options=)`` that select ``kernels`` (a `KERNELS` name; None:
    XLA's default) and, for a model with ``jax.checkpoint`` blocks (``rematerialised``), keep
    its rematerialisation (`REMAT_OPTIONS`)."""
    options = dict(KERNELS[kernels] or {}) if kernels is not None else {}
    if rematerialised:
        options.update(REMAT_OPTIONS)
    return options or None


def canonical_convolutions(fn):
    """``fn`` with its convolutions (and those of everything it calls) in canonical layout, and
    the loop-invariant work of its ``scan`` loops (``lax.scan``, ``lax.map``) done before them.

    The result has ``fn``'s signature, values and pytree structure; wrap the function that
    contains the loop (the body alone gets the layout, not the hoisting). It is evaluated below
    every transformation (its custom derivative rules are inlined, so differentiate ``fn``, not
    the result).
    """

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped


def for_xla_cpu(fn):
    """`canonical_convolutions` of ``fn`` when the program being traced is for XLA:CPU
    (`needed`), else ``fn`` itself. Wrap the function that holds the loop."""
    return canonical_convolutions(fn) if needed() else fn


def _canonical_conv(lhs, rhs, *, dimension_numbers, **params):
    """One ``conv_general_dilated`` as transposes around a ``b01f × 01io → b01f`` convolution."""
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    lhs_perm = (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])
    rhs_perm = (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])
    out_perm = (out_spec[0], *out_spec[2:], out_spec[1])
    rank = len(lhs_perm)
    canonical = lax.ConvDimensionNumbers(
        lhs_spec=(0, rank - 1, *range(1, rank - 1)),
        rhs_spec=(rank - 1, rank - 2, *range(rank - 2)),
        out_spec=(0, rank - 1, *range(1, rank - 1)),
    )
    out = lax.conv_general_dilated_p.bind(
        _transpose(lhs, lhs_perm),
        _transpose(rhs, rhs_perm),
        dimension_numbers=canonical,
        **params,
    )
    return _transpose(out, tuple(int(i) for i in np.argsort(out_perm)))


def _transpose(x, perm):
    return x if perm == tuple(range(len(perm))) else lax.transpose(x, perm)


def _closed(closed_jaxpr):
    """A ClosedJaxpr whose convolutions are rewritten (for loop and branch bodies)."""
    avals = [v.aval for v in closed_jaxpr.jaxpr.invars]

    def body(*args):
        return _eval(closed_jaxpr.jaxpr, closed_jaxpr.consts, list(args))

    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    return jax.make_jaxpr(body)(*shapes)


def _eval(jaxpr, consts, args):
    env = dict(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    _run(jaxpr.eqns, env)
    return [_read(env, v) for v in jaxpr.outvars]


def _read(env, v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]


def _run(eqns, env):
    """Evaluate ``eqns`` in order, reading and writing the values of their variables in ``env``."""
    for eqn in eqns:
        outs = _apply(eqn, [_read(env, v) for v in eqn.invars])
        env.update(zip(eqn.outvars, outs, strict=True))


def _apply(eqn, invals) -> list:
    """One equation, rewritten: its outputs as a list."""
    name = eqn.primitive.name
    params = dict(eqn.params)
    if name == "conv_general_dilated":
        return [_canonical_conv(*invals, **params)]
    if name in _CALLS_TO_INLINE and _inner(params) is not None:
        inner = _inner(params)
        inner_jaxpr, inner_consts = (
            (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
        )
        return _eval(inner_jaxpr, inner_consts, invals[len(invals) - len(inner_jaxpr.invars) :])
    if name == "scan":
        return _hoisted_scan(params, invals)
    for key in ("jaxpr", "body_jaxpr", "cond_jaxpr"):
        if key in params and hasattr(params[key], "consts"):
            params[key] = _closed(params[key])
    if "branches" in params:
        params["branches"] = tuple(_closed(b) for b in params["branches"])
    outs = eqn.primitive.bind(*invals, **params)
    return outs if eqn.primitive.multiple_results else [outs]


def _hoisted_scan(params, invals) -> list:
    """A ``scan`` whose body's loop-invariant equations are evaluated here, before the loop.

    An equation is loop-invariant when every input is a loop constant (``num_consts``), a
    literal or the output of another invariant equation. It is hoisted when it is also pure,
    holds no sub-computation, and makes an array of at least `HOIST_MIN_ELEMENTS` elements but
    none larger than its largest input (`_hoistable`): the transforms of large kernels, not the
    broadcasts that make activation-sized constants (those stay in the body, where XLA fuses
    them). The hoisted outputs the body still reads become loop constants.
    """
    n = params["num_consts"]
    body = _closed(params["jaxpr"])  # calls inlined and convolutions rewritten first
    jaxpr = body.jaxpr
    env = dict(zip(jaxpr.constvars, body.consts, strict=True))
    env.update(zip(jaxpr.invars[:n], invals[:n], strict=True))
    invariant = list(env)  # in order: the new loop constants keep a stable order
    known = set(invariant)
    rest = []
    for eqn in jaxpr.eqns:
        if _hoistable(eqn) and all(
            isinstance(v, jex_core.Literal) or v in known for v in eqn.invars
        ):
            env.update(zip(eqn.outvars, _apply(eqn, [_read(env, v) for v in eqn.invars]),
                           strict=True))
            invariant.extend(eqn.outvars)
            known.update(eqn.outvars)
        else:
            rest.append(eqn)
    if len(rest) == len(jaxpr.eqns):
        return _scan_bind(params, body, invals)
    read_later = {v for eqn in rest for v in eqn.invars if not isinstance(v, jex_core.Literal)}
    read_later.update(v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal))
    carried = [v for v in invariant if v in read_later]
    # The remaining equations are already rewritten: they become the new body as they are.
    invars = [*carried, *jaxpr.invars[n:]]
    names = jaxpr.debug_info.with_unknown_names()._replace(arg_names=(None,) * len(invars))
    new_body = jaxpr.replace(constvars=[], invars=invars, eqns=rest, debug_info=names)
    new_params = dict(params, num_consts=len(carried))
    if "linear" in params:
        new_params["linear"] = (False,) * len(carried) + tuple(params["linear"][n:])
    return _scan_bind(new_params, jex_core.ClosedJaxpr(new_body, ()),
                      [env[v] for v in carried] + list(invals[n:]))


def _scan_bind(params, body, invals) -> list:
    return lax.scan_p.bind(*invals, **dict(params, jaxpr=body))


# The parameters through which an equation holds sub-computations (calls, loops, branches).
_SUBCOMPUTATIONS = ("jaxpr", "call_jaxpr", "fun_jaxpr", "body_jaxpr", "cond_jaxpr", "branches")


# Loop-invariant arrays smaller than this stay in the loop. Each hoisted array is one more kernel
# for XLA to compile (10-20 ms: it also copies the array into the loop's layout) and saves one
# pass over it per step. Hoisting everything added 0.3 s of compilation to the U-Net gradient
# (26 kernels) for no measurable run time; from 1 MiB (float32) on, a flip costs milliseconds per
# step (VGG16's 512-channel kernels: 2.4M elements, 2-4 ms each) and pays back in the first call.
HOIST_MIN_ELEMENTS = 2**18


def _hoistable(eqn) -> bool:
    """Pure, no sub-computation, an output of at least `HOIST_MIN_ELEMENTS` elements, and none
    larger than its largest input."""
    if eqn.effects or any(key in eqn.params for key in _SUBCOMPUTATIONS):
        return False

    def size(v):
        return math.prod(getattr(v.aval, "shape", ()))

    largest_input = max((size(v) for v in eqn.invars), default=0)
    largest_output = max((size(v) for v in eqn.outvars), default=0)
    return HOIST_MIN_ELEMENTS <= largest_output <= largest_input


def _inner(params):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in params:
            return params[key]
    return None
