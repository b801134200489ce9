"""Checkpoints of zoo networks: jxai's one checkpoint format (`jxai._checkpoint`), zoo spelling.

    path = jxai.models.checkpoint.save("ck/", network, extra={"scores": ...})   # replaces ck/
    network = jxai.models.checkpoint.load("ck/")

``save(path, network)`` writes what ``jxai.save_network(network, path, overwrite=True,
extra=...)`` writes for a zoo network, and ``load`` reads it back (``jxai.load_network`` reads it
too): the record holds the zoo ``name`` and ``config`` and the module is rebuilt with
``jxai.models.get_module(name, **config)`` (no code is read from it). The trained networks that
ship with jxai live in ``checkpoints/`` next to this file; ``jxai.models.get(name)`` loads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jxai._checkpoint import write
from jxai.network import Network

from ._registry import CHECKPOINTS, load_zoo_checkpoint, shipped, zoo_record

__all__ = ["CHECKPOINTS", "load", "save", "shipped"]


def save(path: str | os.PathLike, network: Network, *, extra: dict[str, Any] | None = None) -> Path:
    """Write zoo ``network`` to ``path`` (replacing a checkpoint there in one rename).

    Args:
      path: the checkpoint folder.
      network: a zoo network (`jxai.models.get`: metadata ``name`` and ``config``).
      extra: more JSON facts to keep (training history, test accuracy...), restored as
        ``metadata["extra"]``.

    Returns:
      The absolute checkpoint path.
    """
    return Path(write(network, path, zoo_record(network), overwrite=True, extra=extra))


def load(path: str | os.PathLike) -> Network:
    """Rebuild the zoo network saved at ``path`` and restore its variables (a converted Keras
    checkpoint is refused here: `jxai.load_network` reads both)."""
    return load_zoo_checkpoint(Path(os.path.abspath(os.fspath(path))))
