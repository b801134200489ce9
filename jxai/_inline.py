"""Rematerialised blocks made visible to the engine's discovery.

``jax.checkpoint`` (``nn.remat``) traces the wrapped function into a sub-jaxpr: one ``remat``
equation at the top level holds everything the block does, the engine's layer barriers included.
The discovery (`jxai._engine`) reads the top-level equations only — it pairs the
``optimization_barrier`` equations with the recorded layer calls and follows variables from the
input to each layer — so a rematerialised block hid its layers from it (every fact fell back to
"unknown": no embedding fed by the input, no functional activation, no output layer).

The engine calls `inline_checkpoints` on the jaxpr its discovery traces, and, for a model with
such blocks, builds its rule VJPs with `hoisted` functions (see there why).

`inline_checkpoints` re-traces a closed jaxpr with every ``remat`` equation replaced by the
equations of its body, in place and in order, keeping each equation's name stack (the module
path) prefixed with the enclosing one's. The result computes the same function; only the
discovery reads it (the explanation itself runs the model as written, so the rematerialisation
still saves memory there: rules are custom VJPs attached while the block is traced, and
``jax.checkpoint`` recomputes their forward pass in the backward one like any other operation).
"""

from __future__ import annotations

import jax
from jax.extend import core as jcore
from jax.extend import source_info_util

__all__ = ["REMAT_PRIMITIVES", "has_checkpoints", "hoisted", "inline_checkpoints"]

# ``jax.checkpoint``'s primitive: "remat2" in jax 0.4-0.10 ("checkpoint" is its printed name).
REMAT_PRIMITIVES = frozenset({"remat2", "checkpoint", "remat"})


def has_checkpoints(jaxpr) -> bool:
    """Whether a (closed) jaxpr has a ``jax.checkpoint`` equation at its top level."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return any(eqn.primitive.name in REMAT_PRIMITIVES for eqn in jaxpr.eqns)


def _evaluate(jaxpr, consts, args):
    """`jax.core.eval_jaxpr` that opens ``remat`` equations instead of binding them."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name_stack = source_info_util.current_name_stack() + eqn.source_info.name_stack
        with source_info_util.user_context(eqn.source_info.traceback, name_stack=name_stack):
            if eqn.primitive.name in REMAT_PRIMITIVES:
                inner = eqn.params["jaxpr"]
                inner = getattr(inner, "jaxpr", inner)
                inner_consts = getattr(eqn.params["jaxpr"], "consts", ())
                outs = _evaluate(inner, inner_consts, invals)
            else:
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
                if not eqn.primitive.multiple_results:
                    outs = [outs]
        for var, value in zip(eqn.outvars, outs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def inline_checkpoints(closed):
    """The closed jaxpr ``closed`` with every ``jax.checkpoint`` body inlined (recursively).

    Returned unchanged when it has none at its top level (nested ones in other calls, such as a
    ``jax.jit`` inside the model, are left as they are: the discovery looks into those already).
    """
    if not has_checkpoints(closed):
        return closed
    avals = [v.aval for v in closed.jaxpr.invars]

    def flat(*args):
        return _evaluate(closed.jaxpr, closed.consts, args)

    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    out = jax.make_jaxpr(flat)(*specs)
    return out


def hoisted(fn, *example):
    """``(converted, consts)``: ``converted(consts, *args) == fn(*args)`` with every array ``fn``
    closes over (tracers of the trace it was built in included, of any dtype) an explicit input.

    `jax.closure_convert` hoists only values that can carry a tangent, so a boolean attention
    mask stays closed over; under ``jax.checkpoint`` that mask is a tracer of the block's first
    trace, dead by the time a custom VJP's backward pass calls ``fn`` again (an
    UnexpectedTracerError). Hoisting all of them makes them residuals of the custom VJP instead.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*example)
    out_tree = jax.tree.structure(out_shape)

    def converted(consts, *args):
        outs = jax.core.eval_jaxpr(closed.jaxpr, consts, *jax.tree.leaves(args))
        return jax.tree.unflatten(out_tree, outs)

    return converted, list(closed.consts)
