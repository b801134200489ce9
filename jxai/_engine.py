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
  relevance on zero activations must survive. Every nonlinearity must then be a module
  (`jxai.layers.Activation`) so that it can pass relevance through.

`discover` traces the forward pass once per (network, input shape) to list the layers in call
order, find those fed directly by the input, and pair BatchNorms with the linear layer before them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jxai import layers as jlayers
from jxai.network import Network, module_path
from jxai.rules import Layer, Rule

LINEAR_TYPES = (nn.Dense, nn.Conv, nn.ConvTranspose)
POOL_TYPES = (jlayers.AvgPool, jlayers.GlobalAvgPool, jlayers.Sum)
INTERCEPTED = (
    *LINEAR_TYPES,
    nn.BatchNorm,
    jlayers.Activation,
    *POOL_TYPES,
    jlayers.MaxPool,
    jlayers.GlobalMaxPool,
)

# Plan entries that are not rules.
FOLDED = "folded"  # a BatchNorm folded into the linear layer before it: identity here

_bypass = contextvars.ContextVar("jxai_bypass", default=False)


@contextlib.contextmanager
def _bypassing():
    token = _bypass.set(True)
    try:
        yield
    finally:
        _bypass.reset(token)


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
    index: int
    input_shape: tuple
    output_shape: tuple
    fed_by_input: bool = False
    folds_into: str | None = None
    is_output: bool = False
    epsilon: float | None = None  # a BatchNorm's epsilon
    activation: str | None = None  # an Activation's function; for a linear layer, the one after it
    nonnegative_input: bool = False  # its input is provably >= 0 (after a ReLU, max/avg pooling...)

    @property
    def is_linear(self) -> bool:
        return issubclass(self.module_type, LINEAR_TYPES)

    @property
    def is_conv(self) -> bool:
        return issubclass(self.module_type, nn.Conv | nn.ConvTranspose)


@dataclasses.dataclass(frozen=True)
class GraphFacts:
    layers: tuple[LayerInfo, ...]
    functional_nonlinearity: bool  # a relu/tanh/... applied outside any module
    unsupported: tuple[
        tuple[str, str], ...
    ] = ()  # (path, class) of parametrised modules without rules

    def __getitem__(self, path: str) -> LayerInfo:
        for layer in self.layers:
            if layer.path == path:
                return layer
        raise KeyError(path)


class _CallCounter:
    """Names the calls of intercepted modules: ``path``, then ``path#1``, ``path#2``..."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def key(self, module: nn.Module) -> str:
        path = module_path(module)
        count = self.seen.get(path, 0)
        self.seen[path] = count + 1
        return path if count == 0 else f"{path}#{count}"


def _owns_params(module: nn.Module) -> bool:
    """Whether the module holds parameter arrays itself (not only through submodules)."""
    try:
        params = module.variables.get("params", {})
    except Exception:  # an unbound or uninitialised module holds nothing
        return False
    return any(not isinstance(value, Mapping) for value in params.values())


def _is_intercepted(context) -> bool:
    return (
        context.method_name == "__call__"
        and isinstance(context.module, INTERCEPTED)
        and not _bypass.get()
    )


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
_NONNEGATIVE_ACTIVATIONS = {
    "relu",
    "relu6",
    "sigmoid",
    "softmax",
    "softplus",
    "exponential",
    "hard_sigmoid",
    "hard_sigmoid_keras2",
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


def _activation_name(module) -> str | None:
    if not isinstance(module, jlayers.Activation):
        return None
    plain = not module.alpha and module.max_value is None and module.threshold == 0.0
    return module.function if (module.function != "relu" or plain) else "relu_modified"


def discover(network: Network, x_shape: tuple, dtype=jnp.float32) -> GraphFacts:
    """Trace the forward pass once and describe the intercepted layers (cached)."""
    return _discover(
        network.module,
        _freeze_shapes(network.variables),
        network.skip,
        tuple(x_shape),
        jnp.dtype(dtype),
    )


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


def _discover(module, shapes, skip, x_shape, dtype):
    return _discover_cached(module, _ShapeKey(shapes), skip, x_shape, dtype)


@functools.lru_cache(maxsize=64)
def _discover_cached(module, shapes_key, skip, x_shape, dtype) -> GraphFacts:
    records: list[dict] = []
    unsupported: list[tuple[str, str]] = []
    counter = _CallCounter()

    def interceptor(next_fun, args, kwargs, context):
        if not _is_intercepted(context):
            if context.method_name == "__call__" and _owns_params(context.module):
                unsupported.append((module_path(context.module), type(context.module).__name__))
            return next_fun(*args, **kwargs)
        key = counter.key(context.module)
        if key in skip:
            return args[0]
        marked = jax.lax.optimization_barrier(tuple(args))
        out = next_fun(*marked, **kwargs)
        out = jax.lax.optimization_barrier(out)
        records.append(
            dict(
                path=key,
                module_type=type(context.module),
                input_shape=tuple(jnp.shape(args[0])),
                output_shape=tuple(jnp.shape(out)),
                epsilon=getattr(context.module, "epsilon", None),
                activation=_activation_name(context.module),
            )
        )
        return out

    def forward(x, variables):
        with nn.intercept_methods(interceptor):
            return module.apply(variables, x)

    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes_key.tree)
    try:
        closed = jax.make_jaxpr(forward)(jax.ShapeDtypeStruct(x_shape, dtype), variables)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the forward pass of {type(module).__name__} fails on an input of shape {x_shape} "
            f"({dtype}); check the input rank and shape (batch first). Flax said: {error}"
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

    @functools.cache
    def nonnegative(var) -> bool:
        if not isinstance(var, jcore.Var):
            return float(getattr(var, "val", -1)) >= 0
        if var in exit_records:
            rec = exit_records[var]
            if issubclass(rec["module_type"], jlayers.Activation):
                return rec["activation"] in _NONNEGATIVE_ACTIVATIONS
            return issubclass(
                rec["module_type"], POOL_TYPES + (jlayers.MaxPool, jlayers.GlobalMaxPool)
            ) and all(nonnegative(v) for v in barriers[2 * records.index(rec)].invars)
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
            if rec["activation"] is not None and len(entry.invars) == 1:
                before = produced_by.get(entry.invars[0])
                if before is not None and issubclass(before["module_type"], LINEAR_TYPES):
                    before["activation"] = rec["activation"]
            if issubclass(rec["module_type"], nn.BatchNorm) and len(entry.invars) == 1:
                before = produced_by.get(entry.invars[0])
                if before is not None and issubclass(before["module_type"], LINEAR_TYPES):
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
            if rec["activation"] is None and issubclass(rec["module_type"], LINEAR_TYPES):
                for v in barriers[2 * i + 1].outvars:
                    if any(e.primitive.name in _NONLINEAR_OPS for e in consumers.get(v, ())):
                        rec["activation"] = "functional"
    infos = [LayerInfo(**flag, **rec) for flag, rec in zip(flags, records, strict=True)]

    # Elementwise nonlinearities outside modules (a functional nn.relu): matter in relevance mode.
    functional = False
    if consistent:
        inside = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "optimization_barrier":
                inside ^= 1
            elif not inside and eqn.primitive.name in _NONLINEAR_OPS:
                functional = True
    return GraphFacts(tuple(infos), functional, tuple(dict.fromkeys(unsupported)))


# --------------------------------------------------------------------------------------------
# The layer view of a module, and the generic custom VJP
# --------------------------------------------------------------------------------------------


def _bare(module: nn.Module, **changes) -> nn.Module:
    return module.clone(parent=None, **changes)


def _linear_view(module: nn.Module) -> tuple[Any, Any]:
    """``(fn, params)`` of a linear module: ``fn(params, a) = layer_without_bias(a) + bias``."""
    params = dict(module.variables.get("params", {}))
    bare = _bare(module, use_bias=False)

    def fn(p, a):
        with _bypassing():
            z = bare.apply({"params": {"kernel": p["kernel"]}}, a)
        return z + p["bias"] if "bias" in p else z

    return fn, params


def _batchnorm_affine(variables: Mapping, epsilon: float) -> dict:
    """Inference-mode BatchNorm variables as the diagonal affine map ``a·w + b``."""
    stats = variables["batch_stats"]
    params = variables.get("params", {})
    scale = params.get("scale", jnp.ones_like(stats["mean"]))
    offset = params.get("bias", jnp.zeros_like(stats["mean"]))
    w = scale / jnp.sqrt(stats["var"] + epsilon)
    return {"kernel": w, "bias": offset - stats["mean"] * w}


def _batchnorm_affine_innvestigate(variables: Mapping, epsilon: float) -> dict:
    """iNNvestigate 2.1.2's fused BatchNorm: ``k = γ/√(var²+ε)``, ``b = β − mean/√(var²+ε)``."""
    stats = variables["batch_stats"]
    params = variables.get("params", {})
    scale = params.get("scale", jnp.ones_like(stats["mean"]))
    offset = params.get("bias", jnp.zeros_like(stats["mean"]))
    root = jnp.sqrt(stats["var"] ** 2 + epsilon)
    return {"kernel": scale / root, "bias": offset - stats["mean"] / root}


def _batchnorm_view(module: nn.BatchNorm, innvestigate: bool = False) -> tuple[Any, Any]:
    axis = module.axis if isinstance(module.axis, int) else module.axis[0]

    def fn(p, a):
        shape = [1] * a.ndim
        shape[axis] = -1
        return a * p["kernel"].reshape(shape) + p["bias"].reshape(shape)

    affine = _batchnorm_affine_innvestigate if innvestigate else _batchnorm_affine
    return fn, affine(module.variables, module.epsilon)


def _parameter_free_view(module: nn.Module, multi_input: bool) -> tuple[Any, Any]:
    bare = _bare(module)

    def fn(p, a):
        with _bypassing():
            return bare.apply({}, *a) if multi_input else bare.apply({}, a)

    return fn, {}


def layer_view(
    module: nn.Module, n_inputs: int = 1, batchnorm_view: str = "exact"
) -> tuple[Any, Any]:
    if isinstance(module, LINEAR_TYPES):
        return _linear_view(module)
    if isinstance(module, nn.BatchNorm):
        return _batchnorm_view(module, innvestigate=batchnorm_view == "innvestigate")
    return _parameter_free_view(module, multi_input=n_inputs > 1)


def fold_batchnorm(
    linear_params: Mapping, bn_variables: Mapping, epsilon: float, out_axis: int = -1
) -> dict:
    """Fold an inference-mode BatchNorm into the linear layer before it (a pure parameter rewrite).

    With ``s = γ / √(var + ε)``: ``W' = W·s`` (per output channel) and ``b' = (b − mean)·s + β``.
    """
    bn = _batchnorm_affine(bn_variables, epsilon)
    kernel = linear_params["kernel"]
    s = bn["kernel"]
    shape = [1] * kernel.ndim
    shape[out_axis] = -1
    bias = linear_params.get("bias", jnp.zeros_like(s))
    return {"kernel": kernel * s.reshape(shape), "bias": bias * s + bn["bias"]}


def variables_at(variables: Mapping, path: str) -> dict:
    """The variable collections of the module at ``path`` (``"a/b"``; a ``#k`` suffix is ignored)."""
    names = [n for n in path.split("#")[0].split("/") if n]
    found = {}
    for collection, tree in variables.items():
        node = tree
        for name in names:
            if not isinstance(node, Mapping) or name not in node:
                node = None
                break
            node = node[name]
        if node is not None:
            found[collection] = node
    return found


def _ruled(rule: Rule, fn, mode: str, nonnegative_input: bool = False, primal=None):
    """``z = fn(params, a)`` whose VJP is the rule (``mode``: "gradient" or "relevance").

    ``primal(a)``, when given, is the forward value, and ``fn`` only the rule's view of the layer.
    """

    def forward(params, a):
        return fn(params, a) if primal is None else primal(a)

    @jax.custom_vjp
    def f(params, a):
        return forward(params, a)

    def f_fwd(params, a):  # (params, a) -> (output, residuals)
        out = forward(params, a)
        z = out if primal is None else fn(params, a)
        return out, (params, a, out, z)

    def f_bwd(residuals, cotangent):  # cotangent at the output -> (None, cotangent at a)
        params, a, out, z = residuals
        layer = Layer(fn, params, z, nonnegative_input)
        if mode == "relevance":
            return None, rule.relevance(layer, a, cotangent)
        if rule.gradient_rule:
            return None, rule.backward(layer, a, cotangent)
        return None, rule.backward(layer, a, cotangent * out)

    f.defvjp(f_fwd, f_bwd)
    return f


# --------------------------------------------------------------------------------------------
# The interceptor
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """What happens at each intercepted call: ``{path: Rule | FOLDED}``.

    ``folded``: linear path -> BatchNorm path folded into it. ``mode``: "gradient" or "relevance".
    Hashable, so it can key compiled functions.
    """

    rules: tuple[tuple[str, Any], ...] = ()
    folded: tuple[tuple[str, tuple[str, float]], ...] = ()  # linear -> (batchnorm, its epsilon)
    mode: str = "gradient"
    relu_rule: Any = None  # applied to every jax.nn.relu call (guided backprop, deconvnet)
    positive_output: bool = False  # explain only the positive part of the output (deep Taylor)
    batchnorm_view: str = "exact"  # or "innvestigate": the rule sees iNNvestigate's fused BN

    @functools.cached_property
    def rule_map(self) -> dict:
        return dict(self.rules)

    @functools.cached_property
    def fold_map(self) -> dict:
        return dict(self.folded)


class _Attach:
    """The interceptor used during an explanation: applies the plan, taps layer outputs."""

    def __init__(
        self, network: Network, plan: Plan | None, taps: Mapping[str, Any], facts: GraphFacts
    ):
        self.variables = network.variables
        self.skip = network.skip
        self.plan = plan or Plan()
        self.taps = taps
        self.fed_by_input = frozenset(layer.path for layer in facts.layers if layer.fed_by_input)
        self.nonnegative = frozenset(
            layer.path for layer in facts.layers if layer.nonnegative_input
        )
        self.counter = _CallCounter()
        self.outputs: dict[str, Any] = {}
        self.explicit: dict[str, tuple] = {}  # path -> (rule, fn, params, a, z)

    def __call__(self, next_fun, args, kwargs, context):
        if not _is_intercepted(context):
            return next_fun(*args, **kwargs)
        module = context.module
        key = self.counter.key(module)
        if key in self.skip:
            return self._tap(key, args[0])
        action = self.plan.rule_map.get(key)
        if action == FOLDED:
            return self._tap(key, args[0])
        if action is None and key not in self.plan.fold_map:
            return self._tap(key, next_fun(*args, **kwargs))
        fn, params = layer_view(module, len(args), self.plan.batchnorm_view)
        if key in self.plan.fold_map:
            bn_path, epsilon = self.plan.fold_map[key]
            out_axis = (
                -2 if isinstance(module, nn.ConvTranspose) and module.transpose_kernel else -1
            )
            params = fold_batchnorm(
                params, variables_at(self.variables, bn_path), epsilon, out_axis
            )
            if action is None:  # folded only: the folded layer keeps its plain gradient
                return self._tap(key, fn(params, args[0]))
        a = args if len(args) > 1 else args[0]
        if action.explicit and self.plan.mode == "gradient":
            if key not in self.fed_by_input:
                raise ValueError(
                    f"rule {type(action).__name__} at layer {key!r} is not proportional to its "
                    "input and can only be applied to layers fed directly by the model input in "
                    "the gradient mode; use mode='relevance' (all activations must then be "
                    "jxai.layers.Activation modules) or assign it to a first layer."
                )
            z = fn(params, jax.lax.stop_gradient(a))
            self.explicit[key] = (action, fn, params, a, z)
            return self._tap(key, z)
        primal = None
        if isinstance(module, nn.BatchNorm) and self.plan.batchnorm_view != "exact":
            primal = functools.partial(next_fun, **kwargs)
        ruled = _ruled(action, fn, self.plan.mode, key in self.nonnegative, primal)
        return self._tap(key, ruled(params, a))

    def _tap(self, key, out):
        if key in self.taps:
            out = out + self.taps[key]
        self.outputs[key] = out
        return out


@dataclasses.dataclass
class Forward:
    output: Any
    activations: dict
    explicit: dict


def run_forward(network: Network, x, plan: Plan | None, taps: Mapping[str, Any], facts: GraphFacts):
    """The network's forward pass with the plan's rules attached and the given taps added."""
    attach = _Attach(network, plan, taps, facts)
    relu_rule = plan.relu_rule if plan is not None else None
    with nn.intercept_methods(attach), _relu_replaced(relu_rule):
        y = network.module.apply(network.variables, x)
    return Forward(y, attach.outputs, attach.explicit)


_RELU_HOMES = ("jax.nn", "flax.linen", "flax.linen.activation")


@contextlib.contextmanager
def _relu_replaced(rule):
    """Route every ``relu`` call made while tracing through ``rule`` (trace time only).

    Flax expresses ReLU as a function, so a guided-backprop rule cannot attach to a module; the
    function is swapped in its public homes while the forward pass is traced, then restored.
    """
    if rule is None:
        yield
        return
    import importlib

    homes = [importlib.import_module(name) for name in _RELU_HOMES]
    original = jax.nn.relu

    def relu(x):
        return _ruled(rule, lambda params, a: original(a), "gradient")({}, x)

    saved = [(home, home.relu) for home in homes]
    for home in homes:
        home.relu = relu
    try:
        yield
    finally:
        for home, function in saved:
            home.relu = function
