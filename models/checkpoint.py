"""Orbax checkpoints of zoo networks: the variables plus the facts needed to rebuild the module.

A checkpoint is a directory::

    <path>/network.json     {"format": 1, "name": ..., "config": {...}, "metadata": {...}}
    <path>/variables/       an orbax StandardCheckpointer tree of the variables

`load` rebuilds the module with ``jxai.models.get_module(name, **config)`` (no code is ever read
from the checkpoint) and restores the variables into its abstract shapes, so a checkpoint that does
not fit the architecture fails with the mismatching paths. `save` writes into a temporary
directory next to ``path`` and renames it into place: a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jxai.network import Network

from ._registry import get_module

__all__ = ["load", "save"]

FORMAT = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def save(path: str | os.PathLike, network: Network, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``network`` (a zoo network: ``metadata`` has ``name`` and ``config``) to ``path``.

    Args:
      path: the checkpoint directory; replaced if it exists.
      network: the network to save.
      extra: more JSON facts to keep (training history, test accuracy...), stored under
        ``"extra"`` in ``network.json``.

    Returns:
      The absolute checkpoint path.
    """
    import orbax.checkpoint as ocp

    name = network.metadata.get("name")
    config = network.metadata.get("config")
    if name is None or config is None:
        raise ValueError(
            f"{network!r} has no zoo 'name'/'config' metadata, so it could not be rebuilt on "
            "load; build it with jxai.models.get(name, ...)."
        )
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "variables", jax.device_get(network.variables))
        checkpointer.wait_until_finished()
        checkpointer.close()
        record = {
            "format": FORMAT,
            "name": name,
            "config": _jsonable(config),
            "metadata": _jsonable({k: v for k, v in network.metadata.items() if k != "config"}),
            "extra": _jsonable(extra or {}),
        }
        (tmp / "network.json").write_text(json.dumps(record, indent=2) + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``network.json`` record of a checkpoint (name, config, metadata, extra)."""
    info_path = Path(path) / "network.json"
    if not info_path.is_file():
        raise FileNotFoundError(
            f"{Path(path)} is not a jxai zoo checkpoint: {info_path.name} is missing "
            "(write one with jxai.models.checkpoint.save)."
        )
    record = json.loads(info_path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{info_path}: unsupported checkpoint format {record.get('format')!r} "
                         f"(this jxai reads format {FORMAT})")
    return record


def load(path: str | os.PathLike) -> Network:
    """Rebuild the zoo network saved at ``path`` and restore its variables."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    record = read_info(path)
    module, input_shape, metadata = get_module(record["name"], **record["config"])
    abstract = jax.eval_shape(module.init, jax.random.key(0),
                              jnp.zeros((1, *input_shape), jnp.float32))
    checkpointer = ocp.StandardCheckpointer()
    try:
        variables = checkpointer.restore(path / "variables", abstract)
    except Exception as error:  # orbax raises several types for a tree mismatch
        raise ValueError(
            f"{path}: the saved variables do not fit {record['name']} with config "
            f"{record['config']}: {error}"
        ) from error
    finally:
        checkpointer.close()
    # Orbax may hand back arrays of the saved shapes, whatever the target says: check them.
    expected = {jax.tree_util.keystr(p): leaf.shape
                for p, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    found = {jax.tree_util.keystr(p): np.shape(leaf)
             for p, leaf in jax.tree_util.tree_leaves_with_path(variables)}
    wrong = [f"{k}: saved {found.get(k)}, model {v}" for k, v in expected.items()
             if found.get(k) != tuple(v)]
    wrong += [f"{k}: saved {v}, not in the model" for k, v in found.items() if k not in expected]
    if wrong:
        raise ValueError(
            f"{path}: the saved variables do not fit {record['name']} with config "
            f"{record['config']}: " + "; ".join(wrong[:5])
        )
    saved = record.get("metadata", {})
    metadata = {**saved, **metadata, "extra": record.get("extra", {})}
    metadata["input_shape"] = tuple(metadata["input_shape"])
    return Network(module, dict(variables), metadata)
