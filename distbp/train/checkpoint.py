"""Checkpoints: one verified .npz file per saved step, written atomically by rank 0.

A checkpoint is DIR/ckpt-00001234.npz (the step, zero-padded so that names sort)
holding the caller's arrays (flat parameter buffer, optimizer state, RNG state...)
plus two entries of our own, stored as uint8 byte arrays so that loading never
needs pickle:

    __distbp_meta__     the meta dict as JSON (epoch, step, resolved configuration, ...)
    __distbp_header__   JSON {"format": 1, "sha256": ...}, the digest covering every
                        array's name, dtype, shape and bytes, and the meta JSON

A save writes a temporary file in the same directory, fsyncs it, renames it over
the final name and fsyncs the directory, so a crash leaves either the old set of
checkpoints or the new one, never a half-written ckpt-*.npz. Plain file handling;
no MPI here (only the root calls it). One job per directory is `distbp.train.lock`'s.

A checkpoint is trusted only when it is a regular file owned by this user: files named like
checkpoints that are symbolic links, not regular files, or another user's are never read, pruned or
counted (`list_checkpoints` names them to its `warn`), and files are opened with O_NOFOLLOW. The
digest detects damage, not forgery (it has no key): the folder's owner and mode
(`distbp.host.files`, checked when a run claims the folder) are what keep others out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
_META_KEY = "__distbp_meta__"
_HEADER_KEY = "__distbp_header__"
_RESERVED_PREFIX = "__distbp_"
_NAME_RE = re.compile(r"^ckpt-(\d{8,})\.npz$")
_TEMP_PREFIX = ".ckpt-"
_TEMP_SUFFIX = ".tmp"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """DIR/ckpt-<step, 8 digits or more>.npz."""
    return Path(directory) / f"ckpt-{step:08d}.npz"


def list_checkpoints(directory: str | Path, *, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Checkpoint files in `directory` that this user may trust, oldest (smallest step) first; [] if it does
    not exist.

    Ordered by the parsed step, not the name, so steps past 99,999,999 still sort.
    Temporary files of unfinished saves are not listed, nor are names of checkpoints that are symbolic
    links, not regular files, or owned by another user: `warn`, when given, is told of each of those.
    """
    directory = Path(directory)
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    found = []
    for entry in directory.iterdir():
        match = _NAME_RE.match(entry.name)
        if not match:
            continue
        why = untrusted(entry)
        if why is None:
            found.append((int(match.group(1)), entry))
        elif warn is not None and why != "gone":
            warn(f"ignoring {entry}: {why}; distbp trusts only checkpoints you wrote")
    return [path for _, path in sorted(found)]


def untrusted(path: str | Path, st: os.stat_result | None = None) -> str | None:
    """None when `path` itself (lstat, or `st` of an opened file) is a regular file owned by this user; else why
    not ("gone" when there is no such file)."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "gone"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it belongs to another user (uid {st.st_uid})"
    return None


def _open_trusted(path: Path):
    """A binary file object of `path`, opened without following a symlink (O_NOFOLLOW) nor blocking on a fifo,
    after checking the opened file itself is a regular file of this user; CheckpointError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:  # ELOOP: a symlink
        why = "it is a symbolic link" if os.path.islink(path) else exc.strerror
        raise CheckpointError(f"{path}: not opened ({why}); distbp trusts only checkpoints you wrote") from None
    why = untrusted(path, os.fstat(fd))
    if why is not None:
        os.close(fd)
        raise CheckpointError(f"{path}: not read ({why}); distbp trusts only checkpoints you wrote")
    return os.fdopen(fd, "rb")


def _leftover_temp_files(directory: Path) -> list[Path]:
    # only this user's own regular files: another's (in a group-shared folder) is never deleted
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.name.startswith(_TEMP_PREFIX) and p.name.endswith(_TEMP_SUFFIX) and untrusted(p) is None)


def _as_bytes_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _digest(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    """sha256 over each array's name, dtype, shape and C-order bytes, in name order, then the meta JSON."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        # a length-prefixed description of each array keeps two different layouts
        # from ever feeding the same byte stream to the hash.
        desc = json.dumps([name, np.lib.format.dtype_to_descr(a.dtype), list(a.shape)]).encode()
        h.update(len(desc).to_bytes(8, "little"))
        h.update(desc)
        data = np.ascontiguousarray(a).tobytes()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    h.update(meta_json.encode("utf-8"))
    return h.hexdigest()


def _validate_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    checked = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith(_RESERVED_PREFIX) or "/" in name:
            raise ValueError(f"checkpoint array name {name!r} is empty, contains '/' or is reserved")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"checkpoint array {name!r} has dtype {a.dtype}, which would need pickle")
        checked[name] = a
    return checked


def _fsync_directory(directory: Path) -> None:
    # makes the rename itself durable; some platforms cannot open a directory, and
    # there the rename is as durable as the platform allows anyway.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_npz(f, entries: dict[str, np.ndarray]) -> None:
    # the same layout as np.savez, written by hand so that any array name is
    # allowed (np.savez reserves 'file' and 'allow_pickle') and pickle never is.
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in entries.items():
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)


def save_checkpoint(directory: str | Path, step: int, arrays: dict[str, np.ndarray], meta: dict,
                    keep: int = 3) -> Path:
    """Write DIR/ckpt-<step>.npz atomically and keep only the newest `keep` checkpoints of this run.

    `arrays` come back bit-identical (dtype, shape and bytes) from load_checkpoint;
    `meta` must be JSON-serializable and comes back as JSON types (tuples as lists).
    Returns the path written. Only checkpoints whose meta has this meta's "run_id" count
    towards `keep` and are pruned: files of another run, or not checkpoints at all, are
    never deleted. Leftover temporary files of earlier, interrupted saves are removed
    with them: the caller holds the directory's lock (`distbp.train.lock`), so none of them
    can belong to a save in progress.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    entries = _entries(arrays, meta)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = _write_atomically(directory, int(step), entries)
    _prune(directory, keep, meta.get("run_id"))
    return final


def _entries(arrays: dict[str, np.ndarray], meta: dict) -> dict[str, np.ndarray]:
    # the caller's arrays, checked, and our two entries: the meta JSON and the header with the digest
    arrays = _validate_arrays(arrays)
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint meta is not JSON-serializable: {exc}") from exc
    header = {"format": FORMAT_VERSION, "sha256": _digest(arrays, meta_json)}
    entries = dict(arrays)
    entries[_META_KEY] = _as_bytes_array(meta_json)
    entries[_HEADER_KEY] = _as_bytes_array(json.dumps(header))
    return entries


def _write_atomically(directory: Path, step: int, entries: dict[str, np.ndarray]) -> Path:
    # a temporary file in the same directory, fsynced, renamed over the final name, then the directory fsynced
    final = checkpoint_path(directory, step)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX + f"{step:08d}-", suffix=_TEMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_npz(f, entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        # KeyboardInterrupt included: an interrupted save must not leave its temp file.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return final


def _prune(directory: Path, keep: int, run_id) -> None:
    # a file is this run's when its meta names the same run (or neither names one); junk is nobody's
    ours = [p for p in list_checkpoints(directory) if (m := read_meta(p)) is not None and m.get("run_id") == run_id]
    for path in ours[:-keep] + _leftover_temp_files(directory):
        path.unlink(missing_ok=True)


def read_meta(path: str | Path) -> dict | None:
    """The meta dict of a checkpoint file, read without loading its arrays or checking its checksum
    (for deciding whose file it is); None when it is not a readable distbp checkpoint."""
    try:
        with _open_trusted(Path(path)) as f, zipfile.ZipFile(f) as zf, zf.open(_META_KEY + ".npy") as member:
            meta = json.loads(np.lib.format.read_array(member, allow_pickle=False).tobytes().decode("utf-8"))
    except Exception:  # noqa: BLE001 — zip, npy, JSON and OS errors all mean "not a checkpoint"
        return None
    return meta if isinstance(meta, dict) else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) from one checkpoint file, after verifying its checksum.

    Raises CheckpointError naming the file for a missing, truncated, corrupt or
    foreign file, and for a symlink or another user's file (never opened through a link). Never unpickles.
    """
    path = Path(path)
    f = _open_trusted(path)
    try:
        with f, np.load(f, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile, numpy.format and OS errors all mean "unreadable"
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if _HEADER_KEY not in entries or _META_KEY not in entries:
        raise CheckpointError(f"{path}: not a distbp checkpoint (no header or meta entry)")
    try:
        header = json.loads(entries.pop(_HEADER_KEY).tobytes().decode("utf-8"))
        meta_json = entries.pop(_META_KEY).tobytes().decode("utf-8")
        meta = json.loads(meta_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: header or meta is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {header!r}, expected {FORMAT_VERSION}")
    if _digest(entries, meta_json) != header.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (the file was changed or damaged after it was written)")
    return entries, meta


def warn_stderr(message: str) -> None:
    """The default `warn`: a distbp warning line on stderr."""
    print(f"distbp: warning: {message}", file=sys.stderr, flush=True)


def latest_checkpoint(directory: str | Path, *, warn: Callable[[str], None] = warn_stderr,
                      ) -> tuple[Path, dict[str, np.ndarray], dict] | None:
    """(path, arrays, meta) of the newest checkpoint that loads and verifies.

    A corrupt, truncated or partial checkpoint is skipped with a warning naming the
    file and the reason, and the previous one is tried; leftover temporary files, and
    files named like checkpoints that are not this user's regular files, are reported and ignored.
    Returns None when the directory is missing or holds no checkpoint. Raises CheckpointError when
    checkpoints exist but none is usable: silently starting over would discard the run's history.
    """
    directory = Path(directory)
    for tmp in _leftover_temp_files(directory):
        warn(f"ignoring {tmp}: temporary file of a save that did not finish")
    candidates = list_checkpoints(directory, warn=warn)
    reasons = []
    for path in reversed(candidates):
        try:
            arrays, meta = load_checkpoint(path)
        except CheckpointError as exc:
            warn(f"skipping {exc}")
            reasons.append(str(exc))
            continue
        return path, arrays, meta
    if candidates:
        raise CheckpointError(f"{directory}: none of the {len(candidates)} checkpoints is usable: "
                              + "; ".join(reasons))
    return None


_MISSING = object()


def _lookup(meta: dict, key: str):
    # "model.layers" reaches meta["model"]["layers"].
    value = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def check_compatible(meta: dict, expected: dict, keys: list[str], *, path: str | Path | None = None) -> None:
    """Raise CheckpointError naming every key (dotted for nesting) whose checkpoint value differs.

    Values are compared as JSON, so a tuple in `expected` equals the list stored in
    the checkpoint. `path`, when given, names the checkpoint in the message.
    """
    problems = []
    for key in keys:
        want = _lookup(expected, key)
        if want is _MISSING:
            raise ValueError(f"current configuration has no key {key!r} to compare")
        want = json.loads(json.dumps(want))
        got = _lookup(meta, key)
        if got is _MISSING:
            problems.append(f"checkpoint has no {key} (current {json.dumps(want)})")
        elif got != want:
            problems.append(f"checkpoint {key} {json.dumps(got)} != current {json.dumps(want)}")
    if problems:
        where = f"{path}: " if path is not None else ""
        raise CheckpointError(where + "incompatible checkpoint: " + "; ".join(problems))
