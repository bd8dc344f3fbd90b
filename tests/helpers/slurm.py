"""A one-node SLURM in a temporary directory, for tests of the srun and sbatch paths.

`LocalSlurm(root)` writes a munge key and a slurm.conf under `root`, starts munged, slurmctld and
slurmd in the foreground as child processes (so they are stopped by their own process ids), and
waits until the node is idle. `env()` is the environment for srun/sbatch/squeue (SLURM_CONF set).

    with LocalSlurm(tmp_path) as slurm:
        subprocess.run(["srun", "--mpi=pmi2", "-n", "2", ...], env=slurm.env())

The daemons come from Debian's packages (slurm-wlm, munge, and libpmix-dev for `srun --mpi=pmix`);
launch/system-packages installs them (launch/test runs it); `missing_reason()` says what is missing.
The configuration is what a small site ships: MpiDefault=none, ProctrackType=proctrack/linuxproc,
TaskPlugin=task/affinity, one partition holding this machine's cores.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

# libpmix-dev: Slurm's mpi/pmix plugin opens libpmix.so, which only the -dev package links
PACKAGES = ("slurm-wlm", "munge", "libpmix-dev")
DAEMONS = ("munged", "slurmctld", "slurmd")


def missing_reason() -> str | None:
    """Why a local SLURM cannot run here (None when it can). launch/test installs it beforehand
    (launch/system-packages, as root with apt-get); the tests never run apt themselves."""
    have_daemons = all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS) and shutil.which("srun")
    missing = _missing_packages()
    if have_daemons and not missing:
        return None
    return (f"SLURM is not installed (missing: {' '.join(missing) or 'the daemons or srun'}); "
            "launch/system-packages installs it as root with apt-get")


def _missing_packages() -> list[str]:
    """Which of PACKAGES dpkg does not list as installed (none on a machine without dpkg)."""
    if not shutil.which("dpkg-query"):
        return []
    missing = []
    for pkg in PACKAGES:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in done.stdout:
            missing.append(pkg)
    return missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This machine as slurmd sees it (`slurmd -C`), minus the uptime line."""
    out = subprocess.run([_daemon("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    fields = dict(f.split("=", 1) for f in line.split())
    fields["RealMemory"] = str(int(int(fields.get("RealMemory", "1024")) * 0.9))
    return " ".join(f"{k}={v}" for k, v in fields.items())


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """munged + slurmctld + slurmd for this machine, all files under `root`."""

    def __init__(self, root: Path, task_plugin: str = "task/affinity"):
        self.root = Path(root)
        self.task_plugin = task_plugin
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname()

    # -- set-up --------------------------------------------------------------------------------
    def _write_files(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.socket = r / "munge" / "munge.socket"
        ctld_port, d_port = _free_port(), _free_port()
        (r / "slurm.conf").write_text("\n".join([
            "ClusterName=distbp-test",
            # A killed MPICH job leaves its shared-memory segment in /dev/shm; a new cluster counting
            # job ids from 1 again then failed in MPI_Init ("UCX ERROR failed to unpack address") in
            # 11 of 18 first jobs, and in 0 of 12 once the stale segments were removed. Job ids that
            # no earlier test cluster used avoid the clash.
            f"FirstJobId={random.randrange(100_000, 60_000_000)}",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={d_port}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", f"TaskPlugin={self.task_plugin}",
            "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5", "MinJobAge=10",
            f"{_node_line()} NodeAddr=127.0.0.1 State=UNKNOWN",  # no name lookup of this host needed
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
            "",
        ]))

    def env(self, **extra: str) -> dict:
        """The environment for SLURM's client commands: this cluster's slurm.conf, no outer job's variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "SBATCH_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.root / "slurm.conf")
        env.update(extra)
        return env

    def _start(self, argv: list[str], log: str) -> None:
        out = open(self.root / "log" / log, "ab")
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                           start_new_session=True))
        out.close()

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        self._write_files()
        r = self.root
        self._start([_daemon("munged"), "--foreground", "--force", f"--socket={self.socket}",
                     f"--key-file={r / 'munge' / 'munge.key'}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                     f"--seed-file={r / 'munge' / 'munged.seed'}", f"--log-file={r / 'log' / 'munged.log'}"],
                    "munged.out")
        self._wait(lambda: self.socket.exists(), 20, "munged did not create its socket")
        conf = str(r / "slurm.conf")
        self._start([_daemon("slurmctld"), "-D", "-i", "-f", conf], "slurmctld.out")
        self._start([_daemon("slurmd"), "-D", "-f", conf], "slurmd.out")
        self._wait(self._node_idle, timeout, "the node did not become idle")
        return self

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True,
                             text=True, timeout=20).stdout.split()
        return bool(out) and all(state.startswith("idle") for state in out)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{what}: a daemon exited ({dead[0].args[0]}, code {dead[0].returncode})"
                                   f"\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every daemon log, for a failure message."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- tear-down -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the daemons this object started (and their sessions), by process id; bounded wait."""
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env(), capture_output=True, timeout=20)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                except ProcessLookupError:
                    pass
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
        self.procs.clear()

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
