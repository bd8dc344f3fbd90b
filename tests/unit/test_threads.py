"""Threads per rank: the count is derived from cores and local ranks, the environment is pinned
before the pools start, and set_threads changes Numba's pool and both OpenBLAS pools at run time."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from distbp.host import threads

THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DISTBP_THREADS")
LAUNCHER_VARS = ("DISTBP_THREADS", "SLURM_CPUS_PER_TASK", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                 "MPI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NODEID")


def run_fresh_python(code: str, threads_env: int | None) -> dict:
    """Run code in a new interpreter (pools not started yet); it prints one JSON object."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if threads_env is not None:
        env.update({var: str(threads_env) for var in THREAD_VARS})
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def bare_env(monkeypatch):
    """No launcher or thread variables: default_threads must work them out itself."""
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "cores_available", lambda: 8)
    return monkeypatch


def test_importing_threads_does_not_load_numpy():
    got = run_fresh_python("""
        import json, sys
        import distbp.host.threads
        print(json.dumps({m: m in sys.modules for m in ("numpy", "scipy", "numba")}))
    """, threads_env=None)
    assert got == {"numpy": False, "scipy": False, "numba": False}


def test_cores_available_is_the_affinity_mask():
    assert threads.cores_available() == len(os.sched_getaffinity(0)) >= 1


def test_default_threads_divides_cores_by_local_ranks(bare_env):
    assert threads.default_threads() == 8
    bare_env.setenv("MPI_LOCALNRANKS", "2")  # mpich's hydra
    assert threads.local_rank_count() == 2
    assert threads.default_threads() == 4
    bare_env.setenv("MPI_LOCALNRANKS", "3")
    assert threads.default_threads() == 2  # 8 // 3, rounded down so cores are not oversubscribed


def test_local_rank_count_reads_open_mpi_and_slurm(bare_env):
    bare_env.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")
    assert threads.local_rank_count() == 4
    bare_env.delenv("OMPI_COMM_WORLD_LOCAL_SIZE")
    bare_env.setenv("SLURM_TASKS_PER_NODE", "4(x2),3")
    bare_env.setenv("SLURM_NODEID", "2")
    assert threads.local_rank_count() == 3
    bare_env.setenv("SLURM_NODEID", "1")
    assert threads.local_rank_count() == 4


def test_default_threads_is_at_least_one_when_oversubscribed(bare_env):
    bare_env.setenv("MPI_LOCALNRANKS", "16")
    assert threads.default_threads() == 1


def test_distbp_threads_overrides_the_default(bare_env):
    bare_env.setenv("MPI_LOCALNRANKS", "2")
    bare_env.setenv("DISTBP_THREADS", "3")
    assert threads.default_threads() == 3


def test_pin_threads_env_sets_every_variable_before_the_pools_start():
    got = run_fresh_python("""
        import json, os
        from distbp.host.threads import pin_threads_env, blas_threads
        pin_threads_env(1)
        env = {v: os.environ[v] for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DISTBP_THREADS")}
        import numpy, scipy.linalg, numba
        print(json.dumps({"env": env, "numba": numba.config.NUMBA_NUM_THREADS, "blas": blas_threads()}))
    """, threads_env=None)
    assert set(got["env"].values()) == {"1"}
    assert got["numba"] == 1
    assert len(got["blas"]) >= 2 and set(got["blas"].values()) == {1}


def test_set_threads_changes_numba_and_both_blas_pools():
    got = run_fresh_python("""
        import json
        import numpy, scipy.linalg, numba
        from distbp.host.threads import set_threads, blas_threads
        seen = {"start": [numba.get_num_threads(), blas_threads()]}
        for n in (1, 2):
            set_threads(n)
            seen[n] = [numba.get_num_threads(), blas_threads()]
        print(json.dumps(seen))
    """, threads_env=2)
    names = sorted(got["start"][1])
    # numpy's 64-bit-integer OpenBLAS and scipy's (the one numba's np.dot calls)
    assert any("scipy_openblas64_" in name for name in names), names
    assert any("scipy_openblas" in name and "64_" not in name for name in names), names
    assert got["start"] == [2, {name: 2 for name in names}]
    assert got["1"] == [1, {name: 1 for name in names}]
    assert got["2"] == [2, {name: 2 for name in names}]


def test_pin_after_numba_loaded_sets_the_pool_and_keeps_numba_compiling():
    got = run_fresh_python("""
        import json, os
        import numba, numpy
        from distbp.host.threads import pin_threads_env, blas_threads
        pin_threads_env(1)

        @numba.njit(parallel=True)
        def total(x):
            s = 0.0
            for i in numba.prange(x.size):
                s += x[i]
            return s

        print(json.dumps({"numba": numba.get_num_threads(), "blas": blas_threads(),
                          "sum": total(numpy.ones(1000)), "omp": os.environ["OMP_NUM_THREADS"]}))
    """, threads_env=2)
    assert got["numba"] == 1 and set(got["blas"].values()) == {1}
    assert got["sum"] == 1000.0 and got["omp"] == "1"


def test_bad_thread_counts_are_rejected():
    with pytest.raises(ValueError, match="thread count"):
        threads.set_threads(0)
    with pytest.raises(ValueError, match="thread count"):
        threads.pin_threads_env(-1)


def test_default_cache_dir_honours_numba_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert threads.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert threads.default_cache_dir().endswith((".numba_cache", os.path.join("distbp", "numba")))


def test_idle_pool_workers_spin_briefly_unless_the_user_chose():
    from distbp.host.threads import OPENBLAS_TIMEOUT, OPENMP_SPIN_COUNT, set_pool_waits

    env = {}
    set_pool_waits(env)
    assert env == {"GOMP_SPINCOUNT": OPENMP_SPIN_COUNT, "OPENBLAS_THREAD_TIMEOUT": OPENBLAS_TIMEOUT}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "GOTO_THREAD_TIMEOUT": "28"}
    set_pool_waits(mine)
    assert mine == {"OMP_WAIT_POLICY": "ACTIVE", "GOTO_THREAD_TIMEOUT": "28"}  # an explicit choice wins
    spin = {"GOMP_SPINCOUNT": "5", "OPENBLAS_THREAD_TIMEOUT": "20"}
    set_pool_waits(spin)
    assert spin == {"GOMP_SPINCOUNT": "5", "OPENBLAS_THREAD_TIMEOUT": "20"}


def test_a_step_too_small_to_share_gets_one_thread_and_a_larger_one_keeps_the_default():
    from distbp.host.threads import SMALL_STEP_FLOPS, step_threads

    # 64-128-10 at batch 128: 7 MFLOP, measured 2.7x slower on two threads (benchmarks/threads.py)
    assert step_threads(2, 64 * 128 + 128 + 128 * 10 + 10, 128) == 1
    # 784-256-10 at batch 128: 156 MFLOP, 0.61-0.76x the time on two (one noisy run: 1.61x)
    assert step_threads(2, 784 * 256 + 256 + 256 * 10 + 10, 128) == 2
    assert step_threads(4, int(-(-SMALL_STEP_FLOPS // 6)), 1) == 4  # the threshold itself is not small
