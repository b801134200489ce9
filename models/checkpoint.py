"""Checkpoints of zoo networks: jxai's one checkpoint format (`jxai.loading`), zoo spelling.

    path = jxai.models.checkpoint.save("ck/", network, extra={"scores": ...})   # replaces ck/
    network = jxai.models.checkpoint.load("ck/")

``save(path, network)`` is ``jxai.save_network(network, path, overwrite=True, extra=...)`` and
``load`` is ``jxai.load_network``: a zoo checkpoint records the zoo ``name`` and ``config`` and the
module is rebuilt with ``jxai.models.get_module(name, **config)`` (no code is read from it).
The trained networks that ship with jxai live in ``checkpoints/`` next to this file;
``jxai.models.get(name)`` loads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jxai.loading import load_network, save_network
from jxai.network import Network

__all__ = ["CHECKPOINTS", "load", "save", "shipped"]

# The trained zoo networks that ship with jxai, one folder per zoo name.
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def save(path: str | os.PathLike, network: Network, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``network`` to ``path`` (replacing a checkpoint there in one rename).

    Args:
      path: the checkpoint folder.
      network: the network to save (a zoo network, or a converted Keras one).
      extra: more JSON facts to keep (training history, test accuracy...), restored as
        ``metadata["extra"]``.

    Returns:
      The absolute checkpoint path.
    """
    return Path(save_network(network, path, overwrite=True, extra=extra))


def load(path: str | os.PathLike) -> Network:
    """Rebuild the network saved at ``path`` and restore its variables (`jxai.load_network`)."""
    return load_network(path)


def shipped(name: str) -> Path | None:
    """The folder of the trained checkpoint that ships for zoo model ``name``, or None."""
    path = CHECKPOINTS / name
    return path if (path / "network.json").is_file() else None
