"""Loading a network from whatever names it: `jxai.load`, and the one checkpoint format.

    network = jxai.load("model.h5")                        # a Keras file (.h5, .hdf5, .keras)
    network = jxai.load("converted/")                      # a checkpoint folder
    network = jxai.load("clever_hans_cnn")                 # a zoo name (trained weights if shipped)
    network = jxai.load("vit-base-patch16-224/")           # a HF/timm folder (jxai.load_pretrained)
    jxai.save_network(network, "converted/")               # converted Keras or zoo network

A checkpoint is a folder, written by `save_network` (``jxai convert``, the zoo's training
scripts and ``jxai demo`` all call it)::

    <folder>/network.json   {"format": "jxai.network", "version": 2, "kind": "keras" | "zoo",
                             "name": ..., "architecture": <GraphSpec>  (kind keras),
                             "config": {...}  (kind zoo), "metadata": {...}, "skip": [...],
                             "extra": {...}}
    <folder>/variables/     an orbax StandardCheckpointer tree {"params": ..., "batch_stats": ...}

The module is rebuilt from data alone, never from code in the folder: a converted Keras network
from its JSON architecture (`jxai.converters.keras.KerasModel`), a zoo network by
``jxai.models.get_module(name, **config)``. The variables are restored into the shapes the
architecture has, so a checkpoint that does not fit it fails with the mismatching paths.
`load_network` also reads the two formats of earlier jxai versions (the zoo's ``{"format": 1}``
and ``jxai convert``'s ``{"format": "jxai.keras-network", "version": 1}``): both hold the same
facts under other keys; `save_network` writes only the current one.
"""

from __future__ import annotations

import difflib
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

__all__ = ["KERAS_SUFFIXES", "load", "load_network", "save_network"]

FORMAT = "jxai.network"
VERSION = 2
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
# Formats of earlier jxai versions, read by `load_network` (never written).
_LEGACY_ZOO = 1
_LEGACY_KERAS = "jxai.keras-network"


# -- jxai.load -----------------------------------------------------------------------------------
def load(spec: str | os.PathLike, *, pretrained: bool | None = None) -> Network:
    """A `Network` from a Keras file, a checkpoint folder or a zoo model name.

    ``*.h5 / *.hdf5 / *.keras`` (a file, or an unzipped ``.keras`` folder) → `jxai.load_keras`;
    a folder holding ``network.json`` → `load_network` (written by `save_network`,
    ``jxai convert``, ``jxai demo``, or shipped in ``jxai.models``' ``checkpoints/``); a Hugging
    Face or timm folder (``config.json`` + ``model.safetensors`` or its shard index) →
    `jxai.load_pretrained`; a name in
    `jxai.models.NAMES` → ``jxai.models.get(name, pretrained=pretrained)``.

    Args:
      spec: the path or the name.
      pretrained: for a zoo name only (see `jxai.models.get`): None gives the shipped trained
        weights where they exist and random ones with a warning elsewhere, True requires trained
        weights, False asks for random ones without a warning. Files and folders always hold
        their own weights, so ``pretrained=False`` is refused for them.

    Raises:
      ValueError: ``spec`` is none of the above (the message lists what is accepted and the zoo
        names), or the file/folder is not a readable model (`KerasFormatError` is a ValueError).
    """
    text = os.fspath(spec)
    path = Path(text)
    is_zoo_name = not path.exists() and text in _zoo_names()
    if pretrained is False and not is_zoo_name:
        raise ValueError(f"pretrained=False applies to zoo names only; {text!r} is a file or "
                         "folder whose own weights are loaded")
    if path.is_dir() and (path / "network.json").is_file():
        return load_network(path)
    from jxai.converters.safetensors import is_pretrained_folder, load_pretrained

    if is_pretrained_folder(path):  # config.json + model.safetensors (HF, timm)
        return load_pretrained(path)
    if path.is_dir() and ((path / "config.json").is_file() or text.endswith(".keras")
                          or (path / "saved_model.pb").is_file()):
        return _load_keras(path)  # an unzipped .keras archive, or a SavedModel (clear refusal)
    if path.is_file() and text.lower().endswith(KERAS_SUFFIXES):
        return _load_keras(path)
    if is_zoo_name:
        import jxai.models

        return jxai.models.get(text, pretrained=pretrained)
    if path.is_dir():
        what = "a folder without network.json"
    elif path.is_file():
        what = f"a file without a Keras suffix ({', '.join(KERAS_SUFFIXES)})"
    else:
        close = difflib.get_close_matches(text, _zoo_names(), n=1, cutoff=0.6)
        what = "no file, folder or zoo model name" + (
            f" (did you mean {close[0]!r}?)" if close else "")
    raise ValueError(f"cannot load {text!r}: it is {what}. {accepted()}")


def accepted() -> str:
    """One sentence naming what `load` accepts (for error messages and help texts)."""
    return (f"jxai.load accepts a Keras file ({', '.join(KERAS_SUFFIXES)}), a checkpoint folder "
            "holding network.json and variables/ (written by jxai.save_network or `jxai "
            "convert`), a Hugging Face/timm folder (config.json + model.safetensors), or a "
            f"jxai.models name: {', '.join(_zoo_names())}")


def _zoo_names() -> list[str]:
    import jxai.models

    return list(jxai.models.NAMES)


def _load_keras(path: Path) -> Network:
    from jxai.converters.keras.loader import load_keras

    return load_keras(path)


# -- the checkpoint format ----------------------------------------------------------------------
def save_network(network: Network, directory: str | os.PathLike, *, overwrite: bool = False,
                 extra: dict[str, Any] | None = None) -> str:
    """Write ``network`` as a checkpoint folder (architecture JSON + orbax variables).

    The folder is written next to ``directory`` under a temporary name and renamed into place,
    so a crash never leaves half a checkpoint and an old one is replaced in one rename.

    Args:
      network: a converted Keras network (`jxai.load_keras`, module `KerasModel`) or a zoo
        network (`jxai.models.get`: metadata ``name`` and ``config``), with any skipped paths
        (`Network.without_output_activation`).
      directory: the checkpoint folder. An existing checkpoint there is replaced only with
        ``overwrite=True``; an existing folder that holds anything else is never touched.
      extra: more JSON facts to keep (training history, test scores...), restored as
        ``metadata["extra"]``.

    Returns:
      The absolute folder path.
    """
    record = _architecture(network)
    directory = Path(os.path.abspath(os.fspath(directory)))
    if (directory / "network.json").exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a saved network; pass overwrite=True "
                              "(jxai convert --overwrite) to replace it")
    if directory.exists() and not (directory / "network.json").exists() and (
            not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not a jxai checkpoint; choose a new or "
                              "empty folder")
    metadata = {k: v for k, v in network.metadata.items() if k not in ("config", "extra")}
    record.update(metadata=_json_safe(metadata), skip=sorted(network.skip),
                  extra=_json_safe(extra if extra is not None
                                   else network.metadata.get("extra", {})))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the checkpoint is shared like any folder
    try:
        import orbax.checkpoint as ocp

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


def _architecture(network: Network) -> dict[str, Any]:
    """The record's head: format, kind and what rebuilds the module."""
    from jxai.converters.keras.module import KerasModel
    from jxai.converters.keras.spec import graph_to_dict

    head = {"format": FORMAT, "version": VERSION}
    if isinstance(network.module, KerasModel):
        return {**head, "kind": "keras", "name": network.metadata.get("name"),
                "architecture": graph_to_dict(network.module.graph)}
    name, config = network.metadata.get("name"), network.metadata.get("config")
    if name is None or config is None or name not in _zoo_names():
        raise ValueError(
            f"{network!r} cannot be saved as a checkpoint: its module is not a converted "
            "KerasModel (jxai.load_keras) and it has no zoo 'name'/'config' metadata "
            "(jxai.models.get), so it could not be rebuilt on load. Save a hand-written Flax "
            "module's variables with orbax directly."
        )
    return {**head, "kind": "zoo", "name": name, "config": _json_safe(config)}


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


def load_network(directory: str | os.PathLike) -> Network:
    """Restore a network written by `save_network` (no Keras file or TensorFlow needed)."""
    import orbax.checkpoint as ocp

    directory = Path(os.path.abspath(os.fspath(directory)))
    record = read_record(directory)
    module, abstract, metadata = (_zoo_module if record["kind"] == "zoo"
                                  else _keras_module)(record, directory)
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


def _zoo_module(record, directory):
    from jxai.models import get_module

    module, input_shape, metadata = get_module(record["name"], **record["config"])
    abstract = jax.eval_shape(module.init, jax.random.key(0),
                              jnp.zeros((1, *input_shape), jnp.float32))
    return module, dict(abstract), {**(record.get("metadata") or {}), **metadata}


def _keras_module(record, directory):
    from jxai.converters.keras.loader import network_from_graph
    from jxai.converters.keras.spec import graph_from_dict

    graph = graph_from_dict(record["architecture"])
    shapes = graph.input_shapes
    if any(dim is None for shape in shapes for dim in shape):
        abstract = None  # unknown spatial sizes: orbax restores the saved shapes as they are
    else:
        from jxai.converters.keras.module import KerasModel

        dummies = [jax.ShapeDtypeStruct((1, *shape), jnp.float32) for shape in shapes]
        abstract = jax.eval_shape(lambda *xs: KerasModel(graph=graph).init(jax.random.key(0), *xs),
                                  *dummies)
        abstract = {k: v for k, v in abstract.items() if k in ("params", "batch_stats")}
    # network_from_graph derives the converter's metadata; the saved metadata wins over it.
    shell = network_from_graph(graph, {"params": {}}, dict(record.get("metadata") or {}))
    return shell.module, abstract, shell.metadata


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


def _json_safe(value: Any) -> Any:
    """JSON-ready copy: tuples → lists, NumPy scalars/arrays → numbers/lists, others → repr."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
