"""Rematerialised blocks made visible to the engine's discovery.

``jax.checkpoint`` (``nn.remat``) traces the wrapped function into a sub-jaxpr: one ``remat``
equation at the top level holds everything the block does, the engine's layer barriers included.
The discovery (`jxai._engine`) reads the top-level equations only — it pairs the
``optimization_barrier`` equations with the recorded layer calls and follows variables from the
input to each layer — so a rematerialised block hid its layers from it (every fact fell back to
"unknown": no embedding fed by the input, no functional activation, no output layer).

`inline_checkpoints` re-traces a closed jaxpr with every ``remat`` equation replaced by the
equations of its body, in place and in order, keeping each equation's name stack (the module
path) prefixed with the enclosing one's. The result computes the same function; only the
discovery reads it (the explanation itself runs the model as written, so the rematerialisation
still saves memory there: rules are custom VJPs attached while the block is traced, and
``jax.checkpoint`` recomputes their forward pass in the backward one like any other operation).
"""

from __future__ import annotations

import contextlib

import jax
from jax._src import source_info_util
from jax.extend import core as jcore

__all__ = ["REMAT_PRIMITIVES", "engine_inlines_checkpoints", "has_checkpoints", "inline_checkpoints"]

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


class _JaxWithInlining:
    """The ``jax`` module as `jxai._engine` sees it, with ``make_jaxpr`` inlining checkpoints."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def make_jaxpr(self, fun, *args, **kwargs):
        traced = self._module.make_jaxpr(fun, *args, **kwargs)
        return lambda *a, **k: inline_checkpoints(traced(*a, **k))


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


def ruled(rule, fn, mode: str, nonnegative_input: bool = False, primal=None, names=((), ())):
    """`jxai._engine._ruled` with ``fn``'s closed-over arrays passed to the custom VJP as inputs
    (see `hoisted`): the same forward value and backward rule, and it works inside
    ``jax.checkpoint``. ``primal`` (a BatchNorm's forward, never inside a transformer block) is
    left as it is."""
    from jxai import _engine
    from jxai.rules import Layer

    def call(params, a):
        view, consts = hoisted(fn, params, a)

        def forward(params, a, consts):
            return view(consts, params, a) if primal is None else primal(a)

        @jax.custom_vjp
        def f(params, a, consts):
            return forward(params, a, consts)

        def f_fwd(params, a, consts):
            out = forward(params, a, consts)
            z = out if primal is None else view(consts, params, a)
            return out, (params, a, out, z, consts)

        def f_bwd(residuals, cotangent):
            params, a, out, z, consts = residuals
            layer = Layer(lambda p, x: view(consts, p, x), params, z, nonnegative_input, *names)
            if mode == "relevance":
                return None, rule.relevance(layer, a, cotangent), None
            if rule.gradient_rule:
                return None, rule.backward(layer, a, cotangent), None
            return None, rule.backward(layer, a, cotangent * out), None

        f.defvjp(f_fwd, f_bwd)
        return f(params, a, consts)

    del _engine
    return call


@contextlib.contextmanager
def engine_inlines_checkpoints():
    """Stopgap until `jxai._engine._discover_cached` calls `inline_checkpoints` on the jaxpr it
    traces: the discovery run inside this context sees through ``nn.remat`` (its cache is
    cleared on entry and exit, so facts found either way are not reused by the other)."""
    from jxai import _engine

    if getattr(_engine, "inline_checkpoints", None) is not None:  # the engine does it already
        yield
        return
    original, original_ruled = _engine.jax, _engine._ruled
    _engine._discover_cached.cache_clear()
    _engine.jax, _engine._ruled = _JaxWithInlining(original), ruled
    try:
        yield
    finally:
        _engine.jax, _engine._ruled = original, original_ruled
        _engine._discover_cached.cache_clear()
