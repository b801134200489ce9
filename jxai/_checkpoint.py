"""The checkpoint format itself: writing, reading and restoring a folder, for any module.

`jxai.loading` (which rebuilds converted Keras and zoo modules) and the zoo's own checkpoints
(`jxai.models.checkpoint`) both sit on this layer; it knows neither of them. A checkpoint is::

    <folder>/network.json   {"format": "jxai.network", "version": 2, "kind": "keras" | "zoo",
                             "name": ..., "architecture": ... | "config": ..., "metadata": {...},
                             "skip": [...], "extra": {...}}
    <folder>/variables/     an orbax StandardCheckpointer tree {"params": ..., "batch_stats": ...}
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

__all__ = ["FORMAT", "VERSION", "head", "json_safe", "read_record", "restore", "write"]

FORMAT = "jxai.network"
VERSION = 2
# Formats of earlier jxai versions, read by `read_record` (never written).
_LEGACY_ZOO = 1
_LEGACY_KERAS = "jxai.keras-network"


def head(kind: str, name: str | None) -> dict[str, Any]:
    """The first keys of every record: format, version, kind and name."""
    return {"format": FORMAT, "version": VERSION, "kind": kind, "name": name}


def write(network: Network, directory: str | os.PathLike, record: dict[str, Any], *,
          overwrite: bool = False, extra: dict[str, Any] | None = None) -> str:
    """Write ``network`` under ``directory`` with ``record`` (the `head` plus what rebuilds the
    module) completed by the network's metadata, skipped paths and ``extra``.

    The folder is written next to ``directory`` under a temporary name and renamed into place,
    so a crash never leaves half a checkpoint and an old one is replaced in one rename. An
    existing checkpoint is replaced only with ``overwrite=True``; a folder holding anything else
    is never touched. Returns the absolute folder path.
    """
    directory = Path(os.path.abspath(os.fspath(directory)))
    if (directory / "network.json").exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a saved network; pass overwrite=True "
                              "(jxai convert --overwrite) to replace it")
    if directory.exists() and not (directory / "network.json").exists() and (
            not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not a jxai checkpoint; choose a new or "
                              "empty folder")
    metadata = {k: v for k, v in network.metadata.items() if k not in ("config", "extra")}
    record = dict(record, metadata=json_safe(metadata), skip=sorted(network.skip),
                  extra=json_safe(extra if extra is not None
                                  else network.metadata.get("extra", {})))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the checkpoint is shared like any folder
    try:
        import orbax.checkpoint as ocp  # heavy: only when a checkpoint is written

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "variables", jax.tree.map(np.asarray, dict(network.variables)))
        checkpointer.wait_until_finished()
        checkpointer.close()
        (tmp / "network.json").write_text(json.dumps(record, indent=1) + "\n")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(directory)


def read_record(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``network.json`` of a checkpoint, in the current format (older formats translated)."""
    manifest = Path(directory) / "network.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{Path(directory)} is not a jxai checkpoint: {manifest.name} is missing (write one "
            "with jxai.save_network or `jxai convert`)"
        )
    try:
        record = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{manifest} is not valid JSON ({exc}); the checkpoint is corrupt"
                         ) from exc
    if not isinstance(record, dict):
        raise ValueError(f"{manifest} holds {type(record).__name__}, not a JSON object; the "
                         "checkpoint is corrupt")
    form, version = record.get("format"), record.get("version")
    if form == FORMAT and version == VERSION and record.get("kind") in ("keras", "zoo"):
        return record
    if form == _LEGACY_ZOO:  # the zoo's format before version 2: same keys, no kind/skip
        return {**record, "format": FORMAT, "version": VERSION, "kind": "zoo"}
    if form == _LEGACY_KERAS and version == 1:  # `jxai convert` before version 2: no name/extra
        return {**record, "format": FORMAT, "version": VERSION, "kind": "keras",
                "name": (record.get("metadata") or {}).get("name")}
    raise ValueError(
        f"{manifest}: unknown checkpoint format {form!r} version {version!r} (this jxai writes "
        f"{FORMAT!r} version {VERSION} and also reads {_LEGACY_KERAS!r} version 1 and the zoo's "
        f"format {_LEGACY_ZOO})"
    )


def restore(directory: str | os.PathLike, record: dict[str, Any], module, abstract,
            metadata: dict[str, Any]) -> Network:
    """The `Network` of ``module`` with the variables saved under ``directory``.

    ``abstract`` is the variables' tree of shapes (``jax.eval_shape`` of the module's init), or
    None when the architecture has unknown sizes (orbax then restores the saved shapes as they
    are); a saved tree that does not fit it fails with the mismatching paths.
    """
    import orbax.checkpoint as ocp

    directory = Path(os.path.abspath(os.fspath(directory)))
    checkpointer = ocp.StandardCheckpointer()
    try:
        variables = checkpointer.restore(directory / "variables", abstract)
    except Exception as error:  # orbax raises several types for a tree mismatch
        raise ValueError(f"{directory}: the saved variables do not fit {record['name']} "
                         f"({_described(record)}): {error}") from error
    finally:
        checkpointer.close()
    _check_shapes(variables, abstract, directory, record)
    metadata["extra"] = record.get("extra") or {}
    if metadata.get("input_shape") is not None:
        metadata["input_shape"] = tuple(metadata["input_shape"])
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), dict(variables))
    return Network(module, variables, metadata, frozenset(record.get("skip") or ()))


def _check_shapes(variables, abstract, directory, record) -> None:
    """Orbax may hand back arrays of the saved shapes whatever the target says: compare."""
    if abstract is None:
        return
    expected = {jax.tree_util.keystr(p): tuple(leaf.shape)
                for p, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
    found = {jax.tree_util.keystr(p): np.shape(leaf)
             for p, leaf in jax.tree_util.tree_leaves_with_path(dict(variables))}
    wrong = [f"{k}: saved {found.get(k)}, model {v}" for k, v in expected.items()
             if found.get(k) != v]
    wrong += [f"{k}: saved {v}, not in the model" for k, v in found.items() if k not in expected]
    if wrong:
        raise ValueError(f"{directory}: the saved variables do not fit {record['name']} "
                         f"({_described(record)}): " + "; ".join(wrong[:5]))


def _described(record) -> str:
    if record["kind"] == "zoo":
        return f"zoo model with config {record['config']}"
    return "converted Keras architecture"


def json_safe(value: Any) -> Any:
    """JSON-ready copy: tuples → lists, NumPy scalars/arrays → numbers/lists, others → repr."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
