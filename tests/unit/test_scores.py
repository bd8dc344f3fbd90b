"""The held-out scores (`distbp.train.scores`), one accumulator for training's evaluation and `distbp evaluate`:
each kind's numbers equal scikit-learn's on the same predictions, weighted and unweighted, with the targets'
scaling undone; chunks and ranks add up to what one chunk gives (1e-12); means over no weight are NaN."""

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, hamming_loss, mean_squared_error, r2_score

from distbp.comm.serial import SerialComm
from distbp.train.scores import Evaluation, Scores, score_kind, scores_of

ROWS, K = 257, 3
TIGHT = {"rel": 1e-12, "abs": 1e-12}


def weights(rng, weighted: bool) -> np.ndarray | None:
    return rng.uniform(0, 3, ROWS) if weighted else None


def chunks(n: int, sizes=(1, 50, 100)) -> list[slice]:
    """Uneven slices covering range(n)."""
    out, start, i = [], 0, 0
    while start < n:
        stop = min(n, start + sizes[i % len(sizes)])
        out.append(slice(start, stop))
        start, i = stop, i + 1
    return out


def scored(kind: str, y, out, w=None, loss=None, factor=None, parts=None) -> dict:
    """Scores of the rows with per-row losses `loss` (the chunks' Σ wₙ lⁿ are added), added in `parts` (slices;
    default one chunk), reduced on one rank."""
    scores = Scores(kind, out.shape[1], factor)
    loss = np.zeros(len(y)) if loss is None else loss if w is None else loss * w
    for part in parts or [slice(0, len(y))]:
        scores.add(y[part], float(loss[part].sum()), None if w is None else w[part], out=out[part])
    return scores.reduce(SerialComm()).scores


# ---- each kind against scikit-learn ----------------------------------------------------------------

@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_classes_score_the_mean_loss_and_top1_accuracy(weighted):
    rng = np.random.default_rng(1)
    out, y, w = rng.random((ROWS, K)), rng.integers(0, K, ROWS), weights(rng, weighted)
    loss = rng.random(ROWS)
    got = scored("classes", y, out, w, loss)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, out.argmax(1), sample_weight=w), **TIGHT)
    assert got["loss"] == pytest.approx(np.average(loss, weights=w) if weighted else loss.mean(), **TIGHT)
    assert set(got) == {"loss", "accuracy"}


def test_one_hot_classes_are_scored_by_argmax_like_labels():
    rng = np.random.default_rng(2)
    out, y = rng.random((ROWS, K)), rng.integers(0, K, ROWS)
    onehot = np.eye(K)[y]
    assert scored("classes", onehot, out) == scored("classes", y, out)


def test_a_given_correct_count_is_used_instead_of_the_outputs():
    scores = Scores("classes", K)
    scores.add(np.zeros(4, np.int64), 2.0, correct=3.0)
    assert tuple(scores.reduce(SerialComm())) == (0.5, 0.75)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_multilabel_scores_hamming_and_subset_accuracy(weighted):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (ROWS, K)).astype(np.float64)
    out = np.clip(y + rng.normal(0, 0.4, y.shape), 0, 1)  # σ outputs near the labels: some rows all right
    w = weights(rng, weighted)
    got = scored("multilabel", y, out, w)
    predicted = (out > 0.5).astype(int)
    assert got["accuracy"] == pytest.approx(1 - hamming_loss(y, predicted, sample_weight=w), **TIGHT)
    assert got["subset_accuracy"] == pytest.approx(accuracy_score(y, predicted, sample_weight=w), **TIGHT)
    assert 0 < got["subset_accuracy"] < got["accuracy"] < 1


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("scaled", [False, True], ids=["raw targets", "scaled targets"])
def test_values_score_rmse_in_original_units_and_r2_as_scikit_learn(weighted, scaled):
    rng = np.random.default_rng(4)
    y = rng.normal([100.0, -3.0, 0.5], [30.0, 2.0, 0.01], (ROWS, K))
    pred = y + rng.normal(0, [10.0, 1.5, 0.004], (ROWS, K))
    w = weights(rng, weighted)
    offset, factor = y.mean(0), 1 / y.std(0)
    if scaled:  # the model's view: targets and outputs as (v − offset)·factor, the factor undone for RMSE
        got = scored("values", (y - offset) * factor, (pred - offset) * factor, w, factor=factor)
    else:
        got = scored("values", y, pred, w)
    assert got["accuracy"] is None
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred, sample_weight=w)), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, pred, sample_weight=w), rel=1e-12)
    assert 0 < got["r2"] < 1


def test_r2_of_a_constant_target_follows_scikit_learn():
    # a target that never varies: a perfect prediction scores 1, any other 0 (scikit-learn's force_finite)
    y = np.column_stack([np.full(10, 7.0), np.arange(10.0)])
    for pred in (y.copy(), y + [[0.5, 0.0]]):
        assert scored("values", y, pred)["r2"] == pytest.approx(r2_score(y, pred), abs=1e-12)


# ---- chunks and ranks ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["classes", "multilabel", "values"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_chunks_give_what_one_chunk_gives(kind, weighted):
    rng = np.random.default_rng(5)
    out = rng.random((ROWS, K))
    y = {"classes": rng.integers(0, K, ROWS), "multilabel": rng.integers(0, 2, (ROWS, K)).astype(float),
         "values": out + rng.normal(0, 0.3, (ROWS, K))}[kind]
    w, loss = weights(rng, weighted), rng.random(ROWS)
    one = scored(kind, y, out, w, loss)
    split = scored(kind, y, out, w, loss, parts=chunks(ROWS))
    assert set(split) == set(one)
    for key, value in one.items():
        assert split[key] == (None if value is None else pytest.approx(value, **TIGHT)), key


def test_ranks_sums_add_up_to_one_ranks_scores():
    # each "rank" adds its share; the vectors summed (what the allreduce does) finish to one rank's numbers
    rng = np.random.default_rng(6)
    out = rng.normal(size=(ROWS, K))
    y, w = out + rng.normal(0, 0.5, (ROWS, K)), rng.uniform(0, 2, ROWS)
    one = scored("values", y, out, w)
    ranks = [Scores("values", K) for _ in range(3)]
    for scores, part in zip(ranks, np.array_split(np.arange(ROWS), 3)):
        scores.add(y[part], 0.0, w[part], out=out[part])
    summed = Scores("values", K).finish(np.sum([s.vector() for s in ranks], axis=0)).scores
    assert summed["accuracy"] is one["accuracy"] is None
    for key in ("loss", "rmse", "r2"):
        assert summed[key] == pytest.approx(one[key], **TIGHT), key


def test_the_sum_vector_starts_with_the_loss_correct_count_and_weight_of_old():
    # training's evaluation summed exactly these, in this order: classifiers keep their bits
    scores = Scores("classes", 2)
    scores.add(np.array([0, 1, 1]), 1.5, correct=2.0)
    scores.add(np.array([1]), 0.25, correct=0.0)
    assert scores.vector() == [1.75, 2.0, 4.0]
    assert len(Scores("multilabel", 5).vector()) == 4 and len(Scores("values", 5).vector()) == 3 + 3 * 5


def test_means_over_no_weight_are_nan():
    scores = Scores("values", 1)
    scores.add(np.ones((2, 1)), 1.0, np.zeros(2), out=np.zeros((2, 1)))
    got = scores.reduce(SerialComm()).scores
    assert all(np.isnan(got[key]) for key in ("loss", "rmse", "r2"))


def test_values_and_multilabel_need_the_outputs():
    with pytest.raises(ValueError, match="need the outputs"):
        Scores("values", 1).add(np.ones((2, 1)), 0.0)
    with pytest.raises(ValueError, match="kind must be one of classes, multilabel, values"):
        Scores("regression", 1)


# ---- what callers see --------------------------------------------------------------------------------

def test_an_evaluation_unpacks_as_loss_and_accuracy_with_the_other_scores_beside():
    e = Evaluation({"loss": 0.5, "accuracy": None, "rmse": 2.0, "r2": 0.75})
    loss, accuracy = e
    assert (loss, accuracy) == (0.5, None) and e == (0.5, None)
    assert scores_of(e)["r2"] == 0.75
    assert scores_of((0.25, 0.9)) == {"loss": 0.25, "accuracy": 0.9}  # a plain pair, as a stand-in gives


@pytest.mark.parametrize("data, loss, kind", [
    (SimpleNamespace(kind="classes"), "cross_entropy", "classes"),
    (SimpleNamespace(kind="classes"), "mse", "classes"),  # one-hot mse on a built-in set's class labels
    (SimpleNamespace(kind="values"), "mse", "values"),
    (SimpleNamespace(kind="multilabel"), "binary_cross_entropy", "multilabel"),
])
def test_the_kind_follows_the_data_and_the_loss(data, loss, kind):
    assert score_kind(SimpleNamespace(multilabel=loss == "binary_cross_entropy"), data) == kind
