"""``.weights.h5`` files whose groups record no layer name: match by name, else by call order.

tf.keras 2.13-2.15 ``save_weights("x.weights.h5")`` (and Keras 3 before 3.6) write

    _layer_checkpoint_dependencies/conv2d_3/vars/{0,1}         (Keras 3: layers/conv2d_3/vars)
    _layer_checkpoint_dependencies/functional/_layer_checkpoint_dependencies/conv2d/vars/...

The group name is *not* the layer name: it is the snake_case class name plus a counter over the
container's ``model.layers`` (``conv2d``, ``conv2d_1``, ...; weightless layers are counted too),
see ``shared/research/keras-formats.md`` §3.2-3.3 and Keras' ``saving_lib._save_state``. For
models whose layers kept their automatic names (``Conv2D()`` -> ``conv2d_3``) the two coincide,
so `by_group_name` keys the arrays by group path and the caller first tries name matching.

Otherwise `match_by_order` pairs the Flax leaf modules, in call order, with the groups: each
Flax module type maps to Keras classes (`keras_classes`: ``nn.Conv`` with a 4-D kernel ->
``conv2d``), and within one (container, class) stream the groups are taken in counter order,
which is the order of the Keras layers. The file does not record how streams of *different*
classes or containers interleave, so the next group is chosen among the heads of all streams
of the leaf's classes, keeping those whose shapes fit the module. Ties prefer the container of
the previous match (a nested model is called as one block), then a class listed earlier, then
nested containers before their parent (the usual pretrained-base-then-head pattern). Only
HDF5 datasets are read; nothing from the file is executed.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import h5py
import numpy as np
from jxai.converters.keras.errors import KerasFormatError, WeightMismatchError
from jxai.converters.keras.formats import read_dataset

__all__ = [
    "CONTAINER_KEYS",
    "Group",
    "Leaf",
    "by_group_name",
    "has_layer_names",
    "keras_classes",
    "leaf_kernel_ndim",
    "match_by_order",
    "read_groups",
    "split_counter",
]

Path = tuple[str, ...]
CONTAINER_KEYS = ("layers", "_layer_checkpoint_dependencies")  # Keras 3, Keras 2.13-2.15


@dataclass(frozen=True)
class Group:
    """One weighted layer group: ``path`` from the root (``("functional", "conv2d_1")``)."""

    path: Path
    cls: str  # snake_case Keras class, "conv2d"
    counter: int  # the N of "conv2d_N"; 0 for "conv2d"
    arrays: tuple[np.ndarray, ...]

    @property
    def container(self) -> Path:
        return self.path[:-1]

    @property
    def label(self) -> str:
        return "/".join(self.path)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(a.shape) for a in self.arrays]


@dataclass(frozen=True)
class Leaf:
    """A Flax module that owns variables, in call order; ``classes`` None means any class."""

    path: Path
    classes: tuple[str, ...] | None
    type_name: str = "?"

    @property
    def name(self) -> str:
        return "/".join(self.path)


def split_counter(name: str) -> tuple[str, int]:
    """``"conv2d_transpose_3"`` -> ``("conv2d_transpose", 3)``; ``"conv2d"`` -> ``("conv2d", 0)``.

    Snake-case class names never end in ``_<digits>`` (``Conv2D`` -> ``conv2d``), so a trailing
    ``_N`` is always Keras' uniquifying counter.
    """
    match = re.fullmatch(r"(.+?)_(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def _container(group: h5py.Group) -> h5py.Group | None:
    for key in CONTAINER_KEYS:
        if key in group and isinstance(group[key], h5py.Group):
            return group[key]
    return None


def has_layer_names(root: h5py.Group) -> bool:
    """True when every layer group's ``vars`` carries Keras >= 3.6's ``name`` attribute."""
    container = _container(root)
    if container is None:
        return True
    for key in container:
        child = container[key]
        if not isinstance(child, h5py.Group):
            continue
        if "vars" not in child or "name" not in child["vars"].attrs:
            return False
        if _container(child) is not None and not has_layer_names(child):
            return False
    return True


def read_groups(root: h5py.Group, where: str) -> list[Group]:
    """Every layer group holding weights (``vars/0``, ``vars/1``, ...), nested models included."""
    out: list[Group] = []

    def walk(group: h5py.Group, prefix: Path) -> None:
        container = _container(group)
        if container is None:
            return
        for key in container:
            child = container[key]
            if not isinstance(child, h5py.Group):
                continue
            path = prefix + (key,)
            walk(child, path)
            vars_group = child.get("vars")
            if not isinstance(vars_group, h5py.Group) or not len(vars_group):
                continue
            keys = list(vars_group.keys())
            if not all(k.isdigit() for k in keys):
                raise KerasFormatError(f"{where}: weights group {'/'.join(path)!r} has variables "
                                       f"{sorted(keys)[:8]}, expected 0, 1, ...")
            arrays = tuple(read_dataset(vars_group, k, f"{where}: group {'/'.join(path)!r}")
                           for k in sorted(keys, key=int))
            cls, counter = split_counter(key)
            out.append(Group(path, cls, counter, arrays))

    walk(root, ())
    return out


def by_group_name(groups: Sequence[Group]) -> dict[Path, list[np.ndarray]]:
    """The arrays keyed by group path, for matching Flax modules named like the groups."""
    return {g.path: list(g.arrays) for g in groups}


def keras_classes(module_type: type | None, kernel_ndim: int | None,
                  separable: bool = False) -> tuple[str, ...] | None:
    """Keras classes (snake_case) whose weights a Flax module of ``module_type`` can take.

    ``kernel_ndim``: rank of the module's kernel (2 + spatial dims for convolutions).
    ``separable``: the module is the pointwise half of a ``name``/``name_depthwise`` pair.
    Returns None for module types without a fixed Keras counterpart (any class may fit).
    """
    if module_type is None or not isinstance(module_type, type):
        return None
    spatial = (kernel_ndim or 0) - 2
    if issubclass(module_type, nn.Dense):
        return ("dense",)
    if issubclass(module_type, nn.ConvTranspose):
        return (f"conv{spatial}d_transpose",)
    if issubclass(module_type, nn.Conv):
        if separable:
            return (f"separable_conv{spatial}d",)
        return (f"conv{spatial}d", f"depthwise_conv{spatial}d")
    if issubclass(module_type, nn.BatchNorm):
        return ("batch_normalization",)
    if issubclass(module_type, nn.LayerNorm):
        return ("layer_normalization",)
    return None


def _container_rank(groups: Sequence[Group]) -> dict[Path, int]:
    """Containers ordered nested-first (post-order), siblings by class then counter."""
    containers = sorted({g.container for g in groups} | {()},
                        key=lambda c: tuple(split_counter(p) for p in c))
    ordered: list[Path] = []

    def visit(node: Path) -> None:
        for child in containers:
            if len(child) == len(node) + 1 and child[: len(node)] == node:
                visit(child)
        ordered.append(node)

    visit(())
    return {c: i for i, c in enumerate(ordered)}


def match_by_order(groups: Sequence[Group], leaves: Sequence[Leaf],
                   fits: Callable[[Leaf, list[np.ndarray]], str | None], *, where: str,
                   strict: bool = True) -> dict[Path, list[np.ndarray]]:
    """Assign groups to ``leaves`` (call order); ``fits`` returns None or why the arrays do not fit.

    Returns the arrays keyed by Flax leaf path. Raises `WeightMismatchError` naming the first
    leaf no group fits (with the module's and the file's shapes), and, when ``strict``, the
    groups left over.
    """
    streams: dict[tuple[Path, str], deque[Group]] = {}
    for group in sorted(groups, key=lambda g: (g.container, g.cls, g.counter)):
        streams.setdefault((group.container, group.cls), deque()).append(group)
    container_rank = _container_rank(groups)
    all_classes = tuple(sorted({g.cls for g in groups}))
    previous: Path | None = None
    out: dict[Path, list[np.ndarray]] = {}
    for leaf in leaves:
        classes = leaf.classes if leaf.classes is not None else all_classes
        heads = [(container, cls) for (container, cls), queue in streams.items()
                 if queue and cls in classes]
        heads.sort(key=lambda s: (s[0] != previous, classes.index(s[1]), container_rank[s[0]]))
        if not heads:
            wanted = " or ".join(classes) if classes else "any"
            raise WeightMismatchError(
                f"{where}: matching by call order: the module's layer {leaf.name!r} "
                f"({leaf.type_name}) has no {wanted} group left in the file (groups of those "
                f"classes: {[g.label for g in groups if g.cls in classes][:12]})")
        reasons = []
        for stream in heads:
            group = streams[stream][0]
            reason = fits(leaf, list(group.arrays))
            if reason is None:
                out[leaf.path] = list(streams[stream].popleft().arrays)
                previous = stream[0]
                break
            reasons.append((group, reason))
        else:
            group, reason = reasons[0]
            others = "".join(f"; group {g.label!r} has shapes {g.shapes}" for g, _ in reasons[1:])
            raise WeightMismatchError(
                f"{reason} (matching by call order, next {group.cls} group {group.label!r} "
                f"with shapes {group.shapes}{others})")
    left = [g.label for queue in streams.values() for g in queue]
    if strict and left:
        raise WeightMismatchError(
            f"{where}: matching by call order left weights groups {left[:10]} of the file unused; "
            "the module has fewer layers than the Keras model (pass strict=False to ignore them)")
    return out


def leaf_kernel_ndim(params: Mapping[str, Any]) -> int | None:
    """Rank of a leaf module's ``kernel`` (None when it has none)."""
    kernel = params.get("kernel")
    return None if kernel is None else len(np.shape(kernel))
