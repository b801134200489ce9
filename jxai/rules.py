"""LRP rules: small frozen objects with the paper's name and formula.

Notation for a layer ``z = layer(a)`` with weights ``w`` and bias ``b``: ``z_k = Σ_j a_j w_jk + b_k``,
``R_k`` the relevance of output ``k``, ``x⁺ = max(0, x)``, ``x⁻ = min(0, x)``, and
``stabilize(z) = z + ε·sign(z)`` with ``sign(0) = +1``.

Every rule is written ``R_j = Σ_k (numerator_jk / denominator_k) · R_k``. The engine calls one of
two methods (one generic `jax.custom_vjp` serves every rule):

* ``backward(layer, a, relevance) -> c`` for rules whose input relevance is proportional to the
  input activation. The result is a *cotangent* ``c`` with ``R_in = a ⊙ c``: in the engine's
  gradient × input convention the cotangent flowing backward stays a gradient, so layers no rule
  touches (reshapes, concatenations, max-pooling, additions) remain correct.
* ``relevance(layer, a, relevance) -> R_in`` for rules that are not proportional to the input
  (`Flat`, `WSquare`, `ZBox`: ``explicit = True``). The engine applies them where the input
  relevance can be stored as such (the layers fed by the model input, or everywhere in the
  relevance mode).

A new rule is a frozen dataclass subclassing `Rule` with a ``backward`` (or ``relevance``) written
with `Layer`'s three operations (forward, vjp, modified parameters); see ``docs`` in the README and
``tests/test_rules.py::test_user_rule``.

References:
  Bach et al. 2015, "On pixel-wise explanations ... by layer-wise relevance propagation", PLoS ONE.
  Montavon et al. 2017, "Explaining nonlinear classification decisions with deep Taylor
  decomposition", Pattern Recognition. Montavon et al. 2019, "Layer-wise relevance propagation:
  an overview". Andéol et al. 2021, "Learning domain invariant representations by joint
  Wasserstein distance minimization" (generalized γ). Springenberg et al. 2015 (guided
  backprop); Zeiler & Fergus 2014 (deconvnet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "AlphaBeta",
    "AlphaBetaX",
    "Attention",
    "AttnLRPSoftmax",
    "CPSoftmax",
    "DeconvNet",
    "DeepLiftMaxPool",
    "DeepLiftRescale",
    "Epsilon",
    "Flat",
    "FrozenNorm",
    "Gamma",
    "GuidedBackprop",
    "HeldGate",
    "Identity",
    "Layer",
    "Norm",
    "Pass",
    "PatternKernel",
    "Rule",
    "Uniform",
    "WSquare",
    "Z",
    "ZBox",
    "ZPlus",
    "ZPlusFast",
    "stabilize",
]


# --------------------------------------------------------------------------------------------
# The layer a rule sees
# --------------------------------------------------------------------------------------------


def _leaf_name(path: tuple) -> str:
    return str(getattr(path[-1], "key", path[-1]))


@dataclasses.dataclass(frozen=True)
class Layer:
    """A linear (affine) layer as a rule sees it: ``z = fn(params, a)``.

    ``params`` maps names to arrays: the kernel-like ones named in ``kernel_names`` (weights) and
    the bias-like ones in ``bias_names``, added on the last (feature) axis; the layer kind's
    view chooses them (`jxai.kinds`; parameter-free layers such as a sum or an average pooling
    have none). ``output`` is the unmodified forward output ``z``. ``nonnegative_input`` is set
    when the engine has proven the input non-negative (it follows a ReLU): signed-input rules
    then skip their ``a⁻`` terms.
    """

    fn: Callable[[Any, Any], Any]
    params: Any
    output: Any
    nonnegative_input: bool = False
    kernel_names: tuple[str, ...] = ("kernel",)
    bias_names: tuple[str, ...] = ("bias",)

    def forward(self, a, params=None):
        """``fn(params, a)``; ``params`` defaults to the layer's own."""
        return self.fn(self.params if params is None else params, a)

    def vjp(self, cotangent, a, params=None):
        """Transpose of the layer's linear part applied to ``cotangent`` (``Wᵀ s``), w.r.t. ``a``."""
        _, pullback = jax.vjp(lambda x: self.forward(x, params), a)
        return pullback(cotangent)[0]

    def forward_and_vjp(self, a, params=None):
        """``(z, pullback)`` of the layer with (modified) ``params`` at input ``a``."""
        z, pullback = jax.vjp(lambda x: self.forward(x, params), a)
        return z, lambda s: pullback(s)[0]

    def modified(self, kernel: Callable | None = None, bias: Callable | None | str = "keep"):
        """Parameters with ``kernel(w)`` on the weights and ``bias(b)`` on the bias.

        ``bias="keep"`` leaves the bias, ``bias=None`` removes it (zeros), a callable maps it.
        Parameters that are neither kernel- nor bias-like stay as they are.
        """

        def leaf(path, value):
            name = _leaf_name(path)
            if name in self.kernel_names:
                return value if kernel is None else kernel(value)
            if bias == "keep" or name not in self.bias_names:
                return value
            if bias is None:
                return jnp.zeros_like(value)
            return bias(value)

        return jax.tree_util.tree_map_with_path(leaf, self.params)

    @property
    def has_params(self) -> bool:
        return bool(jax.tree.leaves(self.params))

    def bias_output(self):
        """The bias broadcast to the output's shape (zeros for a layer without bias)."""
        names = [n for n in self.bias_names if n in self.params] if isinstance(
            self.params, dict) else []
        if not names:
            return jnp.zeros_like(self.output)
        biases = [jnp.broadcast_to(self.params[n], self.output.shape) for n in names]
        return sum(biases[1:], biases[0]).astype(self.output.dtype)


ZERO_GUARD = 1e-7


def stabilize(z, epsilon: float):
    """``z + ε·sign(z)`` with ``sign(0) = +1``, so the denominator never vanishes.

    ``ε = 0`` only guards exact zeros (``z = 0`` becomes ``1e-7``), iNNvestigate's ``safe_divide``.
    """
    if isinstance(epsilon, int | float) and epsilon == 0:
        return jnp.where(z == 0, jnp.asarray(ZERO_GUARD, z.dtype), z)
    return z + epsilon * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _positive(x):
    return jax.tree.map(lambda v: jnp.maximum(v, 0), x)


def _negative(x):
    return jax.tree.map(lambda v: jnp.minimum(v, 0), x)


def _where_positive(a, if_positive, if_negative):
    """``[a>0]·p + [a<0]·n`` leaf by leaf (the input-sign split of signed-input rules)."""
    return jax.tree.map(
        lambda v, p, n: jnp.where(v > 0, p, jnp.where(v < 0, n, jnp.zeros_like(p))),
        a,
        if_positive,
        if_negative,
    )


def _tree_add(*trees):
    return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *trees)


def _tree_scale(tree, factor):
    return jax.tree.map(lambda v: v * factor, tree)


def _check(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


# --------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """Base class of all rules. Subclasses are frozen dataclasses (hashable, static under jit).

    ``explicit`` rules implement ``relevance``; the others implement ``backward``.
    ``elementwise`` rules act on shape-preserving layers (activations) and receive ``layer=None``.
    """

    explicit: ClassVar[bool] = False
    elementwise: ClassVar[bool] = False
    gradient_rule: ClassVar[bool] = False

    def backward(self, layer: Layer, a, relevance):
        """Input cotangent ``c`` with ``R_in = a ⊙ c`` for the output relevance ``relevance``."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def relevance(self, layer: Layer, a, relevance):
        """Input relevance. The default derives it from ``backward``: ``R_in = a ⊙ c``."""
        c = self.backward(layer, a, relevance)
        return jax.tree.map(lambda x, ci: x * ci, a, c)


# --------------------------------------------------------------------------------------------
# Proportional rules
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Z(Rule):
    """LRP-0: ``R_j = Σ_k a_j w_jk / z_k · R_k`` (bias in ``z``).

    Neurons with ``z_k = 0`` pass no relevance. On ReLU networks LRP-0 equals gradient × input.
    Bach et al. 2015, eq. (56).
    """

    def backward(self, layer, a, relevance):
        z = layer.output
        safe = jnp.where(z == 0, 1.0, z)
        return layer.vjp(jnp.where(z == 0, 0.0, relevance / safe), a)


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: ``R_j = Σ_k a_j w_jk / stabilize(z_k) · R_k``.

    Args:
      epsilon: ε > 0, added with the sign of ``z`` (``sign(0) = +1``).
      bias: keep the bias in ``z`` (True) or drop it from the denominator (False, Zennit's
        ``zero_params='bias'``).
      std_scaled: use ``ε·std(z)`` per sample (over all non-batch axes) instead of ``ε``, the
        "ε = 0.25·std" rule of Montavon et al. 2019, §10.2.

    Bach et al. 2015, eq. (58); Montavon et al. 2019, eq. (5).
    """

    epsilon: float = 1e-6
    bias: bool = True
    std_scaled: bool = False

    def __post_init__(self):
        _check(
            self.epsilon > 0, f"Epsilon needs epsilon > 0, got {self.epsilon}; use Z() for LRP-0"
        )

    def backward(self, layer, a, relevance):
        z = layer.output if self.bias else layer.forward(a, layer.modified(bias=None))
        eps = self.epsilon
        if self.std_scaled:
            axes = tuple(range(1, z.ndim))
            eps = self.epsilon * jnp.std(z, axis=axes, keepdims=True)
        return layer.vjp(relevance / stabilize(z, eps), a)


@dataclasses.dataclass(frozen=True)
class Norm(Rule):
    """Normalising rule for parameter-free sums and average poolings: ``R_j = a_j / Σ a · R``.

    It is LRP-0 on a layer without parameters, with a sign-aligned stabilizer.
    Zennit calls it ``Norm``; iNNvestigate applies the same z-rule to ``Add`` and average pooling.
    """

    stabilizer: float = 1e-6

    def backward(self, layer, a, relevance):
        return layer.vjp(relevance / stabilize(layer.output, self.stabilizer), a)


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ: favour positive contributions, ``ρ(w) = w + γ w⁺``, ``ρ(b) = b + γ b⁺``.

    Standard form (Montavon et al. 2019, eq. (7)), for non-negative inputs:
    ``R_j = Σ_k a_j ρ(w_jk) / stabilize(Σ_j a_j ρ(w_jk) + ρ(b_k)) · R_k``.

    ``generalized=True`` is the signed-input form of Andéol et al. (Zennit's ``Gamma``): neurons
    with ``z_k > 0`` use ``a⁺(w + γw⁺) + a⁻(w + γw⁻)`` and bias ``b + γb⁺``, neurons with
    ``z_k < 0`` use ``a⁺(w + γw⁻) + a⁻(w + γw⁺)`` and bias ``b + γb⁻``; ``z_k = 0`` passes nothing.
    """

    gamma: float = 0.25
    generalized: bool = False
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check(self.gamma >= 0, f"Gamma needs gamma >= 0, got {self.gamma}")

    def backward(self, layer, a, relevance):
        g = self.gamma
        plus = layer.modified(
            lambda w: w + g * jnp.maximum(w, 0), lambda b: b + g * jnp.maximum(b, 0)
        )
        if not self.generalized:
            z, pullback = layer.forward_and_vjp(a, plus)
            return pullback(relevance / stabilize(z, self.stabilizer))
        minus = layer.modified(
            lambda w: w + g * jnp.minimum(w, 0), lambda b: b + g * jnp.minimum(b, 0)
        )
        plus_nb = layer.modified(lambda w: w + g * jnp.maximum(w, 0), None)
        minus_nb = layer.modified(lambda w: w + g * jnp.minimum(w, 0), None)
        z = layer.output
        if layer.nonnegative_input:  # a⁻ = 0: one modified layer per output sign
            z_up, pull_up = layer.forward_and_vjp(a, plus)
            z_down, pull_down = layer.forward_and_vjp(a, minus)
            s_up = jnp.where(z > 0, relevance, 0.0) / stabilize(z_up, self.stabilizer)
            s_down = jnp.where(z < 0, relevance, 0.0) / stabilize(z_down, self.stabilizer)
            return _tree_add(pull_up(s_up), pull_down(s_down))
        a_pos, a_neg = _positive(a), _negative(a)
        z_up = layer.forward(a_pos, plus) + layer.forward(a_neg, minus_nb)
        z_down = layer.forward(a_pos, minus) + layer.forward(a_neg, plus_nb)
        s_up = jnp.where(z > 0, relevance, 0.0) / stabilize(z_up, self.stabilizer)
        s_down = jnp.where(z < 0, relevance, 0.0) / stabilize(z_down, self.stabilizer)
        # a⁺ multiplies ρ⁺ in the upper and ρ⁻ in the lower denominator; a⁻ the other way round.
        c_pos = _tree_add(layer.vjp(s_up, a, plus_nb), layer.vjp(s_down, a, minus_nb))
        c_neg = _tree_add(layer.vjp(s_up, a, minus_nb), layer.vjp(s_down, a, plus_nb))
        return _where_positive(a, c_pos, c_neg)


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ with α − β = 1 (Bach et al. 2015, eq. (60)):

    ``R_j = Σ_k [ α (a_j w_jk)⁺ / (Σ_j (a_j w_jk)⁺ + b_k⁺) − β (a_j w_jk)⁻ / (Σ_j (a_j w_jk)⁻ + b_k⁻) ] R_k``

    with ``(a w)⁺ = a⁺w⁺ + a⁻w⁻`` and ``(a w)⁻ = a⁺w⁻ + a⁻w⁺``.

    Args:
      alpha, beta: α ≥ 1, β ≥ 0, α − β = 1.
      bias: ``True`` puts ``b⁺`` in the positive and ``b⁻`` in the negative denominator (the
        paper, Zennit); ``False`` ignores the bias (iNNvestigate's ``*_IB``); ``"both"`` puts the
        full bias ``b`` in both denominators (iNNvestigate 2.1.2's ``AlphaBetaRule(bias=True)``,
        which can flip a denominator's sign; used by ``convention="innvestigate"``).
      stabilizer: sign-aligned guard of the denominators.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool | str = True
    stabilizer: float = 1e-6

    def __post_init__(self):
        _check(
            self.alpha >= 0 and self.beta >= 0 and abs(self.alpha - self.beta - 1.0) < 1e-9,
            f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1, got alpha={self.alpha}, "
            f"beta={self.beta}",
        )
        _check(
            self.bias in (True, False, "both"),
            f"bias must be True, False or 'both', got {self.bias!r}",
        )

    def _bias(self, part: Callable):
        if self.bias is False:
            return None
        if self.bias == "both":
            return "keep"
        return part

    def backward(self, layer, a, relevance):
        w_pos = layer.modified(lambda w: jnp.maximum(w, 0), None)
        w_neg = layer.modified(lambda w: jnp.minimum(w, 0), None)
        signed = not layer.nonnegative_input  # after a ReLU, a⁻ = 0: half the work
        a_pos, a_neg = (_positive(a), _negative(a)) if signed else (a, None)
        bias = layer.bias_output() if self.bias is not False else None

        def part(w_for_pos_input, w_for_neg_input, bias_part, weight):
            """``weight · R / (a⁺ w₁ + a⁻ w₂ + b_part)`` pulled back to the input."""
            z, pull_pos = layer.forward_and_vjp(a_pos, w_for_pos_input)
            if signed:
                z_neg, pull_neg = layer.forward_and_vjp(a_neg, w_for_neg_input)
                z = z + z_neg
            if bias is not None:
                z = z + (bias if self.bias == "both" else bias_part(bias))
            s = weight * relevance / stabilize(z, self.stabilizer)
            if not signed:
                return pull_pos(s)
            return _where_positive(a, pull_pos(s), pull_neg(s))

        c = part(w_pos, w_neg, lambda b: jnp.maximum(b, 0), self.alpha)
        if self.beta == 0:
            return c
        c_neg = part(w_neg, w_pos, lambda b: jnp.minimum(b, 0), self.beta)
        return jax.tree.map(lambda p, n: p - n, c, c_neg)


@dataclasses.dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """z⁺ (deep Taylor for ReLU layers): α = 1, β = 0.

    ``R_j = Σ_k (a_j w_jk)⁺ / (Σ_j (a_j w_jk)⁺ [+ b_k⁺]) · R_k``. ``bias=False`` (the DTD paper,
    iNNvestigate's ``lrp.z_plus``) or ``True`` (b⁺ in the denominator, Zennit's ``ZPlus``).
    Montavon et al. 2017, eq. (11).
    """

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool | str = False

    def __post_init__(self):
        _check(self.alpha == 1.0 and self.beta == 0.0, "ZPlus fixes alpha=1, beta=0; use AlphaBeta")
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class AlphaBetaX(Rule):
    """Binder's αβ-X: each (input sign, weight sign) quadrant normalised by its own sum.

    With ``r_pq = a^p ⊙ Wᵀ_q (R / (a^p W_q + b_q))`` (``p, q ∈ {+, −}``, bias ``b⁺``/``b⁻`` with
    the weights of its sign), the result is ``α₀ r₊₊ + β₁ r₋₋ − (β₀ r₊₋ + β₁ r₋₊)``. The ``β₁`` on
    ``r₋₋`` (where ``α₁`` is meant) is iNNvestigate 2.1.2's code, kept so that its presets'
    BatchNorm rule ``AlphaBetaX2m100`` (α = (2, 0), β = (1, 0): ``2 r₊₊ − r₊₋``) is reproduced.
    """

    alpha: tuple[float, float] = (0.5, 0.5)
    beta: tuple[float, float] = (0.5, 0.5)
    stabilizer: float = 0.0

    def backward(self, layer, a, relevance):
        w_pos = layer.modified(lambda w: jnp.maximum(w, 0), lambda b: jnp.maximum(b, 0))
        w_neg = layer.modified(lambda w: jnp.minimum(w, 0), lambda b: jnp.minimum(b, 0))
        a_pos, a_neg = _positive(a), _negative(a)

        def quadrant(x_part, params, weight):
            if weight == 0:
                return None
            z, pullback = layer.forward_and_vjp(x_part, params)
            c = pullback(weight * relevance / stabilize(z, self.stabilizer))
            return c

        (alpha0, _), (beta0, beta1) = self.alpha, self.beta
        pieces = [
            (a > 0, quadrant(a_pos, w_pos, alpha0)),
            (a < 0, quadrant(a_neg, w_neg, beta1)),
            (a > 0, quadrant(a_pos, w_neg, -beta0)),
            (a < 0, quadrant(a_neg, w_pos, -beta1)),
        ]
        total = jnp.zeros_like(a)
        for mask, c in pieces:
            if c is not None:
                total = total + jnp.where(mask, c, 0.0)
        return total


@dataclasses.dataclass(frozen=True)
class ZPlusFast(Rule):
    """z⁺ assuming non-negative inputs: ``R_j = Σ_k a_j w_jk⁺ / Σ_j a_j w_jk⁺ · R_k`` (no bias).

    One modified forward and one VJP; iNNvestigate's ``lrp.z_plus_fast``.
    """

    stabilizer: float = 1e-6

    def backward(self, layer, a, relevance):
        z, pullback = layer.forward_and_vjp(a, layer.modified(lambda w: jnp.maximum(w, 0), None))
        return pullback(relevance / stabilize(z, self.stabilizer))


# --------------------------------------------------------------------------------------------
# Explicit (input-layer) rules: relevance not proportional to the input
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    """w²-rule: ``R_i = Σ_j w_ij² / Σ_i' w_i'j² · R_j`` (Montavon et al. 2017, eq. (13)).

    ``bias=True`` adds ``b_j²`` to the denominator (Zennit's ``WSquare``); the default drops it
    (the paper, iNNvestigate).
    """

    explicit: ClassVar[bool] = True
    bias: bool = False
    stabilizer: float = 1e-6

    def relevance(self, layer, a, relevance):
        squared = layer.modified(jnp.square, jnp.square if self.bias else None)
        ones = jax.tree.map(jnp.ones_like, a)
        z, pullback = layer.forward_and_vjp(ones, squared)
        return pullback(relevance / stabilize(z, self.stabilizer))


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """Flat rule: ``R_i = Σ_j 1/N_j · R_j`` with ``N_j`` the receptive-field size of ``j``.

    The w²-rule with all weights equal to one; the bias is ignored (Lapuschkin et al. 2019).
    """

    explicit: ClassVar[bool] = True
    stabilizer: float = 1e-6

    def relevance(self, layer, a, relevance):
        flat = layer.modified(jnp.ones_like, None)
        ones = jax.tree.map(jnp.ones_like, a)
        z, pullback = layer.forward_and_vjp(ones, flat)
        return pullback(relevance / stabilize(z, self.stabilizer))


def _bound(value, name: str):
    if isinstance(value, int | float):
        return float(value)
    flat = tuple(float(v) for v in np.ravel(np.asarray(value)).tolist())
    _check(len(flat) > 0, f"ZBox {name} is empty")
    return flat


@dataclasses.dataclass(frozen=True)
class ZBox(Rule):
    """zᴮ-rule for inputs bounded in ``[low, high]`` (Montavon et al. 2017, eq. (14)):

    ``R_i = Σ_j (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) / Σ_i (x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻) · R_j``.

    ``low``/``high`` are scalars or per-channel sequences (broadcast over the last, channel axis),
    e.g. the bounds of a mean–std normalised image. The bias is not used.
    """

    explicit: ClassVar[bool] = True
    low: float | tuple[float, ...] = -1.0
    high: float | tuple[float, ...] = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "low", _bound(self.low, "low"))
        object.__setattr__(self, "high", _bound(self.high, "high"))
        low, high = np.asarray(self.low), np.asarray(self.high)
        _check(
            bool(np.all(low <= high)),
            f"ZBox needs low <= high everywhere, got low={self.low}, high={self.high}",
        )

    def relevance(self, layer, a, relevance):
        low = jnp.broadcast_to(jnp.asarray(self.low, a.dtype), a.shape)
        high = jnp.broadcast_to(jnp.asarray(self.high, a.dtype), a.shape)
        plain = layer.modified(None, None)
        w_pos = layer.modified(lambda w: jnp.maximum(w, 0), None)
        w_neg = layer.modified(lambda w: jnp.minimum(w, 0), None)
        z = layer.forward(a, plain) - layer.forward(low, w_pos) - layer.forward(high, w_neg)
        s = relevance / stabilize(z, self.stabilizer)
        return (
            a * layer.vjp(s, a, plain)
            - low * layer.vjp(s, a, w_pos)
            - high * layer.vjp(s, a, w_neg)
        )


# --------------------------------------------------------------------------------------------
# Elementwise rules (activations, shape-preserving layers)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged through a shape-preserving layer: ``R_in = R_out``.

    On an elementwise activation ``f`` this is the identity rule (its gradient × input cotangent is
    ``f(a)/a · g``). Zennit's ``Pass``; LXT's identity rule.
    """

    elementwise: ClassVar[bool] = True

    def backward(self, layer, a, relevance):
        safe = jnp.where(a == 0, 1.0, a)
        return jnp.where(a == 0, 0.0, relevance / safe)


Identity = Pass
"""The identity rule for non-ReLU elementwise activations (an alias of `Pass`)."""


@dataclasses.dataclass(frozen=True)
class GuidedBackprop(Rule):
    """Guided backpropagation through a ReLU: ``c = [a > 0] · max(g, 0)`` (Springenberg et al. 2015).

    A gradient rule: ``backward`` receives the output *gradient* (``gradient_rule = True``).
    """

    elementwise: ClassVar[bool] = True
    gradient_rule: ClassVar[bool] = True

    def backward(self, layer, a, gradient):
        return jnp.where(a > 0, jnp.maximum(gradient, 0), 0.0)


@dataclasses.dataclass(frozen=True)
class DeconvNet(Rule):
    """DeconvNet through a ReLU: ``c = max(g, 0)``, independent of the forward input (Zeiler & Fergus 2014)."""

    elementwise: ClassVar[bool] = True
    gradient_rule: ClassVar[bool] = True

    def backward(self, layer, a, gradient):
        return jnp.maximum(gradient, 0)


# --------------------------------------------------------------------------------------------
# Transformer rules: AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022)
# --------------------------------------------------------------------------------------------
# All in the gradient × input convention: ``R_out = z ⊙ g`` and ``R_in = a ⊙ c``. Each is one
# (scaled or stop-gradient) VJP, the cost of the ε-rule. `Pass` is AttnLRP's identity rule for
# element-wise nonlinearities (Eq. 9: ``c = g · f(x)/x``, so ``R_in = R_out``).


@dataclasses.dataclass(frozen=True)
class FrozenNorm(Rule):
    """LayerNorm / RMSNorm / GroupNorm with the normaliser held constant.

    With ``σ`` a constant, LayerNorm ``z = (x − E[x]) / σ · γ + β`` is affine,
    ``z = J̃ x + β`` with ``J̃ = diag(γ/σ) (I − 11ᵀ/N)`` (RMSNorm: ``J̃ = diag(γ/rms(x))``;
    GroupNorm per group). LRP-0 on that map (AttnLRP Prop. 3.4; the LN-rule of Ali et al. 2022):

    ``R_j = Σ_k x_j J̃_kj / z_k · R_k``,  so  ``Σ_j R_j = Σ_k (z_k − β_k)/z_k · R_k``

    (conserved up to the bias). The centering ``x − E[x]`` is kept linear, not treated as the
    identity: its relevance is the ε/z-rule's, as in LXT's ``layer_norm`` and Ali et al.; for
    RMSNorm (no centering, no bias) the rule is the identity ``R_in = R_out``.

    Gradient × input: ``c = J̃ᵀ g``, the layer's VJP with ``stop_gradient(1/σ)`` (the engine's
    view of a norm layer, `jxai.transformer.norm_view`). ``stabilizer`` guards ``z_k = 0`` in
    the relevance mode.
    """

    gradient_rule: ClassVar[bool] = True
    stabilizer: float = 0.0

    def backward(self, layer, a, gradient):
        return layer.vjp(gradient, a)

    def relevance(self, layer, a, relevance):
        return a * layer.vjp(relevance / stabilize(layer.output, self.stabilizer), a)


@dataclasses.dataclass(frozen=True)
class Uniform(Rule):
    """The uniform rule for a product of ``n`` activations (AttnLRP Prop. 3.2 and 3.3).

    Element-wise ``z = a ⊙ b``: ``R_a = R_b = R / 2``. Bilinear ``z = A B`` (a matrix product,
    an einsum): ε-LRP then the uniform split, ``R_A = A ⊙ ((R / (2·z)) Bᵀ)``,
    ``R_B = B ⊙ (Aᵀ (R / (2·z)))``. The layer's input is the tuple of factors.

    Gradient × input: each factor's cotangent is ``1/n`` of its true gradient, ``c_i = Jᵢᵀ g / n``
    (LXT's ``divide_gradient``). ``stabilizer`` is the ε of the relevance mode's ``R / z``.
    """

    gradient_rule: ClassVar[bool] = True
    stabilizer: float = 1e-9

    def backward(self, layer, a, gradient):
        n = len(a)
        return tuple(c / n for c in layer.vjp(gradient, a))

    def relevance(self, layer, a, relevance):
        n = len(a)
        c = layer.vjp(relevance / (n * stabilize(layer.output, self.stabilizer)), a)
        return tuple(x * ci for x, ci in zip(a, c, strict=True))


@dataclasses.dataclass(frozen=True)
class HeldGate(Rule):
    """A gated product ``z = g ⊙ u`` with the gate ``g`` (the first factor) held constant: all
    of the relevance goes to ``u``, ``R_u = R``, ``R_g = 0`` — LXT's CP-LRP for gated MLPs
    (SwiGLU: ``silu(gate_proj(x)) ⊙ up_proj(x)``), the gated counterpart of CP-LRP's constant
    attention weights (Ali et al., ICML 2022).

    Gradient × input: ``c_g = 0``, ``c_u = g ⊙ c`` (the true gradient of ``u``).
    """

    gradient_rule: ClassVar[bool] = True
    stabilizer: float = 1e-9

    def backward(self, layer, a, gradient):
        gate, up = layer.vjp(gradient, a)
        return jnp.zeros_like(gate), up

    def relevance(self, layer, a, relevance):
        return jnp.zeros_like(a[0]), relevance


def _finite(a):
    return jnp.where(jnp.isfinite(a), a, 0.0)


@dataclasses.dataclass(frozen=True)
class AttnLRPSoftmax(Rule):
    """AttnLRP's softmax rule: deep Taylor decomposition at ``x`` with bias (Prop. 3.1):

    ``R_in_i = x_i · (R_i − s_i Σ_j R_j)``,  ``s = softmax(x)`` over ``axis``

    (``−inf`` logits of a mask count as 0, as in LXT). Gradient × input: with ``R = s ⊙ g`` the
    cotangent ``c = R − s Σ_j R_j = s ⊙ (g − Σ_j s_j g_j)`` is the softmax's own VJP, so in this
    convention AttnLRP differentiates the softmax unchanged.
    """

    elementwise: ClassVar[bool] = True
    axis: int = -1

    def backward(self, layer, a, relevance):
        return relevance - layer.output * jnp.sum(relevance, axis=self.axis, keepdims=True)

    def relevance(self, layer, a, relevance):
        return _finite(a) * self.backward(layer, a, relevance)


@dataclasses.dataclass(frozen=True)
class CPSoftmax(Rule):
    """CP-LRP's softmax (Ali et al. 2022): the attention weights are held constant, so no
    relevance flows into the softmax's input, ``R_in = 0`` (``c = 0``, a ``stop_gradient``);
    the attention output ``A v`` is then linear in ``v``, which receives all of it."""

    elementwise: ClassVar[bool] = True

    def backward(self, layer, a, relevance):
        return jnp.zeros_like(a)

    def relevance(self, layer, a, relevance):
        return jnp.zeros_like(a)


@dataclasses.dataclass(frozen=True)
class Attention(Rule):
    """Dot-product attention ``z = softmax(q kᵀ/√d + bias) v`` with AttnLRP's or CP-LRP's rules.

    ``softmax="attn_lrp"`` (Achtibat et al. 2024): the uniform rule at ``A v`` (Prop. 3.3: half
    of ``R`` to ``A``, half to ``v``), `AttnLRPSoftmax` at the softmax (Prop. 3.1), the uniform
    rule at ``q kᵀ`` (half to ``q``, half to ``k``). ``softmax="cp"`` (Ali et al. 2022): ``A`` is
    a constant, ``R_v = v ⊙ Aᵀ (R / z)`` takes everything, ``q`` and ``k`` nothing.

    Gradient × input: the cotangents are the true attention VJP scaled per input, ``(c_q, c_k,
    c_v) = (¼ J_qᵀ g, ¼ J_kᵀ g, ½ J_vᵀ g)`` for AttnLRP (LXT's ÷4, ÷4, ÷2) and
    ``(0, 0, J_vᵀ g)`` for CP-LRP. The relevance mode applies the same scaled VJP to
    ``R / stabilize(z)`` and multiplies by the inputs (the chain of the explicit rules above).
    The layer's input is ``(query, key, value)``; the mask and bias are not explained.
    """

    gradient_rule: ClassVar[bool] = True
    softmax: str = "attn_lrp"
    stabilizer: float = 1e-9

    def __post_init__(self):
        _check(
            self.softmax in ("attn_lrp", "cp"),
            f"Attention softmax must be 'attn_lrp' or 'cp', got {self.softmax!r}",
        )

    @property
    def factors(self) -> tuple[float, float, float]:
        """The shares of the true gradient that reach ``(query, key, value)``."""
        return (0.25, 0.25, 0.5) if self.softmax == "attn_lrp" else (0.0, 0.0, 1.0)

    def _scaled_vjp(self, layer, a, cotangent):
        q, k, v = a
        fq, fk, fv = self.factors
        if fq == 0:  # CP: only the value path, A held constant
            _, pullback = jax.vjp(lambda val: layer.forward((q, k, val)), v)
            (cv,) = pullback(cotangent)
            return (jnp.zeros_like(q), jnp.zeros_like(k), fv * cv)
        cq, ck, cv = layer.vjp(cotangent, a)
        return (fq * cq, fk * ck, fv * cv)

    def backward(self, layer, a, gradient):
        return self._scaled_vjp(layer, a, gradient)

    def relevance(self, layer, a, relevance):
        c = self._scaled_vjp(layer, a, relevance / stabilize(layer.output, self.stabilizer))
        return tuple(x * ci for x, ci in zip(a, c, strict=True))


# --------------------------------------------------------------------------------------------
# DeepLIFT (Shrikumar et al., ICML 2017): rules for a network evaluated on the doubled batch
# [x; x₀] (``jxai.methods.deeplift``). Gradient rules: they receive and return cotangents, which
# stay *multipliers*; inside the custom VJP they see the whole doubled tensors and pair row i
# with row i + B.
# --------------------------------------------------------------------------------------------


def _halves(value):
    half = value.shape[0] // 2
    return value[:half], value[half:]


@dataclasses.dataclass(frozen=True)
class DeepLiftRescale(Rule):
    """DeepLIFT's rescale rule on an elementwise activation ``f``, for the batch ``[x; x₀]``:

    ``m_in = m_out · (f(a) − f(a₀)) / (a − a₀)``, both halves with the same multiplier, each
    half's own ``m_out``; where ``|a − a₀| < eps`` the true derivative ``f'(·) · m_out`` of each
    half (shap's ``nonlinear_1d``, eps = 1e-6; Captum's ``nonlinear``, eps = 1e-10).
    """

    gradient_rule: ClassVar[bool] = True  # not ``elementwise``: it reads ``layer`` (f(a), f')
    eps: float = 1e-6

    def backward(self, layer, a, gradient):
        a_x, a_ref = _halves(a)
        out_x, out_ref = _halves(layer.output)
        delta_in = a_x - a_ref
        small = jnp.abs(delta_in) < self.eps
        ratio = (out_x - out_ref) / jnp.where(small, 1.0, delta_in)
        ratio = jnp.concatenate([ratio, ratio], axis=0)
        small = jnp.concatenate([small, small], axis=0)
        return jnp.where(small, layer.vjp(gradient, a), gradient * ratio)


@dataclasses.dataclass(frozen=True)
class DeepLiftMaxPool(Rule):
    """DeepLIFT through a max pooling ``y = maxpool(a)``, for the batch ``[x; x₀]`` (shap's
    ``maxpool`` in ``deep_pytorch.py`` / ``deep_tf.py``):

    with ``y``, ``r`` the pooled input and reference and ``c = max(y, r)``, the output deltas
    ``c − r`` (routed to the input's maxima) and ``y − c`` (routed to the reference's maxima)
    sum to ``y − r``; ``m_in = (unpool_x(m_out ⊙ (c − r)) + unpool_x₀(m_out ⊙ (y − c))) / Δa``,
    0 where ``|Δa| < eps``, the same for both halves. So ``Σ Δa ⊙ m_in = Σ (y − r) ⊙ m_out``
    (summation-to-delta), which the plain gradient misses.
    """

    gradient_rule: ClassVar[bool] = True
    eps: float = 1e-7

    def backward(self, layer, a, gradient):
        out_x, out_ref = _halves(layer.output)
        cross = jnp.maximum(out_x, out_ref)
        diffs = jnp.concatenate([cross - out_ref, out_x - cross], axis=0)
        routed_x, routed_ref = _halves(layer.vjp(gradient * diffs, a))  # unpooled per half
        a_x, a_ref = _halves(a)
        delta_in = a_x - a_ref
        small = jnp.abs(delta_in) < self.eps
        m = jnp.where(small, 0.0, (routed_x + routed_ref) / jnp.where(small, 1.0, delta_in))
        return jnp.concatenate([m, m], axis=0).astype(a.dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class PatternKernel(Rule):
    """PatternNet / PatternAttribution at a linear layer (Kindermans et al., ICLR 2018): the
    layer's own VJP with its kernel replaced by ``kernel``, ``c = Aᵀ g``.

    A gradient rule: ``backward`` receives the output *gradient*, so the ReLUs' masks and the
    max-pooling routing of the forward pass gate the signal as they gate the gradient.
    ``kernel`` is shaped like the layer's kernel: the pattern ``a`` (PatternNet) or ``w ⊙ a``
    (PatternAttribution). It may be a traced array (the patterns are a traced parameter of
    `jxai.explain`): equality and hashing are by identity, never by value.
    """

    gradient_rule: ClassVar[bool] = True
    kernel: Any = None

    def backward(self, layer, a, gradient):
        params = layer.modified(kernel=lambda w: jnp.asarray(self.kernel, w.dtype))
        return layer.vjp(gradient, a, params)

    __eq__ = object.__eq__
    __hash__ = object.__hash__
