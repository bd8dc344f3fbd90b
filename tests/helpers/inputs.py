"""Hand-made model files for the tests of what a reader trusts: members whose .npy headers claim what they do not
hold, oversized metadata, NaN weights (tests/unit/test_modelfile_limits.py, tests/unit/test_predict.py)."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from distbp.nn.modelfile import META_KEY


def npy_header(shape: tuple, dtype="<f4") -> bytes:
    """The bytes of a .npy version 1.0 header claiming an array of `shape` and `dtype` (no data)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                "shape": tuple(shape)})
    return out.getvalue()


def npy_bytes(a: np.ndarray) -> bytes:
    """A whole .npy file of `a`."""
    out = io.BytesIO()
    np.save(out, a)
    return out.getvalue()


def members_of(path) -> dict[str, bytes]:
    """The raw .npy bytes of every member of the .npz `path`, by key (W0, b0, …, distbp_model)."""
    with zipfile.ZipFile(path) as z:
        return {info.filename[:-len(".npy")]: z.read(info) for info in z.infolist()}


def write_members(path, members: dict[str, bytes]) -> None:
    """An .npz of these raw .npy members (stored, as np.savez writes them)."""
    Path(path).unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for key, data in members.items():
            z.writestr(f"{key}.npy", data)


def meta_of(members: dict[str, bytes]) -> dict:
    return json.loads(np.load(io.BytesIO(members[META_KEY])).tobytes())


def with_meta(members: dict[str, bytes], meta: dict, pad: int = 0) -> dict[str, bytes]:
    """members with the metadata replaced by `meta` (and a "pad" key of `pad` spaces, to make it large)."""
    if pad:
        meta = {**meta, "pad": " " * pad}
    return {**members, META_KEY: npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8))}


def with_nonfinite(path, key: str, value: float = np.nan, index: int = 0) -> None:
    """Rewrite the model file `path` with element `index` of member `key` (e.g. "W1") set to `value`."""
    members = members_of(path)
    a = np.load(io.BytesIO(members[key])).copy()
    a.reshape(-1)[index] = value
    members[key] = npy_bytes(a)
    write_members(path, members)
