"""The adapter protocols (`Adapter`, `Site`, `LayerHandle`) and the bypass flag, which every
adapter and the engine import; `jxai.adapters` (its ``__init__``) re-exports them and picks an
adapter for a module (`adapter_for`). See the package docstring for what an adapter provides.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Adapter", "LayerHandle", "Site", "bypassing", "is_bypassed"]


@runtime_checkable
class LayerHandle(Protocol):
    """One layer as the layer kinds' views see it (`jxai.kinds.LayerKind.view`)."""

    module: Any

    def params(self) -> Mapping[str, Any]:
        """The layer's own parameter arrays by name (``{"kernel": ..., "bias": ...}``)."""

    def variables(self) -> Mapping[str, Any]:
        """Its variable collections (``{"params": ..., "batch_stats": ...}``)."""

    def attribute(self, name: str, default=None) -> Any:
        """A configuration attribute (``epsilon``, ``axis``, ``transpose_kernel``)."""

    def call(self, params: Mapping[str, Any], inputs, without_bias: bool = False):
        """The layer's own forward pass on ``inputs`` (an array or a tuple) with ``params`` in
        place of its parameters, without its bias when asked, outside every interception."""


class Site(Protocol):
    """The engine's side of an interception (discovery's recorder, the explanation's attach)."""

    def entered(self, path: str, module: Any) -> contextlib.AbstractContextManager:
        """Around every module method call: the function calls made inside are placed there."""

    def layer_call(self, path: str, layer: LayerHandle, run: Callable, args: tuple):
        """A call of a layer of a registered kind; ``run(*args)`` is the original call."""

    def unsupported(self, path: str, class_name: str) -> None:
        """A module that holds parameters but has no layer kind."""


@runtime_checkable
class Adapter(Protocol):
    """The four things the engine needs from a model library (see the module docstring)."""

    def apply(self, module, variables: Mapping, x, site: Site | None = None):
        """The forward pass, every module call reported to ``site`` (None: plain)."""

    def variables_at(self, variables: Mapping, path: str) -> dict:
        """The variable collections of the layer at ``path``."""


# The engine's own arithmetic inside a layer view is not the model's: no interception there.
_bypass_flag = contextvars.ContextVar("jxai_bypass", default=False)


def is_bypassed() -> bool:
    """Whether the engine is running a layer view now (interceptors then pass calls through)."""
    return _bypass_flag.get()


@contextlib.contextmanager
def bypassing():
    """Run the engine's own computations (layer views, placed functions) unintercepted."""
    token = _bypass_flag.set(True)
    try:
        yield
    finally:
        _bypass_flag.reset(token)
