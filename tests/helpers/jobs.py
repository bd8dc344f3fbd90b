"""Start multi-rank jobs from a test: launch/local in its own process group, output captured,
the whole job killed and the test failed (with the output) if it outlives its timeout."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launch" / "local"


@dataclass
class Completed:
    """A finished job: the launcher's command, exit code, captured output and wall time in seconds."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return f"$ {' '.join(self.args)}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


def load_npz(path) -> dict:
    """Every array of a saved .npz, read into memory; of a model file (a run's --save), only its parameters
    W0, b0, W1, b1, … (its description, scaling and classes are left out)."""
    import numpy as np

    with np.load(path) as f:
        model_file = "distbp_model" in f.files
        return {k: f[k] for k in f.files if not model_file or (k[:1] in ("W", "b") and k[1:].isdigit())}


def launcher_command(n: int, args: list[str], threads: int | None = 1) -> list[str]:
    """launch/local run by this test's python, so the job uses the same venv."""
    thread_args = [] if threads is None else ["--threads", str(threads)]
    return [sys.executable, str(LAUNCHER), "-n", str(n), *thread_args, *args]


def job_env(env: dict | None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.pop("DISTBP_VERBOSE", None)
    merged.update(env or {})
    return merged


def run_job(n: int, args: list[str], timeout: float = 120, threads: int | None = 1,
            env: dict | None = None, cwd=None) -> Completed:
    """Run `launch/local -n n --threads threads <args>`; threads=None lets the launcher choose."""
    cmd = launcher_command(n, args, threads)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=job_env(env), cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(proc)
        done = Completed(cmd, proc.returncode, stdout, stderr, time.monotonic() - start)
        pytest.fail(f"job still running after {timeout} s; killed it\n{done.output}")
    return Completed(cmd, proc.returncode, stdout, stderr, time.monotonic() - start)


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> tuple[str, str]:
    """SIGTERM the launcher's group (it ends its job), SIGKILL it if that does not work."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def processes_with(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of live, non-zombie processes whose command line contains marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state not in ("Z", "X"):
            found.append((int(entry.name), cmdline))
    return found


def assert_no_orphans(marker: str, within: float = 5.0) -> None:
    """Fail if a process with marker in its command line is still alive after `within` seconds."""
    deadline = time.monotonic() + within
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        for pid, _ in left:  # do not leave them to slow down the rest of the suite
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail("orphaned processes survived the job:\n" + "\n".join(f"{p}: {c}" for p, c in left))
