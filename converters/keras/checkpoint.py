"""Save and restore converted networks with orbax-checkpoint, so conversion happens once.

Layout of a saved network directory::

    <directory>/network.json   {"format": "jxai.keras-network", "version": 1,
                                "architecture": <GraphSpec as JSON>, "metadata": {...}}
    <directory>/variables/     orbax StandardCheckpointer tree {"params": ..., "batch_stats": ...}

`load_network` rebuilds the `KerasModel` from the JSON architecture alone (data, never code) and
restores the variables with orbax.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jxai.converters.keras.errors import KerasFormatError
from jxai.converters.keras.loader import network_from_graph
from jxai.converters.keras.module import KerasModel
from jxai.converters.keras.spec import graph_from_dict, graph_to_dict

from jxai.network import Network

__all__ = ["load_network", "save_network"]

FORMAT = "jxai.keras-network"
VERSION = 1


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def save_network(network: Network, directory: str | os.PathLike, *, overwrite: bool = False
                 ) -> str:
    """Write a converted network (architecture JSON + orbax variables) to ``directory``.

    Args:
      network: a `Network` returned by `load_keras` (its module must be a `KerasModel`).
      directory: target folder; created. An existing checkpoint there is replaced only with
        ``overwrite=True``.

    Returns:
      The absolute directory path.
    """
    if not isinstance(network.module, KerasModel):
        raise TypeError(
            f"save_network stores converted Keras networks (module KerasModel); got "
            f"{type(network.module).__name__}. Save a hand-written Flax module's variables with "
            "orbax directly."
        )
    directory = os.path.abspath(os.fspath(directory))
    manifest = os.path.join(directory, "network.json")
    if os.path.exists(manifest) and not overwrite:
        raise FileExistsError(f"{directory} already holds a saved network; pass overwrite=True")
    os.makedirs(directory, exist_ok=True)
    metadata = {k: v for k, v in network.metadata.items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": graph_to_dict(network.module.graph),
        "metadata": _json_safe(metadata),
        "skip": sorted(network.skip),
    }
    variables = jax.tree.map(np.asarray, dict(network.variables))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, "variables"), variables, force=True)
    checkpointer.wait_until_finished()
    tmp = manifest + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, manifest)
    return directory


def load_network(directory: str | os.PathLike) -> Network:
    """Restore a network written by `save_network` (no Keras file or TensorFlow needed)."""
    directory = os.path.abspath(os.fspath(directory))
    manifest = os.path.join(directory, "network.json")
    if not os.path.exists(manifest):
        raise FileNotFoundError(f"{directory} has no network.json; it is not a directory written "
                                "by jxai.converters.keras.save_network / `jxai convert`")
    try:
        with open(manifest) as f:
            payload = json.load(f)
    except json.JSONDecodeError as exc:
        raise KerasFormatError(f"{manifest} is not valid JSON ({exc})") from exc
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise KerasFormatError(f"{manifest}: unknown format {payload.get('format')!r} version "
                               f"{payload.get('version')!r} (expected {FORMAT!r} {VERSION})")
    graph = graph_from_dict(payload["architecture"])
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, "variables"))
    metadata = dict(payload.get("metadata") or {})
    network = network_from_graph(graph, dict(variables), metadata)
    if payload.get("skip"):
        network = Network(network.module, network.variables, network.metadata,
                          frozenset(payload["skip"]))
    return network
