"""The one place the methods package reaches into the engine for `register_method`."""

from jxai._engine import register_method

__all__ = ["register_method"]
