"""Ctrl-C and SIGTERM under launch/local, sent the way a user's terminal or a scheduler sends them: one line with
the resume hint and no MPICH banner, and no shared-memory segment of the job left in /dev/shm (issue 27)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from jobs import assert_no_orphans, job_env, launcher_command

pytestmark = pytest.mark.timeout(120)

LONG_RUN = ["distbp", "train", "--data", "synthetic:rows=20000,features=64,classes=5", "--layers", "64,256,5",
            "--epochs", "200", "--batch-size", "64", "--progress", "none", "--timeout", "60"]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def segments_of(pids: list[int]) -> set[str]:
    """The /dev/shm/mpich_shm_* files these processes map."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names |= {line.split()[-1] for line in maps.splitlines() if "/dev/shm/mpich_shm_" in line}
    return names


def training_job() -> tuple[subprocess.Popen, set[str]]:
    """launch/local -n 2 training in its own process group, once its ranks train; and the segments they map."""
    proc = subprocess.Popen(launcher_command(2, LONG_RUN), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=job_env({}), start_new_session=True)
    deadline = time.monotonic() + 60
    segments: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        segments = segments_of(descendants(proc.pid))
        if segments and len([p for p in descendants(proc.pid) if b"distbp" in _cmdline(p)]) >= 2:
            break
        time.sleep(0.2)
    time.sleep(3)  # into training (past start-up)
    assert proc.poll() is None, proc.communicate()
    return proc, segments


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_ctrl_c_ends_the_job_with_one_line_and_the_resume_hint():
    proc, segments = training_job()
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's ctrl-c: the foreground process group
    stdout, stderr = proc.communicate(timeout=60)
    output = f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    assert proc.returncode == 130, output
    assert stderr.count("(resume with --resume)") == 1, output
    assert "BAD TERMINATION" not in stdout + stderr and "[mpiexec@" not in stdout + stderr, output
    assert segments and not any(os.path.exists(s) for s in segments), (segments, output)
    assert_no_orphans(LONG_RUN[3])  # the data spec: only this job has it


def test_sigterm_to_the_launcher_leaves_no_shared_memory_behind():
    proc, segments = training_job()
    os.kill(proc.pid, signal.SIGTERM)  # a scheduler ending the launcher
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert segments and not any(os.path.exists(s) for s in segments), (segments, stderr)
