"""Training curves from metrics JSONL files: train and test loss per epoch, and train/test accuracy (classifiers)
or held-out R² (regressions) per epoch.

    distbp plot run1/metrics.jsonl run2/metrics.jsonl -o curves.png --labels "1 rank" "4 ranks"
    distbp plot --trace trace.json -o step.png --step 20      # one step's timeline (distbp.observe.traceplot)

Each line of a metrics file is one epoch, as written by the root rank:
{"epoch": 3, "train_loss": 0.21, "train_accuracy": 0.94, "test_loss": 0.25, "test_accuracy": 0.93, ...};
a regression's has "train_accuracy": null and "test_rmse", "test_r2" instead. The panels are those the runs
have: loss always, accuracy if any run is a classifier (multilabel ones plot their per-label accuracy), R²
if any is a regression with held-out rows (else their RMSE, if any has it); each run is drawn in the panels
it has values for. matplotlib is an optional dependency (pip install "distbp[plot]"); it is imported only when
drawing, so reading and checking the files works without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from distbp.observe import traceplot

REQUIRED_KEYS = ("epoch", "train_loss", "train_accuracy")
NULLABLE_KEYS = ("train_accuracy",)  # null for a regression
# null (or absent) for a run without a test set, and for the kinds of run that have no such score
OPTIONAL_KEYS = ("test_loss", "test_accuracy", "test_subset_accuracy", "test_rmse", "test_r2")
# the panels after the loss's: (title, the y axis, the keys drawn solid and dashed); the first of the last two
# that some run has values for is drawn
ACCURACY_PANEL = ("accuracy", "accuracy", ("train_accuracy", "test_accuracy"))
REGRESSION_PANELS = (("held-out R²", "R²", (None, "test_r2")), ("held-out RMSE", "RMSE", (None, "test_rmse")))


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
        if not _is_number(record[key]) and not (key in NULLABLE_KEYS and record[key] is None):
            raise MetricsError(f"{where}: {key} must be a number{' or null' if key in NULLABLE_KEYS else ''}, "
                               f"got {record[key]!r}")
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


def panels(runs: list[list[dict]]) -> list[tuple[str, str, tuple[str | None, str]]]:
    """The panels beside the loss's that some run has values for: accuracy (classifiers), then R² (else RMSE)
    of regressions with held-out rows."""
    def has(key: str | None) -> bool:
        return key is not None and any(r.get(key) is not None for records in runs for r in records)
    out = [ACCURACY_PANEL] if any(has(k) for k in ACCURACY_PANEL[2]) else []
    regression = next((p for p in REGRESSION_PANELS if has(p[2][1])), None)
    return out + ([regression] if regression else [])


def plot_metrics(paths: list[str], out: str, labels: list[str] | None = None) -> None:
    """Draw loss curves and the accuracy or R² curves of one or more runs into `out` (PNG unless its suffix says
    otherwise).

    One line per run, labelled by `labels` or else by each file's stem, in the run's colour; train is solid
    and test dashed. Each run goes to the panels it has values for (`panels`).
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

    others = panels(runs)
    fig = Figure(figsize=(5.5 * (1 + len(others)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, 1 + len(others), squeeze=False)[0])
    ax_loss = axes[0]
    for i, (records, name) in enumerate(zip(runs, names)):
        colour = f"C{i % 10}"
        _draw(ax_loss, records, ("train_loss", "test_loss"), colour, name)
        for ax, (_, _, keys) in zip(axes[1:], others):
            _draw(ax, records, keys, colour, name)
    losses = [v for records in runs for r in records for v in (r["train_loss"], r.get("test_loss")) if v is not None]
    # a loss falling over orders of magnitude reads better on a log axis.
    if losses and all(math.isfinite(v) and v > 0 for v in losses) and max(losses) > 20 * min(losses):
        ax_loss.set_yscale("log")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="loss")
    for ax, (title, ylabel, _) in zip(axes[1:], others):
        ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.savefig(out, dpi=120)


def _draw(ax, records: list[dict], keys: tuple[str | None, str], colour: str, name: str) -> None:
    """A run's train (solid) and test (dashed) series of `keys` into ax; series without values are left out."""
    for key, style, part in zip(keys, ("-", "--"), ("train", "test")):
        epochs, values = _series(records, key) if key else ([], [])
        if epochs:
            ax.plot(epochs, values, color=colour, marker=".", linestyle=style, label=f"{name} ({part})")


def main(argv: list[str] | None = None) -> int:
    """`distbp plot METRICS.jsonl [...] -o curves.png [--labels A B ...]`; returns the exit status.

    With --trace PATH it draws one step of a --trace file instead (distbp.observe.traceplot).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--trace" or a.startswith("--trace=") for a in argv):
        return traceplot.main(argv)
    parser = argparse.ArgumentParser(prog="distbp plot", description="Plot loss and accuracy (or R² for a "
                                     "regression) per epoch from one or more metrics JSONL files.")
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
