"""Path methods: Integrated Gradients and expected gradients (GradientSHAP).

Both integrate the gradient along straight lines from a baseline :math:`x'` to the input
:math:`x` and multiply by :math:`x - x'`. Integrated Gradients uses a fixed quadrature;
expected gradients draws the baseline from a set and the position on the line at random.
Steps and samples are vmapped ``batch_size`` at a time and summed chunk by chunk
(`jxai.Context.sum_chunks`), so memory stays that of ``batch_size`` gradients.

The integrand is the gradient by default. ``wrapped=`` names another gradient-like method
(``"guided_backprop"``, ``"deconvnet"``), and ``composite=`` (forwarded to ``"gradient"``)
integrates an LRP-modified gradient, as Zennit's ``IntegratedGradients`` does with a composite.

On integer token ids (a model reading them with ``nn.Embed``) the path runs in embedding space,
at the Embed output ``e``: from a baseline embedding ``e₀`` (zeros, or the embedding of a
``baseline_token`` such as the padding id) to ``e``, and the relevance of token ``t`` is
:math:`R_t = \\sum_d (e - e_0)_{t,d} \\sum_k w_k \\, \\partial S / \\partial e_{t,d}` at the
points :math:`e_0 + \\alpha_k (e - e_0)` (`jxai.Context.with_embedding` evaluates the model there).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jxai.methods._common import check_choice, check_positive_int, pin_target, reference_samples
from jxai.methods._registry import as_composite, register_method

__all__ = [
    "QUADRATURES",
    "expected_gradients",
    "integrated_gradients",
    "quadrature",
]

QUADRATURES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
               "gausslegendre")


def quadrature(name: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights ``w`` of an IG quadrature, Captum 0.8's definitions.

    ============================  ==============================  ===============================
    name                          alpha_k                         w_k
    ============================  ==============================  ===============================
    ``riemann_left``              k/n, k = 0..n-1                 1/n  (= iNNvestigate's IG)
    ``riemann_right``             k/n, k = 1..n                   1/n  (= Zennit's IG)
    ``riemann_middle``            (k + 1/2)/n, k = 0..n-1         1/n
    ``riemann_trapezoid``         k/(n-1), k = 0..n-1             1/n, halved at both ends
    ``gausslegendre``             (1 + t_k)/2, Gauss–Legendre     v_k/2, Gauss–Legendre weights
    ============================  ==============================  ===============================

    Captum's trapezoid keeps the step 1/n (not 1/(n-1)), so its weights sum to (n-1)/n; jxai
    reproduces that exactly. The Riemann rules need ``steps >= 2`` (as in Captum).
    """
    check_choice("integrated_gradients", "quadrature", name, QUADRATURES)
    if name == "gausslegendre":
        steps = check_positive_int("integrated_gradients", "steps", steps, 1)
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    n = check_positive_int("integrated_gradients", "steps", steps, 2)
    weights = np.full(n, 1.0 / n)
    if name == "riemann_left":
        alphas = np.linspace(0.0, 1.0 - 1.0 / n, n)
    elif name == "riemann_right":
        alphas = np.linspace(1.0 / n, 1.0, n)
    elif name == "riemann_middle":
        alphas = np.linspace(0.5 / n, 1.0 - 0.5 / n, n)
    else:
        alphas = np.linspace(0.0, 1.0, n)
        weights[0] /= 2
        weights[-1] /= 2
    return alphas, weights


def make_baseline(method: str, baseline, x: jax.Array) -> jax.Array:
    """A baseline shaped like ``x`` from a scalar, an array (broadcast) or a callable ``f(x)``."""
    if callable(baseline) and not isinstance(baseline, (jax.Array, np.ndarray)):
        value = baseline(x)
    else:
        value = baseline
    value = jnp.asarray(value, dtype=x.dtype)
    try:
        return jnp.broadcast_to(value, x.shape)
    except ValueError:
        raise ValueError(
            f"{method}: baseline of shape {value.shape} does not broadcast to the input shape "
            f"{x.shape}; pass a scalar, one sample {x.shape[1:]}, a batch {x.shape} or a callable "
            "returning one of these"
        ) from None


def path_gradient(ctx, wrapped: str, x, target, inner: dict):
    """The integrand at ``x``: the (possibly rule-modified) gradient, or another method's output."""
    if wrapped == "gradient" and set(inner) <= {"composite"}:
        return ctx.backward(x, target, composite=as_composite(inner.get("composite"))).grad
    return ctx.attribute(wrapped, x, target, **inner)


@register_method("integrated_gradients", family="gradient")
def integrated_gradients(ctx, x, target, *, steps: int = 50, quadrature: str = "gausslegendre",
                         baseline: float | jax.Array | Callable = 0.0, wrapped: str = "gradient",
                         batch_size: int | str | None = "auto", return_delta: bool = False,
                         baseline_token: int | None = None, **inner):
    """Integrated Gradients, :math:`(x - x') \\odot \\int_0^1 \\nabla S_t(x' + a(x - x'))\\,da`.

    The integral is the quadrature :math:`\\sum_k w_k \\nabla S_t(x' + \\alpha_k (x - x'))`
    (see `quadrature`). The target is resolved on ``x`` (``"max"`` = the class predicted for
    ``x``) and kept along the path.

    Args:
      steps: number of gradient evaluations ``n`` (Captum: 50, iNNvestigate: 64, Zennit: 20).
      quadrature: ``"gausslegendre"`` (default, Captum's default), ``"riemann_left"``
        (iNNvestigate's convention: ``create_analyzer("integrated_gradients", steps=n)`` is
        ``steps=n, quadrature="riemann_left"``), ``"riemann_right"`` (Zennit),
        ``"riemann_middle"``, ``"riemann_trapezoid"``.
      baseline: :math:`x'`: a scalar, an array broadcasting to ``x`` (one sample or the batch),
        or a callable ``f(x) -> array`` (hashable, so it is part of the compiled function's key).
      wrapped: the integrand's method (default the gradient; any method returning a
        gradient-like array shaped like ``x``). Other keyword arguments go to it (e.g.
        ``composite="lrp.epsilon"`` integrates the ε-LRP modified gradient).
      batch_size: path points evaluated together; memory ~ ``batch_size`` gradients. ``None``
        evaluates all ``steps`` at once; ``"auto"`` (default) is 1 on CPU and 16 on
        accelerators (`jxai._schedule.chunk_size` says why).
      return_delta: also return the completeness gap per sample,
        :math:`\\delta = \\sum_i R_i - (S_t(x) - S_t(x'))` (Captum's convergence delta).
      baseline_token: token ids only: the baseline is the embedding of this id at every position
        (e.g. the padding token); ``baseline`` is then unused. On ids, ``baseline`` is an
        embedding (default 0: the zero embedding), broadcast to ``(B, T, D)``.

    Returns:
      The attribution shaped like ``x`` (token ids: one number per token, ``(B, T)``); with
      ``return_delta`` a pair ``(attribution, delta)``, ``delta`` of shape ``(B,)``.

    Reference: Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
    """
    if ctx.tokens:
        return _token_integrated_gradients(ctx, x, target, steps, quadrature, baseline,
                                           baseline_token, wrapped, batch_size, return_delta,
                                           inner)
    if baseline_token is not None:
        raise ValueError("integrated_gradients: baseline_token= is for integer token ids (an "
                         "nn.Embed reads them); for this float input pass baseline=")
    alphas, weights = _quadrature_arrays(quadrature, steps, x.dtype)
    target = pin_target(ctx, x, target)
    start = make_baseline("integrated_gradients", baseline, x)
    difference = x - start

    def weighted_gradient(node):
        alpha, weight = node
        point = start + alpha * difference
        return weight * path_gradient(ctx, wrapped, point, target, dict(inner))

    total = ctx.sum_chunks(weighted_gradient, (alphas, weights), batch_size,
                           name="integrated_gradients")
    attribution = difference * total
    if not return_delta:
        return attribution
    return attribution, completeness_delta(ctx, attribution, x, start, target)


def _token_integrated_gradients(ctx, x, target, steps, quadrature, baseline, baseline_token,
                                wrapped, batch_size, return_delta, inner):
    """Integrated Gradients of integer ids in embedding space (see the module docstring)."""
    name = "integrated_gradients"
    if wrapped != "gradient" or set(inner) - {"composite"}:
        raise ValueError(f"{name} on token ids integrates the gradient at the embedding "
                         f"(wrapped='gradient', optionally composite=); got wrapped={wrapped!r}"
                         + (f" and {', '.join(sorted(set(inner) - {'composite'}))}"
                            if set(inner) - {"composite"} else ""))
    target = pin_target(ctx, x, target)
    end = ctx.embedding_of(x)
    if baseline_token is not None:
        token = _check_token(ctx, baseline_token)
        start = ctx.embedding_of(jnp.full_like(x, token), replaced=False)
    else:
        start = make_baseline(name, baseline, end)
    alphas, weights = _quadrature_arrays(quadrature, steps, end.dtype)
    difference = end - start

    def weighted_gradient(node):
        alpha, weight = node
        point = ctx.with_embedding(start + alpha * difference)
        return weight * path_gradient(point, wrapped, x, target, dict(inner))

    total = ctx.sum_chunks(weighted_gradient, (alphas, weights), batch_size, name=name)
    attribution = (difference * total).sum(-1)
    if not return_delta:
        return attribution
    end_score = target.score(ctx.with_embedding(end).forward(x)[0])
    start_score = target.score(ctx.with_embedding(start).forward(x)[0])
    return attribution, attribution.sum(-1) - (end_score - start_score)


def _check_token(ctx, token) -> int:
    """``baseline_token`` as an id of the model's vocabulary (a ValueError naming its range)."""
    if isinstance(token, bool) or not isinstance(token, int | np.integer):
        raise TypeError(f"integrated_gradients: baseline_token={token!r} is not a token id (int)")
    path = ctx.embedding_path()
    table = ctx.network.adapter.variables_at(ctx.network.variables, path).get(
        "params", {}).get("embedding")
    vocab = None if table is None else int(table.shape[0])
    if token < 0 or vocab is not None and token >= vocab:
        raise ValueError(f"integrated_gradients: baseline_token={token} is out of range: "
                         f"{path!r} embeds ids 0..{'?' if vocab is None else vocab - 1}")
    return int(token)


def _quadrature_arrays(name, steps, dtype):
    alphas, weights = quadrature(name, steps)
    return jnp.asarray(alphas, dtype=dtype), jnp.asarray(weights, dtype=dtype)


def completeness_delta(ctx, attribution, x, start, target):
    """:math:`\\sum_i R_i - (S_t(x) - S_t(x'))` per sample: the gap of the completeness axiom."""
    end_score = target.score(ctx.forward(x)[0])
    start_score = target.score(ctx.forward(start)[0])
    total = jnp.sum(attribution.reshape(attribution.shape[0], -1), axis=1)
    return total - (end_score - start_score)


def _gradient_shap(ctx, x, target, *, baselines, n: int, sigma: float, wrapped: str,
                   batch_size: int | str | None, inner: dict, name: str):
    n = check_positive_int(name, "n", n)
    baselines = reference_samples(name, "baselines", baselines, x,
                                  "e.g. a few hundred training inputs")
    target = pin_target(ctx, x, target)
    batch = x.shape[0]
    keys = jax.random.split(ctx.key, n)

    def sample(key):
        pick_key, alpha_key, noise_key, inner_key = jax.random.split(key, 4)
        picked = baselines[jax.random.randint(pick_key, (batch,), 0, baselines.shape[0])]
        alpha = jax.random.uniform(alpha_key, (batch,) + (1,) * (x.ndim - 1), dtype=x.dtype)
        noisy = x + sigma * jax.random.normal(noise_key, x.shape, dtype=x.dtype) if sigma else x
        difference = noisy - picked
        grad = path_gradient(ctx.with_key(inner_key), wrapped, picked + alpha * difference,
                             target, dict(inner))
        return grad * difference

    return ctx.sum_chunks(sample, keys, batch_size, name=name) / n


@register_method("expected_gradients", family="gradient", stochastic=True)
def expected_gradients(ctx, x, target, *, baselines=None, n: int = 32, sigma: float = 0.0,
                       wrapped: str = "gradient", batch_size: int | str | None = "auto", **inner):
    """Expected gradients: :math:`E_{x' \\sim D,\\ a \\sim U(0,1)}[(x - x') \\odot
    \\nabla S_t(x' + a(x - x'))]`.

    Each of the ``n`` samples draws, for every input, a baseline from ``baselines`` (uniformly,
    with replacement) and a position ``a`` on the line; with ``sigma > 0`` Gaussian noise of that
    (absolute) standard deviation is first added to the input, and the difference is taken to
    the noisy input. This is SHAP's ``GradientExplainer`` (``local_smoothing`` = ``sigma``) and
    Captum's ``GradientShap`` (``n_samples`` = ``n``, ``stdevs`` = ``sigma``). Randomness comes
    from the engine's key (``jxai.explain(..., key=...)``), so results are reproducible.

    Args:
      baselines: reference samples, shape ``(M, *x.shape[1:])`` (required).
      n: samples per input. sigma: input noise std (absolute). batch_size: samples per chunk
        (``"auto"``: 1 on CPU, 16 on accelerators).
      wrapped: the integrand's method (default the gradient); other keywords go to it.

    Reference: Erion et al., "Improving performance of deep learning models with axiomatic
    attribution priors and expected gradients", Nature Machine Intelligence 2021; Lundberg, Lee,
    "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017.
    """
    return _gradient_shap(ctx, x, target, baselines=baselines, n=n, sigma=sigma, wrapped=wrapped,
                          batch_size=batch_size, inner=inner, name="expected_gradients")


@register_method("gradient_shap", family="gradient", stochastic=True)
def gradient_shap(ctx, x, target, *, baselines=None, n: int = 32, sigma: float = 0.0,
                  wrapped: str = "gradient", batch_size: int | str | None = "auto", **inner):
    """GradientSHAP: the same estimator as `expected_gradients` under Captum's and SHAP's name."""
    return _gradient_shap(ctx, x, target, baselines=baselines, n=n, sigma=sigma, wrapped=wrapped,
                          batch_size=batch_size, inner=inner, name="gradient_shap")
