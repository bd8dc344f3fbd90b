"""launch/local: N ranks with the right size and thread settings, exit codes forwarded,
a failure on one rank ends the whole job quickly, no process outlives its job, --restarts reruns."""

import json
import os
import signal
import subprocess
import textwrap
import time

import pytest
from jobs import assert_no_orphans, job_env, launcher_command, run_job

pytestmark = pytest.mark.timeout(120)


def write_script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# ranks report through files: mpiexec interleaves the ranks' stdout byte by byte
REPORT = """
    import json, os, sys
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    env = {v: os.environ.get(v) for v in ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
           "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", "NUMBA_CACHE_DIR")}
    with open(os.path.join(sys.argv[1], f"rank-{comm.rank}.json"), "w") as f:
        json.dump({"rank": comm.rank, "size": comm.size, "env": env,
                   "cpus": sorted(os.sched_getaffinity(0))}, f)
"""

WAIT_FOREVER = """
    import os, signal, sys, time
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    open(os.path.join(sys.argv[1], f"rank-{comm.rank}.ready"), "w").close()
    comm.Barrier()
    {action}
    comm.Barrier()  # the other ranks block here until the job is torn down
    time.sleep(600)
"""


def reports(folder) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in folder.glob("rank-*.json")), key=lambda r: r["rank"])


def wait_for(paths, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"ranks never got ready: {paths}"
        time.sleep(0.05)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_every_rank_sees_the_job_size_and_one_thread(tmp_path, n):
    script = write_script(tmp_path, "report.py", REPORT)
    done = run_job(n, ["python", script, str(tmp_path)], timeout=60)
    assert done.returncode == 0, done.output
    got = reports(tmp_path)
    assert [r["rank"] for r in got] == list(range(n)), done.output
    for r in got:
        assert r["size"] == n
        threads = {k: v for k, v in r["env"].items() if k.endswith("THREADS")}
        assert set(threads.values()) == {"1"}, r
        assert r["env"]["MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"] == "reduce_scatter_allgather"
        assert r["env"]["NUMBA_CACHE_DIR"]


def test_default_threads_split_the_cores_between_ranks(tmp_path):
    script = write_script(tmp_path, "report.py", REPORT)
    cores = len(os.sched_getaffinity(0))
    # the suite pins 1 thread in its own environment; a launcher that left the variables alone would pass them
    # on, so the job starts from another value that the launcher must replace
    inherited = {var: "7" for var in ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    done = run_job(2, ["python", script, str(tmp_path)], threads=None, timeout=60, env=inherited)
    assert done.returncode == 0, done.output
    for r in reports(tmp_path):
        assert r["env"]["DISTBP_THREADS"] == r["env"]["NUMBA_NUM_THREADS"] == str(max(1, cores // 2))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="binding two ranks needs two cores")
def test_ranks_that_fit_are_bound_to_their_own_cores(tmp_path):
    script = write_script(tmp_path, "report.py", REPORT)
    done = run_job(2, ["python", script, str(tmp_path)], timeout=60)
    first, second = (r["cpus"] for r in reports(tmp_path))
    assert len(first) == len(second) == 1 and first != second, done.output


def test_oversubscribed_or_unbound_ranks_may_use_every_core(tmp_path):
    script = write_script(tmp_path, "report.py", REPORT)
    cores = sorted(os.sched_getaffinity(0))
    run_job(2, ["--bind", "none", "python", script, str(tmp_path)], timeout=60)
    assert [r["cpus"] for r in reports(tmp_path)] == [cores, cores]
    for stale in tmp_path.glob("rank-*.json"):
        stale.unlink()
    n = len(cores) + 1
    run_job(n, ["python", script, str(tmp_path)], timeout=60)
    assert [r["cpus"] for r in reports(tmp_path)] == [cores] * n


def test_users_allreduce_algorithm_is_kept(tmp_path):
    script = write_script(tmp_path, "report.py", REPORT)
    done = run_job(2, ["python", script, str(tmp_path)],
                   env={"MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "recursive_doubling"})
    assert done.returncode == 0, done.output
    assert {r["env"]["MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"] for r in reports(tmp_path)} == {"recursive_doubling"}


def test_verbose_prints_the_mpiexec_command(tmp_path):
    script = write_script(tmp_path, "report.py", REPORT)
    done = run_job(2, ["python", script, str(tmp_path)], env={"DISTBP_VERBOSE": "1"})
    assert done.returncode == 0, done.output
    assert "mpiexec -n 2" in done.stderr and f"-m mpi4py {script} {tmp_path}" in done.stderr


def test_exit_code_of_one_rank_is_forwarded(tmp_path):
    script = write_script(tmp_path, "exit3.py", """
        import sys
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        comm.Barrier()
        if comm.rank == 1:
            sys.exit(3)
        comm.Barrier()
    """)
    done = run_job(2, ["python", script, str(tmp_path)], timeout=60)
    assert done.returncode == 3, done.output
    assert_no_orphans(script)


def test_exception_on_one_rank_ends_the_job_naming_the_rank(tmp_path):
    script = write_script(tmp_path, "boom.py", WAIT_FOREVER.replace(
        "{action}", 'if comm.rank == 1: raise ValueError("boom on purpose")'))
    done = run_job(3, ["python", script, str(tmp_path)], timeout=30)  # without mpi4py's run mode this would hang
    assert done.returncode != 0, done.output
    assert "ValueError: boom on purpose" in done.stderr
    assert "rank 1 in comm" in done.stderr, done.output
    assert_no_orphans(script)


def test_sigkill_of_one_rank_ends_the_job_without_orphans(tmp_path):
    script = write_script(tmp_path, "killed.py", WAIT_FOREVER.replace(
        "{action}", "if comm.rank == 2: os.kill(os.getpid(), signal.SIGKILL)"))
    done = run_job(3, ["python", script, str(tmp_path)], timeout=30)
    assert done.returncode != 0, done.output
    assert_no_orphans(script)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_launcher_ends_the_job_without_orphans(tmp_path, sig):
    script = write_script(tmp_path, "wait.py", WAIT_FOREVER.replace("{action}", "pass"))
    proc = subprocess.Popen(launcher_command(2, ["python", script, str(tmp_path)]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(None), start_new_session=True)
    try:
        wait_for([tmp_path / f"rank-{r}.ready" for r in range(2)])
        proc.send_signal(sig)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig
    assert_no_orphans(script)


def test_restarts_rerun_a_failed_job_and_say_so(tmp_path):
    marker = tmp_path / "failed-once"
    script = write_script(tmp_path, "flaky.py", f"""
        import os, sys
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        first = not os.path.exists({str(marker)!r})
        comm.Barrier()
        if comm.rank == 0:
            print("argv", sys.argv[1:], flush=True)
            open({str(marker)!r}, "w").close()
        sys.exit(2 if first else 0)
    """)
    done = run_job(2, ["--restarts", "2", "python", script, "--lr", "0.1"], timeout=60)
    assert done.returncode == 0, done.output
    assert "launch/local: job failed (exit 2); restart 1/2 from the latest checkpoint" in done.stderr
    assert "restart 2/2" not in done.stderr
    # --resume is only for `distbp train`: a plain script gets its arguments unchanged
    assert done.stdout.count("argv ['--lr', '0.1']") == 2, done.output


def test_restarts_give_up_after_k_tries(tmp_path):
    script = write_script(tmp_path, "fail.py", "import sys\nsys.exit(4)\n")
    done = run_job(2, ["--restarts", "2", "python", script], timeout=60)
    assert done.returncode == 4
    assert "restart 1/2" in done.stderr and "restart 2/2" in done.stderr
    assert "restart 3/2" not in done.stderr


def test_restarted_distbp_train_gets_resume(tmp_path):
    # rank 0 raises at step 0 on every try: the job aborts (exit 1), which a restart might fix
    train = ["distbp", "train", "--data", "synthetic:rows=100,features=4,classes=2", "--epochs", "1",
             "--progress", "none"]
    done = run_job(1, ["--restarts", "1", *train], env={"DISTBP_VERBOSE": "1", "DISTBP_INJECT_FAULT": "0:0:raise"},
                   timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    commands = [line for line in done.stderr.splitlines() if "mpiexec -n 1" in line]
    assert len(commands) == 2, done.output
    assert commands[0].endswith("-m mpi4py -m distbp " + " ".join(train[1:]))
    assert commands[1].endswith("-m mpi4py -m distbp " + " ".join(train[1:]) + " --resume")


def test_a_distbp_train_error_is_not_restarted(tmp_path):
    # exit 2 is a clear error of the input (here an unknown option): a restart would only hide it
    done = run_job(1, ["--restarts", "2", "distbp", "train", "--no-such-option-for-this-test"],
                   env={"DISTBP_VERBOSE": "1"}, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.output
    assert "not restarting" in done.stderr and "unrecognized arguments" in done.stderr, done.output
    assert len([line for line in done.stderr.splitlines() if "mpiexec -n 1" in line]) == 1, done.output


def test_bad_arguments_are_a_clear_error(tmp_path):
    done = run_job(0, ["python", "-c", "pass"], timeout=30)
    assert done.returncode == 2 and "-n and --threads must be >= 1" in done.stderr
