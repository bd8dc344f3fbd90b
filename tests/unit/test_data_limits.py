"""Data and models that are not what they claim, or too big for the node: one clear error naming the file or
the cause, before anything large is allocated (issue 27's cases)."""

import gzip
import struct

import numpy as np
import pytest

from distbp.config import Config, validate
from distbp.data import formats
from distbp.data.datasets import from_arrays, load_dataset
from distbp.errors import ConfigError
from distbp.host import meminfo
from distbp.nn import model as model_module
from distbp.nn.model import MLP
from distbp.sync.base import Layout, ModelShape
from distbp.sync.factory import make_sync
from distbp.train import memory


def test_a_csv_of_binary_bytes_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"a,b,label\n1,2,0\n\xff\xfe,3,1\n")
    with pytest.raises(ValueError, match=r"bin.csv: line 3: not a CSV table of UTF-8 text"):
        load_dataset(str(path))


def test_a_csv_field_past_the_csv_modules_limit_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a,b,label\n1,2,0\n" + "7" * 200_000 + ",1,0\n")
    with pytest.raises(ValueError, match=r"big.csv: line 3: not a CSV table \(field larger than field limit"):
        load_dataset(str(path))


def idx_header(dims: list[int], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def test_idx_sizes_that_overflow_64_bits_are_refused_with_their_true_size(tmp_path):
    # 4 dims of 2^32-1: 2^128 bytes, which int64 arithmetic wraps around (to a small or negative count)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_header([2**32 - 1] * 4) + b"\0" * 64)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_header([4]) + b"\0" * 4)
    with pytest.raises(ValueError) as refused:
        load_dataset(str(tmp_path))
    true_size = 20 + (2**32 - 1) ** 4
    assert str(path) in str(refused.value) and str(true_size) in str(refused.value)


def test_a_gzipped_idx_counts_every_rank_of_the_node_before_decompressing(tmp_path, monkeypatch):
    dims = [1000, 28, 28]  # 784,000 bytes of images, claimed truthfully
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as out:
        out.write(idx_header(dims) + b"\0" * (1000 * 28 * 28))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as out:
        out.write(idx_header([1000]) + b"\0" * 1000)
    monkeypatch.setattr(meminfo, "available_memory", lambda: 1_000_000)  # one copy fits, two do not
    assert load_dataset(str(tmp_path)).n_features == 784
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: .* for each of the 2 ranks on this node"):
        load_dataset(str(tmp_path))


def test_features_too_large_to_scale_are_an_error_about_the_data_not_the_learning_rate():
    X = np.random.default_rng(0).standard_normal((50, 3)) * 1e300
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(ValueError, match=r"too large to scale") as refused:
            from_arrays(X, np.arange(50) % 2, None, name="arrays", seed=0, test_fraction=0.0, scale="auto")
    assert "--lr" not in str(refused.value)
    assert from_arrays(X, np.arange(50) % 2, None, name="arrays", seed=0, test_fraction=0.0,
                       scale="none").n_features == 3  # unscaled, the same rows are accepted


def planned(layers: list[int], ranks_per_node: int):
    cfg = validate(Config(layers=layers, batch_size=8, allreduce="mpi"))
    shape = ModelShape(tuple(layers), np.dtype("float32"), True)
    return make_sync(cfg, Layout(0, ranks_per_node, node_sizes=(ranks_per_node,)), shape)


def test_a_model_that_fits_one_rank_but_not_the_nodes_ranks_is_refused(monkeypatch):
    one = memory.per_rank(planned([100, 1000, 10], 1))["total"]
    monkeypatch.setattr(meminfo, "available_memory", lambda: int(1.5 * one))
    memory.check_fits_machine(planned([100, 1000, 10], 1))  # one rank fits
    with pytest.raises(ConfigError, match=r"for the 2 ranks on a node"):
        memory.check_fits_machine(planned([100, 1000, 10], 2))


def test_initialisation_draws_a_large_layer_in_pieces_with_the_bits_of_one_whole_draw(monkeypatch):
    whole = MLP([300, 700, 5], activation="relu", seed=4).flat_params.copy()
    sigmoid = MLP([300, 700, 5], activation="sigmoid", seed=4).flat_params.copy()
    monkeypatch.setattr(model_module, "INIT_CHUNK", 1000)  # W0 (300 x 700) in pieces of one row
    assert np.array_equal(MLP([300, 700, 5], activation="relu", seed=4).flat_params, whole)
    assert np.array_equal(MLP([300, 700, 5], activation="sigmoid", seed=4).flat_params, sigmoid)
