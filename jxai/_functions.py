"""Function calls placed as layers: ``nn.relu(x)``, ``nn.avg_pool(...)``, ``jnp.mean``, ``x + y``.

Flax writes activations, pooling and residual sums as plain functions, which `nn.intercept_methods`
never sees. While the engine traces a forward pass, the public homes of those functions
(``jax.nn.relu``, ``flax.linen.relu``, ``flax.linen.avg_pool``, ``jax.numpy.mean``, the tracers'
``+`` ..., and ``flax.nnx.relu``, ``flax.nnx.avg_pool`` ... once NNX is imported) are swapped for
wrappers. A wrapper asks the engine's *site* (the object tracing this
forward pass, in this thread) whether it takes the call; if so it describes the call as a
`FunctionCall` with the `jxai.layers` module it is equivalent to (``nn.relu`` is
``Activation("relu")``, ``nn.avg_pool`` is ``AvgPool``, a mean over the spatial axes is
``GlobalAvgPool``, ``x + y`` of two activations is ``Sum``), and the engine treats it exactly like
that module: discovery lists it, composites give it a rule, the relevance mode passes relevance
through it.

The swap is process-wide but inert elsewhere: wrappers only act where a site is active in the
calling thread (a context variable), the functions are installed while any thread traces and
restored when the last one finishes (also when tracing raises), and the user's model is never
touched.

References saved before the swap are placed too where jxai can see them: a module's own attribute
whose value *is* one of those functions (Flax's ResNet example keeps ``act: Callable = nn.relu``
as a dataclass field and calls ``self.act(x)``; an NNX module sets ``self.act = nnx.relu``), or a
``functools.partial`` of one (``partial(nn.leaky_relu, negative_slope=0.2)``). While a method
of that module runs in a trace, the framework adapter (`jxai.adapters`) swaps the attribute for
the wrapper with `references_placed` and puts the original back when the method returns or
raises. References jxai cannot see (a closure, a module-level global bound at import, a call
inside the user's own ``jax.jit``) are not placed; discovery finds them in the jaxpr and the
modes that need them refuse with the operation's name and module path.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import operator
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
from jax._src import core as jax_core

from jxai import layers as jlayers
from jxai import transformer

__all__ = ["FunctionCall", "PLACED_FUNCTIONS", "placed_reference", "placing", "references_placed"]


@dataclasses.dataclass(frozen=True)
class FunctionCall:
    """One call of a placed function, as the engine sees a module call.

    ``name``: the function as written (``"relu"``, ``"avg_pool"``, ``"mean"``, ``"add"``);
    ``module_type``: the `jxai.layers` module it is equivalent to; ``activation``: for an
    `Activation`, its `jxai.layers.ACTIVATIONS` name; ``inputs``: the array (a tuple for a sum);
    ``apply(inputs)``: the original function with its other arguments bound.
    """

    name: str
    module_type: type
    inputs: Any
    apply: Callable[[Any], Any]
    activation: str | None = None


def _is_array(value) -> bool:
    return isinstance(value, jax.Array)


def _activation(name: str | Callable[[tuple, dict], str]):
    """Placement of an elementwise activation ``f(x, *options)``."""

    def place(function, original, args, kwargs):
        if not args or not _is_array(args[0]):
            return None
        rest = args[1:]
        activation = name if isinstance(name, str) else name(rest, kwargs)
        return FunctionCall(
            function,
            jlayers.Activation,
            args[0],
            lambda a: original(a, *rest, **kwargs),
            activation,
        )

    return place


def _gelu_name(rest, kwargs):
    approximate = kwargs.get("approximate", rest[0] if rest else True)
    return "gelu_tanh" if approximate else "gelu"


def _is_zero(value) -> bool:
    """A concrete scalar zero (``0``, ``0.0``, a NumPy or JAX scalar), never a traced value."""
    if isinstance(value, jax_core.Tracer | bool) or getattr(value, "shape", ()) != ():
        return False
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _maximum(function, original, args, kwargs):
    """``jnp.maximum(x, 0)`` (either order) is a ReLU; any other maximum is not placed."""
    if len(args) != 2 or kwargs:
        return None
    first, second = args
    if _is_array(first) and _is_zero(second):
        return FunctionCall(
            function, jlayers.Activation, first, lambda a: original(a, second), "relu"
        )
    if _is_array(second) and _is_zero(first):
        return FunctionCall(
            function, jlayers.Activation, second, lambda a: original(first, a), "relu"
        )
    return None


def _pool(module_type):
    """``nn.avg_pool`` / ``nn.max_pool(inputs, window_shape, strides, padding, ...)``."""

    def place(function, original, args, kwargs):
        if not args or not _is_array(args[0]):
            return None
        rest = args[1:]
        return FunctionCall(function, module_type, args[0], lambda a: original(a, *rest, **kwargs))

    return place


def _mean(function, original, args, kwargs):
    """``jnp.mean(x, axis=..., keepdims=...)`` over exactly the axes between batch and channel."""
    if not args or not _is_array(args[0]) or len(args) > 2 or set(kwargs) - {"axis", "keepdims"}:
        return None
    x = args[0]
    axis = args[1] if len(args) > 1 else kwargs.get("axis")
    if x.ndim < 3 or axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if not all(isinstance(a, int) for a in axes):
        return None
    if tuple(sorted(a % x.ndim for a in axes)) != tuple(range(1, x.ndim - 1)):
        return None
    keepdims = kwargs.get("keepdims", False)
    return FunctionCall(
        function, jlayers.GlobalAvgPool, x, lambda a: original(a, axis=axis, keepdims=keepdims)
    )


def _sum_of_two(reflected: bool):
    """``x + y`` of two tracers of one shape and dtype (a residual add); not ``x + bias``, and not
    ``x + p`` for a parameter ``p`` of the model read as it is stored (``self.param(...)``, an
    ``nnx.Param``: a learned position embedding of shape ``(1, T, D)`` has the activation's shape
    at batch 1, and is a bias, not a second branch)."""

    def place(function, original, args, kwargs):
        left, right = args
        if not (
            isinstance(right, jax_core.Tracer)
            and right.shape == left.shape
            and right.dtype == left.dtype
        ):
            return None
        if is_parameter(left) or is_parameter(right):
            return None
        inputs = (right, left) if reflected else (left, right)
        return FunctionCall(function, jlayers.Sum, inputs, lambda xs: operator.add(*xs))

    return place


def _attention(function, original, args, kwargs):
    """``nn.dot_product_attention(query, key, value, ...)`` / ``jax.nn.dot_product_attention``:
    a `jxai.transformer.DotProductAttention` layer of the inputs ``(query, key, value)``."""
    placed = transformer.attention_call(function, original, args, kwargs)
    if placed is None:
        return None
    inputs, apply = placed
    return FunctionCall(function, transformer.DotProductAttention, inputs, apply)


@dataclasses.dataclass(frozen=True)
class _Function:
    """A placed function: its name, its public homes ``"module:attribute"``, its placement."""

    name: str
    homes: tuple[str, ...]
    place: Callable


_ACTIVATIONS = {
    "relu": "relu",
    "relu6": "relu6",
    "gelu": _gelu_name,
    "silu": "silu",
    "swish": "silu",
    "sigmoid": "sigmoid",
    "hard_sigmoid": "hard_sigmoid",
    "softplus": "softplus",
    "elu": "elu",
    "selu": "selu",
    "leaky_relu": "leaky_relu",
    "softmax": "softmax",
    "log_softmax": "log_softmax",
}
_JAX_NN_HOMES = (
    "jax.nn", "flax.linen", "flax.linen.activation", "flax.nnx", "flax.nnx.nn.activations"
)

PLACED_FUNCTIONS: tuple[_Function, ...] = (
    *(
        _Function(name, tuple(f"{home}:{name}" for home in _JAX_NN_HOMES), _activation(kind))
        for name, kind in _ACTIVATIONS.items()
    ),
    _Function(
        "tanh",
        ("jax.numpy:tanh", "jax.nn:tanh", "flax.linen:tanh", "flax.linen.activation:tanh",
         "flax.nnx:tanh", "flax.nnx.nn.activations:tanh"),
        _activation("tanh"),
    ),
    _Function("maximum", ("jax.numpy:maximum",), _maximum),
    _Function(
        "avg_pool",
        ("flax.linen:avg_pool", "flax.linen.pooling:avg_pool", "flax.nnx:avg_pool"),
        _pool(jlayers.AvgPool),
    ),
    _Function(
        "max_pool",
        ("flax.linen:max_pool", "flax.linen.pooling:max_pool", "flax.nnx:max_pool"),
        _pool(jlayers.MaxPool),
    ),
    _Function("mean", ("jax.numpy:mean",), _mean),
    _Function("add", ("jax._src.core:Tracer.__add__",), _sum_of_two(reflected=False)),
    _Function("add", ("jax._src.core:Tracer.__radd__",), _sum_of_two(reflected=True)),
    _Function(
        "dot_product_attention",
        (
            "flax.linen:dot_product_attention",
            "flax.linen.attention:dot_product_attention",
            "jax.nn:dot_product_attention",
            "flax.nnx:dot_product_attention",
            "flax.nnx.nn.attention:dot_product_attention",
        ),
        _attention,
    ),
)
"""Every function the engine places, with where it is looked up."""
_ATTENTION = PLACED_FUNCTIONS[-1]


# --------------------------------------------------------------------------------------------
# Installing the wrappers
# --------------------------------------------------------------------------------------------

_site: contextvars.ContextVar = contextvars.ContextVar("jxai_function_site", default=None)
_parameters: contextvars.ContextVar = contextvars.ContextVar("jxai_parameters", default=None)


@contextlib.contextmanager
def parameters(variables):
    """While inside, the traced arrays of ``variables`` (the collections a framework adapter runs
    the model with) are known as the model's parameters: a sum with one of them is not a
    residual sum (`_sum_of_two`). Nested uses see the innermost model's variables."""
    held = {id(leaf): leaf for leaf in jax.tree.leaves(variables)
            if isinstance(leaf, jax_core.Tracer)}
    token = _parameters.set(held)
    try:
        yield
    finally:
        _parameters.reset(token)


def is_parameter(value) -> bool:
    """Whether ``value`` is one of the traced parameter arrays of the model running now, as it is
    stored (identity, not equality: a reshaped or sliced parameter is a new array)."""
    held = _parameters.get()
    return held is not None and held.get(id(value)) is value
_lock = threading.Lock()
_users = 0
_saved: list[tuple[Any, str, Any]] = []  # (owner, attribute, original) while installed
_by_original: dict[int, tuple[Any, Callable]] = {}  # id(original) -> (original, its wrapper)


def _owner_and_attribute(home: str):
    module_name, _, dotted = home.partition(":")
    if module_name.startswith("flax.nnx") and "flax.nnx" not in sys.modules:
        raise ImportError(module_name)  # NNX's homes only matter once a model imported NNX
    owner = importlib.import_module(module_name)
    *outer, attribute = dotted.split(".")
    for name in outer:
        owner = getattr(owner, name)
    return owner, attribute


def _wrapper(function: _Function, original):
    def wrapper(*args, **kwargs):
        site = _site.get()
        if site is None or not site.takes_calls():
            return original(*args, **kwargs)
        call = function.place(function.name, original, args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        return site.place(call)

    wrapper.__wrapped__ = original
    wrapper.__name__ = getattr(original, "__name__", function.name)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    return wrapper


def wrap_attention(original):
    """``original`` (an attention function) placed as a `transformer.DotProductAttention` layer
    while the engine traces: for the ``attention_fn`` that an attention module holds
    (``nn.MultiHeadDotProductAttention`` here, ``nnx.MultiHeadAttention`` in `jxai.adapters.nnx`)."""
    return _wrapper(_ATTENTION, original)


def _install():
    wrappers = {}  # one per original object: aliases stay identical (nn.relu is jax.nn.relu)
    for function in PLACED_FUNCTIONS:
        for home in function.homes:
            try:
                owner, attribute = _owner_and_attribute(home)
            except (ImportError, AttributeError):  # an older JAX/Flax without this home
                continue
            original = getattr(owner, attribute, None)
            if original is None:
                continue
            key = (function.name, id(original))
            if key not in wrappers:
                wrappers[key] = _wrapper(function, original)
            _saved.append((owner, attribute, original))
            setattr(owner, attribute, wrappers[key])
            if not home.startswith("jax._src.core:"):  # `+` is never a saved reference
                _by_original.setdefault(id(original), (original, wrappers[key]))


def _restore():
    _by_original.clear()
    while _saved:
        owner, attribute, original = _saved.pop()
        setattr(owner, attribute, original)


def placed_reference(value):
    """The placing wrapper to use in place of ``value``, a reference to a placed function saved
    before the swap (``nn.relu``, ``jax.nn.gelu``, ``nn.avg_pool``...) or a ``functools.partial``
    of one (the partial's arguments kept); None for anything else, and outside a trace."""
    if isinstance(value, functools.partial):
        inner = placed_reference(value.func)
        return None if inner is None else functools.partial(inner, *value.args, **value.keywords)
    try:
        found = _by_original.get(id(value))
    except TypeError:
        return None
    return found[1] if found is not None and found[0] is value else None


@contextlib.contextmanager
def references_placed(owner, attributes: Iterable[tuple[str, Any]]):
    """While inside, each attribute ``(name, value)`` of ``owner`` whose value is a saved
    reference to a placed function (`placed_reference`) is that function's wrapper; the originals
    are put back on leaving, also when the body raises. ``object.__setattr__``: a linen module is
    a frozen dataclass, an NNX module checks its assignments. Only in a thread that is tracing
    (elsewhere the wrappers would do nothing)."""
    swapped = []
    if _site.get() is not None:
        for name, value in attributes:
            wrapper = placed_reference(value)
            if wrapper is not None:
                swapped.append((name, value))
                object.__setattr__(owner, name, wrapper)
    try:
        yield
    finally:
        for name, value in reversed(swapped):
            object.__setattr__(owner, name, value)


@contextlib.contextmanager
def placing(site):
    """Route calls of `PLACED_FUNCTIONS` made in this thread to ``site`` while tracing.

    ``site.takes_calls() -> bool`` says whether a call made now is placed (not inside an
    intercepted module, a layer view or a nested trace); ``site.place(call) -> output`` runs it.
    """
    global _users
    with _lock:
        if _users == 0:
            _install()
        _users += 1
    token = _site.set(site)
    try:  # the attention_fn of nn.MultiHeadDotProductAttention is placed too
        with nn.intercept_methods(transformer.attention_interceptor(wrap_attention)):
            yield
    finally:
        _site.reset(token)
        with _lock:
            _users -= 1
            if _users == 0:
                _restore()


def current_trace():
    """The JAX trace that operations run in right now (to tell a nested ``jax.jit`` apart)."""
    context = getattr(jax_core, "trace_ctx", None)
    return getattr(context, "trace", None)
