"""Datasets: every format round-trips through gather with its scaling, and bad input gets a clear error."""

import gzip

import numpy as np
import pytest

from distbp.data import datasets as data
from distbp.data.datasets import load_dataset


def gather_all(split, dtype=np.float64):
    """All rows of a split in order, scaled, and their int64 labels."""
    rows = np.arange(split.n_rows, dtype=np.int64)
    X = np.empty((split.n_rows, split.X.shape[1]), dtype=dtype)
    y = np.empty(split.n_rows, dtype=np.int64)
    split.gather(rows, X, y)
    return X, y


def standardized(X, X_train):
    std = X_train.std(axis=0)
    std[std == 0] = 1
    return (X - X_train.mean(axis=0)) / std


def write_idx(path, array, compress=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((40, 5)) * [1, 2, 3, 4, 5] + [10, -3, 0, 1, 2]).astype(np.float32)
    return X, rng.integers(0, 3, 40), (rng.standard_normal((10, 5)) + 1).astype(np.float32), rng.integers(0, 3, 10)


# ---------------------------------------------------------------- formats round-trip


def test_npz_with_test_split_round_trips_standardized_with_train_statistics(tmp_path, arrays):
    X, y, X_test, y_test = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert (ds.name, ds.n_features, ds.n_classes, ds.n_targets) == ("d.npz", 5, 3, 3)
    assert ds.scaling == "standardized (train mean/std)"
    X_got, y_got = gather_all(ds.train)
    np.testing.assert_allclose(X_got, standardized(X.astype(np.float64), X.astype(np.float64)), rtol=0, atol=1e-6)
    assert np.array_equal(y_got, y)
    X_got, y_got = gather_all(ds.test)
    np.testing.assert_allclose(X_got, standardized(X_test.astype(np.float64), X.astype(np.float64)), atol=1e-6)
    assert np.array_equal(y_got, y_test)


@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_gather_writes_any_rows_in_any_order_into_float32_and_float64(tmp_path, arrays, dtype, atol):
    X, y, _, _ = arrays
    np.savez(tmp_path / "d.npz", X=X.astype(np.float64), y=y)
    ds = load_dataset(str(tmp_path / "d.npz"), test_fraction=0)
    rows = np.array([7, 3, 3, 39, 0], dtype=np.int64)
    X_out, y_out = np.empty((5, 5), dtype=dtype), np.empty(5, dtype=np.int64)
    ds.train.gather(rows, X_out, y_out)
    expected = standardized(X.astype(np.float64), X.astype(np.float64))[rows]
    np.testing.assert_allclose(X_out, expected, rtol=0, atol=atol)
    assert np.array_equal(y_out, y[rows])


def test_gather_writes_one_hot_rows_into_a_2d_float_buffer(tmp_path, arrays):
    X, y, _, _ = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load_dataset(str(tmp_path / "d.npz"), test_fraction=0)
    rows = np.array([5, 1, 2], dtype=np.int64)
    y_out = np.full((3, 3), 7.0, dtype=np.float32)
    ds.train.gather(rows, np.empty((3, 5), np.float32), y_out)
    assert np.array_equal(y_out, np.eye(3, dtype=np.float32)[y[rows]])


def test_float_2d_targets_are_regression_targets_copied_by_gather(tmp_path, arrays):
    X, _, _, _ = arrays
    targets = np.random.default_rng(1).standard_normal((40, 2))
    np.savez(tmp_path / "d.npz", X=X, y=targets)
    ds = load_dataset(str(tmp_path / "d.npz"), test_fraction=0)
    assert ds.n_classes is None and ds.n_targets == 2
    y_out = np.empty((4, 2), dtype=np.float32)
    ds.train.gather(np.arange(4), np.empty((4, 5), np.float32), y_out)
    np.testing.assert_allclose(y_out, targets[:4], rtol=1e-6)
    with pytest.raises(ValueError, match="float targets"):
        ds.train.gather(np.arange(4), np.empty((4, 5)), np.empty(4, np.int64))


def test_gather_rejects_buffers_of_the_wrong_shape(tmp_path, arrays):
    X, y, _, _ = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    split = load_dataset(str(tmp_path / "d.npz"), test_fraction=0).train
    rows = np.arange(4)
    with pytest.raises(ValueError, match="X_out"):
        split.gather(rows, np.empty((4, 6)), np.empty(4, np.int64))
    with pytest.raises(ValueError, match="one-hot"):
        split.gather(rows, np.empty((4, 5)), np.empty((4, 2)))
    with pytest.raises(ValueError, match="int64"):
        split.gather(rows, np.empty((4, 5)), np.empty(4, np.int32))
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 40\)"):
        split.gather(np.array([0, 40]), np.empty((2, 5)), np.empty(2, np.int64))


def test_npy_directory_is_memory_mapped_and_round_trips(tmp_path, arrays):
    X, y, _, _ = arrays
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ds = load_dataset(str(tmp_path), test_fraction=0.25, seed=3)
    assert isinstance(ds.train.X, np.memmap) and isinstance(ds.test.X, np.memmap)
    # the held-out split is index arrays into the one memmap, not copies.
    assert ds.train.X is ds.test.X
    assert len(ds.train.index) == 30 and len(ds.test.index) == 10
    X_train = X[ds.train.index].astype(np.float64)
    X_got, y_got = gather_all(ds.train)
    np.testing.assert_allclose(X_got, standardized(X_train, X_train), atol=1e-6)
    assert np.array_equal(y_got, y[ds.train.index])
    X_got, y_got = gather_all(ds.test, np.float32)
    np.testing.assert_allclose(X_got, standardized(X[ds.test.index].astype(np.float64), X_train), atol=1e-5)
    assert np.array_equal(y_got, y[ds.test.index])


def test_npy_directory_with_test_files_uses_them(tmp_path, arrays):
    X, y, X_test, y_test = arrays
    for name, array in [("X", X), ("y", y), ("X_test", X_test), ("y_test", y_test)]:
        np.save(tmp_path / f"{name}.npy", array)
    ds = load_dataset(str(tmp_path))
    assert ds.train.n_rows == 40 and ds.test.n_rows == 10 and ds.train.index is None
    assert np.array_equal(gather_all(ds.test)[1], y_test)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_round_trip_divided_by_255(tmp_path, compress):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).astype(np.uint8)
    test_images, test_labels = images[:5].copy(), labels[:5].copy()
    write_idx(tmp_path / "train-images-idx3-ubyte", images, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, compress)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_images, compress)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", test_labels, compress)
    ds = load_dataset(str(tmp_path))
    assert ds.n_features == 12 and ds.scaling == "divided by 255"
    assert isinstance(ds.train.X, np.memmap) != compress
    X_got, y_got = gather_all(ds.train, np.float32)
    np.testing.assert_allclose(X_got, images.reshape(12, 12) / 255, atol=1e-7)
    assert np.array_equal(y_got, labels)
    assert np.array_equal(gather_all(ds.test)[1], test_labels)


def test_csv_label_column_is_named_label_else_the_last(tmp_path):
    (tmp_path / "named.csv").write_text("a,label,b\n1.5,2,3\n4,0.0,-6\n7,1,8\n")
    (tmp_path / "last.csv").write_text("a,b,class\n1.5,3,2\n4,-6,0\n7,8,1\n")
    for name in ("named.csv", "last.csv"):
        ds = load_dataset(str(tmp_path / name), test_fraction=0, scale="none")
        X_got, y_got = gather_all(ds.train)
        assert np.array_equal(X_got, [[1.5, 3], [4, -6], [7, 8]])
        assert np.array_equal(y_got, [2, 0, 1]) and ds.n_classes == 3


def test_digits_is_held_out_from_scikit_learn():
    ds = load_dataset("digits", seed=0)
    assert (ds.n_features, ds.n_classes) == (64, 10)
    assert ds.train.n_rows + ds.test.n_rows == 1797 and ds.test.n_rows == 180


def test_synthetic_is_deterministic_per_seed_and_takes_options():
    a = load_dataset("synthetic:rows=300,features=20,classes=4,test=50", seed=5)
    b = load_dataset("synthetic:rows=300,features=20,classes=4,test=50", seed=5)
    c = load_dataset("synthetic:rows=300,features=20,classes=4,test=50", seed=6)
    assert (a.train.n_rows, a.test.n_rows, a.n_features, a.n_classes) == (300, 50, 20, 4)
    assert a.train.X.dtype == np.float32
    assert np.array_equal(a.train.X, b.train.X) and np.array_equal(a.test.labels(), b.test.labels())
    assert not np.array_equal(a.train.X, c.train.X)
    assert set(np.unique(a.train.labels())) == {0, 1, 2, 3}


def test_synthetic_without_test_key_holds_out_test_fraction():
    ds = load_dataset("synthetic:rows=1000,features=8", test_fraction=0.2)
    assert (ds.train.n_rows, ds.test.n_rows, ds.n_classes) == (800, 200, 10)


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
def test_synthetic_is_learnable_but_not_linearly_trivial():
    from sklearn.linear_model import RidgeClassifier
    from sklearn.neural_network import MLPClassifier

    ds = load_dataset("synthetic:rows=5000,test=1000", seed=0)
    X, y = gather_all(ds.train, np.float32)
    X_test, y_test = gather_all(ds.test, np.float32)
    mlp = MLPClassifier((128,), max_iter=20, random_state=0).fit(X, y)
    linear = RidgeClassifier().fit(X, y)
    assert mlp.score(X_test, y_test) > 0.9
    assert linear.score(X_test, y_test) < 0.8


# ---------------------------------------------------------------- scaling and held-out split


def test_scaling_statistics_come_from_the_training_split_merged_over_chunks(tmp_path, arrays, monkeypatch):
    X, y, _, _ = arrays
    X = X.astype(np.float64) + 1e6  # a large offset checks the merge is numerically stable
    X[:, 2] = 4.0  # a constant column has std 0, which is treated as 1
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    monkeypatch.setattr(data, "CHUNK_ELEMENTS", 7)  # one row per chunk
    ds = load_dataset(str(tmp_path), test_fraction=0.3, seed=1, scale="standardize")
    X_train = X[ds.train.index]
    np.testing.assert_allclose(ds.train.offset, X_train.mean(axis=0), rtol=1e-14)
    std = X_train.std(axis=0)
    std[2] = 1
    np.testing.assert_allclose(ds.train.factor, 1 / std, rtol=1e-8)
    assert gather_all(ds.train)[0][:, 2].tolist() == [0.0] * 28


def test_minmax_maps_the_training_rows_to_the_unit_interval(tmp_path, arrays):
    X, y, X_test, y_test = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    ds = load_dataset(str(tmp_path / "d.npz"), scale="minmax")
    X_got = gather_all(ds.train)[0]
    np.testing.assert_allclose(X_got.min(axis=0), 0, atol=1e-7)
    np.testing.assert_allclose(X_got.max(axis=0), 1, atol=1e-7)
    X_test_got = gather_all(ds.test)[0]
    expected = (X_test - X.min(axis=0)) / (X.max(axis=0) - X.min(axis=0))
    np.testing.assert_allclose(X_test_got, expected, atol=1e-6)


def test_scale_none_leaves_features_unchanged(tmp_path, arrays):
    X, y, _, _ = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load_dataset(str(tmp_path / "d.npz"), test_fraction=0, scale="none")
    assert ds.scaling == "none"
    assert np.array_equal(gather_all(ds.train, np.float32)[0], X)


def test_held_out_split_is_deterministic_disjoint_and_complete(tmp_path):
    n = 200
    np.save(tmp_path / "X.npy", np.random.default_rng(0).standard_normal((n, 3)))
    np.save(tmp_path / "y.npy", np.arange(n))  # each label names its row
    first = load_dataset(str(tmp_path), seed=4, test_fraction=0.15)
    again = load_dataset(str(tmp_path), seed=4, test_fraction=0.15)
    other = load_dataset(str(tmp_path), seed=5, test_fraction=0.15)
    train, test = first.train.labels(), first.test.labels()
    assert len(test) == 30 and len(train) == 170
    assert not set(train) & set(test)
    assert sorted(set(train) | set(test)) == list(range(n))
    assert np.array_equal(test, again.test.labels())
    assert not np.array_equal(test, other.test.labels())


def test_held_out_split_of_in_memory_data_matches_the_memory_mapped_one(tmp_path, arrays):
    X, y, _, _ = arrays
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(40))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.arange(40))
    in_memory = load_dataset(str(tmp_path / "d.npz"), seed=2)
    mapped = load_dataset(str(tmp_path), seed=2)
    assert np.array_equal(in_memory.test.labels(), mapped.test.labels())
    np.testing.assert_allclose(gather_all(in_memory.test)[0], gather_all(mapped.test)[0], atol=0)


# ---------------------------------------------------------------- bad input


def save_npz(tmp_path, **arrays):
    np.savez(tmp_path / "bad.npz", **arrays)
    return str(tmp_path / "bad.npz")


X4 = np.zeros((4, 2))
Y4 = np.array([0, 1, 0, 1])


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(X=np.zeros(4), y=Y4), r"X \(.*\) must be 2-D"),
        (dict(X=X4, y=Y4[:3]), r"X \(.*bad.npz\) has 4 rows but y \(.*bad.npz\) has 3"),
        (dict(X=np.array([["a", "b"]] * 4), y=Y4), "non-numeric dtype"),
        (dict(X=X4, y=np.array([0, -1, 0, 1])), r"y \(.*bad.npz\): negative label -1 in row 1"),
        (dict(X=X4, y=np.array([0.0, 1.5, 0, 1])), "non-integer labels"),
        (dict(X=np.zeros((0, 2)), y=np.zeros(0, int)), "empty dataset"),
        (dict(X=X4, y=Y4, X_test=np.zeros((2, 3)), y_test=Y4[:2]), "X_test has 3 features, X has 2"),
        (dict(X=X4, y=Y4, X_test=np.zeros((2, 2)), y_test=np.zeros((2, 2))), "y_test"),
        (dict(X=X4), "needs arrays 'X' and 'y'"),
    ],
)
def test_bad_arrays_in_npz_give_a_clear_error_naming_the_file(tmp_path, arrays, message):
    path = save_npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(path)
    assert "bad.npz" in str(error.value)


def test_nan_and_inf_are_counted_and_the_first_row_named_in_memory_mapped_chunks(tmp_path, monkeypatch):
    X = np.zeros((10, 3))
    X[4, 1], X[4, 2], X[8, 0] = np.nan, np.inf, -np.inf
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.zeros(10, int))
    monkeypatch.setattr(data, "CHUNK_ELEMENTS", 6)  # two rows per chunk
    with pytest.raises(ValueError, match=r"X \(.*X.npy\) has 3 NaN or Inf values; the first is in row 4"):
        load_dataset(str(tmp_path))


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_dataset(str(tmp_path / "nowhere.npz"))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_dataset(str(tmp_path / "missing_dir"))
    with pytest.raises(ValueError, match="unknown built-in dataset 'mnits'"):
        load_dataset("mnits")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset(str(tmp_path))  # an empty directory
    np.save(tmp_path / "X.npy", X4)
    with pytest.raises(FileNotFoundError, match="no y.npy"):
        load_dataset(str(tmp_path))
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported format"):
        load_dataset(str(tmp_path / "d.txt"))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown key 'row'"):
        load_dataset("synthetic:row=10")
    with pytest.raises(ValueError, match="rows must be an integer"):
        load_dataset("synthetic:rows=ten")
    with pytest.raises(ValueError, match="unknown scale"):
        load_dataset("digits", scale="zscore")
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)


def test_corrupt_npz_and_npy_files(tmp_path):
    (tmp_path / "notzip.npz").write_bytes(b"hello, not a zip archive")
    with pytest.raises(ValueError, match="notzip.npz: not an .npz"):
        load_dataset(str(tmp_path / "notzip.npz"))
    np.savez_compressed(tmp_path / "full.npz", X=np.random.default_rng(0).random((200, 8)), y=np.zeros(200, int))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.npz: cannot read"):
        load_dataset(str(tmp_path / "cut.npz"))

    np.save(tmp_path / "y.npy", np.zeros(50, int))
    (tmp_path / "X.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError, match="X.npy: not a .npy file"):
        load_dataset(str(tmp_path))
    np.save(tmp_path / "X.npy", np.zeros((50, 4)))
    raw = (tmp_path / "X.npy").read_bytes()
    (tmp_path / "X.npy").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="X.npy: cannot read"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_with_wrong_magic_or_byte_count(tmp_path, compress):
    images = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 2, 2), np.uint8), compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, np.uint8), compress)
    good = images.read_bytes()
    raw = gzip.decompress(good) if compress else good
    for corrupt, message in [(b"\x08\x03" + raw[2:], "not an IDX file"),
                             (raw[:-3], r"IDX dims \(6, 2, 2\) need 40 bytes, the file has 37"),
                             (raw + b"\0", "the file has 41")]:
        images.write_bytes(gzip.compress(corrupt) if compress else corrupt)
        with pytest.raises(ValueError, match=message) as error:
            load_dataset(str(tmp_path))
        assert "train-images" in str(error.value)


def test_truncated_or_corrupt_gzip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (60, 4, 4), dtype=np.uint8)
    images = write_idx(tmp_path / "train-images-idx3-ubyte", pixels, compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(60, np.uint8), compress=True)
    good = images.read_bytes()
    images.write_bytes(good[: len(good) - 10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: corrupt gzip"):
        load_dataset(str(tmp_path))
    middle = len(good) // 2
    images.write_bytes(good[:middle] + bytes(40) + good[middle + 40 :])
    with pytest.raises(ValueError, match="corrupt gzip"):
        load_dataset(str(tmp_path))
    images.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt gzip"):
        load_dataset(str(tmp_path))


def test_idx_labels_and_images_with_different_counts(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=r"X \(.*train-images-idx3-ubyte\) has 6 rows but y \(.*train-labels-idx1-ubyte\) has 5"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b,label\n1,2,0\n3,4\n", "line 3 has 2 cells, the header has 3"),
        ("a,b,label\n1,2,0\n3,x,1\n", "line 3, column 'b': non-numeric cell 'x'"),
        ("a,b,label\n1,2,0\n3,,1\n", "line 3, column 'b': non-numeric cell ''"),
        ("a,b,label\n1,2,0\n3,4,1.5\n", "non-integer label 1.5 on line 3"),
        ("a,b,label\n1,2,0\n3,4,-1\n", "negative label -1"),
        ("a,b,label\n1,nan,0\n3,4,1\n", "1 NaN or Inf values; the first is in row 0"),
        ("a,b,label\n", "empty dataset"),
        ("", "empty dataset"),
    ],
)
def test_bad_csv_gives_a_clear_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(str(tmp_path / "bad.csv"))
    assert "bad.csv" in str(error.value)


def test_too_few_rows_to_hold_out_a_test_split(tmp_path):
    path = save_npz(tmp_path, X=np.zeros((1, 2)), y=np.zeros(1, int))
    with pytest.raises(ValueError, match="too few to hold out"):
        load_dataset(path)


def test_gather_of_no_rows_is_a_no_op_for_an_empty_rank_shard(tmp_path, arrays):
    X, y, _, _ = arrays
    np.savez(tmp_path / "d.npz", X=X, y=y)
    split = load_dataset(str(tmp_path / "d.npz"), test_fraction=0).train
    none = np.empty(0, dtype=np.int64)
    split.gather(none, np.empty((0, 5), np.float32), np.empty(0, np.int64))
    split.gather(none, np.empty((0, 5), np.float32), np.empty((0, 3), np.float32))


@pytest.mark.parametrize("failure,words", [(OSError(5, "Input/output error"), "cannot read it: Input/output error"),
                                           (MemoryError(), "not enough memory")])
def test_a_read_that_fails_names_the_file(tmp_path, monkeypatch, failure, words):
    from distbp.data import formats

    X = np.zeros((10, 3), np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(10, np.int64))

    def failing(path):
        raise failure
    monkeypatch.setattr(formats, "read_npz", failing)
    with pytest.raises(ValueError, match=words) as caught:
        load_dataset(str(tmp_path / "d.npz"))
    assert str(tmp_path / "d.npz") in str(caught.value)


def test_blockwise_noise_is_the_noise_of_one_draw():
    from distbp.data.datasets import add_standard_normal

    X = np.arange(3000 * 70, dtype=np.float32).reshape(3000, 70)  # more rows than one block
    expected = X + np.random.default_rng(7).standard_normal((3000, 70), dtype=np.float32)
    add_standard_normal(np.random.default_rng(7), X)
    np.testing.assert_array_equal(X, expected)
