"""--trace writes a Chrome trace-event file: valid events, nested slices per track, buckets that add up to
the gradient, steps of all ranks aligned, a --trace-steps window, a readable file after a failure, a
PNG of one step, and training results bit-identical to an untraced run."""

import json
import statistics
import subprocess
import sys

import numpy as np
import pytest
from jobs import load_npz, run_job

from distbp.observe.trace import NULL_TRACER, Tracer, parse_steps
from distbp.observe.traceplot import TraceError, bucket_spans, check_events, read_trace, steps_of

pytestmark = pytest.mark.timeout(180)

DATA = "synthetic:rows=1200,features=20,classes=3,test=100"
BASE = ["distbp", "train", "--data", DATA, "--layers", "20,64,32,3", "--batch-size", "100", "--epochs", "2",
        "--bucket-mb", "0.004", "--progress", "none", "--lr", "0.01"]
N_PARAMS = 20 * 64 + 64 + 64 * 32 + 32 + 32 * 3 + 3
STEPS = 2 * 12  # 1200 training rows (the 100 test rows come on top) / 100 per step, 2 epochs


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A 2-rank run with --trace, and the same run without it."""
    d = tmp_path_factory.mktemp("traced")
    on = run_job(2, [*BASE, "--trace", str(d / "t.json"), "--save", str(d / "on.npz")], timeout=120)
    assert on.returncode == 0, on.output
    off = run_job(2, [*BASE, "--save", str(d / "off.npz")], timeout=120)
    assert off.returncode == 0, off.output
    return d, on


def test_the_trace_is_valid_and_every_track_nests(traced):
    d, done = traced
    assert f"wrote the trace to {d / 't.json'}" in done.stdout
    doc = json.loads((d / "t.json").read_text())
    assert doc["displayTimeUnit"] == "ms" and doc["otherData"]["ranks"] == 2
    check_events(doc["traceEvents"])
    names = {(e["pid"], e["args"]["name"]) for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert names == {(r, t) for r in (0, 1) for t in ("main", "phases", "buckets")}
    assert not list(d.glob("t.json.rank*"))  # the part files go once the trace is whole


def test_every_step_of_every_rank_is_there_with_its_phases(traced):
    events = read_trace(traced[0] / "t.json")
    steps = steps_of(events)
    assert sorted(steps) == list(range(STEPS)) and all(sorted(steps[s]) == [0, 1] for s in steps)
    names = {e["name"] for e in events if e["ph"] == "X"}
    for needed in ("gather", "forward 0", "forward 2", "backward 2", "backward 0", "progress", "wait",
                   "scalar allreduce", "update", "gradient allreduce", "parameter update", "evaluation",
                   "clock alignment"):
        assert needed in names, needed


def test_the_buckets_of_each_step_add_up_to_the_gradient(traced):
    events = read_trace(traced[0] / "t.json")
    steps = steps_of(events)
    for rank, buckets in bucket_spans(events).items():
        assert len(buckets) % STEPS == 0 and len(buckets) // STEPS > 1  # several buckets per step
        for s, ranks in steps.items():
            start, end = ranks[rank]
            inside = [b for b in buckets if start <= b[0] <= end]
            assert sum(b[2]["bytes"] for b in inside) == N_PARAMS * 4, (rank, s)  # float32
            assert all(b[1] <= end for b in inside)  # complete before the step ends


def test_the_ranks_step_boundaries_line_up(traced):
    steps = steps_of(read_trace(traced[0] / "t.json"))
    # every step ends just after a collective, so after alignment the ranks' step ends are close
    skews = [abs(ranks[0][1] - ranks[1][1]) for ranks in steps.values()]
    assert statistics.median(skews) < 10_000, skews  # µs; measured here: tens of µs


def test_tracing_changes_no_bit_of_the_result(traced):
    d, _ = traced
    on, off = load_npz(d / "on.npz"), load_npz(d / "off.npz")
    assert on.keys() == off.keys() and all(np.array_equal(on[k], off[k]) for k in on)


def test_trace_steps_records_only_its_window(tmp_path):
    done = run_job(2, [*BASE, "--epochs", "1", "--trace", str(tmp_path / "w.json"), "--trace-steps", "3:5"],
                   timeout=120)
    assert done.returncode == 0, done.output
    events = read_trace(tmp_path / "w.json")
    check_events(events)
    assert sorted(steps_of(events)) == [3, 4]


def test_a_failing_run_leaves_each_ranks_trace_readable_up_to_the_failure(tmp_path):
    marker = tmp_path / "fired"
    done = run_job(2, [*BASE, "--trace", str(tmp_path / "f.json")], timeout=120,
                   env={"DISTBP_INJECT_FAULT": "1:5:raise", "DISTBP_INJECT_FAULT_ONCE": str(marker)})
    assert done.returncode != 0 and marker.exists(), done.output
    assert not (tmp_path / "f.json").exists()
    part = tmp_path / "f.json.rank1.json"
    events = json.loads(part.read_text())  # a complete JSON array: the failing rank closed it
    check_events(events, str(part))
    assert sorted(steps_of(events)) == [0, 1, 2, 3, 4, 5]
    failed = [e for e in events if e["name"] == "step" and "error" in e.get("args", {})]
    assert [e["args"]["step"] for e in failed] == [5] and "injected fault" in failed[0]["args"]["error"]
    assert events[-1]["name"] == "trace_end"


def test_plot_draws_one_step_as_a_png(traced, tmp_path):
    out = tmp_path / "step.png"
    done = subprocess.run([sys.executable, "-m", "distbp", "plot", "--trace", str(traced[0] / "t.json"),
                           "-o", str(out), "--step", "7"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 7" in done.stdout and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "distbp", "plot", "--trace", str(traced[0] / "t.json"),
                          "-o", str(out), "--step", "999"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "step 999 is not in the trace" in bad.stderr


def test_check_events_finds_overlapping_slices_and_missing_fields():
    ok = [{"name": "a", "ph": "X", "ts": 0, "dur": 10, "pid": 0, "tid": 0},
          {"name": "b", "ph": "X", "ts": 2, "dur": 3, "pid": 0, "tid": 0},
          {"name": "c", "ph": "X", "ts": 5, "dur": 10, "pid": 0, "tid": 1}]  # another track may overlap
    check_events(ok)
    with pytest.raises(TraceError, match="'d' .* overlaps 'a'"):
        check_events(ok + [{"name": "d", "ph": "X", "ts": 8, "dur": 5, "pid": 0, "tid": 0}])
    with pytest.raises(TraceError, match="lacks dur"):
        check_events([{"name": "e", "ph": "X", "ts": 1, "pid": 0, "tid": 0}])


def test_trace_steps_parsing():
    assert parse_steps(None) is None and parse_steps("10:20") == (10, 20)
    assert parse_steps(":5") == (0, 5) and parse_steps("7:")[0] == 7
    for bad in ("5", "5:3", "a:b", "-1:4"):
        with pytest.raises(ValueError, match="--trace-steps"):
            parse_steps(bad)


def test_the_null_tracer_records_nothing_and_a_tracer_only_inside_its_window(tmp_path):
    assert not NULL_TRACER.on
    with NULL_TRACER.span("x"):
        pass
    tr = Tracer(str(tmp_path / "t.json"), 0, steps=(2, 3))
    seen = []
    for step in range(4):
        tr.at_step(step)
        with tr.span("step", step=step):
            pass
        seen.append(tr.on)
    assert seen == [False, False, True, False]
    assert [e["args"]["step"] for e in tr.events if e["name"] == "step"] == [2]


@pytest.mark.parametrize("flags, message", [
    (["--trace-steps", "3:5"], "--trace-steps needs --trace"),
    (["--trace", "TMP/t.json", "--trace-steps", "5:3"], "--trace-steps '5:3' is empty"),
    (["--trace", "TMP"], "--trace TMP is a directory"),
], ids=["no-trace", "empty-window", "directory"])
def test_bad_trace_flags_are_one_clear_error(tmp_path, flags, message):
    flags = [f.replace("TMP", str(tmp_path)) for f in flags]
    done = run_job(1, [*BASE, "--epochs", "1", *flags], timeout=60)
    assert done.returncode == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp:")]
    assert len(errors) == 1 and message.replace("TMP", str(tmp_path)) in errors[0], done.stderr
