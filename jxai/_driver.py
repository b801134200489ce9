"""`jxai.explain`: one driver for every method, compiled once per (method, static params, shapes).

A method is a function ``fn(ctx, x, target, **params) -> attribution`` registered under a name
(`register_method`). The driver validates the input, parses the target, splits the parameters
into static (hashable) and traced (arrays), and calls a jitted function cached on everything
static. Several targets at once are a `vmap` over the target data inside the same compiled call.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jxai import _xla_cpu, cpu
from jxai._checks import check_size, memo
from jxai._engine import GraphFacts, Plan, discover, run_forward, variables_at
from jxai._targets import Target, parse_target, takes_output_index
from jxai.composites import PRESETS, Composite, composite_for, preset
from jxai.function_model import refuse_rules
from jxai.network import Network, as_network, find_output_activation
from jxai.rules import Layer

__all__ = [
    "Backward",
    "Context",
    "check_params",
    "explain",
    "list_methods",
    "make_explainer",
    "output_size",
    "register_method",
]

METHODS: dict[str, Callable] = {}

# Counts traces of the compiled driver (a test checks that a second call does not retrace).
TRACE_COUNT = [0]


def register_method(name: str, fn: Callable | None = None):
    """Register ``fn(ctx, x, target, **params) -> attribution`` under ``name`` (a decorator)."""

    def decorate(function):
        METHODS[name] = function
        return function

    return decorate(fn) if fn is not None else decorate


def list_methods() -> list[str]:
    """Every registered method name: gradient family, CAMs, LRP presets."""
    _load_methods()
    return sorted(METHODS)


@functools.cache
def _load_methods():
    import importlib
    import pkgutil

    import jxai.methods

    for info in pkgutil.iter_modules(jxai.methods.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"jxai.methods.{info.name}")


# --------------------------------------------------------------------------------------------
# What a method sees
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Backward:
    """Result of one forward pass and one VJP.

    output: the network output. grad: the cotangent at the input (a gradient, or relevance in
    the relevance mode). activations / grads: outputs of the tapped layers and their cotangents.
    explicit_relevance: input relevance of explicit first-layer rules (gradient mode), or None.
    """

    output: Any
    grad: Any
    activations: dict
    grads: dict
    explicit_relevance: Any = None
    mode: str = "gradient"


class Context:
    """The network, the traced layer facts and a PRNG key, as handed to a method inside jit."""

    def __init__(self, network: Network, x_shape: tuple, dtype, key):
        self.network = network
        self.key = key
        self.x_shape = tuple(x_shape)
        self.facts: GraphFacts = discover(network, self.x_shape, dtype)

    @property
    def layers(self):
        return self.facts.layers

    def plan(self, composite: Composite | str | None) -> Plan | None:
        """The composite (or the name of a preset) resolved on this network's layers."""
        if composite is None:
            return None
        refuse_rules(self.network, composite)  # a plain function has no layers for rules
        if isinstance(composite, str):
            composite = preset(composite)
        return composite_for(composite).plan(self.facts)

    def forward(self, x, composite: Composite | None = None, taps=()):
        """``(output, {path: layer output})`` with the composite's rules attached."""
        zeros = self._tap_zeros(taps, x)
        result = run_forward(self.network, x, self.plan(composite), zeros, self._facts_for(x))
        return result.output, {p: result.activations[p] for p in taps}

    def backward(self, x, target: Target, composite: Composite | None = None, taps=()) -> Backward:
        """One forward pass and one VJP seeded by ``target`` (rules of ``composite`` attached)."""
        plan = self.plan(composite)
        facts = self._facts_for(x)
        explicit_paths = tuple(
            path
            for path, rule in (plan.rules if plan else ())
            if plan.mode == "gradient" and getattr(rule, "explicit", False)
        )
        all_taps = tuple(dict.fromkeys((*taps, *explicit_paths)))
        zeros = self._tap_zeros(all_taps, x, facts)
        side = {}

        def f(inputs, tap_values):
            result = run_forward(self.network, inputs, plan, tap_values, facts)
            side["rules"] = {p: (e[0], e[1]) for p, e in result.explicit.items()}
            explicit = {p: (e[2], e[3], e[4]) for p, e in result.explicit.items()}
            activations = {p: result.activations[p] for p in all_taps}
            return result.output, (result.output, activations, explicit)

        _, pullback, (y, activations, explicit) = jax.vjp(f, x, zeros, has_aux=True)
        mode = plan.mode if plan else "gradient"
        if mode == "relevance":
            seed = target.relevance(y)
        else:
            seed = target.cotangent(y)
        if plan is not None and plan.positive_output:
            seed = seed * (y > 0)
        grad, tap_grads = pullback(seed)
        explicit_relevance = None
        for path in explicit_paths:
            rule, fn = side["rules"][path]
            params, a, z = explicit[path]
            relevance_out = z * tap_grads[path]
            relevance_in = rule.relevance(Layer(fn, params, z), a, relevance_out)
            relevance_in = _to_input_space(relevance_in, x, path)
            explicit_relevance = (
                relevance_in if explicit_relevance is None else explicit_relevance + relevance_in
            )
        return Backward(
            y,
            grad,
            {p: activations[p] for p in taps},
            {p: tap_grads[p] for p in taps},
            explicit_relevance,
            mode,
        )

    def relevance(self, x, target: Target, composite: Composite, taps=()) -> tuple[Any, Backward]:
        """LRP: input relevance under ``composite`` (and the `Backward` it came from)."""
        result = self.backward(x, target, composite, taps)
        if result.mode == "relevance":
            relevance = result.grad
        else:
            relevance = x * result.grad
            if result.explicit_relevance is not None:
                relevance = relevance + result.explicit_relevance
        return relevance, result

    def attribute(self, method: str, x, target: Target, **params):
        """Run another registered method under the same trace (for wrappers such as smoothgrad)."""
        return resolve_method(method)(self, x, target, **params)

    # -- helpers ----------------------------------------------------------------------------
    def _facts_for(self, x) -> GraphFacts:
        if tuple(x.shape) == self.x_shape:
            return self.facts
        return discover(self.network, tuple(x.shape), x.dtype)

    def _tap_zeros(self, taps, x, facts=None):
        facts = facts or self._facts_for(x)
        zeros = {}
        for path in taps:
            try:
                layer = facts[path]
            except KeyError:
                known = [layer.path for layer in facts.layers]
                close = difflib.get_close_matches(path, known, n=3)
                raise ValueError(
                    f"no layer {path!r} in {self.network!r}"
                    + (f"; did you mean {', '.join(close)}?" if close else f"; layers: {known}")
                ) from None
            zeros[path] = jnp.zeros(layer.output_shape, x.dtype)
        return zeros


def _to_input_space(relevance, x, path):
    if isinstance(relevance, tuple):
        raise ValueError(f"explicit rule at multi-input layer {path!r} is not supported")
    if relevance.shape == x.shape:
        return relevance
    if relevance.size == x.size:
        return relevance.reshape(x.shape)
    raise ValueError(
        f"layer {path!r} is fed by the input through a reshape of another size "
        f"({relevance.shape} vs input {x.shape}); its first-layer rule cannot be mapped back"
    )


# --------------------------------------------------------------------------------------------
# Method lookup, LRP methods
# --------------------------------------------------------------------------------------------


def resolve_method(method) -> Callable:
    if callable(method) and not isinstance(method, Composite):
        return method
    if isinstance(method, Composite):
        return functools.partial(_lrp_with, method)
    _load_methods()
    if method in METHODS:
        return METHODS[method]
    known = sorted(METHODS)
    close = difflib.get_close_matches(str(method), known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown method {method!r}; {hint}known methods: {', '.join(known)}")


def _lrp_with(composite, ctx, x, target):
    return ctx.relevance(x, target, composite)[0]


def _register_preset(name):
    def lrp(ctx, x, target, **params):
        return ctx.relevance(x, target, preset(name, **params))[0]

    lrp.__name__ = name.replace(".", "_")
    lrp.__doc__ = f"LRP with the composite {name!r} (see jxai.composites.PRESETS)."
    # the preset builder's parameters, so `check_params` sees them as the method's own
    builder = inspect.signature(PRESETS[name]).parameters.values()
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    lrp.__signature__ = inspect.Signature(
        [inspect.Parameter(n, positional) for n in ("ctx", "x", "target")]
        + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in builder]
    )
    register_method(name, lrp)


for _name in PRESETS:
    _register_preset(_name)


@register_method("lrp")
def _lrp(ctx, x, target, *, composite):
    """LRP with a user composite: ``method="lrp", composite=Composite([...])``."""
    return ctx.relevance(x, target, composite_for(composite))[0]


def accepted_params(method, params: dict | None = None) -> list[str] | None:
    """The parameter names ``method`` takes, in signature order; None when it takes any.

    They are the parameters of the method's function after ``(ctx, x, target)`` (a preset's are
    its composite builder's). A wrapper's ``**inner`` forwards the rest to its ``wrapped`` method
    (``params["wrapped"]`` or the default), whose names are added; any other ``**kwargs``, or a
    function without a readable signature, takes anything. Read by `jxai._params`, which also
    gives each parameter's default and annotation (``jxai explain`` types ``--param`` by them).
    """
    from jxai._params import method_parameters

    accepted = method_parameters(method, params)
    return None if accepted is None else list(accepted)


def check_params(method, params: dict, owner: str = "explain", aliases: dict | None = None):
    """A TypeError naming the first parameter ``method`` does not take, and those it does.

    ``aliases`` maps another vocabulary's names to the method's (iNNvestigate's ``augment_by_n``
    -> ``n``): they are accepted too, and listed with the method's own names.
    """
    aliases = aliases or {}
    accepted = accepted_params(method, params)
    if accepted is None:
        return
    for name in params:
        if name not in accepted and aliases.get(name) not in accepted:
            known = accepted + [a for a, n in aliases.items() if n in accepted]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(
                f"{owner}: {method!r} takes no parameter {name!r}; {hint}accepted: "
                + (", ".join(known) if known else "none")
            )


def check_required(method, params: dict, owner: str = "explain"):
    """A TypeError naming the parameters ``method`` needs and ``params`` lacks (``lrp`` needs
    ``composite=``, ``deep_taylor.bounded`` ``low=`` and ``high=``)."""
    from jxai._params import missing_params

    missing = missing_params(method, params)
    if missing:
        needed = ", ".join(f"{name}=..." for name in missing)
        raise TypeError(f"{owner}: {method!r} needs {needed}; pass it as a keyword argument")


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


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


def _split_params(params: dict, static_arrays=()) -> tuple[tuple, dict]:
    """Static (hashable) and traced (arrays) parameters; the names in ``static_arrays`` (a
    method's ``static_arrays`` attribute) are made static `StaticArray`s."""
    static, traced = {}, {}
    for name, value in params.items():
        if name in static_arrays and isinstance(value, jax.Array | np.ndarray | list):
            static[name] = StaticArray(value)
        elif isinstance(value, jax.Array | np.ndarray):
            traced[name] = jnp.asarray(value)
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


def _check_input(x, network: Network):
    if isinstance(x, list | tuple):
        x = np.asarray(x)
    if not isinstance(x, jax.Array | np.ndarray):
        raise TypeError(f"x must be an array (batch first), got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = jnp.asarray(x, jnp.float32)
    expected = network.input_shape
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        if tuple(x.shape) == tuple(expected):
            hint = "add a batch axis: x[None]"
        else:
            hint = f"reshape or resize the input to (batch, {', '.join(map(str, expected))})"
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not fit {network!r}, which expects "
            f"(batch, {', '.join(map(str, expected))}); {hint}"
        )
    if x.ndim < 2:
        raise ValueError(f"x must have a batch axis first, got shape {tuple(x.shape)}")
    check_not_empty(x)
    if isinstance(x, jax.core.Tracer):  # inside the caller's jit: values are not known yet
        return x
    if bool(jnp.all(jnp.isfinite(x))):  # one boolean leaves the device, not the batch
        return jnp.asarray(x)
    finite = np.isfinite(np.asarray(x))
    bad = np.argwhere(~finite)[0]
    raise ValueError(
        f"input contains NaN or inf ({int((~finite).sum())} values, first at index "
        f"{tuple(int(i) for i in bad)}); clean or mask the input before explaining it"
    )


def check_not_empty(x) -> None:
    """A ValueError for a batch without rows (JAX would fail deep inside with a division by
    zero): there is nothing to explain."""
    if x.shape[0] == 0:
        raise ValueError(
            f"empty batch: x has 0 rows (shape {tuple(x.shape)}); pass at least one sample, "
            "batch first (one sample: x[None])"
        )


@functools.lru_cache(maxsize=256)
def _compiled(module, skip, method, static, multi, return_layers, kind, seed, fn, rows, platform,
              mesh, kernels=None):
    """The jitted explanation for everything static (cached), compiled with XLA:CPU's ``kernels``
    (a `jxai._xla_cpu.KERNELS` name; None: XLA's default)."""
    run = _program(module, skip, method, static, multi, return_layers, kind, seed, fn, rows,
                   platform, mesh)

    def traced(*args):
        TRACE_COUNT[0] += 1
        return run(*args)

    return jax.jit(traced, compiler_options=_xla_cpu.compiler_options(kernels))


def _program(module, skip, method, static, multi, return_layers, kind, seed, fn, rows, platform,
             mesh):
    """``run(variables, x, target_data, key, traced)``: the explanation, before ``jit``, traced
    for devices of ``platform``."""
    method_fn = resolve_method(method)
    params = dict(static)

    def explain_rows(network, x, data, key, traced):
        ctx = Context(network, tuple(x.shape), x.dtype, key)
        target = Target(data, kind, seed, fn)
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

    def run(variables, x, target_data, key, traced):
        network = Network(module, variables, skip=skip)

        def one(data):
            if rows is None or x.shape[0] <= rows or x.shape[0] % rows:
                return explain_rows(network, x, data, key, traced)
            return _in_row_groups(explain_rows, network, x, data, key, kind, rows)

        with _xla_cpu.running_on(platform), cpu.region(mesh):
            if multi:
                return jax.vmap(one)(target_data)
            return one(target_data)

    return run


_SHARES: dict = {}


def _shares_work(static_args: tuple, mesh, *args) -> bool:
    """Whether the explanation, in a region over ``mesh``, shares out any work (cached).

    One abstract trace per configuration; see `jxai.cpu.shares_work`."""
    leaves, tree = jax.tree.flatten(args)
    key = (static_args, mesh, tree,
           tuple((tuple(jnp.shape(a)), str(jnp.result_type(a))) for a in leaves))
    return memo(_SHARES, key,
                lambda: cpu.shares_work(_program(*static_args, mesh), mesh, *args))


def _in_row_groups(explain_rows, network, x, data, key, kind, rows):
    """``explain_rows`` on groups of ``rows`` samples, one group after another (`lax.map`).

    In a `jxai.cpu` region the groups are shared out between the CPU devices. The per-sample
    target data (class indices, a cotangent with a batch axis) is cut with the input; group
    ``g`` gets the key ``fold_in(key, g)``. Every output leaf is batch-first.
    """
    groups = x.shape[0] // rows
    per_sample = kind == "index" or (
        kind == "cotangent" and data.ndim >= 1 and data.shape[0] == x.shape[0]
        and data.ndim == len(_output_shape(network, x))
    )

    def group(args):
        xs, ds, k = args
        return explain_rows(network, xs, ds if per_sample else data, k, {})

    @_xla_cpu.for_xla_cpu
    def loop(part):
        return jax.lax.map(group, part)

    cut = lambda a: a.reshape(groups, rows, *a.shape[1:])  # noqa: E731
    keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(groups))
    items = (cut(x), cut(data) if per_sample else jnp.zeros(groups), keys)
    out = cpu.split(loop, items)
    return jax.tree.map(lambda leaf: leaf.reshape(x.shape[0], *leaf.shape[2:]), out)


def _output_shape(network: Network, x) -> tuple:
    return jax.eval_shape(lambda v, x: network.module.apply(v, x), network.variables, x).shape


def output_size(network: Network, x) -> int:
    """How many outputs ``network`` gives per sample on rows shaped like ``x``'s: the flattened
    output size, so the valid target indices are ``0..output_size - 1`` (cached; one abstract
    trace of one row, also when ``x`` is a tracer)."""
    row = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    key = (network.module, network.skip, row.shape, jnp.dtype(row.dtype))
    return memo(_OUTPUT_SIZES, key,
                lambda: int(np.prod(_output_shape(network, row)[1:], dtype=np.int64)))


_OUTPUT_SIZES: dict = {}


def _row_groups(micro_batch, method, x, traced, kind, network=None) -> int | None:
    """Resolve ``explain(..., micro_batch=)``: ``"auto"`` is 1 on an unsharded CPU batch of a
    convolutional ``network``."""
    batch = x.shape[0]
    micro_batch = check_size("explain", "micro_batch", micro_batch)
    if micro_batch is None:
        return None
    if micro_batch != "auto":
        if traced and micro_batch < batch:
            raise ValueError(
                f"micro_batch={micro_batch} cannot cut the array parameters "
                f"{sorted(traced)} into groups of samples; pass micro_batch=None"
            )
        if kind == "callable" and micro_batch < batch:
            raise ValueError("micro_batch cannot be used with a callable target (it sees the "
                             "whole output); pass micro_batch=None")
        return micro_batch
    if not _xla_cpu.needed() or traced or kind == "callable" or batch < 2:
        return None
    if not isinstance(method, str | Composite):  # a user's callable may mix samples
        return None
    if not isinstance(x, jax.core.Tracer) and len(x.sharding.device_set) > 1:
        return None
    if network is not None and not _has_convolutions(network, x):
        return None
    return 1


_CONVOLUTIONS = (nn.Conv, nn.ConvTranspose, nn.ConvLocal)


def _has_convolutions(network: Network, x) -> bool:
    """Whether ``network`` has convolution layers (the per-sample loop pays only for those).

    Matrix products get cheaper per row as the batch grows, and a loop over samples adds a
    step per row: a dense-only network (the tabular MLP, 4096 rows) is 3× faster whole.
    """
    return _convolutions(network, x) is not None


def _convolutions(network: Network, x) -> float | None:
    """The share of ``network``'s convolution work (multiply-adds per sample) in layers of at most
    `jxai.cpu.NARROW_CHANNELS` input and output channels; None without convolutions (cached).

    The trace is the one a one-sample group needs anyway. The work of a layer is its kernel size
    times its output positions (a transposed convolution: its input positions; a locally
    connected layer: its kernel, which has one filter per position).
    """
    # keyed on the module: its variables' values do not matter
    key = (network.module, network.skip, tuple(x.shape[1:]), jnp.dtype(x.dtype))
    return memo(_CONVOLUTION_SHARES, key, lambda: _narrow_share(network, x))


def _narrow_share(network: Network, x) -> float | None:
    facts = discover(network, (1, *x.shape[1:]), x.dtype)
    convolutions = [layer for layer in facts.layers if issubclass(layer.module_type, _CONVOLUTIONS)]
    if not convolutions:
        return None
    total = narrow = 0.0
    for layer in convolutions:
        params = variables_at(network.variables, layer.path).get("params", {})
        kernel = tuple(getattr(params.get("kernel"), "shape", ()))  # none found: no work counted
        positions = (layer.input_shape[1:-1] if issubclass(layer.module_type, nn.ConvTranspose)
                     else () if issubclass(layer.module_type, nn.ConvLocal)  # kernel per position
                     else layer.output_shape[1:-1])
        work = float(np.prod(kernel)) * float(np.prod(positions))
        total += work
        if len(kernel) >= 2 and max(kernel[-2:]) <= cpu.NARROW_CHANNELS:
            narrow += work
    return narrow / total if total else 0.0


_CONVOLUTION_SHARES: dict = {}


def _kernels(network: Network, x) -> str:
    """The XLA:CPU kernel library to compile ``network``'s explanation of ``x`` with
    (`jxai.cpu.kernels` of its narrow share). `jxai.explain_dataset` asks here too, so that its
    steps and in-memory `explain` compile alike and give the same bytes."""
    return cpu.kernels(_convolutions(network, x))


def _composite_of(method, params) -> Composite:
    if isinstance(method, Composite):
        return method
    if method == "lrp":
        return composite_for(params["composite"])
    if method in PRESETS:
        return preset(method, **params)
    raise ValueError(f"return_layers=True needs an LRP method, got {method!r}")


def explain(
    model,
    *args,
    method=None,
    target="max",
    key=None,
    seed: str = "logit",
    return_layers: bool = False,
    strip_output_activation: bool = True,
    micro_batch: int | str | None = "auto",
    **params,
):
    """Explain ``model``'s prediction on ``x`` with ``method``.

    Call as ``explain(network, x, method, ...)`` with a `jxai.Network`, or
    ``explain(module, variables, x, method, ...)`` with a Flax module, or
    ``explain(trees, x, "tree_shap")`` with a `jxai.trees.TreeEnsemble` (`jxai.trees.explain`).

    Args:
      method: a registered name (``jxai.list_methods()``), a `Composite`, or a callable
        ``fn(ctx, x, target, **params)``.
      target: what to explain, as an index into the flattened output of one sample:
        ``"max"`` (per-sample argmax); an int (every sample); a 1-D int array, list or tuple of
        length B (ALWAYS one index per sample, Captum's convention; another length is an error);
        several targets at once with ``jxai.several(i, j, ...)`` (the same T indices for every
        sample, a ``(T, 1)`` array) or a ``(T, B)`` int array, returning ``(T, B, ...)``;
        ``"all"`` (the sum of every output); a float array shaped like the output (the output
        cotangent, e.g. a segmentation mask); or a callable of the output. An index outside
        ``0..N-1`` (N outputs per sample) is a ValueError naming N; negative indices are errors
        too (they do not count from the end). Inside your own ``jit`` a traced index cannot be
        checked: out of range, it selects no output and explains zeros.
      key: a `jax.random` key for stochastic methods (default ``PRNGKey(0)``).
      seed: initial relevance: ``"logit"`` (the target logit; iNNvestigate, Captum) or ``"one"``.
      return_layers: LRP methods only: also return ``{module path: relevance at its output}``.
      strip_output_activation: explain a final softmax/sigmoid `jxai.layers.Activation` at its
        input, the logits (iNNvestigate's ``model_wo_softmax``, Captum's usual practice).
      micro_batch: explain the batch in groups of this many samples, one group after another
        inside the compiled call (``lax.map``); ``None``, or a size that does not divide the
        batch, explains it whole. ``"auto"`` (default) is 1 on CPU for a network with
        convolutions, and ``None`` on accelerators, for dense-only networks, sharded inputs,
        array parameters and callable targets. XLA:CPU's convolutions get slower per sample as the
        batch grows while one sample keeps both cores busy: VGG16 gradient at batch 8, 266 →
        184 ms per image; seed U-Net ``lrp.sequential_preset_a_flat``, 197 → 107. Group ``g``
        of a stochastic method draws from ``fold_in(key, g)``. When the host is split into
        several CPU devices (`jxai.use_cpu_cores`), the groups are spread over them, and so are
        the chunks of IG, SmoothGrad and the other wrappers (`jxai.cpu`).
      **params: method parameters (``epsilon=0.1``, ``steps=64``, ``layer="block5_conv3"``...);
        numbers, strings and tuples are static, arrays are traced.

    Returns:
      The attribution, shaped like ``x`` (CAM methods: see their docs), as a `jax.Array`.

    Raises:
      ValueError: for an empty batch (``x`` with 0 rows: nothing to explain), an input that does
        not fit the network or holds NaN/inf, and a target out of range or of the wrong length.
    """
    from jxai.trees.explain import explain_if_trees  # a TreeEnsemble with tree_shap: jxai.trees

    done = explain_if_trees(model, args, method, target=target, key=key, seed=seed,
                            return_layers=return_layers, **params)
    if done is not NotImplemented:
        return done
    network, x, method = _parse_call(model, args, method)
    x = _check_input(x, network)
    if strip_output_activation:
        network = _logits_network(network, x)
    if isinstance(method, str):  # clear errors for unknown names and parameters, before compiling
        resolve_method(method)
        check_params(method, params)
        check_required(method, params)
    static_arrays = getattr(resolve_method(method), "static_arrays", ())
    static, traced = _split_params(params, static_arrays)
    n_outputs = output_size(network, x) if takes_output_index(target) else None
    target_obj, multi = parse_target(target, x.shape[0], seed, n_outputs)
    if key is None:
        key = jax.random.PRNGKey(0)
    platform = _xla_cpu.platform_of(x)
    with _xla_cpu.running_on(platform):
        rows = _row_groups(micro_batch, method, x, traced, target_obj.kind, network)
    static_args = (
        network.module,
        network.skip,
        method,
        static,
        multi,
        return_layers,
        target_obj.kind,
        target_obj.seed,
        target_obj.fn,
        rows,
        platform,
    )
    args = (network.variables, x, target_obj.data, key, traced)
    mesh = cpu.mesh_for(x)  # several CPU devices: share samples / chunks out between them
    if mesh is not None and not _shares_work(static_args, mesh, *args):
        mesh = None  # nothing to share: one device, not every device repeating the same work
    if mesh is not None:
        variables, rest = cpu.replicate(args[0], mesh), cpu.uncommitted(args[1:], mesh)
        args = (variables, *rest)
    kernels = None
    if platform == "cpu" and not isinstance(x, jax.core.Tracer):  # else the caller's jit decides
        kernels = _kernels(network, x)
    return _compiled(*static_args, mesh, kernels)(*args)


def _logits_network(network: Network, x) -> Network:
    """The network without a final softmax/sigmoid module (found by tracing, so always current).

    The trace is the one the compiled explanation needs anyway (same input shape, cached)."""
    path = find_output_activation(network, tuple(x.shape))
    if path is None:
        return network
    return Network(network.module, network.variables, network.metadata, network.skip | {path})


def make_explainer(model, method, *, target="max", seed: str = "logit", **params) -> Callable:
    """A pure function ``f(variables, x, key=None) -> attribution`` to use inside your own
    `jax.jit`, `jax.vmap` or training loop (rules compile together with your code).

    ``target`` is fixed here: ``"max"``, ``"all"``, an int or a callable of the output. An int
    is checked against the output size when ``f`` is traced; so is the batch (0 rows: a
    ValueError).
    """
    module = model.module if isinstance(model, Network) else model
    skip = model.skip if isinstance(model, Network) else frozenset()
    method_fn = resolve_method(method)

    def f(variables, x, key=None):
        network = Network(module, variables, skip=skip)
        check_not_empty(x)
        n_outputs = output_size(network, x) if takes_output_index(target) else None
        target_obj, _ = parse_target(target, x.shape[0], seed, n_outputs)
        ctx = Context(
            network, tuple(x.shape), x.dtype, jax.random.PRNGKey(0) if key is None else key
        )
        return method_fn(ctx, x, target_obj, **params)

    return f


def _parse_call(model, args, method):
    args = list(args)
    if isinstance(model, Network):
        network = model
    elif callable(model) and not isinstance(model, nn.Module):  # a plain function of a batch
        network = as_network(model)
    else:
        if not args:
            raise TypeError("explain(module, variables, x, method): variables are missing")
        network = as_network(model, args.pop(0))
    if not args:
        raise TypeError("explain needs the input x")
    x = args.pop(0)
    if args:
        if method is not None:
            raise TypeError("method given both positionally and as a keyword")
        method = args.pop(0)
    if args:
        raise TypeError(f"explain got unexpected positional arguments: {args}")
    if method is None:
        raise TypeError("explain needs a method, e.g. explain(network, x, 'lrp.epsilon')")
    return network, x, method
