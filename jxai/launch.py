"""Several processes for ``jxai explain``: joining a `jax.distributed` group, noticing at the end
a process that stopped, and a launcher for N processes on one machine.

On each host (or N times on one machine, with ``python -m jxai.launch``)::

    jxai explain MODEL INPUTS... --method NAME --out SHARED/ \\
        --coordinator HOST:PORT --num-processes N --process-id I

(or `initialize` with no arguments, where JAX detects the group: Cloud TPU, SLURM, Open MPI).

Process ``I`` explains the items whose index ``i`` has ``i % N == I`` on its own devices and
writes their files (atomically) into the shared output folder; processes never wait for each
other while they work (`jxai.batch.explain_dataset` gives each one a mesh of its own devices).
At the end each process waits for the others (`finish`): when every live process is done, the
coordinator (process 0, which hosts JAX's coordination service) leaves last.

A process that dies: the others finish their own shares, then report it, exit status 1::

    jxai explain: process 1 of 2 stopped responding (no heartbeat for 30 s); its share is
    incomplete: run the same command again with --resume on every process

JAX's coordination service declares a process dead after `HEARTBEAT_ENV`
(``JXAI_HEARTBEAT_TIMEOUT``, default `HEARTBEAT_S` = 30) seconds without a heartbeat. If the
coordinator itself dies, JAX terminates the other processes at once ("Terminating process
because the JAX distributed service detected fatal errors", SIGABRT, exit status 134): they
cannot go on without its service (one already waiting in `finish` may instead print that
process 0 stopped and exit 1). Either way only complete output files carry their final name
(a write interrupted by the kill leaves a hidden ``.NAME.PID.jxai-tmp``, removed by the next
run), and ``--resume`` on every process completes the set.

Survivors are kept running with JAX's ``jax_enable_recoverability`` option: without it the
coordination service would terminate every process as soon as one stopped sending heartbeats,
in the middle of a write.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import NamedTuple

__all__ = ["HEARTBEAT_ENV", "HEARTBEAT_S", "Group", "add_arguments", "finish", "initialize",
           "join", "main", "parse_address"]

HEARTBEAT_ENV = "JXAI_HEARTBEAT_TIMEOUT"
HEARTBEAT_S = 30
FLAGS = ("--coordinator", "--num-processes", "--process-id")
EXIT_PEER_STOPPED = 1


class Group(NamedTuple):
    """One process's place in a group: the coordinator's ``host:port``, the group size and this
    process's id (0-based; process 0 hosts the coordination service)."""

    coordinator: str
    num_processes: int
    process_id: int


# -- the flags of `jxai explain` ---------------------------------------------------------------
def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6-address]:PORT`` for IPv6) as ``(host, port)``; port in 1..65535.

    Raises ValueError naming what was wrong.
    """
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})", text)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"--coordinator {_bad_address(text)}")
    return match.group(1), int(match.group(2))


def _bad_address(text: str) -> str:
    return (f"{text!r}: expected HOST:PORT with a port in 1..65535, e.g. 10.0.0.1:1234 (the "
            "host of process 0)")


def _address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(_bad_address(text)) from None
    return text


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= {minimum}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--coordinator``, ``--num-processes`` and ``--process-id`` to ``parser``."""
    group = parser.add_argument_group(
        "several processes (jax.distributed)",
        "all three together, the same --coordinator and --num-processes on every process;\n"
        "python -m jxai.launch starts N of them on this machine")
    group.add_argument("--coordinator", type=_address, default=None, metavar="HOST:PORT",
                       help="address of process 0, which hosts JAX's coordination service")
    group.add_argument("--num-processes", type=_count(1), default=None, metavar="N",
                       help="how many processes share the inputs (item i goes to i %% N)")
    group.add_argument("--process-id", type=_count(0), default=None, metavar="I",
                       help="this process, 0..N-1")


def group_from(args) -> Group | None:
    """The `Group` the three flags ask for, or None when none is given.

    Raises ValueError (one line) when only some are given or the id is not below the count.
    """
    values = (args.coordinator, args.num_processes, args.process_id)
    if all(v is None for v in values):
        return None
    missing = [flag for flag, value in zip(FLAGS, values, strict=True) if value is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing: --coordinator, --num-processes and "
                         "--process-id go together (or use python -m jxai.launch on one machine)")
    if args.process_id >= args.num_processes:
        raise ValueError(f"--process-id {args.process_id}: expected 0..{args.num_processes - 1} "
                         f"for --num-processes {args.num_processes}")
    parse_address(args.coordinator)
    return Group(args.coordinator, args.num_processes, args.process_id)


def heartbeat_timeout() -> int:
    """Seconds without a heartbeat after which a process counts as stopped (`HEARTBEAT_ENV`)."""
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not text:
        return HEARTBEAT_S
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{HEARTBEAT_ENV}={text!r}: expected a whole number of seconds >= 1")
    return int(text)


# -- joining and leaving the group -------------------------------------------------------------
_JOINED: dict = {}  # "group", "heartbeat", "left" for this process


def join(args) -> Group | None:
    """Join the group the flags describe (`initialize`); no flags: nothing.

    Raises ValueError (one line) for bad flags, a bad `HEARTBEAT_ENV` or JAX already started in
    this process.
    """
    group = group_from(args)
    if group is None:
        return None
    heartbeat_timeout()  # its own message, not the one about joining
    if _JOINED:
        if _JOINED["group"] != group:
            raise ValueError(f"this process already joined {_JOINED['group']}; start a new "
                             "process for another group")
        return group
    try:
        return initialize(*group)
    except ValueError as err:
        raise ValueError(f"--coordinator {group.coordinator}: {err}; start all "
                         f"{group.num_processes} processes with the same --coordinator and "
                         "--num-processes, each with its own --process-id") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Group:
    """`jax.distributed.initialize` for `jxai.batch_cli` (``jxai explain``), so that a process
    that dies stops no other and `finish` reports it. Arguments left out are detected by JAX
    (Cloud TPU, SLURM, Open MPI).

    Must run before anything touches a JAX device. Waits for every process to connect; after
    300 s (JAX's ``initialization_timeout``) JAX itself terminates the process (SIGABRT).
    Registers `finish` to run at exit as well, so a process that leaves by another path (an
    error, Ctrl-C) still leaves in order.

    Raises ValueError: a bad `HEARTBEAT_ENV`, JAX already started (or another error JAX raises
    instead of terminating).
    """
    seconds = heartbeat_timeout()
    import jax

    try:
        # keeps the survivors running when a process dies; finish() reports it instead
        jax.config.update("jax_enable_recoverability", True)
    except (AttributeError, KeyError):  # an older JAX: a dead process stops the others
        pass
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, heartbeat_timeout_seconds=seconds)
    except Exception as err:  # noqa: BLE001 - JAX's runtime errors have no common public type
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"process {process_id} of {num_processes} could not join the group "
                         f"({detail}); join in a fresh process, before JAX is used") from None
    from jax._src import distributed  # the detected values (no public accessor before a device)

    state = distributed.global_state
    group = Group(state.coordinator_address, state.num_processes, state.process_id)
    _JOINED.update(group=group, heartbeat=seconds, left=False)
    import atexit

    atexit.register(_finish_at_exit)  # runs before JAX's own clean-up (registered earlier)
    return group


def finish(status: int) -> int:
    """Leave the group in order and return the exit status: ``status``, or `EXIT_PEER_STOPPED`
    (1) when it was 0 and another process stopped before finishing (it is named on stderr).

    Waits until every live process has finished (JAX's ``get_live_nodes`` returns when each
    live process has called it; a dead one drops out after the heartbeat timeout). Then the
    other processes disconnect and the coordinator, process 0, waits for that before it stops
    its service: a process still connected when the service goes would be terminated by JAX.
    Without a group this returns ``status`` at once.
    """
    if not _JOINED or _JOINED["left"]:
        return status
    _JOINED["left"] = True
    group = _JOINED["group"]
    stopped = _leave(group)
    if not stopped:
        return status
    names = ", ".join(str(p) for p in stopped)
    print(f"jxai explain: process{'es' if len(stopped) > 1 else ''} {names} of "
          f"{group.num_processes} stopped responding (no heartbeat for {_JOINED['heartbeat']} "
          f"s); {'their shares are' if len(stopped) > 1 else 'its share is'} incomplete: run "
          "the same command again with --resume on every process", file=sys.stderr, flush=True)
    return status or EXIT_PEER_STOPPED


def _finish_at_exit() -> None:
    finish(1)


def _leave(group: Group) -> list[int]:
    """The ordered leave of `finish`; returns the processes that stopped before it."""
    import jax

    everyone = list(range(group.num_processes))
    client = _client()
    if client is None or not hasattr(client, "get_live_nodes"):
        jax.distributed.shutdown()  # no liveness query in this JAX: its own shutdown barrier
        return []
    try:
        stopped = sorted(set(everyone) - set(client.get_live_nodes(everyone)))
        if group.process_id != 0:
            jax.distributed.shutdown()
            return stopped
        while set(client.get_live_nodes(everyone)) - {0}:  # once the others disconnected
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the service is gone: JAX is terminating this process
        _coordinator_lost(group)
    jax.distributed.shutdown()
    return stopped


def _coordinator_lost(group: Group) -> None:
    """Process 0 and its coordination service are gone: say so and exit with status 1 before
    JAX's error-polling thread terminates the process (whichever comes first)."""
    print(f"jxai explain: process 0 of {group.num_processes} (the coordinator) stopped "
          "responding; complete outputs are kept: run the same command again with --resume on "
          "every process", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_STOPPED)  # JAX's shutdown would only fail on the lost service


def _client():
    """JAX's distributed runtime client (no public accessor; orbax uses the same one)."""
    try:
        from jax._src import distributed
    except ImportError:
        return None
    return getattr(distributed.global_state, "client", None)


# -- N processes on this machine ---------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def commands(num_processes: int, explain_args: list[str], port: int) -> list[list[str]]:
    """The ``jxai explain`` command line of each local process."""
    coordinator = f"127.0.0.1:{port}"
    return [[sys.executable, "-m", "jxai.cli", "explain", "--coordinator", coordinator,
             "--num-processes", str(num_processes), "--process-id", str(i), *explain_args]
            for i in range(num_processes)]


def environment(num_processes: int, port: int) -> dict[str, str]:
    """The processes' environment: the coordination service listens on 127.0.0.1 only, and on
    a CPU each process gets an equal part of the cores (`jxai.cpu`) unless the count is set."""
    from jxai import cpu

    env = dict(os.environ, JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    if "JAX_NUM_CPU_DEVICES" not in env and "device_count" not in env.get("XLA_FLAGS", ""):
        env["JAX_NUM_CPU_DEVICES"] = str(max(1, min(cpu.usable_cores(), cpu.AUTO_MAX)
                                             // num_processes))
    return env


def run_local(cmds: list[list[str]], env: dict[str, str]) -> int:
    """Start every command, wait for all, report the ones that failed; returns the first
    non-zero exit status in process order (a process killed by signal S counts as 128 + S)."""
    children = [subprocess.Popen(cmd, env=env) for cmd in cmds]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while any(child.poll() is None for child in children):
            try:
                time.sleep(0.1)
            except KeyboardInterrupt:  # the children got the Ctrl-C too: let them finish
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    statuses = [_status(child.returncode) for child in children]
    for i, (child, status) in enumerate(zip(children, statuses, strict=True)):
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            print(f"jxai.launch: process {i} was killed by {name} (exit status {status})",
                  file=sys.stderr)
        elif status:
            print(f"jxai.launch: process {i} exited with status {status}", file=sys.stderr)
    failed = [s for s in statuses if s]
    if any(s != 2 for s in failed):  # 2: a usage error, nothing to resume
        print("jxai.launch: complete outputs are kept; run the same command again with "
              "--resume to finish the set", file=sys.stderr)
    return failed[0] if failed else 0


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _parser():
    from jxai.cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m jxai.launch",
        description="Run jxai explain as N processes on this machine (jax.distributed on "
                    "127.0.0.1, a free port): process I explains items I, I+N, I+2N... on its "
                    "own share of the cores and writes their files into the one --out folder.",
        epilog="example:\n  python -m jxai.launch --num-processes 2 -- mnist1d_cnn x.npy "
               "--method lrp.epsilon --out relevance/\n"
               "exit status: 0 when every process exits 0, else the first other status in "
               "process order\n(a process killed by signal S: 128 + S); see jxai.launch",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-processes", type=_count(1), required=True, metavar="N",
                        help="how many processes to start")
    parser.add_argument("--port", type=_count(1), default=None,
                        help="coordinator port on 127.0.0.1 (default: a free one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m jxai.launch --num-processes N [--port P] -- JXAI-EXPLAIN-ARGS...``."""
    from jxai.cli import parse_args, usage_error

    prog = "python -m jxai.launch"
    argv = list(sys.argv[1:] if argv is None else argv)
    own, explain_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) \
        if "--" in argv else (argv, None)
    args = parse_args(_parser(), own)
    if isinstance(args, int):
        return args
    if not explain_args:
        return usage_error(prog, "expected '--' and then the jxai explain arguments, e.g. "
                                 "--num-processes 2 -- MODEL INPUTS --method NAME --out DIR")
    given = [flag for flag in FLAGS
             if any(a == flag or a.startswith(flag + "=") for a in explain_args)]
    if given:
        return usage_error(prog, f"{given[0]} is set by the launcher for each process; leave "
                                 "it out of the jxai explain arguments")
    if args.port is not None and args.port > 65535:
        return usage_error(prog, f"--port {args.port}: expected 1..65535")
    port = args.port or free_port()
    return run_local(commands(args.num_processes, explain_args, port),
                     environment(args.num_processes, port))


if __name__ == "__main__":
    sys.exit(main())
