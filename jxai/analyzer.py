"""iNNvestigate-compatible front end: ``create_analyzer(name, model).analyze(x)``.

Notebooks written for iNNvestigate 2.x port by changing the import::

    import jxai as innvestigate
    analyzer = innvestigate.create_analyzer("lrp.epsilon", network, epsilon=0.1)
    relevance = analyzer.analyze(x)          # numpy, shaped like x

iNNvestigate's parameter names are translated (``augment_by_n`` → ``n``,
``reference_inputs`` → ``baseline``, ...) and its conventions chosen where they differ from
jxai's defaults: integrated gradients use its left Riemann sum, SmoothGrad its absolute noise
σ = 1. Where iNNvestigate deviates from the paper (α-β with the full bias in both denominators,
BatchNorm handled as its own layer instead of folded), the paper is followed unless
``convention="innvestigate"`` is passed.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jxai._driver import check_not_empty, explain, output_size
from jxai._params import check_params, check_required
from jxai._targets import check_target_range
from jxai.contract import get_method
from jxai.network import Network, as_network

__all__ = ["Analyzer", "create_analyzer", "model_wo_softmax"]

NEURON_SELECTION_MODES = ("max_activation", "index", "all")
PATTERN_ANALYZERS = ("pattern.net", "pattern.attribution")  # fit(X) first (iNNvestigate 1.x)

# iNNvestigate name -> (jxai method, fixed jxai parameters, iNNvestigate kwarg -> jxai kwarg)
_TRANSLATIONS: dict[str, tuple[str, dict, dict]] = {
    "integrated_gradients": (
        "integrated_gradients",
        dict(steps=64, quadrature="riemann_left"),
        dict(reference_inputs="baseline"),
    ),
    "smoothgrad": (
        "smoothgrad",
        dict(n=64, sigma=1.0, sigma_mode="absolute"),
        dict(augment_by_n="n", noise_scale="sigma"),
    ),
    # iNNvestigate 1.x: "deep_lift.wrapper" ran Kundaje's deeplift package (rescale rule by
    # default), "deep_lift" its own rescale implementation; both take reference_inputs (0).
    "deep_lift.wrapper": ("deeplift", {}, dict(reference_inputs="baseline")),
    "deep_lift": ("deeplift", {}, dict(reference_inputs="baseline")),
}

# iNNvestigate 1.x DeepLIFT options that have one meaning in jxai: name -> (option, what it
# may be, why). Anything else is refused rather than silently computing another rule.
_DEEPLIFT_OPTIONS: dict[str, tuple[tuple[str, tuple, str], ...]] = {
    "deep_lift.wrapper": (
        ("nonlinear_mode", ("rescale",), "jxai's deeplift implements the rescale rule only "
         "(no reveal_cancel / genomics_default)"),
        ("verbose", (True, False, 0, 1), "verbosity of the deeplift package (ignored)"),
    ),
    "deep_lift": (
        ("approximate_gradient", (True,), "jxai's deeplift takes the gradient where the input "
         "difference vanishes, as approximate_gradient=True did; the unguarded division of "
         "approximate_gradient=False is not offered"),
    ),
}

class Analyzer:
    """An analyzer bound to a network, a method and its parameters (iNNvestigate's interface)."""

    def __init__(self, name: str, network: Network, neuron_selection_mode: str, params: dict):
        if neuron_selection_mode not in NEURON_SELECTION_MODES:
            raise ValueError(
                f"neuron_selection_mode must be one of {NEURON_SELECTION_MODES}, got "
                f"{neuron_selection_mode!r}"
            )
        self.name = name
        self.network = network
        self.neuron_selection_mode = neuron_selection_mode
        self.params = params

    def analyze(self, X, neuron_selection: Any = None) -> np.ndarray:
        """Relevance for ``X`` (batch first) as a numpy array shaped like ``X``.

        ``neuron_selection``: with ``neuron_selection_mode="index"``, an int (every sample) or one
        int per sample (a sequence of the batch's length), each in ``0..N-1`` for a network with
        N outputs per sample (else a ValueError naming N; negative indices are errors too);
        ``"max_activation"`` explains each sample's largest output in any mode. An empty batch
        is a ValueError.
        """
        x = np.asarray(X, np.float32)
        if x.ndim < 2:
            raise ValueError(f"X must have a batch axis first, got shape {x.shape}")
        check_not_empty(x)
        target = self._target(x, neuron_selection)
        if self.name == "input":
            return x
        if self.name == "random":
            key = jax.random.PRNGKey(int(self.params.get("seed", 0)))
            return np.asarray(jax.random.normal(key, x.shape), np.float32)
        method, params = _translate(self.name, self.params)
        result = explain(self.network, x, method, target=target, **params)
        return np.asarray(result)

    def _target(self, x, neuron_selection):
        """`jxai.explain`'s target for iNNvestigate's neuron selection, range-checked."""
        if isinstance(neuron_selection, str) and neuron_selection == "max_activation":
            return "max"
        if self.neuron_selection_mode != "index":
            if neuron_selection is not None:
                raise ValueError(
                    f"neuron_selection is only used with neuron_selection_mode='index', not "
                    f"{self.neuron_selection_mode!r}"
                )
            return "max" if self.neuron_selection_mode == "max_activation" else "all"
        if neuron_selection is None:
            raise ValueError("neuron_selection_mode='index' needs analyze(x, neuron_selection=...)")
        target = np.asarray(neuron_selection)
        if isinstance(neuron_selection, bool) or not np.issubdtype(target.dtype, np.integer):
            raise TypeError(
                f"neuron_selection must be an int or one int per sample, got {neuron_selection!r}"
            )
        if target.ndim not in (0, 1) or target.ndim == 1 and target.shape != (x.shape[0],):
            raise ValueError(
                f"neuron_selection must be an int or one index per sample ({x.shape[0]}), "
                f"got shape {target.shape}"
            )
        check_target_range(target, output_size(self.network, x), "neuron_selection")
        return np.broadcast_to(target, (x.shape[0],))

    def fit(self, X, batch_size: int = 32, verbose: int = 0):
        """iNNvestigate 1.x's ``fit`` of PatternNet/PatternAttribution: the patterns fitted on
        ``X`` (an array, ``batch_size`` rows a step, or an iterable of batches) in one pass with
        the analyzer's ``pattern_type`` (default ``"relu"``; `jxai.patterns.fit`); returns self."""
        if self.name not in PATTERN_ANALYZERS:
            raise TypeError(f"analyzer {self.name!r} has nothing to fit; only "
                            f"{', '.join(PATTERN_ANALYZERS)} do")
        from jxai import patterns

        array = isinstance(X, np.ndarray | jax.Array)
        fitted = patterns.fit(self.network, np.asarray(X, np.float32) if array else X,
                              kind=self.pattern_type, batch_size=batch_size if array else None)
        self.params = dict(self.params, patterns=fitted)
        return self

    def __repr__(self):
        return f"Analyzer({self.name!r}, {self.network!r}, {self.neuron_selection_mode!r})"


def _deeplift_options(name: str, params: dict) -> dict:
    """Checks and removes iNNvestigate 1.x's DeepLIFT options that jxai has no parameter for."""
    params = dict(params)
    for option, allowed, why in _DEEPLIFT_OPTIONS.get(name, ()):
        if option in params:
            value = params.pop(option)
            if not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
                raise ValueError(
                    f"create_analyzer({name!r}): {option}={value!r} is not supported; allowed: "
                    f"{', '.join(repr(a) for a in allowed)} ({why})"
                )
    return params


def _translate(name: str, params: dict) -> tuple[str, dict]:
    params = _deeplift_options(name, params)
    if name in _TRANSLATIONS:
        method, fixed, renames = _TRANSLATIONS[name]
        out = dict(fixed)
        for key, value in params.items():
            out[renames.get(key, key)] = value
        return method, out
    if name in ("guided_backprop", "deconvnet") and params.get("convention") is None:
        return name, dict(params, convention="innvestigate")
    params = dict(params)
    # iNNvestigate's analyzers all take convention=; a method without it ignores it here
    if params.get("convention") is not None:
        accepted = get_method(name).params
        if accepted is not None and "convention" not in accepted:
            params.pop("convention")
    return name, params


def create_analyzer(
    name: str, model, neuron_selection_mode: str = "max_activation", **params
) -> Analyzer:
    """An iNNvestigate-style analyzer for ``model`` (a `jxai.Network`, or a Keras file path).

    Args:
      name: an iNNvestigate analyzer name (``"lrp.epsilon"``, ``"deep_taylor.bounded"``,
        ``"integrated_gradients"``, ...) or any other `jxai.list_methods` name; also ``"input"``
        and ``"random"``. iNNvestigate 1.x's ``"deep_lift.wrapper"`` and ``"deep_lift"`` run
        jxai's ``deeplift`` (rescale rule, contributions (x − x̄)·m summing to
        f(x)_c − f(x̄)_c at the logits; ``reference_inputs`` → ``baseline``, default 0;
        ``nonlinear_mode`` may only be ``"rescale"``).
      model: a `jxai.Network`, or a path to a Keras ``.h5``/``.keras`` file. A final softmax or
        sigmoid is removed (iNNvestigate requires ``model_wo_softmax``; jxai does it for you).
      neuron_selection_mode: ``"max_activation"`` (default), ``"index"`` or ``"all"``.
      **params: the analyzer's parameters in iNNvestigate's names (``epsilon``, ``alpha``,
        ``beta``, ``low``, ``high``, ``steps``, ``augment_by_n``, ``reference_inputs``...), and
        ``convention="innvestigate"`` to reproduce iNNvestigate where it deviates from the paper.
        ``"pattern.net"``/``"pattern.attribution"`` take ``patterns=`` or ``pattern_type=``
        (``"relu"``, ``"linear"``, ``"relu.negative"``) and iNNvestigate 1.x's ``fit(X,
        batch_size=32)`` before ``analyze``.

    Raises:
      TypeError: here, not at ``analyze``, for a parameter the analyzer does not take (the
        message lists those it does: the method's own, a wrapped method's, iNNvestigate's names).
    """
    if isinstance(model, str | os.PathLike):
        from jxai.converters.keras import load_keras

        model = load_keras(model)
    network = as_network(model)
    pattern_type = params.pop("pattern_type", None) if name in PATTERN_ANALYZERS else None
    _check_analyzer_params(name, params)
    analyzer = Analyzer(name, network.without_output_activation(), neuron_selection_mode, params)
    analyzer.pattern_type = pattern_type or "relu"
    return analyzer


def _check_analyzer_params(name: str, params: dict) -> None:
    """A TypeError now, at creation, for a parameter the analyzer does not take (naming it and
    the accepted ones, iNNvestigate's names included), instead of at the first ``analyze``."""
    if name in ("input", "random"):
        accepted = () if name == "input" else ("seed",)
        unknown = [key for key in params if key not in accepted]
        if unknown:
            raise TypeError(f"create_analyzer: {name!r} takes no parameter {unknown[0]!r}; "
                            f"accepted: {', '.join(accepted) or 'none'}")
        return
    method, translated = _translate(name, params)
    get_method(method)  # an unknown name: a ValueError listing the methods
    aliases = dict(_TRANSLATIONS[name][2]) if name in _TRANSLATIONS else {}
    check_params(method, translated, "create_analyzer", aliases)
    if isinstance(method, str):
        check_required(method, translated, "create_analyzer")


def model_wo_softmax(network: Network) -> Network:
    """iNNvestigate's ``model_wo_softmax``: the network explained at its logits."""
    return as_network(network).without_output_activation()
