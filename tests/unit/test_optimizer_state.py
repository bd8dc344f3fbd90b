"""optimizer_state= carries the optimizer from one distbp.fit call to the next: calls over successive chunks of
rows train as one run over them (momentum's velocity, Adam's moments and step count go on); without it each
call starts its optimizer afresh."""

import numpy as np
import pytest

import distbp
from distbp.comm.serial import SerialComm
from distbp.errors import ConfigError

CHUNK = 16


def rows(n=48):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def model():
    return distbp.MLP([5, 7, 2], activation="tanh", dtype="float64", seed=1)


OPTIONS = dict(lr=0.01, scale="none", shuffle=False, timeout=0, comm=SerialComm(), verbose=False, epochs=1)


@pytest.mark.parametrize("options", [dict(optimizer="adam"), dict(optimizer="momentum"),
                                     dict(optimizer="adam", reproducible=True, micro_batch=4)],
                         ids=["adam", "momentum", "adam-exact"])
def test_calls_over_successive_chunks_train_as_one_run_over_them(options):
    X, y = rows()
    one_run = model()
    distbp.fit(one_run, X, y, batch_size=CHUNK, **OPTIONS, **options)  # three steps: the chunks in order
    chunked, state = model(), {}
    for start in range(0, len(X), CHUNK):
        distbp.fit(chunked, X[start:start + CHUNK], y[start:start + CHUNK], batch_size=CHUNK,
                   optimizer_state=state, **OPTIONS, **options)
    assert chunked.flat_params.tobytes() == one_run.flat_params.tobytes()
    assert state["steps"] == 3 and state["optimizer"] == options["optimizer"]
    fresh = model()  # the control: a new optimizer every call
    for start in range(0, len(X), CHUNK):
        distbp.fit(fresh, X[start:start + CHUNK], y[start:start + CHUNK], batch_size=CHUNK, **OPTIONS, **options)
    assert np.abs(fresh.flat_params - one_run.flat_params).max() > 1e-6


def test_a_state_of_another_optimizer_or_model_is_refused():
    X, y = rows()
    state = {}
    distbp.fit(model(), X, y, batch_size=CHUNK, optimizer="adam", optimizer_state=state, **OPTIONS)
    with pytest.raises(ConfigError, match="optimizer_state holds the state of 'adam' for 58 parameters; this run trains 58 parameters with 'momentum'"):
        distbp.fit(model(), X, y, batch_size=CHUNK, optimizer="momentum", optimizer_state=state, **OPTIONS)
    with pytest.raises(ConfigError, match="must be a dict"):
        distbp.fit(model(), X, y, batch_size=CHUNK, optimizer_state=[1], **OPTIONS)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_partial_fit_goes_on_with_the_optimizer_as_scikit_learns_does(solver):
    from distbp.sklearn import MLPClassifier

    X, y = rows()
    params = dict(hidden_layer_sizes=(7,), solver=solver, learning_rate_init=0.01, batch_size=CHUNK, shuffle=False,
                  random_state=0, dtype="float64", alpha=0.0)
    chunked = MLPClassifier(**params)
    for start in range(0, len(X), CHUNK):
        chunked.partial_fit(X[start:start + CHUNK], y[start:start + CHUNK], classes=[0, 1])
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one_epoch = MLPClassifier(max_iter=1, **params).fit(X, y)  # the same three steps in one call
    got = np.concatenate([a.ravel() for a in chunked.coefs_ + chunked.intercepts_])
    want = np.concatenate([a.ravel() for a in one_epoch.coefs_ + one_epoch.intercepts_])
    assert got.tobytes() == want.tobytes()
