"""Argument checks and small caches shared by the driver, the methods and the batch pipeline.

A leaf module (it imports nothing from jxai), so any module can use it without import cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["ModuleKey", "check_positive_int", "check_size", "memo", "module_key", "unkey"]


def _is_int_at_least(value: Any, minimum: int) -> bool:
    """An integer (not a boolean) >= ``minimum``."""
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= minimum


def check_positive_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int; a ValueError naming ``owner`` and ``name`` unless it is an integer
    >= ``minimum`` (booleans are not integers here)."""
    if not _is_int_at_least(value, minimum):
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_size(owner: str, name: str, value: Any) -> int | str | None:
    """A size that may also be ``None`` (everything at once) or ``"auto"`` (the caller decides):
    returned as it is, an integer as an int; anything else is a ValueError."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if not _is_int_at_least(value, 1):
        raise ValueError(f"{owner}: {name} must be an integer >= 1, None or 'auto', "
                         f"got {value!r}")
    return int(value)


def memo(cache: dict, key: Hashable, compute: Callable[[], Any], limit: int = 256) -> Any:
    """``cache[key]``, computed by ``compute()`` on a miss. The cache is emptied when it holds
    ``limit`` entries: for results that are cheap to recompute next to what they are keyed on
    (a trace, a compiled program), so an evicted entry costs one recomputation."""
    if key not in cache:
        if len(cache) >= limit:
            cache.clear()
        cache[key] = compute()
    return cache[key]


class ModuleKey:
    """A cache key for a module that does not hash (a dict or list field: ``cfg: dict``).

    Flax modules hash by their fields, so one with a dict field raises TypeError in every cache
    keyed on it. This key stands for it by identity instead: the same module object hits the
    cache, an equal copy compiles once more. `unkey` gives the module back."""

    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module

    def __hash__(self):
        return id(self.module)

    def __eq__(self, other):
        return isinstance(other, ModuleKey) and other.module is self.module

    def __repr__(self):
        return f"ModuleKey({type(self.module).__name__} at {id(self.module):#x})"


def module_key(module):
    """``module`` when it hashes, else a `ModuleKey` (identity) standing for it."""
    try:
        hash(module)
    except TypeError:
        return ModuleKey(module)
    return module


def unkey(module):
    """The module behind a `module_key`."""
    return module.module if isinstance(module, ModuleKey) else module
