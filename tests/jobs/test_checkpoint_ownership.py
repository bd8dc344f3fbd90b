"""Checkpoints belong to their run: a run never deletes or overwrites another's files, one job per
directory, and --resume continues the run it names with the settings that decide its trajectory."""

import json
import os
import socket
import subprocess

import numpy as np
import pytest
from checkpoints import plant_file, small_tmpfs
from jobs import run_job

from distbp.train.checkpoint import load_checkpoint

DATA = ["--data", "synthetic:rows=600,features=10,classes=3", "--layers", "10,8,3"]


def train(ck, *extra) -> list[str]:
    return ["distbp", "train", *DATA, "--batch-size", "50", "--lr", "0.01", "--progress", "none",
            "--checkpoint-dir", str(ck), *extra]


def files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("ckpt-*.npz"))}


def one_error(done) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.output
    return errors[0]


def test_a_new_run_is_refused_on_a_directory_holding_another_runs_checkpoints(tmp_path):
    ck = tmp_path / "ck"
    first = run_job(2, train(ck, "--epochs", "4"))
    assert first.returncode == 0, first.output
    before = files(ck)
    second = run_job(2, train(ck, "--epochs", "2"))
    assert second.returncode == 2, second.output
    error = one_error(second)
    assert "holds checkpoints of another run" in error and "--resume" in error, second.output
    assert files(ck) == before  # nothing of the first run deleted or overwritten


def test_resume_continues_the_run_it_names_and_says_when_it_has_finished(tmp_path):
    ck = tmp_path / "ck"
    first = run_job(2, train(ck, "--epochs", "4", "--save", str(tmp_path / "a.npz")))
    assert first.returncode == 0, first.output
    again = run_job(2, train(ck, "--epochs", "4", "--resume", "--save", str(tmp_path / "b.npz")))
    assert again.returncode == 0, again.output
    assert "already finished its 4 epochs" in again.stdout, again.output
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_junk_file_named_like_a_checkpoint_takes_no_slot_and_is_left_alone(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "ckpt-99999999.npz").write_bytes(b"not a checkpoint")
    done = run_job(2, train(ck, "--epochs", "3", "--keep-checkpoints", "2"))
    assert done.returncode == 0, done.output
    kept = files(ck)
    assert kept.pop("ckpt-99999999.npz") == b"not a checkpoint"
    assert sorted(kept) == ["ckpt-00000022.npz", "ckpt-00000033.npz"]  # 540 rows: 11 steps per epoch; the newest 2


def test_a_second_job_on_a_locked_directory_is_refused_naming_the_holder(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    # this test's own process stands for a job that is still running on this host
    (ck / ".distbp-lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": 0}))
    done = run_job(2, train(ck, "--epochs", "1"), timeout=60)
    assert done.returncode == 2, done.output
    error = one_error(done)
    assert "in use by another job" in error and f"pid {os.getpid()}" in error, done.output
    assert not files(ck)


def test_a_lock_left_by_a_dead_job_is_taken_over_with_a_warning(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    (ck / ".distbp-lock").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "time": 0}))
    done = run_job(2, train(ck, "--epochs", "1"), timeout=60)
    assert done.returncode == 0, done.output
    assert "taking over" in done.stderr and str(gone.pid) in done.stderr, done.output
    assert not (ck / ".distbp-lock").exists()  # released when the run ended


def test_resume_refuses_another_batch_size_and_names_another_learning_rate(tmp_path):
    ck = tmp_path / "ck"
    assert run_job(2, train(ck, "--epochs", "1")).returncode == 0
    other_batch = run_job(2, ["distbp", "train", *DATA, "--batch-size", "64", "--lr", "0.01", "--progress",
                              "none", "--checkpoint-dir", str(ck), "--epochs", "2", "--resume"])
    assert other_batch.returncode == 2, other_batch.output
    assert "config.batch_size 50 != current 64" in one_error(other_batch), other_batch.output
    other_lr = run_job(2, ["distbp", "train", *DATA, "--batch-size", "50", "--lr", "0.02", "--progress", "none",
                           "--checkpoint-dir", str(ck), "--epochs", "2", "--resume"])
    assert other_lr.returncode == 0, other_lr.output
    assert "resuming with --lr 0.02 (the checkpoint's run used 0.01)" in other_lr.stderr, other_lr.output


def test_the_metrics_file_is_rewound_to_the_checkpoint_a_run_resumes_from(tmp_path):
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    assert run_job(2, train(ck, "--epochs", "3", "--metrics", str(metrics))).returncode == 0
    sorted(ck.glob("ckpt-*.npz"))[-1].unlink()  # the run "died" before its last checkpoint
    done = run_job(2, train(ck, "--epochs", "4", "--metrics", str(metrics), "--resume"))
    assert done.returncode == 0, done.output
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("what", ["a file", "under a file"])
def test_a_checkpoint_dir_that_cannot_be_a_directory_is_one_clear_error(tmp_path, what):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    ck = blocker if what == "a file" else blocker / "ck"
    done = run_job(2, train(ck, "--epochs", "1"), timeout=60)
    assert done.returncode == 2, done.output
    assert str(blocker) in one_error(done), done.output


# ---- a folder another user could write into; checkpoints that are not yours; a full disk -------------------

def test_a_world_writable_checkpoint_dir_is_refused_naming_it_and_the_fix(tmp_path):
    ck = tmp_path / "ck"
    assert run_job(2, train(ck, "--epochs", "2")).returncode == 0
    ck.chmod(0o777)
    # another user plants a valid checkpoint (the digest has no key) under a newer step: --resume picked it
    plant_file(ck, "ckpt-00099999.npz", (ck / "ckpt-00000011.npz").read_bytes())
    done = run_job(2, train(ck, "--epochs", "3", "--resume"), timeout=60)
    assert done.returncode == 2, done.output
    error = one_error(done)
    assert f"--checkpoint-dir {ck} is not safe to use: every user may write into it" in error, done.output
    assert "chmod go-w" in error and "resumed from" not in done.stdout, done.output
    ck.chmod(0o700)  # the fix: now the planted file is ignored, named, and the run resumes from its own
    fixed = run_job(2, train(ck, "--epochs", "3", "--resume"), timeout=60)
    assert fixed.returncode == 0, fixed.output
    assert f"resumed from {ck / 'ckpt-00000022.npz'}" in fixed.stdout, fixed.output
    assert f"ignoring {ck / 'ckpt-00099999.npz'}: it belongs to another user" in fixed.stderr, fixed.output


def test_a_symlink_as_checkpoint_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "ck").symlink_to(real)
    done = run_job(2, train(tmp_path / "ck", "--epochs", "1"), timeout=60)
    assert done.returncode == 2, done.output
    assert "is not safe to use: it is a symbolic link" in one_error(done), done.output
    assert list(real.iterdir()) == []


def test_in_a_group_shared_checkpoint_dir_another_members_file_is_ignored_with_a_warning(tmp_path):
    ck = tmp_path / "ck"
    assert run_job(2, train(ck, "--epochs", "2")).returncode == 0
    ck.chmod(0o770)  # group-writable, the group one of ours (root's 0): allowed with DISTBP_SHARED_DIRS=1
    plant_file(ck, "ckpt-00099999.npz", (ck / "ckpt-00000011.npz").read_bytes(), gid=os.getegid())
    refused = run_job(2, train(ck, "--epochs", "3", "--resume"), timeout=60)
    assert refused.returncode == 2 and "DISTBP_SHARED_DIRS=1" in one_error(refused), refused.output
    done = run_job(2, train(ck, "--epochs", "3", "--resume"), timeout=60, env={"DISTBP_SHARED_DIRS": "1"})
    assert done.returncode == 0, done.output
    assert f"resumed from {ck / 'ckpt-00000022.npz'}" in done.stdout, done.output
    assert "ckpt-00099999.npz: it belongs to another user" in done.stderr, done.output
    assert (ck / "ckpt-00099999.npz").exists()  # never pruned: not ours


def test_a_full_disk_while_checkpointing_is_one_clear_error_and_the_earlier_checkpoint_stays(tmp_path):
    # a checkpoint of 10-3000-3 is 171 kB: the first fits in 256 kB, the second does not
    with small_tmpfs(256 * 1024) as disk:
        ck = os.path.join(disk, "ck")
        done = run_job(2, ["distbp", "train", "--data", "synthetic:rows=600,features=10,classes=3", "--layers",
                           "10,3000,3", "--batch-size", "50", "--lr", "0.01", "--progress", "none",
                           "--checkpoint-dir", ck, "--epochs", "3", "--timeout", "30"], timeout=90)
        assert done.returncode == 2, done.output
        error = one_error(done)
        assert f"no space left in {ck} while writing checkpoint step 22" in error, done.output
        assert "MPI_Abort" not in done.output and "BAD TERMINATION" not in done.output, done.output
        names = sorted(os.listdir(ck))
        assert [n for n in names if n.startswith("ckpt-")] == ["ckpt-00000011.npz"], names
        assert not [n for n in names if n.endswith(".tmp")], names  # no temporary file left
        _, meta = load_checkpoint(os.path.join(ck, "ckpt-00000011.npz"))  # intact: its digest verifies
        assert meta["position"]["step"] == 11
