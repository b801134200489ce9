"""Plain functions as models: ``jxai.explain(f, x, "kernel_shap")`` with ``f(batch) -> outputs``.

Perturbation methods (Shapley values, KernelSHAP, RISE, occlusion) need only the forward pass, so
any JAX function of a batch is a model: `jxai.as_network` wraps it in `FunctionModule`, a Flax module
without parameters whose call is the function. Gradient methods work too (JAX differentiates any
function). LRP and the other rule-based methods need Flax layers to attach their rules to and are
refused with an error (`refuse_rules`).

A host function (numpy in, numpy out: scikit-learn's ``predict_proba``, a torch model) is the slow
path: ``jxai.host_function(model.predict_proba, output_shape=(2,))`` calls it from the compiled
program with `jax.pure_callback`, once per evaluated batch (a whole vmapped chunk of coalitions
or masks at once: the leading axes are flattened into one batch). It has no derivative, so only
perturbation methods take it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

__all__ = ["FunctionModule", "HostFunction", "function_name", "host_function",
           "is_function_network", "refuse_rules"]


class FunctionModule(nn.Module):
    """A Flax module whose call is ``fn(x)`` (``x`` batch first); it has no parameters."""

    fn: Callable

    def __call__(self, x, **kwargs):
        return self.fn(x)


@dataclasses.dataclass(frozen=True)
class HostFunction:
    """``fn`` (numpy rows in, numpy rows out) called from compiled code; see `host_function`."""

    fn: Callable
    output_shape: tuple[int, ...]
    dtype: Any = np.float32
    input_rank: int | None = None

    def __call__(self, x):
        rank = x.ndim - 1 if self.input_rank is None else self.input_rank
        features = tuple(x.shape[x.ndim - rank:])
        lead = tuple(x.shape[: x.ndim - rank])
        out = jax.ShapeDtypeStruct((*lead, *self.output_shape), self.dtype)

        def call(batch):
            batch = np.asarray(batch)
            rows = batch.reshape(-1, *features)
            result = np.asarray(self.fn(rows), dtype=self.dtype)
            expected = (rows.shape[0], *self.output_shape)
            if result.shape != expected:
                raise ValueError(
                    f"host function {self.name} returned shape {result.shape} for "
                    f"{rows.shape[0]} rows; host_function(..., output_shape="
                    f"{self.output_shape}) promised {expected}"
                )
            return result.reshape(*batch.shape[: batch.ndim - rank], *self.output_shape)

        # Under vmap (a chunk of coalitions or masks) the callback gets the extra axes in front
        # and answers them all in one host call.
        return jax.pure_callback(call, out, x, vmap_method="expand_dims")

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)


def host_function(fn: Callable, *, output_shape, dtype=np.float32,
                  input_rank: int | None = None) -> HostFunction:
    """Wrap a host callable ``fn(rows: np.ndarray) -> np.ndarray`` as a JAX model (the slow path).

    ``output_shape``: one row's output shape (``(2,)`` for a binary ``predict_proba``; ``()`` for
    a regressor's ``predict``). ``input_rank``: how many trailing axes make one row (default:
    every axis of the input but the first, the batch). The function is called through
    `jax.pure_callback` once per evaluated batch, with every row of a vmapped chunk at once, so
    the perturbation method's ``batch_size`` sets how many rows a host call gets. It cannot be
    differentiated: only perturbation methods (Shapley values, KernelSHAP, RISE, occlusion)
    take it.

        model = sklearn.linear_model.LogisticRegression().fit(X, y)
        f = jxai.host_function(model.predict_proba, output_shape=(2,))
        phi = jxai.explain(f, X[:4], "kernel_shap", target=1, background=X[:50])
    """
    if not callable(fn):
        raise TypeError(f"host_function needs a callable, got {type(fn).__name__}")
    shape = (int(output_shape),) if np.isscalar(output_shape) else tuple(
        int(s) for s in output_shape)
    return HostFunction(fn, shape, np.dtype(dtype).type,
                        None if input_rank is None else int(input_rank))


def function_name(fn) -> str:
    """The name a plain-function model is shown by (its qualified name)."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def is_function_network(network) -> bool:
    return isinstance(getattr(network, "module", None), FunctionModule)


def refuse_rules(network, composite) -> None:
    """The error for LRP (or any rule composite) on a plain function: no layers to attach to."""
    if composite is not None and is_function_network(network):
        raise ValueError(
            f"model is a plain function ({function_name(network.module.fn)}): LRP needs Flax layers "
            "to attach its rules to. Explain a jxai.Network(module, variables) built from Flax "
            "modules, or use a method that needs only the function: gradient, "
            "integrated_gradients, smoothgrad, occlusion, shapley_values, kernel_shap, "
            "shapley_sampling, rise"
        )

