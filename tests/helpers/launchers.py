"""Helpers for tests/jobs/test_launcher_lines.py: the launch scripts run as the docs show them, with namespace
hosts (tests/helpers/netns.py) standing in for cluster nodes and a one-node SLURM for the batch system.

    need(netns.unavailable_reason(), "namespace hosts")      # skip here, fail under CI=true
    write_hostfile(path, cluster.addrs, 1, "openmpi")        # "10.77.0.1 slots=1" lines
    agent = write_prrte_ssh_agent(tmp_path / "agent")        # PRRTE's "ssh" into a namespace host
    result, left = run_in_host0(cluster, [script, *args], env, timeout=120)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import netns
import pytest

REPO = netns.REPO


def need(reason: str | None, what: str) -> None:
    """Skip with the reason why `what` cannot run here (not root, no `ip`, …); under CI=true fail instead,
    since a CI machine must be able to run every launcher line (tests/helpers/caches.py does the same)."""
    if reason:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(f"{what}: {reason}")


def hydra_reason(bindir: Path) -> str | None:
    """Why `bindir/mpirun` is not MPICH's hydra (None when it is): the template's hydra branch needs it."""
    try:
        out = subprocess.run([str(bindir / "mpirun"), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{bindir / 'mpirun'} does not run: {e}"
    return None if "HYDRA" in out else f"{bindir / 'mpirun'} is not MPICH's hydra"


def write_hostfile(path: Path, addrs: list[str], slots: int, flavor: str) -> Path:
    """The hostfile mpirun-hostfile.sh reads: "ADDR:SLOTS" lines for hydra, "ADDR slots=SLOTS" for Open MPI."""
    line = "{}:{}\n" if flavor == "mpich" else "{} slots={}\n"
    path.write_text("".join(line.format(addr, slots) for addr in addrs))
    return path


# What PRRTE's ssh launcher runs on a remote host is a shell command list ("PRTE_PREFIX=…;export PRTE_PREFIX;
# …;prted …"), not one program: launch/netns-exec runs its COMMAND as `exec COMMAND`, which cannot start
# that, so the agent hands netns-exec `sh -c COMMAND` instead. It also gives each host a hostname of its
# own (a UTS namespace): the namespaces share the machine's, and with one name for both hosts Open MPI
# counted rank 1 on rank 0's node but not rank 0 on rank 1's (MPI_COMM_TYPE_SHARED of sizes 2 and 1),
# and its node-aware collectives (coll/han) then hung in the first MPI_Barrier.
AGENT = '''#!{python}
"""PRRTE's ssh agent for namespace hosts: `agent [options] HOST COMMAND...` (written by tests/helpers/launchers.py)."""
import os, shlex, sys

args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
host, command = args[0], " ".join(args[1:])
name = "h" + host.replace(".", "-")  # no dots: PRRTE cuts a hostname at its first dot
inner = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec sh -c "$1"', name, command]
os.execv({netns_exec!r}, [{netns_exec!r}, host, shlex.join(inner)])
'''


def write_prrte_ssh_agent(path: Path) -> Path:
    """An executable PRRTE can use as plm_ssh_agent to reach the namespace hosts (see AGENT above)."""
    path.write_text(AGENT.format(python=sys.executable, netns_exec=str(netns.EXEC_SCRIPT)))
    path.chmod(0o755)
    return path


def run_in_host0(cluster: netns.Cluster, command: list[str], env: dict[str, str], timeout: float,
                 linger: float = 10.0) -> tuple[netns.Result, list[int]]:
    """Run `command` inside host 0 (through launch/netns-exec, as a user on a cluster's first node would) and
    wait at most `timeout` s; returns the result (returncode None: killed at the timeout) and the processes
    still running in any host `linger` s after it ended, which are then killed."""
    args = [str(netns.EXEC_SCRIPT), cluster.addrs[0], shlex.join(command)]
    job = netns.Job(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=REPO, start_new_session=True), time.monotonic())
    code, stdout, stderr, seconds = cluster.finish(job, timeout)
    proc = job.proc
    deadline = time.monotonic() + linger  # remote daemons may take a moment to see the job's end
    while (left := cluster.processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    cluster.kill_jobs(proc)
    return netns.Result(args, code, stdout, stderr, seconds, []), left


def sbatch_for_this_machine(template: Path, dest: Path, settings: dict[str, str]) -> Path:
    """A copy of an sbatch template with its `#SBATCH --NAME=…` lines set to `settings` ({NAME: value}), as
    the template asks a site to do; every other line is the template's. Fails if a setting has no line."""
    text = template.read_text()
    for name, value in settings.items():
        text, n = re.subn(rf"^#SBATCH --{re.escape(name)}=.*$", f"#SBATCH --{name}={value}", text, flags=re.M)
        assert n == 1, f"{template} has {n} '#SBATCH --{name}=' lines, expected 1"
    dest.write_text(text)
    dest.chmod(0o755)
    return dest


FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


def wait_slurm_job(job: str, env: dict[str, str], timeout: float) -> tuple[str, int]:
    """(final state, exit code) of SLURM job `job`, polled from `scontrol show job` every 0.2 s; the job is
    cancelled and the test failed if it has not finished within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True,
                             timeout=30).stdout
        fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        if fields.get("JobState") in FINISHED:
            return fields["JobState"], int(fields.get("ExitCode", "1:0").split(":")[0])
        time.sleep(0.2)
    subprocess.run(["scancel", job], env=env, capture_output=True, timeout=30)
    pytest.fail(f"slurm job {job} still running after {timeout} s")

