"""Model-parameter randomisation test: an explanation must change when the model is destroyed.

Cascading randomisation (Adebayo et al. 2018): starting at the output, replace the parameters of
one more layer at a time by random values and recompute the explanation of the *same* target
class. A method whose maps stay rank-correlated with the original while the network is being
turned into noise explains the input (edges, texture), not the model.

Layers are the modules that own parameters, in the order the forward pass calls them; "top-down"
randomises the last one first. Randomised values keep each array's mean and standard deviation
(``"gaussian"``) or permute its entries (``"shuffle"``), so activations keep their scale.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jxai._driver import explain
from jxai.metrics import _common as C
from jxai.network import Network, as_network

__all__ = ["Randomisation", "model_parameter_randomisation", "parameter_layers"]


class Randomisation(NamedTuple):
    """Result of `model_parameter_randomisation`."""

    layers: tuple[str, ...]  # parameter paths, in the order they were randomised
    correlation: jax.Array  # (L, B) rank correlation with the original attribution after step l


def _groups(params: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the dicts that directly hold arrays (one per layer), in tree order."""
    found = []
    if any(not isinstance(v, Mapping) for v in params.values()):
        found.append(prefix)
    for k, v in params.items():
        if isinstance(v, Mapping):
            found.extend(_groups(v, (*prefix, str(k))))
    return found


def parameter_layers(network, x) -> list[str]:
    """'/'-joined paths of the parameter-owning modules, in the order the forward pass calls them.

    Args:
      network: a `jxai.Network`.
      x: an example batch (only its shape and dtype are used).
    """
    network = as_network(network)
    called = C.call_order(network, x)
    groups = ["/".join(g) for g in _groups(network.variables["params"])]
    rank = {p: i for i, p in enumerate(called)}
    return sorted(groups, key=lambda g: (rank.get(g, len(rank)), groups.index(g)))


def _get(tree: Mapping, path: str) -> Mapping:
    for k in path.split("/") if path else ():
        tree = tree[k]
    return tree


def _replace(tree: Mapping, path: str, value: Mapping) -> dict:
    if not path:
        return dict(value)
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = _replace(tree[head], rest, value)
    return out


def _randomised(group: Mapping, key, how: str) -> dict:
    arrays = {k: v for k, v in group.items() if not isinstance(v, Mapping)}
    pooled_std = float(np.std(np.concatenate([np.ravel(np.asarray(v)) for v in arrays.values()])))
    out = dict(group)
    for i, (name, value) in enumerate(sorted(arrays.items())):
        value = jnp.asarray(value)
        k = jax.random.fold_in(key, i)
        if how == "gaussian":
            std = jnp.std(value)
            std = jnp.where(std > 0, std, pooled_std if pooled_std > 0 else 0.01)
            out[name] = (jnp.mean(value) + std * jax.random.normal(k, value.shape)).astype(
                value.dtype
            )
        elif how == "shuffle":
            out[name] = jax.random.permutation(k, value.reshape(-1)).reshape(value.shape)
        else:
            raise ValueError(f"randomisation must be 'gaussian' or 'shuffle', got {how!r}")
    return out


@jax.jit
def _rank_similarity(original, randomised):
    batch = original.shape[0]
    return jax.vmap(C.spearman)(original.reshape(batch, -1), randomised.reshape(batch, -1))


def model_parameter_randomisation(
    network,
    x,
    method: str,
    target="max",
    *,
    key,
    attribution=None,
    cascade: bool = True,
    randomisation: str = "gaussian",
    absolute: bool = False,
    layers: list[str] | None = None,
    **explain_params: Any,
) -> Randomisation:
    """Cascading model-parameter randomisation with Spearman rank correlation.

    For l = 1..L (top-down): randomise the parameters of the last l parameter layers
    (``cascade=True``; only layer l when False), recompute ``jxai.explain(randomised, x, method,
    target)`` and score each sample by ρ_l = Spearman(R_original, R_l) over all entries of the map.
    The target classes are fixed from the original network (``"max"`` is resolved once), so every
    map explains the same output neuron.

    Args:
      network: a `jxai.Network`.
      x: (B, ...) inputs.
      method: the `jxai.explain` method name to test (e.g. ``"lrp.epsilon"``).
      target: ``"max"``, an int or a (B,) int array.
      key: PRNG key for the random parameters.
      attribution: the original attribution if already computed (else it is computed).
      cascade: randomise cumulatively (Adebayo's cascade) or one layer at a time.
      randomisation: ``"gaussian"`` (same mean and std per array) or ``"shuffle"``.
      absolute: compare |R| instead of signed R (Adebayo et al. report both).
      layers: parameter paths to randomise, top-down (default: every parameter layer, last
        called first; see `parameter_layers`).
      **explain_params: passed to `jxai.explain`.

    Returns:
      `Randomisation` (layers, correlation (L, B)). A sound method's correlations fall towards 0.

    Reference: J. Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018. Quantus
    ``MPRT``.
    """
    network = as_network(network)
    x = jnp.asarray(x)
    target = C.resolve_target(network, x, target)
    if attribution is None:
        attribution = explain(network, x, method, target=target, **explain_params)
    original = jnp.asarray(attribution)
    if layers is None:
        layers = parameter_layers(network, x)[::-1]
    params = network.variables["params"]
    for path in layers:
        try:
            _get(params, path)
        except (KeyError, TypeError):
            raise ValueError(
                f"layer {path!r} is not a path in the parameter tree; known: "
                f"{', '.join(parameter_layers(network, x))}"
            ) from None

    def compare(a):
        a = jnp.asarray(a)
        if absolute:
            return _rank_similarity(jnp.abs(original), jnp.abs(a))
        return _rank_similarity(original, a)

    correlations = []
    current = params
    for path in layers:
        layer_key = jax.random.fold_in(key, zlib.crc32(path.encode()))  # same draw in any order
        fresh = _randomised(_get(params, path), layer_key, randomisation)
        current = _replace(current if cascade else params, path, fresh)
        randomised = Network(
            network.module,
            {**network.variables, "params": current},
            network.metadata,
            network.skip,
        )
        correlations.append(
            compare(explain(randomised, x, method, target=target, **explain_params))
        )
    return Randomisation(tuple(layers), jnp.stack(correlations))
