"""A failure on one rank of a `distbp train` job ends the whole job, fast and clearly: a non-zero exit
within seconds, a message naming the rank and the cause, no process left behind, and a killed run
resumes from its last checkpoint to the same parameters as a run that was never interrupted.

Faults come from the test hook in distbp/testing/faults.py: DISTBP_INJECT_FAULT=rank:step:kind, and
DISTBP_INJECT_FAULT_ONCE=PATH, which fires the fault only if PATH does not exist and creates it
first, so a restarted job does not fail again. The file's mtime also tells when the fault fired.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jobs import assert_no_orphans, load_npz, run_job

from distbp.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.timeout(120)

DATA = "synthetic:rows=400,features=16,classes=4,test=80"
BASE = ["--data", DATA, "--layers", "16,12,4", "--batch-size", "32", "--lr", "0.01", "--progress", "none"]
FAULT_SECONDS = 10  # a fault must end the job within this many seconds


def train(tmp_path, *flags: str) -> list[str]:
    """`distbp train` on the small synthetic set; tmp_path in the command line marks the job's processes."""
    return ["distbp", "train", *BASE, "--save", str(tmp_path / "params.npz"), *flags]


def fault(spec: str, marker) -> dict:
    return {"DISTBP_INJECT_FAULT": spec, "DISTBP_INJECT_FAULT_ONCE": str(marker)}


def seconds_since(marker) -> float:
    assert marker.exists(), "the injected fault never fired"
    return time.time() - marker.stat().st_mtime


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Parameters of a 2-rank, 2-epoch run without faults (same flags as the interrupted runs)."""
    d = tmp_path_factory.mktemp("uninterrupted")
    done = run_job(2, train(d, "--epochs", "2", "--checkpoint-dir", str(d / "ckpt"), "--checkpoint-steps", "2"))
    assert done.returncode == 0, done.output
    return load_npz(d / "params.npz")


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_rank_that_raises_ends_the_job_naming_the_rank_and_cause(tmp_path, ranks):
    marker = tmp_path / "fired"
    done = run_job(ranks, train(tmp_path, "--epochs", "3"), env=fault("1:5:raise", marker), timeout=60)
    assert done.returncode != 0, done.output
    assert seconds_since(marker) < FAULT_SECONDS, done.output
    assert "rank 1" in done.stderr and "injected fault" in done.stderr, done.output
    assert not (tmp_path / "params.npz").exists()
    assert_no_orphans(str(tmp_path))


def test_a_killed_rank_ends_the_job_and_the_run_resumes_bit_identically(tmp_path, uninterrupted):
    marker, ckpt = tmp_path / "fired", tmp_path / "ckpt"
    flags = ["--epochs", "2", "--checkpoint-dir", str(ckpt), "--checkpoint-steps", "2"]
    killed = run_job(2, train(tmp_path, *flags), env=fault("1:5:kill", marker), timeout=60)
    assert killed.returncode != 0, killed.output
    assert seconds_since(marker) < FAULT_SECONDS, killed.output
    assert_no_orphans(str(tmp_path))
    path, arrays, meta = latest_checkpoint(ckpt)  # the last checkpoint before the kill loads and verifies
    assert meta["position"]["step"] == 4, path
    assert not (tmp_path / "params.npz").exists()

    resumed = run_job(2, train(tmp_path, *flags, "--resume"), timeout=60)
    assert resumed.returncode == 0, resumed.output
    assert "resumed from" in resumed.stdout and "step 4" in resumed.stdout, resumed.output
    got = load_npz(tmp_path / "params.npz")
    assert sorted(got) == sorted(uninterrupted)
    for name in got:
        assert np.array_equal(got[name], uninterrupted[name]), name


def test_launcher_restart_after_a_kill_finishes_bit_identically(tmp_path, uninterrupted):
    marker = tmp_path / "fired"
    flags = ["--epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-steps", "2"]
    done = run_job(2, ["--restarts", "1", *train(tmp_path, *flags)], env=fault("1:5:kill", marker), timeout=90)
    assert done.returncode == 0, done.output
    assert marker.exists()  # the fault fired once, on the first attempt only
    assert "restart 1/1" in done.stderr, done.output
    assert "resumed from" in done.stdout, done.output
    got = load_npz(tmp_path / "params.npz")
    for name in uninterrupted:
        assert np.array_equal(got[name], uninterrupted[name]), name
    assert_no_orphans(str(tmp_path))


def test_a_stalled_rank_is_caught_by_the_watchdog_and_killed_too(tmp_path):
    marker = tmp_path / "fired"
    done = run_job(2, train(tmp_path, "--epochs", "3", "--timeout", "3"), env=fault("1:5:stall", marker),
                   timeout=60)
    assert done.returncode != 0, done.output
    assert seconds_since(marker) < 3 + 7, done.output
    assert "no progress" in done.stderr and "gradient allreduce" in done.stderr, done.output
    assert done.stderr.count("no progress") == 1, done.output
    # the heartbeats name the culprit: rank 1 stopped beating
    assert "rank 1 on" in done.stderr and "silent for" in done.stderr, done.output
    # the SIGSTOPped rank ignores SIGTERM; it must be gone all the same
    assert_no_orphans(str(tmp_path))


def per_rank_wrapper(tmp_path, rank1_flags: list[str]) -> str:
    """A rank program that runs `distbp train` with rank1_flags added on rank 1 only (hydra's PMI_RANK)."""
    script = tmp_path / "rank_flags.sh"
    command = " ".join([sys.executable, "-m", "mpi4py", "-m", "distbp",
                        *train(tmp_path, "--epochs", "1", "--timeout", "20")[1:]])
    script.write_text(f'#!/bin/sh\nextra=""\n[ "$PMI_RANK" = 1 ] && extra="{" ".join(rank1_flags)}"\n'
                      f'exec {command} $extra\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize("rank1_flags,words", [
    (["--lr", "0.5"], ["configuration differs", "rank 1", "lr", "0.5"]),
    (["--data", "/nonexistent.npz"], ["rank 1", "/nonexistent.npz", "not found"]),
], ids=["different lr", "data file missing"])
def test_a_rank_that_disagrees_is_named_once(tmp_path, rank1_flags, words):
    done = run_job(2, [per_rank_wrapper(tmp_path, rank1_flags)], timeout=60)
    assert done.returncode != 0, done.output
    assert "no progress" not in done.output, done.output  # a start-up check's error, not the watchdog's
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("distbp: error:")]
    assert len(errors) == 1, done.output
    message = done.stderr[done.stderr.index(errors[0]):]
    for word in words:
        assert word in message, f"{word!r} missing\n{done.output}"
    # once, not once per rank (MPI's own "Abort(2) on node 1 (rank 1 …)" lines aside)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("Abort(")]
    assert "\n".join(ours).count("rank 1") == 1, done.output
    assert_no_orphans(str(tmp_path))


def test_nan_in_the_gradient_stops_the_job_naming_step_and_layer(tmp_path):
    done = run_job(2, train(tmp_path, "--epochs", "1"), env={"DISTBP_INJECT_FAULT": "1:3:nan"}, timeout=60)
    assert done.returncode != 0, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp: error:")]
    assert len(errors) == 1, done.output
    for word in ("non-finite", "step 3", "layer 0 dW"):
        assert word in errors[0], done.output
    assert not (tmp_path / "params.npz").exists()


def test_skip_nonfinite_finishes_and_counts_the_skipped_update(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    done = run_job(2, train(tmp_path, "--epochs", "2", "--skip-nonfinite", "--metrics", str(metrics)),
                   env={"DISTBP_INJECT_FAULT": "1:3:nan"}, timeout=60)
    assert done.returncode == 0, done.output
    assert done.stderr.count("update skipped") == 1, done.output
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in records] == [1, 1]  # a running count
    params = load_npz(tmp_path / "params.npz")
    assert all(np.isfinite(a).all() for a in params.values())


def test_ranks_out_of_step_stop_with_a_clear_message_once(tmp_path):
    done = run_job(3, train(tmp_path, "--epochs", "1"), env={"DISTBP_INJECT_FAULT": "1:3:desync"}, timeout=60)
    assert done.returncode != 0, done.output
    assert "ranks are out of step" in done.stderr, done.output
    assert done.stderr.count("distbp: error:") == 1, done.output
    assert_no_orphans(str(tmp_path))


@pytest.mark.parametrize("when,phase", [("start", "start-up"), ("end", "shut-down")])
def test_a_rank_stopped_at_start_up_or_shut_down_is_caught_by_the_watchdog(tmp_path, when, phase):
    marker = tmp_path / "fired"
    rank = 1 if when == "start" else 0
    done = run_job(2, train(tmp_path, "--epochs", "1", "--timeout", "3"), env=fault(f"{rank}:{when}:stall", marker),
                   timeout=60)
    assert done.returncode != 0, done.output
    assert seconds_since(marker) < 3 + 7, done.output
    assert "no progress" in done.stderr and phase in done.stderr, done.output
    assert_no_orphans(str(tmp_path))


def interrupt_when(cmd: list[str], env, ready, waiting_for: str,
                   wait: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    """Start cmd, send it SIGINT (as ctrl-c does) once ready() holds, wait at most `wait` s for its end.

    Returns the finished process and the seconds from the SIGINT to its end.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    while not ready() and proc.poll() is None:
        assert time.monotonic() < deadline, f"{waiting_for}: not within 90 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    try:
        out, err = proc.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running {wait:g} s after ctrl-c\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - sent


def interrupted_after_the_first_epoch(cmd: list[str], metrics, env=None) -> subprocess.CompletedProcess:
    """cmd, sent SIGINT once the first epoch is in the metrics file."""
    return interrupt_when(cmd, env, lambda: metrics.exists() and metrics.read_text().strip(),
                          "the first epoch's metrics")[0]


@pytest.mark.parametrize("ranks", [1, 2])
def test_ctrl_c_stops_cleanly_with_one_line_and_exit_130(tmp_path, ranks):
    metrics = tmp_path / "m.jsonl"
    python = sys.executable
    args = ["-m", "distbp", "train", "--data", "synthetic:rows=20000,features=64,classes=4", "--epochs", "100000",
            "--progress", "none", "--metrics", str(metrics)]
    if ranks == 1:
        cmd = [python, *args]
    else:  # plain mpiexec, not launch/local: mpiexec forwards ctrl-c to every rank
        cmd = [str(Path(python).parent / "mpiexec"), "-n", "2", python, "-m", "mpi4py", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DISTBP_THREADS="1")
    done = interrupted_after_the_first_epoch(cmd, metrics, env)
    # one process exits 130 itself; under plain mpiexec the job's code is mpiexec's: a root caught inside a
    # collective never sees the ctrl-c and is ended by mpiexec once the other ranks have gone (then 9)
    assert done.returncode == 130 if ranks == 1 else done.returncode != 0, done.stdout + done.stderr
    # said once: by the root, or by a rank whose root was caught inside a collective ("distbp: rank 1: …")
    assert [line for line in done.stderr.splitlines() if "interrupted;" in line] != [], done.stderr
    assert done.stderr.count("interrupted;") == 1, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


def test_heartbeat_folders_of_jobs_that_ended_abnormally_are_removed(tmp_path):
    import socket
    import tempfile

    gone = subprocess.Popen(["true"])
    gone.wait()
    folders = {}
    for name, pid in (("dead", gone.pid), ("alive", os.getpid())):
        folder = Path(tempfile.gettempdir()) / f"distbp-heartbeat-test{name}{os.getpid()}"
        folder.mkdir(exist_ok=True)
        (folder / "rank-0.json").write_text(json.dumps({"rank": 0, "host": socket.gethostname(), "pid": pid}))
        folders[name] = folder
    try:
        done = run_job(2, train(tmp_path, "--epochs", "1", "--timeout", "30"), timeout=60)
        assert done.returncode == 0, done.output
        assert not folders["dead"].exists()  # its only rank is gone: left by an abnormal end
        assert folders["alive"].exists()  # a job still running (this test) keeps its folder
    finally:
        for folder in folders.values():
            for f in folder.glob("*"):
                f.unlink()
            if folder.exists():
                folder.rmdir()


def test_ctrl_c_reaches_a_root_blocked_in_a_collective(tmp_path):
    # rank 1 stops itself (SIGSTOP) at step 3, so the root waits inside the gradient allreduce, where Python
    # never runs a signal handler; the root's InterruptWatch thread hears the ctrl-c, says so, ends the job
    marker = tmp_path / "fired"
    python = sys.executable
    cmd = [str(Path(python).parent / "mpiexec"), "-n", "2", python, "-m", "mpi4py", "-m", "distbp", "train",
           "--data", "synthetic:rows=4000,features=16,classes=4", "--epochs", "1000", "--progress", "none",
           "--timeout", "120", "--save", str(tmp_path / "p.npz"), "--checkpoint-dir", str(tmp_path / "ck")]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DISTBP_THREADS="1",
               DISTBP_INJECT_FAULT="1:3:stall", DISTBP_INJECT_FAULT_ONCE=str(marker))
    heartbeat = tmp_path / "ck" / ".heartbeat" / "rank-0.json"  # the root's watchdog's, about once a second

    def root_blocked() -> bool:
        # the root's heartbeat, written after rank 1 stopped, says it waits inside a collective: one that
        # cannot complete. Without the helper thread the job would then run until the watchdog's 120 s, past
        # interrupt_when's 60 s wait
        try:
            beat = json.loads(heartbeat.read_text())
        except (OSError, ValueError):
            return False
        return marker.exists() and beat["waiting"] and beat["time"] > marker.stat().st_mtime + 0.1

    done, seconds = interrupt_when(cmd, env, root_blocked, "the root blocked in a collective", wait=60)
    err = done.stderr
    assert done.returncode != 0
    assert seconds < 30, err  # the 2 s grace, then the job's end; not the 120 s watchdog
    assert err.count("interrupted;") == 1 and "distbp: interrupted;" in err, err  # the root's own line
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not (tmp_path / "p.npz").exists()
