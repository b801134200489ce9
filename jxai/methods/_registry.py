"""The one place the methods package reaches into the engine: registration and composites."""

from jxai._driver import register_method
from jxai.composites import Composite, composite_for, preset

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
            from jxai.composites import PRESETS

            raise ValueError(
                f"composite {value!r} is not a preset name; known: {', '.join(sorted(PRESETS))}"
            ) from None
    return composite_for(value)
