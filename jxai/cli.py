"""The ``jxai`` command: ``jxai demo``, ``jxai convert``, ``jxai explain``.

Each subcommand lives in its own module and is imported only when used, so ``jxai --help``
starts fast and a missing optional piece never breaks the others.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help)
SUBCOMMANDS = {
    "demo": ("jxai.demo", "main", "train or load the bias-detection CNN and compare explanations"),
    "convert": ("jxai.converters.keras.cli", "main", "convert a Keras file to a jxai checkpoint"),
    "explain": ("jxai.batch", "main", "explain a folder, array or glob of inputs in batches"),
}


def _usage() -> str:
    lines = ["usage: jxai COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'jxai COMMAND --help' for the options of one command."]
    return "\n".join(lines)


def _use_cpu_cores() -> None:
    """One XLA device per core (`jxai.cpu`): on CPU, independent samples then run side by side.

    Done for the ``jxai`` command only (`run`), not for `main` called from Python, where the
    device count belongs to the caller. ``JAX_NUM_CPU_DEVICES=1`` turns it off.
    """
    from jxai import cpu

    try:
        cpu.use_cores()
    except RuntimeError:  # JAX already started (e.g. run from a program that used it)
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"jxai: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return int(getattr(module, function)(rest) or 0)


def run() -> None:
    """The ``jxai`` console script."""
    _use_cpu_cores()
    sys.exit(main())


if __name__ == "__main__":
    run()
