"""`Network`: a Flax module bound to its variables, the unit every jxai entry point accepts.

The converter (`jxai.load_keras`) and the model zoo (`jxai.models`) return `Network`s; any
hand-written `flax.linen.Module` becomes one with ``Network(module, variables)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jxai._checks import module_key
from jxai.adapters import adapter_for
from jxai.adapters.linen import module_path  # noqa: F401  (re-exported: its old home)
from jxai.function_model import FunctionModule, function_name

__all__ = ["Network", "as_network"]


class Network:
    """A `flax.linen.Module` together with its variables and descriptive metadata.

    Args:
      module: any `flax.linen.Module`. Its ``__call__`` takes one array (batch first).
      variables: the variable collections (``{"params": ..., "batch_stats": ...}``).
      metadata: free-form facts about the model (``input_shape``, ``layer_names``,
        ``output_activation``, ``source``...). The converter fills it; users may leave it out.
      skip: module paths (``"a/b"``) whose call is replaced by the identity. Used to strip a
        final softmax/sigmoid without touching the module or the parameter tree.

    ``network(x)`` and ``network.apply(x)`` run the forward pass in inference mode.
    """

    def __init__(
        self,
        module: nn.Module,
        variables: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        skip: frozenset[str] = frozenset(),
    ):
        try:
            adapter_for(module)
        except TypeError:
            raise TypeError(
                f"Network expects a flax.linen.Module, got {type(module).__name__}. "
                "Wrap a Flax model as jxai.Network(module, variables), or pass an nnx.Module "
                "to jxai.as_network(model)."
            ) from None
        if not isinstance(variables, Mapping) or "params" not in variables:
            raise TypeError(
                "Network variables must be a mapping with a 'params' collection, as returned "
                f"by module.init(...); got {type(variables).__name__}"
                + (f" with keys {sorted(variables)}" if isinstance(variables, Mapping) else "")
            )
        self.module = module
        self.variables = dict(variables)
        self.metadata = dict(metadata or {})
        self.skip = frozenset(skip)

    # -- forward ---------------------------------------------------------------------------
    def apply(self, x: jax.Array, **kwargs) -> jax.Array:
        """Forward pass (inference mode), with the paths in ``skip`` replaced by the identity."""
        if not self.skip:
            return self.module.apply(self.variables, x, **kwargs)
        if not kwargs:  # the engine's own forward pass also skips placed functions (softmax_0)
            from jxai._engine import discover, run_forward  # the engine imports this module

            facts = discover(self, tuple(jnp.shape(x)), jnp.result_type(x))
            return run_forward(self, x, None, {}, facts).output
        return self.adapter.apply(self.module, self.variables, x, _Skipping(self.skip), **kwargs)

    __call__ = apply

    @property
    def module_key(self):
        """The module as a cache key: itself, or a `ModuleKey` when it does not hash."""
        return module_key(self.module)

    @property
    def adapter(self):
        """The framework adapter of the module (`jxai.adapters`)."""
        return adapter_for(self.module)

    def without_output_activation(self) -> Network:
        """The same network explained at its logits: a final softmax/sigmoid becomes the identity.

        The activation must be a `jxai.layers.Activation` module (the converter and the model zoo
        build them so). iNNvestigate calls this `model_wo_softmax`.
        """
        path = self.metadata.get("output_activation_path")
        if path is None:
            path = find_output_activation(self)
        if path is None:
            return self
        metadata = dict(self.metadata, output_activation=None, output_activation_path=None)
        return Network(self.module, self.variables, metadata, self.skip | {path})

    # -- facts -----------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-sample input shape (no batch axis), when known from the metadata."""
        shape = self.metadata.get("input_shape")
        return tuple(shape) if shape is not None else None

    def param_count(self) -> int:
        return int(sum(jnp.size(p) for p in jax.tree.leaves(self.variables["params"])))

    def __repr__(self) -> str:
        name = self.metadata.get("name") or type(self.module).__name__
        return f"Network({name}, params={self.param_count():,}, skip={sorted(self.skip)})"


def as_network(model: Any, variables: Mapping[str, Any] | None = None) -> Network:
    """Accept a `Network`, a Flax linen module with its variables, or a Flax NNX module (its
    variables are its own: `jxai.adapters.nnx`), and return a `Network`."""
    if isinstance(model, Network):
        return model
    if _is_nnx(model):
        if variables is not None:
            raise TypeError(
                f"{type(model).__name__} is an nnx.Module: it holds its variables; pass the "
                "model alone, e.g. jxai.explain(model, x, method)"
            )
        from jxai.adapters.nnx import NNXModel, bridged_linen  # NNX loads only for NNX users

        bridged = bridged_linen(model)
        if bridged is not None:  # nnx.bridge.ToNNX: a linen module and its variables inside
            return Network(*bridged, {"name": type(bridged[0]).__name__})
        module, nnx_variables = NNXModel.split(model)
        return Network(module, nnx_variables, {"name": type(model).__name__})
    if isinstance(model, nn.Module):
        if variables is None:
            raise TypeError(
                f"{type(model).__name__} is a bare Flax module: pass its variables too, e.g. "
                "jxai.explain(module, variables, x, method), or wrap it as jxai.Network(module, "
                "variables)."
            )
        return Network(model, variables)
    if callable(model):  # a plain function of a batch: only its forward pass (function_model)
        return Network(FunctionModule(model), {"params": {}},
                       {"function": True, "name": function_name(model)})
    raise TypeError(
        f"expected a jxai.Network or a flax.linen.Module, got {type(model).__name__}. Keras files "
        "are loaded with jxai.load_keras(path)."
    )


def _is_nnx(model) -> bool:
    """An ``nnx.Module`` (without importing NNX for linen users)."""
    import sys

    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(model, nnx.Module)


class _Skipping:
    """A site (`jxai.adapters.Site`) that replaces the calls of the layers in ``paths`` by the
    identity and runs every other call as it is."""

    def __init__(self, paths: frozenset[str]):
        self.paths = paths

    def entered(self, path, module):
        return contextlib.nullcontext()

    def layer_call(self, path, layer, run, args):
        return args[0] if path in self.paths else run(*args)

    def unsupported(self, path, class_name):
        pass


def find_output_activation(network: Network, x_shape: tuple | None = None,
                           dtype=jnp.float32, inputs=()) -> str | None:
    """Path of a softmax/sigmoid `jxai.layers.Activation` that produces the network output.

    Traces the forward pass at ``x_shape`` (batch first) and ``dtype`` (integer token ids stay
    integer), with the model's other inputs (``{name: array}``, only their shapes and dtypes
    count), or at one sample of the metadata's ``input_shape``; None when no shape is known.
    """
    from jxai._engine import discover  # the engine imports this module

    if x_shape is None:
        if network.input_shape is None:
            return None
        x_shape = (1, *network.input_shape)
    facts = discover(network, tuple(x_shape), dtype, inputs)
    final = [
        layer.path
        for layer in facts.layers
        if layer.is_output and layer.activation in ("softmax", "sigmoid", "log_softmax")
    ]
    return final[0] if final else None
