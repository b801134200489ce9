"""The engine: rules attached to stock Flax layers by interception, one generic custom VJP.

Inside the traced function, `nn.intercept_methods` routes every call of a layer that has a rule
through `_ruled`, a `jax.custom_vjp` whose backward is the rule. Parameters stay where they are:
the parameter tree is never copied or renamed. Two propagation modes exist:

* ``"gradient"`` (default): the cotangent is a gradient and relevance is ``activation ⊙ cotangent``.
  Layers without a rule keep their true Jacobian, which is already the right LRP propagation for
  reshapes, concatenations, max-pooling and residual sums. Rules that are not proportional to the
  input (`Flat`, `WSquare`, `ZBox`) are evaluated explicitly at layers fed by the model input: the
  layer output is tapped (a zero perturbation) and its relevance redistributed after the VJP.
* ``"relevance"``: the cotangent is relevance itself (iNNvestigate's convention). Needed only when
  an explicit rule sits inside the network (``lrp.flat``, ``lrp.w_square``, ``deep_taylor``), where
  relevance on zero activations must survive. Every nonlinearity, pooling and sum must then be a
  layer the engine sees, so that it can pass relevance through.

Flax's functions (``nn.relu(x)``, ``nn.avg_pool``, ``jnp.mean`` over the spatial axes, ``x + y``)
are layers too: `jxai._functions` swaps them while a forward pass is traced, and each call is
handled as its `jxai.layers` module twin under the path ``"<calling module>/<function>_<k>"``.

`discover` traces the forward pass once per (network, input shape) to list the layers in call
order, find those fed directly by the input, pair BatchNorms with the linear layer before them,
and list the operations between layers it could not place (`GraphFacts.unplaced`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jxai._checks import unkey
from jxai._functions import FunctionCall, current_trace, placing
from jxai._inline import has_checkpoints, hoisted, inline_checkpoints
from jxai.adapters import bypassing, is_bypassed
from jxai.kinds import LayerKind, get_kind, kind_of
from jxai.rules import Layer, Rule

if TYPE_CHECKING:  # annotations only: jxai.network calls into the engine
    from jxai.network import Network

# Plan entries that are not rules.
FOLDED = "folded"  # a layer absorbed by a canonizer's rewrite (jxai.canonizers): identity here

# --------------------------------------------------------------------------------------------
# Layer facts
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One call of an intercepted module, in call (graph) order.

    ``path`` is the module path (``"block1/conv1"``), suffixed ``#k`` for the k-th repeated call of
    a shared module. ``fed_by_input``: every input is the model input up to reshapes/transposes.
    ``folds_into``: for a BatchNorm directly after a linear layer, that layer's path.
    """

    path: str
    module_type: type
    kind: str  # its `jxai.kinds.LayerKind` name
    index: int
    input_shape: tuple
    output_shape: tuple
    fed_by_input: bool = False
    folds_into: str | None = None
    is_output: bool = False
    epsilon: float | None = None  # a BatchNorm's epsilon
    activation: str | None = None  # an Activation's function; for a linear layer, the one after it
    nonnegative_input: bool = False  # its input is provably >= 0 (after a ReLU, max/avg pooling...)
    function: str | None = None  # a placed function call ("relu", "avg_pool", "add"), not a module
    output_dtype: Any = None  # the dtype of its output (None: several outputs)

    @property
    def layer_kind(self) -> LayerKind:
        return get_kind(self.kind)

    @property
    def is_linear(self) -> bool:
        return self.layer_kind.linear

    @property
    def is_conv(self) -> bool:
        return self.layer_kind.convolution


@dataclasses.dataclass(frozen=True)
class GraphFacts:
    """The intercepted layers in call order, and what the engine could not place.

    ``unplaced``: ``(operation, module path, relu_like)`` of each operation on the input's data
    path that is neither inside a layer nor a routing op (reshape, concatenation, max...): a
    nonlinearity called through a reference jxai could not swap, ``jnp.sin``, a ``jnp.where``
    gate... The gradient mode propagates them by their gradient; the relevance mode (and, for the
    ReLU-like ones, guided backprop) cannot, and refuses with these names.
    """

    layers: tuple[LayerInfo, ...]
    unplaced: tuple[tuple[str, str, bool], ...] = ()
    unsupported: tuple[
        tuple[str, str], ...
    ] = ()  # (path, class) of parametrised modules without rules
    rematerialised: bool = False  # the forward has jax.checkpoint blocks (nn.remat): see _ruled

    def __getitem__(self, path: str) -> LayerInfo:
        for layer in self.layers:
            if layer.path == path:
                return layer
        raise KeyError(path)


class _Scope:
    """Names the calls of one traced forward pass; says where a function call can be placed.

    A module call is named by its path, then ``path#1``, ``path#2``... for repeated calls of a
    shared module. A placed function call is named after the module it is called from and a count
    per function: ``"block1/relu_0"``, ``"block1/relu_1"``, ``"avg_pool_0"`` in the root module.
    """

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.stack: list[tuple[str, Any, Any]] = []  # (path, module, trace) of running methods

    def _count(self, name: str) -> int:
        count = self.seen.get(name, 0)
        self.seen[name] = count + 1
        return count

    def module_key(self, path: str) -> str:
        count = self._count(path)
        return path if count == 0 else f"{path}#{count}"

    def function_key(self, name: str) -> str:
        parent = self.stack[-1][0]
        base = f"{parent}/{name}" if parent else name
        return f"{base}_{self._count(chr(0) + base)}"

    @contextlib.contextmanager
    def entered(self, path: str, module):
        self.stack.append((path, module, current_trace()))
        try:
            yield
        finally:
            self.stack.pop()

    def takes_calls(self) -> bool:
        """A function called now is placed: it runs in a module's own code, in the module's trace
        (not in a nested ``jax.jit``), and not inside an intercepted module or a layer view."""
        if is_bypassed() or not self.stack:
            return False
        _, module, trace = self.stack[-1]
        return kind_of(type(module)) is None and trace is current_trace()


_SHAPE_OPS = {
    "reshape",
    "transpose",
    "squeeze",
    "expand_dims",
    "convert_element_type",
    "copy",
    "copy_p",
}
_MONOTONE_OPS = {
    "reduce_window_max",
    "reduce_window_sum",
    "reduce_max",
    "reduce_sum",
    "concatenate",
    "pad",
    "add",
    "sqrt",
    "slice",
    "dynamic_slice",
    "gather",
    "broadcast_in_dim",
}
_NONLINEAR_OPS = {
    "max",
    "min",
    "tanh",
    "logistic",
    "exp",
    "custom_jvp_call",
    "erf",
    "log1p",
    "select_n",
}


def discover(network: Network, x_shape: tuple, dtype=jnp.float32, inputs=()) -> GraphFacts:
    """Trace the forward pass once and describe the intercepted layers (cached).

    ``inputs``: the model's other inputs (keyword arguments of its ``__call__``, e.g. an
    ``attention_mask``) as `input_specs` ``((name, shape, dtype), ...)`` or a ``{name: array}``;
    only their shapes and dtypes are traced, never their values."""
    return _discover(
        network.adapter,
        network.module_key,
        _freeze_shapes(network.variables),
        network.skip,
        tuple(x_shape),
        jnp.dtype(dtype),
        input_specs(inputs),
    )


def input_specs(inputs) -> tuple:
    """``((name, shape, dtype), ...)`` sorted by name: the hashable description of the model's
    other inputs (a ``{name: array}``, or such a tuple already)."""
    if not inputs:
        return ()
    if isinstance(inputs, tuple):
        return inputs
    return tuple(sorted((name, tuple(jnp.shape(v)), jnp.dtype(jnp.result_type(v)))
                        for name, v in inputs.items()))


def _freeze_shapes(variables):
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)), variables)


class _ShapeKey:
    """Hashable wrapper of a variables shape tree (for the discovery cache)."""

    def __init__(self, tree):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree)
        self._key = (treedef, tuple((leaf.shape, str(leaf.dtype)) for leaf in leaves))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _ShapeKey) and self._key == other._key


def _discover(adapter, module, shapes, skip, x_shape, dtype, inputs=()):
    return _discover_cached(
        adapter, module, _ShapeKey(shapes), skip, x_shape, dtype, kind_of.version, inputs
    )


class _Recorder:
    """Discovery's site (`jxai.adapters.Site`): marks each layer call with two barriers."""

    def __init__(self, skip):
        self.skip = skip
        self.scope = _Scope()
        self.records: list[dict] = []
        self.unsupported_layers: list[tuple[str, str]] = []

    def entered(self, path: str, module):
        return self.scope.entered(path, module)

    def unsupported(self, path: str, class_name: str):
        self.unsupported_layers.append((path, class_name))

    def layer_call(self, path: str, layer, run, args: tuple):
        key = self.scope.module_key(path)
        module = layer.module
        kind = kind_of(type(module))
        return self._record(
            key,
            type(module),
            lambda marked: run(*marked),
            args,
            kind=kind.name,
            epsilon=layer.attribute("epsilon"),
            activation=kind.activation(module) if kind.activation else None,
        )

    def takes_calls(self) -> bool:
        return self.scope.takes_calls()

    def place(self, call: FunctionCall):
        key = self.scope.function_key(call.name)
        several = isinstance(call.inputs, tuple)
        inputs = call.inputs if several else (call.inputs,)

        def run(marked):
            with bypassing():
                return call.apply(marked if several else marked[0])

        return self._record(
            key,
            call.module_type,
            run,
            inputs,
            kind=kind_of(call.module_type).name,
            activation=call.activation,
            function=call.name,
        )

    def _record(self, key, module_type, run, inputs: tuple, **facts):
        if key in self.skip:
            return inputs[0]
        out = jax.lax.optimization_barrier(run(jax.lax.optimization_barrier(inputs)))
        self.records.append(
            dict(
                path=key,
                module_type=module_type,
                input_shape=tuple(jnp.shape(inputs[0])),
                output_shape=tuple(jnp.shape(out)),
                output_dtype=getattr(out, "dtype", None),
                **facts,
            )
        )
        return out


@functools.lru_cache(maxsize=64)
def _discover_cached(
    adapter, module, shapes_key, skip, x_shape, dtype, kinds_version, inputs=()
) -> GraphFacts:
    module = unkey(module)
    recorder = _Recorder(skip)
    records = recorder.records

    def forward(x, variables, extra):
        with placing(recorder):
            return adapter.apply(module, variables, x, recorder, **extra)

    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes_key.tree)
    extra = {name: jax.ShapeDtypeStruct(shape, dt) for name, shape, dt in inputs}
    try:
        closed = jax.make_jaxpr(forward)(jax.ShapeDtypeStruct(x_shape, dtype), variables, extra)
        rematerialised = has_checkpoints(closed)
        closed = inline_checkpoints(closed)  # nn.remat blocks: their layers read as top-level
    except (TypeError, ValueError) as error:
        given = "".join(f", {name} {shape} ({dt})" for name, shape, dt in inputs)
        raise ValueError(
            f"the forward pass of {type(module).__name__} fails on an input of shape {x_shape} "
            f"({dtype}){given}; check the input rank and shape (batch first). Flax said: {error}"
        ) from error
    jaxpr = closed.jaxpr
    input_var = jaxpr.invars[0]
    producer = {}
    barriers = []
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            producer[v] = eqn
        if eqn.primitive.name == "optimization_barrier":
            barriers.append(eqn)

    def reaches_input(var) -> bool:
        while True:
            if var is input_var:
                return True
            eqn = producer.get(var) if isinstance(var, jcore.Var) else None
            if eqn is None or eqn.primitive.name not in _SHAPE_OPS:
                return False
            var = eqn.invars[0]

    consistent = len(barriers) == 2 * len(records)
    exit_records = {}
    if consistent:
        for i, rec in enumerate(records):
            for v in barriers[2 * i + 1].outvars:
                exit_records[v] = rec

    def nonnegative(var) -> bool:
        if not isinstance(var, jcore.Var):  # a literal (unhashable: not cached)
            return float(getattr(var, "val", -1)) >= 0
        return nonnegative_var(var)

    @functools.cache
    def nonnegative_var(var) -> bool:
        if var in exit_records:
            rec = exit_records[var]
            entry = barriers[2 * records.index(rec)]
            return get_kind(rec["kind"]).nonnegative(
                rec["activation"], lambda: all(nonnegative(v) for v in entry.invars)
            )
        eqn = producer.get(var)
        if eqn is None:
            return False
        name = eqn.primitive.name
        if name == "optimization_barrier":  # an entry barrier: look through it
            return nonnegative(eqn.invars[list(eqn.outvars).index(var)])
        if name == "custom_jvp_call":
            return eqn.params.get("name") in ("relu", "relu6", "sigmoid", "softplus")
        if name == "max":
            return any(
                not isinstance(v, jcore.Var) and float(v.val) >= 0 for v in eqn.invars
            ) or any(nonnegative(v) for v in eqn.invars)
        if name in _SHAPE_OPS or name in _MONOTONE_OPS:
            return all(nonnegative(v) for v in eqn.invars)
        if name in ("div", "mul"):
            return all(nonnegative(v) for v in eqn.invars)
        return False

    out_vars = set(v for v in jaxpr.outvars if isinstance(v, jcore.Var))
    produced_by = {}
    flags = []
    for i, rec in enumerate(records):
        fed = False
        folds_into = None
        is_output = False
        if consistent:
            entry, exit_ = barriers[2 * i], barriers[2 * i + 1]
            fed = all(reaches_input(v) for v in entry.invars)
            for v in exit_.outvars:
                produced_by[v] = rec
                is_output = is_output or v in out_vars
            before = produced_by.get(entry.invars[0]) if len(entry.invars) == 1 else None
            if rec["activation"] is not None and before is not None:
                if get_kind(before["kind"]).linear:
                    before["activation"] = rec["activation"]
            if before is not None and before["kind"] in get_kind(rec["kind"]).folds_into:
                folds_into = before["path"]
        nonneg = consistent and all(nonnegative(v) for v in barriers[2 * i].invars)
        flags.append(
            dict(
                index=i,
                fed_by_input=fed,
                folds_into=folds_into,
                is_output=is_output,
                nonnegative_input=nonneg,
            )
        )
    # functional activations right after a linear layer (nn.relu(nn.Dense(...)(x)))
    if consistent:
        consumers = {}
        for eqn in jaxpr.eqns:
            for v in eqn.invars:
                if isinstance(v, jcore.Var):
                    consumers.setdefault(v, []).append(eqn)
        for i, rec in enumerate(records):
            if rec["activation"] is None and get_kind(rec["kind"]).linear:
                for v in barriers[2 * i + 1].outvars:
                    if any(e.primitive.name in _NONLINEAR_OPS for e in consumers.get(v, ())):
                        rec["activation"] = "functional"
    infos = [LayerInfo(**flag, **rec) for flag, rec in zip(flags, records, strict=True)]
    if consistent:
        unplaced = _unplaced_ops(jaxpr, {input_var}, type(module).__name__)
    else:
        unplaced = [
            (
                "an operation between layers that the engine cannot see (a lifted transform "
                "such as nn.remat or nn.scan around intercepted modules)",
                "",
                False,
            )
        ]
    return GraphFacts(
        tuple(infos), tuple(dict.fromkeys(unplaced)), tuple(dict.fromkeys(recorder.unsupported_layers)),
        rematerialised,
    )


# Operations that move relevance without mixing it: correct in the relevance mode as they are.
_ROUTING_OPS = _SHAPE_OPS | {
    "broadcast_in_dim",
    "concatenate",
    "pad",
    "slice",
    "dynamic_slice",
    "gather",
    "rev",
    "split",
    "reduce_max",
    "reduce_window_max",
    "select_and_gather_add",
    "argmax",
    "argmin",
    "stop_gradient",
    "optimization_barrier",
    "sharding_constraint",
}
# Operations that call a sub-computation: looked into, named by the call when it is not routing.
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _inner_jaxpr(eqn):
    for name in _CALL_PARAMS:
        inner = eqn.params.get(name)
        if inner is not None:
            return getattr(inner, "jaxpr", inner)
    return None


def _is_literal_zero(var) -> bool:
    return not isinstance(var, jcore.Var) and float(getattr(var, "val", 1.0)) == 0.0


def _is_boolean(var) -> bool:
    return getattr(getattr(var, "aval", None), "dtype", None) == jnp.bool_


def _describe(eqn) -> tuple[str, bool]:
    """``(operation, relu_like)`` for an error message."""
    name = eqn.primitive.name
    if name == "max" and any(_is_literal_zero(v) for v in eqn.invars):
        return "max(x, 0)", True
    return name, eqn.params.get("name") in ("relu", "_relu")


def _eqn_path(eqn, root: str) -> str:
    names = str(eqn.source_info.name_stack).split("/")
    if names and names[0] == root:
        names = names[1:]
    return "/".join(n for n in names if n)


def _unplaced_ops(jaxpr, dependent: set, root: str) -> list[tuple[str, str, bool]]:
    """Operations on the input's data path outside the barriers of placed layers that do more
    than route (see `GraphFacts.unplaced`), in program order."""
    found = []
    inside = False
    for eqn in jaxpr.eqns:
        touched = any(isinstance(v, jcore.Var) and v in dependent for v in eqn.invars)
        if touched:  # comparisons carry no relevance: a boolean mask is not on the data path
            dependent.update(v for v in eqn.outvars if not _is_boolean(v))
        if touched and all(_is_boolean(v) for v in eqn.outvars):
            continue
        if eqn.primitive.name == "optimization_barrier":
            inside = not inside
            continue
        if inside or not touched or eqn.primitive.name in _ROUTING_OPS:
            continue
        operation, relu_like = _describe(eqn)
        inner = _inner_jaxpr(eqn)
        if inner is not None:  # a call (a jitted function, a custom derivative): look inside
            offset = len(eqn.invars) - len(inner.invars)
            inner_dependent = {
                iv
                for iv, v in zip(inner.invars, eqn.invars[offset:], strict=True)
                if isinstance(v, jcore.Var) and v in dependent
            }
            inside_call = _unplaced_ops(inner, inner_dependent, root)
            if not inside_call:
                continue
            what, _, inner_relu = inside_call[0]
            called = str(eqn.params.get("name", "")).lstrip("_")  # a jitted function's name
            operation = what if what.startswith(called) else f"{called} ({what})"
            relu_like = relu_like or inner_relu
        found.append((operation, _eqn_path(eqn, root), relu_like))
    return found


# --------------------------------------------------------------------------------------------
# The layer view of a module, and the generic custom VJP
# --------------------------------------------------------------------------------------------


def variables_at(variables: Mapping, path: str) -> dict:
    """The variable collections of the module at ``path`` (``"a/b"``; a ``#k`` suffix is ignored).

    Every adapter keeps its variables as linen-shaped collections, so one reading serves all."""
    from jxai.adapters.linen import ADAPTER

    return ADAPTER.variables_at(variables, path)


def _ruled(
    rule: Rule, fn, mode: str, nonnegative_input: bool = False, primal=None, names=((), ()),
    hoist: bool = False,
):
    """``z = fn(params, a)`` whose VJP is the rule (``mode``: "gradient" or "relevance").

    ``primal(a)``, when given, is the forward value, and ``fn`` only the rule's view of the layer.
    ``names``: the view's kernel-like and bias-like parameter names (`jxai.kinds.LayerKind`).
    ``hoist``: pass every array ``fn`` closes over (an attention mask...) to the custom VJP as an
    input (`jxai._inline.hoisted`): inside ``jax.checkpoint`` a closed-over tracer of the forward
    trace is dead when the backward pass runs. The same numbers; only models with rematerialised
    blocks take this path (one more trace of each layer).
    """

    def call(params, a):
        view, consts = hoisted(fn, params, a) if hoist else (lambda _, p, x: fn(p, x), [])

        def forward(params, a, consts):
            return view(consts, params, a) if primal is None else primal(a)

        @jax.custom_vjp
        def f(params, a, consts):
            return forward(params, a, consts)

        def f_fwd(params, a, consts):  # -> (output, residuals)
            out = forward(params, a, consts)
            z = out if primal is None else view(consts, params, a)
            return out, (params, a, out, z, consts)

        def f_bwd(residuals, cotangent):  # cotangent at the output -> cotangent at a only
            params, a, out, z, consts = residuals
            layer = Layer(lambda p, x: view(consts, p, x), params, z, nonnegative_input, *names)
            if mode == "relevance":
                grad = rule.relevance(layer, a, cotangent)
            elif rule.gradient_rule:
                grad = rule.backward(layer, a, cotangent)
            else:
                grad = rule.backward(layer, a, cotangent * out)
            return None, grad, None

        f.defvjp(f_fwd, f_bwd)
        return f(params, a, consts)

    return call


# --------------------------------------------------------------------------------------------
# The interceptor
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """What happens at each intercepted call: ``{path: Rule | FOLDED}``.

    ``rewrites``: the canonizers' `jxai.canonizers.Rewrite`s (a BatchNorm merged into the linear
    layer before it: the BatchNorm is ``FOLDED``). ``mode``: "gradient" or "relevance".
    Paths name module calls and placed function calls alike (``"block1/relu_0"``).
    Hashable, so it can key compiled functions.
    """

    rules: tuple[tuple[str, Any], ...] = ()
    rewrites: tuple = ()  # jxai.canonizers.Rewrite, at most one per path
    mode: str = "gradient"
    positive_output: bool = False  # explain only the positive part of the output (deep Taylor)
    batchnorm_view: str = "exact"  # or "innvestigate": the rule sees iNNvestigate's fused BN

    @functools.cached_property
    def rule_map(self) -> dict:
        return dict(self.rules)

    @functools.cached_property
    def rewrite_map(self) -> dict:
        return {rewrite.path: rewrite for rewrite in self.rewrites}


def _function_view(call: FunctionCall):
    """``fn(params, a)`` of a placed function call (no parameters): the function itself."""

    def fn(p, a):
        with bypassing():
            return call.apply(a)

    return fn


class _Attach:
    """The site (`jxai.adapters.Site`) of an explanation: applies the plan, taps layer outputs."""

    def __init__(
        self, network: Network, plan: Plan | None, taps: Mapping[str, Any], facts: GraphFacts,
        replace: frozenset = frozenset(),
    ):
        self.adapter = network.adapter
        self.variables = network.variables
        self.skip = network.skip
        self.plan = plan or Plan()
        self.taps = taps
        self.replace = replace
        self.fed_by_input = frozenset(layer.path for layer in facts.layers if layer.fed_by_input)
        self.nonnegative = frozenset(
            layer.path for layer in facts.layers if layer.nonnegative_input
        )
        self.hoist = facts.rematerialised
        self.scope = _Scope()
        self.outputs: dict[str, Any] = {}
        self.explicit: dict[str, tuple] = {}  # path -> (rule, fn, params, a, z)

    def entered(self, path: str, module):
        return self.scope.entered(path, module)

    def unsupported(self, path: str, class_name: str):
        pass  # discovery reported it

    def takes_calls(self) -> bool:
        return self.scope.takes_calls()

    def place(self, call: FunctionCall):
        """A placed function call: like the call of its `jxai.layers` module."""
        key = self.scope.function_key(call.name)
        inputs = call.inputs
        if key in self.skip:
            return self._tap(key, inputs[0] if isinstance(inputs, tuple) else inputs)
        fn = _function_view(call)
        action = self.plan.rule_map.get(key)
        if action is None:
            return self._tap(key, fn({}, inputs))
        with bypassing():  # the engine's own arithmetic is not the model's
            return self._tap(key, self._apply_rule(key, action, fn, {}, inputs))

    def layer_call(self, path: str, layer, run, args: tuple):
        """A call of a layer of a registered kind: skipped, absorbed, ruled or run as it is."""
        key = self.scope.module_key(path)
        if key in self.skip:
            return self._tap(key, args[0])
        action = self.plan.rule_map.get(key)
        if action == FOLDED:
            return self._tap(key, args[0])
        rewrite = self.plan.rewrite_map.get(key)
        if action is None and rewrite is None:
            return self._tap(key, run(*args))
        kind = kind_of(type(layer.module))
        fn, params = kind.view(layer, len(args), batchnorm_view=self.plan.batchnorm_view)
        if rewrite is not None:  # a canonizer's parameter rewrite (jxai.canonizers)
            absorbed = [
                (info, self.adapter.variables_at(self.variables, info.path))
                for info in rewrite.absorbed
            ]
            params = rewrite.canonizer.parameters(params, layer, absorbed)
            if action is None:  # rewritten only: the layer keeps its plain gradient
                return self._tap(key, fn(params, args[0]))
        a = args if len(args) > 1 else args[0]
        primal = None
        if kind.name == "batchnorm" and self.plan.batchnorm_view != "exact":
            primal = run
        names = (kind.kernel, kind.bias)
        return self._tap(key, self._apply_rule(key, action, fn, params, a, primal, names))

    def _apply_rule(self, key, action, fn, params, a, primal=None, names=(("kernel",), ("bias",))):
        if action.explicit and self.plan.mode == "gradient":
            if key not in self.fed_by_input:
                raise ValueError(
                    f"rule {type(action).__name__} at layer {key!r} is not proportional to its "
                    "input and can only be applied to layers fed directly by the model input in "
                    "the gradient mode; use mode='relevance' or assign it to a first layer."
                )
            z = fn(params, jax.lax.stop_gradient(a))
            self.explicit[key] = (_Named(action, names), fn, params, a, z)
            return z
        ruled = _ruled(action, fn, self.plan.mode, key in self.nonnegative, primal, names,
                       self.hoist)
        return ruled(params, a)

    def _tap(self, key, out):
        if key in self.replace:  # the tap's value is the layer's output (an embedding path point)
            out = self.taps[key]
        elif key in self.taps:
            out = jax.lax.add(out, self.taps[key])  # not `+`: that is placed as a sum
        self.outputs[key] = out
        return out


@dataclasses.dataclass(frozen=True)
class _Named:
    """An explicit rule applied after the VJP, given the layer kind's parameter names (the
    `Layer` it receives is built without them)."""

    rule: Rule
    names: tuple

    def relevance(self, layer: Layer, a, relevance):
        kernel, bias = self.names
        return self.rule.relevance(
            dataclasses.replace(layer, kernel_names=kernel, bias_names=bias), a, relevance
        )


@dataclasses.dataclass
class Forward:
    output: Any
    activations: dict
    explicit: dict


def run_forward(network: Network, x, plan: Plan | None, taps: Mapping[str, Any], facts: GraphFacts,
                inputs: Mapping[str, Any] | None = None, replace=frozenset()):
    """The network's forward pass with the plan's rules attached and the given taps added.

    Module calls are intercepted; the functions of `jxai._functions.PLACED_FUNCTIONS` called
    by the model are placed as layers while the pass is traced (and restored afterwards).
    ``inputs``: the model's other keyword inputs (``attention_mask=``...), passed as they are.
    ``replace``: tap paths whose tap value replaces the layer's output instead of being added
    to it (an embedding given by the caller; the layer's own output is then unused).
    """
    attach = _Attach(network, plan, taps, facts, frozenset(replace))
    with placing(attach):
        y = network.adapter.apply(network.module, network.variables, x, attach, **(inputs or {}))
    return Forward(y, attach.outputs, attach.explicit)
