"""The ``jxai`` command: ``jxai demo``, ``jxai convert``, ``jxai explain``.

Each subcommand lives in its own module and is imported only when used. The helpers here give
every subcommand the same usage-error contract: a wrong argument is reported as ONE line on
stderr, ``jxai <command>: error: <what was wrong and how to fix it>``, with exit status 2, and
is found before anything is loaded, compiled or written (`ArgumentParser`, `usage_error`,
`writable_folder`).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import tempfile

__all__ = ["ArgumentParser", "main", "parse_args", "remove_if_empty", "run", "usage_error",
           "writable_folder"]

# subcommand -> (module, function, one-line help)
SUBCOMMANDS = {
    "demo": ("jxai.demo", "main", "train or load the bias-detection CNN and compare explanations"),
    "convert": ("jxai.converters.keras.cli", "main", "convert a Keras file to a jxai checkpoint"),
    "explain": ("jxai.batch_cli", "main", "explain a folder, array or glob of inputs in batches"),
}

USAGE_ERROR = 2


# -- the usage-error contract, shared by the subcommands ---------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line (no usage block) naming ``--help``."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """``parser.parse_args(argv)``, or the exit status as an int when argparse stops by itself
    (``--help``: 0, a bad flag: 2, the message already printed), so ``main(argv)`` returns it
    instead of raising `SystemExit`."""
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)


def usage_error(prog: str, error: BaseException | str) -> int:
    """Print ``error`` as one line ``prog: error: ...`` on stderr; returns the exit status 2."""
    text = " ".join(str(error).split())  # a message over several lines becomes one
    print(f"{prog}: error: {text}", file=sys.stderr)
    return USAGE_ERROR


def writable_folder(path: str, flag: str = "--out") -> str | None:
    """Make sure ``path`` is a folder this process can write in: create it (with its parents),
    then write and remove a probe file. Returns the outermost folder created (None if it
    existed), for `remove_if_empty` when a later usage error leaves it unused.

    Raises ValueError (one line, naming ``flag``) when that fails: ``path`` is a file, a parent
    is a file, no permission, a read-only file system.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path}: exists and is not a folder; pass a folder")
    created = _first_missing(path)
    try:
        os.makedirs(path, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(prefix=".jxai-probe-", dir=path)
        try:
            os.write(descriptor, b"probe")
        finally:
            os.close(descriptor)
            os.unlink(probe)
    except OSError as err:
        if created is not None:
            remove_if_empty(path, created)
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{flag} {path}: cannot write there ({reason}); pass a folder you can "
                         "write to") from None
    return created


def remove_if_empty(path: str, created: str | None) -> None:
    """Remove ``path`` and its parents up to ``created`` (what `writable_folder` made), as long
    as they are empty; a usage error found later then leaves nothing behind."""
    if created is None:
        return
    folder, top = os.path.abspath(path), os.path.abspath(created)
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if folder == top or len(folder) <= len(top):
            return
        folder = os.path.dirname(folder)


def _first_missing(path: str) -> str | None:
    """The outermost folder of ``path`` that does not exist yet (None: it exists)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


# -- the dispatcher ----------------------------------------------------------------------------
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
        close = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return usage_error("jxai", f"unknown command {name!r}; {hint}commands: "
                                   f"{', '.join(SUBCOMMANDS)} (see jxai --help)")
    module_name, function, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return int(getattr(module, function)(rest) or 0)


def run() -> None:
    """The ``jxai`` console script."""
    _use_cpu_cores()
    sys.exit(main())


if __name__ == "__main__":
    run()
