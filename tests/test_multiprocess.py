"""Several ``jxai explain`` processes on one machine: `jax.distributed` on 127.0.0.1 with JAX's
CPU runtime, the path a multi-host run takes.

Oracles: the outputs of one process, byte for byte (every item's explanation depends only on the
item and its index, not on which process or device computed it); the exact messages and exit
statuses `jxai.launch` documents. Every child runs with ``JAX_PLATFORMS=cpu`` and
``JAX_NUM_CPU_DEVICES=1`` and under a timeout, so a hang fails the test instead of blocking CI.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jxai import batch_cli, launch

MODEL = "mnist1d_cnn"  # (40, 1) inputs: cheap to compile
TIMEOUT = 120  # seconds for any one child; far above the expected few seconds


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", **extra)


def _one_process(args: list[str], out) -> None:
    """The reference: the same job in one process."""
    done = subprocess.run([sys.executable, "-m", "jxai.cli", "explain", *args, "--out", str(out),
                           "--quiet"], env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]


def _launch(args: list[str], out, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jxai.launch", "--num-processes", "2", "--",
                           *args, "--out", str(out), "--quiet", *extra], env=_env(**env),
                          capture_output=True, text=True, timeout=2 * TIMEOUT)


def _files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _index(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])  # rows_000123.npy -> 123


# -- flags (no process started) ----------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "2", "--process-id", "0"],
     "jxai explain: error: --coordinator missing: --coordinator, --num-processes and "
     "--process-id go together (or use python -m jxai.launch on one machine)"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "jxai explain: error: --process-id 2: expected 0..1 for --num-processes 2"),
    (["--coordinator", "h:70000", "--num-processes", "2", "--process-id", "0"],
     "jxai explain: error: argument --coordinator: 'h:70000': expected HOST:PORT with a port "
     "in 1..65535, e.g. 10.0.0.1:1234 (the host of process 0) (see jxai explain --help)"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"],
     "jxai explain: error: argument --num-processes: '0': expected an integer >= 1 "
     "(see jxai explain --help)"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "-1"],
     "jxai explain: error: argument --process-id: '-1': expected an integer >= 0 "
     "(see jxai explain --help)"),
])
def test_process_flags_are_one_line_usage_errors(tmp_path, capsys, flags, message):
    np.save(tmp_path / "rows.npy", np.zeros((3, 40, 1), np.float32))
    status = batch_cli.main([MODEL, str(tmp_path / "rows.npy"), "--method", "gradient",
                             "--out", str(tmp_path / "out"), *flags])
    assert status == 2
    assert capsys.readouterr().err == message + "\n"
    assert not (tmp_path / "out").exists()


def test_joining_after_jax_started_is_a_usage_error(tmp_path, capsys):
    """jax.distributed must start before any device is used; this test process already has."""
    import jax

    jax.devices()
    np.save(tmp_path / "rows.npy", np.zeros((3, 40, 1), np.float32))
    status = batch_cli.main([MODEL, str(tmp_path / "rows.npy"), "--method", "gradient",
                             "--out", str(tmp_path / "out"), "--coordinator", "127.0.0.1:1",
                             "--num-processes", "2", "--process-id", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("jxai explain: error: --coordinator 127.0.0.1:1: process 0 of 2 could "
                          "not join the group (jax.distributed.initialize() must be called "
                          "before any JAX calls"), err
    assert err.endswith("join in a fresh process, before JAX is used; start all 2 processes "
                        "with the same --coordinator and --num-processes, each with its own "
                        "--process-id\n") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_group_from_flags_and_addresses():
    def args(coordinator=None, n=None, i=None):
        return argparse.Namespace(coordinator=coordinator, num_processes=n, process_id=i)

    assert launch.group_from(args()) is None
    assert launch.group_from(args("10.0.0.1:1234", 4, 3)) == launch.Group("10.0.0.1:1234", 4, 3)
    with pytest.raises(ValueError, match=r"^--num-processes, --process-id missing"):
        launch.group_from(args("h:1"))
    assert launch.parse_address("[::1]:80") == ("[::1]", 80)
    assert launch.parse_address("node-7.cluster:65535") == ("node-7.cluster", 65535)
    for bad in ("h:0", ":80", "h", "h:port", "a b:1"):
        with pytest.raises(ValueError, match=f"^--coordinator '{bad}': expected HOST:PORT"):
            launch.parse_address(bad)


@pytest.mark.parametrize("argv, message", [
    (["--", MODEL, "x.npy"], "the following arguments are required: --num-processes "
                             "(see python -m jxai.launch --help)"),
    (["--num-processes", "2"], "expected '--' and then the jxai explain arguments, e.g. "
                               "--num-processes 2 -- MODEL INPUTS --method NAME --out DIR"),
    (["--num-processes", "2", "--", MODEL, "x.npy", "--process-id", "1"],
     "--process-id is set by the launcher for each process; leave it out of the jxai explain "
     "arguments"),
])
def test_launcher_usage_errors(capsys, argv, message):
    assert launch.main(argv) == 2
    assert capsys.readouterr().err == f"python -m jxai.launch: error: {message}\n"


def test_each_process_removes_only_its_own_temporaries(tmp_path):
    """Processes share --out: one starting late must not delete a file another is writing."""
    from jxai import io as jio

    (tmp_path / "sub").mkdir()
    names = [".rows_000001.npy.77.jxai-tmp", ".rows_000002.npy.88.jxai-tmp",
             "sub/.x.png.9.jxai-tmp", ".rows_000003.npy.77.jxai-tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    mine = [tmp_path / "rows_000001.npy", tmp_path / "rows_000003.npy", tmp_path / "sub/x.png"]
    assert jio.remove_stale_temporaries(tmp_path, only=mine) == 3
    assert os.listdir(tmp_path / "sub") == []
    assert sorted(os.listdir(tmp_path)) == [".rows_000002.npy.88.jxai-tmp", "sub"]
    assert jio.remove_stale_temporaries(tmp_path) == 1  # one process: every temporary


def test_launcher_environment_splits_the_cores(monkeypatch):
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    from jxai import cpu

    env = launch.environment(2, 4321)
    assert env["JAX_COORDINATOR_BIND_ADDRESS"] == "127.0.0.1:4321"
    assert env["JAX_NUM_CPU_DEVICES"] == str(max(1, min(cpu.usable_cores(), cpu.AUTO_MAX) // 2))
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "3")
    assert launch.environment(2, 4321)["JAX_NUM_CPU_DEVICES"] == "3"  # the user's choice
    assert launch.commands(2, ["m", "x.npy"], 4321)[1][2:] == [
        "jxai.cli", "explain", "--coordinator", "127.0.0.1:4321", "--num-processes", "2",
        "--process-id", "1", "m", "x.npy"]


# -- two real processes ------------------------------------------------------------------------
@pytest.mark.slow
def test_launcher_two_processes_equal_one_process(tmp_path):
    """7 items over 2 processes (4 and 3, batches of 2 with a padded last one): the files are
    those of one process, byte for byte."""
    x = np.random.RandomState(0).randn(7, 40, 1).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    args = [MODEL, str(tmp_path / "rows.npy"), "--method", "lrp.epsilon", "--batch-size", "2"]
    _one_process(args, tmp_path / "one")
    start = time.perf_counter()
    done = _launch(args, tmp_path / "two")
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("done\n  items ") == 2
    assert "  items       4\n" in done.stderr and "  items       3\n" in done.stderr
    reference = _files(tmp_path / "one")
    assert len(reference) == 7
    assert _files(tmp_path / "two") == reference
    print(f"launcher, 2 processes, 7 items: {seconds:.1f} s")


# each of two processes runs this with its id; one process (id 0 of 1) gives the reference
_LOCKSTEP = """
import sys, jax, numpy as np
process, count, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if count > 1:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=process)
import jxai, jxai.models
network = jxai.models.get("mnist1d_cnn", pretrained=False)
x = np.random.RandomState(0).randn(7, 40, 1).astype(np.float32)
results = jxai.explain_dataset(network, x, "lrp.epsilon", batch_size=2, devices=jax.devices())
np.savez(out, **{str(r.index): r.attribution for r in results})
"""


@pytest.mark.slow
def test_mesh_over_both_processes_steps_in_lockstep(tmp_path):
    """`explain_dataset` with ``devices=jax.devices()`` spanning two processes: one program per
    batch over both (rows placed with make_array_from_process_local_data, a collective per
    step, a dummy batch for the process with fewer items): each yields its own items, equal to
    one process's results bit for bit."""
    port = str(launch.free_port())

    def start(process, count):
        return subprocess.Popen([sys.executable, "-c", _LOCKSTEP, str(process), str(count), port,
                                 str(tmp_path / f"{count}_{process}.npz")], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    processes = [start(0, 2), start(1, 2), start(0, 1)]
    try:
        for process in processes:
            said, _ = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, said[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    reference = dict(np.load(tmp_path / "1_0.npz"))
    shares = [dict(np.load(tmp_path / f"2_{p}.npz")) for p in (0, 1)]
    assert sorted(shares[0], key=int) == ["0", "2", "4", "6"]
    assert sorted(shares[1], key=int) == ["1", "3", "5"]
    for share in shares:
        for index, attribution in share.items():
            np.testing.assert_array_equal(attribution, reference[index])


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory):
    """400 items explained one at a time (SmoothGrad, 16 noisy copies: a few ms each), so a
    process can be killed in the middle of its share; and the one-process reference files."""
    folder = tmp_path_factory.mktemp("slow_job")
    x = np.random.RandomState(1).randn(400, 40, 1).astype(np.float32)
    np.save(folder / "rows.npy", x)
    args = [MODEL, str(folder / "rows.npy"), "--method", "smoothgrad", "--param", "n=16",
            "--batch-size", "1"]
    _one_process(args, folder / "reference")
    return args, _files(folder / "reference")


HEARTBEAT = 5  # JXAI_HEARTBEAT_TIMEOUT for these runs: a dead process is noticed after 5 s


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker_killed", "coordinator_killed"])
def test_killed_process_survivor_stops_then_resume_completes(tmp_path, slow_job, victim):
    """SIGKILL one of two processes in the middle of its share.

    Process 1 killed: process 0 finishes its own share, then waits at most the heartbeat
    timeout, prints which process stopped and exits 1. Process 0 (the coordinator, whose
    service the others need) killed: JAX terminates process 1 at once (SIGABRT), or, if it had
    already finished its share, it prints that the coordinator stopped and exits 1.
    Either way every file with a final name is complete (equal to the reference), only the
    killed processes' hidden temporaries may remain, and ``--resume`` with both processes
    completes the set: the union equals the one-process outputs.
    """
    args, reference = slow_job
    out = tmp_path / "out"
    out.mkdir()
    port = launch.free_port()
    env = _env(JXAI_HEARTBEAT_TIMEOUT=str(HEARTBEAT))
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]
    processes = [subprocess.Popen(command + ["--out", str(out), "--quiet"], env=env,
                                  stdout=logs[i], stderr=subprocess.STDOUT)
                 for i, command in enumerate(launch.commands(2, args, port))]
    survivor = 1 - victim
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and processes[victim].poll() is None:
            if sum(_index(n) % 2 == victim for n in os.listdir(out) if n.endswith(".npy")) >= 10:
                break
            time.sleep(0.02)
        assert processes[victim].poll() is None, "the victim ended before it could be killed"
        processes[victim].send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        processes[victim].wait(timeout=10)
        processes[survivor].wait(timeout=TIMEOUT)  # a hang fails here
        stopped_after = time.perf_counter() - killed
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    logs[survivor].seek(0)
    said = logs[survivor].read()
    for log in logs:
        log.close()

    status = processes[survivor].returncode
    if victim == 1:
        assert status == 1, said[-3000:]
        assert ("jxai explain: process 1 of 2 stopped responding (no heartbeat for 5 s); its "
                "share is incomplete: run the same command again with --resume on every "
                "process") in said
        assert "  items       200\n  explained   200\n" in said  # its own share finished
    elif status == -signal.SIGABRT:
        assert "Terminating process because the JAX distributed service detected fatal " \
               "errors" in said, said[-3000:]
    else:
        assert status == 1, said[-3000:]
        assert ("jxai explain: process 0 of 2 (the coordinator) stopped responding; complete "
                "outputs are kept: run the same command again with --resume on every "
                "process") in said

    names = os.listdir(out)
    finals = [n for n in names if not n.startswith(".")]
    victim_done = [n for n in finals if _index(n) % 2 == victim]
    assert 10 <= len(victim_done) < 200  # killed in the middle of its share
    for name in finals:  # no partial file under a final name
        assert (out / name).read_bytes() == reference[name], name
    dead = {processes[victim].pid} | ({processes[survivor].pid} if status < 0 else set())
    for name in names:
        if name.startswith("."):  # .rows_000123.npy.PID.jxai-tmp of a killed process only
            assert name.endswith(".jxai-tmp") and int(name.split(".")[-2]) in dead, name

    start = time.perf_counter()
    resumed = _launch(args, out, "--resume", JXAI_HEARTBEAT_TIMEOUT=str(HEARTBEAT))
    resume_seconds = time.perf_counter() - start
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"  resumed     {len(victim_done)} (already present)" in resumed.stderr
    assert _files(out) == reference  # all 400, byte for byte, and no temporary left
    print(f"victim {victim}: survivor exit status {status}, {stopped_after:.1f} s after the "
          f"kill; resume {resume_seconds:.1f} s")
