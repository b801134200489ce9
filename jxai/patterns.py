"""Patterns for PatternNet and PatternAttribution (Kindermans et al., ICLR 2018): fitting, saving.

For a linear layer with kernel ``w`` (a Dense, a Conv 1D/2D/3D over its patches, a ConvTranspose)
and output unit ``k``, let ``x`` be the layer's input patch seen by unit ``k`` and
``y = w_kᵀ x`` its output **without the bias**. Over the samples (× output positions) the pattern
of unit ``k`` is the paper's two-component estimator, as iNNvestigate 1.0.8's
``innvestigate/tools/pattern.py`` (``ReLUPositivePattern``) computes it::

    a₊ = (E₊[x y] − E₊[x] E[y]) / (w_kᵀ E₊[x y] − w_kᵀ E₊[x] E[y])

``E₊`` averages over the samples where the unit is *active* (the layer's output, bias and ReLU
included, is > 0), ``E`` over all of them. Kinds (iNNvestigate's ``pattern_type``):

* ``"relu"`` (default; iNNvestigate's ``"relu"`` / ``"relu.positive"``): active = output > 0;
* ``"relu.negative"``: active = output ≤ 0 (iNNvestigate's ``LessEqualThanZero``);
* ``"linear"``: every sample; then ``a = cov(x, y) / (wᵀ cov(x, y))``, the linear estimator.

A layer that no rectifier follows (the logits, or one followed by nothing or by a softmax or
sigmoid) uses every sample, the linear estimator, whatever ``kind`` says. iNNvestigate 1.x
instead masks such a layer by its own output (``output > 0``): ``convention="innvestigate"``.
A rectifier is known to follow a layer when the engine finds it directly after it
(`jxai._engine.LayerInfo.activation`, a ReLU module or a functional ``nn.relu``); a BatchNorm
between a layer and its ReLU hides it (that layer then uses every sample).

A denominator that is exactly zero (a unit that never fires: ``E₊`` over no sample is 0, so its
numerator is 0 too) gives a zero pattern, never NaN. iNNvestigate's ``safe_divide`` returns the
numerator there, which is the same zero for a unit that never fires.

How: the data is streamed once; for each batch one jit-compiled step runs the forward pass,
recording each linear layer's input ``a`` and output ``z`` (the adapter's layer calls), and adds
the sums ``Σ m``, ``Σ m·x``, ``Σ m·y·x``, ``Σ y`` to the running totals. The patch sums come from
the layer's own VJP with respect to its kernel, ``∂/∂w ⟨c, f(a; w)⟩ = Σ c·x`` with the cotangent
``c = m`` or ``c = m ⊙ y`` (``m`` the 0/1 activity mask), so no patch matrix is ever built, for
convolutions of any rank, strides, dilation, padding, groups and transposed convolutions alike.
Each batch is sharded over the process's devices (`jxai.sharding.local_mesh`, as
`explain_dataset` does): its rows are split between them, each device computes the sums of its
rows and the totals, replicated, are their all-reduced sum (rows that do not divide evenly run in
a second, replicated step, so no padding row ever enters a sum). Finished: the means and the
patterns are computed on the host in float64 and returned in the kernels' dtype.

Patterns are a dict ``{layer path: array shaped like that layer's kernel}`` (paths as
`jxai.Context.layers` names them, ``"Dense_0"``, ``"block1/Conv_0"``); `save` and `load` keep
them with orbax.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jxai import kinds, sharding
from jxai._engine import _Attach, discover
from jxai._functions import placing
from jxai.adapters import bypassing
from jxai.network import Network, as_network

__all__ = ["KINDS", "PATTERN_LAYER_KINDS", "check", "fit", "load", "save"]

KINDS = ("relu", "relu.positive", "relu.negative", "linear")
"""The estimators ``fit`` knows (``"relu.positive"`` is ``"relu"``, iNNvestigate's alias)."""

PATTERN_LAYER_KINDS = ("dense", "conv", "conv_transpose")
"""The layer kinds that get a pattern (`jxai.kinds`): every other linear kind is refused."""

# Activations whose output is positive everywhere: "output > 0" selects every sample.
_POSITIVE_EVERYWHERE = frozenset({"sigmoid", "softmax", "softplus", "exponential", "hard_sigmoid",
                                  "hard_sigmoid_keras2"})


# --------------------------------------------------------------------------------------------
# Which layers, which samples
# --------------------------------------------------------------------------------------------


def pattern_layers(facts) -> tuple:
    """The layers that get a pattern (`PATTERN_LAYER_KINDS`), in call order; another linear
    kind (DenseGeneral, Einsum, a user's kind) is refused with its path."""
    chosen = []
    for layer in facts.layers:
        if not layer.is_linear:
            continue
        if layer.kind not in PATTERN_LAYER_KINDS:
            raise ValueError(
                f"patterns: layer {layer.path!r} is a {layer.kind!r} layer; PatternNet and "
                f"PatternAttribution support the kinds {', '.join(PATTERN_LAYER_KINDS)} "
                "(Dense, Conv 1D/2D/3D, ConvTranspose)"
            )
        chosen.append(layer)
    if not chosen:
        raise ValueError("patterns: the network has no Dense/Conv/ConvTranspose layer to fit")
    return tuple(chosen)


def _rectified(layer, convention: str) -> bool:
    """Whether ``kind``'s activity mask applies to ``layer`` (else: every sample)."""
    if convention == "innvestigate":
        return True
    return layer.activation is not None and layer.activation not in _POSITIVE_EVERYWHERE


def _mask(output, kind: str, rectified: bool):
    if kind == "linear" or not rectified:
        return jnp.ones_like(output)
    if kind == "relu.negative":
        return (output <= 0).astype(output.dtype)
    return (output > 0).astype(output.dtype)


# --------------------------------------------------------------------------------------------
# One batch's sums
# --------------------------------------------------------------------------------------------


def _kernel_name(kind, params: Mapping, path: str) -> str:
    names = [n for n in kind.kernel if n in params]
    if len(names) != 1:
        raise ValueError(f"patterns: layer {path!r} has kernel-like parameters {names}; "
                         "a pattern needs exactly one kernel")
    return names[0]


def _layer_sums(layer, a, output, mask_kind: str, rectified: bool, path: str) -> dict:
    """``count``, ``sx``, ``sxy`` (kernel-shaped), ``sy`` and ``n`` of one layer call.

    ``sx = Σ m·x`` and ``sxy = Σ m·y·x`` are the kernel VJP of the bias-free layer with the
    cotangents ``m`` and ``m ⊙ y`` (module docstring); ``count = Σ m`` and ``sy = Σ y`` per
    output unit (last axis of the output), ``n`` the number of samples × positions.
    """
    kind = kinds.kind_of(type(layer.module))
    fn, params = kind.view(layer, 1)
    name = _kernel_name(kind, params, path)
    rest = {k: v for k, v in params.items() if k not in kind.bias and k != name}

    def linear(w):
        return fn({**rest, name: w}, a)

    y, pullback = jax.vjp(linear, params[name])
    m = _mask(output, mask_kind, rectified).astype(y.dtype)
    units = y.shape[-1]
    sx, sxy = (pullback(c)[0] for c in (m, m * y))
    return {
        "count": m.reshape(-1, units).sum(0),
        "sx": sx,
        "sxy": sxy,
        "sy": y.reshape(-1, units).sum(0),
        "n": jnp.asarray(y.size // units, y.dtype),
    }


class _Recorder:
    """A site (`jxai.adapters.Site`) that runs the plain forward pass (the engine's own site,
    no rules) and, at each wanted layer call, adds that call's sums to ``self.sums``."""

    def __init__(self, attach, wanted: Mapping[str, bool], kind: str):
        self.attach = attach
        self.wanted = wanted  # path -> rectified
        self.kind = kind
        self.sums: dict[str, dict] = {}

    def entered(self, path, module):
        return self.attach.entered(path, module)

    def unsupported(self, path, class_name):
        return self.attach.unsupported(path, class_name)

    def takes_calls(self):
        return self.attach.takes_calls()

    def place(self, call):
        return self.attach.place(call)

    def layer_call(self, path, layer, run, args):
        out = self.attach.layer_call(path, layer, run, args)
        key = next(reversed(self.attach.outputs))  # the path (with #k) this call was given
        if key in self.wanted:
            with bypassing():  # the statistics are not the model's arithmetic
                self.sums[key] = _layer_sums(layer, args[0], out, self.kind, self.wanted[key], key)
        return out


def batch_sums(network: Network, x, kind: str = "relu", convention: str = "jxai") -> dict:
    """``{path: {"count", "sx", "sxy", "sy", "n"}}`` of one batch ``x`` (traceable)."""
    facts = discover(network, tuple(x.shape), x.dtype)
    wanted = {layer.path: _rectified(layer, convention) for layer in pattern_layers(facts)}
    recorder = _Recorder(_Attach(network, None, {}, facts), wanted, kind)
    with placing(recorder):
        network.adapter.apply(network.module, network.variables, x, recorder)
    missing = sorted(set(wanted) - set(recorder.sums))
    if missing:
        raise ValueError(f"patterns: the layers {missing} were not seen in the forward pass")
    return recorder.sums


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _check_kind(kind: str, convention: str):
    if kind not in KINDS:
        raise ValueError(f"jxai.patterns.fit: kind={kind!r} is not one of {', '.join(KINDS)}")
    if convention not in ("jxai", "innvestigate"):
        raise ValueError(f"jxai.patterns.fit: convention={convention!r} is not 'jxai' or "
                         "'innvestigate'")


def _batches(data, batch_size: int | None) -> Iterable:
    """An array is cut into ``batch_size`` rows at a time; an iterable yields batches (a tuple
    ``(x, y, ...)`` is taken for its ``x``, as Keras generators give them)."""
    if isinstance(data, jax.Array | np.ndarray):
        if data.ndim < 2 or data.shape[0] == 0:
            raise ValueError(f"jxai.patterns.fit: data of shape {data.shape} is not a non-empty "
                             "batch (samples first)")
        size = data.shape[0] if batch_size is None else int(batch_size)
        if size < 1:
            raise ValueError(f"jxai.patterns.fit: batch_size={batch_size!r} must be >= 1")
        return (data[i:i + size] for i in range(0, data.shape[0], size))
    if batch_size is not None:
        raise ValueError("jxai.patterns.fit: batch_size= cuts an array; an iterable of batches "
                         "is used batch by batch as it comes (leave batch_size=None)")
    return ((item[0] if isinstance(item, tuple | list) else item) for item in data)


def fit(network, data, kind: str = "relu", batch_size: int | None = 32, *,
        convention: str = "jxai") -> dict[str, jax.Array]:
    """Fit the patterns of every Dense/Conv/ConvTranspose layer of ``network`` on ``data``.

    Args:
      network: a `jxai.Network` (or what `jxai.as_network` takes: a linen module with its
        variables is passed as a Network, an NNX model as it is).
      data: an array of samples (batch first), cut into ``batch_size`` rows, or any iterable of
        batches (arrays, or tuples whose first item is the batch); streamed once.
      kind: ``"relu"`` (default), ``"relu.negative"`` or ``"linear"`` (module docstring).
      batch_size: rows per step when ``data`` is an array (None: all at once); iNNvestigate's
        default, 32. Every distinct batch shape compiles the step once.
      convention: ``"jxai"`` (a layer that no rectifier follows uses every sample) or
        ``"innvestigate"`` (every layer is masked by its own output, as iNNvestigate 1.x).

    Returns:
      ``{layer path: pattern}``, each pattern shaped (and typed) like that layer's kernel.
    """
    _check_kind(kind, convention)
    network = as_network(network)
    mask_kind = "relu" if kind == "relu.positive" else kind

    def sums_of(variables, x):
        rebuilt = Network(network.module, variables, network.skip)
        return batch_sums(rebuilt, x, mask_kind, convention)

    mesh = sharding.local_mesh()
    devices = mesh.devices.size
    everywhere = sharding.replicated(mesh)
    variables = jax.device_put(network.variables, everywhere)

    @functools.partial(jax.jit, donate_argnums=0, out_shardings=everywhere)
    def step(totals, variables, x):  # the batch's sums, all-reduced over the devices
        return jax.tree.map(jnp.add, totals, sums_of(variables, x))

    totals = None
    for x in _batches(data, batch_size):
        x = np.asarray(x)
        if totals is None:
            shapes = jax.eval_shape(sums_of, variables, jnp.asarray(x[:1]))
            totals = jax.device_put(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes),
                                    everywhere)
        even = x.shape[0] - x.shape[0] % devices
        if even:  # rows split between the devices
            rows = jax.device_put(x[:even], sharding.batch_sharding(mesh, 0, x.ndim))
            totals = step(totals, variables, rows)
        if even < x.shape[0]:  # the few rows left: every device computes them, no padding
            totals = step(totals, variables, jax.device_put(x[even:], everywhere))
    if totals is None:
        raise ValueError("jxai.patterns.fit: data holds no batch")
    kernels = kernel_arrays(network, totals)
    return {path: finish(totals[path], kernels[path]) for path in totals}


def finish(sums: Mapping, kernel) -> jax.Array:
    """The pattern from one layer's sums (float64 on the host), in the kernel's dtype.

    ``E₊[x] = Σm·x / Σm``, ``E₊[xy] = Σm·y·x / Σm`` (0 where ``Σm = 0``), ``E[y] = Σy / n``;
    ``a = cov / (wᵀ cov)`` per output unit with ``cov = E₊[xy] − E₊[x] E[y]``, zero where the
    denominator is exactly zero.
    """
    w = np.asarray(kernel, np.float64)
    count = np.asarray(sums["count"], np.float64)
    safe = np.where(count == 0, 1.0, count)
    mean_x = np.asarray(sums["sx"], np.float64) / safe
    mean_xy = np.asarray(sums["sxy"], np.float64) / safe
    mean_y = np.asarray(sums["sy"], np.float64) / float(sums["n"])
    cov = mean_xy - mean_x * mean_y
    axes = tuple(range(w.ndim - 1))
    denominator = np.sum(w * cov, axis=axes)
    pattern = np.where(denominator == 0, 0.0,
                       cov / np.where(denominator == 0, 1.0, denominator))
    return jnp.asarray(pattern, dtype=jnp.asarray(kernel).dtype)


def kernel_arrays(network: Network, paths: Iterable[str]) -> dict:
    """The kernel of each layer in ``paths`` (read at the path without its ``#k`` suffix)."""
    out = {}
    for path in paths:
        collections = network.adapter.variables_at(network.variables, path.split("#")[0])
        params = collections.get("params", {})
        kernel = [v for k, v in params.items() if k == "kernel"]
        if len(kernel) != 1:
            raise ValueError(f"patterns: no single 'kernel' parameter at layer {path!r}")
        out[path] = kernel[0]
    return out


# --------------------------------------------------------------------------------------------
# Checking patterns against a network
# --------------------------------------------------------------------------------------------


def check(patterns, network: Network, facts, method: str) -> dict:
    """``patterns`` matched to the network's pattern layers: a missing layer, a layer of
    another network or a pattern of the wrong shape is a ValueError naming it."""
    if patterns is None:
        raise ValueError(
            f"{method}: pass patterns=, fitted with jxai.patterns.fit(network, data) (or "
            f"create_analyzer({method!r}, network).fit(X))"
        )
    if not isinstance(patterns, Mapping):
        raise TypeError(f"{method}: patterns= must be the dict jxai.patterns.fit returns "
                        f"({{layer path: array}}), got {type(patterns).__name__}")
    layers = pattern_layers(facts)
    paths = [layer.path for layer in layers]
    foreign = sorted(set(patterns) - set(paths))
    if foreign:
        raise ValueError(
            f"{method}: patterns for {foreign}, which are not Dense/Conv layers of this network "
            f"(its layers: {paths}); were they fitted on another network?"
        )
    missing = [p for p in paths if p not in patterns]
    if missing:
        raise ValueError(
            f"{method}: no pattern for layer(s) {missing}; fit the patterns on this network "
            "with jxai.patterns.fit(network, data)"
        )
    kernels = kernel_arrays(network, paths)
    for layer in layers:
        shape, expected = tuple(jnp.shape(patterns[layer.path])), tuple(kernels[layer.path].shape)
        if shape != expected:
            raise ValueError(
                f"{method}: the pattern for layer {layer.path!r} has shape {shape}, its kernel "
                f"{expected}; were the patterns fitted on another network?"
            )
    return {p: patterns[p] for p in paths}


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def save(path, patterns: Mapping[str, Any]) -> str:
    """Write ``patterns`` (``{layer path: array}``) to the folder ``path``: the arrays as an
    orbax checkpoint in ``path/arrays``, the layer paths in ``path/layers.json``; returns the
    folder. An existing folder is replaced."""
    import orbax.checkpoint as ocp

    directory = Path(path).absolute()
    names = sorted(patterns)
    directory.mkdir(parents=True, exist_ok=True)
    tree = {f"p{i}": np.asarray(patterns[name]) for i, name in enumerate(names)}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "arrays", tree, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    (directory / "layers.json").write_text(json.dumps(names, indent=1) + "\n")
    return str(directory)


def load(path) -> dict[str, jax.Array]:
    """The patterns `save` wrote to the folder ``path``."""
    import orbax.checkpoint as ocp

    directory = Path(path).absolute()
    if not (directory / "layers.json").exists():
        raise FileNotFoundError(f"jxai.patterns.load: {directory} holds no patterns written by "
                                "jxai.patterns.save (no layers.json)")
    names = json.loads((directory / "layers.json").read_text())
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.restore(directory / "arrays")
    checkpointer.close()
    return {name: jnp.asarray(tree[f"p{i}"]) for i, name in enumerate(names)}
