"""The method contract: everything a method author needs, in one file.

A method is a function ``fn(ctx, x, target, **params) -> attribution`` registered under a name::

    @jxai.register_method("gradient_x_sign", family="gradient")
    def gradient_x_sign(ctx, x, target, *, threshold: float = 0.0):
        grad = ctx.backward(x, target).grad               # one forward pass, one VJP
        return grad * jnp.where(x >= threshold, 1.0, -1.0)

    jxai.explain(network, x, "gradient_x_sign", threshold=0.5)

`jxai.explain` calls it inside one ``jax.jit``, with

- ``ctx``, a `Context`: the network and what a method may ask of it (`Context.forward`,
  `Context.backward` with LRP rules attached, `Context.relevance`, another method
  (`Context.attribute`), a PRNG key (``ctx.key``), and the scheduler (`Context.sum_chunks`,
  `Context.map_chunks`) for anything evaluated many times;
- ``x``, the batch (a traced array, batch first);
- ``target``, a `Target`: which output to explain (``target.mask(y)``, ``target.score(y)``,
  ``target.cotangent(y)``);
- ``params``, the keyword arguments given to `jxai.explain`: numbers, strings and tuples are
  static (part of the compiled function's key), arrays are traced. Keywords the method does not
  take and the model's ``__call__`` does (``attention_mask=``) are the model's: ``ctx.inputs``,
  given to every forward pass on ``x`` (a method never passes them itself).

A method never chooses devices, loops or chunk sizes: how samples, chunks and CPU cores are
laid out is the scheduler's business (`jxai._schedule`), so the same method runs one sample at a
time on a CPU and whole batches on a GPU, bit for bit like a hand-written loop.

Registration records a `MethodSpec` (name, function, family, whether it is stochastic, its
parameters read from the signature), which `jxai.explain`, `jxai.explain_dataset`,
`jxai.create_analyzer` and the ``jxai explain`` command all read: declare ``stochastic=True``
when the method draws from ``ctx.key`` (`jxai.explain_dataset` then gives every item its own
key, so results do not depend on the batching).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jxai import _schedule
from jxai._engine import GraphFacts, Plan, discover, run_forward
from jxai._targets import Target
from jxai.composites import Composite, composite_for, preset
from jxai.function_model import refuse_rules
from jxai.network import Network
from jxai.rules import Layer

__all__ = [
    "FAMILIES",
    "Backward",
    "Context",
    "MethodSpec",
    "Target",
    "get_method",
    "list_methods",
    "register_method",
]

FAMILIES = ("gradient", "lrp", "cam", "perturbation", "shapley", "other")


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method and what the rest of jxai needs to know about it.

    name: the name `jxai.explain` takes. fn: ``fn(ctx, x, target, **params) -> attribution``.
    stochastic: it draws random numbers from ``ctx.key``. family: one of `FAMILIES`.
    params: ``{name: inspect.Parameter}`` of the keyword parameters after ``(ctx, x, target)``
      (a default of ``inspect.Parameter.empty``: required); None when unknown (no readable
      signature: it takes anything).
    forwards: ``fn`` has ``**kwargs``: a wrapper with a ``wrapped=`` parameter passes them to
      the wrapped method (whose parameters it then also takes); without ``wrapped=`` it takes
      any keyword.
    static_arrays: parameters that must be concrete host arrays (compiled in, hashed by value:
      a ``feature_mask`` whose group count sets shapes).
    doc: the first line of ``fn``'s docstring.
    """

    name: str
    fn: Callable
    stochastic: bool = False
    family: str = "other"
    params: Mapping[str, inspect.Parameter] | None = None
    forwards: bool = False
    static_arrays: tuple[str, ...] = ()
    doc: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, fn: Callable | None = None, *, stochastic: bool = False,
                    family: str = "other", params: Mapping[str, inspect.Parameter] | None = None,
                    static_arrays: tuple[str, ...] = (), doc: str | None = None):
    """Register ``fn(ctx, x, target, **params) -> attribution`` under ``name``.

    A decorator (``@register_method("name", family="gradient")``) or a call
    (``register_method("name", fn)``); returns ``fn`` unchanged. A name registered again is
    replaced. ``params`` defaults to ``fn``'s keyword parameters after ``(ctx, x, target)``;
    ``doc`` to the first line of its docstring. See `MethodSpec` for the other fields.
    """
    if family not in FAMILIES:
        raise ValueError(f"register_method({name!r}): family={family!r} is not one of "
                         f"{', '.join(FAMILIES)}")

    def decorate(function):
        _REGISTRY[name] = _spec(name, function, stochastic=stochastic, family=family,
                                params=params, static_arrays=tuple(static_arrays), doc=doc)
        return function

    return decorate(fn) if fn is not None else decorate


def list_methods(family: str | None = None) -> list[str]:
    """Every registered method name, sorted; with ``family``, those of one of `FAMILIES`."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"list_methods: family={family!r} is not one of {', '.join(FAMILIES)}")
    return sorted(n for n, spec in _REGISTRY.items() if family in (None, spec.family))


def get_method(method) -> MethodSpec:
    """The `MethodSpec` of a registered name; also of a `jxai.Composite` (LRP with its rules,
    family ``"lrp"``) or of a plain function ``fn(ctx, x, target, **params)`` (family
    ``"other"``), which `jxai.explain` accept too. An unknown name is a ValueError listing the
    closest names and every registered one."""
    if isinstance(method, MethodSpec):
        return method
    if isinstance(method, Composite):
        return MethodSpec("composite", functools.partial(_lrp_with, method), family="lrp",
                          params={})
    if callable(method):
        return _spec(getattr(method, "__name__", "method"), method)
    spec = _REGISTRY.get(method) if isinstance(method, str) else None
    if spec is None:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(method), known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ValueError(f"unknown method {method!r}; {hint}known methods: {', '.join(known)}")
    legacy = getattr(spec.fn, "static_arrays", ())  # set on the function after registering
    if legacy and not spec.static_arrays:
        spec = _REGISTRY[method] = dataclasses.replace(spec, static_arrays=tuple(legacy))
    return spec


def _spec(name, fn, *, stochastic=False, family="other", params=None, static_arrays=(),
          doc=None) -> MethodSpec:
    forwards = False
    if params is None:
        params, forwards = _signature_params(fn)
    if doc is None:
        doc = (inspect.getdoc(fn) or "").partition("\n")[0]
    return MethodSpec(name, fn, stochastic, family,
                      None if params is None else types.MappingProxyType(dict(params)),
                      forwards, tuple(static_arrays) or tuple(getattr(fn, "static_arrays", ())),
                      doc)


def _signature_params(fn) -> tuple[dict[str, inspect.Parameter] | None, bool]:
    """The parameters after ``(ctx, x, target)`` and whether ``fn`` has ``**kwargs``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to read
        return None, False
    values = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    own, forwards = {}, False
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            forwards = True
        elif parameter.kind in values and index >= 3:
            own[parameter.name] = parameter
    return own, forwards


def _lrp_with(composite, ctx, x, target):
    return ctx.relevance(x, target, composite)[0]


# --------------------------------------------------------------------------------------------
# What a method sees
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Backward:
    """Result of one forward pass and one VJP (`Context.backward`).

    output: the network output. grad: the cotangent at the input (a gradient, or relevance in
    the relevance mode). activations / grads: outputs of the tapped layers and their cotangents.
    explicit_relevance: input relevance of explicit first-layer rules (gradient mode), or None.
    mode: ``"gradient"`` (relevance = activation × cotangent) or ``"relevance"``.
    embedding: for integer token ids, the output ``e`` (B, T, D) of the `nn.Embed` reading them;
      ``grad`` is then the cotangent at ``e`` (ids have no gradient), and the relevance per
      token is ``Σ_d e·grad`` (``Σ_d grad`` in the relevance mode): `Context.relevance`.
    """

    output: Any
    grad: Any
    activations: dict
    grads: dict
    explicit_relevance: Any = None
    mode: str = "gradient"
    embedding: Any = None


class Context:
    """The network, the traced layer facts, a PRNG key and the scheduler, handed to a method
    inside ``jit`` (see the module docstring for the contract).

    Attributes: ``network`` (a `jxai.Network`), ``key`` (a `jax.random` key: split or fold it,
    never reuse it for two draws), ``x_shape``, ``layers`` (the layer calls in order, each with
    ``path``, ``module_type``, ``input_shape``, ``output_shape``), ``inputs`` (the model's other
    inputs, ``{name: array}`` batch first, e.g. ``attention_mask``: every forward pass gets them).

    Token models (integer ids read by an ``nn.Embed``): `embedding_of` gives the embedding ``e``
    of ids, and `with_embedding` a context whose passes use a given embedding instead (a point on
    an integration path, a noisy copy), so a method can work in embedding space.
    """

    def __init__(self, network: Network, x_shape: tuple, dtype, key, inputs=None):
        self.network = network
        self.key = key
        self.x_shape = tuple(x_shape)
        self.tokens = bool(jnp.issubdtype(dtype, jnp.integer))
        self.inputs = dict(inputs or {})
        self.embedding = None  # a replacement for the Embed output (`with_embedding`)
        self.facts: GraphFacts = discover(network, self.x_shape, dtype, self.inputs)

    @property
    def layers(self):
        return self.facts.layers

    # -- the network --------------------------------------------------------------------------
    def forward(self, x, composite: Composite | None = None, taps=()):
        """``(output, {path: layer output})`` with the composite's rules attached."""
        facts = self._facts_for(x)
        zeros = self._tap_zeros(taps, x, facts)
        replace = self._replaced(x, facts, zeros)
        result = run_forward(self.network, x, self.plan(composite), zeros, facts,
                             self.inputs_for(x), replace)
        return result.output, {p: result.activations[p] for p in taps}

    def backward(self, x, target: Target, composite: Composite | None = None, taps=()) -> Backward:
        """One forward pass and one VJP seeded by ``target`` (rules of ``composite`` attached);
        ``taps``: layer paths whose outputs and cotangents to return too."""
        plan = self.plan(composite)
        facts = self._facts_for(x)
        explicit_paths = tuple(
            path
            for path, rule in (plan.rules if plan else ())
            if plan.mode == "gradient" and getattr(rule, "explicit", False)
        )
        embed_path = self._token_embedding(x, facts, explicit_paths)
        all_taps = tuple(dict.fromkeys((*taps, *explicit_paths, *filter(None, [embed_path]))))
        zeros = self._tap_zeros(all_taps, x, facts)
        replace = self._replaced(x, facts, zeros)
        model_inputs = self.inputs_for(x)
        side = {}

        def f(inputs, tap_values):
            result = run_forward(self.network, inputs, plan, tap_values, facts, model_inputs,
                                 replace)
            side["rules"] = {p: (e[0], e[1]) for p, e in result.explicit.items()}
            explicit = {p: (e[2], e[3], e[4]) for p, e in result.explicit.items()}
            activations = {p: result.activations[p] for p in all_taps}
            return result.output, (result.output, activations, explicit)

        if embed_path is None:
            _, pullback, (y, activations, explicit) = jax.vjp(f, x, zeros, has_aux=True)
        else:  # integer ids have no cotangent: differentiate at the embedding output instead
            _, pull_taps, (y, activations, explicit) = jax.vjp(
                lambda tap_values: f(x, tap_values), zeros, has_aux=True)

            def pullback(seed):
                (tap_grads,) = pull_taps(seed)
                return tap_grads[embed_path], tap_grads
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
            None if embed_path is None else activations[embed_path],
        )

    def relevance(self, x, target: Target, composite: Composite, taps=()) -> tuple[Any, Backward]:
        """LRP: input relevance under ``composite`` (and the `Backward` it came from)."""
        result = self.backward(x, target, composite, taps)
        if result.embedding is not None:
            return token_relevance(result), result
        if result.mode == "relevance":
            relevance = result.grad
        else:
            relevance = x * result.grad
            if result.explicit_relevance is not None:
                relevance = relevance + result.explicit_relevance
        return relevance, result

    def plan(self, composite: Composite | str | None) -> Plan | None:
        """The composite (or the name of a preset) resolved on this network's layers."""
        if composite is None:
            return None
        refuse_rules(self.network, composite)  # a plain function has no layers for rules
        if isinstance(composite, str):
            composite = preset(composite)
        return composite_for(composite).plan(self.facts)

    # -- other methods, randomness -------------------------------------------------------------
    def attribute(self, method: str, x, target: Target, **params):
        """Run another registered method under the same trace (for wrappers such as smoothgrad)."""
        return get_method(method).fn(self, x, target, **params)

    def with_key(self, key) -> Context:
        """This context with another PRNG key: each evaluation of a wrapper gets its own
        randomness (a stochastic wrapped method must not draw the same numbers for every copy)."""
        inner = copy.copy(self)
        inner.key = key
        return inner

    # -- token models ---------------------------------------------------------------------------
    def embedding_path(self) -> str:
        """The path of the `nn.Embed` reading this context's integer ids (a ValueError for a
        float input, which has none)."""
        if not self.tokens:
            raise ValueError(f"{self.network!r} is explained on a float input: it has no token "
                             "embedding (embedding_path / embedding_of / with_embedding are for "
                             "integer token ids)")
        return self._token_embedding(jnp.zeros((), jnp.int32), self.facts, ())

    def embedding_of(self, x, replaced: bool = True):
        """The embedding ``e`` (B, T, D) of integer ids ``x``: the output of the `nn.Embed`
        reading them (a forward pass whose unused rest XLA drops). With ``replaced`` (default), a
        context made by `with_embedding` answers its embedding instead."""
        if replaced and self.embedding is not None:
            return self.embedding
        path = self.embedding_path()
        plain = copy.copy(self)
        plain.embedding = None
        return plain.forward(x, taps=(path,))[1][path]

    def with_embedding(self, embedding) -> Context:
        """This context with the `nn.Embed` output replaced by ``embedding`` (B, T, D) in every
        forward and backward pass on integer ids: `backward`'s ``grad`` is then the gradient at
        that point and ``Backward.embedding`` is ``embedding``, so any token method (gradient,
        input × gradient, LRP) explains the model as if its embedding layer had given it."""
        path = self.embedding_path()
        expected = next(layer.output_shape for layer in self.facts.layers if layer.path == path)
        if tuple(jnp.shape(embedding)) != tuple(expected):
            raise ValueError(f"with_embedding: embedding of shape {tuple(jnp.shape(embedding))}, "
                             f"expected {tuple(expected)} (the output of {path!r})")
        inner = copy.copy(self)
        inner.embedding = embedding
        return inner

    def inputs_for(self, x) -> dict:
        """The model's other inputs for a forward pass on ``x``: as given when ``x`` has their
        batch size, broadcast when they have one row; another batch size is an error (a method
        that stacks copies of the batch, as DeepLIFT does, cannot know how to stack them)."""
        if not self.inputs:
            return {}
        batch = next(iter(self.inputs.values())).shape[0]
        rows = x.shape[0]
        if rows == batch:
            return self.inputs
        if batch == 1:
            return {name: jnp.broadcast_to(value, (rows, *value.shape[1:]))
                    for name, value in self.inputs.items()}
        raise ValueError(
            f"this method evaluates the network on {rows} rows at once, but the model inputs "
            f"{', '.join(sorted(self.inputs))} have {batch} (one per sample): pass "
            "micro_batch=1 to explain one sample at a time (each sample's inputs then broadcast)"
        )

    # -- the scheduler -------------------------------------------------------------------------
    def sum_chunks(self, fn: Callable, items, batch_size: int | str | None = "auto", *,
                   name: str = "sum_chunks", accelerator: int = 16):
        """``sum_i fn(items[i])`` over the leading axis of the pytree ``items``, ``batch_size``
        items vmapped at a time, memory that of one chunk (`jxai._schedule.sum_chunks`).

        ``batch_size``: an int, ``None`` (all at once) or ``"auto"`` (1 on CPU, ``accelerator``
        on GPU/TPU); ``name`` is the method named by an error about it. The scheduler may share
        the chunks out between CPU devices (the sum is then reassociated).
        """
        size = _schedule.chunk_size(name, batch_size, accelerator)
        return _schedule.sum_chunks(fn, items, size)

    def map_chunks(self, fn: Callable, items, batch_size: int | str | None = "auto", *,
                   name: str = "map_chunks", accelerator: int = 16):
        """``stack_i fn(items[i])`` (item-first outputs), ``batch_size`` items at a time; the
        same ``batch_size`` rules as `sum_chunks` (`jxai._schedule.map_chunks`)."""
        size = _schedule.chunk_size(name, batch_size, accelerator)
        return _schedule.map_chunks(fn, items, size)

    # -- helpers ------------------------------------------------------------------------------
    def _token_embedding(self, x, facts: GraphFacts, explicit_paths) -> str | None:
        """The path of the `nn.Embed` reading integer ids ``x`` (None for a float input).

        A float input to a network explained on integer ids (a method interpolating or adding
        noise to the ids) and integer ids without an Embed reading them are refused."""
        if not jnp.issubdtype(x.dtype, jnp.integer):
            if self.tokens:
                raise ValueError(
                    f"{self.network!r} is explained on integer token ids, but this method "
                    f"evaluates it on a {x.dtype} input (it interpolates, perturbs or adds noise "
                    "to the input, which is meaningless for ids). Explain from the embeddings "
                    "instead: a module taking inputs_embeds (B, T, D), or use input_t_gradient, "
                    "gradient or an LRP method on the ids"
                )
            return None
        for layer in facts.layers:
            if layer.kind == "embed" and layer.fed_by_input:
                if explicit_paths:
                    raise ValueError(
                        f"explicit first-layer rules ({', '.join(explicit_paths)}) need a float "
                        f"input; {self.network!r} reads integer token ids through "
                        f"{layer.path!r}: use a composite without them (lrp.attn_lrp, lrp.epsilon)"
                    )
                return layer.path
        raise ValueError(
            f"x is an integer array ({x.dtype}) but no nn.Embed layer of {self.network!r} reads "
            "it: integer inputs are token ids of an nn.Embed (explained per token); for numeric "
            "features pass a float array (x.astype(jnp.float32))"
        )

    def _facts_for(self, x) -> GraphFacts:
        if tuple(x.shape) == self.x_shape:
            return self.facts
        return discover(self.network, tuple(x.shape), x.dtype, self.inputs_for(x))

    def _replaced(self, x, facts: GraphFacts, taps: dict) -> frozenset:
        """With `with_embedding`: the Embed tap, set to the embedding, replaces its output."""
        if self.embedding is None or not jnp.issubdtype(x.dtype, jnp.integer):
            return frozenset()
        path = self._token_embedding(x, facts, ())
        if tuple(self.embedding.shape[:-1]) != tuple(x.shape):
            raise ValueError(f"the embedding given by with_embedding has shape "
                             f"{tuple(self.embedding.shape)}; it does not fit ids of shape "
                             f"{tuple(x.shape)}")
        taps[path] = self.embedding
        return frozenset([path])

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
            dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.float32
            if not jnp.issubdtype(x.dtype, jnp.inexact) and layer.output_dtype is not None:
                dtype = layer.output_dtype  # token ids: taps of the embedding's float dtype
            zeros[path] = jnp.zeros(layer.output_shape, dtype)
        return zeros


def token_relevance(result: Backward):
    """Relevance per token (B, T) of a `Backward` on integer ids: ``Σ_d e_d · ∂S/∂e_d`` over the
    embedding ``e`` of each token (gradient mode: input × gradient of the embedding, what every
    LRP preset gives in the G×I convention), or ``Σ_d R_d`` (relevance mode: the relevance
    arriving at the embedding)."""
    if result.mode == "relevance":
        return result.grad.sum(-1)
    return (result.embedding * result.grad).sum(-1)


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
