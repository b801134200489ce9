"""The one place the methods package reaches into the engine: registration and composites."""

from jxai.composites import PRESETS, Composite, composite_for, preset
from jxai.contract import register_method

__all__ = ["as_composite", "register_method"]


def as_composite(value) -> Composite | None:
    """``None``, a preset name (``"lrp.epsilon"``, ``"guided_backprop"``), a `Composite` or its
    rule list/mapping, as the `Composite` that ``ctx.backward(..., composite=)`` takes."""
    if value is None or isinstance(value, Composite):
        return value
    if isinstance(value, str):
        try:
            return preset(value)
        except KeyError:
            raise ValueError(
                f"composite {value!r} is not a preset name; known: {', '.join(sorted(PRESETS))}"
            ) from None
    return composite_for(value)
