"""Composites: which rule each layer gets, and the named presets of iNNvestigate and Zennit.

A composite is an ordered list of ``(selector, rule)``; the first selector that matches a layer
wins. Selectors are

* a Flax module type or a tuple of types (``nn.Dense``, ``(nn.Conv, nn.ConvTranspose)``); a type
  in the layer-kind table (`jxai.kinds`) selects every layer of its kind, in any framework
  (``nn.Dense`` also selects ``nnx.Linear``),
* a layer kind: ``jxai.kinds.selector("dense", "conv")``, ``jxai.kinds.LINEAR`` (every linear
  kind, a user's registered ones included), ``jxai.kinds.CONVOLUTION``,
* a glob over the module path (``"conv_base/block1_*"``),
* a position in graph order: `input_layers` (every linear layer fed directly by the input, up to
  reshapes — iNNvestigate's "input layer"), `first_layer` (the first of them — Zennit's),
  `last_layer`, `layer_range(start, stop)` over the linear layers,
* or any callable ``LayerInfo -> bool``.

Example::

    composite = Composite([(first_layer, Flat()), (nn.Dense, Epsilon(0.1)), (nn.Conv, ZPlus())])
    relevance = jxai.explain(network, x, composite)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jxai import kinds, transformer
from jxai._engine import FOLDED, GraphFacts, LayerInfo, Plan
from jxai.canonizers import Canonizer, MergeBatchNorm
from jxai.rules import (
    AlphaBeta,
    AlphaBetaX,
    Attention,
    AttnLRPSoftmax,
    CPSoftmax,
    DeconvNet,
    Epsilon,
    Flat,
    FrozenNorm,
    Gamma,
    GuidedBackprop,
    HeldGate,
    Norm,
    Pass,
    Rule,
    Uniform,
    WSquare,
    Z,
    ZBox,
    ZPlus,
    ZPlusFast,
)

__all__ = [
    "PRESETS",
    "Composite",
    "attn_lrp",
    "cp_lrp",
    "first_layer",
    "input_layers",
    "last_layer",
    "layer_range",
    "preset",
]

CONV = kinds.CONVOLUTION
DENSE = kinds.selector("dense")
LINEAR = kinds.LINEAR
GRADIENT = "gradient"  # a pool/sum "rule": the layer's own VJP in either mode


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Position:
    """A selector by position in graph order (needs the whole layer list)."""

    name: str
    start: int | None = None
    stop: int | None = None

    def select(self, facts: GraphFacts) -> set[str]:
        linear = [layer for layer in facts.layers if layer.is_linear]
        if self.name == "input_layers":
            return {layer.path for layer in linear if layer.fed_by_input}
        if self.name == "first_layer":
            fed = [layer for layer in linear if layer.fed_by_input] or linear[:1]
            return {fed[0].path} if fed else set()
        if self.name == "last_layer":
            return {linear[-1].path} if linear else set()
        return {layer.path for layer in linear[self.start : self.stop]}


input_layers = _Position("input_layers")
first_layer = _Position("first_layer")
last_layer = _Position("last_layer")


@dataclasses.dataclass(frozen=True)
class _KerasFusedActivations(_Position):
    """The activations a Keras Dense/Conv carries in its ``activation=`` argument: the Keras
    converter's ``<layer>_activation`` module, called right after ``<layer>``."""

    def select(self, facts: GraphFacts) -> set[str]:
        layers = facts.layers
        return {
            after.path
            for before, after in zip(layers, layers[1:], strict=False)
            if before.is_linear and after.path == f"{before.path}_activation"
        }


_keras_fused_activations = _KerasFusedActivations("keras_fused_activations")


def layer_range(start: int | None = None, stop: int | None = None) -> _Position:
    """Linear layers ``start <= index < stop`` in graph order (weightless layers not counted)."""
    return _Position("range", start, stop)


def _matches(selector, layer: LayerInfo, positioned: dict) -> bool:
    if isinstance(selector, _Position):
        return layer.path in positioned[selector]
    if isinstance(selector, type):
        return _type_matches(selector, layer)
    if isinstance(selector, tuple) and all(isinstance(s, type) for s in selector):
        return any(_type_matches(s, layer) for s in selector)
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(layer.path.split("#")[0], selector)
    if callable(selector):
        return bool(selector(layer))
    raise TypeError(
        f"composite selector {selector!r} is not a module type, a path glob, a position "
        "(input_layers, first_layer, last_layer, layer_range) or a callable of LayerInfo"
    )


def _type_matches(selector: type, layer: LayerInfo) -> bool:
    """A subclass of ``selector``, or a layer of the kind ``selector`` is registered for."""
    if issubclass(layer.module_type, selector):
        return True
    kind = kinds.kind_of(selector)
    return kind is not None and selector in kind.classes and layer.kind == kind.name


def _is_relu(layer: LayerInfo) -> bool:
    return layer.activation in ("relu", "linear")


# --------------------------------------------------------------------------------------------
# Composite
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Composite:
    """An ordered rule assignment; hashable, so it keys compiled functions.

    Args:
      rules: ``[(selector, rule), ...]`` or a mapping ``{selector: rule}``; first match wins.
      fold_batchnorm: fold every BatchNorm that directly follows a linear layer into that layer
        before the rules apply (the canonizer `jxai.canonizers.MergeBatchNorm`, Zennit's
        ``SequentialMergeBatchNorm``). Unfolded BatchNorms get ``batchnorm_rule``.
      canonizers: the model rewrites made before the rules (`jxai.canonizers.Canonizer`s);
        None (the default): ``(MergeBatchNorm(),)`` when ``fold_batchnorm``, else none.
      activation_rule: rule for non-ReLU activations (`jxai.layers.Activation` modules and
        functional ``nn.gelu(x)``... calls) not otherwise assigned (the identity rule `Pass` by default; ReLU needs none: its gradient already
        passes relevance unchanged).
      batchnorm_rule: rule for BatchNorms that are not folded (None: LRP-0, the gradient).
      pool_rule: rule for average poolings (`jxai.layers.AvgPool`/`GlobalAvgPool`, functional
        ``nn.avg_pool`` and spatial ``jnp.mean``); sum_rule: for `jxai.layers.Sum` and ``x + y``.
        None: LRP-0 (the gradient; `Norm` in the relevance mode); "gradient": the plain VJP in
        both modes (in the relevance mode it copies relevance to every summand).
      batchnorm_view: "exact" (``γ/√(var+ε)``) or "innvestigate" (iNNvestigate 2.1.2's fused
        BatchNorm, ``k = γ/√(var²+ε)``, ``b = β − mean/√(var²+ε)``, used only by the rule).
      mode: "gradient", "relevance", or "auto" (relevance only when an explicit rule such as
        `Flat` is assigned to a layer not fed by the input).
      output: "logit" (explain the output as it is) or "positive" (only its positive part, as
        iNNvestigate's deep Taylor does).
      relu_rule: a rule for every ReLU (guided backprop, deconvnet): `jxai.layers.Activation`
        modules and functional ``nn.relu`` / ``jax.nn.relu`` / ``jnp.maximum(x, 0)`` calls.
    """

    rules: Any = ()
    fold_batchnorm: bool = True
    activation_rule: Rule | None = Pass()
    batchnorm_rule: Rule | None = None
    pool_rule: Rule | str | None = None
    sum_rule: Rule | str | None = None
    batchnorm_view: str = "exact"
    mode: str = "auto"
    output: str = "logit"
    relu_rule: Rule | None = None
    name: str = ""
    canonizers: tuple[Canonizer, ...] | None = None

    def __post_init__(self):
        rules = self.rules.items() if isinstance(self.rules, Mapping) else self.rules
        rules = tuple((selector, rule) for selector, rule in rules)
        for selector, rule in rules:
            if not isinstance(rule, Rule) and rule != GRADIENT:
                raise TypeError(f"composite entry for {selector!r} is {rule!r}, not a jxai Rule "
                                f"(or {GRADIENT!r}: the layer keeps its own gradient, LRP-0)")
        object.__setattr__(self, "rules", rules)
        if self.mode not in ("auto", "gradient", "relevance"):
            raise ValueError(f"mode must be 'auto', 'gradient' or 'relevance', got {self.mode!r}")
        if self.canonizers is None:
            object.__setattr__(
                self, "canonizers", (MergeBatchNorm(),) if self.fold_batchnorm else ()
            )
        object.__setattr__(self, "canonizers", tuple(self.canonizers))
        for canonizer in self.canonizers:
            if not isinstance(canonizer, Canonizer):
                raise TypeError(
                    f"composite canonizer {canonizer!r} has no find(facts) and "
                    "parameters(params, layer, absorbed): see jxai.canonizers.Canonizer"
                )

    def map_rules(self, fn: Callable[[Rule], Rule]) -> Composite:
        """The same composite with ``fn`` applied to every rule it assigns."""

        def each(rule):
            return fn(rule) if isinstance(rule, Rule) else rule

        return dataclasses.replace(
            self,
            rules=tuple((s, fn(r)) for s, r in self.rules),
            activation_rule=each(self.activation_rule),
            batchnorm_rule=each(self.batchnorm_rule),
            pool_rule=each(self.pool_rule),
            sum_rule=each(self.sum_rule),
        )

    def plan(self, facts: GraphFacts) -> Plan:
        """Resolve the composite on a traced layer list."""
        if facts.unsupported:
            path, kind = facts.unsupported[0]
            others = len(facts.unsupported) - 1
            raise ValueError(
                f"layer {path!r} ({kind}) has parameters but no LRP rule"
                + (f" (and {others} more such layers)" if others else "")
                + ". LRP supports the layer kinds of jxai.kinds ("
                + ", ".join(kind.name for kind in kinds.all_kinds())
                + "; jxai.kinds.register_kind adds one); gradient methods (gradient, "
                "integrated_gradients, grad_cam, ...) work on any model."
            )
        positioned = {s: s.select(facts) for s, _ in self.rules if isinstance(s, _Position)}
        rewrites = _rewrites(self.canonizers, facts)
        assigned: dict[str, Any] = {
            info.path: FOLDED for rewrite in rewrites for info in rewrite.absorbed
        }
        for layer in facts.layers:
            if layer.path in assigned:  # absorbed by a canonizer
                continue
            rule = next((r for s, r in self.rules if _matches(s, layer, positioned)), None)
            kind = layer.layer_kind
            if kind.name == "activation":  # ReLUs need no rule, unless relu_rule says so
                if rule is None and self.relu_rule is not None:
                    rule = self.relu_rule if layer.activation == "relu" else None
                elif rule is None and not _is_relu(layer):
                    rule = self.activation_rule
            elif kind.rule_slot is not None:
                rule = rule or getattr(self, kind.rule_slot)
            if rule is not None:
                assigned[layer.path] = rule
        mode = self.mode
        if mode == "auto":
            needs = any(
                isinstance(rule, Rule) and rule.explicit and not facts[path].fed_by_input
                for path, rule in assigned.items()
            )
            mode = "relevance" if needs else "gradient"
        if mode == "relevance":
            _refuse_unplaced(
                facts.unplaced,
                f"composite {self.name or 'given'} needs the relevance mode (an input-independent "
                "rule such as Flat or WSquare inside the network), where every operation between "
                "layers must be known",
            )
            for layer in facts.layers:
                default = layer.layer_kind.default_rule("relevance")
                # a linear layer's "gradient" is LRP-0, which the relevance mode runs as a rule
                keeps_gradient = assigned.get(layer.path) == GRADIENT and layer.is_linear
                if (layer.path not in assigned or keeps_gradient) and default is not None:
                    assigned[layer.path] = default
        if self.relu_rule is not None:
            _refuse_unplaced(
                [op for op in facts.unplaced if op[2]],
                f"composite {self.name or 'given'} gives every ReLU the rule "
                f"{type(self.relu_rule).__name__}",
            )
        assigned = {path: rule for path, rule in assigned.items() if rule != GRADIENT}
        return Plan(
            tuple(assigned.items()),
            rewrites,
            mode,
            self.output == "positive",
            self.batchnorm_view,
        )


def _rewrites(canonizers, facts: GraphFacts) -> tuple:
    """Every canonizer's rewrites, in order; a layer rewritten twice is an error."""
    rewrites = tuple(rewrite for canonizer in canonizers for rewrite in canonizer.find(facts))
    paths = [rewrite.path for rewrite in rewrites]
    twice = sorted({path for path in paths if paths.count(path) > 1})
    if twice:
        raise ValueError(
            f"layers {twice} are rewritten by more than one canonizer; give each layer one"
        )
    return rewrites


def _refuse_unplaced(unplaced, why: str):
    """Raise, naming the operations the engine could not place and their module paths."""
    if not unplaced:
        return
    named = ", ".join(
        f"{operation} in module {path or '(the root module)'!r}"
        for operation, path, _ in unplaced[:3]
    )
    others = len(unplaced) - 3
    raise ValueError(
        f"{why}; it cannot place the operation(s) {named}"
        + (f" (and {others} more)" if others > 0 else "")
        + ". The engine places jax.nn / flax.linen activations (relu, gelu, silu, sigmoid, tanh, "
        "softplus, elu, leaky_relu, softmax...), jnp.maximum(x, 0), nn.avg_pool, nn.max_pool, "
        "jnp.mean over the spatial axes and x + y when they are called inside a module's own "
        "code or stored on it (act: Callable = nn.relu, self.act = nnx.relu), not through a "
        "reference jxai cannot see (a closure, a module-level alias taken at import, a list of "
        "functions) nor inside your own jax.jit. Write the operation so, or as a "
        "jxai.layers module (Activation, AvgPool, MaxPool, GlobalAvgPool, Sum), or use a "
        "gradient-mode method."
    )


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def _innvestigate(convention: str) -> bool:
    if convention not in ("paper", "innvestigate"):
        raise ValueError(f"convention must be 'paper' or 'innvestigate', got {convention!r}")
    return convention == "innvestigate"


def _alpha_beta_bias(bias: bool, inn: bool):
    return "both" if (bias and inn) else bias


def _sequential_preset(alpha: float, flat: bool, name: str) -> PresetBuilder:
    """iNNvestigate's sequential presets: ε on Dense, α-β on convolutions (A: α=1, B: α=2)."""

    def build(epsilon: float = 0.1, convention: str = "paper") -> Composite:
        inn = _innvestigate(convention)
        conv_rule = AlphaBeta(alpha, alpha - 1.0, _alpha_beta_bias(True, inn))
        return _sequential(conv_rule, epsilon, flat, inn, name)

    return build


def _sequential(conv_rule, epsilon, first, inn, name):
    rules = []
    if first:
        rules.append((input_layers, Flat()))
    rules += [(DENSE, Epsilon(epsilon)), (CONV, conv_rule)]
    # iNNvestigate's presets give BatchNorm Binder's αβ-X rule with α = (2, 0), β = (1, 0)
    bn_rule = AlphaBetaX((2.0, 0.0), (1.0, 0.0)) if inn else None
    return Composite(rules, name=name, **_batchnorm_policy(inn, bn_rule))


PresetBuilder = Callable[..., Composite]


def _lrp_simple(rule_factory: Callable[..., Rule], name: str) -> PresetBuilder:
    def build(convention: str = "paper", **params) -> Composite:
        inn = _innvestigate(convention)
        rule = rule_factory(inn=inn, **params)
        return Composite([(LINEAR, rule)], name=name, **_batchnorm_policy(inn, rule))

    factory = inspect.signature(rule_factory)
    params = [p for n, p in factory.parameters.items() if n != "inn"]
    convention = inspect.Parameter("convention", inspect.Parameter.KEYWORD_ONLY, default="paper")
    build.__signature__ = inspect.Signature(
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params] + [convention]
    )
    return build


def _batchnorm_policy(inn: bool, rule: Rule | None) -> dict:
    """Paper: fold BatchNorm into the layer before it. iNNvestigate: keep it as its own layer,
    with its (inexact) fused affine form and the analyzer's BatchNorm rule."""
    if not inn:
        return {}
    return dict(
        fold_batchnorm=False,
        batchnorm_rule=rule,
        batchnorm_view="innvestigate",
        pool_rule=Norm(0.0),
        sum_rule=Norm(0.0),
    )


def _alpha_beta(alpha=None, beta=None, bias=True, inn=False):
    if alpha is None and beta is None:
        raise ValueError("lrp.alpha_beta needs alpha or beta (alpha - beta = 1)")
    alpha = float(beta + 1 if alpha is None else alpha)
    beta = float(alpha - 1 if beta is None else beta)
    return AlphaBeta(alpha, beta, _alpha_beta_bias(bias, inn))


def _deep_taylor(low=None, high=None, convention="paper", name="deep_taylor") -> Composite:
    """Deep Taylor decomposition (Montavon et al. 2017) for ReLU networks.

    Hidden ReLU layers use z⁺; the layers fed by the input use w² (unbounded inputs, the paper's
    §4.1) or zᴮ (inputs in ``[low, high]``, §4.2). Only the positive part of the output is
    explained. ``convention="innvestigate"`` reproduces iNNvestigate 2.1.2, whose layer check
    treats every Dense/Conv as having an activation: z⁺ everywhere, zᴮ on the input layers when
    bounded, no w²; BatchNorm, ``Activation("relu")``, average pooling and adds pass relevance by
    their gradient (``R·γ/√(var+ε)``, ``[a > 0]·R``, a uniform split, a copy).
    """
    inn = _innvestigate(convention)
    rules = []
    if low is not None or high is not None:
        if low is None or high is None:
            raise ValueError("deep_taylor.bounded needs both low and high")
        rules.append((input_layers, ZBox(low, high)))
    elif not inn:
        rules.append((input_layers, WSquare()))
    rules.append((LINEAR, ZPlus(bias=False)))
    if inn:
        # iNNvestigate 2.1.2's DeepTaylor (analyzer/deeptaylor.py) registers "deep_taylor_relu"
        # (no kernel, no or only a ReLU activation: the gradient) before "deep_taylor_batch_norm";
        # a BatchNormalization has no activation, so the first one maps it: R·γ/√(var+ε), not
        # w² on its fused form. Activation("relu") layers get [a > 0]·R; an activation fused into
        # a Dense/Conv is dropped with it (the kernel rule copies the layer without activation).
        rules.insert(0, (_keras_fused_activations, Pass()))
        policy = {
            **_batchnorm_policy(True, GRADIENT),
            "pool_rule": Flat(),
            "sum_rule": GRADIENT,
            "relu_rule": GRADIENT,
        }
        return Composite(rules, output="positive", name=name, mode="relevance", **policy)
    return Composite(rules, output="positive", name=name)


def _zennit(conv_rule: Rule, first_rule: Rule | None, epsilon: float, name: str, first=None):
    rules = []
    if first_rule is not None:
        rules.append((first or first_layer, first_rule))
    rules += [(CONV, conv_rule), (DENSE, Epsilon(epsilon))]
    return Composite(rules, pool_rule=Norm(), name=name)


# --------------------------------------------------------------------------------------------
# The transformer composites (AttnLRP, CP-LRP)
# --------------------------------------------------------------------------------------------


def _is_softmax(layer) -> bool:
    return layer.activation == "softmax"


def _transformer_composite(name, softmax, epsilon, gamma, conv_gamma):
    def linear_rule(g) -> Rule:
        return Epsilon(epsilon) if g is None else Gamma(g, generalized=True)

    # The output layer keeps its gradient (LRP-0, as LXT does on every linear layer): ε there
    # only scales each explained logit by z/(z + ε), and needs every logit of the layer, which a
    # language model's head over its whole vocabulary makes the costliest product of the model.
    head = [(last_layer, GRADIENT)] if gamma is None else []
    return Composite(
        [
            *head,
            (kinds.CONVOLUTION, linear_rule(conv_gamma)),
            (kinds.LINEAR, linear_rule(gamma)),
            (transformer.NORMS, FrozenNorm()),
            (transformer.ATTENTION, Attention(softmax)),
            (transformer.PRODUCTS, Uniform() if softmax == "attn_lrp" else HeldGate()),
            (_is_softmax, AttnLRPSoftmax() if softmax == "attn_lrp" else CPSoftmax()),
        ],
        activation_rule=Pass(),
        name=name,
    )


def attn_lrp(epsilon: float = 1e-6, gamma: float | None = None, conv_gamma: float | None = None):
    """AttnLRP (Achtibat et al., ICML 2024) as a composite.

    ε (``epsilon``) on dense, convolution, ``DenseGeneral`` and ``Einsum`` layers, or the
    generalised γ-rule (Zennit's, signed inputs) with ``gamma`` on the linear layers and
    ``conv_gamma`` on the convolutions (LXT's ViT recipe grid-searches linear γ ∈ {0, 0.01, 0.05,
    0.1, 1} and convolution γ ∈ {0.1, 0.25, 100}); `FrozenNorm` on LayerNorm/RMSNorm/GroupNorm;
    the identity rule (`Pass`) on element-wise activations; `Attention` (uniform rule at
    ``q kᵀ`` and ``A v``, Prop. 3.1 at the softmax) on every dot-product attention;
    `AttnLRPSoftmax` on a softmax called in a module's own code; the uniform rule (`Uniform`) on
    `Multiply` products (gated MLPs). Residual sums and mean pooling keep their gradient (the
    z-rule), and so does the output layer when ``gamma`` is None (LRP-0, as in LXT: ε there
    would only scale the explained logit by z/(z + ε) but need every logit, for a language
    model's head the whole vocabulary). One gradient's cost.
    """
    return _transformer_composite("lrp.attn_lrp", "attn_lrp", epsilon, gamma, conv_gamma)


def cp_lrp(epsilon: float = 1e-6, gamma: float | None = None, conv_gamma: float | None = None):
    """CP-LRP (Ali et al., ICML 2022): `attn_lrp` with the attention weights held constant
    (``Attention("cp")``, `CPSoftmax`): relevance reaches the values only, none flows through
    the softmax into queries and keys. `Multiply` products keep the uniform rule (Ali et al. do
    not treat gated MLPs; LXT's CP variant stops the gate's gradient instead)."""
    return _transformer_composite("lrp.cp_lrp", "cp", epsilon, gamma, conv_gamma)


PRESETS: dict[str, PresetBuilder] = {
    f"lrp.sequential_preset_{letter}{suffix}": _sequential_preset(
        alpha, bool(suffix), f"lrp.sequential_preset_{letter}{suffix}"
    )
    for letter, alpha in (("a", 1.0), ("b", 2.0))
    for suffix in ("", "_flat")
}
PRESETS |= {
    "lrp.z": lambda convention="paper": (
        # iNNvestigate's LRPZ has bn_layer_rule="Z": the z-rule on its fused BatchNorm form
        Composite([], name="lrp.z", **_batchnorm_policy(True, Z()))
        if _innvestigate(convention)
        else Composite([], name="lrp.z")
    ),
    "lrp.epsilon": _lrp_simple(
        lambda inn, epsilon=1e-7, bias=True: Epsilon(epsilon, bias), "lrp.epsilon"
    ),
    "lrp.w_square": _lrp_simple(lambda inn: WSquare(), "lrp.w_square"),
    "lrp.flat": _lrp_simple(lambda inn: Flat(), "lrp.flat"),
    "lrp.alpha_beta": _lrp_simple(_alpha_beta, "lrp.alpha_beta"),
    "lrp.alpha_2_beta_1": _lrp_simple(
        lambda inn: AlphaBeta(2.0, 1.0, _alpha_beta_bias(True, inn)), "lrp.alpha_2_beta_1"
    ),
    "lrp.alpha_2_beta_1_IB": _lrp_simple(
        lambda inn: AlphaBeta(2.0, 1.0, False), "lrp.alpha_2_beta_1_IB"
    ),
    "lrp.alpha_1_beta_0": _lrp_simple(
        lambda inn: AlphaBeta(1.0, 0.0, _alpha_beta_bias(True, inn)), "lrp.alpha_1_beta_0"
    ),
    "lrp.alpha_1_beta_0_IB": _lrp_simple(
        lambda inn: AlphaBeta(1.0, 0.0, False), "lrp.alpha_1_beta_0_IB"
    ),
    "lrp.z_plus": _lrp_simple(lambda inn, bias=False: ZPlus(bias=bias), "lrp.z_plus"),
    "lrp.z_plus_fast": _lrp_simple(lambda inn: ZPlusFast(), "lrp.z_plus_fast"),
    "deep_taylor": lambda convention="paper": _deep_taylor(convention=convention),
    "deep_taylor.bounded": lambda low, high, convention="paper": _deep_taylor(
        low, high, convention, "deep_taylor.bounded"
    ),
    "lrp.epsilon_plus": lambda epsilon=1e-6: _zennit(
        ZPlus(bias=True), None, epsilon, "lrp.epsilon_plus"
    ),
    "lrp.epsilon_plus_flat": lambda epsilon=1e-6: _zennit(
        ZPlus(bias=True), Flat(), epsilon, "lrp.epsilon_plus_flat"
    ),
    "lrp.epsilon_alpha2_beta1": lambda epsilon=1e-6: _zennit(
        AlphaBeta(2.0, 1.0, True), None, epsilon, "lrp.epsilon_alpha2_beta1"
    ),
    "lrp.epsilon_alpha2_beta1_flat": lambda epsilon=1e-6: _zennit(
        AlphaBeta(2.0, 1.0, True), Flat(), epsilon, "lrp.epsilon_alpha2_beta1_flat"
    ),
    "lrp.epsilon_gamma_box": lambda low, high, epsilon=1e-6, gamma=0.25: _zennit(
        Gamma(gamma, generalized=True),
        ZBox(low, high),
        epsilon,
        "lrp.epsilon_gamma_box",
        first=lambda layer: layer.is_conv and layer.fed_by_input,
    ),
    "lrp.excitation_backprop": lambda: Composite(
        [(LINEAR, ZPlus(bias=True))], pool_rule=Norm(), name="lrp.excitation_backprop"
    ),
    "lrp.attn_lrp": attn_lrp,  # AttnLRP (Achtibat et al. 2024)
    "lrp.cp_lrp": cp_lrp,  # CP-LRP (Ali et al. 2022)
    "guided_backprop": lambda: Composite(
        [],
        fold_batchnorm=False,
        activation_rule=None,
        relu_rule=GuidedBackprop(),
        name="guided_backprop",
    ),
    "deconvnet": lambda: Composite(
        [], fold_batchnorm=False, activation_rule=None, relu_rule=DeconvNet(), name="deconvnet"
    ),
}


def preset(name: str, **params) -> Composite:
    """The composite registered under ``name`` with its parameters (e.g. ``epsilon``, ``low``)."""
    if name not in PRESETS:
        raise KeyError(name)
    builder = PRESETS[name]
    try:
        inspect.signature(builder).bind(**params)
    except TypeError as error:
        accepted = ", ".join(inspect.signature(builder).parameters) or "none"
        raise TypeError(f"invalid parameters for {name}: {error} (accepted: {accepted})") from None
    composite = builder(**params)
    if params.get("convention") == "innvestigate":
        composite = composite.map_rules(_exact_zero_guard)
    return composite


def _exact_zero_guard(rule: Rule) -> Rule:
    """iNNvestigate divides without a stabilizer, replacing only exact zeros."""
    if any(f.name == "stabilizer" for f in dataclasses.fields(rule)):
        return dataclasses.replace(rule, stabilizer=0.0)
    return rule


def composite_for(value: Composite | Sequence | Mapping) -> Composite:
    """Accept a `Composite` or its rule list/mapping."""
    return value if isinstance(value, Composite) else Composite(value)
