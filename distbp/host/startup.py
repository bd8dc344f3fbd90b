"""What every command does first, before numpy, SciPy, Numba or mpi4py.MPI load: pin the threads per rank, choose a
safe Numba cache, set MPI's defaults (`prepare_environment`); and, once MPI is up, tell a real job from processes
that each started as a 1-rank job of their own (`split_job_exit`). Standard library and distbp.host only: the
command line (distbp.cli) and `distbp bench` (distbp.bench) both start this way.
"""

from __future__ import annotations

import os
import sys
import time

from distbp.host import numbacache, threads
from distbp.host.launcher import launcher_rank, split_job_error

SPLIT_REPORT_WAIT_S = 1.0  # how long rank 0 of a split job lets the others end before it exits 2


def early_threads(argv: list[str]) -> int | None:
    """--threads from the command line or the --config file, read without numpy."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
        if arg.startswith("--threads=") and arg[10:].isdigit():
            return int(arg[10:])
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg[9:] if arg.startswith("--config=") else None
        if path:
            if not os.path.isfile(path):
                return None  # a FIFO would block here; the config loader reports it properly later
            try:
                import tomllib
                with open(path, "rb") as fh:
                    doc = tomllib.loads(fh.read(1 << 20).decode("utf-8"))
                value = doc.get("train", doc).get("threads")
                return int(value) if isinstance(value, int) and value > 0 else None
            except Exception:  # noqa: BLE001 (any failure: the config loader reports a bad file later)
                return None  # the config loader reports a bad file properly later
    return None


def prepare_environment(argv: list[str]) -> tuple[int, str | None]:
    """Pin threads per rank and set MPI/Numba defaults; must run before numpy or mpi4py.MPI load.

    Returns the thread count and, when the request was more than the cores this rank may run on
    (the cap), a note saying so for the header.
    """
    n, note = threads.choose_threads(early_threads(argv))
    threads.pin_threads_env(n)
    # numba unpickles what it finds there: a folder or file another user can write is code run as this user,
    # so it is checked before numba loads, and an unsafe one gives way to a private folder (host/numbacache.py)
    cache_dir, unsafe, removed = numbacache.choose(threads.default_cache_dir())
    os.environ["NUMBA_CACHE_DIR"] = cache_dir
    numbacache.warn(unsafe if launcher_rank() == 0 else None, removed)
    # MPICH's default intra-node allreduce flips between a fast and a 4x slower mode from launch to
    # launch (measured); this algorithm was fast and stable. A user's own setting wins.
    os.environ.setdefault("MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM", "reduce_scatter_allgather")
    return n, note


def split_job_exit(comm) -> int | None:
    """None for a real job; when every process is its own 1-rank job, the exit code of this one.

    The launcher's rank 0 says why and exits 2 a moment after the others, which exit 0 at once: the
    launcher then reports rank 0's 2, the refusal that job scripts recognise (launch/slurm.sbatch does not
    restart it). Were the others to exit 2 too, srun --kill-on-bad-exit would end whichever was slower,
    rank 0 perhaps before it printed, and report the kill's 143 instead.
    """
    split = split_job_error(comm.size, comm.library)
    if split is None:
        return None
    if launcher_rank() != 0:
        return 0
    print(f"distbp: error: {split}", file=sys.stderr, flush=True)
    time.sleep(SPLIT_REPORT_WAIT_S)
    return 2
