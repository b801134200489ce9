"""Canonizers: model rewrites applied before the rules, kept apart from them.

Zennit's ``canonizers.py`` merges a BatchNorm into the linear layer before it so that the rules
see one affine layer; jxai does the same as a pass over the traced graph. A canonizer reads the
`GraphFacts` of discovery and returns `Rewrite`s; the engine applies each one while tracing:
the layer at ``rewrite.path`` computes with ``canonizer.parameters(...)`` instead of its own
parameters, and each layer of ``rewrite.absorbed`` becomes the identity. Nothing is mutated:
the rewrite is a pure function of the parameter tree, evaluated inside the compiled function.

A `jxai.Composite` lists its canonizers (``Composite.canonizers``; by default `MergeBatchNorm`
when ``fold_batchnorm=True``). A new canonizer implements the `Canonizer` protocol::

    class MyCanonizer:
        def find(self, facts) -> tuple[Rewrite, ...]: ...
        def parameters(self, params, layer, absorbed) -> params: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp

from jxai.kinds import _batchnorm_affine, get_kind, kind_of

__all__ = ["Canonizer", "MergeBatchNorm", "Rewrite", "fold_batchnorm"]


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One rewrite found in the graph: the layer at ``path`` takes the parameters the
    ``canonizer`` computes from its own and from the ``absorbed`` layers (`LayerInfo`s), which
    become the identity. Hashable: a plan holding it keys compiled functions."""

    path: str
    absorbed: tuple[Any, ...]
    canonizer: Any


@runtime_checkable
class Canonizer(Protocol):
    """A model rewrite as a pass over the discovered graph.

    ``find(facts)``: the rewrites to make (facts are `jxai._engine.GraphFacts`).
    ``parameters(params, layer, absorbed)``: inside the trace, the new parameters of the
    rewritten layer from its own view ``params`` (`jxai.kinds.LayerKind.view`), its
    `jxai.adapters.LayerHandle` ``layer``, and ``absorbed``: ``[(LayerInfo, variables)]`` of the
    absorbed layers with their variable collections.
    """

    def find(self, facts) -> tuple[Rewrite, ...]: ...

    def parameters(self, params: Mapping, layer, absorbed: Sequence[tuple[Any, Mapping]]): ...


def fold_batchnorm(
    linear_params: Mapping, bn_variables: Mapping, epsilon: float, out_axis: int = -1
) -> dict:
    """Fold an inference-mode BatchNorm into the linear layer before it (a pure parameter rewrite).

    With ``s = γ / √(var + ε)``: ``W' = W·s`` (per output channel) and ``b' = (b − mean)·s + β``.
    """
    bn = _batchnorm_affine(bn_variables, epsilon)
    kernel = linear_params["kernel"]
    s = bn["kernel"]
    shape = [1] * kernel.ndim
    shape[out_axis] = -1
    bias = linear_params.get("bias", jnp.zeros_like(s))
    return {"kernel": kernel * s.reshape(shape), "bias": bias * s + bn["bias"]}


@dataclasses.dataclass(frozen=True)
class MergeBatchNorm:
    """Merge every BatchNorm that directly follows a linear layer into it (Zennit's
    ``SequentialMergeBatchNorm``): exact in inference mode, ``W' = W·γ/√(var+ε)``.

    Which kind folds into which is the layer-kind table's ``folds_into``; the kernel's output
    axis is the rewritten kind's ``fold_axis``. Discovery pairs the layers
    (`LayerInfo.folds_into`).
    """

    def find(self, facts) -> tuple[Rewrite, ...]:
        pairs = [
            layer
            for layer in facts.layers
            if layer.folds_into is not None and get_kind(layer.kind).folds_into
        ]
        targets = [layer.folds_into for layer in pairs]
        # a linear layer feeding two BatchNorms has no single folded form: both stay layers
        return tuple(
            Rewrite(layer.folds_into, (layer,), self)
            for layer in pairs
            if targets.count(layer.folds_into) == 1
        )

    def parameters(self, params, layer, absorbed):
        axis = kind_of(type(layer.module)).fold_axis(layer)
        for info, variables in absorbed:
            params = fold_batchnorm(params, variables, info.epsilon, axis)
        return params
