"""The Numba cache another user could write: checked before Numba reads it (host/numbacache.py). Files are
planted as a second uid (setpriv), the way another user of a shared login node would."""

import os
import pickle
import shutil
import stat

import pytest
from caches import as_other, evil_pickle, open_folder, reachable_tmp, warm_numba_cache

from distbp.host import numbacache


@pytest.fixture
def shared(monkeypatch):
    path = reachable_tmp()
    path.chmod(0o1777)  # the other uid makes its own folders here too
    monkeypatch.setenv("XDG_CACHE_HOME", str(path / "home-cache"))  # the private fallback lands here
    monkeypatch.delenv("DISTBP_SHARED_DIRS", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def good_index() -> bytes:
    return pickle.dumps("0.0") + pickle.dumps((b"stamp", {("sig",): "f-1.py311.1.nbc"}))


def test_a_world_writable_cache_gives_way_to_a_private_folder_with_one_warning(shared):
    cache = open_folder(shared / "open")
    chosen, unsafe, removed = numbacache.choose(cache)
    assert chosen == str(shared / "home-cache" / "distbp" / "numba")
    assert stat.S_IMODE(os.lstat(chosen).st_mode) == 0o700
    assert str(cache) in unsafe and "every user may write" in unsafe and removed is None, unsafe
    assert "chmod go-w" in unsafe and "NUMBA_CACHE_DIR" in unsafe


def test_a_cache_folder_of_another_user_or_a_symlink_is_not_used(shared):
    as_other("mkdir", "-m", "755", str(shared / "theirs"))
    assert numbacache.choose(shared / "theirs")[0] != str(shared / "theirs")
    (shared / "mine").mkdir(mode=0o700)
    (shared / "link").symlink_to(shared / "mine")
    chosen, unsafe, _ = numbacache.choose(shared / "link")
    assert chosen != str(shared / "link") and "symbolic link" in unsafe



def test_planted_symlinked_and_damaged_files_are_removed_and_good_ones_kept(shared):
    cache = shared / "cache"
    sub = cache / "nn_0123"
    sub.mkdir(parents=True, mode=0o755)
    cache.chmod(0o755)
    (sub / "good-1.py311.nbi").write_bytes(good_index())
    (sub / "good-1.py311.1.nbc").write_bytes(pickle.dumps({"code": b"\x00" * 5000}))
    (sub / "garbage-2.py311.nbi").write_bytes(os.urandom(300))
    (sub / "cut-3.py311.1.nbc").write_bytes(pickle.dumps({"code": b"\x01" * 5000})[:2600])
    target = shared / "victim.nbi"
    target.write_bytes(good_index())
    (sub / "link-4.py311.nbi").symlink_to(target)
    (sub / "mark").write_text("distbp's own")  # not Numba's: not touched
    sub.chmod(0o777)  # let the other uid plant one, then close the folder again
    as_other("sh", "-c", f"cat > {sub}/planted-5.py311.nbi", check=True)
    sub.chmod(0o755)
    reason, removed = numbacache.clean(cache)
    assert reason is None
    assert sorted(os.path.basename(p) for p in removed) == [
        "cut-3.py311.1.nbc", "garbage-2.py311.nbi", "link-4.py311.nbi", "planted-5.py311.nbi"]
    assert sorted(p.name for p in sub.iterdir()) == ["good-1.py311.1.nbc", "good-1.py311.nbi", "mark"]
    assert target.read_bytes() == good_index()  # the link removed, never what it pointed at
    assert numbacache.choose(cache) == (str(cache), None, None)  # clean now: no warning the second time


def test_a_subfolder_of_another_user_makes_the_cache_unsafe(shared):
    cache = open_folder(shared / "cache")
    as_other("mkdir", "-m", "755", str(cache / "nn_0123"))
    cache.chmod(0o755)
    chosen, unsafe, _ = numbacache.choose(cache)
    assert chosen != str(cache) and "nn_0123" in unsafe and "another user" in unsafe


def test_group_writable_files_count_only_where_the_group_can_reach_them(shared):
    cache = shared / "cache"
    (cache / "nn").mkdir(parents=True)
    f = cache / "nn" / "k-1.py311.nbi"
    f.write_bytes(good_index())
    f.chmod(0o664)  # a umask of 002
    cache.chmod(0o700)
    assert numbacache.clean(cache) == (None, [])
    cache.chmod(0o750)
    assert numbacache.clean(cache)[1] == [str(f)]


def test_every_file_of_a_real_warm_cache_parses(shared):
    """No false alarm: the checkout's compiled kernels all pass the check (else they would recompile forever)."""
    cache = warm_numba_cache(shared / "warm")
    cache.chmod(0o700)
    assert numbacache.clean(cache) == (None, [])


def test_the_check_never_runs_a_planted_pickle(shared):
    marker = shared / "ran"
    cache = shared / "cache"
    (cache / "nn").mkdir(parents=True)
    (cache / "nn" / "evil-1.py311.nbi").write_bytes(evil_pickle(marker))
    assert numbacache.clean(cache)[0] is None  # parses (it is a whole pickle): kept, but nothing ran
    assert not marker.exists()


def test_a_missing_cache_folder_is_made_private(shared):
    chosen, unsafe, removed = numbacache.choose(shared / "new" / "numba")
    assert chosen == str(shared / "new" / "numba") and unsafe is None and removed is None
    assert stat.S_IMODE(os.lstat(chosen).st_mode) == 0o700
