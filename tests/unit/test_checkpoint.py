"""Checkpoints: bit-identical round trips, atomic saves, damaged files detected and skipped."""

import json
import os
import zipfile

import numpy as np
import pytest
from checkpoints import need_another_user, plant_file

from distbp.train.checkpoint import (
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "params": rng.standard_normal(1000).astype(np.float32),
        "momentum": rng.standard_normal((20, 7)),
        "counts": rng.integers(-2**62, 2**62, size=5, dtype=np.int64),
        "rng_state": np.array([2**64 - 1, 0, 12345678901234567890], dtype=np.uint64),
    }


def _meta(step=0):
    return {"epoch": 3, "step": step, "config": {"layers": [784, 256, 10], "lr": 0.05, "loss": "xent",
                                                 "schedule": {"warmup": None, "decay": [0.1, 0.01]}},
            "counters": {"samples": 123456, "ok": True}}


class Warnings(list):
    def __call__(self, message):
        self.append(message)


def _flip_byte(path, position):
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_is_bit_identical_for_every_dtype(tmp_path):
    arrays = _arrays()
    # nan payloads and negative zero must survive too: compare bytes, not values.
    arrays["params"][:3] = [np.nan, -0.0, np.inf]
    path = save_checkpoint(tmp_path, 1234, arrays, _meta(1234))
    assert path == tmp_path / "ckpt-00001234.npz"
    loaded, meta = load_checkpoint(path)
    assert sorted(loaded) == sorted(arrays)
    for name, a in arrays.items():
        assert loaded[name].dtype == a.dtype, name
        assert loaded[name].shape == a.shape, name
        assert loaded[name].tobytes() == a.tobytes(), name
    assert meta == _meta(1234)


def test_non_contiguous_and_scalar_arrays_round_trip(tmp_path):
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    arrays = {"strided": base[:, ::2], "fortran": np.asfortranarray(base), "scalar": np.float32(2.5)}
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path, 0, arrays, {}))
    assert np.array_equal(loaded["strided"], base[:, ::2])
    assert np.array_equal(loaded["fortran"], base)
    assert loaded["scalar"].shape == () and loaded["scalar"].dtype == np.float32 and loaded["scalar"] == 2.5


def test_meta_tuples_come_back_as_json_lists(tmp_path):
    _, meta = load_checkpoint(save_checkpoint(tmp_path, 0, {}, {"layers": (784, 10)}))
    assert meta == {"layers": [784, 10]}


def test_file_loads_with_plain_numpy_without_pickle(tmp_path):
    path = save_checkpoint(tmp_path, 5, _arrays(), _meta())
    with np.load(path, allow_pickle=False) as npz:
        assert np.array_equal(npz["params"], _arrays()["params"])


def test_names_sort_in_step_order_and_listing_is_oldest_first(tmp_path):
    for step in (30, 2, 100_000_000, 7):
        save_checkpoint(tmp_path, step, {"x": np.zeros(1)}, {}, keep=10)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-00000002.npz", "ckpt-00000007.npz", "ckpt-00000030.npz", "ckpt-100000000.npz"]


def test_keep_k_keeps_the_newest_k(tmp_path):
    for step in range(1, 8):
        save_checkpoint(tmp_path, step * 10, {"x": np.full(3, step)}, {"step": step * 10}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-00000050.npz", "ckpt-00000060.npz", "ckpt-00000070.npz"]


def test_corrupted_byte_is_detected(tmp_path):
    path = save_checkpoint(tmp_path, 1, _arrays(), _meta())
    _flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="ckpt-00000001.npz"):
        load_checkpoint(path)


def _rewrite_member(path, name: str, change) -> tuple[bytes, bytes]:
    """Replace zip member `name` by change(old bytes) in a valid zip (its crc32 right again); (old, new)."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    old = members[name]
    members[name] = change(old)
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return old, members[name]


def test_changed_array_in_a_valid_zip_fails_the_checksum(tmp_path):
    # rewrite one member so that the zip's own crc32 is right again: only our
    # sha256 can notice.
    path = save_checkpoint(tmp_path, 1, {"w": np.ones(4)}, {"epoch": 1})
    _rewrite_member(path, "w.npy", lambda data: data[:-8] + np.float64(2.0).tobytes())
    assert np.load(path)["w"][-1] == 2.0
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_changed_meta_fails_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"w": np.ones(4)}, {"epoch": 1})
    old, new = _rewrite_member(path, "__distbp_meta__.npy", lambda data: data.replace(b'"epoch": 1', b'"epoch": 9'))
    assert new != old
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_foreign_npz_is_rejected(tmp_path):
    path = tmp_path / "ckpt-00000001.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a distbp checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "ckpt-00000001.npz")


def test_latest_falls_back_past_a_corrupted_checkpoint_with_a_warning(tmp_path):
    save_checkpoint(tmp_path, 1, _arrays(1), _meta(1))
    newest = save_checkpoint(tmp_path, 2, _arrays(2), _meta(2))
    _flip_byte(newest, newest.stat().st_size // 2)
    warnings = Warnings()
    path, arrays, meta = latest_checkpoint(tmp_path, warn=warnings)
    assert path.name == "ckpt-00000001.npz"
    assert meta["step"] == 1
    assert arrays["params"].tobytes() == _arrays(1)["params"].tobytes()
    assert len(warnings) == 1 and "ckpt-00000002.npz" in warnings[0]


@pytest.mark.parametrize("keep_bytes", [0, 100, 0.5, -22])
def test_latest_falls_back_past_a_truncated_checkpoint_with_a_warning(tmp_path, keep_bytes):
    save_checkpoint(tmp_path, 1, _arrays(1), _meta(1))
    newest = save_checkpoint(tmp_path, 2, _arrays(2), _meta(2))
    data = newest.read_bytes()
    cut = int(len(data) * keep_bytes) if isinstance(keep_bytes, float) else keep_bytes
    newest.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="ckpt-00000002.npz"):
        load_checkpoint(newest)
    warnings = Warnings()
    path, _, meta = latest_checkpoint(tmp_path, warn=warnings)
    assert path.name == "ckpt-00000001.npz" and meta["step"] == 1
    assert len(warnings) == 1 and "ckpt-00000002.npz" in warnings[0]


def test_latest_warns_on_stderr_by_default(tmp_path, capsys):
    save_checkpoint(tmp_path, 1, {"x": np.zeros(2)}, {})
    newest = save_checkpoint(tmp_path, 2, {"x": np.zeros(2)}, {})
    newest.write_bytes(b"")
    assert latest_checkpoint(tmp_path)[0].name == "ckpt-00000001.npz"
    assert "ckpt-00000002.npz" in capsys.readouterr().err


def test_leftover_temporary_file_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": np.ones(2)}, {"step": 1})
    leftover = tmp_path / ".ckpt-00000002-abc123.tmp"
    leftover.write_bytes(b"PK\x03\x04 half a zip")
    assert list_checkpoints(tmp_path) == [tmp_path / "ckpt-00000001.npz"]
    warnings = Warnings()
    path, _, meta = latest_checkpoint(tmp_path, warn=warnings)
    assert path.name == "ckpt-00000001.npz" and meta == {"step": 1}
    assert any(leftover.name in w for w in warnings)


def test_next_save_removes_leftover_temporary_files(tmp_path):
    leftover = tmp_path / ".ckpt-00000002-abc123.tmp"
    leftover.write_bytes(b"junk")
    save_checkpoint(tmp_path, 3, {"x": np.ones(2)}, {})
    assert not leftover.exists()


def test_crash_during_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    first = save_checkpoint(tmp_path, 1, _arrays(1), _meta(1))
    before = first.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(tmp_path, 2, _arrays(2), _meta(2), keep=1)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.npz"]
    assert first.read_bytes() == before
    path, _, meta = latest_checkpoint(tmp_path, warn=Warnings())
    assert path == first and meta["step"] == 1


def test_crash_while_writing_leaves_no_temp_file(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError("device vanished")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="device vanished"):
        save_checkpoint(tmp_path, 1, _arrays(), _meta())
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path, 1, {}, {"epoch": object()})
    with pytest.raises(ValueError, match="pickle"):
        save_checkpoint(tmp_path, 1, {"o": np.array([{}], dtype=object)}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path, 1, {"__distbp_meta__": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, -1, {}, {})
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, {}, {}, keep=0)
    assert list(tmp_path.iterdir()) == []


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    only = save_checkpoint(tmp_path, 1, {"x": np.ones(2)}, {})
    only.write_bytes(b"garbage")
    warnings = Warnings()
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints is usable"):
        latest_checkpoint(tmp_path, warn=warnings)
    assert len(warnings) == 1


def test_empty_or_missing_directory_has_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path, warn=Warnings()) is None
    assert latest_checkpoint(tmp_path / "never-created", warn=Warnings()) is None
    assert list_checkpoints(tmp_path / "never-created") == []


def test_check_compatible_names_the_differing_key():
    meta = _meta()
    current = json.loads(json.dumps(_meta()))
    current["config"]["layers"] = (784, 128, 10)
    check_compatible(meta, current, ["epoch", "config.lr", "config.loss"])
    with pytest.raises(CheckpointError) as info:
        check_compatible(meta, current, ["config.lr", "config.layers"], path="run/ckpt-00000001.npz")
    message = str(info.value)
    assert "checkpoint config.layers [784, 256, 10] != current [784, 128, 10]" in message
    assert "run/ckpt-00000001.npz" in message
    assert "config.lr" not in message


def test_check_compatible_lists_every_difference_and_missing_keys():
    with pytest.raises(CheckpointError) as info:
        check_compatible({"a": 1, "b": 2}, {"a": 2, "b": 3, "c": 4}, ["a", "b", "c"])
    message = str(info.value)
    assert "checkpoint a 1 != current 2" in message
    assert "checkpoint b 2 != current 3" in message
    assert "checkpoint has no c" in message


def test_tuple_in_current_config_equals_list_in_checkpoint():
    check_compatible({"layers": [784, 10]}, {"layers": (784, 10)}, ["layers"])


# ---- whose files are trusted: regular files of this user only, never through a symlink --------------------

def test_a_checkpoint_planted_by_another_user_is_ignored_with_a_warning_and_never_deleted(tmp_path):
    need_another_user()
    ck = tmp_path / "ck"
    ck.mkdir()
    ours = save_checkpoint(ck, 1, _arrays(1), _meta(1))
    ck.chmod(0o777)  # the hole the other user comes through; what distbp checks at claim time is runstate's
    # a valid checkpoint (digest and all, the digest has no key) under a newer step: --resume would pick it
    plant_file(ck, "ckpt-00099999.npz", ours.read_bytes())
    ck.chmod(0o700)
    planted = ck / "ckpt-00099999.npz"
    assert planted.stat().st_uid != os.geteuid()
    warnings = Warnings()
    path, _, meta = latest_checkpoint(ck, warn=warnings)
    assert path == ours and meta["step"] == 1
    assert [w for w in warnings if str(planted) in w and "belongs to another user" in w], warnings
    assert list_checkpoints(ck) == [ours]
    with pytest.raises(CheckpointError, match="another user"):
        load_checkpoint(planted)
    save_checkpoint(ck, 2, _arrays(2), _meta(2), keep=1)  # pruning keeps 1: never another user's file
    assert planted.exists() and not ours.exists()


def test_a_symlink_named_like_a_checkpoint_is_never_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    target = save_checkpoint(elsewhere, 5, _arrays(5), _meta(5))  # a valid checkpoint, ours, behind the link
    ck = tmp_path / "ck"
    ours = save_checkpoint(ck, 1, _arrays(1), _meta(1))
    link = ck / "ckpt-00000099.npz"
    link.symlink_to(target)
    warnings = Warnings()
    path, _, _ = latest_checkpoint(ck, warn=warnings)
    assert path == ours
    assert [w for w in warnings if str(link) in w and "symbolic link" in w], warnings
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_checkpoint(link)
    save_checkpoint(ck, 2, _arrays(2), _meta(2), keep=1)
    assert link.is_symlink() and target.exists()  # neither the link nor what it points at is pruned


def test_a_fifo_named_like_a_checkpoint_is_ignored_without_blocking(tmp_path):
    ours = save_checkpoint(tmp_path, 1, _arrays(1), _meta(1))
    fifo = tmp_path / "ckpt-00000050.npz"
    os.mkfifo(fifo)
    warnings = Warnings()
    path, _, _ = latest_checkpoint(tmp_path, warn=warnings)
    assert path == ours and [w for w in warnings if "not a regular file" in w], warnings
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(fifo)  # O_NONBLOCK: opening a fifo with no writer does not hang
