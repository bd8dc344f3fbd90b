"""Labels and targets as users have them (issue 28): class names and any label set map to class numbers through
the sorted labels, a loss's kind decides what y is (classes, a 0/1 multilabel matrix, float targets), a CSV or an
.npz names its target columns, regression targets can be standardized, and every bad input is one clear error.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris, load_linnerud

from distbp.comm.serial import SerialComm
from distbp.config import Config
from distbp.data import localdata
from distbp.data.datasets import from_arrays, load_dataset
from distbp.errors import ConfigError
from distbp.train.run import Run
from distbp.train.setup import dataset_options, resolve_layers

# ---------------------------------------------------------------- scikit-learn's small sets as users write them


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def iris_csv(tmp_path_factory):
    iris = load_iris()
    names = iris.target_names[iris.target]
    path = tmp_path_factory.mktemp("iris") / "iris.csv"
    return write_csv(path, ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"],
                     [[*x, name] for x, name in zip(iris.data, names)])


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory):
    diabetes = load_diabetes()
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
    return write_csv(path, [*diabetes.feature_names, "target"],
                     [[*x, int(t)] for x, t in zip(diabetes.data, diabetes.target)])


@pytest.fixture(scope="module")
def linnerud_csv(tmp_path_factory):
    linnerud = load_linnerud()
    path = tmp_path_factory.mktemp("linnerud") / "linnerud.csv"
    return write_csv(path, [*linnerud.feature_names, *linnerud.target_names],
                     [[*x, *t] for x, t in zip(linnerud.data, linnerud.target)]), linnerud.target_names


def gathered(split, width=None, dtype=np.float64):
    """Every row of a split as gather writes it: (X, y) with y int64 class numbers or (rows, width) targets."""
    rows = np.arange(split.n_rows, dtype=np.int64)
    X = np.empty((split.n_rows, split.X.shape[1]), dtype)
    y = np.empty(split.n_rows, np.int64) if width is None else np.empty((split.n_rows, width), dtype)
    split.gather(rows, X, y)
    return X, y


# ---------------------------------------------------------------- class names


def test_iris_csv_with_species_names_loads_as_three_classes_named_in_sorted_order(iris_csv):
    data = load_dataset(iris_csv, kind="classes", test_fraction=0.2)
    assert data.kind == "classes" and data.n_classes == 3 and data.n_targets == 3
    assert data.classes.tolist() == ["setosa", "versicolor", "virginica"]
    with open(iris_csv) as f:
        names = np.array([row.rsplit(",", 1)[1] for row in f.read().split()[1:]])
    train_names = data.classes[gathered(data.train)[1]]
    held_out = np.sort(np.random.default_rng([0, 1]).permutation(150)[:30])  # the held-out split's rows
    assert np.array_equal(np.sort(np.concatenate([train_names, data.classes[data.test.y]])), np.sort(names))
    assert np.array_equal(data.classes[data.test.y], names[held_out])


def test_string_labels_are_classes_for_the_default_kind_too(iris_csv):
    data = load_dataset(iris_csv)
    assert data.kind == "classes" and data.classes.tolist() == ["setosa", "versicolor", "virginica"]


def test_an_npz_of_unicode_labels_and_from_arrays_with_strings_give_the_same_classes(tmp_path):
    iris = load_iris()
    names = iris.target_names[iris.target]
    assert names.dtype.kind == "U"
    np.savez(tmp_path / "iris.npz", X=iris.data, y=names)
    from_file = load_dataset(str(tmp_path / "iris.npz"), kind="classes", test_fraction=0)
    in_memory = from_arrays(iris.data, names.tolist())  # a list of str, as pandas users pass it
    for data in (from_file, in_memory):
        assert data.classes.tolist() == ["setosa", "versicolor", "virginica"]
        assert np.array_equal(data.train.y, iris.target)  # the names sort as the targets number them


def test_labels_spread_over_train_and_test_map_through_the_union_of_both(tmp_path):
    X = np.zeros((4, 2))
    np.savez(tmp_path / "d.npz", X=X, y=np.array(["b", "b", "c", "c"]), X_test=X[:2], y_test=np.array(["a", "c"]))
    data = load_dataset(str(tmp_path / "d.npz"), kind="classes")
    assert data.classes.tolist() == ["a", "b", "c"]
    assert data.train.y.tolist() == [1, 1, 2, 2] and data.test.y.tolist() == [0, 2]


# ---------------------------------------------------------------- which label sets map


def test_integer_labels_that_are_not_0_to_k_map_through_their_sorted_set():
    X = np.zeros((6, 2))
    data = from_arrays(X, np.array([7, 3, 100000, 3, 7, 100000]), kind="classes")
    assert data.classes.tolist() == [3, 7, 100000] and data.n_classes == 3
    assert data.train.y.tolist() == [1, 0, 2, 0, 1, 2]


def test_a_huge_stray_label_maps_instead_of_making_a_huge_output_layer_for_the_default_kind_too():
    data = from_arrays(np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 1_000_000]))
    assert data.classes.tolist() == [0, 1, 2, 1_000_000] and data.n_classes == 4


def test_labels_0_to_k_keep_their_numbers_and_no_classes_as_today():
    y = np.arange(40) % 10
    for kind in ("classes", "auto"):
        data = from_arrays(np.zeros((40, 2)), y, kind=kind)
        assert data.classes is None and data.n_classes == 10
        assert data.train.y is not y and np.array_equal(data.train.y, y)


def test_the_default_kind_keeps_todays_class_numbers_for_labels_with_gaps():
    data = from_arrays(np.zeros((4, 2)), np.array([1, 2, 5, 1]))
    assert data.classes is None and data.n_classes == 6  # one output per class number 0…5, as ever


def test_whole_number_float_labels_map_through_float_classes():
    data = from_arrays(np.zeros((4, 2)), np.array([0.0, 1.0, 2.0, 1.0]), kind="classes")
    assert data.classes.dtype == np.float64 and data.classes.tolist() == [0.0, 1.0, 2.0]
    assert data.train.y.dtype == np.int64 and data.train.y.tolist() == [0, 1, 2, 1]


@pytest.mark.parametrize("y, words", [
    (np.array([0.5, 1.0, 2.0, 1.0]), ["non-integer labels (e.g. 0.5)", "continuous target", 'use loss="mse"']),
    (np.arange(100) * 3, ["100 distinct labels over 100 rows", "continuous target", 'use loss="mse"']),
])
def test_classes_that_look_like_a_continuous_target_are_refused_with_the_regression_hint(y, words):
    with pytest.raises(ValueError) as error:
        from_arrays(np.zeros((len(y), 2)), y, kind="classes")
    assert all(w in str(error.value) for w in words), error.value


def test_diabetes_as_a_csv_is_a_regression_with_values_and_refused_as_classes(diabetes_csv):
    data = load_dataset(diabetes_csv, kind="values", targets=["target"], test_fraction=0)
    assert data.kind == "values" and data.n_classes is None and data.n_targets == 1 and data.classes is None
    assert data.train.y.shape == (442, 1) and data.train.y.dtype == np.float64
    np.testing.assert_array_equal(data.train.y[:, 0], load_diabetes().target.astype(int))
    with pytest.raises(ValueError) as error:
        load_dataset(diabetes_csv, kind="classes")
    message = str(error.value)
    assert "diabetes.csv" in message and "continuous target" in message
    assert "use --loss mse --targets target" in message


def test_integer_targets_are_values_never_classes_for_mse(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((5, 2)), y=np.array([1, 2, 3, 4, 5]))
    data = load_dataset(str(tmp_path / "d.npz"), kind="values", test_fraction=0)
    assert data.kind == "values" and data.train.y.tolist() == [[1.0], [2.0], [3.0], [4.0], [5.0]]


# ---------------------------------------------------------------- several targets, and their scaling


def test_linnerud_with_three_target_columns_is_a_three_target_regression(linnerud_csv):
    path, names = linnerud_csv
    data = load_dataset(path, kind="values", targets=names, test_fraction=0)
    assert data.kind == "values" and data.n_targets == 3 and data.train.y.shape == (20, 3)
    np.testing.assert_array_equal(data.train.y, load_linnerud().target)
    assert data.n_features == 3  # the other three columns are the features


def test_standardized_targets_have_mean_0_and_std_1_over_the_training_rows(linnerud_csv):
    path, names = linnerud_csv
    data = load_dataset(path, kind="values", targets=names, scale_targets="standardize", test_fraction=0.2)
    train = data.train.y
    np.testing.assert_allclose(data.target_offset, train.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(data.target_factor, 1 / train.std(axis=0), rtol=1e-13)
    assert data.train.target_offset is data.target_offset and data.test.target_factor is data.target_factor
    _, y = gathered(data.train, 3)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=0), 1, rtol=1e-12)
    _, y_test = gathered(data.test, 3)  # held-out rows with the training rows' scaling
    np.testing.assert_allclose(y_test, (data.test.y - data.target_offset) * data.target_factor, rtol=1e-12)
    _, y32 = gathered(data.train, 3, np.float32)
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-6)


def test_a_constant_target_gets_factor_1_and_scaling_changes_the_fingerprint():
    X, y = np.arange(12.0).reshape(6, 2), np.column_stack([np.full(6, 4.0), np.arange(6.0)])
    plain, scaled = from_arrays(X, y), from_arrays(X, y, scale_targets="standardize")
    assert scaled.target_factor[0] == 1 and scaled.target_offset[0] == 4
    assert plain.target_offset is None and plain.fingerprint() != scaled.fingerprint()


@pytest.mark.parametrize("y, kind, what", [(np.arange(6) % 3, "classes", "class labels"),
                                           (np.eye(6)[:, :2], "multilabel", "0/1 multilabel targets")])
def test_scale_targets_is_for_float_targets_only(y, kind, what):
    with pytest.raises(ValueError, match=f"scale_targets standardize scales float targets.*{what}"):
        from_arrays(np.zeros((6, 2)), y, kind=kind, scale_targets="standardize")


def test_an_npz_names_its_target_members_and_a_folder_its_files(tmp_path):
    rng = np.random.default_rng(0)
    X, a, b = rng.standard_normal((8, 3)), rng.standard_normal(8), rng.standard_normal((8, 2))
    np.savez(tmp_path / "d.npz", X=X, price=a, size=b, X_test=X[:2], price_test=a[:2], size_test=b[:2])
    data = load_dataset(str(tmp_path / "d.npz"), kind="values", targets=["price", "size"])
    np.testing.assert_array_equal(data.train.y, np.column_stack([a, b]))
    np.testing.assert_array_equal(data.test.y, np.column_stack([a, b])[:2])
    folder = tmp_path / "folder"
    folder.mkdir()
    np.save(folder / "X.npy", X)
    np.save(folder / "species.npy", np.array(["cat", "dog"] * 4))
    data = load_dataset(str(folder), kind="classes", targets=["species"], test_fraction=0)
    assert data.classes.tolist() == ["cat", "dog"] and data.train.y.tolist() == [0, 1] * 4


# ---------------------------------------------------------------- multilabel and binary


def test_a_0_1_integer_matrix_is_a_multilabel_dataset():
    y = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]] * 3)
    data = from_arrays(np.zeros((12, 2)), y, kind="multilabel")
    assert data.kind == "multilabel" and data.multilabel and data.n_classes is None and data.n_targets == 3
    assert data.classes is None and data.train.y.dtype == np.float64
    _, gathered_y = gathered(data.train, 3, np.float32)
    np.testing.assert_array_equal(gathered_y, y)


@pytest.mark.parametrize("y, words", [
    (np.array([[0, 2], [1, 0]] * 3), ["must be 0 or 1", "row 0, column 1 holds 2"]),
    (np.array([[0, 0.5], [1, 0]] * 3), ["must be 0 or 1", "holds 0.5"]),
    (np.array(["a", "b", "c"] * 2), ["3 labels in one column", 'use loss="cross_entropy"']),
    (np.array(["a"] * 6), ["only 'a'", "two labels"]),
])
def test_what_is_no_multilabel_target_is_refused_with_one_clear_error(y, words):
    with pytest.raises(ValueError) as error:
        from_arrays(np.zeros((6, 2)), y, kind="multilabel")
    assert all(w in str(error.value) for w in words), error.value


def test_one_column_of_two_string_labels_is_one_binary_target_named_by_its_classes():
    y = np.array(["spam", "ham", "ham", "spam"])
    data = from_arrays(np.zeros((4, 2)), y, kind="multilabel")
    assert data.kind == "multilabel" and data.n_targets == 1 and data.classes.tolist() == ["ham", "spam"]
    assert data.train.y.tolist() == [[1.0], [0.0], [0.0], [1.0]]
    zero_one = from_arrays(np.zeros((4, 2)), np.array([1, 0, 0, 1]), kind="multilabel")
    assert zero_one.classes is None and zero_one.train.y.tolist() == [[1.0], [0.0], [0.0], [1.0]]


def test_a_csv_with_several_0_1_columns_names_its_outputs_by_them(tmp_path):
    path = write_csv(tmp_path / "tags.csv", ["a", "b", "red", "round"], [[1, 2, 0, 1], [3, 4, 1, 1], [5, 6, 1, 0]])
    data = load_dataset(path, kind="multilabel", targets=["red", "round"], test_fraction=0)
    assert data.classes.tolist() == ["red", "round"] and data.train.y.tolist() == [[0, 1], [1, 1], [1, 0]]


def test_the_default_kind_refuses_an_integer_matrix_with_the_multilabel_hint():
    with pytest.raises(ValueError, match='for multilabel 0/1 targets use loss="binary_cross_entropy"'):
        from_arrays(np.zeros((4, 2)), np.array([[0, 1], [1, 0]] * 2))


def test_several_target_columns_are_no_classes(linnerud_csv):
    path, names = linnerud_csv
    with pytest.raises(ValueError) as error:
        load_dataset(path, kind="classes", targets=names)
    assert "3 target columns" in str(error.value) and "--loss binary_cross_entropy" in str(error.value)
    assert "--loss mse" in str(error.value)


# ---------------------------------------------------------------- a model's classes


def test_labels_map_through_a_models_classes_in_their_order():
    given = np.array(["virginica", "setosa", "versicolor"])  # any order: the outputs' order
    data = from_arrays(np.zeros((3, 2)), np.array(["setosa", "virginica", "setosa"]), classes=given)
    assert data.classes is given or data.classes.tolist() == given.tolist()
    assert data.n_classes == 3 and data.train.y.tolist() == [1, 0, 1]


def test_a_label_the_models_classes_lack_is_one_error_naming_it_and_them(iris_csv):
    with pytest.raises(ValueError) as error:
        load_dataset(iris_csv, kind="classes", classes=np.array(["setosa", "versicolor"]))
    message = str(error.value)
    assert "label 'virginica'" in message and "['setosa', 'versicolor']" in message and "iris.csv" in message


def test_a_models_classes_check_a_multilabel_width_and_map_a_binary_column():
    y = np.array([[0, 1], [1, 0]] * 2)
    with pytest.raises(ValueError, match="2 target columns, and the model's classes name 3 outputs"):
        from_arrays(np.zeros((4, 2)), y, kind="multilabel", classes=np.array(["a", "b", "c"]))
    data = from_arrays(np.zeros((4, 2)), np.array(["no", "yes", "yes", "no"]), kind="multilabel",
                       classes=np.array(["no", "yes"]))
    assert data.train.y.ravel().tolist() == [0, 1, 1, 0]


# ---------------------------------------------------------------- errors name the file and the cause


@pytest.mark.parametrize("header, rows, options, words", [
    (["a", "b", "label"], [[1, 2, 0]], {"targets": ["price"]},
     ["no column 'price' for --targets", "its columns are a, b, label"]),
    (["species", "a", "b"], [["setosa", 1, 2]], {},
     ["line 2, column 'species': non-numeric cell 'setosa'", "name it with --targets species"]),
    (["a", "b", "price"], [[1, 2, 3], [1, 2, "cheap"]], {"kind": "values"},
     ["line 3, column 'price': non-numeric cell 'cheap'", "regression targets (--loss mse) are numbers"]),
    (["a", "b", "label"], [[1, 2, 0], [3, 4, " "]], {"kind": "classes"}, ["line 3, column 'label': empty label"]),
])
def test_csv_errors_name_the_file_the_line_and_the_column(tmp_path, header, rows, options, words):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError) as error:
        load_dataset(path, test_fraction=0, **options)
    assert "bad.csv" in str(error.value) and all(w in str(error.value) for w in words), error.value


def test_a_missing_target_member_is_named_with_the_files_members(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(ValueError, match=r"d.npz.*no array 'price'.*its arrays are X, y"):
        load_dataset(str(tmp_path / "d.npz"), targets=["price"])


def test_targets_for_a_built_in_set_are_refused():
    with pytest.raises(ValueError, match="--targets names a CSV's columns.*digits is a built-in set"):
        load_dataset("digits", targets=["label"])


# ---------------------------------------------------------------- the training's options and the model


@pytest.mark.parametrize("loss, data, kind", [
    ("cross_entropy", "iris.csv", "classes"), ("binary_cross_entropy", "tags.npz", "multilabel"),
    ("mse", "diabetes.csv", "values"), ("mse", "some/folder", "values"), ("mse", "digits", "auto"),
    ("mse", "synthetic:rows=100", "auto"), ("mse", "arrays", "auto"),
])
def test_dataset_options_take_the_kind_from_the_loss_and_the_spec(loss, data, kind):
    cfg = Config(data=data, loss=loss, targets=["y1"], scale_targets="standardize" if loss == "mse" else "none")
    options = dataset_options(cfg)
    assert options["kind"] == kind and options["targets"] == ["y1"] and options["scale_targets"] == cfg.scale_targets
    assert options["seed"] == cfg.seed and options["test_fraction"] == cfg.test_fraction


@pytest.mark.parametrize("loss, y, kind, words", [
    ("cross_entropy", np.random.default_rng(0).standard_normal((6, 2)), "values", ["float targets", "--loss mse"]),
    ("cross_entropy", np.eye(6)[:, :3], "multilabel", ["0/1 targets", "--loss binary_cross_entropy"]),
    ("binary_cross_entropy", np.arange(6) % 3, "classes", ["3 classes", "--loss cross_entropy"]),
    ("binary_cross_entropy", np.random.default_rng(0).standard_normal((6, 2)), "values", ["--loss mse"]),
])
def test_a_loss_that_cannot_train_on_the_data_names_the_one_to_use(loss, y, kind, words):
    data = from_arrays(np.zeros((6, 4)), y, kind=kind)
    with pytest.raises(ConfigError) as error:
        resolve_layers(Config(loss=loss, data="arrays"), data)
    assert all(w in str(error.value) for w in words), error.value


def test_the_outputs_follow_the_loss_and_the_data():
    X = np.zeros((6, 4))
    binary = from_arrays(X, np.array(["a", "b"] * 3), kind="multilabel")
    assert resolve_layers(Config(loss="binary_cross_entropy", data="arrays"), binary) == [4, 256, 1]
    multilabel = from_arrays(X, np.eye(6)[:, :3], kind="multilabel")
    assert resolve_layers(Config(loss="binary_cross_entropy", data="arrays"), multilabel) == [4, 256, 3]
    named = from_arrays(X, np.array(["a", "b", "c"] * 2), kind="classes")
    assert resolve_layers(Config(loss="cross_entropy", data="arrays"), named) == [4, 256, 3]
    with pytest.raises(ConfigError, match="5 outputs but arrays has 3 classes \\['a', 'b', 'c'\\]"):
        resolve_layers(Config(loss="cross_entropy", data="arrays", layers=[4, 8, 5]), named)
    numbers = from_arrays(X, np.arange(6) % 3, kind="classes")  # class numbers: spare outputs are allowed, as ever
    assert resolve_layers(Config(loss="cross_entropy", data="arrays", layers=[4, 8, 5]), numbers) == [4, 8, 5]


def test_the_trained_model_carries_the_datas_classes_and_target_scaling():
    named = from_arrays(np.zeros((6, 2)), np.array(["a", "b", "c"] * 2))
    model = SimpleNamespace(classes=None, target_offset=None, target_factor=None)
    Run.attach_scaling(SimpleNamespace(data=named, model=model))
    assert model.classes.tolist() == ["a", "b", "c"] and model.target_offset is None
    scaled = from_arrays(np.zeros((6, 2)), np.arange(12.0).reshape(6, 2), scale_targets="standardize")
    Run.attach_scaling(SimpleNamespace(data=scaled, model=model))
    assert model.target_offset is scaled.target_offset and model.target_factor is scaled.target_factor
    assert model.classes.tolist() == ["a", "b", "c"]  # data without classes leaves the model's


# ---------------------------------------------------------------- one rank of --local-rows decides as loading does


def test_one_rank_of_local_rows_keeps_what_loading_decided():
    X = np.random.default_rng(0).standard_normal((30, 3))
    for y, options in ((np.array(["b", "a", "c"] * 10), {}), (np.arange(30.0).reshape(15, 2).repeat(2, 0), {})):
        data = from_arrays(X, y, test_fraction=0.2, scale_targets="standardize" if y.dtype.kind == "f" else "none",
                           **options)
        agreed, _, _ = localdata.agree(data, SerialComm(), scale="auto", batch_size=8, seed=0)
        assert agreed.kind == data.kind and agreed.n_classes == data.n_classes
        assert (agreed.classes is None) == (data.classes is None)
        if data.classes is not None:
            assert agreed.classes.tolist() == data.classes.tolist()
        for a, b in ((agreed.target_offset, data.target_offset), (agreed.target_factor, data.target_factor)):
            assert (a is None) == (b is None) and (a is None or np.allclose(a, b, rtol=1e-14))
        assert np.array_equal(agreed.train.y, data.train.y) and np.array_equal(agreed.test.y, data.test.y)


def test_integer_labels_that_fit_the_given_output_layer_are_its_class_numbers(tmp_path):
    """--layers …,K (or a model's K outputs in distbp evaluate): labels {1, 3} of a 4-output run are class numbers
    1 and 3, not renumbered 0 and 1; without it they map through their sorted set; beyond it they map too."""
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(tmp_path / "d.npz", X=X, y=np.array([1, 3, 1, 3, 1, 3]))
    fits = load_dataset(str(tmp_path / "d.npz"), kind="classes", test_fraction=0, outputs=4)
    assert fits.classes is None and fits.n_classes == 4 and fits.train.y.tolist() == [1, 3, 1, 3, 1, 3]
    mapped = load_dataset(str(tmp_path / "d.npz"), kind="classes", test_fraction=0)
    assert mapped.classes.tolist() == [1, 3] and mapped.train.y.tolist() == [0, 1, 0, 1, 0, 1]
    beyond = load_dataset(str(tmp_path / "d.npz"), kind="classes", test_fraction=0, outputs=3)
    assert beyond.classes.tolist() == [1, 3]
