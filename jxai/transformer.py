"""Transformer layers for LRP: AttnLRP and CP-LRP in the gradient × input convention.

AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022) fit the engine without a
new mode: relevance stays ``input ⊙ cotangent`` and each rule only changes a backward pass
(`jxai.rules.FrozenNorm`, `Pass`, `Uniform`, `AttnLRPSoftmax`, `CPSoftmax`, `Attention`). This
module holds what the engine needs to place them on stock Flax layers (the composites that
assign them, `jxai.composites.attn_lrp` and `cp_lrp`, live with the other presets):

* the **layer kinds**: `LINEAR_KINDS` (``nn.DenseGeneral``, ``nn.Einsum``: kernel and bias, so the
  ε, γ, αβ... rules apply as to ``nn.Dense``), `NORM_KINDS` (``nn.LayerNorm``, ``nn.RMSNorm``,
  ``nn.GroupNorm``) with `norm_view`, the affine map with the normaliser held constant, and
  `ATTENTION_KINDS`: `DotProductAttention`, the module twin of the functional attention, and
  `Multiply`, a gated MLP's product of two activations (the uniform rule).
* **attention as a placed function**: ``nn.dot_product_attention`` and
  ``jax.nn.dot_product_attention`` called in a module's code, and the ``attention_fn`` of every
  ``nn.MultiHeadDotProductAttention`` / ``nn.SelfAttention`` (swapped for the call by
  `attention_placed`), are layers of type `DotProductAttention` named
  ``"<module>/dot_product_attention_<k>"``. Their inputs are ``(query, key, value)``; the
  projections around them stay ``nn.DenseGeneral`` layers with rules of their own.
* `AddedTokens`, the kind of a layer that puts constant tokens in front and adds constants
  (a ViT's class token and position embeddings): bias-like constants.
* tokens and patches of vision transformers: `patch_relevance` (pixel relevance summed per
  patch), `upsample` (a patch map to the image, bilinear or nearest), `token_grid` and
  `tokens_to_image` (class token dropped, patch tokens on the grid of the patch convolution;
  used by attention rollout and by Grad-CAM on a block's tokens).
* the functional primitives (`divide_gradient`, `identity_rule`, `uniform_product`,
  `frozen_layer_norm`, `frozen_rms_norm`) for writing a transformer by hand, LXT's "efficient"
  implementation in JAX.

Nothing here imports the engine or the composites (they import this module).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jxai import kinds
from jxai.rules import (
    Attention,
    FrozenNorm,
    Uniform,
    Z,
)

__all__ = [
    "ATTENTION_KINDS",
    "AddedTokens",
    "LINEAR_KINDS",
    "NORM_KINDS",
    "DotProductAttention",
    "Multiply",
    "attention_interceptor",
    "attention_placed",
    "divide_gradient",
    "frozen_layer_norm",
    "frozen_rms_norm",
    "identity_rule",
    "norm_view",
    "patch_relevance",
    "token_grid",
    "tokens_to_image",
    "uniform_product",
    "upsample",
]


# --------------------------------------------------------------------------------------------
# Functional primitives (custom VJPs): LXT's efficient AttnLRP in JAX
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def divide_gradient(x, factor: float):
    """Forward ``x``; backward ``g / factor`` (the uniform rule's share, AttnLRP Eq. 7)."""
    return x


def _divide_fwd(x, factor):
    return x, None


def _divide_bwd(factor, _, g):
    return (g / factor,)


divide_gradient.defvjp(_divide_fwd, _divide_bwd)


def identity_rule(fn: Callable, x):
    """Forward ``fn(x)``; backward ``g · fn(x) / x`` (0 where ``x = 0``): AttnLRP Eq. 9.

    In gradient × input, ``R_in = x ⊙ c = fn(x) ⊙ g = R_out``: relevance passes unchanged
    through an element-wise nonlinearity (GELU, SiLU...).
    """

    @jax.custom_vjp
    def f(a):
        return fn(a)

    def f_fwd(a):
        out = fn(a)
        return out, (a, out)

    def f_bwd(residuals, g):
        a, out = residuals
        safe = jnp.where(a == 0, 1.0, a)
        return (jnp.where(a == 0, 0.0, g * out / safe),)

    f.defvjp(f_fwd, f_bwd)
    return f(x)


def uniform_product(a, b, product: Callable = jnp.multiply):
    """``product(a, b)`` (bilinear: ``a * b``, ``a @ b``, an einsum) with the uniform rule:
    each factor receives half the true gradient, so ``R_a = R_b = R / 2`` for an element-wise
    product (AttnLRP Prop. 3.2) and the ε-then-uniform split of Prop. 3.3 for a matrix product."""
    return divide_gradient(product(a, b), 2.0)


def _stat_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)


def frozen_layer_norm(x, scale=None, bias=None, epsilon=1e-6, axes=(-1,)):
    """LayerNorm ``(x − E[x]) · σ⁻¹ · scale + bias`` with ``σ⁻¹ = rsqrt(Var[x] + ε)`` held
    constant in the backward pass (AttnLRP Prop. 3.4; the LN-rule of Ali et al. 2022).

    The centering ``x − E[x]`` stays linear: its gradient (and thus the ε/z-rule on it, as in
    LXT and in Ali et al.) flows. ``scale``/``bias`` broadcast against ``x``.
    """
    xs = x.astype(_stat_dtype(x))
    mean = jnp.mean(xs, axis=axes, keepdims=True)
    centred = xs - mean
    inv = jax.lax.stop_gradient(jax.lax.rsqrt(jnp.mean(centred**2, axis=axes, keepdims=True) + epsilon))
    y = centred * inv
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def frozen_rms_norm(x, scale=None, epsilon=1e-6, axes=(-1,)):
    """RMSNorm ``x · rsqrt(E[x²] + ε) · scale`` with the normaliser held constant (AttnLRP
    Prop. 3.4): relevance passes element-wise, ``R_in = R_out`` (LXT's ``rms_norm_identity``)."""
    xs = x.astype(_stat_dtype(x))
    inv = jax.lax.stop_gradient(jax.lax.rsqrt(jnp.mean(xs**2, axis=axes, keepdims=True) + epsilon))
    y = xs * inv
    if scale is not None:
        y = y * scale
    return y.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Layer kinds
# --------------------------------------------------------------------------------------------


class DotProductAttention(nn.Module):
    """``softmax(q·kᵀ/√d + bias, masked) · v`` as a module: the layer type of every placed
    attention call (``nn.dot_product_attention``, ``jax.nn.dot_product_attention``, the
    ``attention_fn`` inside ``nn.MultiHeadDotProductAttention``); composites select it by type.

    Used as a module it runs ``nn.dot_product_attention(query, key, value, bias, mask)``
    (layout ``[batch..., length, heads, depth]``).
    """

    @nn.compact
    def __call__(self, query, key, value, bias=None, mask=None):
        return nn.dot_product_attention(query, key, value, bias=bias, mask=mask, deterministic=True)


class Multiply(nn.Module):
    """``a * b`` of two activations as a layer (a gated MLP's ``silu(gate) * up``, SwiGLU).

    ``x * y`` written in a module's code is not placed (one operand may be a constant such as a
    rotary table, which must not take half the relevance), so a model whose product should get
    the uniform rule (AttnLRP Prop. 3.2: ``R_a = R_b = R/2``; `jxai.rules.Uniform`) writes it as
    ``Multiply()(a, b)``, as it writes a residual sum as ``jxai.layers.Sum``. Without a rule it
    is the plain product (its gradient).
    """

    @nn.compact
    def __call__(self, a, b):
        return a * b


class AddedTokens:
    """Mixin for a module whose ``__call__`` puts constant tokens in front of its input tokens and
    adds constants: ``z = [0_k; a] + C`` for ``a`` (B, N, D), ``k = prefix_tokens``, ``C``
    (1, k + N, D) made of the module's own parameters (a ViT's class token and position
    embeddings: ``C = [cls; 0] + positions``; `jxai.models.vit`).

    Its kind (``"added_tokens"``) shows the layer to rules as ``a ↦ pad(a) + b`` with one
    bias-like parameter ``b = C`` (``added_constants(params)``, a static method of the
    subclass): constants are biases, so the z/ε-rules let them keep their share,
    ``R_a = a ⊙ (R/z)`` on the input rows, and the prefix rows' relevance stays with the
    constants. In the gradient × input convention that is the plain gradient through the
    addition, which is what the gradient-mode presets (``lrp.attn_lrp``, ``lrp.epsilon``...) do
    without a rule and what LXT does; the relevance mode gets the z-rule by default. The module
    must hold the constants itself (subclasses use ``setup``, so a patch convolution called
    from another of its methods stays a layer of its own).
    """

    prefix_tokens: int = 1

    @staticmethod
    def added_constants(params) -> jax.Array:
        raise NotImplementedError


def _added_tokens_view(layer, n_inputs: int = 1, **options):
    """``fn({"bias": C}, a) = [0_k; a] + C`` (see `AddedTokens`)."""
    cls = type(layer.module)
    own = {k: v for k, v in layer.params().items() if not isinstance(v, Mapping)}
    params = {"bias": cls.added_constants(own)}
    k = cls.prefix_tokens

    def fn(p, a):
        padding = [(0, 0)] * (a.ndim - 2) + [(k, 0), (0, 0)]
        return jnp.pad(a, padding) + p["bias"].astype(a.dtype)

    return fn, params


LINEAR_KINDS = (nn.DenseGeneral, nn.Einsum)
NORM_KINDS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
ATTENTION_KINDS = (DotProductAttention,)
PRODUCT_KINDS = (Multiply,)


def _axes(value, ndim: int) -> tuple[int, ...]:
    axes = (value,) if isinstance(value, int) else tuple(value)
    return tuple(sorted(a % ndim for a in axes))


def _feature_param(value, x, feature_axes):
    """A scale/bias of the feature axes reshaped to broadcast against ``x`` (as Flax does)."""
    shape = [1] * x.ndim
    for ax in feature_axes:
        shape[ax] = x.shape[ax]
    return jnp.reshape(value, shape)


def norm_view(module, variables: dict | None = None) -> tuple[Callable, dict]:
    """``(fn, params)`` of a normalisation layer with its normaliser held constant.

    ``fn(params, a)`` computes the layer's output with ``stop_gradient`` on ``1/σ`` (LayerNorm,
    GroupNorm: ``σ² = Var[x] + ε`` over the normalised axes; RMSNorm: ``E[x²] + ε``), so the
    map is affine in ``a`` for the rules: the scale is the kernel-like parameter
    (``params["kernel"]``) and the offset the bias-like one (``params["bias"]``).

    ``module`` is a bound linen norm or an NNX one (``nnx.LayerNorm``...: the same attribute
    names, ``epsilon``, ``reduction_axes``, ``feature_axes``, ``num_groups``, ``group_size``);
    ``variables`` are its parameters (``{"scale": ..., "bias": ...}``; a linen module's own
    when None). Which norm it is comes from its kind (`jxai.kinds`).
    """
    if variables is None:
        variables = dict(module.variables.get("params", {}))
    params = {}
    if variables.get("scale") is not None:
        params["kernel"] = variables["scale"]
    if variables.get("bias") is not None:
        params["bias"] = variables["bias"]
    kind = kinds.kind_of(type(module)).name
    if kind == "group_norm":
        return _group_norm_fn(module), params
    centre = kind == "layer_norm"

    def fn(p, a):
        reduction = _axes(module.reduction_axes, a.ndim)
        features = _axes(module.feature_axes, a.ndim)
        scale = _feature_param(p["kernel"], a, features) if "kernel" in p else None
        bias = _feature_param(p["bias"], a, features) if "bias" in p else None
        if centre:
            return frozen_layer_norm(a, scale, bias, module.epsilon, reduction)
        y = frozen_rms_norm(a, scale, module.epsilon, reduction)
        return y + bias if bias is not None else y

    return fn, params


def _group_norm_fn(module) -> Callable:
    if module.reduction_axes is not None:
        raise ValueError(
            f"{type(module).__name__} {getattr(module, 'name', None)!r} sets reduction_axes="
            f"{module.reduction_axes}; the "
            "normaliser-constant LRP rule supports the default (every axis but the batch axis)"
        )

    def fn(p, a):
        channels = a.shape[-1]
        groups = module.num_groups if module.group_size is None else channels // module.group_size
        grouped = a.reshape(*a.shape[:-1], groups, channels // groups)
        axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
        y = frozen_layer_norm(grouped, None, None, module.epsilon, axes).reshape(a.shape)
        if "kernel" in p:
            y = y * p["kernel"]
        return y + p["bias"] if "bias" in p else y

    return fn


# --------------------------------------------------------------------------------------------
# Attention placed as a function call
# --------------------------------------------------------------------------------------------


def attention_call(name: str, original: Callable, args: tuple, kwargs: dict):
    """The placement of ``original(query, key, value, *rest, **kwargs)``: ``(inputs, apply)``
    with ``inputs = (query, key, value)`` and ``apply(inputs)`` the call with the other
    arguments bound; None when the call is not of that form (it then runs unplaced)."""
    names = ("query", "key", "value")
    if len(args) < 3 and not all(n in kwargs for n in names[len(args):]):
        return None
    qkv = list(args[:3])
    rest = dict(kwargs)
    for n in names[len(qkv):]:
        qkv.append(rest.pop(n))
    if not all(isinstance(t, jax.Array) for t in qkv):
        return None
    if rest.get("dropout_rate", 0.0) and not rest.get("deterministic", True):
        raise ValueError(
            f"{name}: attention dropout is on (dropout_rate={rest['dropout_rate']}, "
            "deterministic=False); explanations need a deterministic forward pass: pass "
            "deterministic=True to the attention module or call"
        )
    extra = args[3:]
    return tuple(qkv), lambda inputs: original(*inputs, *extra, **rest)


@contextlib.contextmanager
def attention_placed(module: nn.Module, wrap: Callable[[Callable], Callable]):
    """While ``module`` (a ``nn.MultiHeadDotProductAttention``) runs, its ``attention_fn`` is
    ``wrap(attention_fn)``: the engine's placing wrapper, which makes the call a
    `DotProductAttention` layer. A no-op for other modules; restored afterwards."""
    if not isinstance(module, nn.MultiHeadDotProductAttention):
        yield
        return
    original = module.attention_fn
    placed = wrap(original)
    placed.__signature__ = inspect.signature(original)  # MHA filters its kwargs by it
    object.__setattr__(module, "attention_fn", placed)
    try:
        yield
    finally:
        object.__setattr__(module, "attention_fn", original)


def attention_interceptor(wrap: Callable[[Callable], Callable]):
    """A linen interceptor that runs every ``nn.MultiHeadDotProductAttention`` call under
    `attention_placed` (`jxai._functions.placing` installs it while the engine traces)."""

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        with attention_placed(context.module, wrap):
            return next_fun(*args, **kwargs)

    return interceptor


# --------------------------------------------------------------------------------------------
# The kinds (registered in `jxai.kinds` when this module is imported)
# --------------------------------------------------------------------------------------------


def _einsum_view(layer, n_inputs: int = 1, **options):
    """``nn.Einsum``: its own forward (Flax reshapes the bias to the einsum's output)."""
    if n_inputs > 1:
        raise ValueError(
            f"nn.Einsum {layer.module.name!r} is called with its einsum_str; LRP needs it set on "
            "the module (nn.Einsum(shape, einsum_str=...)) so that the layer has one input"
        )

    def fn(p, a):
        return layer.call(p, a)

    return fn, dict(layer.params())


def _norm_view(layer, n_inputs: int = 1, **options):
    return norm_view(layer.module, layer.params())


_NORM = dict(view=_norm_view, kernel=("kernel",), bias=("bias",), relevance_rule=FrozenNorm())
kinds.register_kind(kinds.LayerKind(
    "dense_general", (nn.DenseGeneral,), view=kinds.affine_view, kernel=("kernel",),
    bias=("bias",), linear=True, relevance_rule=kinds.get_kind("dense").relevance_rule,
))
kinds.register_kind(kinds.LayerKind(
    "einsum", (nn.Einsum,), view=_einsum_view, kernel=("kernel",), bias=("bias",), linear=True,
    relevance_rule=kinds.get_kind("dense").relevance_rule,
))
kinds.register_kind(kinds.LayerKind("layer_norm", (nn.LayerNorm,), **_NORM))
kinds.register_kind(kinds.LayerKind("rms_norm", (nn.RMSNorm,), **_NORM))
kinds.register_kind(kinds.LayerKind("group_norm", (nn.GroupNorm,), **_NORM))
kinds.register_kind(kinds.LayerKind(
    "attention", (DotProductAttention,), relevance_rule=Attention()
))
kinds.register_kind(kinds.LayerKind("product", (Multiply,), relevance_rule=Uniform()))
kinds.register_kind(kinds.LayerKind(
    "added_tokens", (AddedTokens,), view=_added_tokens_view, bias=("bias",), relevance_rule=Z()
))
NORMS = kinds.selector("layer_norm", "rms_norm", "group_norm")
PRODUCTS = kinds.selector("product")
ATTENTION = kinds.selector("attention")


# --------------------------------------------------------------------------------------------
# Tokens and patches of vision transformers
# --------------------------------------------------------------------------------------------


def patch_relevance(relevance, patch_size: int | tuple[int, int]):
    """Pixel relevance ``(B, H, W[, C])`` summed over each ``p×p`` patch (and the channels):
    ``(B, H/p, W/p)``, one number per patch token, row-major as a ViT orders its patches.

    For LRP in the gradient × input convention the sum over a patch is the relevance of that
    patch's input to the patch-embedding convolution (the relevance of the patch token minus
    what the convolution's bias keeps)."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    relevance = jnp.asarray(relevance)
    if relevance.ndim == 4:
        relevance = relevance.sum(-1)
    if relevance.ndim != 3:
        raise ValueError(
            f"patch_relevance: relevance of shape {relevance.shape}; give pixel relevance "
            "(B, H, W) or (B, H, W, C)"
        )
    batch, height, width = relevance.shape
    if height % ph or width % pw:
        raise ValueError(
            f"patch_relevance: a {height}×{width} map is not a whole number of {ph}×{pw} patches"
        )
    return relevance.reshape(batch, height // ph, ph, width // pw, pw).sum((2, 4))


def upsample(maps, size: tuple[int, int], interpolation: str = "bilinear"):
    """``(B, h, w)`` maps (a patch grid) resized to ``size = (H, W)`` for overlays: bilinear with
    half-pixel centres (``torch.nn.functional.interpolate(..., align_corners=False)``) or
    nearest (each patch a constant block when ``H/h``, ``W/w`` are whole)."""
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"upsample: interpolation={interpolation!r} is not 'bilinear' or 'nearest'")
    maps = jnp.asarray(maps)
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    method = "linear" if interpolation == "bilinear" else "nearest"
    return jax.image.resize(maps, (maps.shape[0], *size), method=method, antialias=False)


def token_grid(layers, tokens: int, method: str = "token_grid") -> tuple[int, tuple[int, int]]:
    """``(prefix, (gh, gw))`` of a vision transformer whose ``tokens`` tokens are ``prefix``
    class/register tokens then a ``gh×gw`` patch grid, read from the traced layers
    (``ctx.layers``): the grid is the output of the convolution fed by the image (the patch
    embedding), the prefix the rest (checked against an `AddedTokens` layer's
    ``prefix_tokens``)."""
    layers = list(layers)
    convolutions = [info for info in layers if info.fed_by_input and info.layer_kind.convolution
                    and len(info.output_shape) == 4]
    if not convolutions:
        raise ValueError(
            f"{method}: no convolution reads the image, so the patch grid is unknown; the "
            "tokens of a vision transformer are laid out on the grid of its patch-embedding "
            "convolution (nn.Conv with stride = kernel size)"
        )
    grid = tuple(int(n) for n in convolutions[0].output_shape[1:3])
    prefix = tokens - grid[0] * grid[1]
    added = [info for info in layers if info.kind == "added_tokens"]
    if prefix < 0 or (added and prefix != added[0].module_type.prefix_tokens):
        raise ValueError(
            f"{method}: {tokens} tokens do not fit the {grid[0]}×{grid[1]} patch grid of "
            f"{convolutions[0].path!r}"
            + (f" after {added[0].module_type.prefix_tokens} prefix token(s)" if added else "")
        )
    return prefix, grid


def tokens_to_image(relevance, layers, x_shape, resize: bool = True,
                    interpolation: str = "bilinear", method: str = "tokens_to_image"):
    """Per-token values ``(B, T)`` of a vision transformer → ``(B, gh, gw)`` on the patch grid
    (prefix tokens dropped; `token_grid`), resized to the image ``x_shape[1:3]`` when ``resize``."""
    prefix, grid = token_grid(layers, relevance.shape[-1], method)
    maps = relevance[..., prefix:].reshape(*relevance.shape[:-1], *grid)
    return upsample(maps, tuple(x_shape[1:3]), interpolation) if resize else maps
