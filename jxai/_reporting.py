"""Helpers shared by the demos' reports (`jxai.demo`, `jxai.demo_transformer`)."""

from __future__ import annotations

import re

__all__ = ["why_skipped"]


def why_skipped(error: Exception, method: str = "") -> str:
    """A method's failure as one full sentence for the report (never cut, no Python internals).

    A missing required argument (a ``TypeError`` naming the function) becomes "needs the
    parameter(s) ...: pass ... to jxai.explain."; a ``ValueError`` or ``NotImplementedError``
    (the method does not apply to this network) keeps its whole message, on one line, without a
    leading ``"<method>: "``; anything else is a bug and says so.
    """
    text = " ".join(str(error).split())
    if method and text.startswith(f"{method}: "):
        text = text[len(method) + 2:]
    missing = re.search(r"missing \d+ required (?:keyword-only |positional )?arguments?: (.+)$",
                        text)
    if isinstance(error, TypeError) and missing:
        names = re.findall(r"'([^']+)'", missing.group(1))
        passes = ", ".join(f"{n}=…" for n in names)
        noun = "parameter" if len(names) == 1 else "parameters"
        return f"needs the {noun} {', '.join(names)}: pass {passes} to jxai.explain."
    if not isinstance(error, ValueError | TypeError | NotImplementedError):
        return (f"failed with an unexpected {type(error).__name__} ({text or 'no message'}); "
                "this is a bug in jxai, please report it.")
    if not text:
        return f"failed with a {type(error).__name__} without a message."
    return text if text.endswith((".", "!", "?")) else text + "."
