"""The checkpoint folder's lock is exclusive: a lock file is never seen empty, whether a lock is stale is read from
its content, and of the jobs that take over the same dead lock at once exactly one gets it."""

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import tempfile
import time

import pytest

from distbp.train.checkpoint import CheckpointError
from distbp.train.lock import LOCK_NAME, TAKEOVER_NAME, lock_directory, refresh_lock, unlock_directory

HOST = socket.gethostname()
FORK = multiprocessing.get_context("fork")


def quiet(message):
    pass


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def hammer(directory, rounds, start, results):
    """Take and release the lock until it was held `rounds` times (or 90 s passed: the other process may hold
    it for long stretches on a busy machine); while holding it, be alone in the 'inside' marker."""
    inside = os.path.join(directory, "inside")
    held, refused, overlaps = 0, [], 0
    start.wait()
    deadline = time.monotonic() + 90
    while held < rounds and time.monotonic() < deadline:
        try:
            lock = lock_directory(directory, HOST, os.getpid(), warn=quiet)
        except CheckpointError as e:
            refused.append(str(e))
            time.sleep(0.0005)  # let the holder run: a refused taker that spins only delays it
            continue
        held += 1
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if the other process is inside too
        except FileExistsError:
            overlaps += 1
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.sched_yield()
            os.unlink(inside)
        unlock_directory(lock)
    results.put((held, refused, overlaps))


def test_two_processes_hammering_the_lock_never_both_hold_it(tmp_path):
    start = FORK.Barrier(2)
    results = FORK.Queue()
    procs = [FORK.Process(target=hammer, args=(str(tmp_path), 1000, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcome = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(o[2] for o in outcome) == 0, outcome  # never both inside
    assert all(held == 1000 for held, _, _ in outcome), outcome  # both took it, 1,000 times each
    refusals = [r for o in outcome for r in o[1]]
    # a lock file is never empty or half-written: a refusal always names the live holder
    assert all("in use by another job" in r or "keeps taking it" in r for r in refusals), refusals[:3]
    assert sorted(os.listdir(tmp_path)) == []  # no lock, no temporary file left


def take_once(directory, start, results):
    start.wait()
    try:
        lock_directory(directory, HOST, os.getpid(), warn=quiet)
        results.put("won")
    except CheckpointError as e:
        results.put(str(e))
    start.wait()  # the winner stays alive until every job has tried (a holder that is gone is stale)


@pytest.mark.parametrize("round_", range(5))
def test_of_several_jobs_taking_over_one_dead_lock_at_once_exactly_one_gets_it(tmp_path, round_):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": HOST, "pid": dead_pid(), "time": 0}))
    n = 6
    start, results = FORK.Barrier(n), FORK.Queue()
    procs = [FORK.Process(target=take_once, args=(str(tmp_path), start, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcome = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcome.count("won") == 1, outcome
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] in [p.pid for p in procs]
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME]  # no takeover or temporary file left


def test_a_live_holder_on_this_host_is_never_stale_whatever_its_time(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": HOST, "pid": os.getppid(), "time": 0}))
    with pytest.raises(CheckpointError, match=f"in use by another job \\(pid {os.getppid()}"):
        lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)


def test_a_holder_on_another_host_is_stale_only_when_its_refresh_is_old(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": time.time()}))
    with pytest.raises(CheckpointError, match="in use by another job"):
        lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)
    os.utime(path, (0, 0))  # an old mtime changes nothing: the content's time decides
    with pytest.raises(CheckpointError, match="in use by another job"):
        lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": time.time() - 3600}))
    warnings = []
    assert lock_directory(tmp_path, HOST, os.getpid(), warn=warnings.append) == path
    assert "taking over" in warnings[0] and "elsewhere" in warnings[0]


def test_refresh_rewrites_the_time_in_the_lock_and_release_removes_only_our_own(tmp_path):
    path = lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)
    first = json.loads(path.read_text())
    time.sleep(0.01)
    refresh_lock(path)
    again = json.loads(path.read_text())
    assert again["pid"] == os.getpid() and again["time"] > first["time"]
    # another job took the folder over meanwhile: our release leaves its lock alone, our refresh too
    theirs = json.dumps({"host": HOST, "pid": os.getppid(), "time": 1.0})
    path.write_text(theirs)
    refresh_lock(path)
    unlock_directory(path)
    assert path.read_text() == theirs


def test_an_empty_or_junk_lock_file_is_never_taken_as_stale(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")
    with pytest.raises(CheckpointError, match=f"{path} is not a distbp lock.*delete {path}"):
        lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)
    assert path.exists()


def test_a_takeover_file_left_by_a_dead_taker_does_not_block_the_folder(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": HOST, "pid": dead_pid(), "time": 0}))
    (tmp_path / TAKEOVER_NAME).write_text(json.dumps({"host": HOST, "pid": dead_pid(), "time": 0}))
    path = lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME]


def test_a_refresh_on_a_full_disk_leaves_the_lock_as_it_was(tmp_path, monkeypatch):
    path = lock_directory(tmp_path, HOST, os.getpid(), warn=quiet)
    before = path.read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    refresh_lock(path)  # no error: the job goes on, its lock a little older
    assert path.read_text() == before
    monkeypatch.undo()
    unlock_directory(path)
    assert os.listdir(tmp_path) == []
