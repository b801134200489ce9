"""The ``flax.linen`` adapter: ``nn.intercept_methods`` is the seam (see `jxai.adapters`).

Every module method call passes through one interceptor: it tells the engine's site which
module is running (``site.entered``) and hands the ``__call__`` of a module whose class has a
layer kind to ``site.layer_call``. While a method of any other module runs, its dataclass fields
holding a placed function (``act: Callable = nn.relu``) are that function's placing wrapper
(`jxai._functions.references_placed`; put back afterwards). Parameters stay where they are: the
variables are the user's own collections, read at a path by `variables_at`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn

from jxai import _functions
from jxai.adapters.base import bypassing, is_bypassed
from jxai.kinds import kind_of

__all__ = ["ADAPTER", "LinenAdapter", "LinenLayer", "accepts", "module_path"]


def accepts(module) -> bool:
    return isinstance(module, nn.Module)


def module_path(module: nn.Module) -> str:
    """'/'-joined path of a bound module inside its root (``""`` for the root)."""
    return "/".join(str(p) for p in module.path)


class LinenLayer:
    """A bound linen module as the layer kinds' views see it (`jxai.adapters.LayerHandle`).

    ``call`` runs a parentless clone (``use_bias=False`` when the bias is to be left out; with
    ``fields``, the configuration given at call time, such as an ``nn.Einsum``'s equation) with
    the given ``params`` collection, outside every jxai interceptor.
    """

    def __init__(self, module: nn.Module, fields: Mapping | None = None):
        self.module = module
        self.fields = dict(fields or {})

    def params(self) -> dict:
        return dict(self.variables().get("params", {}))

    def variables(self) -> Mapping:
        return self.module.variables

    def attribute(self, name: str, default=None):
        return self.fields[name] if name in self.fields else getattr(self.module, name, default)

    def call(self, params, inputs, without_bias: bool = False):
        fields = {**self.fields, **({"use_bias": False} if without_bias else {})}
        bare = self.module.clone(parent=None, **fields)
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        with bypassing():
            return bare.apply({"params": params} if params else {}, *inputs)


def _owns_params(module: nn.Module) -> bool:
    """Whether the module holds parameter arrays itself (not only through submodules)."""
    try:
        params = module.variables.get("params", {})
    except Exception:  # an unbound or uninitialised module holds nothing
        return False
    return any(not isinstance(value, Mapping) for value in params.values())


def _fields(module: nn.Module):
    """``(name, value)`` of the module's dataclass fields (``act: Callable = nn.relu``): the
    saved references that `jxai._functions.references_placed` swaps while its methods run."""
    for field in dataclasses.fields(module):
        if field.name not in ("parent", "name"):
            yield field.name, getattr(module, field.name, None)


def _call_arguments(module: nn.Module, args: tuple, kwargs: dict):
    """``(layer inputs, fields)``: an ``nn.Einsum(shape)`` called with its equation
    (``proj(x, "btd,dk->btk")``) is one layer of one input whose handle clones it with
    ``einsum_str`` set (``fields``), as the rules need; other calls' arguments as they are."""
    equation = kwargs.get("einsum_str", args[1] if len(args) > 1 else None)
    if not isinstance(module, nn.Einsum) or equation is None or module.einsum_str is not None:
        return tuple(args), {}  # both set: Flax's own error says so
    return tuple(args[:1]), {"einsum_str": equation}


class _Interceptor:
    """The one linen interceptor: every module method call reported to the site."""

    def __init__(self, site):
        self.site = site

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        path = module_path(module)
        with self.site.entered(path, module):
            if is_bypassed():
                return next_fun(*args, **kwargs)
            if kind_of(type(module)) is None:
                if context.method_name == "__call__" and _owns_params(module):
                    self.site.unsupported(path, type(module).__name__)
                with _functions.references_placed(module, _fields(module)):
                    return next_fun(*args, **kwargs)
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            inputs, fields = _call_arguments(module, args, kwargs)
            rest = {**kwargs, **fields}  # the original call, its equation given by keyword
            return self.site.layer_call(
                path, LinenLayer(module, fields), lambda *a: next_fun(*a, **rest), inputs
            )


class LinenAdapter:
    """`jxai.adapters.Adapter` for ``flax.linen`` modules."""

    name = "linen"

    def apply(self, module: nn.Module, variables: Mapping, x, site=None, **kwargs):
        if site is None:
            return module.apply(variables, x, **kwargs)
        with _functions.parameters(variables), nn.intercept_methods(_Interceptor(site)):
            return module.apply(variables, x, **kwargs)

    def variables_at(self, variables: Mapping, path: str) -> dict:
        """The collections of the module at ``path`` (``"a/b"``; a ``#k`` suffix is ignored)."""
        names = [n for n in path.split("#")[0].split("/") if n]
        found = {}
        for collection, tree in variables.items():
            node = tree
            for name in names:
                if not isinstance(node, Mapping) or name not in node:
                    node = None
                    break
                node = node[name]
            if node is not None:
                found[collection] = node
        return found


ADAPTER = LinenAdapter()
