"""A private folder is only as safe as the folders above it: whoever may write into one of them may rename the
folder away and put one of theirs in its place. So a state folder (Numba cache, data cache, checkpoints,
heartbeats) below a folder another user may write into is unsafe, unless that folder is sticky like /tmp
(others may then add entries but not rename ours)."""

import shutil

import numpy as np
import pytest
from caches import as_other, open_folder, reachable_tmp

import distbp
from distbp.host.files import UnsafeFolder, check_private_dir, why_unsafe


def mine(path):
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def test_a_folder_below_a_world_writable_folder_is_unsafe_unless_that_one_is_sticky(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTBP_SHARED_DIRS", raising=False)
    scratch = tmp_path / "scratch"
    cache = mine(scratch / "me" / "cache")
    (scratch / "me").chmod(0o755)
    scratch.chmod(0o777)  # anyone may rename scratch/me away
    reason = why_unsafe(cache)
    assert reason == f"every user may write into the folder above it, {scratch}, and so replace it"
    with pytest.raises(UnsafeFolder, match="the Numba cache .* is not safe to use: every user may write"):
        check_private_dir(cache, "the Numba cache")
    assert why_unsafe(scratch / "me" / "not-made-yet") == reason  # before it is made, too
    scratch.chmod(0o1777)  # sticky, like /tmp
    assert why_unsafe(cache) is None


def test_a_group_writable_folder_above_counts_only_with_group_sharing(tmp_path, monkeypatch):
    project = tmp_path / "project"
    cache = mine(project / "cache")
    project.chmod(0o775)
    monkeypatch.delenv("DISTBP_SHARED_DIRS", raising=False)
    assert "the group of the folder above it" in why_unsafe(cache)
    monkeypatch.setenv("DISTBP_SHARED_DIRS", "1")  # our own group's project folder
    assert why_unsafe(cache) is None


@pytest.fixture
def scratch():
    """A world-writable sticky folder (like a cluster's scratch) that the other uid can reach."""
    path = open_folder(reachable_tmp())
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_folder_inside_another_users_folder_is_unsafe(scratch, monkeypatch):
    monkeypatch.delenv("DISTBP_SHARED_DIRS", raising=False)
    as_other("mkdir", "-m", "755", str(scratch / "theirs"))
    cache = mine(scratch / "theirs" / "cache")  # root may make it there; its owner may still swap it
    assert "belongs to another user (uid 65534), who could replace it" in why_unsafe(cache)
    monkeypatch.setenv("DISTBP_SHARED_DIRS", "1")  # a project's folder, owned by its lead, shared on purpose
    assert why_unsafe(cache) is None


def test_a_checkpoint_folder_below_a_world_writable_folder_is_refused_before_training(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)), rng.integers(0, 2, 40)
    with pytest.raises(distbp.DistbpError, match=r"--checkpoint-dir .*/open/ckpt is not safe to use: every user "
                                                 r"may write into the folder above it"):
        distbp.fit(distbp.MLP([3, 4, 2]), X, y, epochs=1, checkpoint_dir=str(tmp_path / "open" / "ckpt"),
                   verbose=False)
    assert not (tmp_path / "open" / "ckpt").exists() or not any((tmp_path / "open" / "ckpt").iterdir())
