"""distbp.sklearn's parameters at scikit-learn's level: alpha, shuffle, early stopping's best epoch, threads, warnings.

The update rules are checked against scikit-learn's own MLPClassifier / MLPRegressor started from the same
parameters (float64): plain and momentum sgd agree to float64 rounding. Adam, whose ε scikit-learn adds before the
bias correction, is checked against the rule written out in numpy.

    .venv/bin/python -m pytest tests/unit/test_sklearn_params.py -q
"""

import json
import os
import subprocess
import sys
import warnings

import numba
import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")

import joblib  # noqa: E402  (scikit-learn's dependency)
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import r2_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from distbp.host import threads  # noqa: E402
from distbp.nn.model import MLP  # noqa: E402
from distbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn_twins import flat, from_the_same_start  # noqa: E402

quiet = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
ROUNDING = 1e-13  # |Δθ| after a few float64 steps that sum in another order; parameters are O(1)


def classification(n=150, classes=3, seed=0, informative=4, flip_y=0.01):
    X, y = make_classification(n_samples=n, n_features=6, n_informative=informative, n_classes=classes,
                               flip_y=flip_y, random_state=seed)
    return StandardScaler().fit_transform(X), y


def regression(n=150, seed=0, noise=1.0, features=6):
    X, y = make_regression(n_samples=n, n_features=features, noise=noise, random_state=seed)
    return StandardScaler().fit_transform(X), y / y.std()


def data_for(cls):
    return classification() if cls is MLPClassifier else regression()


# ---- alpha: scikit-learn's L2 penalty ------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_alpha_takes_scikit_learns_sgd_steps_from_the_same_start(cls, momentum):
    # one batch of all rows, so the order of the rows cannot matter: three steps of η·(∇L + α·W)/B
    X, y = data_for(cls)
    ours, theirs = from_the_same_start(cls, X, y, epochs=3, alpha=0.5, momentum=momentum,
                                              batch_size=len(X))
    assert np.abs(flat(ours) - flat(theirs)).max() < ROUNDING
    unpenalised, _ = from_the_same_start(cls, X, y, epochs=3, alpha=0.0, momentum=momentum,
                                                batch_size=len(X))
    assert np.abs(flat(unpenalised) - flat(theirs)).max() > 1e-4  # the penalty moved scikit-learn's weights


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_sgd_epochs_in_stored_order_are_scikit_learns_with_shuffle_false(cls, alpha):
    # 150 rows in batches of 32: four full batches and one of 22, whose penalty is α·W/22 as scikit-learn's
    X, y = data_for(cls)
    ours, theirs = from_the_same_start(cls, X, y, epochs=2, alpha=alpha, momentum=0.9, batch_size=32,
                                              shuffle=False)
    assert np.abs(flat(ours) - flat(theirs)).max() < ROUNDING
    if alpha == 0:  # scikit-learn's loss adds the penalty, ours is the data's alone (the module's docstring)
        np.testing.assert_allclose(ours.loss_curve_[-2:], theirs.loss_curve_[-2:], rtol=1e-12)


def adam_with_coupled_l2(sizes, start, X, targets, alpha, lr, steps, beta1=0.9, beta2=0.999, eps=1e-8):
    """θ after Adam on g = (∇L + α·W)/B from `start`, one batch of all B rows, in numpy: m̂/(√v̂ + ε) (distbp's ε
    placement); ∇L from distbp's float64 backward pass (itself checked against finite differences)."""
    model = MLP(sizes, activation="tanh", loss="mse", dtype="float64")
    model.flat_params[...] = start
    theta = [(W.copy(), b.copy()) for W, b in model.params]
    m = [(np.zeros_like(W), np.zeros_like(b)) for W, b in theta]
    v = [(np.zeros_like(W), np.zeros_like(b)) for W, b in theta]
    B = len(X)
    for t in range(1, steps + 1):
        for l, (W, b) in enumerate(theta):
            model.params[l][0][...], model.params[l][1][...] = W, b
        _, grads = model.loss_and_grad(X, targets)
        for l, ((W, b), (dW, db)) in enumerate(zip(theta, grads)):
            for k, (p, g) in enumerate(((W, (dW + alpha * W) / B), (b, db / B))):  # biases are not penalised
                m[l][k][...] = beta1 * m[l][k] + (1 - beta1) * g
                v[l][k][...] = beta2 * v[l][k] + (1 - beta2) * g * g
                m_hat, v_hat = m[l][k] / (1 - beta1 ** t), v[l][k] / (1 - beta2 ** t)
                p -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return np.concatenate([a.ravel() for pair in theta for a in pair])


def test_alpha_enters_adams_moments_as_part_of_the_gradient():
    # coupled, as scikit-learn's: the penalty's gradient goes through m and v (not AdamW's separate decay)
    X, y = regression()
    reg = MLPRegressor((7,), activation="tanh", alpha=3.0, batch_size=len(X), learning_rate_init=0.01, max_iter=1,
                       warm_start=True, random_state=0, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
        start = reg.model_.flat_params.copy()
        reg.set_params(max_iter=4).fit(X, y)
    rule = adam_with_coupled_l2(reg.model_.sizes, start, X, y[:, None], alpha=3.0, lr=0.01, steps=4)
    assert np.abs(reg.model_.flat_params - rule).max() < ROUNDING
    unpenalised = adam_with_coupled_l2(reg.model_.sizes, start, X, y[:, None], alpha=0.0, lr=0.01, steps=4)
    assert np.abs(reg.model_.flat_params - unpenalised).max() > 1e-4


# ---- shuffle -------------------------------------------------------------------------------------------------

@quiet
def test_shuffle_false_fits_are_repeatable_and_differ_from_shuffled_ones():
    X, y = classification(n=200)
    make = lambda shuffle: MLPClassifier((8,), solver="sgd", batch_size=20, learning_rate_init=0.05, max_iter=3,
                                         shuffle=shuffle, random_state=0, dtype="float64").fit(X, y)
    stored, again, shuffled = make(False), make(False), make(True)
    assert stored.model_.flat_params.tobytes() == again.model_.flat_params.tobytes()
    assert np.abs(stored.model_.flat_params - shuffled.model_.flat_params).max() > 1e-3


# ---- early stopping keeps the best epoch -----------------------------------------------------------------------

def held_out(estimator, X, targets):
    """The rows early stopping held out: the estimator's split (its seed, stratified for classifiers)."""
    stratify = targets if isinstance(estimator, MLPClassifier) else None
    _, X_val, _, t_val = train_test_split(X, targets, test_size=estimator.validation_fraction,
                                          random_state=estimator.random_state, stratify=stratify)
    return X_val, t_val


EARLY = {  # a large rate on few, noisy rows: the held-out score peaks early, then falls
    "classifier": (MLPClassifier, lambda: classification(n=120, classes=2, informative=3, flip_y=0.3),
                   dict(learning_rate_init=0.2, batch_size=16)),
    "regressor": (MLPRegressor, lambda: regression(n=80, noise=30.0, features=8),
                  dict(learning_rate_init=0.05, batch_size=8)),
}


@quiet
@pytest.mark.parametrize("case", list(EARLY))
def test_early_stopping_ends_with_the_parameters_of_the_best_epoch(case):
    cls, data, params = EARLY[case]
    X, y = data()
    make = lambda epochs: cls((32,), solver="sgd", early_stopping=True, validation_fraction=0.25,
                              n_iter_no_change=8, max_iter=epochs, random_state=0, dtype="float64", **params)
    fitted = make(60).fit(X, y)
    scores = fitted.validation_scores_
    best = int(np.argmax(scores)) + 1  # the first epoch of the best score (a later equal one is no better)
    assert best < fitted.n_iter_ and scores[-1] < fitted.best_validation_score_  # the last epoch was worse
    assert fitted.best_validation_score_ == scores[best - 1]
    # the parameters are those after `best` epochs: a fit that stops there holds the same bits
    assert fitted.model_.flat_params.tobytes() == make(best).fit(X, y).model_.flat_params.tobytes()
    # and they score best_validation_score_ on the held-out rows
    X_val, y_val = held_out(fitted, X, y)
    score = fitted.score(X_val, y_val) if cls is MLPClassifier else r2_score(y_val, fitted.predict(X_val))
    assert score == pytest.approx(fitted.best_validation_score_, rel=1e-12)


@quiet
def test_a_warm_started_fit_that_never_beats_the_best_so_far_ends_with_the_earlier_best():
    # scikit-learn keeps best_validation_score_ and its parameters across warm-started fits
    cls, data, params = EARLY["classifier"]
    X, y = data()
    clf = cls((32,), solver="sgd", early_stopping=True, validation_fraction=0.25, n_iter_no_change=8, max_iter=60,
              warm_start=True, random_state=0, dtype="float64", **params).fit(X, y)
    best, epochs = clf.model_.flat_params.copy(), clf.n_iter_
    # too small a step to do better (and, as scikit-learn's, the count of epochs without improvement goes on: the
    # first epoch may be the last)
    clf.set_params(learning_rate_init=1e-9, max_iter=3).fit(X, y)
    assert clf.n_iter_ > epochs and max(clf.validation_scores_[epochs:]) <= clf.best_validation_score_
    assert clf.model_.flat_params.tobytes() == best.tobytes()


# ---- threads -----------------------------------------------------------------------------------------------
# conftest.py pins every pool of this process to 1 thread (its variables, NUMBA_NUM_THREADS among them, which Numba
# reads once), so the thread tests fit in processes started without those variables: joblib's workers, and a
# fresh interpreter

THREAD_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DISTBP_THREADS",
               "SLURM_CPUS_PER_TASK")


def pool_threads() -> int:
    """The largest thread pool in this process now: Numba's or a loaded BLAS's."""
    return max(numba.get_num_threads(), *threads.blas_threads().values())


def threads_in_use(estimator, X, y) -> float:
    """A 'score' for GridSearchCV: the threads the fit just made (in the worker that ran it)."""
    return float(pool_threads())


def distbps_default(estimator, X, y) -> float:
    """A 'score' for GridSearchCV: the threads distbp alone would take in the worker (cores / ranks on the node)."""
    return float(threads.default_threads())


@quiet
def test_grid_search_with_two_jobs_gives_each_fit_its_share_of_the_cores(monkeypatch):
    # joblib's loky workers get OMP_NUM_THREADS etc. = cores // n_jobs where the parent sets none; each fit keeps
    # within them. No refit: nothing runs here while the variables are gone (Numba must not see them change)
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    X, y = classification(n=120)
    search = GridSearchCV(MLPClassifier((8,), max_iter=3, random_state=0), {"learning_rate_init": [0.01, 0.05]},
                          cv=2, n_jobs=2, refit=False, error_score="raise",
                          scoring={"accuracy": "accuracy", "threads": threads_in_use, "default": distbps_default})
    search.fit(X, y)
    share = max(1, joblib.cpu_count() // 2)
    used = np.concatenate([search.cv_results_[f"split{i}_test_threads"] for i in range(2)])
    default = np.concatenate([search.cv_results_[f"split{i}_test_default"] for i in range(2)])
    assert used.max() <= share
    assert (default > share).all() or threads.cores_available() == 1  # the cap had something to cap
    assert np.isfinite(search.cv_results_["mean_test_accuracy"]).all()


POOLS_AFTER_FITS = """
import json, multiprocessing, os, warnings
import numba
from sklearn.datasets import make_classification
from distbp.host import threads
from distbp.sklearn import MLPClassifier

warnings.simplefilter("ignore")
X, y = make_classification(n_samples=60, n_features=6, random_state=0)

def pools(**params):
    threads.set_threads(threads.cores_available())  # every pool as large as it may be: a fit must shrink them
    MLPClassifier((8,), max_iter=1, random_state=0, **params).fit(X, y)
    return max(numba.get_num_threads(), *threads.blas_threads().values())

def large_pools():  # a step of about 120 MFLOP (200 rows through 103,000 parameters): worth every core
    threads.set_threads(1)
    Xl, yl = make_classification(n_samples=600, n_features=200, random_state=0)
    MLPClassifier((512,), max_iter=1, random_state=0).fit(Xl, yl)
    return max(numba.get_num_threads(), *threads.blas_threads().values())

out = {"cores": threads.cores_available(), "default": pools(), "threads=1": pools(threads=1),
       "large default": large_pools()}
os.environ["OMP_NUM_THREADS"] = "1,1"  # a nested OpenMP setting: its first level counts
out["threads=2, OMP_NUM_THREADS=1,1"] = pools(threads=2)
del os.environ["OMP_NUM_THREADS"]
import threading
in_a_thread = {}
worker = threading.Thread(target=lambda: in_a_thread.update(plain=pools(), asked=pools(threads=2)))
worker.start()
worker.join()  # as joblib's threading backend runs a fit: in a thread of this process, sharing its pools
out["thread"], out["thread, threads=2"] = in_a_thread["plain"], in_a_thread["asked"]
multiprocessing.current_process().daemon = True  # as a worker of a process pool
out["pool worker"] = pools()
out["pool worker, threads=2"] = pools(threads=2)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def pools_after_fits() -> dict:
    """{setting: the largest pool after a fit} from a fresh interpreter with no thread variables set."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    done = subprocess.run([sys.executable, "-c", POOLS_AFTER_FITS], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_threads_none_takes_distbps_default_where_nothing_limits_it(pools_after_fits):
    assert pools_after_fits["large default"] == pools_after_fits["cores"]  # one process on its node: all its cores


def test_a_step_too_small_to_share_runs_on_one_thread_by_default(pools_after_fits):
    # 60 rows through 8 hidden units: far below host/threads.SMALL_STEP_FLOPS, where a second thread only costs
    assert pools_after_fits["default"] == 1


def test_threads_one_is_what_the_fit_uses(pools_after_fits):
    assert pools_after_fits["threads=1"] == 1


def test_the_thread_variables_cap_the_threads_asked_for(pools_after_fits):
    assert pools_after_fits["threads=2, OMP_NUM_THREADS=1,1"] == 1


def test_a_pool_worker_without_thread_variables_takes_one_thread_unless_asked(pools_after_fits):
    # joblib's multiprocessing backend sets no variables, and its worker cannot know how many siblings it has
    assert pools_after_fits["pool worker"] == 1
    assert pools_after_fits["pool worker, threads=2"] == min(2, pools_after_fits["cores"])


def test_a_fit_in_a_thread_of_its_process_takes_one_thread_unless_asked(pools_after_fits):
    # joblib's threading backend runs its fits in threads of one process, which share its pools
    assert pools_after_fits["thread"] == 1
    assert pools_after_fits["thread, threads=2"] == min(2, pools_after_fits["cores"])


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_threads_must_be_none_or_a_positive_integer(value):
    X, y = classification(n=30)
    with pytest.raises(ValueError, match="threads must be None or a positive integer"):
        MLPClassifier(threads=value).fit(X, y)


# ---- warnings point at the caller ------------------------------------------------------------------------------

def test_warnings_name_the_callers_file():
    X, y = classification(n=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MLPClassifier((4,), max_iter=1, batch_size=1000, random_state=0).fit(X, y)
        MLPRegressor((4,), max_iter=1, batch_size=1000, random_state=0).partial_fit(*regression(n=60))
    kinds = sorted((w.category.__name__, str(w.message).split(":")[0]) for w in caught)
    assert kinds == [("ConvergenceWarning", "Stochastic Optimizer"),
                     ("UserWarning", "Got `batch_size` larger than sample size. It is going to be clipped"),
                     ("UserWarning", "Got `batch_size` larger than sample size. It is going to be clipped")]
    assert [w.filename for w in caught] == [__file__] * 3
