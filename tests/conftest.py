"""Every test process gets one thread per pool and a shared Numba cache in the checkout.

Set here, at import, because Numba and OpenBLAS read these variables once, when first
loaded, and pytest imports conftest.py before any test module. DISTBP_TEST_THREADS
overrides the count (e.g. to exercise parallel kernels with several threads).
"""

import os
import sys
from pathlib import Path

import pytest

from distbp.threads import pin_threads_env

REPO = Path(__file__).resolve().parent.parent
# lets test modules `from jobs import run_job` whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
pin_threads_env(int(os.environ.get("DISTBP_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's top folder (holds pyproject.toml and launch/)."""
    return REPO


def pytest_configure(config):
    """Under `mpiexec ... pytest --with-mpi`, only rank 0 reports progress; other ranks print just failures."""
    if not config.getoption("with_mpi", default=False):
        return
    from mpi4py import MPI

    if MPI.COMM_WORLD.rank > 0:
        config.option.verbose = -2
        config.option.no_header = True
