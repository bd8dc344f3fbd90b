"""Training curves from metrics JSONL files: loss per epoch, and train/test accuracy per epoch.

    distbp plot run1/metrics.jsonl run2/metrics.jsonl -o curves.png --labels "1 rank" "4 ranks"
    distbp plot --trace trace.json -o step.png --step 20      # one step's timeline (distbp.observe.traceplot)

Each line of a metrics file is one epoch, as written by the root rank:
{"epoch": 3, "train_loss": 0.21, "train_accuracy": 0.94, "test_accuracy": 0.93, ...}.
matplotlib is an optional dependency (pip install "distbp[plot]"); it is imported
only when drawing, so reading and checking the files works without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from distbp.observe import traceplot

REQUIRED_KEYS = ("epoch", "train_loss", "train_accuracy")
# test_accuracy is null (or absent) for a run without a test set.
OPTIONAL_KEYS = ("test_accuracy",)


class MetricsError(ValueError):
    """A metrics file that cannot be plotted; the message names the file (and line)."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_record(record, path: Path, lineno: int) -> dict:
    where = f"{path}, line {lineno}"
    if not isinstance(record, dict):
        raise MetricsError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise MetricsError(f"{where}: missing key(s) {', '.join(missing)}")
    if not isinstance(record["epoch"], int) or isinstance(record["epoch"], bool) or record["epoch"] < 0:
        raise MetricsError(f"{where}: epoch must be a non-negative integer, got {record['epoch']!r}")
    for key in REQUIRED_KEYS[1:]:
        if not _is_number(record[key]):
            raise MetricsError(f"{where}: {key} must be a number, got {record[key]!r}")
    for key in OPTIONAL_KEYS:
        value = record.get(key)
        if value is not None and not _is_number(value):
            raise MetricsError(f"{where}: {key} must be a number or null, got {value!r}")
    return record


def read_metrics(path: str | Path) -> list[dict]:
    """Per-epoch records of one metrics file, sorted by epoch.

    Blank lines are skipped. A resumed run appends the epochs after its checkpoint
    again, so when an epoch appears twice the later line wins.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetricsError(f"{path}: no such metrics file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricsError(f"{path}: cannot read ({exc})") from exc
    by_epoch: dict[int, dict] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricsError(f"{path}, line {lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        record = _check_record(record, path, lineno)
        if "eval_step" in record:  # a mid-epoch evaluation (--eval-every), not an epoch's record
            continue
        by_epoch[record["epoch"]] = record
    if not by_epoch:
        raise MetricsError(f"{path}: empty metrics file (no epochs recorded)")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    # epochs where the value is null or absent are left out rather than drawn as gaps at zero.
    pairs = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def plot_metrics(paths: list[str], out: str, labels: list[str] | None = None) -> None:
    """Draw loss and accuracy curves of one or more runs into `out` (PNG unless its suffix says otherwise).

    One line per run, labelled by `labels` or else by each file's stem; in the
    accuracy panel train is solid and test dashed, in the run's colour.
    """
    if not paths:
        raise MetricsError("no metrics files given")
    if labels is not None and len(labels) != len(paths):
        raise MetricsError(f"{len(labels)} label(s) given for {len(paths)} metrics file(s)")
    runs = [read_metrics(p) for p in paths]
    names = list(labels) if labels is not None else [Path(p).stem for p in paths]

    try:
        # the Agg canvas draws without a display and leaves pyplot's global state alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ImportError('plotting needs matplotlib: pip install "distbp[plot]"') from exc

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (records, name) in enumerate(zip(runs, names)):
        colour = f"C{i % 10}"
        ax_loss.plot(*_series(records, "train_loss"), color=colour, marker=".", label=name)
        ax_acc.plot(*_series(records, "train_accuracy"), color=colour, marker=".", label=f"{name} (train)")
        epochs, test = _series(records, "test_accuracy")
        if epochs:
            ax_acc.plot(epochs, test, color=colour, marker=".", linestyle="--", label=f"{name} (test)")
    losses = [r["train_loss"] for records in runs for r in records]
    # a loss falling over orders of magnitude reads better on a log axis.
    if all(math.isfinite(v) and v > 0 for v in losses) and max(losses) > 20 * min(losses):
        ax_loss.set_yscale("log")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """`distbp plot METRICS.jsonl [...] -o curves.png [--labels A B ...]`; returns the exit status.

    With --trace PATH it draws one step of a --trace file instead (distbp.observe.traceplot).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--trace" or a.startswith("--trace=") for a in argv):
        return traceplot.main(argv)
    parser = argparse.ArgumentParser(prog="distbp plot", description="Plot loss and accuracy per epoch "
                                     "from one or more metrics JSONL files.")
    parser.add_argument("paths", nargs="+", metavar="METRICS.jsonl", help="metrics files, one per run")
    parser.add_argument("-o", "--out", default="metrics.png", help="output image (default: metrics.png)")
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="legend label per file (default: file stems)")
    args = parser.parse_args(argv)
    try:
        plot_metrics(args.paths, args.out, args.labels)
    except (ValueError, ImportError, OSError) as exc:  # MetricsError is a ValueError
        print(f"distbp plot: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
