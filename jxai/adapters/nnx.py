"""The Flax NNX adapter: a merged copy, and a class-level ``__call__`` patch (see `jxai.adapters`).

NNX has no ``intercept_methods``. Flax's own docs recommend graph surgery or a temporary
class-level method patch restored in ``finally`` (``nnx.capture`` does the latter); jxai does:

* `as_network(model)` splits the model once (``nnx.split``) into its graph definition (static,
  hashable: it keys compiled functions) and its variables, kept as linen-shaped collections
  (``{"params": {"layers": {"0": {"kernel": ...}}}, "batch_stats": ...}``, one per variable type)
  so that everything downstream (canonizers, metrics, sharding, checkpoints) reads them as it reads
  a linen model's. The user's model is never touched: its parameters stay where they are.
* inside the traced function, `NNXAdapter.apply` merges a fresh copy (``nnx.merge``), puts it in
  evaluation mode (``.eval()``: BatchNorm uses its running statistics), and, while the copy runs,
  patches ``__call__`` of every module class in its graph. A patched call of a module of the copy
  tells the engine's site which module runs (its path: the attribute names, ``"layers/0"``) and
  hands a layer of a registered kind (`jxai.kinds`: ``nnx.Linear``, ``nnx.Conv``,
  ``nnx.ConvTranspose``, ``nnx.BatchNorm``...) to ``site.layer_call``. The patch is installed
  under a lock, counted (nested and concurrent traces share it), active only for the modules of
  the copy being traced in this thread, and removed in ``finally``, also when the call raises.
  While a module of the copy runs, its attributes holding a placed function (``self.act =
  nnx.relu``, a ``functools.partial`` of one) are the function's placing wrapper
  (`jxai._functions.references_placed`), put back when the call returns or raises.

Moving weights between linen and NNX: `linen_variables` gives an NNX model's variables as linen
collections keyed by attribute path; with ``join="_"`` a list member ``layers/0`` is named
``layers_0``, as linen names the modules of a list attribute, so a linen twin with the same names
runs with them: ``twin.apply(linen_variables(model, join="_"), x)``. The other way,
`nnx_state_from_linen` assigns linen arrays to the NNX model's variables at the same paths. ``flax.nnx.bridge.ToNNX(linen_module)`` wraps a linen module
as an NNX module; it still runs linen's ``apply``, so jxai explains the linen module directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from jxai import _functions, kinds  # _functions imports jxai.transformer: the norm kinds
from jxai.adapters.base import bypassing, is_bypassed

__all__ = [
    "ADAPTER",
    "NNXAdapter",
    "NNXLayer",
    "NNXModel",
    "accepts",
    "bridged_linen",
    "linen_variables",
    "nnx_state_from_linen",
]

# NNX's layers join the built-in kinds (their views are the kinds' own: see NNXLayer; the norms'
# attribute names are linen's, and the view reads its parameters from the handle).
kinds.add_classes("dense", nnx.Linear)
kinds.add_classes("conv", nnx.Conv)
kinds.add_classes("conv_transpose", nnx.ConvTranspose)
kinds.add_classes("batchnorm", nnx.BatchNorm)
kinds.add_classes("dense_general", nnx.LinearGeneral)  # MultiHeadAttention's projections
kinds.add_classes("layer_norm", nnx.LayerNorm)
kinds.add_classes("rms_norm", nnx.RMSNorm)
kinds.add_classes("group_norm", nnx.GroupNorm)
kinds.add_classes("embed", nnx.Embed)  # token ids stay integer (jxai.explain asks discover)
kinds.add_classes("einsum", nnx.Einsum)


def _collection(variable) -> str:
    if isinstance(variable, nnx.Param):
        return "params"
    if isinstance(variable, nnx.BatchStat):
        return "batch_stats"
    return "nnx_" + type(variable).__name__.lower()  # RNG counters, caches: carried, unused


def _name(key) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


class NNXModel:
    """An NNX model as jxai holds it: graph definition + state layout (static and hashable).

    ``apply(variables, x)`` runs a merged copy on ``x`` (linen's ``module.apply`` signature, so
    code written for linen modules runs it too).
    """

    def __init__(self, graphdef, treedef, leaf_paths: tuple[tuple[str, tuple[str, ...]], ...],
                 name: str):
        self.graphdef = graphdef
        self.treedef = treedef
        self.leaf_paths = leaf_paths  # (collection, path) of each state leaf, in leaf order
        self.name = name

    @classmethod
    def split(cls, model: nnx.Module) -> tuple[NNXModel, dict]:
        """``(NNXModel, linen-shaped variables)`` of ``model`` (which is left as it is)."""
        graphdef, state = nnx.split(model)
        with_variables = jax.tree_util.tree_flatten_with_path(
            state, is_leaf=lambda v: isinstance(v, nnx.Variable)
        )[0]
        leaves, treedef = jax.tree.flatten(state)
        if len(leaves) != len(with_variables):
            raise TypeError(f"{type(model).__name__}: a variable holds more than one array")
        variables: dict[str, Any] = {"params": {}}
        paths = []
        for (keys, variable), leaf in zip(with_variables, leaves, strict=True):
            collection = _collection(variable)
            path = tuple(_name(k) for k in keys)
            node = variables.setdefault(collection, {})
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = leaf
            paths.append((collection, path))
        return cls(graphdef, treedef, tuple(paths), type(model).__name__), variables

    def state(self, variables: Mapping):
        """The NNX state of ``variables`` (linen-shaped collections)."""
        leaves = []
        for collection, path in self.leaf_paths:
            node = variables[collection]
            for name in path:
                node = node[name]
            leaves.append(node)
        return jax.tree.unflatten(self.treedef, leaves)

    def merge(self, variables: Mapping) -> nnx.Module:
        """A fresh model with ``variables``, in evaluation mode."""
        model = nnx.merge(self.graphdef, self.state(variables))
        model.eval()
        return model

    def apply(self, variables: Mapping, x, **kwargs):
        return self.merge(variables)(x, **kwargs)

    def _key(self):
        return (self.graphdef, self.treedef, self.leaf_paths)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, NNXModel) and self._key() == other._key()

    def __repr__(self):
        return f"NNXModel({self.name})"


def accepts(module) -> bool:
    return isinstance(module, NNXModel)


def _linen_path(path: tuple[str, ...], join: str | None) -> tuple[str, ...]:
    """``("layers", "0", "kernel")`` -> ``("layers_0", "kernel")`` with ``join="_"``: linen's
    names for the modules of a list attribute (``self.layers = [...]`` in ``setup``)."""
    if join is None:
        return path
    out: list[str] = []
    for name in path:
        if name.isdigit() and out:
            out[-1] = f"{out[-1]}{join}{name}"
        else:
            out.append(name)
    return tuple(out)


def linen_variables(model: nnx.Module, join: str | None = None) -> dict:
    """The NNX model's variables as linen collections (``{"params": ..., "batch_stats": ...}``),
    keyed by attribute path (``layers/0/kernel`` is ``["params"]["layers"]["0"]["kernel"]``, or
    ``["params"]["layers_0"]["kernel"]`` with ``join="_"``, linen's names for list members)."""
    module, variables = NNXModel.split(model)
    out: dict = {}
    for collection, path in module.leaf_paths:
        node = variables[collection]
        for name in path:
            node = node[name]
        target = out.setdefault(collection, {})
        joined = _linen_path(path, join)
        for name in joined[:-1]:
            target = target.setdefault(name, {})
        target[joined[-1]] = node
    return out


def bridged_linen(model) -> tuple[Any, dict] | None:
    """``(linen module, its variables)`` of a ``flax.nnx.bridge.ToNNX`` model, else None.

    ToNNX runs a linen module inside an NNX one: jxai explains that module as linen (its layers
    are linen layers, found by ``nn.intercept_methods``) with the variables the wrapper holds, as
    linen collections (its RNG state, ``nnx_rng*``, is not a collection the module reads)."""
    to_nnx = getattr(getattr(nnx, "bridge", None), "ToNNX", None)
    if to_nnx is None or not isinstance(model, to_nnx):
        return None
    variables = {collection: tree for collection, tree in linen_variables(model).items()
                 if not collection.startswith("nnx_rng")}
    if "params" not in variables:
        raise ValueError(f"{type(model.module).__name__} inside nnx.bridge.ToNNX has no "
                         "parameters yet: call nnx.bridge.lazy_init(model, x) first")
    return model.module, variables


def nnx_state_from_linen(model: nnx.Module, variables: Mapping, join: str | None = None) -> None:
    """Assign linen collections (keyed as ``linen_variables(model, join)`` keys them) to
    ``model``'s variables, in place (the user's own call: jxai never mutates a model)."""
    module, _ = NNXModel.split(model)
    leaves = []
    for collection, path in module.leaf_paths:
        node = variables[collection]
        for name in _linen_path(path, join):
            node = node[name]
        leaves.append(node)
    nnx.update(model, jax.tree.unflatten(module.treedef, leaves))


# --------------------------------------------------------------------------------------------
# The layer handle
# --------------------------------------------------------------------------------------------


class NNXLayer:
    """An NNX module of the merged copy as the layer kinds' views see it
    (`jxai.adapters.LayerHandle`). ``call`` runs a clone of it with other parameter values, its
    bias set to None when it is to be left out, and ``attributes`` (the configuration given at
    call time, such as an ``nnx.Einsum``'s equation) set on it."""

    def __init__(self, module: nnx.Module, attributes: Mapping | None = None):
        self.module = module
        self.attributes = dict(attributes or {})

    def _variables_of(self, kind):
        return {
            name: value.get_value()
            for name, value in vars(self.module).items()
            if isinstance(value, kind)
        }

    def params(self) -> dict:
        return self._variables_of(nnx.Param)

    def variables(self) -> Mapping:
        return {"params": self.params(), "batch_stats": self._variables_of(nnx.BatchStat)}

    def attribute(self, name: str, default=None):
        if name in self.attributes:
            return self.attributes[name]
        return getattr(self.module, name, default)

    def call(self, params, inputs, without_bias: bool = False):
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        with bypassing():
            clone = nnx.clone(self.module)
            for name, value in self.attributes.items():
                object.__setattr__(clone, name, value)
            for name, value in params.items():
                getattr(clone, name).set_value(value)
            if without_bias and getattr(clone, "bias", None) is not None:
                clone.bias = None
                clone.use_bias = False
            return clone(*inputs)  # not a module of the traced copy: runs unintercepted


# --------------------------------------------------------------------------------------------
# Interception: a counted class-level patch of __call__
# --------------------------------------------------------------------------------------------

_active: contextvars.ContextVar = contextvars.ContextVar("jxai_nnx_active", default=None)
_lock = threading.Lock()
_patched: dict[type, list] = {}  # class -> [original __call__, was it the class's own, users]


def _owns_params(module) -> bool:
    return any(isinstance(v, nnx.Param) for v in vars(module).values())


def _patched_call(original):
    def __call__(self, *args, **kwargs):
        active = _active.get()
        path = None if active is None else active[1].get(id(self))
        if path is None:  # not a module of the copy being traced in this thread
            return original(self, *args, **kwargs)
        site = active[0]
        with site.entered(path, self):
            if is_bypassed():
                return original(self, *args, **kwargs)
            if kinds.kind_of(type(self)) is None:
                if _owns_params(self):
                    site.unsupported(path, type(self).__name__)
                with _attention_placed(self), _functions.references_placed(
                    self, list(vars(self).items())
                ):
                    return original(self, *args, **kwargs)
            inputs, attributes = _call_arguments(self, args, kwargs)
            rest = {**kwargs, **attributes}  # the original call, its equation given by keyword
            return site.layer_call(
                path,
                NNXLayer(self, attributes),
                lambda *a: original(self, *a, **rest),
                inputs,
            )

    __call__.__jxai_original__ = original
    return __call__


def _call_arguments(module, args: tuple, kwargs: dict):
    """``(layer inputs, attributes)``: ``nnx.Einsum`` called with an equation (``proj(x,
    "btd,dk->btk")``, which takes precedence over its own) is one layer of one input whose handle
    runs a clone with ``einsum_str`` set (``attributes``), as the rules need; other calls'
    arguments as they are."""
    equation = kwargs.get("einsum_str", args[1] if len(args) > 1 else None)
    if not isinstance(module, nnx.Einsum) or equation is None:
        return tuple(args), {}
    return tuple(args[:1]), {"einsum_str": equation}


@contextlib.contextmanager
def _attention_placed(module):
    """While an ``nnx.MultiHeadAttention`` of the traced copy runs, its ``attention_fn`` (bound
    when the model was built, so patching ``nnx.dot_product_attention`` does not reach it) is
    the engine's placing wrapper: the call is a `jxai.transformer.DotProductAttention` layer of
    ``(query, key, value)``, as in linen's ``nn.MultiHeadDotProductAttention``. A no-op for
    other modules; restored afterwards (the copy is the engine's own, never the user's model)."""
    if not isinstance(module, nnx.MultiHeadAttention):
        yield
        return
    original = module.attention_fn
    object.__setattr__(module, "attention_fn", _functions.wrap_attention(original))
    try:
        yield
    finally:
        object.__setattr__(module, "attention_fn", original)


@contextlib.contextmanager
def _patching(classes):
    """Patch ``__call__`` of ``classes`` while inside; restored when the last user leaves."""
    with _lock:
        # every original is read before any class is patched, and an inherited patch is looked
        # through, so a subclass never wraps its parent's wrapper
        originals = {
            cls: getattr(cls.__call__, "__jxai_original__", cls.__call__)
            for cls in classes
            if cls not in _patched
        }
        owned = {cls: "__call__" in cls.__dict__ for cls in originals}
        for cls, original in originals.items():
            _patched[cls] = [cls.__dict__.get("__call__"), owned[cls], 0]
            cls.__call__ = _patched_call(original)
        for cls in classes:
            _patched[cls][2] += 1
    try:
        yield
    finally:
        with _lock:
            for cls in classes:
                entry = _patched[cls]
                entry[2] -= 1
                if entry[2] == 0:
                    if entry[1]:
                        cls.__call__ = entry[0]
                    else:
                        del cls.__call__
                    del _patched[cls]


def _module_paths(model: nnx.Module) -> dict[int, str]:
    """``id(module) -> "a/b/0"`` for every module of the graph (the first path of a shared one)."""
    paths: dict[int, str] = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and id(node) not in paths:
            paths[id(node)] = "/".join(str(p) for p in path)
    return paths


class NNXAdapter:
    """`jxai.adapters.Adapter` for Flax NNX models held as `NNXModel`."""

    name = "nnx"

    def apply(self, module: NNXModel, variables: Mapping, x, site=None, **kwargs):
        model = module.merge(variables)
        if site is None:
            return model(x, **kwargs)
        paths = _module_paths(model)
        classes = []
        for _, node in nnx.iter_graph(model):
            if isinstance(node, nnx.Module) and type(node) not in classes:
                classes.append(type(node))
        with _patching(tuple(classes)), _functions.parameters(variables):
            token = _active.set((site, paths))
            try:
                return model(x, **kwargs)
            finally:
                _active.reset(token)

    def variables_at(self, variables: Mapping, path: str) -> dict:
        from jxai.adapters.linen import ADAPTER as LINEN

        return LINEN.variables_at(variables, path)


ADAPTER = NNXAdapter()
