"""Model files (distbp.nn.modelfile): save → load → predict gives the same bits; the file stays a plain .npz
with W0, b0, … plus its metadata; every broken, foreign or older file is one clear ModelFileError."""

import json
import os
import zipfile

import numpy as np
import pytest

import distbp
from distbp.errors import DistbpError, ModelFileError
from distbp.nn.model import MLP, load_model
from distbp.nn.modelfile import FORMAT_VERSION, META_KEY, initial_parameters, save_model

RNG = np.random.default_rng(7)
X_RAW = RNG.normal(5.0, 3.0, (9, 6))  # raw rows, far from standardized


def scaled_model(**kw) -> MLP:
    model = MLP([6, 5, 4, 3], **{"activation": ["relu", "tanh"], "seed": 3, **kw})
    model.feature_offset = RNG.normal(5.0, 1.0, 6)
    model.feature_factor = 1 / RNG.uniform(2.0, 4.0, 6)
    return model


def read_members(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def rewrite(path, change_meta=None, drop=(), replace=None) -> None:
    """Write the file again with its metadata changed, members dropped or replaced (a foreign or damaged file)."""
    members = read_members(path)
    meta = json.loads(members[META_KEY].tobytes())
    if change_meta:
        change_meta(meta)
    members[META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    members.update(replace or {})
    for key in drop:
        del members[key]
    os.remove(path)
    np.savez(path, **members)


# ---- the round trip --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_save_load_predict_gives_the_same_bits(tmp_path, dtype, loss):
    model = scaled_model(dtype=dtype, loss=loss)
    model.classes = np.array(["cat", "dog", "émeu"]) if loss == "cross_entropy" else None
    model.save(tmp_path / "m.npz")
    back = distbp.load(tmp_path / "m.npz")
    assert back.sizes == model.sizes and back.activation_names == ["relu", "tanh"]
    assert back.loss.name == loss and back.dtype == np.dtype(dtype)
    assert back.flat_params.tobytes() == model.flat_params.tobytes()
    assert back.feature_offset.tobytes() == model.feature_offset.tobytes()
    assert back.feature_factor.tobytes() == model.feature_factor.tobytes()
    assert back.predict(X_RAW).tobytes() == model.predict(X_RAW).tobytes()
    if loss == "cross_entropy":
        assert list(back.classes) == ["cat", "dog", "émeu"]
    else:
        assert back.classes is None


def test_a_model_without_scaling_or_classes_comes_back_without_them(tmp_path):
    model = MLP([4, 2], loss="mse", seed=1)  # no hidden layer
    save_model(model, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    assert back.feature_offset is None and back.feature_factor is None and back.classes is None
    assert back.predict(X_RAW[:, :4]).tobytes() == model.predict(X_RAW[:, :4]).tobytes()


def test_numeric_classes_round_trip(tmp_path):
    model = MLP([6, 3], seed=0)
    model.classes = np.array([10, 20, 30])
    model.save(tmp_path / "m.npz")
    assert load_model(tmp_path / "m.npz").classes.tolist() == [10, 20, 30]


def test_the_file_is_a_plain_npz_with_W_b_and_json_metadata(tmp_path):
    model = scaled_model()
    save_model(model, tmp_path / "m.npz", scaling="standardized (train mean/std)")
    members = read_members(tmp_path / "m.npz")  # numpy alone, no pickle
    for l, (W, b) in enumerate(model.params):
        assert np.array_equal(members[f"W{l}"], W) and np.array_equal(members[f"b{l}"], b)
    meta = json.loads(members[META_KEY].tobytes().decode("utf-8"))
    assert meta["format"] == "distbp-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["distbp_version"] == distbp.__version__
    assert (meta["sizes"], meta["activations"], meta["loss"], meta["dtype"]) == (
        [6, 5, 4, 3], ["relu", "tanh"], "cross_entropy", "float32")
    assert meta["scaling"]["description"] == "standardized (train mean/std)"
    assert set(meta["arrays"]) == {"W0", "b0", "W1", "b1", "W2", "b2", "feature_offset", "feature_factor"}


def test_object_classes_are_refused_at_save(tmp_path):
    model = MLP([6, 3])
    model.classes = np.array([1, "a", None], dtype=object)
    with pytest.raises(ValueError, match="numbers or strings"):
        model.save(tmp_path / "m.npz")
    assert not os.listdir(tmp_path)


def test_classes_held_as_python_objects_are_stored_as_strings_or_numbers(tmp_path):
    model = MLP([6, 3])
    for labels, kind in ((["a", "b", "c"], "U"), ([3, 1, 2], "i")):
        model.classes = np.array(labels, dtype=object)  # what pandas gives
        model.save(tmp_path / "m.npz")
        back = load_model(tmp_path / "m.npz").classes
        assert back.dtype.kind == kind and back.tolist() == labels


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    MLP([6, 3], seed=1).save(path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError):
        MLP([6, 3], seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


# ---- every bad file is one clear error --------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.npz"
    scaled_model().save(path)
    return path


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found: .*nope.npz"):
        distbp.load(tmp_path / "nope.npz")


def test_errors_are_distbp_errors(tmp_path):
    with pytest.raises(DistbpError):
        distbp.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"W0,b0\n1,2\n", "does not start like an .npz"),
    (b"\x93NUMPY\x01\x00", "single .npy array, not a model file"),
])
def test_a_file_that_is_not_an_npz_says_so(tmp_path, content, message):
    (tmp_path / "m.npz").write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_model(tmp_path / "m.npz")


def test_a_file_cut_in_half_is_truncated_or_corrupt(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_model(saved)


def test_flipped_bytes_inside_a_member_are_found(saved):
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("W1.npy")
    data = bytearray(saved.read_bytes())
    # the member's data starts after its local header (30 bytes, the name, the extra field); its last bytes are W1's
    end = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size
    data[end - 8:end] = bytes(b ^ 0xFF for b in data[end - 8:end])
    saved.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="W1 cannot be read, the file is corrupt"):
        load_model(saved)


def test_another_format_version_names_both_versions(saved):
    rewrite(saved, change_meta=lambda m: m.update(format_version=2, distbp_version="9.0"))
    with pytest.raises(ModelFileError, match=r"format version 2 \(written by distbp 9.0\).* reads format version 1"):
        load_model(saved)


def test_a_missing_member_is_named(saved):
    rewrite(saved, drop=["b1"])
    with pytest.raises(ModelFileError, match="member.* b1 missing"):
        load_model(saved)


def test_a_missing_scaling_member_is_named(saved):
    rewrite(saved, drop=["feature_factor"])
    with pytest.raises(ModelFileError, match="feature_factor missing"):
        load_model(saved)


def test_arrays_that_do_not_fit_the_sizes_name_the_layer(saved):
    rewrite(saved, replace={"W1": np.zeros((5, 7), np.float32)})
    with pytest.raises(ModelFileError, match="layer 1: W1 is 5x7, but the file's sizes 6-5-4-3 need 5x4"):
        load_model(saved)


def test_an_npz_that_is_not_a_model_file_lists_its_members(tmp_path):
    np.savez(tmp_path / "data.npz", X=np.zeros((2, 3)), y=np.zeros(2, np.int64))
    with pytest.raises(ModelFileError, match=r"not a distbp model file.*X, y"):
        load_model(tmp_path / "data.npz")


def test_a_save_file_from_before_model_files_says_it_predates_them(tmp_path):
    # what --save wrote until now: W0, b0, W1, b1 and nothing else
    model = MLP([6, 4, 3])
    np.savez(tmp_path / "old.npz", **{f"{k}{l}": a for l, (W, b) in enumerate(model.params)
                                      for k, a in (("W", W), ("b", b))})
    with pytest.raises(ModelFileError, match=r"no distbp_model metadata: it predates distbp's model files.*"
                                             r"model\.save\(path\)"):
        load_model(tmp_path / "old.npz")


# ---- starting a training from a file ----------------------------------------------------------

def test_initial_parameters_are_the_files_for_the_same_network(saved):
    model = MLP([6, 5, 4, 3], activation=["relu", "tanh"], dtype="float64", seed=99)
    flat = initial_parameters(saved, model)
    assert flat.dtype == np.float64 and flat.shape == (model.n_params,)
    assert np.array_equal(flat, load_model(saved).flat_params.astype(np.float64))  # float32 → float64 exactly


@pytest.mark.parametrize("model, message", [
    (MLP([6, 5, 8, 3], activation=["relu", "tanh"]), r"layer 1: W is 5x4 in .*m.npz, the model needs 5x8"),
    (MLP([6, 5, 3], activation="relu"), r"3-layer model \(6-5-4-3\), the model needs 2 layers \(6-5-3\)"),
    (MLP([6, 5, 4, 3], activation="relu"), r"hidden layers use relu, tanh; the model's use relu, relu"),
    (MLP([6, 5, 4, 3], activation=["relu", "tanh"], loss="mse"), r"trained with loss cross_entropy, the model uses mse"),
], ids=["layer sizes", "depth", "activations", "loss"])
def test_initial_parameters_refuse_another_network_and_say_how_it_differs(saved, model, message):
    with pytest.raises(ModelFileError, match=message):
        initial_parameters(saved, model)
