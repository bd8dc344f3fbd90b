"""Model files: a trained MLP in one self-describing .npz, written atomically, read back bit for bit.

    model.save("m.npz")            # also `distbp train --save m.npz`, and save_model(model, "m.npz")
    model = distbp.load("m.npz")   # the MLP with its parameters, scaling and classes (read_model builds it)
    P = model.predict(X_raw)       # the training's feature scaling is applied to the raw rows

The file is an ordinary .npz (numpy's zip of .npy members; nothing is pickled):

    W0, b0, W1, b1, …      layer l's W (fan_in, fan_out) and b (fan_out,) in the model's dtype, as --save
                           always wrote them, so that readers of those files keep working
    distbp_model           uint8 bytes of UTF-8 JSON: {"format": "distbp-model", "format_version": 1,
                           "distbp_version", "sizes", "activations" (one per hidden layer), "loss",
                           "output_activation" (the output layer's σ; files without it: the loss's default), "dtype",
                           "scaling" (null, or the rule and how it was made), "arrays" (every member above)}
    feature_offset,        (inputs,) float64, when the model scales its features: x ← (x − offset)·factor
    feature_factor
    classes                (outputs,) numbers or strings, when outputs 0…K−1 stand for other labels (a
                           binary_cross_entropy model with one output: the two labels, p ≤ ½ and p > ½)
    target_offset,         (outputs,) float64, when training scaled the regression targets: y ← (y − offset)·factor,
    target_factor          so predictions are outputs/factor + offset

A reader trusts nothing the file claims before it has checked it, and builds nothing before that: the
metadata is at most 1 MiB (MAX_META_BYTES); its format name and version, sizes and dtype come first; then
every array the model needs is there, with the shape and dtype its sizes give in its .npy header (read
without its data), and a zip entry as long as the header says; then the memory loading takes (parameters,
the initial draw's float64 chunk or the largest member being read) must fit this machine's available
memory for each rank on the node. Only then is the model built and filled, and every weight must be finite
(NaN or Inf names the layer). Each problem is one ModelFileError naming the file and the cause. Each zip
member carries a CRC-32, so corrupted bytes are found when the member is read.

Files that `--save` wrote before model files existed (W0, b0, … and nothing else) are refused, with a
message saying so: they do not record the activations, loss or scaling that made them, and a guess would
predict wrong numbers without a word. Re-save such parameters through an MLP built by hand (model.save).

This module is the format alone, below the model (`distbp.nn.model` imports it, never the other way): it
writes any object with the MLP's attributes and reads into a model that its caller's `build` makes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Protocol, TypeVar

import numpy as np
from numpy.lib import format as npformat

from distbp.errors import ModelFileError
from distbp.host import meminfo
from distbp.nn import kernels
from distbp.version import __version__


class SavedModel(Protocol):
    """What this format reads from a model and writes into one (`distbp.nn.model.MLP` has it all)."""

    sizes: list[int]
    activation_names: list[str]
    loss: Any  # .name: the loss's registry name; .output_activation: the output layer's σ
    dtype: np.dtype
    params: list[tuple[np.ndarray, np.ndarray]]  # per layer (W (fan_in, fan_out), b (fan_out,)), views
    flat_params: np.ndarray  # (n_params,)
    n_layers: int
    feature_offset: np.ndarray | None  # (inputs,) float64
    feature_factor: np.ndarray | None  # (inputs,) float64
    classes: np.ndarray | None  # (outputs,)
    target_offset: np.ndarray | None  # (outputs,) float64
    target_factor: np.ndarray | None  # (outputs,) float64


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
    if (model.target_offset is None) != (model.target_factor is None):
        raise ValueError("the model has only one of target_offset and target_factor: set both, or neither")
    if model.target_offset is not None:
        for name in ("target_offset", "target_factor"):
            a = np.asarray(getattr(model, name), np.float64)
            if a.shape != (model.sizes[-1],):
                raise ValueError(f"model.{name} has shape {a.shape}, the model has {model.sizes[-1]} outputs")
            arrays[name] = a
    if model.classes is not None:
        classes = _plain(np.asarray(model.classes))
        if classes.dtype.kind not in CLASS_KINDS:
            raise ValueError(f"model.classes must be numbers or strings, got dtype {classes.dtype}")
        if classes.shape != (class_count(model.sizes[-1], model.loss.name),):
            raise ValueError(f"model.classes has shape {classes.shape}, the model has {model.sizes[-1]} outputs"
                             + (" (a binary classifier's one output names two classes)"
                                if class_count(model.sizes[-1], model.loss.name) == 2 else ""))
        arrays["classes"] = classes
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "distbp_version": __version__,
        "sizes": list(model.sizes), "activations": list(model.activation_names), "loss": model.loss.name,
        "output_activation": model.loss.output_activation, "dtype": model.dtype.name,
        "scaling": None if model.feature_offset is None else {"rule": SCALING_RULE, "description": scaling},
        "arrays": list(arrays),
    }
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    return arrays


def class_count(outputs: int, loss: str) -> int:
    """How many labels model.classes holds: one per output, or two for binary cross-entropy's one output
    (classes[0] where p ≤ ½, classes[1] where p > ½)."""
    return 2 if loss == "binary_cross_entropy" and outputs == 1 else outputs


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

    Nothing is built or read whole before the file's claims are checked: the metadata's size (at most
    MAX_META_BYTES), every member's .npy header (shape, dtype, size) against the sizes the metadata gives, and
    the memory that loading takes against what this machine's ranks have available. Every weight is finite.
    Raises ModelFileError naming the file and what is wrong with it."""
    name = os.fspath(path)
    _check_looks_like_npz(name)
    try:
        archive = zipfile.ZipFile(name)
    except Exception as e:  # zipfile's, zlib's and the OS's errors all mean the same here
        raise ModelFileError(f"{name}: cannot read it, the .npz is truncated or corrupt ({e})") from None
    with archive:
        members = {info.filename[:-len(".npy")]: info for info in archive.infolist()
                   if info.filename.endswith(".npy")}
        meta = _read_meta(archive, members, name)
        headers = _check_headers(archive, members, meta, name)
        _check_memory(meta, headers, name)
        model = _build(build, meta, name)
        _fill(model, archive, members, meta, name)
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
    if saved.loss.output_activation != model.loss.output_activation:
        raise ModelFileError(f"{name}'s output layer is {saved.loss.output_activation}, the model's is "
                             f"{model.loss.output_activation}")
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


MAX_META_BYTES = 1 << 20  # the metadata of a model is a few hundred bytes; past 1 MiB it describes no model
META_KEYS = (("sizes", list), ("activations", list), ("loss", str), ("dtype", str), ("arrays", list))
DTYPES = ("float32", "float64")  # what distbp.nn.model.MLP computes in
# what building and filling a model allocates besides its parameters: the initial draw of W in float64, a chunk
# of at most INIT_DRAW_BYTES at a time (distbp.nn.model.INIT_CHUNK elements; a test holds the two together),
# then each member as it is read, before it is copied in
INIT_DRAW_BYTES = 8 << 20


def _read_meta(archive: zipfile.ZipFile, members: dict, name: str) -> dict:
    """The checked metadata: format and version, its keys' types, sizes and dtype a model can have."""
    if META_KEY not in members:
        if "W0" in members:
            raise ModelFileError(
                f"{name} holds parameters (W0, b0, …) but no {META_KEY} metadata: it predates distbp's model files "
                "(an older distbp train --save) and does not record its activations, loss or feature scaling. "
                "Train again with --save, or build the MLP it came from, copy W0, b0, … into model.params and "
                "call model.save(path)")
        raise ModelFileError(f"{name} is an .npz but not a distbp model file: it has no {META_KEY} member "
                             f"(its members: {', '.join(members) or 'none'})")
    shape, dtype = _header(archive, members[META_KEY], META_KEY, name)
    if dtype != np.uint8 or len(shape) != 1:
        raise ModelFileError(f"{name}: its {META_KEY} metadata is not JSON text ({dtype} {shape}, not uint8 bytes)")
    if shape[0] > MAX_META_BYTES:
        raise ModelFileError(f"{name}: its {META_KEY} metadata claims {shape[0]:,} bytes, more than the "
                             f"{MAX_META_BYTES:,} any model's description takes: not a model file distbp wrote")
    raw = _array(archive, members[META_KEY], META_KEY, name)
    try:
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
    for key, kind in META_KEYS:
        if not isinstance(meta.get(key), kind):
            raise ModelFileError(f"{name}: its metadata has no valid {key!r} (got {meta.get(key)!r:.200})")
    sizes = meta["sizes"]
    if len(sizes) < 2 or not all(type(s) is int and s > 0 for s in sizes):
        raise ModelFileError(f"{name}: its metadata describes no model this distbp can build: the sizes must be "
                             f"at least two positive integers, got {sizes!r:.200}")
    if meta["dtype"] not in DTYPES:
        raise ModelFileError(f"{name}: its metadata describes no model this distbp can build: dtype must be "
                             f"float32 or float64, got {meta['dtype']!r:.100}")
    if not all(isinstance(key, str) for key in meta["arrays"]):
        raise ModelFileError(f"{name}: its metadata's 'arrays' must be member names, got {meta['arrays']!r:.200}")
    return meta


def _expected(meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """The members a model of `meta` reads, each with the shape its sizes give and the dtype kinds it may have
    (the parameters: exactly the metadata's dtype, given as its name)."""
    sizes = meta["sizes"]
    expected = {}
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        expected[f"W{l}"] = ((fan_in, fan_out), meta["dtype"])
        expected[f"b{l}"] = ((fan_out,), meta["dtype"])
    if "feature_offset" in meta["arrays"] or "feature_factor" in meta["arrays"]:
        expected["feature_offset"] = expected["feature_factor"] = ((sizes[0],), "f")
    if "target_offset" in meta["arrays"] or "target_factor" in meta["arrays"]:
        expected["target_offset"] = expected["target_factor"] = ((sizes[-1],), "f")
    if "classes" in meta["arrays"]:
        expected["classes"] = ((class_count(sizes[-1], meta["loss"]),), CLASS_KINDS)
    return expected


def _check_headers(archive: zipfile.ZipFile, members: dict, meta: dict, name: str) -> dict[str, int]:
    """Every member the model reads is there, with the shape and dtype its .npy header gives checked against the
    metadata's sizes and dtype (only the headers are read). Returns each member's bytes."""
    expected = _expected(meta)
    missing = [key for key in dict.fromkeys([*expected, *meta["arrays"]]) if key not in members]
    if missing:
        raise ModelFileError(f"{name}: member(s) {', '.join(missing)} missing; the file is incomplete")
    sizes = meta["sizes"]
    nbytes = {}
    for key, (want, kinds) in expected.items():
        shape, dtype = _header(archive, members[key], key, name)
        layer = f"layer {key[1:]}: " if key[0] in "Wb" and key[1:].isdigit() else ""
        if shape != want:
            raise ModelFileError(f"{name}: {layer}{key} is {_dims(shape)}, but the file's sizes "
                                 f"{_arch(sizes)} need {_dims(want)}")
        if kinds in DTYPES and dtype != np.dtype(kinds):
            raise ModelFileError(f"{name}: {key} is {dtype}, the file's metadata says {kinds}")
        if kinds not in DTYPES and dtype.kind not in kinds:
            raise ModelFileError(f"{name}: {key} is {dtype} {shape}, the model needs ({want[0]},) values")
        nbytes[key] = math.prod(shape) * dtype.itemsize
    return nbytes


def _check_memory(meta: dict, nbytes: dict[str, int], name: str) -> None:
    """ModelFileError when loading the model would not fit in what this machine has available, for each rank
    of this node (every rank of `evaluate` and of `train --init-from` reads its own copy)."""
    need = loading_bytes(meta, nbytes)
    short = meminfo.node_shortfall(need)
    if short is not None:
        raise ModelFileError(f"{name}: loading its {_arch(meta['sizes'])} {meta['dtype']} model would need "
                             f"{need / 2**20:,.0f} MiB{short.each}, more than the {short.available / 2**20:,.0f} "
                             "MiB this machine has available")


def loading_bytes(meta: dict, nbytes: dict[str, int]) -> int:
    """The peak bytes of reading a model of `meta` whose members hold nbytes (key → bytes): its parameters, the
    initial draw's float64 chunk (or the largest member as it is read, whichever is larger), the scaling and
    classes it keeps, and the metadata."""
    sizes, item = meta["sizes"], np.dtype(meta["dtype"]).itemsize
    weights = [fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    params = (sum(weights) + sum(sizes[1:])) * item
    kept = sum(n for key, n in nbytes.items() if key[0] not in "Wb")  # scaling and classes
    draw = min(8 * max(weights), INIT_DRAW_BYTES)
    return params + kept + max(draw, max(nbytes.values())) + MAX_META_BYTES


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, name: str) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from the member's .npy header, its data unread; ModelFileError for a bad header, a dtype
    of Python objects, or a zip entry whose size is not the header's plus the data it claims (a lie in one)."""
    try:
        with archive.open(info) as fh:
            version = npformat.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, _, dtype = read(fh)  # Fortran order or not, the same bytes
            offset = fh.tell()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, NotImplementedError) as e:
        raise ModelFileError(f"{name}: member {key} cannot be read, the file is corrupt ({e})") from None
    if dtype.hasobject:
        raise ModelFileError(f"{name}: member {key} holds Python objects ({dtype}), which a model file never does")
    data = math.prod(shape) * dtype.itemsize
    if info.file_size != offset + data:
        raise ModelFileError(f"{name}: member {key} is corrupt: its header claims {_dims(shape)} {dtype} "
                             f"({data:,} bytes), its zip entry holds {max(0, info.file_size - offset):,}")
    return shape, dtype


def _array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, name: str) -> np.ndarray:
    """The member's array (its header checked by _header first); a bad CRC, a cut, a bad header: ModelFileError."""
    try:
        with archive.open(info) as fh:
            return npformat.read_array(fh, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
        raise ModelFileError(f"{name}: member {key} cannot be read, the file is corrupt ({e})") from None


def _build(build: Callable[..., M], meta: dict, name: str) -> M:
    try:
        output = meta.get("output_activation")
        if output is not None and not isinstance(output, str):
            raise ValueError(f"its output_activation must be a name, got {output!r:.100}")
        return build(meta["sizes"], activation=meta["activations"], loss=meta["loss"], dtype=meta["dtype"],
                     output_activation=output)
    except (ValueError, TypeError) as e:
        raise ModelFileError(f"{name}: its metadata describes no model this distbp can build: {e}") from None


def _fill(model: SavedModel, archive: zipfile.ZipFile, members: dict, meta: dict, name: str) -> None:
    """Copy the file's arrays into `model` (their headers checked against its sizes already); every weight
    must be finite: NaN or Inf would make NaN predictions, a NaN loss, or a training that blames --lr."""
    for l, (W, b) in enumerate(model.params):
        W[...] = _array(archive, members[f"W{l}"], f"W{l}", name)
        b[...] = _array(archive, members[f"b{l}"], f"b{l}", name)
    if not kernels.all_finite(model.flat_params):  # one pass over every parameter; the culprit is looked for after
        l, key = next((l, key) for l, (W, b) in enumerate(model.params)
                      for key, a in ((f"W{l}", W), (f"b{l}", b)) if not np.isfinite(a).all())
        raise ModelFileError(f"{name}: layer {l}: {key} holds NaN or Inf; the model cannot be used (train it "
                             "again, or from an earlier checkpoint)")
    if "feature_offset" in meta["arrays"] or "feature_factor" in meta["arrays"]:
        model.feature_offset = _vector(archive, members, "feature_offset", name)
        model.feature_factor = _vector(archive, members, "feature_factor", name)
    if "target_offset" in meta["arrays"] or "target_factor" in meta["arrays"]:
        model.target_offset = _vector(archive, members, "target_offset", name)
        model.target_factor = _vector(archive, members, "target_factor", name)
        if not model.target_factor.all():
            raise ModelFileError(f"{name}: target_factor holds a 0; its outputs cannot be put back in the targets' units")
    if "classes" in meta["arrays"]:
        model.classes = _vector(archive, members, "classes", name)


def _vector(archive: zipfile.ZipFile, members: dict, key: str, name: str) -> np.ndarray:
    """The member `key` (its header checked already): numbers must be finite."""
    a = _array(archive, members[key], key, name)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ModelFileError(f"{name}: {key} holds NaN or Inf")
    return a


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _arch(sizes) -> str:
    return "-".join(map(str, sizes))
