"""A failure on one rank ends the whole job quickly, with a message naming the rank and the cause.

Each test starts a small 2-rank job with mpiexec in its own process group, always with a timeout,
and kills the group afterwards whatever happened.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = next((p for p in (Path(sys.executable).parent / "mpiexec", shutil.which("mpiexec")) if p and Path(p).exists()),
               None)
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found beside the interpreter or on PATH")

PRELUDE = """
import os, signal, sys, time
import numpy as np
from distbp.errors import DistbpError
from distbp.comm.mpi import world
from distbp.train.watchdog import Watchdog
comm = world()

def fault_now():  # when the fault happens: the test measures the job's end from here
    with open(os.environ["DISTBP_TEST_FAULT_AT"], "w") as f:
        f.write(repr(time.time()))
"""


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_job(tmp_path: Path, body: str, ranks: int = 2, timeout: float = 60.0):
    """Run PRELUDE + body on `ranks` ranks; returns (exit code, stdout + stderr, seconds, processes left).

    seconds: from the body's fault_now() to the job's end (None when the body never called it). A promise
    that a fault ends the job quickly is timed from the fault, not from the job's start-up."""
    script, fault_at = tmp_path / "job.py", tmp_path / "fault-at"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM="reduce_scatter_allgather", DISTBP_TEST_FAULT_AT=str(fault_at))
    job = subprocess.Popen([str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)
    try:
        out, _ = job.communicate(timeout=timeout)
        ended = time.time()
        seconds = ended - float(fault_at.read_text()) if fault_at.exists() else None
        # every process of the job (proxies, ranks) must be gone shortly after mpiexec returns
        deadline = time.monotonic() + 2.0
        while group_alive(job.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = group_alive(job.pid)
    finally:
        if group_alive(job.pid):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    return job.returncode, out, seconds, left


def test_a_rank_that_raises_mid_allreduce_loop_ends_the_job(tmp_path):
    code, out, seconds, left = run_job(tmp_path, """
        buf = np.ones(1000)
        for step in range(10**9):
            if comm.rank == 1 and step == 50:
                fault_now()
                raise RuntimeError("cannot read shard 7")
            comm.allreduce_sum(buf)
    """)
    assert code != 0 and seconds < 10 and not left
    assert "RuntimeError: cannot read shard 7" in out
    assert "rank 1" in out  # MPICH's abort line names the rank


def test_comm_abort_names_the_rank_and_cause(tmp_path):
    code, out, seconds, left = run_job(tmp_path, """
        buf = np.ones(1000)
        for step in range(10**9):
            if comm.rank == 1 and step == 50:
                fault_now()
                comm.abort("checkpoint directory is not writable", code=3)
            comm.allreduce_sum(buf)
    """)
    assert code == 3 and seconds < 10 and not left
    assert "distbp: rank 1: checkpoint directory is not writable" in out


def test_a_rank_killed_with_sigkill_ends_the_job_and_no_process_survives(tmp_path):
    code, out, seconds, left = run_job(tmp_path, """
        buf = np.ones(1000)
        for step in range(10**9):
            if comm.rank == 1 and step == 50:
                fault_now()
                os.kill(os.getpid(), signal.SIGKILL)
            comm.allreduce_sum(buf)
    """)
    assert code != 0 and seconds < 10
    assert not left


def test_hard_exit_ends_the_job_even_when_mpi_abort_hangs_holding_the_gil(tmp_path):
    # mpi4py calls MPI_Abort with the GIL held: if it never returns, no Python thread can run again, so the
    # backstop must be a C thread (faulthandler's), which says where the process hung and exits
    code, out, seconds, left = run_job(tmp_path, """
        import ctypes
        class WedgedAbort:
            def Abort(self, code):
                ctypes.PyDLL(None).sleep(3600)  # a C call that keeps the GIL, like a wedged MPI_Abort
        if comm.rank == 0:
            comm._comm = WedgedAbort()
            fault_now()
            comm.hard_exit(7)
        comm.barrier()
    """)
    assert code != 0 and seconds < 15 and not left
    assert "Timeout (0:00:0" in out and "hard_exit" in out  # the backstop's stack dump shows where it hung


@pytest.mark.parametrize("stall", ["time.sleep(3600)", "os.kill(os.getpid(), signal.SIGSTOP)"])
def test_a_stalled_rank_is_caught_by_the_other_ranks_watchdog(tmp_path, stall):
    code, out, seconds, left = run_job(tmp_path, f"""
        dog = Watchdog(comm, timeout=3.0)
        buf = np.ones(1000)
        for step in range(10**9):
            if comm.rank == 1 and step == 20:
                fault_now()
                {stall}
            with dog.section("gradient allreduce", step):
                comm.allreduce_sum(buf)
    """)
    assert code != 0 and not left
    assert 2.5 < seconds < 3.0 + 9  # the watchdog waits out its 3 s from the stall (measured 3.3 s), no longer
    assert ("distbp: rank 0: no progress for 3 s in gradient allreduce at step 20 "
            "(a peer rank is stalled or dead)") in out


def test_a_watchdog_quiet_job_finishes_normally(tmp_path):
    code, out, seconds, left = run_job(tmp_path, """
        dog = Watchdog(comm, timeout=3.0)
        buf = np.ones(1000)
        for step in range(200):
            with dog.section("gradient allreduce", step):
                comm.allreduce_sum(buf)
        dog.stop()
        assert buf[0] == 2.0 ** 200
        finished = np.ones(1)
        comm.allreduce_sum(finished)  # one line from rank 0: two ranks printing could interleave
        if comm.is_root:
            print(f"ranks finished: {int(finished[0])}", flush=True)
    """)
    assert code == 0, out
    assert "ranks finished: 2" in out and "no progress" not in out


def test_a_configuration_mismatch_is_printed_once_and_every_rank_exits(tmp_path):
    code, out, seconds, left = run_job(tmp_path, """
        fault_now()
        try:
            comm.check_agree("configuration", {"lr": 0.1 if comm.rank == 0 else 0.2, "epochs": 3})
        except DistbpError as error:
            if comm.is_root:
                print(f"distbp: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
    """)
    assert code == 2 and seconds < 10 and not left
    assert out.count("rank 1 differs from rank 0: lr: 0.1 on rank 0 vs 0.2") == 1
    assert "epochs" not in out
