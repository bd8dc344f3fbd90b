"""Heartbeat folders are never used or cleaned up through a symlink, and another user's folder is never touched."""

import json
import os
import socket
import subprocess
import time

from checkpoints import as_other_user, need_another_user, plant_symlink

from distbp.comm.serial import SerialComm
from distbp.train.watchdog import HEARTBEAT_PREFIX, Watchdog, remove_abandoned_heartbeats


def dead_beat() -> str:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return json.dumps({"rank": 0, "host": socket.gethostname(), "pid": gone.pid, "time": 0})


def old(path):
    os.utime(path, (time.time() - 7200, time.time() - 7200))


def test_the_clean_up_never_follows_a_symlink_nor_touches_what_is_not_ours(tmp_path):
    need_another_user()
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)  # like /tmp: anyone may plant a name there
    # victims: an old folder with no heartbeat (the old clean-up took it for an abandoned, empty one), and
    # one holding a dead job's heartbeat; another user links names of heartbeat folders to them
    empty_victim, beat_victim = tmp_path / "victim-empty", tmp_path / "victim-beat"
    empty_victim.mkdir()
    (empty_victim / "thesis.tex").write_text("years of work")
    old(empty_victim)
    beat_victim.mkdir()
    (beat_victim / "rank-0.json").write_text(dead_beat())
    (beat_victim / "data.csv").write_text("1,2\n")
    plant_symlink(parent, HEARTBEAT_PREFIX + "evil1", empty_victim)
    plant_symlink(parent, HEARTBEAT_PREFIX + "evil2", beat_victim)
    # another user's own folder, abandoned by its dead job: not ours to delete
    as_other_user(["sh", "-c", f'mkdir {HEARTBEAT_PREFIX}theirs && cat > {HEARTBEAT_PREFIX}theirs/rank-0.json'],
                  parent, data=dead_beat().encode())
    # our folders: one with something that is not a heartbeat, one whose beat is a symlink, one truly abandoned
    mixed, linked, abandoned = (parent / (HEARTBEAT_PREFIX + n) for n in ("mixed", "linked", "abandoned"))
    for folder in (mixed, linked, abandoned):
        folder.mkdir(mode=0o700)
    (mixed / "rank-0.json").write_text(dead_beat())
    (mixed / "notes.txt").write_text("mine")
    (linked / "rank-0.json").symlink_to(beat_victim / "rank-0.json")
    (abandoned / "rank-0.json").write_text(dead_beat())
    (abandoned / "rank-1.json.tmp").write_text("")

    remove_abandoned_heartbeats(str(parent))

    assert (empty_victim / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in beat_victim.iterdir()) == ["data.csv", "rank-0.json"]
    assert (parent / (HEARTBEAT_PREFIX + "theirs") / "rank-0.json").exists()
    assert (mixed / "notes.txt").exists() and (linked / "rank-0.json").is_symlink()
    assert not abandoned.exists()
    assert (parent / (HEARTBEAT_PREFIX + "evil1")).is_symlink()  # another user's link: left alone too


def test_a_watchdog_never_writes_heartbeats_through_a_symlinked_folder(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tmp_path / "hb"
    link.symlink_to(victim)
    dog = Watchdog(SerialComm(), timeout=30)
    try:
        dog.attach_heartbeats(str(link))
        assert dog.heartbeat_dir is None  # no heartbeats, said once on stderr
    finally:
        dog.stop()
    assert list(victim.iterdir()) == [] and link.is_symlink()


def test_a_watchdog_keeps_its_heartbeats_in_a_private_folder_and_removes_them(tmp_path):
    folder = tmp_path / "hb"
    dog = Watchdog(SerialComm(), timeout=30)
    dog.attach_heartbeats(str(folder))
    assert (folder.stat().st_mode & 0o777) == 0o700
    beat = folder / "rank-0.json"
    assert (beat.stat().st_mode & 0o777) == 0o600 and json.loads(beat.read_text())["rank"] == 0
    dog.stop()
    assert not folder.exists()
