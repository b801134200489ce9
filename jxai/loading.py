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
facts under other keys; `save_network` writes only the current one. The format itself (write,
read, restore) is `jxai._checkpoint`; this module knows which code rebuilds each kind.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jxai import _checkpoint
from jxai._checkpoint import read_record  # noqa: F401  (re-exported: jxai.loading.read_record)
from jxai.network import Network

__all__ = ["KERAS_SUFFIXES", "load", "load_network", "save_network"]

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


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


# -- checkpoints: what rebuilds each kind of module ----------------------------------------------
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
    return _checkpoint.write(network, directory, _architecture(network), overwrite=overwrite,
                             extra=extra)


def _architecture(network: Network) -> dict[str, Any]:
    """The record's head: format, kind and what rebuilds the module."""
    from jxai.converters.keras.module import KerasModel
    from jxai.converters.keras.spec import graph_to_dict

    if isinstance(network.module, KerasModel):
        return {**_checkpoint.head("keras", network.metadata.get("name")),
                "architecture": graph_to_dict(network.module.graph)}
    from jxai.models import zoo_record

    return zoo_record(network)


def load_network(directory: str | os.PathLike) -> Network:
    """Restore a network written by `save_network` (no Keras file or TensorFlow needed)."""
    directory = Path(os.path.abspath(os.fspath(directory)))
    record = _checkpoint.read_record(directory)
    if record["kind"] == "zoo":
        from jxai.models import load_zoo_checkpoint

        return load_zoo_checkpoint(directory, record)
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
    return _checkpoint.restore(directory, record, shell.module, abstract, shell.metadata)
