"""A launched job's heartbeat folder: made by the root with a name nobody can predict, never used or cleaned up
through another user's symlink, and one clear error where it is not a folder of the job's own."""

import os
import time

from checkpoints import as_other_user, plant_symlink
from jobs import run_job

from distbp.train.watchdog import HEARTBEAT_PREFIX

DATA = ["--data", "synthetic:rows=600,features=10,classes=3", "--layers", "10,8,3"]


def train(*extra) -> list[str]:
    return ["distbp", "train", *DATA, "--batch-size", "50", "--lr", "0.01", "--progress", "none",
            "--timeout", "30", *extra]


def victim_folder(where) -> None:
    where.mkdir()
    (where / "thesis.tex").write_text("years of work")
    os.utime(where, (time.time() - 7200, time.time() - 7200))  # old and without heartbeats: "abandoned"


def test_symlinks_planted_in_the_temp_folder_never_make_the_clean_up_delete_files(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)  # like /tmp
    victim = tmp_path / "victim"
    victim_folder(victim)
    for name in ("0123456789ab", "evil"):
        plant_symlink(tmp, HEARTBEAT_PREFIX + name, victim)
    done = run_job(2, train("--epochs", "1"), timeout=90, env={"TMPDIR": str(tmp)})
    assert done.returncode == 0, done.output
    assert (victim / "thesis.tex").read_text() == "years of work"
    # the job's own folder (mkdtemp, 0700) is gone; the other user's links are theirs
    left = sorted(p.name for p in tmp.iterdir() if p.name.startswith(HEARTBEAT_PREFIX))
    assert left == [HEARTBEAT_PREFIX + "0123456789ab", HEARTBEAT_PREFIX + "evil"], left


def test_a_heartbeat_symlink_planted_in_a_group_shared_checkpoint_dir_stops_the_job_named(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir(mode=0o770)
    ck.chmod(0o770)
    victim = tmp_path / "victim"
    victim_folder(victim)
    as_other_user(["ln", "-s", str(victim), ".heartbeat"], ck, gid=os.getegid())
    done = run_job(2, train("--epochs", "1", "--checkpoint-dir", str(ck)), timeout=90,
                   env={"DISTBP_SHARED_DIRS": "1"})
    assert done.returncode == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.output
    assert f"the heartbeat folder {ck / '.heartbeat'} is not safe to use: it is a symbolic link" in errors[0]
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]
