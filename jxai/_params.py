"""The parameters a method takes, read from signatures before anything is loaded or compiled.

A registered method is ``fn(ctx, x, target, *, param=default, ...)``; its parameters after
``(ctx, x, target)`` are what ``jxai.explain(..., **params)`` may pass (an LRP preset's are its
builder's: the driver gives the registered function the builder's signature). A wrapper
(``smoothgrad``, ``integrated_gradients``, ``expected_gradients``...) has a ``wrapped=``
parameter and forwards its other keywords to that method, so it also takes the wrapped
method's parameters.

    method_parameters("integrated_gradients")["steps"].default             # 50
    method_parameters("smoothgrad", {"wrapped": "lrp.epsilon"})             # ..., 'epsilon', 'bias'
    missing_params("deep_taylor.bounded", {})                               # ['low', 'high']
    parse_param("integrated_gradients", "steps=32")                         # ('steps', 32)

The parameters come from the registry (`jxai.MethodSpec.params`, read from the signature at
registration). `accepted_params` / `check_params` / `check_required` (``jxai.explain``,
``jxai.create_analyzer``, `jxai.trees`) check a call's names here;
``jxai explain`` also checks ``--method``, required parameters and values here, before it loads
the model.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jxai.contract import get_method, list_methods

__all__ = ["check_method", "method_parameters", "missing_params", "parse_param"]

_EMPTY = inspect.Parameter.empty  # no default (a required parameter) / no annotation


def check_method(name: Any) -> str:
    """``name`` if it is a registered method; else a one-line ValueError with the closest names
    (shorter than `jxai.get_method`'s, which lists every method)."""
    known = list_methods()
    if isinstance(name, str) and name in known:
        return name
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown method {name!r}{hint} (jxai.list_methods() lists all "
                     f"{len(known)})")


def method_parameters(method: Any, params: Mapping[str, Any] | None = None
                      ) -> dict[str, inspect.Parameter] | None:
    """``{name: inspect.Parameter}`` of what ``method`` takes, in signature order; None when it
    takes anything (a ``**kwargs`` that is not a wrapper's, or no readable signature).

    ``method``: a name, a `jxai.Composite` or a callable (`jxai.get_method`). A
    wrapper's parameters are its own followed by those of its ``wrapped`` method
    (``params["wrapped"]``, else its default), recursively. Raises ValueError for an unknown
    method name, also as ``wrapped``.
    """
    return _parameters(method, dict(params or {}), depth=0)


def missing_params(method: Any, params: Mapping[str, Any]) -> list[str]:
    """The parameters ``method`` requires (no default) that ``params`` does not give."""
    accepted = method_parameters(method, params) or {}
    return [name for name, p in accepted.items() if p.default is _EMPTY and name not in params]


def resolve_method(method) -> Callable:
    """The function of a method name, a `jxai.Composite` or a callable (`jxai.get_method`)."""
    return get_method(method).fn


def accepted_params(method, params: dict | None = None) -> list[str] | None:
    """The parameter names ``method`` takes, in signature order; None when it takes any.

    They are the parameters of the method's function after ``(ctx, x, target)`` (a preset's are
    its composite builder's). A wrapper's ``**inner`` forwards the rest to its ``wrapped`` method
    (``params["wrapped"]`` or the default), whose names are added; any other ``**kwargs``, or a
    function without a readable signature, takes anything. `method_parameters` also
    gives each parameter's default and annotation (``jxai explain`` types ``--param`` by them).
    """
    accepted = method_parameters(method, params)
    return None if accepted is None else list(accepted)


def check_params(method, params: dict, owner: str = "explain", aliases: dict | None = None,
                 model_inputs: tuple = ()):
    """A TypeError naming the first parameter ``method`` does not take, and those it does.

    ``aliases`` maps another vocabulary's names to the method's (iNNvestigate's ``augment_by_n``
    -> ``n``): they are accepted too, and listed with the method's own names. ``model_inputs``:
    the names the model's ``__call__`` takes besides the explained input (`jxai.explain` passes
    them to the model); the message lists them too.
    """
    aliases = aliases or {}
    accepted = accepted_params(method, params)
    if accepted is None:
        return
    for name in params:
        if name not in accepted and aliases.get(name) not in accepted:
            known = accepted + [a for a, n in aliases.items() if n in accepted]
            close = difflib.get_close_matches(name, known + list(model_inputs), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            inputs = (f"; model inputs (by name, one row per sample): {', '.join(model_inputs)}"
                      if model_inputs else "")
            raise TypeError(
                f"{owner}: {method!r} takes no parameter {name!r}"
                + (" and the model takes no input of that name" if model_inputs else "")
                + f"; {hint}accepted: " + (", ".join(known) if known else "none") + inputs
            )


def check_required(method, params: dict, owner: str = "explain"):
    """A TypeError naming the parameters ``method`` needs and ``params`` lacks (``lrp`` needs
    ``composite=``, ``deep_taylor.bounded`` ``low=`` and ``high=``)."""
    missing = missing_params(method, params)
    if missing:
        needed = ", ".join(f"{name}=..." for name in missing)
        raise TypeError(f"{owner}: {method!r} needs {needed}; pass it as a keyword argument")


def parse_param(method: str, text: str, given: Mapping[str, Any] | None = None
                ) -> tuple[str, Any]:
    """``"KEY=VALUE"`` from a command line as ``(key, value)``, the value typed by the parameter.

    A parameter whose annotation or default is an int, float or bool takes exactly that
    (``steps=abc`` is an error naming the type; ``sigma=1`` is 1.0); without an annotation a
    comma list of integers is a tuple (``window=4,4``). Any other text is read as ``true``/``false``,
    ``none``, an int, a float, a comma tuple, or else the string itself. ``given``: parameters
    parsed so far (a ``wrapped=`` there selects the wrapped method's parameters).
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param {text!r}: expected KEY=VALUE, e.g. steps=32")
    parameter = (method_parameters(method, given) or {}).get(key)
    kind = None if parameter is None else _scalar_kind(parameter)
    if kind is None:
        return key, _guess(value)
    cast, what = _CASTS[kind]
    several = _allows_tuple(parameter)
    parts = value.split(",") if several and "," in value else [value]
    try:
        values = tuple(cast(part.strip()) for part in parts)
    except ValueError:
        also = " (or a comma list of integers)" if several else ""
        raise ValueError(f"--param {text}: {key} takes {what}{also}") from None
    return key, values if len(parts) > 1 else values[0]


# -- signatures --------------------------------------------------------------------------------
def _parameters(method: Any, params: dict, depth: int) -> dict[str, inspect.Parameter] | None:
    if isinstance(method, str):
        check_method(method)
    spec = get_method(method)
    if spec.params is None:  # no readable signature: it takes anything
        return None
    own = dict(spec.params)
    if not spec.forwards:
        return own
    if "wrapped" not in own or depth > 8:
        return None
    wrapped = params.get("wrapped", own["wrapped"].default)
    try:
        inner = _parameters(wrapped, {k: v for k, v in params.items() if k not in own},
                            depth + 1)
    except ValueError as err:
        raise ValueError(f"{method}: wrapped={wrapped!r}: {err}") from None
    return None if inner is None else {**own, **{k: p for k, p in inner.items() if k not in own}}


# -- values ------------------------------------------------------------------------------------
def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise ValueError(text)


_CASTS: dict[str, tuple[Callable[[str], Any], str]] = {
    "bool": (_parse_bool, "true or false"),
    "int": (int, "an integer"),
    "float": (float, "a number"),
}


def _scalar_kind(parameter: inspect.Parameter) -> str | None:
    """``"bool"``, ``"int"`` or ``"float"`` when the annotation or the default says so, else
    None. Annotations are strings here (the methods use ``from __future__ import annotations``);
    one that admits other types (``int | str | None``) leaves the value to `_guess`."""
    annotation = parameter.annotation
    if annotation is not _EMPTY:
        if isinstance(annotation, type):
            annotation = annotation.__name__
        return annotation if annotation in _CASTS else None
    default = parameter.default
    for kind, cls in (("bool", bool), ("int", int), ("float", float)):
        if type(default) is cls:
            return kind
    return None


def _allows_tuple(parameter: inspect.Parameter) -> bool:
    """An unannotated integer default may stand for one value per axis (occlusion's ``window``
    and ``stride``); annotated scalars and the presets' float factors are one value."""
    return parameter.annotation is _EMPTY and type(parameter.default) is int


def _guess(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(_guess(part) for part in text.split(","))
    return text
