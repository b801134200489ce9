"""The layer kinds: every fact the engine knows about a kind of layer, written once.

Zennit keeps its layer groups once, in ``zennit/types.py``; this is jxai's equivalent. A
`LayerKind` says, for one kind of layer (dense, convolution, BatchNorm, activation, pooling...):

* ``classes``: the module classes of that kind, in every framework (``flax.linen.Dense``,
  ``flax.nnx.Linear``, a user's ``ScaledDense``). A class's kind is found along its MRO, so a
  subclass of ``nn.Dense`` is a dense layer unless it registers a kind of its own.
* ``view``: how a rule sees the layer, ``view(layer, n_inputs, **options) -> (fn, params)`` with
  ``z = fn(params, a)`` (see `affine_view`). ``layer`` is the framework adapter's `LayerHandle`
  (`jxai.adapters`): ``layer.module``, ``layer.params()``, ``layer.variables()``,
  ``layer.attribute(name, default)`` and ``layer.call(params, inputs, without_bias=False)``.
* ``kernel`` / ``bias``: the names, in the params the view returns, of the kernel-like
  parameters (what `Rule`s modify with ``Layer.modified(kernel=...)``) and of the bias-like ones.
* ``linear``: an affine layer with weights (counted by ``first_layer``, ``layer_range``, given
  ε/αβ/z⁺ by the LRP presets); ``convolution``: a convolution (the presets' ``CONV`` group, CAM's
  default layer).
* ``rule_slot``: the `Composite` field giving this kind's rule when no selector matches
  (``"pool_rule"``...); ``relevance_rule``: the rule it gets in the relevance mode when nothing
  else is assigned (in the gradient mode an unassigned layer keeps its own gradient).
* ``folds_into``: the kinds it is folded into when it directly follows one of them (BatchNorm
  into dense and convolution layers: `jxai.canonizers.MergeBatchNorm`); ``fold_axis(layer)``:
  the output-channel axis of the kernel it folds into.
* ``nonnegative(activation, inputs_nonnegative)``: whether its output is provably >= 0
  (``inputs_nonnegative()`` proves it of the inputs, only when asked).

A new kind is one `register_kind` call (``tests/test_kinds.py`` adds a user's ``ScaledDense``)::

    jxai.kinds.register_kind(jxai.kinds.LayerKind(
        "scaled_dense", (ScaledDense,), view=scaled_dense_view, kernel=("w",), bias=("b",),
        linear=True, relevance_rule=rules.Z()))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jxai import layers as jlayers
from jxai.rules import Norm, Pass, Rule, Z

__all__ = [
    "CONVOLUTION",
    "LINEAR",
    "KindSelector",
    "LayerKind",
    "add_classes",
    "affine_view",
    "classes_of",
    "get_kind",
    "kind_of",
    "all_kinds",
    "register_kind",
    "selector",
    "unregister_kind",
]

View = Callable[..., tuple[Callable[[Any, Any], Any], Any]]

NONNEGATIVE_ACTIVATIONS = frozenset(
    {"relu", "relu6", "sigmoid", "softmax", "softplus", "exponential", "hard_sigmoid",
     "hard_sigmoid_keras2"}
)


def never(activation: str | None, inputs_nonnegative: Callable[[], bool]) -> bool:
    """Output sign unknown (affine layers)."""
    return False


def if_inputs(activation: str | None, inputs_nonnegative: Callable[[], bool]) -> bool:
    """Non-negative when every input is (poolings, sums)."""
    return inputs_nonnegative()


def by_activation(activation: str | None, inputs_nonnegative: Callable[[], bool]) -> bool:
    """Non-negative for the activations whose range is (relu, sigmoid, softmax...)."""
    return activation in NONNEGATIVE_ACTIVATIONS


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


def affine_view(layer, n_inputs: int = 1, **options):
    """``fn(params, a) = layer_without_bias(a; kernel-like params) + bias``.

    ``params`` are the layer's own parameters, under their own names. The bias is added on the
    last (feature) axis, outside the layer, so a rule can change or drop it separately.
    """
    kind = kind_of(type(layer.module))
    params = dict(layer.params())

    def fn(p, a):
        z = layer.call({k: v for k, v in p.items() if k not in kind.bias}, a, without_bias=True)
        for name in kind.bias:  # a folded BatchNorm may give a layer without one its bias
            if name in p:
                z = z + p[name]
        return z

    return fn, params


def _batchnorm_affine(variables: Mapping, epsilon: float, innvestigate: bool = False) -> dict:
    """Inference-mode BatchNorm as the diagonal affine map ``a·kernel + bias``.

    Exact: ``kernel = γ/√(var+ε)``, ``bias = β − mean·kernel``. ``innvestigate``: iNNvestigate
    2.1.2's fused form ``kernel = γ/√(var²+ε)``, ``bias = β − mean/√(var²+ε)`` (sic).
    """
    stats = variables["batch_stats"]
    params = variables.get("params", {})
    scale = params.get("scale", jnp.ones_like(stats["mean"]))
    offset = params.get("bias", jnp.zeros_like(stats["mean"]))
    if innvestigate:
        root = jnp.sqrt(stats["var"] ** 2 + epsilon)
        return {"kernel": scale / root, "bias": offset - stats["mean"] / root}
    kernel = scale / jnp.sqrt(stats["var"] + epsilon)
    return {"kernel": kernel, "bias": offset - stats["mean"] * kernel}


def batchnorm_view(layer, n_inputs: int = 1, batchnorm_view: str = "exact", **options):
    """A BatchNorm as ``a·kernel + bias`` on its feature axis (see `_batchnorm_affine`)."""
    axis = layer.attribute("axis", -1)
    axis = axis if isinstance(axis, int) else axis[0]

    def fn(p, a):
        shape = [1] * a.ndim
        shape[axis] = -1
        return a * p["kernel"].reshape(shape) + p["bias"].reshape(shape)

    params = _batchnorm_affine(
        layer.variables(), layer.attribute("epsilon", 1e-5), batchnorm_view == "innvestigate"
    )
    return fn, params


def parameter_free_view(layer, n_inputs: int = 1, **options):
    """``fn({}, a)``: the layer itself (a pooling, a sum, an activation)."""

    def fn(p, a):
        return layer.call({}, a if n_inputs > 1 else (a,))

    return fn, {}


def _last_axis(layer) -> int:
    return -1


def _conv_transpose_axis(layer) -> int:
    """Flax keeps ``(..., in, out)`` kernels; ``transpose_kernel=True`` swaps the last two."""
    return -2 if layer.attribute("transpose_kernel", False) else -1


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """One kind of layer; see the module docstring for each field."""

    name: str
    classes: tuple[type, ...]
    view: View = parameter_free_view
    kernel: tuple[str, ...] = ()
    bias: tuple[str, ...] = ()
    linear: bool = False
    convolution: bool = False
    rule_slot: str | None = None
    relevance_rule: Rule | None = None
    folds_into: tuple[str, ...] = ()
    fold_axis: Callable[[Any], int] = _last_axis
    nonnegative: Callable[[str | None, Callable[[], bool]], bool] = never
    activation: Callable[[Any], str | None] | None = None  # an activation layer's function name

    def default_rule(self, mode: str) -> Rule | None:
        """The rule an unassigned layer of this kind gets in ``mode`` (None: its own VJP)."""
        return self.relevance_rule if mode == "relevance" else None


_KINDS: dict[str, LayerKind] = {}
_BY_CLASS: dict[type, str] = {}


def register_kind(kind: LayerKind) -> LayerKind:
    """Add ``kind`` to the table (replacing a kind of the same name); returns it.

    Every class in ``kind.classes`` (and its subclasses without a kind of their own) is then
    intercepted, viewed with ``kind.view`` and matched by the kind's selectors.
    """
    old = _KINDS.get(kind.name)
    if old is not None:
        for cls in old.classes:
            _BY_CLASS.pop(cls, None)
    _KINDS[kind.name] = kind
    for cls in kind.classes:
        _BY_CLASS[cls] = kind.name
    kind_of.cache_clear()
    return kind


def unregister_kind(name: str) -> LayerKind:
    """Remove kind ``name`` from the table (its classes are then unknown layers); returns it."""
    kind = get_kind(name)
    for cls in kind.classes:
        _BY_CLASS.pop(cls, None)
    del _KINDS[name]
    kind_of.cache_clear()
    return kind


def add_classes(name: str, *classes: type) -> LayerKind:
    """Make ``classes`` (another framework's layers, e.g. ``nnx.Linear``) members of kind ``name``."""
    kind = get_kind(name)
    new = tuple(c for c in classes if c not in kind.classes)
    return register_kind(dataclasses.replace(kind, classes=kind.classes + new))


def get_kind(name: str) -> LayerKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"no layer kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def all_kinds() -> tuple[LayerKind, ...]:
    """Every registered kind, in registration order."""
    return tuple(_KINDS.values())


def _kind_of(cls: type) -> LayerKind | None:
    for base in getattr(cls, "__mro__", ()):
        name = _BY_CLASS.get(base)
        if name is not None:
            return _KINDS[name]
    return None


class _Cache:
    """``kind_of`` memoised per class; cleared whenever the table changes (``version`` counts
    the changes, so caches of traced facts can tell an old table from the new one)."""

    def __init__(self):
        self.table: dict[type, LayerKind | None] = {}
        self.version = 0

    def __call__(self, cls: type) -> LayerKind | None:
        """The kind of module class ``cls`` (None: not a layer the engine knows)."""
        try:
            return self.table[cls]
        except KeyError:
            found = self.table[cls] = _kind_of(cls)
            return found
        except TypeError:  # an unhashable class object
            return _kind_of(cls)

    def cache_clear(self):
        self.table.clear()
        self.version += 1


kind_of = _Cache()


def classes_of(predicate: Callable[[LayerKind], bool] = lambda kind: True) -> tuple[type, ...]:
    """The classes of every kind satisfying ``predicate`` (for ``isinstance`` checks)."""
    return tuple(c for kind in _KINDS.values() if predicate(kind) for c in kind.classes)


# --------------------------------------------------------------------------------------------
# Selectors (for composites)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KindSelector:
    """A composite selector matching layers by kind: named kinds, or every kind with a flag.

    ``selector("dense")`` matches dense layers of any framework; `LINEAR` every linear kind,
    including kinds registered later (a user's ``ScaledDense``).
    """

    names: tuple[str, ...] = ()
    flag: str | None = None  # "linear" or "convolution"

    def __call__(self, layer) -> bool:
        kind = _KINDS.get(getattr(layer, "kind", None) or "")
        if kind is None:
            return False
        if self.flag is not None:
            return bool(getattr(kind, self.flag))
        return kind.name in self.names

    def __repr__(self) -> str:
        return f"kinds.{self.flag.upper()}" if self.flag else f"kinds.selector{self.names}"


def selector(*names: str) -> KindSelector:
    """A composite selector for the layers of the named kinds."""
    for name in names:
        get_kind(name)
    return KindSelector(tuple(names))


LINEAR = KindSelector(flag="linear")
CONVOLUTION = KindSelector(flag="convolution")


# --------------------------------------------------------------------------------------------
# The built-in kinds (Flax linen and jxai.layers; jxai.adapters.nnx adds NNX's classes)
# --------------------------------------------------------------------------------------------


def _activation_name(module) -> str | None:
    """A `jxai.layers.Activation`'s function; ``"relu_modified"`` for a leaky/clipped ReLU."""
    plain = not module.alpha and module.max_value is None and module.threshold == 0.0
    return module.function if (module.function != "relu" or plain) else "relu_modified"


_AFFINE = dict(view=affine_view, kernel=("kernel",), bias=("bias",), linear=True,
               relevance_rule=Z())
register_kind(LayerKind("dense", (nn.Dense,), **_AFFINE))
register_kind(LayerKind("conv", (nn.Conv,), convolution=True, **_AFFINE))
register_kind(LayerKind("conv_transpose", (nn.ConvTranspose,), convolution=True,
                        fold_axis=_conv_transpose_axis, **_AFFINE))
register_kind(LayerKind(
    "batchnorm", (nn.BatchNorm,), view=batchnorm_view, kernel=("kernel",), bias=("bias",),
    rule_slot="batchnorm_rule", relevance_rule=Z(),
    folds_into=("dense", "conv", "conv_transpose"),
))
register_kind(LayerKind(
    "activation", (jlayers.Activation,), rule_slot="activation_rule", relevance_rule=Pass(),
    nonnegative=by_activation, activation=_activation_name,
))
for _name, _cls in (("avg_pool", jlayers.AvgPool), ("global_avg_pool", jlayers.GlobalAvgPool)):
    register_kind(LayerKind(_name, (_cls,), rule_slot="pool_rule", relevance_rule=Norm(),
                            nonnegative=if_inputs))
register_kind(LayerKind("sum", (jlayers.Sum,), rule_slot="sum_rule", relevance_rule=Norm(),
                        nonnegative=if_inputs))
register_kind(LayerKind("max_pool", (jlayers.MaxPool,), nonnegative=if_inputs))
register_kind(LayerKind("global_max_pool", (jlayers.GlobalMaxPool,), nonnegative=if_inputs))
# The input layer of token models: never given a rule (its output is where a token model's
# relevance is read, `jxai.contract.Context.backward`); registered so its calls are tapped.
register_kind(LayerKind("embed", (nn.Embed,)))
