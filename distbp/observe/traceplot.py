"""Reading, checking and drawing --trace files: `distbp plot --trace PATH -o step.png [--step N]`.

A trace is the JSON object distbp writes at the end of a run ({"traceEvents": [...]}) or, after a
failure, one rank's `PATH.rank<R>.json` (a JSON array of events). `check_events` holds a trace to the
trace-event format's rules that distbp relies on: the required fields of each phase, and slices on
one track that nest (none overlaps another without containing it). `plot_step` draws one step's
timeline, one band per rank (its main track stacked by nesting depth: step, then its phases, then forward and
backward per layer and the progress calls inside them; below it the buckets in flight), as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

# fields each phase must have (the trace-event format; "M" metadata carries no timestamp)
REQUIRED = {"X": ("name", "ts", "dur", "pid", "tid"), "b": ("name", "ts", "pid", "id", "cat"),
            "e": ("name", "ts", "pid", "id", "cat"), "i": ("name", "ts", "pid"), "M": ("name", "pid", "args")}
EPS_US = 1e-3  # float rounding of µs timestamps


class TraceError(ValueError):
    """A trace file that is not what distbp writes; the message names the file and the event."""


def read_trace(path: str | Path) -> list[dict]:
    """The events of a trace file (object or array form)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc
    if not isinstance(events, list):
        raise TraceError(f"{path}: expected a JSON array of events or an object with traceEvents")
    return events


def check_events(events: list[dict], where: str = "trace") -> None:
    """Raise TraceError unless every event has its phase's fields and each track's slices nest."""
    tracks: dict[tuple, list[tuple[float, float, str]]] = defaultdict(list)
    for k, e in enumerate(events):
        if not isinstance(e, dict) or e.get("ph") not in REQUIRED:
            raise TraceError(f"{where}: event {k} has no known phase: {e!r:.120}")
        missing = [f for f in REQUIRED[e["ph"]] if f not in e]
        if missing:
            raise TraceError(f"{where}: event {k} ({e.get('name')!r}, ph {e['ph']}) lacks {', '.join(missing)}")
        if e["ph"] == "X":
            if not e["dur"] >= 0:
                raise TraceError(f"{where}: event {k} ({e['name']!r}) has a negative duration")
            tracks[(e["pid"], e.get("tid", 0))].append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]))
    for (pid, tid), slices in tracks.items():
        slices.sort(key=lambda s: (s[0], -s[1]))
        stack: list[tuple[float, float, str]] = []
        for start, end, name in slices:
            while stack and start >= stack[-1][1] - EPS_US:
                stack.pop()
            if stack and end > stack[-1][1] + EPS_US:
                raise TraceError(f"{where}: on rank {pid} track {tid}, {name!r} [{start:.1f}, {end:.1f}] µs overlaps "
                                 f"{stack[-1][2]!r} [{stack[-1][0]:.1f}, {stack[-1][1]:.1f}] without nesting in it")
            stack.append((start, end, name))


def steps_of(events: list[dict]) -> dict[int, dict[int, tuple[float, float]]]:
    """step -> rank -> (start, end) µs of that rank's "step" slice."""
    out: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)
    for e in events:
        if e.get("ph") == "X" and e.get("name") == "step":
            out[e["args"]["step"]][e["pid"]] = (e["ts"], e["ts"] + e["dur"])
    return dict(out)


def bucket_spans(events: list[dict]) -> dict[int, list[tuple[float, float, dict]]]:
    """rank -> [(start, end, args)] of every bucket (its async begin and end)."""
    begins = {(e["pid"], e["id"]): e for e in events if e.get("ph") == "b"}
    out: dict[int, list] = defaultdict(list)
    for e in events:
        if e.get("ph") == "e" and (e["pid"], e["id"]) in begins:
            b = begins[(e["pid"], e["id"])]
            out[e["pid"]].append((b["ts"], e["ts"], b.get("args", {})))
    return dict(out)


COLOURS = {"forward": "#4c72b0", "backward": "#55a868", "gather": "#8172b2", "progress": "#dd8452",
           "wait": "#c44e52", "scalar allreduce": "#937860", "update": "#da8bc3", "finish": "#cccccc",
           "local gradient": "#e8e8e8", "step": "#f4f4f4", "checkpoint": "#8c8c8c", "blocking allreduce": "#c44e52"}


def _colour(name: str) -> str:
    return COLOURS.get(name, COLOURS.get(name.split(" ")[0], "#bbbbbb"))


def plot_step(events: list[dict], out: str, step: int | None = None, title: str | None = None) -> int:
    """Draw one traced step (default: the middle one) per rank into `out` (PNG); returns the step drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    steps = steps_of(events)
    if not steps:
        raise TraceError("the trace holds no step (was --trace-steps outside the run?)")
    if step is None:
        step = sorted(steps)[len(steps) // 2]
    if step not in steps:
        raise TraceError(f"step {step} is not in the trace; it has steps {min(steps)}…{max(steps)}")
    t0 = min(s for s, _ in steps[step].values())
    t1 = max(e for _, e in steps[step].values())
    ranks = sorted(steps[step])
    buckets = bucket_spans(events)
    fig, ax = plt.subplots(figsize=(11, 1.6 + 1.2 * len(ranks)))
    yticks, ylabels, y = [], [], 0.0
    for rank in ranks:
        mine = [e for e in events if e.get("ph") == "X" and e["pid"] == rank and e.get("tid", 0) == 0
                and t0 - EPS_US <= e["ts"] and e["ts"] + e["dur"] <= t1 + EPS_US]
        mine.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[float] = []
        for e in mine:
            while stack and e["ts"] >= stack[-1] - EPS_US:
                stack.pop()
            depth = len(stack)
            stack.append(e["ts"] + e["dur"])
            ax.broken_barh([((e["ts"] - t0) / 1000, e["dur"] / 1000)], (y + 0.22 * depth, 0.2),
                           facecolors=_colour(e["name"]), edgecolor="#555555", linewidth=0.3)
        yticks.append(y + 0.5)
        ylabels.append(f"rank {rank}")
        lanes: list[float] = []
        for start, end, args in sorted(b for b in buckets.get(rank, []) if t0 <= b[0] <= t1):
            lane = next((i for i, free in enumerate(lanes) if start >= free), len(lanes))
            if lane < len(lanes):
                lanes[lane] = end
            else:
                lanes.append(end)
            ax.broken_barh([((start - t0) / 1000, (end - start) / 1000)], (y - 0.25 - 0.12 * lane, 0.1),
                           facecolors="#c44e52", alpha=0.6)
        y -= 1.6  # the next rank below: rank 0 on top
    ax.set_yticks(yticks, ylabels)
    ax.set_xlabel(f"ms since the start of step {step}")
    ax.set_xlim(0, (t1 - t0) / 1000 * 1.01)
    legend = ["forward", "backward", "progress", "wait", "scalar allreduce", "update", "gather"]
    handles = [Patch(color=_colour(n), label=n) for n in legend]
    handles.append(Patch(color="#c44e52", alpha=0.6, label="bucket in flight (below each rank)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, fontsize=8,
              frameon=False)
    ax.set_title(title or f"distbp --trace: step {step}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return step


def main(argv: list[str]) -> int:
    """`distbp plot --trace PATH -o step.png [--step N] [--title T]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="distbp plot --trace", description="Draw one step of a --trace file.")
    parser.add_argument("--trace", required=True, metavar="PATH", help="a trace written by distbp train --trace")
    parser.add_argument("-o", "--out", default="step.png", help="output image (default: step.png)")
    parser.add_argument("--step", type=int, default=None, help="global step to draw (default: the middle one)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    try:
        events = read_trace(args.trace)
        check_events(events, args.trace)
        step = plot_step(events, args.out, args.step, args.title)
    except (ValueError, ImportError, OSError) as exc:
        print(f"distbp plot: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (step {step})")
    return 0
