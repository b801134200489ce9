"""Save and restore converted networks, so conversion happens once.

The format is jxai's one checkpoint format, shared with the model zoo: see `jxai.loading`
(``network.json`` with the Keras architecture as JSON, ``variables/`` written by orbax). The
module is rebuilt from the JSON architecture alone (data, never code). Folders written by earlier
versions of ``jxai convert`` (format ``"jxai.keras-network"``) are still read.
"""

from __future__ import annotations

from jxai.loading import load_network, save_network

__all__ = ["load_network", "save_network"]
