"""What a model file may claim: nothing is built or read whole before the metadata's size, every member's
.npy header and the memory that loading takes are checked; NaN or Inf weights name their layer. Each
problem is one ModelFileError naming the file."""

import tracemalloc

import numpy as np
import pytest
from inputs import members_of, meta_of, npy_bytes, npy_header, with_meta, with_nonfinite, write_members

import distbp
from distbp.errors import ModelFileError
from distbp.host import meminfo
from distbp.nn import model as model_module
from distbp.nn import modelfile
from distbp.nn.model import MLP, load_model
from distbp.nn.modelfile import META_KEY, MAX_META_BYTES, initial_parameters, read_model


def never_built(*args, **kwargs):
    raise AssertionError("the model was built before the file's claims were checked")


@pytest.fixture
def small(tmp_path):
    """A 4-3-2 model file: its path and its raw members."""
    path = tmp_path / "m.npz"
    MLP([4, 3, 2], activation="relu", seed=1).save(path)
    return path, members_of(path)


def refused(path, *phrases):
    with pytest.raises(ModelFileError) as info:
        read_model(path, never_built)
    for phrase in (str(path), *phrases):
        assert phrase in str(info.value)
    return str(info.value)


# ---- claims checked before anything is built -------------------------------------------------

def test_metadata_claiming_a_huge_model_is_refused_from_the_headers_before_it_is_built(small):
    path, members = small
    write_members(path, with_meta(members, {**meta_of(members), "sizes": [40000, 40000, 3]}))
    assert path.stat().st_size < 2048  # a 1 KB file that once built a 6 GB model
    refused(path, "layer 0: W0 is 4x3, but the file's sizes 40000-40000-3 need 40000x40000")


@pytest.mark.parametrize("sizes", [[40000, 40000, 2], [10**7, 10**6, 2]], ids=["6 GB", "10^13 elements"])
def test_a_header_claiming_more_than_its_zip_entry_holds_is_refused_unread(small, sizes, monkeypatch):
    path, members = small
    big = npy_header((sizes[0], sizes[1])) + b"\0" * 1000  # the header claims it all, the entry holds 1000 bytes
    write_members(path, {**with_meta(members, {**meta_of(members), "sizes": sizes}), "W0": big})
    read = modelfile._array
    monkeypatch.setattr(modelfile, "_array", lambda archive, info, key, name: read(archive, info, key, name)
                        if key == META_KEY else pytest.fail(f"{key} was read before every header was checked"))
    claimed = f"{sizes[0] * sizes[1] * 4:,} bytes"
    refused(path, "member W0 is corrupt: its header claims", claimed, "its zip entry holds 1,000")


def test_oversized_metadata_is_refused_before_it_is_read(small, monkeypatch):
    path, members = small
    write_members(path, with_meta(members, meta_of(members), pad=2 * MAX_META_BYTES))
    monkeypatch.setattr(modelfile, "_array", lambda *a: pytest.fail("the metadata was read"))
    refused(path, "metadata claims 2,09", "bytes, more than the 1,048,576")


def test_metadata_just_under_the_cap_is_read(small):
    path, members = small
    write_members(path, with_meta(members, meta_of(members), pad=MAX_META_BYTES - 1000))
    assert load_model(path).sizes == [4, 3, 2]


@pytest.mark.parametrize("sizes", [[4, True, 2], [4, -3, 2], [4, "3", 2], [4], [4, 3.0, 2]])
def test_sizes_that_are_not_positive_integers_are_refused_before_building(small, sizes):
    path, members = small
    write_members(path, with_meta(members, {**meta_of(members), "sizes": sizes}))
    refused(path, "describes no model this distbp can build")


def test_a_member_of_another_dtype_than_the_metadata_says_is_refused(small):
    path, members = small
    W = np.load(path)["W1"].astype(np.float64)
    write_members(path, {**members, "W1": npy_bytes(W)})
    refused(path, "W1 is float64, the file's metadata says float32")


def test_a_member_of_python_objects_is_refused_without_unpickling(small):
    path, members = small
    write_members(path, {**members, "b0": npy_header((3,), "O") + b"\0" * 24})
    refused(path, "member b0 holds Python objects")


# ---- memory -----------------------------------------------------------------------------------

def test_a_model_that_does_not_fit_in_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    path = tmp_path / "big.npz"
    MLP([300, 1000, 10], seed=0).save(path)  # 1.2 MB of float32 parameters
    monkeypatch.setattr(meminfo, "available_memory", lambda: 2 << 20)
    monkeypatch.delenv("MPI_LOCALNRANKS", raising=False)
    message = refused(path, "loading its 300-1000-10 float32 model would need 4 MiB")
    assert "more than the 2 MiB this machine has available" in message and "ranks" not in message
    monkeypatch.setenv("MPI_LOCALNRANKS", "3")  # every rank of the node reads its own copy
    refused(path, "for each of the 3 ranks on this node")
    monkeypatch.setattr(meminfo, "available_memory", lambda: 1 << 40)
    assert load_model(path).sizes == [300, 1000, 10]


@pytest.mark.parametrize("sizes, activation, dtype", [
    ([300, 2000, 10], "relu", "float32"),  # the initial draw is the peak
    ([500, 1000, 1000, 10], "sigmoid", "float64"),
    ([1000, 3000, 2], "tanh", "float32"),  # reading W0 is the peak
    ([2000, 3000, 2], "relu", "float64"),
])
def test_the_memory_it_asks_for_covers_what_loading_takes(tmp_path, monkeypatch, sizes, activation, dtype):
    # the estimate bounds the peak of read_model (numpy reports its allocations to tracemalloc), and not by far
    path = tmp_path / "m.npz"
    MLP(sizes, activation=activation, dtype=dtype).save(path)
    asked, estimate = [], modelfile.loading_bytes
    monkeypatch.setattr(modelfile, "loading_bytes", lambda *a: asked.append(estimate(*a)) or asked[-1])
    load_model(path)  # kernels compiled or loaded, outside the measurement
    tracemalloc.start()
    try:
        load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= asked[-1] <= 1.25 * peak, (peak, asked[-1])


def test_the_estimate_knows_the_models_initial_draw():
    # read_model builds the model before it fills it: the float64 chunk its initialisation draws is counted
    assert modelfile.INIT_DRAW_BYTES == 8 * model_module.INIT_CHUNK


def test_available_memory_is_this_machines():
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < meminfo.available_memory() <= total


# ---- NaN and Inf ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, layer", [("W1", np.nan, 1), ("b0", np.inf, 0), ("W0", -np.inf, 0)])
def test_nonfinite_weights_are_one_error_naming_the_layer(small, key, value, layer):
    path, _ = small
    with_nonfinite(path, key, value, index=1)
    message = f"{path}: layer {layer}: {key} holds NaN or Inf"
    with pytest.raises(ModelFileError, match=None) as info:
        distbp.load(path)
    assert message in str(info.value)
    with pytest.raises(ModelFileError) as info:  # --init-from reads it the same way
        initial_parameters(path, MLP([4, 3, 2], activation="relu"))
    assert message in str(info.value)


def test_nonfinite_scaling_is_refused(small):
    path, members = small
    meta = meta_of(members)
    meta["arrays"] += ["feature_offset", "feature_factor"]
    members = with_meta(members, meta)
    members["feature_offset"] = npy_bytes(np.array([0.0, np.nan, 0.0, 0.0]))
    members["feature_factor"] = npy_bytes(np.ones(4))
    write_members(path, members)
    with pytest.raises(ModelFileError, match="feature_offset holds NaN or Inf"):
        load_model(path)


def test_a_sound_file_still_reads_back_bit_for_bit(small):
    path, _ = small
    model = MLP([4, 3, 2], activation="relu", seed=1)
    assert load_model(path).flat_params.tobytes() == model.flat_params.tobytes()
    assert META_KEY in members_of(path)
