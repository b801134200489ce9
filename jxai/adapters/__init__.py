"""Framework adapters: the one seam between the engine and a model library.

The engine needs four things from the library a model is written in, and nothing else:

1. **enumerate the layer calls** and 2. **intercept a call**: `Adapter.apply` runs the forward
   pass and reports every module method call to the engine's `Site` (``site.entered(path,
   module)``, so function calls made inside a module are named after it); a call of a module
   whose class has a layer kind (`jxai.kinds`) goes to ``site.layer_call(path, layer, run,
   args)``, which may run it (``run(*args)``), replace it by a rule, tap or skip it;
3. **a view of a layer**: the `LayerHandle` given to ``layer_call``, which the kind's view reads
   (its parameters and variables, attributes such as ``epsilon``, and its own forward pass with
   other parameters: ``call(params, inputs, without_bias)``);
4. **the variables at a path**: `Adapter.variables_at`, the collections of one layer
   (``{"params": ..., "batch_stats": ...}``), as a canonizer needs them.

`jxai.adapters.linen` implements them for ``flax.linen`` (``nn.intercept_methods``) and
`jxai.adapters.nnx` for Flax NNX (a class-level ``__call__`` patch on a merged copy).
`adapter_for(module)` picks one.

An Equinox adapter would be one new file, ``jxai/adapters/equinox.py``: ``apply`` runs the model
after replacing, with ``jax.tree_util.tree_map(f, model, is_leaf=is_layer)``, every layer of a
registered kind by a thin wrapper module whose ``__call__`` calls ``site.layer_call`` (the path
from ``jax.tree_util.keystr`` of the leaf's key path); the handle's ``call`` re-runs the layer
with ``eqx.tree_at`` replacing its ``weight``/``bias``; ``variables_at`` reads the leaves at the
path; its classes (``eqx.nn.Linear``, ``eqx.nn.Conv``) join the kinds with
`jxai.kinds.add_classes`, and `adapter_for` learns to return it for an ``eqx.Module``.
"""

from __future__ import annotations

from jxai.adapters.base import Adapter, LayerHandle, Site, bypassing, is_bypassed

__all__ = ["Adapter", "LayerHandle", "Site", "adapter_for", "bypassing", "is_bypassed"]


def adapter_for(module) -> Adapter:
    """The adapter of ``module``'s library: linen, or NNX (a `jxai.adapters.nnx.NNXModel`)."""
    from jxai.adapters import linen

    if linen.accepts(module):
        return linen.ADAPTER
    from jxai.adapters import nnx as nnx_adapter

    if nnx_adapter.accepts(module):
        return nnx_adapter.ADAPTER
    raise TypeError(
        f"no jxai adapter for {type(module).__name__}: jxai explains flax.linen modules and "
        "flax.nnx modules (see jxai.adapters for how another library is added)"
    )
