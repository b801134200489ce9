"""LRP as methods: every LRP preset of `jxai.composites.PRESETS` by its name, and ``lrp``.

``jxai.explain(network, x, "lrp.epsilon", epsilon=0.1)`` is the relevance under the composite
``preset("lrp.epsilon", epsilon=0.1)``: the method's parameters are its preset builder's.
``jxai.explain(network, x, "lrp", composite=my_composite)`` takes any `jxai.Composite` (or its
rule list); a `jxai.Composite` passed as the method itself does the same.

The ``guided_backprop`` and ``deconvnet`` presets are the rules behind the methods of the same
names (`jxai.methods.gradient`), which add their options; they are not registered here.
"""

from __future__ import annotations

import inspect

from jxai.composites import PRESETS, composite_for, preset
from jxai.methods._registry import register_method

__all__ = ["lrp", "register_preset"]


def register_preset(name: str) -> None:
    """Register the preset ``name`` as a method taking its builder's parameters."""

    def method(ctx, x, target, **params):
        return ctx.relevance(x, target, preset(name, **params))[0]

    method.__name__ = name.replace(".", "_")
    method.__doc__ = f"LRP with the composite {name!r} (see jxai.composites.PRESETS)."
    builder = inspect.signature(PRESETS[name]).parameters.values()
    params = {p.name: p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in builder}
    register_method(name, method, family="lrp", params=params)


for _name in PRESETS:
    if _name.startswith(("lrp.", "deep_taylor")):
        register_preset(_name)


@register_method("lrp", family="lrp")
def lrp(ctx, x, target, *, composite):
    """LRP with a user composite: ``method="lrp", composite=Composite([...])``."""
    return ctx.relevance(x, target, composite_for(composite))[0]
