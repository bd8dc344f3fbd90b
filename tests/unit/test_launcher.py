"""A launcher that started several processes which MPI sees as 1-rank jobs is refused, with the fix named;
progress bars and thread counts follow what the launcher really gives the rank."""

import os
import subprocess
import sys

import pytest

from distbp.host import launcher, threads
from distbp.observe.progress import Progress, wants_bar

MPICH = "MPICH Version:      5.0.2\nMPICH Release date: …"
OPEN_MPI = "Open MPI v5.0.11, package: Open MPI …"
LAUNCH_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_STEP_ID", "SLURM_PTY_PORT", "OMPI_COMM_WORLD_SIZE",
               "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "PMI_FD", "PMI_PORT")
DATA = ["--data", "synthetic:rows=300,features=6,classes=2", "--epochs", "1"]


def test_srun_without_pmi_is_named_with_the_fix_for_each_mpi():
    env = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    mpich = launcher.split_job_error(1, MPICH, env)
    assert "srun started 2 processes (SLURM_STEP_NUM_TASKS=2), but MPI sees 1 rank" in mpich
    assert "srun --mpi=pmi2" in mpich and "mpiexec" in mpich
    assert "srun --mpi=pmix" in launcher.split_job_error(1, OPEN_MPI, env)
    assert "PMIX_MCA_psec=native" in launcher.split_job_error(1, OPEN_MPI, env)


def test_another_mpis_launcher_is_named():
    assert "mpiexec of that MPI" in launcher.split_job_error(1, MPICH, {"OMPI_COMM_WORLD_SIZE": "4"})
    assert "Open MPI's mpirun" in launcher.split_job_error(1, OPEN_MPI, {"PMI_SIZE": "3"})


def test_no_complaint_when_mpi_sees_the_processes_or_no_launcher_says_more_than_one():
    assert launcher.split_job_error(2, MPICH, {"SLURM_STEP_NUM_TASKS": "2"}) is None
    assert launcher.split_job_error(1, MPICH, {"SLURM_STEP_NUM_TASKS": "1"}) is None
    # a batch script's or salloc shell's SLURM_NTASKS is the allocation, not processes running now
    assert launcher.split_job_error(1, MPICH, {"SLURM_NTASKS": "4", "SLURM_NPROCS": "4"}) is None
    # hydra inside salloc: its proxy is a 1-task srun step, PMI_SIZE is the job
    assert launcher.split_job_error(2, MPICH, {"SLURM_STEP_NUM_TASKS": "1", "PMI_SIZE": "2"}) is None


def test_the_launchers_rank_decides_who_reports():
    assert launcher.launcher_rank({"SLURM_PROCID": "3"}) == 3
    assert launcher.launcher_rank({"OMPI_COMM_WORLD_RANK": "1"}) == 1
    assert launcher.launcher_rank({}) == 0


def train_alone(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(env_extra, DISTBP_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mpi4py", "-m", "distbp", "train", *DATA], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variables, fix", [
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}, "srun --mpi=pmi2"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, "mpiexec of that MPI"),
], ids=["srun", "openmpi-mpirun"])
def test_a_split_job_stops_before_training_with_one_error_line(variables, fix):
    done = train_alone(variables)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp:")]
    assert len(errors) == 1 and errors[0].startswith("distbp: error: ") and fix in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "epoch" not in done.stdout


def test_only_the_launchers_rank_0_reports_a_split_job_and_the_others_leave_it_the_exit_code():
    # the others end quietly with 0, so that the launcher reports rank 0's 2 (a refusal), not a kill's 143
    done = train_alone({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_STEP_ID": "0"})
    assert done.returncode == 0
    assert "distbp:" not in done.stderr and "epoch" not in done.stdout


class Terminal:
    def isatty(self):
        return True


@pytest.mark.parametrize("env, bar", [
    ({"TERM": "xterm"}, True),
    ({"TERM": "xterm", "OMPI_COMM_WORLD_SIZE": "2"}, False),  # Open MPI's pty, output maybe in a file
    ({"TERM": "xterm", "SLURM_STEP_ID": "0"}, False),  # srun relays the output
    ({"TERM": "xterm", "SLURM_STEP_ID": "0", "SLURM_PTY_PORT": "4242"}, True),  # srun --pty
    ({"TERM": "dumb"}, False),
], ids=["terminal", "openmpi-pty", "srun", "srun-pty", "dumb"])
def test_a_bar_only_on_the_users_own_terminal(env, bar):
    assert wants_bar(Terminal(), env) is bar


def test_progress_bar_is_still_the_override(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert Progress(10, "e", "auto", stream=Terminal()).mode == "lines"
    assert Progress(10, "e", "bar", stream=Terminal()).mode == "bar"


@pytest.fixture
def launcher_says(monkeypatch):
    for var in ("DISTBP_THREADS", "SLURM_CPUS_PER_TASK", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "cores_available", lambda: 1)
    return monkeypatch


def test_threads_are_capped_at_the_affinity_mask_and_the_cap_is_said(launcher_says):
    launcher_says.setenv("SLURM_CPUS_PER_TASK", "2")  # srun bound the task to 1 core anyway
    n, note = threads.choose_threads()
    assert n == 1 and note == "SLURM_CPUS_PER_TASK asked for 2, capped at the 1 core(s) this rank may run on"
    assert threads.choose_threads(4) == (1, "--threads asked for 4, capped at the 1 core(s) this rank may run on")
    launcher_says.setenv("SLURM_CPUS_PER_TASK", "1")
    assert threads.choose_threads() == (1, None)


def test_the_header_says_when_threads_were_capped():
    env = {k: v for k, v in os.environ.items() if k not in ("DISTBP_THREADS", *LAUNCH_VARS)}
    env["SLURM_CPUS_PER_TASK"] = "2"
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "distbp", "train", *DATA], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("1 rank(s) x 1 thread(s) (SLURM_CPUS_PER_TASK asked for 2, capped at the 1 core(s) this rank "
            "may run on)") in done.stdout
