"""What a step costs beyond its compute (issue 31): instruments that record nothing cost nothing, and a one-rank run
starts no bucket, yet with --trace every step, phase and bucket is still recorded and no bit of the result moves."""

import json

import numpy as np

import distbp
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.observe.trace import NOTHING, NULL_TRACER, Tracer
from distbp.observe.traceplot import bucket_spans
from distbp.sync import transports
from distbp.sync.reducer import GradientReducer
from distbp.train.instruments import Instruments, Timers
from distbp.train.setup import setup
from distbp.train.watchdog import Watchdog

DATA = {"epochs": 2, "batch_size": 25, "optimizer": "adam", "lr": 1e-2, "seed": 3, "threads": 1, "timeout": 0,
        "bucket_mb": 0.0005}  # small buckets: several a step


def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 6))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def fitted(comm=None, **options):
    X, y = data()
    model = distbp.MLP([6, 16, 12, 2], activation="relu", dtype="float64", seed=0)
    history = distbp.fit(model, X, y, verbose=False, comm=comm or SerialComm(), **{**DATA, **options})
    return model, history


# ---- nothing enabled: one shared do-nothing context --------------------------------------------

def test_an_unwatched_untraced_section_and_span_are_the_one_shared_do_nothing_context():
    dog = Watchdog(SerialComm(), timeout=0)  # one process: no thread
    inst = Instruments(dog, NULL_TRACER, Timers())
    assert dog.section("gradient allreduce", 3) is NOTHING
    assert inst.section("parameter update", 3, span="update") is NOTHING
    assert inst.span("step", step=3) is NOTHING and NULL_TRACER.span("x") is NOTHING
    dog.stop()


def test_a_tracer_outside_its_window_hands_out_the_do_nothing_context_and_records_nothing(tmp_path):
    tracer = Tracer(str(tmp_path / "t.json"), 0, steps=(5, 6))
    before = len(tracer.events)
    assert tracer.span("step", step=0) is NOTHING
    tracer.at_step(5)
    with tracer.span("step", step=5):
        pass
    assert [e["name"] for e in tracer.events[before:]] == ["step"]
    tracer.discard()


def test_a_watched_section_still_tells_the_thread_where_the_rank_is_and_restores_the_outer_one():
    dog = Watchdog(SerialComm(), timeout=30)  # a thread watches, as on several ranks
    try:
        with dog.section("gradient allreduce", 7):
            assert dog._current[:2] == ("gradient allreduce", 7)
            with dog.section("parameter update", 7):
                assert dog._current[:2] == ("parameter update", 7)
            assert dog._current[:2] == ("gradient allreduce", 7)
        assert dog._current is None and dog._last == ("parameter update", 7)
    finally:
        dog.stop()


def test_timers_still_count_without_a_trace():
    _, history = fitted()
    assert all(r["compute_s"] > 0 and r["data_s"] > 0 and r["comm_s"] >= 0 for r in history)


# ---- one rank: no bucket started, the same bits ------------------------------------------------

class Counting(transports.Transport):
    """A transport that counts its calls (a sum over one rank leaves the buffer as it is)."""

    def __init__(self, comm, n, dtype, max_bucket=None, codec=None):
        super().__init__(comm, n, dtype, max_bucket, codec)
        self.calls = 0

    def start(self, buf):
        self.calls += 1


def test_a_reducer_alone_starts_nothing_and_counts_what_a_step_would_have_handed_over():
    rng = np.random.default_rng(0)
    slices = [slice(0, 100), slice(100, 400), slice(400, 1000)]
    stats = {}
    for alone in (False, True):
        grad = rng.standard_normal(1000).astype(np.float32)
        before = grad.copy()
        transport = Counting(SerialComm(), grad.size, grad.dtype)
        reducer = GradientReducer(SerialComm(), grad, slices, bucket_bytes=256, transport=transport, alone=alone)
        for _ in range(2):  # two steps: the step's state starts again after finish
            for layer in (2, 1, 0):
                reducer.layer_ready(layer)
                reducer.progress()
            reducer.finish()
        assert np.array_equal(grad, before)
        assert (transport.calls == 0) == alone and (transport.calls > 2) != alone
        stats[alone] = {k: reducer.stats[k] for k in ("bytes", "calls", "steps")}
    assert stats[True] == stats[False]


def test_one_rank_sums_alone_with_distbps_transports_but_not_with_a_codec():
    for options, alone in (({}, True), ({"allreduce": "ring"}, True), ({"allreduce": "mpi"}, True),
                           ({"overlap": False}, True), ({"comm_dtype": "bfloat16"}, False)):
        cfg = validate(Config(data="synthetic:rows=60,features=6,classes=2", layers=[6, 8, 2], epochs=1,
                              batch_size=20, progress="none", timeout=0, **options))
        run = setup(cfg, SerialComm())
        try:
            assert run.sync.reducer.alone is alone, options
        finally:
            run.watchdog.stop()
            run.sync.close()


def test_the_one_rank_shortcut_changes_no_bit_and_a_trace_still_records_every_step_phase_and_bucket(tmp_path):
    plain, _ = fitted()
    path = tmp_path / "trace.json"
    traced, history = fitted(trace=str(path))
    assert plain.flat_params.tobytes() == traced.flat_params.tobytes()
    events = json.loads(path.read_text())["traceEvents"]
    steps = history[-1]["steps"]  # 2 epochs of 4 batches
    assert steps == 8
    assert sorted(e["args"]["step"] for e in events if e["name"] == "step") == list(range(steps))
    assert sum(e["name"] == "gradient allreduce" for e in events) == steps
    assert sum(e["name"] == "update" for e in events) == steps
    buckets = bucket_spans(events)[0]
    assert len(buckets) % steps == 0 and len(buckets) // steps > 1  # several buckets a step, through the transport
