"""A workaround for XLA:CPU: convolutions inside loop bodies in the layout its fast kernels take.

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
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import numpy as np
from jax import lax
from jax.extend import core as jex_core

__all__ = ["KERNELS", "canonical_convolutions", "compiler_options", "needed", "platform",
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
    "remat",
    "checkpoint",
}


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


def compiler_options(kernels: str | None) -> dict | None:
    """The ``jax.jit(..., compiler_options=)`` that select ``kernels`` (a `KERNELS` name; None:
    XLA's default)."""
    return None if kernels is None else KERNELS[kernels]


def canonical_convolutions(fn):
    """``fn`` with its convolutions (and those of everything it calls) in canonical layout.

    The result has ``fn``'s signature, values and pytree structure; it is meant for the body of
    a loop and is evaluated below every transformation (its custom derivative rules are inlined,
    so differentiate ``fn``, not the result).
    """

    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return wrapped


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
    env = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        params = dict(eqn.params)
        if name == "conv_general_dilated":
            outs = [_canonical_conv(*invals, **params)]
        elif name in _CALLS_TO_INLINE and _inner(params) is not None:
            inner = _inner(params)
            inner_jaxpr, inner_consts = (
                (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
            )
            outs = _eval(inner_jaxpr, inner_consts, invals[len(invals) - len(inner_jaxpr.invars) :])
        else:
            for key in ("jaxpr", "body_jaxpr", "cond_jaxpr"):
                if key in params and hasattr(params[key], "consts"):
                    params[key] = _closed(params[key])
            if "branches" in params:
                params["branches"] = tuple(_closed(b) for b in params["branches"])
            outs = eqn.primitive.bind(*invals, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _inner(params):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in params:
            return params[key]
    return None
