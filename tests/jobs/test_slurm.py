"""distbp under a real one-node SLURM (Debian's slurm-wlm, started by the test in a temporary folder):
the documented srun line is one P-rank job equal to 1 rank, plain srun is refused with the fix, a killed
rank ends the step at once, launch/slurm.sbatch restarts to the parameters of an uninterrupted run, and
threads follow --cpus-per-task without exceeding the cores srun bound the rank to.

Skipped, with the reason, only where SLURM cannot be installed or started (not root, no apt-get).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jobs import load_npz
from slurm import LocalSlurm, missing_reason

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DATA = ["--data", "synthetic:rows=600,features=12,classes=3,test=60", "--layers", "12,16,3", "--batch-size", "60",
        "--lr", "0.01", "--progress", "none", "--timeout", "60"]
# the README's line (docs/cluster.md, SLURM), for this 2-core machine
SRUN = ["srun", "--mpi=pmi2", "--kill-on-bad-exit=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--cpu-bind=cores"]
FAULT_SECONDS = 10


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        cluster.stop()
        pytest.skip(f"a local SLURM would not start here: {e}")
    yield cluster
    cluster.stop()


def job_env(slurm, **extra) -> dict:
    env = slurm.env(NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".numba_cache")))
    for var in ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "DISTBP_INJECT_FAULT", "DISTBP_INJECT_FAULT_ONCE", "DISTBP_VERBOSE"):
        env.pop(var, None)
    env.update(extra)
    env["PATH"] = f"{Path(PYTHON).parent}:{env['PATH']}"
    return env


def run(cmd, env, timeout=180, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def train(*flags) -> list[str]:
    return [PYTHON, "-m", "mpi4py", "-m", "distbp", "train", *DATA, *flags]


def test_the_documented_srun_line_is_one_job_equal_to_one_rank(slurm, tmp_path):
    flags = ["--dtype", "float64", "--epochs", "2"]
    two = run([*SRUN, "-n", "2", *train(*flags, "--save", str(tmp_path / "two.npz"))], job_env(slurm))
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("distbp: 2 rank(s) x 1 thread(s)") == 1, two.stdout  # one job, one header
    one = run(["srun", "--mpi=pmi2", "-n", "1", *train(*flags, "--save", str(tmp_path / "one.npz"))], job_env(slurm))
    assert one.returncode == 0, one.stdout + one.stderr
    a, b = load_npz(tmp_path / "two.npz"), load_npz(tmp_path / "one.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-10, err_msg=k)


def test_srun_without_mpi_is_refused_with_the_fix(slurm, tmp_path):
    done = run(["srun", "-n", "2", *train("--epochs", "1")], job_env(slurm))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp:")]
    assert len(errors) == 1, done.stderr  # the launcher's rank 0 reports; the other task stops silently
    assert "srun started 2 processes" in errors[0] and "srun --mpi=pmi2" in errors[0], done.stderr
    assert "epoch" not in done.stdout and "Traceback" not in done.stderr


def test_a_killed_rank_ends_the_step_at_once(slurm, tmp_path):
    marker = tmp_path / "fired"
    env = job_env(slurm, DISTBP_INJECT_FAULT="1:3:kill", DISTBP_INJECT_FAULT_ONCE=str(marker))
    done = run([*SRUN, "-n", "2", *train("--epochs", "3")], env)
    assert done.returncode != 0, done.stdout + done.stderr
    assert marker.exists(), "the injected fault never fired\n" + done.stdout + done.stderr
    # without --kill-on-bad-exit the survivor would wait for distbp's --timeout (60 s here)
    assert time.time() - marker.stat().st_mtime < FAULT_SECONDS, done.stderr
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).returncode == 1  # no survivor


FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


def sbatch_wait(args: list[str], env, timeout: float = 240) -> subprocess.CompletedProcess:
    """`sbatch ARGS` and wait for the job: its exit code as returncode, like `sbatch --wait` (which polls the
    controller only every few seconds, so each job would take ~10 s here), from `scontrol show job`."""
    submitted = run(["sbatch", "--parsable", *args], env)
    if submitted.returncode != 0:
        return submitted
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = dict(kv.split("=", 1) for kv in run(["scontrol", "-o", "show", "job", job], env).stdout.split()
                      if "=" in kv)
        if fields.get("JobState") in FINISHED:
            code = int(fields.get("ExitCode", "1:0").split(":")[0])
            return subprocess.CompletedProcess(args, code, submitted.stdout, f"job {job}: {fields['JobState']}")
        time.sleep(0.2)
    run(["scancel", job], env)
    pytest.fail(f"slurm job {job} still running after {timeout} s")


def sbatch(slurm, tmp_path, name, options, args, **extra) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / f"{name}.out"
    env = job_env(slurm, CHECKPOINT_DIR=str(tmp_path / f"{name}-ck"), **extra)
    done = sbatch_wait([f"--output={out}", f"--job-name={name}", "--nodes=1", *options,
                        str(REPO / "launch" / "slurm.sbatch"), *args], env)
    return done, out.read_text() if out.exists() else ""


def test_the_sbatch_template_restarts_to_the_uninterrupted_parameters(slurm, tmp_path):
    flags = [*DATA, "--epochs", "2", "--checkpoint-steps", "3"]
    tasks = ["--ntasks-per-node=2", "--cpus-per-task=1"]
    clean, log = sbatch(slurm, tmp_path, "clean", tasks, [*flags, "--save", str(tmp_path / "clean.npz")])
    assert clean.returncode == 0, log + clean.stderr
    marker = tmp_path / "fired"
    hit, log = sbatch(slurm, tmp_path, "hit", tasks, [*flags, "--save", str(tmp_path / "hit.npz")],
                      DISTBP_INJECT_FAULT="1:13:kill", DISTBP_INJECT_FAULT_ONCE=str(marker))
    assert hit.returncode == 0, log + hit.stderr
    assert marker.exists() and "restart 1/3 from the latest checkpoint" in log, log
    assert log.count("distbp: 2 rank(s) x 1 thread(s)") == 2, log
    a, b = load_npz(tmp_path / "hit.npz"), load_npz(tmp_path / "clean.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_sbatch_template_does_not_restart_a_refused_job(slurm, tmp_path):
    done, log = sbatch(slurm, tmp_path, "nompi", ["--ntasks-per-node=2", "--cpus-per-task=1"],
                       [*DATA, "--epochs", "1"], SRUN_MPI="none")
    assert done.returncode != 0
    assert log.count("srun started 2 processes") == 1 and "not restarting" in log, log
    assert "restart 1/" not in log and "epoch" not in log


def test_threads_follow_cpus_per_task(slurm, tmp_path):
    done, log = sbatch(slurm, tmp_path, "wide", ["--ntasks-per-node=1", "--cpus-per-task=2"],
                       [*DATA, "--epochs", "1"])
    assert done.returncode == 0, log
    assert "distbp: 1 rank(s) x 2 thread(s);" in log, log


def test_threads_never_exceed_the_cores_srun_bound(slurm, tmp_path):
    # Slurm 22.05 binds an inner srun without --cpus-per-task to one CPU per task, while
    # SLURM_CPUS_PER_TASK still says the allocation's 2
    probe = "import os; print('affinity', len(os.sched_getaffinity(0)))"
    script = tmp_path / "inner.sh"
    script.write_text("#!/bin/bash\n"
                      f"srun --mpi=pmi2 --cpu-bind=cores {PYTHON} -c \"{probe}\"\n"
                      f"srun --mpi=pmi2 --cpu-bind=cores {' '.join(train('--epochs', '1'))}\n")
    out = tmp_path / "inner.out"
    done = sbatch_wait([f"--output={out}", "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", str(script)],
                       job_env(slurm))
    log = out.read_text() if out.exists() else ""
    assert done.returncode == 0, log + done.stderr
    cores = int(log.split("affinity ")[1].split()[0])
    if cores >= 2:
        assert "distbp: 1 rank(s) x 2 thread(s);" in log, log
    else:
        assert (f"distbp: 1 rank(s) x {cores} thread(s) (SLURM_CPUS_PER_TASK asked for 2, capped at the "
                f"{cores} core(s) this rank may run on)") in log, log


def test_open_mpi_under_srun_needs_pmix_and_gets_one_job(slurm, ompi_venv, tmp_path):
    python = str(ompi_venv / "bin" / "python")
    flags = [*DATA, "--epochs", "1"]
    plain = run(["srun", "-n", "2", python, "-m", "mpi4py", "-m", "distbp", "train", *flags], job_env(slurm))
    assert plain.returncode != 0
    errors = [line for line in plain.stderr.splitlines() if line.startswith("distbp:")]
    assert len(errors) == 1 and "uses Open MPI" in errors[0] and "srun --mpi=pmix" in errors[0], plain.stderr
    # the line docs/cluster.md gives for Open MPI
    pmix = run(["srun", "--mpi=pmix", "--kill-on-bad-exit=1", "-n", "2", python, "-m", "mpi4py", "-m", "distbp",
                "train", *flags], job_env(slurm, PMIX_MCA_psec="native"))
    assert pmix.returncode == 0, pmix.stdout + pmix.stderr
    assert pmix.stdout.count("distbp: 2 rank(s) x 1 thread(s)") == 1, pmix.stdout


def test_mpiexec_inside_an_allocation_is_the_fallback(slurm, tmp_path):
    # hydra reads the allocation from SLURM and starts its proxies with srun itself
    mpiexec = str(Path(PYTHON).parent / "mpiexec")
    done = run(["salloc", "-n", "2", mpiexec, "-n", "2", *train("--epochs", "1")], job_env(slurm))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("distbp: 2 rank(s) x 1 thread(s)") == 1, done.stdout
