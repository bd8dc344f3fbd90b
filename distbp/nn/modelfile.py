"""Model files: a trained MLP in one self-describing .npz, written atomically, read back bit for bit.

    model.save("m.npz")            # also `distbp train --save m.npz`, and save_model(model, "m.npz")
    model = distbp.load("m.npz")   # the MLP with its parameters, scaling and classes (read_model builds it)
    P = model.predict(X_raw)       # the training's feature scaling is applied to the raw rows

The file is an ordinary .npz (numpy's zip of .npy members; nothing is pickled):

    W0, b0, W1, b1, …      layer l's W (fan_in, fan_out) and b (fan_out,) in the model's dtype, as --save
                           always wrote them, so that readers of those files keep working
    distbp_model           uint8 bytes of UTF-8 JSON: {"format": "distbp-model", "format_version": 1,
                           "distbp_version", "sizes", "activations" (one per hidden layer), "loss", "dtype",
                           "scaling" (null, or the rule and how it was made), "arrays" (every member above)}
    feature_offset,        (inputs,) float64, when the model scales its features: x ← (x − offset)·factor
    feature_factor
    classes                (outputs,) numbers or strings, when outputs 0…K−1 stand for other labels

A reader checks the format name and version first, then that every array the metadata lists is there
with the shape and dtype its sizes give; each problem is one ModelFileError naming the file and the cause.
Each zip member carries a CRC-32, so corrupted bytes are found when the member is read.

Files that `--save` wrote before model files existed (W0, b0, … and nothing else) are refused, with a
message saying so: they do not record the activations, loss or scaling that made them, and a guess would
predict wrong numbers without a word. Re-save such parameters through an MLP built by hand (model.save).

This module is the format alone, below the model (`distbp.nn.model` imports it, never the other way): it
writes any object with the MLP's attributes and reads into a model that its caller's `build` makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Protocol, TypeVar

import numpy as np

from distbp.errors import ModelFileError
from distbp.version import __version__


class SavedModel(Protocol):
    """What this format reads from a model and writes into one (`distbp.nn.model.MLP` has it all)."""

    sizes: list[int]
    activation_names: list[str]
    loss: Any  # .name: the loss's registry name
    dtype: np.dtype
    params: list[tuple[np.ndarray, np.ndarray]]  # per layer (W (fan_in, fan_out), b (fan_out,)), views
    flat_params: np.ndarray  # (n_params,)
    n_layers: int
    feature_offset: np.ndarray | None  # (inputs,) float64
    feature_factor: np.ndarray | None  # (inputs,) float64
    classes: np.ndarray | None  # (outputs,)


M = TypeVar("M", bound=SavedModel)  # the model type `build` makes (distbp.nn.model.MLP)

FORMAT = "distbp-model"
FORMAT_VERSION = 1
META_KEY = "distbp_model"
SCALING_RULE = "x <- (x - feature_offset) * feature_factor"
CLASS_KINDS = "iufUS"  # class labels: integers, floats or strings (never objects: those need pickle)
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"


# ---- writing ------------------------------------------------------------------------------------

def save_model(model: SavedModel, path: str | os.PathLike, *, scaling: str | None = None) -> None:
    """Write `model` to the model file `path` atomically (a crash leaves the old file or the new one).

    scaling: how the model's feature_offset/feature_factor were made, kept for people reading the file
    (e.g. the training data's "standardized (train mean/std)"); ignored when the model has no scaling.
    Raises ValueError for a model whose scaling or classes do not fit its layers.
    """
    arrays = model_arrays(model, scaling)
    write_atomically(path, lambda fh: np.savez(fh, **arrays))


def model_arrays(model: SavedModel, scaling: str | None = None) -> dict[str, np.ndarray]:
    """The members of `model`'s file: W0, b0, …, the optional scaling and classes, and the metadata."""
    arrays: dict[str, np.ndarray] = {}
    for l, (W, b) in enumerate(model.params):
        arrays[f"W{l}"], arrays[f"b{l}"] = W, b
    if (model.feature_offset is None) != (model.feature_factor is None):
        raise ValueError("the model has only one of feature_offset and feature_factor: set both, or neither")
    if model.feature_offset is not None:
        for name in ("feature_offset", "feature_factor"):
            a = np.asarray(getattr(model, name), np.float64)
            if a.shape != (model.sizes[0],):
                raise ValueError(f"model.{name} has shape {a.shape}, the model takes {model.sizes[0]} features")
            arrays[name] = a
    if model.classes is not None:
        classes = _plain(np.asarray(model.classes))
        if classes.dtype.kind not in CLASS_KINDS:
            raise ValueError(f"model.classes must be numbers or strings, got dtype {classes.dtype}")
        if classes.shape != (model.sizes[-1],):
            raise ValueError(f"model.classes has shape {classes.shape}, the model has {model.sizes[-1]} outputs")
        arrays["classes"] = classes
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "distbp_version": __version__,
        "sizes": list(model.sizes), "activations": list(model.activation_names), "loss": model.loss.name,
        "dtype": model.dtype.name,
        "scaling": None if model.feature_offset is None else {"rule": SCALING_RULE, "description": scaling},
        "arrays": list(arrays),
    }
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    return arrays


def _plain(classes: np.ndarray) -> np.ndarray:
    """Labels held as Python objects (as pandas holds them) as a plain array, when all are strings or all are
    numbers: an object array cannot be stored without pickle. Anything else is returned as it is."""
    values = classes.tolist() if classes.dtype == object else None
    if values and (all(isinstance(v, str) for v in values) or
                   all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)):
        return np.array(values)
    return classes


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write the file `path` through write(fh): into a temporary file beside it, fsynced, renamed over
    `path`, the directory fsynced. On any failure the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a failed write (a full disk, ctrl-c) leaves no temporary file behind
        raise
    with contextlib.suppress(OSError):  # some file systems cannot fsync a directory; the rename stands
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- reading ------------------------------------------------------------------------------------

def read_model(path: str | os.PathLike, build: Callable[..., M]) -> M:
    """The model saved in the model file `path`: build(sizes, activation=…, loss=…, dtype=…) makes it (the
    `MLP` class), then its parameters (the same bits), feature scaling and classes are filled in.
    Raises ModelFileError naming the file and what is wrong with it."""
    name = os.fspath(path)
    _check_looks_like_npz(name)
    try:
        archive = np.load(name, allow_pickle=False)
    except Exception as e:  # zipfile, zlib and numpy's own errors all mean the same here
        raise ModelFileError(f"{name}: cannot read it, the .npz is truncated or corrupt ({e})") from None
    with archive:
        meta = _read_meta(archive, name)
        model = _build(build, meta, name)
        _fill(model, archive, meta, name)
    return model


def initial_parameters(path: str | os.PathLike, model: SavedModel) -> np.ndarray:
    """The flat parameters (model.n_params,) of the model file `path`, in model's dtype, once it is checked
    to be the same network as `model`: layer sizes (a mismatch names the layer), activations and loss.
    A file of the other dtype is cast (float32 → float64 exactly)."""
    saved, name = read_model(path, type(model)), os.fspath(path)
    if saved.n_layers != model.n_layers:
        raise ModelFileError(f"{name} holds a {saved.n_layers}-layer model ({_arch(saved.sizes)}), the model "
                             f"needs {model.n_layers} layers ({_arch(model.sizes)})")
    for l, ((W_saved, _), (W, _)) in enumerate(zip(saved.params, model.params)):
        if W_saved.shape != W.shape:
            raise ModelFileError(f"layer {l}: W is {_dims(W_saved.shape)} in {name}, the model needs {_dims(W.shape)}")
    if saved.activation_names != model.activation_names:
        raise ModelFileError(f"{name}'s hidden layers use {', '.join(saved.activation_names)}; the model's use "
                             f"{', '.join(model.activation_names)}")
    if saved.loss.name != model.loss.name:
        raise ModelFileError(f"{name} was trained with loss {saved.loss.name}, the model uses {model.loss.name}")
    return saved.flat_params.astype(model.dtype)


def _check_looks_like_npz(name: str) -> None:
    if not os.path.exists(name):
        raise ModelFileError(f"model file not found: {name}")
    if not os.path.isfile(name):  # a directory, or a FIFO that would block
        raise ModelFileError(f"{name}: not a regular file")
    try:
        with open(name, "rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError as e:
        raise ModelFileError(f"{name}: cannot read it ({e.strerror})") from None
    if not head:
        raise ModelFileError(f"{name}: the file is empty")
    if head.startswith(NPY_MAGIC):
        raise ModelFileError(f"{name} is a single .npy array, not a model file (an .npz written by model.save "
                             "or distbp train --save)")
    if not head.startswith(ZIP_MAGIC):
        raise ModelFileError(f"{name} is not a model file: it does not start like an .npz (zip) archive")


def _member(archive, key: str, name: str) -> np.ndarray:
    """archive[key], every way of failing to read it (bad CRC, cut short, bad header) one clear error."""
    try:
        return archive[key]
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
        raise ModelFileError(f"{name}: member {key} cannot be read, the file is corrupt ({e})") from None


def _read_meta(archive, name: str) -> dict:
    files = archive.files
    if META_KEY not in files:
        if "W0" in files:
            raise ModelFileError(
                f"{name} holds parameters (W0, b0, …) but no {META_KEY} metadata: it predates distbp's model files "
                "(an older distbp train --save) and does not record its activations, loss or feature scaling. "
                "Train again with --save, or build the MLP it came from, copy W0, b0, … into model.params and "
                "call model.save(path)")
        raise ModelFileError(f"{name} is an .npz but not a distbp model file: it has no {META_KEY} member "
                             f"(its members: {', '.join(files) or 'none'})")
    raw = _member(archive, META_KEY, name)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"{raw.dtype} {raw.shape}, not uint8 bytes")
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{name}: its {META_KEY} metadata is not JSON text ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{name}: its {META_KEY} member does not describe a {FORMAT} file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{name} is a model file of format version {version} (written by distbp "
                             f"{meta.get('distbp_version', '?')}); this distbp ({__version__}) reads format "
                             f"version {FORMAT_VERSION}")
    for key, kind in (("sizes", list), ("activations", list), ("loss", str), ("dtype", str), ("arrays", list)):
        if not isinstance(meta.get(key), kind):
            raise ModelFileError(f"{name}: its metadata has no valid {key!r} (got {meta.get(key)!r})")
    return meta


def _build(build: Callable[..., M], meta: dict, name: str) -> M:
    try:
        return build(meta["sizes"], activation=meta["activations"], loss=meta["loss"], dtype=meta["dtype"])
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{name}: its metadata describes no model this distbp can build: {e}") from None


def _fill(model: SavedModel, archive, meta: dict, name: str) -> None:
    """Copy the file's arrays into `model`, each checked against the shape and dtype the sizes give."""
    layers = [key for l in range(model.n_layers) for key in (f"W{l}", f"b{l}")]
    missing = [key for key in dict.fromkeys(layers + meta["arrays"]) if key not in archive.files]
    if missing:
        raise ModelFileError(f"{name}: member(s) {', '.join(missing)} missing; the file is incomplete")
    for l, (W, b) in enumerate(model.params):
        for key, view in ((f"W{l}", W), (f"b{l}", b)):
            a = _member(archive, key, name)
            if a.shape != view.shape:
                raise ModelFileError(f"{name}: layer {l}: {key} is {_dims(a.shape)}, but the file's sizes "
                                     f"{_arch(model.sizes)} need {_dims(view.shape)}")
            if a.dtype != model.dtype:
                raise ModelFileError(f"{name}: {key} is {a.dtype}, the file's metadata says {model.dtype}")
            view[...] = a
    if "feature_offset" in meta["arrays"] or "feature_factor" in meta["arrays"]:
        model.feature_offset = _vector(archive, "feature_offset", model.sizes[0], "f", name)
        model.feature_factor = _vector(archive, "feature_factor", model.sizes[0], "f", name)
    if "classes" in meta["arrays"]:
        model.classes = _vector(archive, "classes", model.sizes[-1], CLASS_KINDS, name)


def _vector(archive, key: str, length: int, kinds: str, name: str) -> np.ndarray:
    if key not in archive.files:
        raise ModelFileError(f"{name}: member {key} missing; the file is incomplete")
    a = _member(archive, key, name)
    if a.shape != (length,) or a.dtype.kind not in kinds:
        raise ModelFileError(f"{name}: {key} is {a.dtype} {a.shape}, the model needs ({length},) values")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ModelFileError(f"{name}: {key} holds NaN or Inf")
    return a


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _arch(sizes) -> str:
    return "-".join(map(str, sizes))
