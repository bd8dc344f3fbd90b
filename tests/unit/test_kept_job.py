"""A kept job (`distbp.KeptJob`, `distbp.fit(keep=)`): streaming calls in one process set up once and train the
bits that a new job per call trains; a call that cannot go on where the last one left off (another option, an
optimizer state not handed back, an error before) sets up anew, and jobs that write files are never kept."""

import copy
import gc
import pickle
import threading

import numpy as np
import pytest

import distbp
from distbp.comm.serial import SerialComm
from distbp.errors import ConfigError

CHUNKS = (24, 24, 17, 24, 5)  # rows per call: whole batches, a short last batch, a chunk below the batch


def chunks(dtype="float64"):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((sum(CHUNKS), 6)).astype(dtype)
    y = (X[:, 0] - X[:, 2] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    bounds = np.cumsum((0,) + CHUNKS)
    return [(X[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def model(dtype="float64"):
    return distbp.MLP([6, 9, 3], activation="relu", dtype=dtype, seed=3)


OPTIONS = dict(scale="none", timeout=0, comm=SerialComm(), verbose=False, epochs=1, batch_size=8, lr=0.01)
CASES = {
    "adam": dict(optimizer="adam"),
    "momentum-float32-dropout": dict(optimizer="momentum", dropout=[0.3], dtype="float32"),
    "lamb-clipped": dict(optimizer="lamb", clip_grad_norm=0.5, weight_decay=0.01),
    "adam-exact": dict(optimizer="adam", reproducible=True, micro_batch=4),
    "gd-weighted-sum": dict(optimizer="gd", lr_scale="sum", weighted=True),
}


def stream(case: dict, keep, seeds=None, states=None):
    """The chunks through distbp.fit, one call each (seed k for the k-th unless `seeds` says), the optimizer
    state carried; returns (the model, the records of every call, the state)."""
    options = dict(case)
    dtype, weighted = options.pop("dtype", "float64"), options.pop("weighted", False)
    net, state, records = model(dtype), {}, []
    for k, (X, y) in enumerate(chunks(dtype)):
        w = np.linspace(0.5, 2.0, len(y)) if weighted and k % 2 == 0 else None  # weights on some calls only
        if states is not None:
            state = states(k, state)
        records += distbp.fit(net, X, y, keep=keep, optimizer_state=state, sample_weight=w,
                              seed=k if seeds is None else seeds[k], **OPTIONS, **options)
    return net, records, state


def same_bits(a, b) -> bool:
    return a.flat_params.tobytes() == b.flat_params.tobytes()


def loss_curve(records):
    return [r["train_loss"] for r in records]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_kept_job_trains_the_bits_of_a_new_job_per_call(case):
    whole, whole_records, _ = stream(case, keep=None)
    job = distbp.KeptJob()
    kept, kept_records, state = stream(case, keep=job)
    assert same_bits(kept, whole)
    assert loss_curve(kept_records) == loss_curve(whole_records)
    # the chunk below the batch size changes no option here (batch_size stays): one job took every call
    assert job.started == 1
    assert state["steps"] == sum(-(-n // OPTIONS["batch_size"]) for n in CHUNKS)
    job.close()


def test_another_option_or_a_state_not_handed_back_sets_up_a_new_job():
    case = CASES["adam"]
    job = distbp.KeptJob()

    def fresh_at_2(k, state):  # the third call starts a new optimizer: an empty state
        return {} if k == 2 else state

    def copied_at_3(k, state):  # the fourth hands back a copy: the same values, not the job's own arrays
        return copy.deepcopy(state) if k == 3 else state

    def replaced_at_3(k, state):  # the fourth puts zeros in place of Adam's second moments, in the same dict
        if k == 3:
            state["arrays"]["v"] = np.zeros_like(state["arrays"]["v"])
        return state

    for states, started in ((fresh_at_2, 2), (copied_at_3, 2), (replaced_at_3, 2)):
        whole, _, _ = stream(case, keep=None, states=states)
        kept, _, _ = stream(case, keep=job, states=states)
        assert same_bits(kept, whole)
        assert job.started == started
        job.close()
        job.started = 0
    # another learning rate on one call: that call is a new job, and the one after it another
    X, y = chunks()[0]
    net, state = model(), {}
    for lr in (0.01, 0.01, 0.02, 0.02):
        distbp.fit(net, X, y, keep=job, optimizer_state=state, **{**OPTIONS, "lr": lr}, optimizer="adam")
    assert job.started == 2
    job.close()


def test_an_error_ends_the_kept_job_and_the_next_call_sets_up_anew():
    X, y = chunks()[0]
    job, state = distbp.KeptJob(), {}
    net = model()
    distbp.fit(net, X, y, keep=job, optimizer_state=state, optimizer="adam", **OPTIONS)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(distbp.DistbpError, match="NaN") as whole:
        distbp.fit(model(), bad, y, optimizer_state={}, optimizer="adam", **OPTIONS)
    with pytest.raises(distbp.DistbpError, match="NaN") as kept:
        distbp.fit(net, bad, y, keep=job, optimizer_state=state, optimizer="adam", **OPTIONS)
    assert str(kept.value) == str(whole.value)  # the error a new job raises

    def fails(record):
        raise ZeroDivisionError("the caller's callback failed")

    with pytest.raises(ZeroDivisionError):
        distbp.fit(net, X, y, keep=job, optimizer_state=state, optimizer="adam", callback=fails, **OPTIONS)
    before = net.flat_params.copy()
    distbp.fit(net, X, y, keep=job, optimizer_state=state, optimizer="adam", **OPTIONS)
    # the first call's job; the NaN call fails in it and ends it; the callback's call sets up a second, which its
    # error ends; the last call a third
    assert job.started == 3
    assert np.abs(net.flat_params - before).max() > 0  # and it trains
    job.close()


def test_jobs_that_write_files_or_carry_no_optimizer_state_are_not_kept(tmp_path):
    X, y = chunks()[0]
    job, state = distbp.KeptJob(), {}
    distbp.fit(model(), X, y, keep=job, optimizer_state=state, optimizer="adam", **OPTIONS)
    distbp.fit(model(), X, y, keep=job, optimizer_state=state, optimizer="adam", save=str(tmp_path / "m.npz"),
               **OPTIONS)
    assert (tmp_path / "m.npz").exists()
    distbp.fit(model(), X, y, keep=job, optimizer="adam", **OPTIONS)  # no state: a new optimizer, a whole job
    assert job.started == 1


def test_a_closed_or_collected_kept_job_leaves_no_thread_behind():
    X, y = chunks()[0]
    options = {**OPTIONS, "threads": 2}  # the exact mode's second lane is a thread of its own
    before = {t.ident for t in threading.enumerate()}

    def lanes():
        return [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("distbp-lane")]

    for end in ("close", "collect"):
        job = distbp.KeptJob()
        distbp.fit(model(), X, y, keep=job, optimizer_state={}, optimizer="adam", reproducible=True,
                   micro_batch=4, **options)
        assert lanes(), "the exact mode's lanes run while the job is kept"
        if end == "close":
            job.close()
        else:
            del job
            gc.collect()
        assert not lanes()


def test_keep_must_be_a_kept_job():
    X, y = chunks()[0]
    with pytest.raises(ConfigError, match="keep must be a distbp.KeptJob"):
        distbp.fit(model(), X, y, keep={}, **OPTIONS)


@pytest.mark.filterwarnings("ignore:Got `batch_size` larger than sample size")  # the 5-row chunk, as scikit-learn
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")  # fit's 2 epochs: Maximum iterations reached
def test_partial_fit_keeps_its_job_and_pickling_leaves_it_behind():
    from distbp.sklearn import MLPClassifier

    params = dict(hidden_layer_sizes=(9,), learning_rate_init=0.01, batch_size=8, random_state=0, dtype="float64",
                  threads=1)
    kept, pickled = MLPClassifier(**params), MLPClassifier(**params)
    for X, y in chunks():
        kept.partial_fit(X, y, classes=[0, 1, 2])
        pickled.partial_fit(X, y, classes=[0, 1, 2])
        pickled = pickle.loads(pickle.dumps(pickled))  # no job in the pickle: each call sets up anew
    assert kept.model_.flat_params.tobytes() == pickled.model_.flat_params.tobytes()
    assert kept.loss_curve_ == pickled.loss_curve_
    # fit starts over (a new optimizer, a whole job, the kept one ended); partial_fit goes on from fit's model
    X, y = chunks()[0]
    for est in (kept, pickled):
        est.set_params(max_iter=2)
        est.fit(X, y)
        est.partial_fit(X, y)
        est.partial_fit(X, y)
    assert kept.model_.flat_params.tobytes() == pickled.model_.flat_params.tobytes()
