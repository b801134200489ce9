"""How concentrated an explanation is: sparseness (Gini index) and complexity (entropy).

Both look at the attribution alone (no model) and treat every entry of a sample's map as one
feature; reduce channels first (e.g. ``a.sum(-1)``) to score per pixel. Magnitudes are used:
a map concentrated on few features, whatever their sign, is sparse and simple.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["complexity", "sparseness"]


def _magnitudes(attribution) -> jax.Array:
    a = jnp.asarray(attribution)
    if a.ndim < 2:
        raise ValueError(f"expected a batch of attributions (B, ...), got shape {a.shape}")
    return jnp.abs(a.reshape(a.shape[0], -1)).astype(jnp.promote_types(a.dtype, jnp.float32))


@jax.jit
def sparseness(attribution) -> jax.Array:
    """Gini index of |R| per sample: 0 when all features share relevance equally, → 1 when one
    feature holds all of it.

        G = Σ_{i=1}^{n} (2i − n − 1) · a_(i)  /  (n · Σ_i a_(i)),   a_(1) ≤ … ≤ a_(n) sorted |R|

    An all-zero map scores 0.

    Args:
      attribution: (B, ...) attributions.

    Returns:
      (B,) Gini indices in [0, 1 − 1/n].

    Reference: P. Chalasani et al., "Concise Explanations of Neural Networks using Adversarial
    Training", ICML 2020. Quantus ``Sparseness``.
    """
    a = jnp.sort(_magnitudes(attribution), axis=1)
    n = a.shape[1]
    weights = 2.0 * jnp.arange(1, n + 1, dtype=a.dtype) - n - 1.0
    total = a.sum(axis=1)
    return jnp.where(total > 0, (a @ weights) / (n * jnp.where(total > 0, total, 1.0)), 0.0)


@jax.jit
def complexity(attribution) -> jax.Array:
    """Entropy of the fractional contributions p_i = |R_i| / Σ_j |R_j| per sample (nats).

        H = − Σ_i p_i ln p_i   (0 · ln 0 := 0)

    0 when one feature holds all relevance, ln n when relevance is uniform. An all-zero map is
    treated as uniform (no feature is singled out).

    Args:
      attribution: (B, ...) attributions.

    Returns:
      (B,) entropies in [0, ln n].

    Reference: U. Bhatt, A. Weller, J. M. F. Moura, "Evaluating and Aggregating Feature-based
    Model Explanations", IJCAI 2020. Quantus ``Complexity``.
    """
    a = _magnitudes(attribution)
    total = a.sum(axis=1, keepdims=True)
    p = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 1.0 / a.shape[1])
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=1)
