"""Several test hosts on one machine, as Linux network namespaces joined by a real (virtual) network.

    with Cluster(hosts=3) as cluster:          # needs root and iproute2; raises Unavailable otherwise
        result = cluster.run(["distbp", "train", "--epochs", "2"], ranks_per_host=1)
        cluster.link_down(2)                   # host 2 loses its network link
        cluster.counters(1)                    # bytes through host 1's network interface

Layout of one run (names unique per run: distbp-<creator pid>-<random>-…):

    <run>-sw    the switch: bridge br0 with ports p0, p1, … (one veth end per host)
    <run>-h0 …  the hosts: eth0 (the veth's other end) with 10.77.0.(i+1)/24, and lo

MPICH's hydra runs inside host 0 with `-launcher ssh -launcher-exec launch/netns-exec`; that script
runs hydra's proxy for each address in its namespace (`ip netns exec`). With MPIR_CVAR_NOLOCAL=1 and
UCX_TLS=tcp the ranks talk over TCP on eth0 even though they share a machine, so the gradients really
cross the veth links (their byte counters show it) and a link taken down really cuts a host off.
All namespaces see the same file system. Only the standard library: launch/netns imports this too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXEC_SCRIPT = REPO / "launch" / "netns-exec"
PREFIX = "distbp-"
SUBNET = "10.77.0"  # private addresses, used only inside the namespaces of one run
THREAD_VARS = ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# without these MPICH moves data between processes on one machine through shared memory
TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp", "UCX_NET_DEVICES": "eth0"}


class Unavailable(Exception):
    """Network namespaces cannot be made here (not root, no iproute2, no permission); the reason says which."""


@dataclass
class Result:
    """A finished job: the command, exit code (None if killed on timeout), output and wall time in seconds."""

    args: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    diagnosis: list[str]  # hosts that did not answer after a failed job

    @property
    def output(self) -> str:
        notes = "".join(f"netns: {d}\n" for d in self.diagnosis)
        return f"$ {shlex.join(self.args)}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}{notes}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS`; raise RuntimeError with ip's message when it fails and check is set."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None if they probably can (creating one is the real test)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


def venv_bin() -> Path:
    """The venv whose python and mpiexec the ranks use: the active venv if it has mpiexec, else the repo's .venv."""
    active = Path(sys.prefix) / "bin"
    if sys.prefix != sys.base_prefix and (active / "mpiexec").exists():
        return active
    return REPO / ".venv" / "bin"


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def ns_pids(name: str) -> list[int]:
    proc = ip("netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def kill_ns_processes(name: str) -> None:
    """SIGKILL every process inside namespace `name` (all of them belong to the run that made it)."""
    for pid in ns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def clean_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces left by a crashed run: `prefix`<pid>-… whose creating process is gone.

    A run still alive (another test session on this machine) keeps its namespaces.
    """
    removed = []
    for name in namespaces():
        m = re.fullmatch(re.escape(prefix) + r"(\d+)-[0-9a-f]+-(sw|h\d+)", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            kill_ns_processes(name)
            if ip("netns", "del", name, check=False).returncode == 0:
                removed.append(name)
    return removed


def rank_command(command: list[str], python: str) -> list[str]:
    """What every rank runs: distbp and python programs through mpi4py's run mode (an exception aborts the job)."""
    head, rest = command[0], command[1:]
    if head == "distbp":
        return [python, "-m", "mpi4py", "-m", "distbp", *rest]
    if re.fullmatch(r"python[0-9.]*", os.path.basename(head)):
        return [python, *rest] if rest[:2] == ["-m", "mpi4py"] else [python, "-m", "mpi4py", *rest]
    if head.endswith(".py"):
        return [python, "-m", "mpi4py", *command]
    return command


@dataclass
class Job:
    """A started job: the launcher process (its own session) and when it started (time.monotonic)."""

    proc: subprocess.Popen
    started: float

    def poll(self) -> int | None:
        return self.proc.poll()


class Cluster:
    """N test hosts (namespaces) on one bridge, and MPI jobs across them. Use as a context manager."""

    def __init__(self, hosts: int, prefix: str = PREFIX):
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts must be in 1..250, got {hosts}")
        self.run_id = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.prefix = prefix
        self.switch = f"{self.run_id}-sw"
        self.hosts = [f"{self.run_id}-h{i}" for i in range(hosts)]
        self.addrs = [f"{SUBNET}.{i + 1}" for i in range(hosts)]
        self.created: list[str] = []
        self.ranks_per_host = 1

    # ---- set up and tear down -----------------------------------------------------------------

    def create(self) -> "Cluster":
        """Make the namespaces, the bridge and one veth pair per host; raise Unavailable if impossible."""
        reason = unavailable_reason()
        if reason:
            raise Unavailable(reason)
        clean_stale(self.prefix)
        try:
            self._add_ns(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except RuntimeError as e:
            self.destroy()
            raise Unavailable(f"cannot create network namespaces: {e}") from None
        try:
            for i, (name, addr) in enumerate(zip(self.hosts, self.addrs)):
                self._add_ns(name)
                ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
                ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
                ip("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
                ip("-n", name, "link", "set", "eth0", "up")
                ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)

    def destroy(self) -> None:
        """Kill every process in the run's namespaces and delete them (the veths go with them). Idempotent."""
        for name in reversed(self.created):
            kill_ns_processes(name)
        for name in reversed(self.created):
            for _ in range(20):  # a process killed a moment ago may still hold the namespace
                if ip("netns", "del", name, check=False).returncode == 0 or name not in namespaces():
                    break
                time.sleep(0.1)
        self.created = []

    def __enter__(self) -> "Cluster":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # ---- the network ---------------------------------------------------------------------------

    def link_down(self, host: int) -> None:
        """Cut host `host` off: its port on the switch goes down (like a pulled cable)."""
        ip("-n", self.switch, "link", "set", f"p{host}", "down")

    def link_up(self, host: int, timeout: float = 10.0) -> None:
        """Reconnect host `host` and wait until it and host 0 reach each other again.

        The neighbour (ARP) entries that failed during the outage are flushed: until they expire the
        kernel answers "No route to host" at once, and hydra's proxy gives up on the first try.
        """
        ip("-n", self.switch, "link", "set", f"p{host}", "up")
        for name in self.hosts:
            ip("-n", name, "neigh", "flush", "all")
        deadline = time.monotonic() + timeout
        while not (self.answers(host) and self.answers(0, source=host)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"host h{host} is still unreachable {timeout:g} s after its link came back")
            time.sleep(0.1)

    def counters(self, host: int) -> dict[str, int]:
        """{'rx': bytes, 'tx': bytes} through eth0 of host `host` since it was made (headers included)."""
        stats = json.loads(ip("-n", self.hosts[host], "-j", "-s", "link", "show", "eth0").stdout)[0]["stats64"]
        return {"rx": int(stats["rx"]["bytes"]), "tx": int(stats["tx"]["bytes"])}

    def answers(self, host: int, source: int = 0, timeout: float = 1.0) -> bool:
        """Does `host` answer a TCP connection attempt from `source`? A refused connection counts as an answer."""
        probe = ("import socket, sys\n"
                 f"try: socket.create_connection(({self.addrs[host]!r}, 9), timeout={timeout})\n"
                 "except ConnectionRefusedError: sys.exit(0)\n"
                 "except OSError: sys.exit(1)\n")
        proc = subprocess.run(["ip", "netns", "exec", self.hosts[source], sys.executable, "-c", probe],
                              capture_output=True, timeout=timeout + 10)
        return proc.returncode == 0

    def diagnose(self) -> list[str]:
        """One line per host that host 0 cannot reach, naming its namespace, address and ranks."""
        lost = []
        for h in range(1, len(self.hosts)):
            if not self.answers(h):
                ranks = range(h * self.ranks_per_host, (h + 1) * self.ranks_per_host)
                lost.append(f"host h{h} ({self.addrs[h]}, rank {', '.join(map(str, ranks))}) does not answer "
                            f"from h0 ({self.addrs[0]}): its link is down or it is gone")
        return lost

    # ---- jobs ------------------------------------------------------------------------------------

    def mpiexec_command(self, command: list[str], ranks_per_host: int = 1, threads: int = 1) -> list[str]:
        """The mpiexec command line, run inside host 0, for `command` on every host."""
        bindir = venv_bin()
        genv = {**TCP_ENV, **{v: str(threads) for v in THREAD_VARS}}
        return [str(bindir / "mpiexec"), "-launcher", "ssh", "-launcher-exec", str(EXEC_SCRIPT),
                "-hosts", ",".join(self.addrs), "-ppn", str(ranks_per_host),
                "-n", str(ranks_per_host * len(self.hosts)), "-bind-to", "none",
                *[x for k, v in genv.items() for x in ("-genv", k, v)],
                *rank_command(command, str(bindir / "python"))]

    def launch_args(self, command: list[str], ranks_per_host: int = 1, threads: int = 1) -> list[str]:
        """netns-exec host0 "<mpiexec …>": mpiexec itself starts inside host 0, like a job on a login node."""
        return [str(EXEC_SCRIPT), self.addrs[0], shlex.join(self.mpiexec_command(command, ranks_per_host, threads))]

    def environment(self, env: dict | None = None, hide: dict[int, str] | None = None) -> dict[str, str]:
        merged = {**os.environ, **(env or {})}
        merged["DISTBP_NETNS_HOSTS"] = " ".join(f"{a}={n}" for a, n in zip(self.addrs, self.hosts))
        merged["DISTBP_NETNS_HIDE"] = " ".join(f"{self.addrs[h]}={d}" for h, d in (hide or {}).items())
        merged.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
        merged.pop("DISTBP_VERBOSE", None)
        return merged

    def start(self, command: list[str], ranks_per_host: int = 1, threads: int = 1, env: dict | None = None,
              hide: dict[int, str] | None = None, cwd=None, capture: bool = True) -> Job:
        """Start a job; `hide` maps a host index to a directory that host must not see (empty tmpfs over it)."""
        for d in (hide or {}).values():
            if not os.path.isdir(d) or " " in d:
                raise ValueError(f"hide: {d!r} must be an existing directory without spaces")
        self.ranks_per_host = ranks_per_host
        pipe = subprocess.PIPE if capture else None
        started = time.monotonic()
        proc = subprocess.Popen(self.launch_args(command, ranks_per_host, threads), stdout=pipe, stderr=pipe,
                                text=True, env=self.environment(env, hide), cwd=cwd or REPO, start_new_session=True)
        return Job(proc, started)

    def wait(self, job: Job, timeout: float | None) -> Result:
        """Wait for a started job; after `timeout` s kill it (returncode None). Leaves no process behind."""
        proc = job.proc
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            self.kill_jobs(proc)
            stdout, stderr = proc.communicate()
            code = None
        seconds = time.monotonic() - job.started
        self.kill_jobs(proc)  # normally nothing is left: hydra reaps its ranks
        diagnosis = self.diagnose() if code != 0 and len(self.hosts) > 1 else []
        return Result(proc.args, code, stdout or "", stderr or "", seconds, diagnosis)

    def run(self, command: list[str], ranks_per_host: int = 1, timeout: float = 120, **kwargs) -> Result:
        """Run `command` (distbp …, python script.py …, or any program) on every host and wait for it."""
        return self.wait(self.start(command, ranks_per_host, **kwargs), timeout)

    def kill_jobs(self, proc: subprocess.Popen | None = None) -> None:
        """End a job: its launcher's process group, then anything still running in the hosts."""
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name in self.hosts:
            kill_ns_processes(name)

    def processes(self) -> list[int]:
        """PIDs still running in any host of the run."""
        return [pid for name in self.hosts for pid in ns_pids(name)]
