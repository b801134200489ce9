"""Reading inputs and writing explanations for batch runs: images, arrays, atomic files.

Inputs
  ``list_inputs(spec)`` turns a folder, a glob, an image file or an ``.npy``/``.npz`` array into
  an ordered list of `Item`s (name + where to read it); nothing is decoded until ``load_item``.
  Images (PNG, JPEG, TIFF, BMP) are decoded with Pillow, imported lazily. Arrays are memory
  mapped (``.npy`` always, ``.npz`` when the member is stored uncompressed, as ``np.savez``
  writes it), so a million-row array costs one row of memory per item in flight.

Preprocessing
  `Preprocess` reproduces what the seed notebooks did by hand: resize (Pillow bilinear, per
  channel in float32), grayscale → 3 channels by replication, RGB → 1 channel by ITU-R 601 luma,
  and the ``keras.applications`` ``preprocess_input`` modes:

  ========  ===========================================================================
  raw       values as stored
  unit      x / M, with M the maximum of the integer dtype (255, 65535); floats unchanged
  caffe     RGB → BGR, then x − (103.939, 116.779, 123.68)              (x in 0..255)
  torch     (x / 255 − (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)    (x in 0..255)
  tf        x / 127.5 − 1                                                (x in 0..255)
  ========  ===========================================================================

  16-bit images are brought to 0..255 before caffe/torch/tf. Reference: Keras
  ``keras/src/applications/imagenet_utils.py`` (``_preprocess_numpy_input``).

Outputs
  ``save_output`` writes one item's attribution as ``.npy``, ``.npz`` or a ``.png`` heatmap,
  atomically: to a hidden temporary file in the same folder, then ``os.replace``. A reader (or a
  ``--resume``) therefore sees either the complete file or none.
"""

from __future__ import annotations

import glob as globlib
import os
import threading
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "Item",
    "Preprocess",
    "list_inputs",
    "load_item",
    "read_image",
    "output_path",
    "save_output",
    "atomic_write",
    "remove_stale_temporaries",
    "BackgroundWriter",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ARRAY_SUFFIXES = (".npy", ".npz")
TEMP_MARKER = ".jxai-tmp"

# keras.applications.imagenet_utils: caffe means are in BGR order, torch statistics in RGB order
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
MODES = ("raw", "unit", "caffe", "torch", "tf")


class InputError(ValueError):
    """An input item that cannot be used (corrupt file, wrong shape); the run skips it."""


class Item(NamedTuple):
    """One input: ``name`` (unique, used for the output file) and where its data lives.

    ``source`` is an image path, or an array path with ``row`` the index along axis 0 (and
    ``key`` the ``.npz`` member). ``row`` is ``None`` for images.
    """

    name: str
    source: str
    row: int | None = None
    key: str | None = None


# -- listing -----------------------------------------------------------------------------------
def list_inputs(specs: str | os.PathLike | Sequence[str | os.PathLike], *,
                array_key: str | None = None) -> list[Item]:
    """Expand folders, globs, image files and arrays into an ordered list of items.

    Folders are walked recursively (sorted, image suffixes matched case-insensitively); globs
    follow `glob.glob` with ``recursive=True``; an array contributes one item per row. Item names
    are paths relative to the folder (or the glob's fixed prefix), or ``<stem>_<row>`` for rows.

    Raises:
      FileNotFoundError: a spec matches nothing.
      ValueError: two inputs would write the same output name.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    items: list[Item] = []
    for spec in specs:
        items.extend(_expand(os.fspath(spec), array_key))
    seen: dict[str, str] = {}
    for item in items:
        stem = _strip_suffix(item.name)
        if stem in seen:
            raise ValueError(
                f"inputs {seen[stem]!r} and {item.source!r} would both be written as {stem!r}; "
                "pass a narrower folder or glob (e.g. 'images/*.png') so names are unique"
            )
        seen[stem] = item.source
    return items


def _expand(spec: str, array_key: str | None) -> list[Item]:
    if globlib.has_magic(spec):
        root = _glob_root(spec)
        paths = sorted(p for p in globlib.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise FileNotFoundError(f"the glob {spec!r} matches no file")
        items = []
        for path in paths:
            if path.lower().endswith(ARRAY_SUFFIXES):
                items.extend(_array_items(path, array_key))
            else:
                items.append(Item(os.path.relpath(path, root), path))
        return items
    if os.path.isdir(spec):
        paths = []
        for folder, dirs, files in os.walk(spec):
            dirs.sort()
            paths += [os.path.join(folder, f) for f in files
                      if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
        if not paths:
            raise FileNotFoundError(
                f"the folder {spec!r} holds no image ({', '.join(IMAGE_SUFFIXES)}); for arrays "
                "pass the .npy/.npz file itself"
            )
        return [Item(os.path.relpath(p, spec), p) for p in sorted(paths)]
    if not os.path.exists(spec):
        raise FileNotFoundError(f"input {spec!r} does not exist (expected a folder, a glob, an "
                                "image file or an .npy/.npz array)")
    if spec.lower().endswith(ARRAY_SUFFIXES):
        return _array_items(spec, array_key)
    return [Item(os.path.basename(spec), spec)]


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if globlib.has_magic(part):
            break
        fixed.append(part)
    return os.path.join(*fixed) if fixed else "."


def _array_items(path: str, array_key: str | None) -> list[Item]:
    array, key = open_array(path, array_key)
    if array.ndim < 1:
        raise ValueError(f"{path}: a 0-d array holds no items; expected (N, ...) with N items")
    n = array.shape[0]
    width = max(6, len(str(n - 1)))
    stem = Path(path).stem
    return [Item(f"{stem}_{i:0{width}d}", path, i, key) for i in range(n)]


def open_array(path: str, key: str | None = None) -> tuple[np.ndarray, str | None]:
    """Memory-map an ``.npy`` file or one member of an ``.npz`` (loaded if compressed).

    Only numeric data is read: ``allow_pickle`` stays off, so a file can never run code.
    """
    if path.lower().endswith(".npy"):
        return np.load(path, mmap_mode="r", allow_pickle=False), None
    with zipfile.ZipFile(path) as archive:
        members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            if len(members) == 1:
                key = members[0]
            else:
                key = next((k for k in ("x", "X", "images", "inputs") if k in members), None)
                if key is None:
                    raise ValueError(f"{path} holds several arrays {members}; choose one with "
                                     "--array-key NAME (array_key=...)")
        if key not in members:
            raise ValueError(f"{path} has no array {key!r}; it holds {members}")
        info = archive.getinfo(key + ".npy")
        if info.compress_type == zipfile.ZIP_STORED:
            mapped = _map_stored_member(path, info)
            if mapped is not None:
                return mapped, key
    with np.load(path, allow_pickle=False) as data:
        return data[key], key


def _map_stored_member(path: str, info: zipfile.ZipInfo) -> np.ndarray | None:
    """np.memmap of an uncompressed .npy inside a zip, or None if the layout is unusual."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ValueError(f"{path}: {info.filename} holds Python objects; jxai reads only "
                             "numeric arrays")
        offset = f.tell()
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


# -- reading -----------------------------------------------------------------------------------
def read_image(path: str) -> np.ndarray:
    """Decode an image file to (H, W) or (H, W, C), keeping its dtype (uint8, uint16, float32).

    Palette and bilevel images become RGB / uint8; 16-bit grayscale stays uint16.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - pillow is in the test extra
        raise ImportError("reading images needs Pillow: pip install pillow "
                          "(or pip install 'jxai[data]')") from err
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "transparency" in image.info or mode == "PA"
                                      else "RGB")
            elif mode == "1":
                image = image.convert("L")
            elif mode.startswith("I;16"):
                return np.asarray(image, dtype=np.uint16).copy()
            return np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot decode the image ({type(err).__name__}: {err})") from err


def load_item(item: Item) -> np.ndarray:
    """The raw array of one item (an image as decoded, or one array row, copied)."""
    if item.row is None:
        return read_image(item.source)
    cache_key = (item.source, item.key)
    array = _OPEN_ARRAYS.get(cache_key)
    if array is None:  # two threads may both open it: harmless, memory maps are shared pages
        array = _OPEN_ARRAYS[cache_key] = open_array(item.source, item.key)[0]
    return np.array(array[item.row])


# memory maps by (path, npz member), so the rows of one array do not reopen the file each time
_OPEN_ARRAYS: dict[tuple[str, str | None], np.ndarray] = {}


# -- preprocessing -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """How a raw image or row becomes one network input (float32, channels last).

    Args:
      size: ``(height, width)`` to resize to, or ``None`` to keep the size.
      channels: 1 or 3 to convert to (gray → RGB by replication, RGB → gray by luma), or
        ``None`` to keep. An alpha channel is dropped.
      mode: one of ``raw``, ``unit``, ``caffe``, ``torch``, ``tf`` (see the module docstring).
      add_channel_axis: add a trailing channel axis to 2-D grayscale data (images only).
    """

    size: tuple[int, int] | None = None
    channels: int | None = None
    mode: str = "unit"
    add_channel_axis: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; choose one of {MODES}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels!r}")

    def __call__(self, raw: np.ndarray, *, is_image: bool = True) -> np.ndarray:
        x = np.asarray(raw)
        integer_max = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else None
        x = x.astype(np.float32)
        if is_image:
            if x.ndim == 2 and self.add_channel_axis:
                x = x[..., None]
            if x.ndim == 3 and x.shape[-1] in (2, 4):  # gray+alpha, RGBA
                x = x[..., :-1]
        if self.size is not None:
            x = resize(x, self.size)
        if self.channels is not None and x.ndim >= 3:
            x = _convert_channels(x, self.channels)
        return _normalise(x, self.mode, integer_max)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W) or (H, W, C) float data to ``size = (height, width)``."""
    from PIL import Image

    height, width = size
    if x.shape[:2] == (height, width):
        return x
    if x.ndim == 2:
        return np.asarray(Image.fromarray(x, mode="F").resize((width, height), Image.BILINEAR))
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F")
                         .resize((width, height), Image.BILINEAR)) for c in range(x.shape[-1])]
    return np.stack(planes, axis=-1)


def _convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    have = x.shape[-1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L"
        return (x @ luma)[..., None]
    raise InputError(f"cannot convert {have} channels to {channels}")


def _normalise(x: np.ndarray, mode: str, integer_max: float | None) -> np.ndarray:
    if mode == "raw":
        return x
    if mode == "unit":
        return x / integer_max if integer_max else x
    if integer_max is not None and integer_max != 255.0:
        x = x * (255.0 / integer_max)
    if mode == "tf":
        return x / 127.5 - 1.0
    if x.ndim < 1 or x.shape[-1] != 3:
        raise InputError(f"mode {mode!r} needs 3 channels (RGB), got shape {x.shape}; add "
                         "--channels 3 to replicate grayscale")
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    return (x / 255.0 - TORCH_MEAN) / TORCH_STD  # torch


# -- writing -----------------------------------------------------------------------------------
FORMATS = ("npy", "npz", "png")


def _strip_suffix(name: str) -> str:
    root, suffix = os.path.splitext(name)
    return root if suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES else name


def output_path(out_dir: str | os.PathLike, name: str, fmt: str) -> Path:
    """Where the explanation of item ``name`` goes: ``out_dir/<name without suffix>.<fmt>``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
    return Path(out_dir) / f"{_strip_suffix(name)}.{fmt}"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it.

    ``os.replace`` is atomic on POSIX and Windows within one filesystem: an interrupted run leaves
    either the old file, the new complete file, or a hidden ``*.jxai-tmp`` that
    `remove_stale_temporaries` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMP_MARKER}")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(out_dir: str | os.PathLike, only=None) -> int:
    """Delete temporary files left by a killed run; returns how many were removed.

    ``only``: the output paths whose temporaries may go (default: all under ``out_dir``).
    Processes sharing a folder each pass their own outputs, so none deletes a file that another
    is still writing.
    """
    owned = None if only is None else {os.path.abspath(path) for path in only}
    removed = 0
    for folder, _, files in os.walk(out_dir):
        for f in files:
            if not f.endswith(TEMP_MARKER):
                continue
            # ".{name}.{pid}.jxai-tmp" (`atomic_write`) is a temporary of {name}
            target = os.path.join(folder, f[1:-len(TEMP_MARKER)].rsplit(".", 1)[0])
            if owned is None or os.path.abspath(target) in owned:
                os.unlink(os.path.join(folder, f))
                removed += 1
    return removed


def save_output(path: str | os.PathLike, attribution: np.ndarray, fmt: str, *,
                name: str = "", method: str = "") -> None:
    """Write one attribution atomically as ``npy``, ``npz`` (with name and method) or ``png``."""
    attribution = np.asarray(attribution)
    if fmt == "npy":
        atomic_write(path, lambda f: np.save(f, attribution, allow_pickle=False))
    elif fmt == "npz":
        atomic_write(path, lambda f: np.savez(
            f, attribution=attribution, name=np.str_(name), method=np.str_(method)))
    elif fmt == "png":
        rgb = heatmap_rgb(attribution)
        from PIL import Image

        atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG"))
    else:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")


def heatmap_rgb(attribution: np.ndarray) -> np.ndarray:
    """Render (H, W[, C]) relevance as an 8-bit blue–white–red image, symmetric around 0.

    Channels are summed; values are divided by the largest magnitude, so 0 is white, the most
    positive pixel pure red and the most negative pure blue (matplotlib's ``bwr`` colormap).
    """
    a = np.asarray(attribution, np.float64)
    if a.ndim == 3:
        a = a.sum(axis=-1)
    if a.ndim != 2:
        raise ValueError(f"a PNG heatmap needs a (H, W) or (H, W, C) attribution, got shape "
                         f"{attribution.shape}; use --format npy for other shapes")
    scale = np.max(np.abs(a))
    a = a / scale if scale > 0 else a
    t = (a + 1.0) / 2.0  # bwr: blue (0,0,1) -> white (1,1,1) -> red (1,0,0), piecewise linear
    red = np.clip(2.0 * t, 0.0, 1.0)
    blue = np.clip(2.0 - 2.0 * t, 0.0, 1.0)
    green = np.minimum(red, blue)
    return np.round(np.stack([red, green, blue], axis=-1) * 255.0).astype(np.uint8)


def is_complete(path: str | os.PathLike) -> bool:
    """Whether a finished output exists (atomic writes make existence mean completeness)."""
    return os.path.isfile(path)


class BackgroundWriter:
    """Saves outputs with `save_output` on background threads, keeping memory bounded.

    ``submit`` blocks while ``max_pending`` results wait to be written, so a slow disk slows the
    run instead of filling memory. ``close`` finishes every submitted write (they are complete
    results) before returning; failures are collected, never raised, and read with ``errors``.
    """

    def __init__(self, fmt: str, method: str = "", *, threads: int = 2, max_pending: int = 16):
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
        self.fmt, self.method = fmt, method
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="jxai-write")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self.written = 0
        self._errors: list[tuple[str, str]] = []

    def submit(self, path: str | os.PathLike, attribution: np.ndarray, name: str) -> None:
        self._slots.acquire()
        try:
            self._pool.submit(self._write, path, attribution, name)
        except BaseException:
            self._slots.release()
            raise

    def _write(self, path, attribution, name) -> None:
        try:
            save_output(path, attribution, self.fmt, name=name, method=self.method)
            with self._lock:
                self.written += 1
        except Exception as err:  # e.g. a full disk, or an attribution a PNG cannot show
            with self._lock:
                self._errors.append((name, f"cannot write {path}: {err}"))
        finally:
            self._slots.release()

    def errors(self) -> list[tuple[str, str]]:
        """Write failures since the last call, as (name, message)."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def close(self) -> None:
        self._pool.shutdown(wait=True)
