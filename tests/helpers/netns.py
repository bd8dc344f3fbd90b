"""Several test hosts on one machine, as Linux network namespaces joined by a real (virtual) network.

    with Cluster(hosts=3) as cluster:          # needs root and iproute2; raises Unavailable otherwise
        result = cluster.run(["distbp", "train", "--epochs", "2"], ranks_per_host=1)
        cluster.link_down(2)                   # host 2 loses its network link
        cluster.counters(1)                    # bytes through host 1's network interface
    with Cluster(hosts=2, rate="10gbit", delay="20us") as cluster:   # shaped links (below)
        cluster.shaping()                      # the qdiscs on both ends of each link, read back from tc

Layout of one run (names unique per run: distbp-<creator pid>-<random>-…):

    <run>-sw    the switch: bridge br0 with ports p0, p1, … (one veth end per host)
    <run>-h0 …  the hosts: eth0 (the veth's other end) with 10.77.0.(i+1)/24, and lo

MPICH's hydra runs inside host 0 with `-launcher ssh -launcher-exec launch/netns-exec`; that script
runs hydra's proxy for each address in its namespace (`ip netns exec`). Hydra counts each proxy as a
node, so like on a real cluster the ranks of one host share memory (MPICH's own shm) and ranks on
different hosts talk TCP over eth0 (UCX_TLS=tcp, UCX_NET_DEVICES=eth0): the gradients really cross the
veth links (their byte counters show it) and a link taken down really cuts a host off.
All namespaces see the same file system. Only the standard library: launch/netns imports this too.

Links with a speed (`Cluster(hosts, rate="10gbit", delay="20us")`, read back with `cluster.shaping()`):
both ends of every host's link get the same qdiscs, eth0 in the host (host -> switch) and p<i> in the
switch (switch -> host), so both directions are shaped:

    netem delay D      (only with a delay; needs CONFIG_NET_SCH_NETEM, else Unavailable)
      └ tbf rate R     (only with a rate)

so D is the one-way latency of one link and a message from host to host crosses two links: one way
2·D, a round trip 4·D, on top of the unshaped path's (~30 µs for a round trip between two Python
processes here). R counts Ethernet frames (14-byte header included), so TCP's payload gets at most
1448/1514 = 95.6 % of it. veth links have no wire speed of their own: unshaped, or shaped above what
the CPUs can move (a few Gbit/s on a small VM), a link carries what the kernel's TCP stack manages
(benchmarks/links.py measures both). A kernel may lack netem (this VM's does); a rate needs only tbf.
"""

from __future__ import annotations

import json
import math
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

REPO = Path(__file__).resolve().parents[2]
EXEC_SCRIPT = REPO / "launch" / "netns-exec"
PREFIX = "distbp-"
SUBNET = "10.77.0"  # private addresses, used only inside the namespaces of one run
THREAD_VARS = ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# UCX carries only what goes between hosts, and these pin it to TCP over the veth link; ranks of one
# host use MPICH's own shared memory, which UCX_TLS does not touch (100 MB between two ranks of one
# host moved ~0 bytes through eth0 and lo, and COMM_TYPE_SHARED groups them)
TCP_ENV = {"UCX_TLS": "tcp", "UCX_NET_DEVICES": "eth0"}

RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}  # tc's: decimal
DELAY_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
GSO_BYTES = 65536  # the largest packet TCP hands a veth (GSO/TSO on): the token bucket must pass it whole
TIMER_SLACK_S = 500e-6  # tbf's wake-ups come late on a busy VM; a bucket this much deeper keeps the rate
QUEUE_S = 1e-3  # bottleneck buffer beyond the round trip, like a switch port's (TCP needs >= one BDP)
QUEUE_MIN_BYTES = 16 * GSO_BYTES  # but never fewer than 16 GSO packets (see tbf_limit)
MIN_PACKET = 66  # a bare TCP ack on Ethernet: netem's limit counts packets, not bytes
UNSHAPED_BPS = 100 * 10**9  # above any veth's speed; sizes netem's queue when only a delay is asked


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


def tc(*args: str) -> subprocess.CompletedProcess:
    """Run `tc ARGS`; raise RuntimeError with tc's message when it fails."""
    proc = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


def parse_quantity(text: str, units: dict[str, float], what: str, examples: str) -> float:
    """'10gbit' with units {'gbit': 1e9, …} → 1e10; ValueError naming `what` and the accepted forms."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*", text.lower())
    if not m or m.group(2) not in units:
        hint = " (tc's 'bps' means bytes/s: write bit)" if text.lower().endswith("bps") else ""
        raise ValueError(f"bad {what} {text!r}{hint}: write a number and a unit, e.g. {examples} "
                         f"(units: {', '.join(units)})")
    return float(m.group(1)) * units[m.group(2)]


def parse_rate(text: str) -> int:
    """A link rate like '500mbit', '10gbit' → bits per second (decimal units, as tc's); must be > 0."""
    rate = round(parse_quantity(text, RATE_UNITS, "rate", "500mbit, 10gbit"))
    if rate <= 0:
        raise ValueError(f"bad rate {text!r}: must be more than 0 bit/s (leave it out for an unshaped link)")
    return rate


def parse_delay(text: str) -> float:
    """A one-way latency per link like '5us', '1.5ms' → seconds; '0us' means none."""
    return parse_quantity(text, DELAY_UNITS, "delay", "5us, 50us, 1ms")


def format_rate(bits_per_s: int) -> str:
    """10**10 → '10gbit' (the largest unit that divides it)."""
    unit = max((u for u, f in RATE_UNITS.items() if bits_per_s % f == 0), key=RATE_UNITS.get)
    return f"{bits_per_s // RATE_UNITS[unit]}{unit}"


def format_delay(seconds: float) -> str:
    """2e-05 → '20us'."""
    unit = next(u for u in ("s", "ms", "us") if seconds >= DELAY_UNITS[u] or u == "us")
    return f"{seconds / DELAY_UNITS[unit]:g}{unit}"


def tbf_burst(rate: int) -> int:
    """Bytes of the token bucket: one GSO packet, plus what `rate` brings while a wake-up is late.

    With a bucket of one packet only, every late timer is lost time: 16 KiB gave 0.71 and 64 KiB 0.77
    Gbit/s at 1gbit here, 128 KiB and more 0.95 (the most TCP's payload can have, 1448/1514).
    """
    return GSO_BYTES + math.ceil(rate * TIMER_SLACK_S / 8)


def tbf_limit(rate: int, delay: float) -> int:
    """Bytes tbf may hold: the bucket plus a queue of rate x (round trip 4·delay + QUEUE_S), at least one BDP.

    The queue holds at least QUEUE_MIN_BYTES: a queue of a few 64 KiB packets drops them in bunches
    and TCP backs off; at 1gbit here 125 KB gave 0.74-0.92 Gbit/s, 1 MiB 0.95 and no drops.
    """
    queue = max(QUEUE_MIN_BYTES, math.ceil(rate * (4 * delay + QUEUE_S) / 8))
    return tbf_burst(rate) + queue


def netem_limit(rate: int | None, delay: float) -> int:
    """Packets netem may hold, even if all were bare acks (its default is 1000).

    Some kernels count the packets waiting in the tbf below netem against netem's limit too, so with a
    rate it covers tbf's queue (which holds more than one round trip), else what arrives during `delay`.
    """
    held = tbf_limit(rate, delay) if rate else UNSHAPED_BPS * delay / 8
    return max(1000, math.ceil(held / MIN_PACKET))


@dataclass(frozen=True)
class Shaping:
    """What the qdiscs on one end of a link do, read back from `tc -j qdisc show`."""

    kinds: tuple[str, ...]  # qdisc kinds, root first: (), ('tbf',), ('netem',) or ('netem', 'tbf')
    rate: int | None  # bits/s of tbf, Ethernet header included; None: unshaped
    delay: float | None  # seconds netem holds each packet; None: no delay
    burst: int | None  # bytes of tbf's bucket

    @classmethod
    def from_tc(cls, qdiscs: list[dict]) -> "Shaping":
        """From the parsed JSON of `tc -j qdisc show dev DEV` (tbf's rate is bytes/s, netem's delay seconds)."""
        by_kind = {q["kind"]: q.get("options", {}) for q in qdiscs if q["kind"] in ("netem", "tbf")}
        tbf, netem = by_kind.get("tbf"), by_kind.get("netem")
        delay = netem.get("delay", {}).get("delay", 0.0) if netem is not None else None
        return cls(kinds=tuple(q["kind"] for q in qdiscs if q["kind"] in by_kind),
                   rate=8 * int(tbf["rate"]) if tbf else None, delay=delay,
                   burst=int(tbf["burst"]) if tbf else None)

    def __str__(self) -> str:
        parts = ([f"{format_rate(self.rate)} (tbf)"] if self.rate else []) + \
                ([f"{format_delay(self.delay)} each way (netem)"] if self.delay else [])
        return ", ".join(parts) or "unshaped"


def shape(namespace: str, dev: str, rate: int | None, delay: float | None) -> None:
    """Install netem (delay) with tbf (rate) below it as `dev`'s egress qdiscs; nothing when both are None.

    No netem in the kernel (CONFIG_NET_SCH_NETEM unset) raises Unavailable: nothing else can hold packets
    back for a fixed time. GSO stays on: tbf passes a 64 KiB packet whole once its bucket holds that much.
    """
    parent = ["root"]
    if delay:
        try:
            tc("-n", namespace, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
               "delay", f"{delay * 1e6:g}us", "limit", str(netem_limit(rate, delay)))
        except RuntimeError as e:
            if "qdisc kind is unknown" in str(e):
                raise Unavailable("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), "
                                  "which a link delay needs") from None
            raise
        parent = ["parent", "1:1"]
    if rate:
        tc("-n", namespace, "qdisc", "add", "dev", dev, *parent, "handle", "10:", "tbf", "rate", f"{rate}bit",
           "burst", str(tbf_burst(rate)), "limit", str(tbf_limit(rate, delay or 0.0)))


def read_shaping(namespace: str, dev: str) -> Shaping:
    return Shaping.from_tc(json.loads(tc("-n", namespace, "-j", "qdisc", "show", "dev", dev).stdout or "[]"))


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
    """N test hosts (namespaces) on one bridge, and MPI jobs across them. Use as a context manager.

    rate: every link's speed, '10gbit' or bits/s; delay: every link's one-way latency, '20us' or
    seconds (host to host one way: 2·delay). None (the default): the bare veth, as fast as the CPUs.
    """

    def __init__(self, hosts: int, rate: str | int | None = None, delay: str | float | None = None,
                 prefix: str = PREFIX):
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts must be in 1..250, got {hosts}")
        self.rate = parse_rate(rate) if isinstance(rate, str) else rate
        self.delay = parse_delay(delay) if isinstance(delay, str) else delay
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
        if not reason and (self.rate or self.delay) and shutil.which("tc") is None:
            reason = "no `tc` command (iproute2), which shaped links need"
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
                shape(name, "eth0", self.rate, self.delay)  # host -> switch
                shape(self.switch, f"p{i}", self.rate, self.delay)  # switch -> host
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

    def shaping(self) -> dict[str, Shaping]:
        """What is installed on each end of each link, read back from tc: {'h0/eth0': …, 'sw/p0': …, …}."""
        ends = {}
        for i, name in enumerate(self.hosts):
            ends[f"h{i}/eth0"] = read_shaping(name, "eth0")
            ends[f"sw/p{i}"] = read_shaping(self.switch, f"p{i}")
        return ends

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

    def finish(self, job: Job, timeout: float | None) -> tuple[int | None, str, str, float]:
        """(exit code, stdout, stderr, seconds) of a started job, killed after `timeout` s (exit code None)."""
        proc = job.proc
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            self.kill_jobs(proc)
            stdout, stderr = proc.communicate()
            code = None
        return code, stdout, stderr, time.monotonic() - job.started

    def wait(self, job: Job, timeout: float | None) -> Result:
        """Wait for a started job; after `timeout` s kill it (returncode None). Leaves no process behind."""
        proc = job.proc
        code, stdout, stderr, seconds = self.finish(job, timeout)
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
