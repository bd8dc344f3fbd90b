"""scikit-learn estimators trained by distbp: `MLPClassifier` and `MLPRegressor`, data-parallel under MPI.

    from distbp.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256,), solver="adam", max_iter=20, random_state=0)
    clf.fit(X_train, y_train).score(X_test, y_test)

    python script.py                          # one process on all cores
    mpirun -n 4 python -m mpi4py script.py    # the same script, each batch split over 4 ranks

Needs scikit-learn: `pip install distbp[sklearn]`. The estimators follow
`sklearn.neural_network.MLPClassifier` / `MLPRegressor`: the same parameter names where the meaning is
the same, the mean loss over a batch with the L2 penalty `alpha`, stopping when the loss (or the validation
score, with `early_stopping`, which then restores the best epoch's parameters) has not improved by `tol`
for `n_iter_no_change` epochs, and the fitted attributes `loss_curve_`, `n_iter_`, `classes_`, `coefs_`,
`intercepts_`, … They work with `clone`, `Pipeline`, `GridSearchCV` and pickle, and pass scikit-learn's
estimator checks (see tests/unit/test_sklearn.py).

The update is scikit-learn's. scikit-learn's gradient for a batch of B rows is (Σ_rows ∇l + α·W)/B (the
mean loss plus (α/2)·‖W‖²/B; biases are not penalised); distbp's loss is the sum over rows, and the
estimators train with lr_scale="mean" (s = 1/B, B the rows of each batch, the last one's too) and
l2=alpha, under which distbp's optimizers take g = s·(∇L + α·W): the same gradient, coupled to the
optimizer as scikit-learn's is (it enters sgd's velocity and Adam's moments). Plain sgd (momentum=0) and
heavy-ball momentum match scikit-learn's parameters to float64 rounding (tests/unit/test_sklearn_params.py).

Threads: `threads` per process (default: distbp's, the cores / the ranks on the node), never more than
the smallest of OMP_NUM_THREADS, NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS where one is set.
joblib's loky workers have them set to cores // n_jobs, so `GridSearchCV(..., n_jobs=k)` runs k fits side
by side without oversubscribing the cores; a worker of a process pool with none set (joblib's
multiprocessing backend) takes 1 thread by default.

Under MPI every rank calls `fit` with the same X and y (the same script on the same data); each rank
computes its share of every global batch, the gradients are summed over ranks, and every rank ends with
the same fitted estimator. Use scikit-learn's tools with n_jobs=1 (their default) there: every rank must
make the same fit calls in the same order. `fit(X, y, comm=…)` trains over other ranks
(`distbp.comm.SerialComm()`: this process alone). The fitted network is `model_`, a `distbp.MLP` (with
`model_.classes` set for classifiers, so that distbp's model files keep the labels).

Differences from scikit-learn's estimators:
- parameters are absent where distbp has no counterpart: no "lbfgs" solver; no
  `nesterovs_momentum` (sgd momentum is heavy-ball, scikit-learn's nesterovs_momentum=False); no
  `beta_1`, `beta_2`, `epsilon` (Adam's are fixed at scikit-learn's defaults 0.9, 0.999, 1e-8; distbp
  adds ε to the bias-corrected √v̂, scikit-learn before the correction); no `max_fun`.
- `shuffle=True` draws distbp's permutations (seeded by `random_state`), not scikit-learn's; with
  shuffle=False both take the rows in their stored order every epoch.
- `loss_`, `loss_curve_` and `best_loss_` are the data's mean loss without the penalty's (α/2)·‖W‖²/B
  (scikit-learn adds it to every batch's loss), so the stopping rule on the training loss sees the data's
  loss alone; the update does include the penalty.
- as in scikit-learn, `partial_fit` goes on with the optimizer state the last call left (Adam's moments, the
  momentum's velocity) and `fit` (warm_start too) starts a new one. `partial_fit` is one epoch over the rows
  given; in one process its calls share one job (distbp.KeptJob: set up by the first call, ended by fit, a
  changed parameter or pickling).
- with `early_stopping`, the best epoch's parameters are kept by distbp.fit's save_best in a model file in
  a private temporary folder of the root's, removed after fit (scikit-learn keeps a copy in memory).
- binary classification has 2 softmax outputs (scikit-learn: 1 logistic output), so `coefs_[-1]` has 2
  columns and `out_activation_` is "softmax" for any number of classes (a multilabel y: "logistic").
- computation in float32 by default (`dtype="float64"` for scikit-learn's precision); predictions are
  returned as float64 either way.
- `MLPRegressor` returns 1-D predictions when it was fitted on a 1-D y, 2-D ones (n_samples, 1) when
  fitted on a column (scikit-learn flattens any single output). Its validation score with early stopping
  is the variance-weighted R² over the outputs (scikit-learn: the mean of the per-output R²; the same
  for one output).
- invalid parameters raise ValueError (as scikit-learn's do), when `fit` is called (those that distbp.fit
  finds are `distbp.ConfigError`s, also ValueErrors); failures while training (NaN in the loss, a rank that
  stalls) raise `distbp.DistbpError`. NumPy's numbers (np.int64, np.float32: grids built with np.arange or
  np.logspace) are accepted wherever an int or a float is.
- X is used as given: no feature scaling is learnt (put a `StandardScaler` in front, as for scikit-learn).
"""

from __future__ import annotations

import multiprocessing
import numbers
import os
import shutil
import sys
import tempfile
import threading
import warnings

import numpy as np
from numpy.typing import ArrayLike

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as e:  # an optional dependency: say how to get it
    raise ImportError(f"distbp.sklearn needs scikit-learn ({e}): pip install distbp[sklearn]") from e

try:
    from sklearn.utils.validation import validate_data  # scikit-learn >= 1.6
except ImportError:  # scikit-learn 1.2-1.5: the same check is a method of BaseEstimator
    def validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)

from distbp.api import fit as distbp_fit
from distbp.comm.base import Comm
from distbp.comm.mpi import world
from distbp.host.threads import default_threads
from distbp.nn.model import MLP
from distbp.nn.modelfile import initial_parameters
from distbp.train.kept import KeptJob

ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}  # sklearn → distbp
SOLVERS = ("sgd", "adam")
DTYPES = ("float32", "float64")
X_DTYPES = (np.float64, np.float32)  # X is kept in either; other dtypes become float64
PREDICT_ROWS = 4096  # rows per forward pass in predict, so the model's workspace stays small for any X
# the thread variables a parent sets for its workers (joblib's loky backend: cores // n_jobs); the smallest caps
# the threads of a fit (joblib also sets BLIS_, VECLIB_ and NUMEXPR_, which no pool of distbp's reads)
THREAD_LIMIT_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _DistbpMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, checks, the training loop's bookkeeping.

    Subclasses set LOSS and OUT_ACTIVATION (or give `_loss` and `_out_activation`) and give `_targets`
    (y → distbp's targets) and `_validation_score` (an epoch record → the score early stopping watches).
    """

    LOSS: str
    OUT_ACTIVATION: str

    def _loss(self) -> str:
        """distbp's loss for the targets of this fit."""
        return self.LOSS

    def _out_activation(self) -> str:
        """scikit-learn's name of the output activation (out_activation_)."""
        return self.OUT_ACTIVATION

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, dtype="float32", threads=None,
                 learning_rate="constant", power_t=0.5, dropout=None):
        # stored unchanged (scikit-learn's clone and get_params rely on it); checked in fit
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dtype = dtype
        self.threads = threads
        self.learning_rate = learning_rate
        self.power_t = power_t
        self.dropout = dropout

    # ---- the public methods (the subclasses add predict, predict_proba, partial_fit) ----------------

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None, *,
            comm: Comm | None = None) -> "_DistbpMLP":
        """Train for up to max_iter epochs from new parameters (from the fitted ones with warm_start).

        X (n_samples, n_features) numeric; y (n_samples,) labels or targets, or (n_samples, n_outputs)
        targets (regressor). sample_weight (n_samples,): each row's weight in the loss, Σₙ wₙ lⁿ / Σₙ wₙ per
        batch (scikit-learn's weighted mean); >= 0, not all 0. comm: the ranks to train over (default: all
        MPI ranks, or this process). Returns self.
        """
        return self._fit(X, y, comm, incremental=False, sample_weight=sample_weight)

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Layer l's weights W (fan_in, fan_out), views into `model_`'s parameters (scikit-learn's coefs_)."""
        check_is_fitted(self, "model_")
        return [W for W, _ in self.model_.params]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Layer l's biases b (fan_out,), views into `model_`'s parameters."""
        check_is_fitted(self, "model_")
        return [b for _, b in self.model_.params]

    # ---- training -------------------------------------------------------------------------------------

    def _fit(self, X, y, comm: Comm | None, incremental: bool, classes=None, sample_weight=None):
        """fit (incremental=False) and partial_fit (True: one epoch, no stopping rule)."""
        self._check_params()
        continuing = hasattr(self, "model_") and (incremental or self.warm_start)
        X, y = validate_data(self, X, y, reset=not continuing, dtype=X_DTYPES, **self._target_checks())
        targets = self._targets(y, continuing, classes)
        weights = self._row_weights(sample_weight, X, y)
        comm = world() if comm is None else comm
        if not continuing:
            self._start(X.shape[1], comm)
        X_train, t_train, w_train, validation = X, targets, weights, None
        keeps_best = self.early_stopping and not incremental
        if keeps_best:
            X_train, t_train, w_train, validation = self._hold_out(X, targets, weights)
        self._n_train = X_train.shape[0]
        seed = self._seed if self.n_iter_ == 0 else _derived_seed(self._seed, self.n_iter_)
        epochs = 1 if incremental else self.max_iter
        if not incremental or not hasattr(self, "_optimizer_state"):
            # scikit-learn's rule: fit (warm_start too) starts a new optimizer; partial_fit goes on with the one
            # the previous call left (momentum's velocity, Adam's moments and step count)
            self._optimizer_state = {}
        if not incremental or not hasattr(self, "_lr"):
            self._lr = float(self.learning_rate_init)  # the sgd optimizer's rate, which its schedule changes
        self._stopped = False
        if self.solver == "sgd" and self.learning_rate != "constant":
            return self._fit_by_epoch(X_train, t_train, w_train, validation, comm, incremental, epochs)
        folder = _shared_temp_folder(comm) if keeps_best else None
        best_before = self.best_validation_score_  # warm_start: the best of the fits before
        try:
            # early stopping: distbp keeps the model of the best held-out score so far in a model file, which
            # scikit-learn keeps in memory (_best_coefs) and restores at the end
            best = {} if folder is None else {"save_best": os.path.join(folder, "best.npz"),
                                              "early_stop_metric": self.BEST_METRIC}
            history = self._distbp_fit(X_train, t_train, w_train, validation, comm, incremental, epochs=int(epochs),
                                       lr=float(self.learning_rate_init), seed=seed, **best)
            if folder is not None:
                self._restore_best(best["save_best"], comm, improved=self.best_validation_score_ > best_before)
        finally:
            if folder is not None and comm.is_root:
                shutil.rmtree(folder, ignore_errors=True)
        if not incremental and len(history) == epochs and not self._stopped and comm.is_root:
            _warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                  "hasn't converged yet.", ConvergenceWarning)
        return self

    def _distbp_fit(self, X, targets, weights, validation, comm: Comm, incremental: bool, **options) -> list[dict]:
        """distbp.fit of the model with this estimator's settings (options: epochs, lr, seed, and any more).

        The targets are the estimator's own class numbers 0…K−1: the model names no classes while it trains, so
        that distbp.fit does not map them through classes_ again; they come back after."""
        self.model_.classes = None
        try:
            return self._fit_model(X, targets, weights, validation, comm, incremental, **options)
        finally:
            self.model_.classes = getattr(self, "classes_", None)

    def _fit_model(self, X, targets, weights, validation, comm: Comm, incremental: bool, **options) -> list[dict]:
        return distbp_fit(
            self.model_, X, targets, validation=validation, verbose=bool(self.verbose), comm=comm,
            sample_weight=weights, optimizer_state=self._optimizer_state, keep=self._kept_job(incremental),
            callback=lambda record: self._after_epoch(record, incremental, comm.is_root),
            batch_size=self._batch_rows(X.shape[0], comm.is_root),
            # scikit-learn's mean loss with its penalty (α/2)·‖W‖² per batch: the step is η·(∇L + α·W)/B
            lr_scale="mean", l2=float(self.alpha), shuffle=bool(self.shuffle), scale="none",
            threads=self._threads(), dropout=self._dropout(), **options, **self._optimizer())

    def _fit_by_epoch(self, X, targets, weights, validation, comm: Comm, incremental: bool, epochs: int):
        """sgd with learning_rate "invscaling" or "adaptive": one distbp.fit call per epoch, the optimizer carried
        between them (optimizer_state), and scikit-learn's rate rule between epochs:
        invscaling: η = learning_rate_init / (t_ + 1)^power_t after each epoch (t_: rows trained on so far);
        adaptive: η /= 5 each time n_iter_no_change epochs pass without an improvement of tol, stopping once η
        is 1e-6 or less. scikit-learn's velocity carries η (v ← μv − η·g), distbp's does not (v ← μv + g,
        θ ← θ − η·v): when η changes, v is rescaled by η_old/η_new, which keeps scikit-learn's update.
        With early_stopping, the epoch of the best validation score is kept in memory and restored."""
        best_before = self.best_validation_score_
        ran = 0
        for _ in range(epochs):
            seed = self._seed if self.n_iter_ == 0 else _derived_seed(self._seed, self.n_iter_)
            best_so_far = self.best_validation_score_
            self._distbp_fit(X, targets, weights, validation, comm, incremental, epochs=1, lr=self._lr, seed=seed)
            ran += 1
            if validation is not None and self.validation_scores_[-1] > best_so_far:
                self._best_params = self.model_.flat_params.copy()  # this epoch is the best so far
            lr = self._lr
            if self.learning_rate == "invscaling":
                lr = float(self.learning_rate_init) / (self.t_ + 1) ** float(self.power_t)
            if self._no_improvement_count > self.n_iter_no_change:
                if self.learning_rate != "adaptive" or lr <= 1e-6:
                    self._stopped = True
                    break
                lr /= 5.0
                self._no_improvement_count = 0
                self._stopped = False
            self._set_rate(lr)
            if incremental:
                break
        if validation is not None and getattr(self, "_best_params", None) is not None \
                and self.best_validation_score_ >= (best_before if best_before is not None else -np.inf):
            self.model_.flat_params[...] = self._best_params
        if not incremental and ran == epochs and not self._stopped and comm.is_root:
            _warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                  "hasn't converged yet.", ConvergenceWarning)
        return self

    def _kept_job(self, incremental: bool) -> KeptJob | None:
        """The job partial_fit's calls share (in one process; see distbp.train.kept), None for fit, whose
        call is a whole job and ends a kept one."""
        kept = self.__dict__.get("_kept")
        if not incremental:
            if kept is not None:
                kept.close()
                del self._kept
            return None
        if kept is None:
            kept = self._kept = KeptJob()
        return kept

    def __getstate__(self) -> dict:
        """What pickling keeps: everything but the kept job (a live run; the next partial_fit sets up anew from
        the optimizer state, which stays)."""
        state = super().__getstate__()
        state.pop("_kept", None)
        return state

    def _dropout(self) -> list[float] | None:
        """distbp's dropout option: one probability for every hidden layer, or one each (None: no dropout)."""
        if self.dropout is None:
            return None
        return [float(p) for p in np.atleast_1d(self.dropout)]

    def _set_rate(self, lr: float) -> None:
        """The next epochs' η; the momentum velocity rescaled so that scikit-learn's update stays (see above)."""
        velocity = self._optimizer_state.get("arrays", {}).get("velocity")
        if velocity is not None and lr != self._lr:
            velocity *= self._lr / lr
        self._lr = lr

    def _restore_best(self, path: str, comm: Comm, improved: bool) -> None:
        """[dist] The parameters of the epoch with the best validation score: this fit's, from the root's model
        file, if it improved on the fits before (warm_start), else the copy kept from those (scikit-learn's)."""
        if not improved:
            if getattr(self, "_best_params", None) is not None:
                self.model_.flat_params[...] = self._best_params
            return
        found = np.zeros(1, np.int64)
        if comm.is_root and os.path.exists(path):  # written at the first epoch unless its score was NaN
            self.model_.flat_params[...] = initial_parameters(path, self.model_)
            found[0] = 1
        if comm.size > 1:
            comm.bcast(found)
            if found[0]:
                comm.bcast(self.model_.flat_params)
        if found[0]:
            self._best_params = self.model_.flat_params.copy()

    def _start(self, n_features: int, comm: Comm) -> None:
        """New parameters for n_features inputs, and the bookkeeping of a fresh fit (scikit-learn's)."""
        self._seed = _agreed_seed(self.random_state, comm)
        sizes = [n_features, *_hidden_sizes(self.hidden_layer_sizes), self.n_outputs_]
        self.model_ = MLP(sizes, activation=ACTIVATIONS[self.activation], loss=self._loss(), dtype=self.dtype,
                          seed=self._seed)
        self.model_.classes = getattr(self, "classes_", None)
        self.n_layers_ = len(sizes)
        self.out_activation_ = self._out_activation()
        self.n_iter_, self.t_ = 0, 0
        self.loss_curve_: list[float] = []
        self.loss_ = None
        self._no_improvement_count = 0
        self._best_params = None  # with early_stopping: the best epoch's, for a warm-started fit that does worse
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _after_epoch(self, record: dict, incremental: bool, is_root: bool) -> bool:
        """distbp.fit's callback: record the epoch as scikit-learn does; True stops training.

        Stops when the training loss has not fallen by tol (with early_stopping: the validation score
        has not risen by tol) for more than n_iter_no_change epochs in a row; partial_fit never stops.
        Every rank sees the same record, so every rank decides alike; only the root prints.
        """
        self.n_iter_ += 1
        self.t_ += self._n_train
        self.loss_ = record["train_loss"] / self._loss_divisor()
        self.loss_curve_.append(self.loss_)
        if self.early_stopping and not incremental:
            score = self._validation_score(record)
            self.validation_scores_.append(score)
            improved = score >= self.best_validation_score_ + self.tol
            self.best_validation_score_ = max(self.best_validation_score_, score)
        else:
            best = np.inf if self.best_loss_ is None else self.best_loss_  # partial_fit after early stopping
            improved = self.loss_ <= best - self.tol
            self.best_loss_ = min(best, self.loss_)
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1
        self._stopped = not incremental and self._no_improvement_count > self.n_iter_no_change
        if self._stopped and self.verbose and is_root:
            watched = "Validation score" if self.early_stopping else "Training loss"
            print(f"{watched} did not improve more than tol={self.tol} for {self.n_iter_no_change} "
                  "consecutive epochs. Stopping.")
        return self._stopped

    def _hold_out(self, X: np.ndarray, targets: np.ndarray, weights: np.ndarray | None):
        """(X_train, targets_train, weights_train, (X_val, targets_val[, weights_val])): validation_fraction of
        the rows (with their weights), stratified for classifiers, drawn with the estimator's seed (the same
        rows on every rank)."""
        stratify = targets if self._loss() == "cross_entropy" else None
        arrays = (X, targets) if weights is None else (X, targets, weights)
        parts = train_test_split(*arrays, test_size=float(self.validation_fraction), random_state=self._seed,
                                 stratify=stratify)
        X_train, X_val, t_train, t_val = parts[:4]
        w_train, w_val = (None, None) if weights is None else parts[4:]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size "
                             "of your dataset.")
        self._remember_validation(t_val)
        return X_train, t_train, w_train, (X_val, t_val) if w_val is None else (X_val, t_val, w_val)

    def _row_weights(self, sample_weight, X: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Each row's weight: sample_weight (checked as scikit-learn checks it: (n_samples,), finite, >= 0, not
        all 0) times the classifier's class_weight; None when neither is given."""
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
            if not weights.any():
                raise ValueError("Sample weights must contain at least one non-zero number.")
        class_weight = getattr(self, "class_weight", None)
        if class_weight is not None:
            per_class = compute_sample_weight(class_weight, y)
            weights = per_class if weights is None else weights * per_class
        return weights

    def _remember_validation(self, t_val: np.ndarray) -> None:
        """Hook: what the validation score needs to know about the held-out targets."""

    def _loss_divisor(self) -> int:
        return 1

    def _optimizer(self) -> dict:
        """distbp.fit's optimizer options for solver and momentum."""
        if self.solver == "adam":
            return {"optimizer": "adam"}
        if self.momentum > 0:
            return {"optimizer": "momentum", "momentum": float(self.momentum)}
        return {"optimizer": "gd"}

    def _batch_rows(self, n_samples: int, is_root: bool) -> int:
        """The global batch: "auto" is min(200, n_samples); larger than n_samples is clipped (with a warning)."""
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples and is_root:
            _warn("Got `batch_size` larger than sample size. It is going to be clipped")
        return min(int(self.batch_size), n_samples)

    def _threads(self) -> int:
        """Threads per process for this fit: `threads`, or distbp's default (the cores / the ranks on the node),
        capped by the smallest thread variable set in the environment. joblib's loky workers (GridSearchCV and
        cross_val_score with n_jobs) have them set to cores // n_jobs, so parallel fits do not oversubscribe
        the cores. A pool's worker with none set (joblib's multiprocessing backend: how many siblings it has
        is unknown) takes 1 thread unless `threads` says otherwise, and so does a fit in a thread other than the
        main one (joblib's threading backend: its fits share this process's pools)."""
        limit = _thread_limit()
        if self.threads is not None:
            return int(self.threads) if limit is None else min(int(self.threads), limit)
        if limit is None and (multiprocessing.current_process().daemon
                              or threading.current_thread() is not threading.main_thread()):
            limit = 1
        # None: distbp's default, which a step too small to share runs on one thread (train.setup.settle_threads)
        return None if limit is None else min(default_threads(), limit)

    # ---- prediction -----------------------------------------------------------------------------------

    def _outputs(self, X) -> np.ndarray:
        """The network's outputs (n_samples, n_outputs) as float64: softmax probabilities or linear outputs."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=X_DTYPES)
        out = np.empty((X.shape[0], self.model_.sizes[-1]), np.float64)
        for start in range(0, X.shape[0], PREDICT_ROWS):
            out[start:start + PREDICT_ROWS] = self.model_.predict(X[start:start + PREDICT_ROWS])
        return out

    # ---- parameter checks -------------------------------------------------------------------------------

    def _check_params(self) -> None:
        """Raise ValueError naming a parameter that cannot work (scikit-learn checks in fit too)."""
        name = type(self).__name__
        _hidden_sizes(self.hidden_layer_sizes)
        _one_of("activation", self.activation, tuple(ACTIVATIONS))
        if self.solver == "lbfgs":
            raise ValueError(f"{name}: solver='lbfgs' is not available in distbp; use 'sgd' or 'adam'")
        _one_of("solver", self.solver, SOLVERS)
        _one_of("dtype", self.dtype, DTYPES)
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"{name}: shuffle must be True or False, got {self.shuffle!r}")
        if not (self.threads is None or (_is_int(self.threads) and self.threads >= 1)):
            raise ValueError(f"{name}: threads must be None or a positive integer, got {self.threads!r}")
        _in_range("alpha", self.alpha, 0, np.inf, high_open=True)
        _one_of("learning_rate", self.learning_rate, ("constant", "invscaling", "adaptive"))
        if self.dropout is not None:
            ps = np.atleast_1d(np.asarray(self.dropout, dtype=object))
            if ps.ndim != 1 or not all(isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 <= p < 1
                                       for p in ps):
                raise ValueError(f"{name}: dropout must be None, a probability in [0, 1) or one per hidden layer, "
                                 f"got {self.dropout!r}")
        _in_range("power_t", self.power_t, -np.inf, np.inf, low_open=True, high_open=True)
        if not (self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size >= 1)):
            raise ValueError(f"{name}: batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        _in_range("learning_rate_init", self.learning_rate_init, 0, np.inf, low_open=True, high_open=True)
        _in_range("momentum", self.momentum, 0, 1, high_open=True)
        _in_range("tol", self.tol, 0, np.inf)
        _in_range("validation_fraction", self.validation_fraction, 0, 1, low_open=True, high_open=True)
        for param in ("max_iter", "n_iter_no_change"):
            value = getattr(self, param)
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"{name}: {param} must be a positive integer, got {value!r}")


class MLPClassifier(ClassifierMixin, _DistbpMLP):
    """A multilayer perceptron classifier with softmax outputs and the mean cross-entropy loss; for a multilabel y
    (a 0/1 indicator matrix (n_samples, n_labels), as scikit-learn's MLPClassifier takes it) σ outputs and the
    binary cross-entropy summed over the labels, each label a yes/no of its own.

    Parameters are scikit-learn's (see the module docstring for what differs):
    hidden_layer_sizes: units of each hidden layer, e.g. (100,) or (256, 128); an int is one layer.
    activation: of the hidden layers, "identity", "logistic", "tanh" or "relu".
    solver: "sgd" (momentum > 0: heavy-ball momentum) or "adam".
    alpha: α ≥ 0 of the L2 penalty (α/2)·‖W‖² on every batch's summed loss (weights, not biases): the
    step takes η·(∇L + α·W)/B, scikit-learn's (distbp.fit's l2=alpha with lr_scale="mean").
    batch_size: rows per global batch (split over MPI ranks), "auto" = min(200, n_samples).
    learning_rate_init: η, constant. max_iter: epochs at most. shuffle: a new order of the rows every
    epoch (False: their stored order).
    random_state: int, RandomState or None: the initial weights, the epochs' permutations and the
    early-stopping split. tol, n_iter_no_change: stop after more than n_iter_no_change epochs without
    an improvement of tol. verbose: distbp's per-epoch lines. warm_start: fit continues from the
    fitted parameters. momentum: μ for sgd. early_stopping, validation_fraction: hold out this
    fraction (stratified) and watch its accuracy instead of the training loss; fit ends with the
    parameters of the epoch of the best accuracy (best_validation_score_).
    dtype: "float32" or "float64", what the network computes in.
    threads: threads per process, None for distbp's default; either way at most what OMP_NUM_THREADS,
    NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS allow (joblib's workers: cores // n_jobs).
    class_weight: None, "balanced" (each class weighs n_samples / (n_classes · its rows), over the y of each
    fit) or {label: weight}; multiplied into fit's sample_weight (distbp's; scikit-learn's MLP has none).

    Fitted attributes: classes_ (n_classes,; 0…n_labels−1 for multilabel y), n_features_in_, n_outputs_
    (= n_classes, also for two classes; n_labels), n_layers_, out_activation_ ("softmax"; "logistic"), model_ (the distbp.MLP), coefs_, intercepts_,
    n_iter_, t_ (training rows seen), loss_, loss_curve_, best_loss_ (None with early stopping),
    validation_scores_ and best_validation_score_ (with early stopping; else None).
    """

    LOSS = "cross_entropy"
    OUT_ACTIVATION = "softmax"
    BEST_METRIC = "test_accuracy"  # distbp's held-out metric whose best epoch early stopping restores

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, dtype="float32", threads=None,
                 learning_rate="constant", power_t=0.5, dropout=None, class_weight=None):
        super().__init__(hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
                         learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
                         momentum=momentum, early_stopping=early_stopping, validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, dtype=dtype, threads=threads,
                         learning_rate=learning_rate, power_t=power_t, dropout=dropout)
        self.class_weight = class_weight

    def _check_params(self) -> None:
        super()._check_params()
        cw = self.class_weight
        if not (cw is None or (isinstance(cw, str) and cw == "balanced") or isinstance(cw, dict)):
            raise ValueError(f'{type(self).__name__}: class_weight must be None, "balanced" or a dict '
                             f"{{label: weight}}, got {cw!r}")

    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike | None = None,
                    sample_weight: ArrayLike | None = None, *, comm: Comm | None = None) -> "MLPClassifier":
        """One epoch over (X, y) from the current parameters (new ones on the first call).

        classes: every label y may ever hold, required on the first call (as in scikit-learn).
        sample_weight (n_samples,): as in fit. Returns self.
        """
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, comm, incremental=True, classes=classes, sample_weight=sample_weight)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable class of each row (n_samples,), as labels of classes_; multilabel: the 0/1
        indicator matrix (n_samples, n_labels) of the labels whose probability is above ½."""
        outputs = self._outputs(X)  # first: raises NotFittedError before fit
        if self._multilabel:
            return (outputs > 0.5).astype(np.int64)
        return self.classes_[np.argmax(outputs, axis=1)]

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities (n_samples, n_classes) in the order of classes_; rows sum to 1 (float64).
        Multilabel: each label's own probability (n_samples, n_labels)."""
        proba = self._outputs(X)
        if not self._multilabel:
            proba /= proba.sum(axis=1, keepdims=True)  # exact in float64 when the model computed in float32
        return proba

    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """log of predict_proba (n_samples, n_classes)."""
        return np.log(self.predict_proba(X))

    def _loss(self) -> str:
        return "binary_cross_entropy" if self._multilabel else "cross_entropy"

    def _out_activation(self) -> str:
        return "logistic" if self._multilabel else "softmax"

    def _target_checks(self) -> dict:
        return {"multi_output": True}

    def _targets(self, y: np.ndarray, continuing: bool, classes) -> np.ndarray:
        """Labels (n_samples,) → class numbers 0…K−1 (int64) in the order of classes_ (set on a new fit); a 0/1
        indicator matrix (n_samples, n_labels) → float64 0/1 targets, one σ output per label."""
        if continuing and not self._multilabel and (classes is None or
                                                    np.array_equal(_labels_of(classes), self.classes_)):
            numbers = _class_numbers(y, self.classes_)
            if numbers is not None:  # labels all known: y is valid, its checks (0.3-0.5 ms) would find nothing
                return numbers
        check_classification_targets(y)
        name = type(self).__name__
        multilabel = type_of_target(y) == "multilabel-indicator"
        if continuing and multilabel != self._multilabel:
            raise ValueError(f"{name}: y is {'a multilabel indicator matrix' if multilabel else 'one label per row'}"
                             f", but the fitted model was trained on "
                             f"{'a multilabel indicator matrix' if self._multilabel else 'one label per row'}")
        if multilabel:
            return self._multilabel_targets(y, continuing, classes)
        if y.ndim == 2:
            if y.shape[1] != 1:
                raise ValueError(f"{name}: y of shape {y.shape} holds several labels per row that are not 0/1: "
                                 "multilabel y is a 0/1 indicator matrix; several multiclass outputs are not "
                                 "supported")
            _warn("A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                  "(n_samples,), for example using ravel().", DataConversionWarning)
            y = y.ravel()
        if not continuing:
            self._multilabel = False
        # once classes_ is set, np.unique: unique_labels would run type_of_target over the labels again (0.2-0.4 ms
        # a call, a good part of a small partial_fit call); labels np.unique cannot order get its error
        if classes is not None and continuing and not np.array_equal(_labels_of(classes), self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                             f"was: {self.classes_!r}")
        if not continuing:
            self.classes_ = unique_labels(classes if classes is not None else y)
            self.n_outputs_ = len(self.classes_)
            if self.n_outputs_ < 2:
                raise ValueError(f"{name} needs samples of at least 2 classes in the data, but the data "
                                 f"contains only one class: {self.classes_[0]!r}")
        unknown = np.setdiff1d(_labels_of(y), self.classes_)
        if unknown.size:
            raise ValueError(f"{name}: y holds labels {unknown.tolist()} that are not among the classes "
                             f"{self.classes_.tolist()} (fixed by the first fit or partial_fit; warm_start "
                             "and partial_fit keep them)")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _multilabel_targets(self, y: np.ndarray, continuing: bool, classes) -> np.ndarray:
        """A 0/1 indicator matrix (n_samples, n_labels) → float64 targets; classes_ = 0…n_labels−1."""
        name = type(self).__name__
        if getattr(self, "class_weight", None) is not None:
            raise ValueError(f"{name}: class_weight weighs the one class of each row; a multilabel y has several "
                             "per row: give sample_weight instead")
        labels = y.shape[1]
        if classes is not None and not np.array_equal(np.asarray(classes), np.arange(labels)):
            raise ValueError(f"{name}: a multilabel y of {labels} labels has classes 0…{labels - 1}, got "
                             f"classes={classes!r}")
        if not continuing:
            self._multilabel, self.classes_, self.n_outputs_ = True, np.arange(labels), labels
        elif labels != self.n_outputs_:
            raise ValueError(f"{name}: y has {labels} labels, the fitted model {self.n_outputs_}")
        return np.asarray(y, np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self) -> dict:  # the same for scikit-learn < 1.6
        return {"multilabel": True}

    def _validation_score(self, record: dict) -> float:
        return float(record["test_accuracy"])  # scikit-learn's: accuracy on the held-out rows


class MLPRegressor(RegressorMixin, _DistbpMLP):
    """A multilayer perceptron regressor: linear outputs, the mean squared-error loss ½‖ŷ − y‖².

    Parameters as for `MLPClassifier` (early_stopping watches R² on the held-out rows and restores the
    parameters of the epoch with the best R²).
    Fitted attributes: n_features_in_, n_outputs_, n_layers_, out_activation_ ("identity"), model_,
    coefs_, intercepts_, n_iter_, t_, loss_ and loss_curve_ (half the mean squared error per output,
    as scikit-learn's), best_loss_, validation_scores_, best_validation_score_.
    """

    LOSS = "mse"
    OUT_ACTIVATION = "identity"
    # R² falls as the held-out loss rises (for targets that vary; constant ones score 1 or 0, scikit-learn's
    # convention, and the epoch of the lowest loss is restored)
    BEST_METRIC = "test_loss"

    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None, *,
                    comm: Comm | None = None) -> "MLPRegressor":
        """One epoch over (X, y) from the current parameters (new ones on the first call); sample_weight as in
        fit. Returns self."""
        return self._fit(X, y, comm, incremental=True, sample_weight=sample_weight)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predictions (n_samples,) for a model fitted on 1-D y, else (n_samples, n_outputs); float64."""
        out = self._outputs(X)
        return out[:, 0] if self._targets_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self) -> dict:  # the same for scikit-learn < 1.6
        return {"multioutput": True}

    def _target_checks(self) -> dict:
        return {"multi_output": True, "y_numeric": True}

    def _targets(self, y: np.ndarray, continuing: bool, classes) -> np.ndarray:
        """Targets (n_samples,) or (n_samples, n_outputs) → float64 (n_samples, n_outputs)."""
        targets = np.asarray(y, np.float64).reshape(len(y), -1)
        if not continuing:
            self.n_outputs_ = targets.shape[1]
            self._targets_1d = y.ndim == 1
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"{type(self).__name__}: y has {targets.shape[1]} outputs, the fitted model "
                             f"{self.n_outputs_}")
        return targets

    def _loss_divisor(self) -> int:
        return self.n_outputs_  # distbp's loss is summed over outputs, scikit-learn's averaged

    def _remember_validation(self, t_val: np.ndarray) -> None:
        self._val_rows = t_val.shape[0]
        self._val_total_squares = float(((t_val - t_val.mean(axis=0)) ** 2).sum())

    def _validation_score(self, record: dict) -> float:
        """R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² over the held-out rows and all outputs, from the mean
        held-out loss ½Σ(y − ŷ)² per row; 1 or 0 for constant targets (scikit-learn's convention)."""
        residual = 2.0 * record["test_loss"] * self._val_rows
        if self._val_total_squares == 0:
            return 1.0 if residual == 0 else 0.0
        return 1.0 - residual / self._val_total_squares


# ---- small helpers ---------------------------------------------------------------------------------------

def _hidden_sizes(value) -> list[int]:
    """hidden_layer_sizes as a list of positive ints (an int is one layer; () is no hidden layer)."""
    sizes = [value] if _is_int(value) else value
    try:
        sizes = list(sizes)
    except TypeError:
        sizes = None
    if sizes is None or not all(_is_int(s) and s >= 1 for s in sizes):
        raise ValueError(f"hidden_layer_sizes must be a positive integer or a sequence of them, got {value!r}")
    return [int(s) for s in sizes]


def _class_numbers(y: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    """The class numbers (n_samples,) int64 of 1-d labels y in sorted classes (n_classes,), or None when a label
    is not among them or y is not such labels (2-d, object dtype, unorderable): the caller's full checks then
    say what is wrong. A y whose every label is a class of a fitted estimator needs no other check."""
    if y.ndim != 1 or y.dtype == object:
        return None
    try:
        numbers = np.searchsorted(classes, y)
    except TypeError:
        return None
    if numbers.size and (numbers.max() >= len(classes) or not np.array_equal(classes[numbers], y)):
        return None
    return numbers.astype(np.int64, copy=False)


def _labels_of(y) -> np.ndarray:
    """The sorted distinct labels of y (np.unique); labels it cannot order (strings mixed with numbers) get
    scikit-learn's error from unique_labels."""
    try:
        return np.unique(y)
    except TypeError:
        return unique_labels(y)


def _agreed_seed(random_state, comm: Comm) -> int:
    """The seed of the weights, the permutations and the validation split, the same on every rank."""
    if _is_int(random_state):
        check_random_state(random_state)  # raises for seeds RandomState refuses (negative, ≥ 2³²)
        seed = int(random_state)
    else:
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    if comm.size > 1:
        # [dist] random_state=None draws a different seed on every rank: everyone takes the root's
        buf = np.array([seed], np.int64)
        comm.bcast(buf)
        seed = int(buf[0])
    return seed


def _shared_temp_folder(comm: Comm) -> str:
    """[dist] A new private folder (0700) that the root makes; every rank gets its name (distbp.fit's options
    must agree across ranks), only the root writes and reads there."""
    folder = tempfile.mkdtemp(prefix="distbp-sklearn-") if comm.is_root else None
    return comm.allgather_object(folder)[0] if comm.size > 1 else folder


def _thread_limit() -> int | None:
    """The smallest positive count among THREAD_LIMIT_VARS (OMP_NUM_THREADS="4,2": its first level), None if
    none is set."""
    counts = []
    for var in THREAD_LIMIT_VARS:
        first = os.environ.get(var, "").split(",")[0].strip()
        if first.isdigit() and int(first) > 0:
            counts.append(int(first))
    return min(counts, default=None)


def _warn(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn, attributed to the first caller outside this module (the caller's `fit`, or scikit-learn's
    tool that called it), as scikit-learn's own warnings are."""
    frame, level = sys._getframe(1), 2  # level 2: _warn's caller
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _derived_seed(seed: int, epochs_done: int) -> int:
    """The permutation seed of a call that continues after epochs_done epochs (partial_fit, warm_start):
    new permutations, not those of the first call's epochs again."""
    return int(np.random.SeedSequence([seed, epochs_done]).generate_state(1)[0])


def _is_int(value) -> bool:
    """An integer, NumPy's too (np.int64 from np.arange grids); bool (numpy's too) is not one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _one_of(param: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{param} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _in_range(param: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and (
        (low < value if low_open else low <= value) and (value < high if high_open else value <= high))
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{param} must be a number in {interval}, got {value!r}")
