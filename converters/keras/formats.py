"""Recognise and open Keras files safely (HDF5 and ``.keras`` zip archives) without TensorFlow.

Detection order (``shared/research/keras-formats.md`` §1):

=====================================================  =========================================
path                                                    format
=====================================================  =========================================
zip with ``config.json`` (or a directory with it)       ``.keras`` archive (Keras 2.13+ and 3)
HDF5 with root attribute ``model_config``               legacy full model (``model.save("x.h5")``)
HDF5 with root attribute ``layer_names``                legacy weights-only (tf.keras)
HDF5 with root group ``layers`` / ``vars``              Keras 3 ``.weights.h5``
HDF5 with root group ``_layer_checkpoint_dependencies`` Keras 2.13-2.15 ``.weights.h5``
directory with ``saved_model.pb``                       TF SavedModel: refused, with how to re-save
=====================================================  =========================================

Reading follows research §7.4: only ``json.loads`` on text, zip members read into memory with
size caps (never extracted), HDF5 soft/external links and external/virtual datasets refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
from jxai.converters.keras.errors import KerasFormatError

__all__ = ["KerasFile", "decode_attr", "open_keras_file", "read_dataset", "keras_major"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_MEMBER_BYTES = 4 << 30  # 4 GiB: no real model member is larger
MAX_JSON_BYTES = 256 << 20
MAX_COMPRESSION_RATIO = 1000

_SAVEDMODEL_HELP = (
    "TF SavedModel directories cannot be read without TensorFlow. On a machine with TensorFlow, "
    "re-save the model once: `m = tf.keras.models.load_model(path); m.save('model.h5')` (or "
    "'model.keras' with TF 2.13+; on TF >= 2.16 `pip install tf_keras` and set "
    "TF_USE_LEGACY_KERAS=1 first). Then call jxai.load_keras('model.h5')."
)


@dataclasses.dataclass
class KerasFile:
    """An opened Keras file.

    Attributes:
      path: the path given.
      format: ``"h5"`` (legacy full model), ``"keras"`` (zip or directory archive),
        ``"h5_weights"`` (legacy weights-only), ``"weights_h5"`` (Keras 3 / 2.13+ ``.weights.h5``).
      config: the ``model_config`` / ``config.json`` object, or None for weights-only files.
      keras_version: the writer's Keras version string ("" when unrecorded).
      weights: the HDF5 group holding the weights (``/model_weights``, the root, or the
        ``model.weights.h5`` root of an archive).
    """

    path: str
    format: str
    config: Mapping[str, Any] | None
    keras_version: str
    weights: h5py.Group
    _handles: list = dataclasses.field(default_factory=list)

    def close(self) -> None:
        for handle in reversed(self._handles):
            handle.close()
        self._handles.clear()

    def __enter__(self) -> KerasFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def keras_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 2


def decode_attr(value: Any) -> Any:
    """HDF5 attribute -> Python value (bytes and arrays of bytes decoded, as h5py<3 wrote them)."""
    if isinstance(value, bytes):
        return value.decode("utf8")
    if isinstance(value, np.ndarray):
        return [decode_attr(v) for v in value.tolist()]
    if isinstance(value, list):
        return [decode_attr(v) for v in value]
    return value


def chunked_attr(group: h5py.Group, name: str) -> list[str]:
    """``layer_names`` / ``weight_names``, joined from ``name0``, ``name1`` ... when chunked."""
    if name in group.attrs:
        return [str(v) for v in decode_attr(group.attrs[name])]
    out: list[str] = []
    index = 0
    while f"{name}{index}" in group.attrs:
        out.extend(str(v) for v in decode_attr(group.attrs[f"{name}{index}"]))
        index += 1
    return out


def _json(text: Any, where: str) -> dict:
    """The JSON object stored at ``where`` (an HDF5 attribute or an archive member).

    Only ``json.loads`` on text, never eval or unpickling. Anything else (bytes that are not
    UTF-8, a number, an array, JSON that is not an object) is a `KerasFormatError` saying the
    file is not a Keras model file or is corrupt.
    """
    fault = "; it is not a Keras model file, or it is corrupt"
    try:
        text = decode_attr(text)
    except UnicodeDecodeError as exc:
        raise KerasFormatError(f"{where} is not JSON text: byte {exc.start} is not UTF-8"
                               f"{fault}") from None
    if not isinstance(text, str):
        shown = repr(text.tolist() if isinstance(text, (np.generic, np.ndarray)) else text)
        raise KerasFormatError(f"{where} is not JSON text but {type(text).__name__} "
                               f"{shown[:40] + '...' if len(shown) > 40 else shown}{fault}")
    if len(text) > MAX_JSON_BYTES:
        raise KerasFormatError(f"{where} is larger than {MAX_JSON_BYTES >> 20} MB")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KerasFormatError(f"{where} is not valid JSON ({exc}){fault}") from None
    except RecursionError:
        raise KerasFormatError(f"{where} is JSON nested too deeply to read{fault}") from None
    if not isinstance(value, dict):
        raise KerasFormatError(f"{where} is JSON {type(value).__name__}, not an object{fault}")
    return value


def read_dataset(group: h5py.Group, name: str, where: str) -> np.ndarray:
    """One weight array, refusing links and external/virtual storage (research §7.4)."""
    link = group.get(name, getlink=True)
    if link is None:
        raise KerasFormatError(f"{where}: weight {name!r} is missing from the file")
    if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
        raise KerasFormatError(f"{where}: weight {name!r} is an HDF5 link; refused for safety")
    dataset = group[name]
    if not isinstance(dataset, h5py.Dataset):
        raise KerasFormatError(f"{where}: {name!r} is a group, expected a weight array")
    if dataset.external or dataset.is_virtual:
        raise KerasFormatError(f"{where}: weight {name!r} uses external or virtual storage; "
                               "refused for safety")
    declared = dataset.size * max(dataset.dtype.itemsize, 1)
    stored = dataset.id.get_storage_size()
    if declared > (1 << 20) and stored * MAX_COMPRESSION_RATIO < declared and \
            dataset.compression is not None:
        raise KerasFormatError(f"{where}: weight {name!r} declares {declared} bytes but stores "
                               f"{stored}; refused (decompression bomb)")
    try:
        array = dataset[()]
    except OSError as exc:
        raise KerasFormatError(f"{where}: weight {name!r} cannot be read ({exc}); the file is "
                               "truncated or corrupt") from exc
    if str(dataset.attrs.get("dtype", "")) == "bfloat16" or array.dtype.kind == "V":
        import ml_dtypes

        array = np.asarray(array).view(ml_dtypes.bfloat16)
    return np.asarray(array, dtype=np.float32) if array.dtype != np.float32 else np.asarray(array)


def _open_h5(source: Any, path: str) -> h5py.File:
    try:
        return h5py.File(source, "r")
    except OSError as exc:
        raise KerasFormatError(
            f"{path}: cannot open the HDF5 data ({exc}). The file is truncated or corrupt; "
            "re-save or re-download it."
        ) from exc


def _read_member(archive: zipfile.ZipFile, name: str, path: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_MEMBER_BYTES or (
        info.compress_size and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
        and info.file_size > (1 << 20)
    ):
        raise KerasFormatError(f"{path}: archive member {name!r} is implausibly large "
                               f"({info.file_size} bytes); refused")
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise KerasFormatError(f"{path}: archive member {name!r} is truncated or corrupt "
                               f"({exc})") from exc


def _open_archive(path: str) -> KerasFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasFormatError(f"{path}: not a readable .keras zip archive ({exc}); the file is "
                               "truncated or corrupt") from exc
    with archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise KerasFormatError(f"{path}: zip archive without config.json; not a .keras file")
        config = _json(_read_member(archive, "config.json", path), f"{path}: config.json")
        metadata = {}
        if "metadata.json" in names:
            metadata = _json(_read_member(archive, "metadata.json", path),
                             f"{path}: metadata.json")
        if "model.weights.h5" not in names:
            if "model.weights.npz" in names:
                raise KerasFormatError(f"{path}: weights saved as npz are not supported; re-save "
                                       "with the default weights_format='h5'")
            raise KerasFormatError(f"{path}: the archive has no model.weights.h5")
        weights = _read_member(archive, "model.weights.h5", path)
    handle = _open_h5(io.BytesIO(weights), f"{path}: model.weights.h5")
    return KerasFile(path, "keras", config, str(metadata.get("keras_version", "")), handle,
                     [handle])


def open_keras_file(path: str | os.PathLike) -> KerasFile:
    """Open any supported Keras file; raises `KerasFormatError` saying what is wrong and how to fix.

    The caller must ``close()`` the result (or use it as a context manager).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            raise KerasFormatError(f"{path} is a TensorFlow SavedModel. {_SAVEDMODEL_HELP}")
        if os.path.exists(os.path.join(path, "config.json")):
            with open(os.path.join(path, "config.json"), "rb") as f:
                config = _json(f.read(), f"{path}/config.json")
            version = ""
            if os.path.exists(os.path.join(path, "metadata.json")):
                with open(os.path.join(path, "metadata.json"), "rb") as f:
                    version = str(_json(f.read(), f"{path}/metadata.json").get("keras_version", ""))
            handle = _open_h5(os.path.join(path, "model.weights.h5"), path)
            return KerasFile(path, "keras", config, version, handle, [handle])
        raise KerasFormatError(f"{path} is a directory without saved_model.pb or config.json; "
                               "pass a .h5, .weights.h5 or .keras file")
    if not os.path.exists(path):
        if os.path.exists(path + ".index"):
            raise KerasFormatError(
                f"{path} is a TensorFlow checkpoint (save_weights without a .h5 suffix). "
                "Re-save with model.save_weights('weights.h5') on a machine with TensorFlow.")
        raise FileNotFoundError(f"no such Keras file: {path}")
    if path.endswith(".index") or path.endswith(".pb"):
        raise KerasFormatError(f"{path} is a TensorFlow checkpoint/graph file. {_SAVEDMODEL_HELP}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return _open_archive(path)
    if head != HDF5_MAGIC:
        raise KerasFormatError(
            f"{path} is neither HDF5 nor a zip archive (starts with {head!r}); expected a Keras "
            ".h5, .weights.h5 or .keras file"
        )
    handle = _open_h5(path, path)
    try:
        return _classify_h5(handle, path)
    except Exception:
        handle.close()
        raise


def _classify_h5(handle: h5py.File, path: str) -> KerasFile:
    attrs = handle.attrs
    version = str(decode_attr(attrs.get("keras_version", "")))
    if "model_config" in attrs:
        config = _json(attrs["model_config"], f"{path}: model_config")
        if "model_weights" not in handle:
            raise KerasFormatError(f"{path}: full-model HDF5 without a model_weights group; the "
                                   "file is truncated or corrupt")
        group = handle["model_weights"]
        version = version or str(decode_attr(group.attrs.get("keras_version", "")))
        _check_legacy_version(version, group, path)
        return KerasFile(path, "h5", config, version, group, [handle])
    if "layer_names" in attrs or "layer_names0" in attrs:
        _check_legacy_version(version, handle, path)
        return KerasFile(path, "h5_weights", None, version, handle, [handle])
    if "model_weights" in handle:  # Keras 3 load_weights accepts this too
        group = handle["model_weights"]
        version = version or str(decode_attr(group.attrs.get("keras_version", "")))
        return KerasFile(path, "h5_weights", None, version, group, [handle])
    if "layers" in handle or "vars" in handle:
        return KerasFile(path, "weights_h5", None, "3", handle, [handle])
    if "_layer_checkpoint_dependencies" in handle:
        return KerasFile(path, "weights_h5", None, "2", handle, [handle])
    raise KerasFormatError(
        f"{path}: HDF5 file without Keras model or weights (root has groups "
        f"{sorted(handle.keys())[:8]} and attributes {sorted(attrs.keys())[:8]}); it is not a "
        "Keras file, or it is corrupt"
    )


def _check_legacy_version(version: str, group: h5py.Group, path: str) -> None:
    backend = str(decode_attr(group.attrs.get("backend", "")))
    if not version or version.startswith("1"):
        raise KerasFormatError(f"{path}: written by Keras 1 (or without a keras_version); load "
                               "it in Keras 2 and re-save it")
    if backend in ("theano", "cntk"):
        raise KerasFormatError(f"{path}: written with the {backend} backend (flipped kernels); "
                               "load it in Keras 2 with TensorFlow and re-save it")
