"""A model folder as the hubs publish it: ``config.json`` and safetensors weights, one file or
shards with ``model.safetensors.index.json``, read without PyTorch.

Tensors are read with the ``safetensors`` library (the format's reference reader: it checks the
header, offsets and sizes, and memory-maps the file). Its ``framework="flax"`` view is used rather
than ``framework="np"`` because NumPy has no bfloat16 and most published checkpoints are stored
in it; each tensor is read once, when the loader asks for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["Checkpoint", "WEIGHTS", "INDEX", "is_pretrained_folder", "read_config"]

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "tf_model.h5",
            "flax_model.msgpack")

# safetensors' dtype names → NumPy/JAX names
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "BOOL": "bool"}


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with ``config.json`` and hub-style weights (safetensors, or
    the PyTorch pickles `load_pretrained` refuses with a message saying so)."""
    path = Path(path)
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    return any((path / name).is_file() for name in (WEIGHTS, INDEX, *_PICKLES))


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as a dict (a clear error for anything else)."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder}: no config.json; a pretrained model folder holds config.json "
                         "and model.safetensors as the hubs publish them") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object")
    return config


class Checkpoint:
    """The tensors of a folder: names, shapes and dtypes from the headers; data on request.

    ``model.safetensors``, or the shards named by ``model.safetensors.index.json``'s
    ``weight_map``. Use as a context manager (the files stay open, memory-mapped, inside it).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files = self._weight_files()
        self._handles: dict[Path, Any] = {}
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}

    def _weight_files(self) -> list[Path]:
        single, index = self.folder / WEIGHTS, self.folder / INDEX
        if single.is_file():
            return [single]
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{index}: not a safetensors index with a 'weight_map' "
                                 f"({type(exc).__name__}: {exc})") from None
            names = sorted(set(weight_map.values()))
            absent = [n for n in names if not (self.folder / n).is_file()]
            if absent or any(Path(n).name != n for n in names):
                raise ValueError(f"{index} names shards that are not files in the folder: "
                                 f"{', '.join(absent or names)}")
            return [self.folder / n for n in names]
        pickles = [n for n in _PICKLES if (self.folder / n).exists()]
        raise ValueError(
            f"{self.folder}: no {WEIGHTS} or {INDEX}"
            + (f" (found {', '.join(pickles)}: PyTorch/TF pickles are never loaded, since "
               "unpickling runs code; convert them once with transformers' "
               "save_pretrained(folder, safe_serialization=True))" if pickles else ""))

    def __enter__(self) -> Checkpoint:
        from safetensors import safe_open

        for path in self.files:
            try:
                handle = safe_open(str(path), framework="flax")
            except Exception as exc:  # the reader's own header checks
                raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
            self._handles[path] = handle.__enter__()
            for name in handle.keys():
                if name in self.where:
                    raise ValueError(f"{self.folder}: tensor {name!r} is in both "
                                     f"{self.where[name].name} and {path.name}")
                view = handle.get_slice(name)
                self.where[name] = path
                self.shapes[name] = tuple(int(d) for d in view.get_shape())
                self.dtypes[name] = DTYPES.get(view.get_dtype(), view.get_dtype())
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()

    def names(self) -> list[str]:
        return sorted(self.where)

    def read(self, name: str):
        """The tensor ``name`` as a JAX array of its stored dtype (one read of its bytes)."""
        return self._handles[self.where[name]].get_tensor(name)
