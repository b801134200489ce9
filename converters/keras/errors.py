"""The exceptions of the Keras converter: `ValueError`s whose message says what to do."""

from __future__ import annotations

__all__ = ["KerasFormatError", "UnsupportedLayerError", "WeightMismatchError"]


class KerasFormatError(ValueError):
    """The file is not a readable Keras model or weights file (corrupt, truncated, wrong kind)."""


class UnsupportedLayerError(ValueError):
    """A layer the converter will not translate (Lambda, custom class, unsupported option)."""


class WeightMismatchError(ValueError):
    """The weights in a file do not fit the architecture or module they are loaded into."""
