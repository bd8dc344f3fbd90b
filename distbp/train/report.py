"""What a training run reports: its records, the root's printed lines and the --metrics file.

Records (the history `fit` returns, the --metrics lines), in order: one per epoch, as always, and one per
mid-epoch evaluation (--eval-every), told apart by its "eval_step" key. A callback also sees a step record
every callback_every steps; those are not kept. Only the root prints and writes; the lines' text is what
scripts and tests parse.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from distbp.observe.tensorboard import TensorBoardLog
from distbp.train.run import Run
from distbp.train.scores import score_kind, scores_of

# the held-out scores each kind of run records beside test_loss and test_accuracy (accuracy: None for values)
EXTRA_TEST_KEYS = {"classes": (), "multilabel": ("subset_accuracy",), "values": ("rmse", "r2")}


def counted(run: Run, pos) -> float:
    """What the epoch's running loss and accuracy are divided by: the rows seen, or with per-row weights their
    Σ wₙ (the weighted means; NaN while every weight seen was 0)."""
    if run.data.train.w is None:
        return max(pos.seen, 1)
    return pos.weight if pos.weight > 0 else float("nan")


def kind(run: Run) -> str:
    """What the run's held-out rows are scored as: "classes", "multilabel" or "values" (`score_kind`)."""
    return score_kind(run.model.loss, run.data)


def train_accuracy(run: Run, pos) -> float | None:
    """The epoch's running accuracy: top-1 for classes, per label (Hamming) for multilabel, None for values."""
    return pos.correct / counted(run, pos) if kind(run) != "values" else None


def test_scores(run: Run, test) -> dict:
    """The record's held-out keys: test_loss and test_accuracy, and the kind's others (test_subset_accuracy for
    multilabel; test_rmse, test_r2 for values); None without held-out rows. test: an evaluation (`loop.evaluate`),
    or None."""
    scores = {} if test is None else scores_of(test)
    keys = ("loss", "accuracy", *EXTRA_TEST_KEYS[kind(run)])
    return {f"test_{key}": scores.get(key) for key in keys}


def epoch_record(run: Run, elapsed: float, test) -> dict:
    """[dist] The epoch's record (its --metrics line), from the position and timers at its end.

    elapsed: the epoch's seconds; test: the held-out evaluation (`loop.evaluate`: (loss, accuracy) and the
    kind's other scores), None without held-out rows."""
    pos, t = run.pos, run.timers
    # [dist] time split: the slowest rank's view decides the step time, so report the max over ranks
    times = run.comm.max_scalar(t.comm_s), run.comm.max_scalar(t.compute_s), run.comm.max_scalar(t.data_s)
    stats = run.sync.stats
    return {
        "epoch": pos.epoch + 1,
        "train_loss": pos.loss_sum / counted(run, pos),
        "train_accuracy": train_accuracy(run, pos),
        "weighted": run.data.train.w is not None,  # the losses and accuracies are weighted means
        **test_scores(run, test),
        "samples_per_s": pos.seen / elapsed if elapsed > 0 else None,
        "time_s": elapsed,
        "compute_s": times[1],
        "comm_s": times[0],
        "data_s": times[2],
        "overlapped_comm_s": stats.get("overlap_s"),
        "grad_norm": stats.get("grad_norm"),  # --clip-grad-norm: the epoch's mean ‖scale·∇L‖ before clipping
        "clipped_steps": stats.get("clipped_steps"),
        "steps": pos.step,
        "lr": run.schedule(max(pos.step - 1, 0)),  # η of the epoch's last update
        "skipped_nonfinite": pos.skipped,
        "ranks": run.comm.size,
        # this launch's start-up (data, model, compiling kernels) in its first epoch's record, not in its time
        "startup_s": run.startup_s if not run.history else 0.0,
    }


def eval_record(run: Run, test) -> dict:
    """A mid-epoch evaluation's record after pos.step updates (--eval-every): {"epoch", "eval_step" (updates
    done), "train_loss" and "train_accuracy" (the epoch's running values so far), "test_loss", "test_accuracy"
    and the kind's other held-out scores (`test_scores`)}, which the early-stopping rule completes with
    best_<metric> and stopped_early as in an epoch's record."""
    pos = run.pos
    return {"epoch": pos.epoch + 1, "eval_step": pos.step, "train_loss": pos.loss_sum / counted(run, pos),
            "train_accuracy": train_accuracy(run, pos), "weighted": run.data.train.w is not None,
            **test_scores(run, test)}


def step_record(run: Run) -> dict:
    """What a callback sees every callback_every steps: the epoch, the step and the epoch's running values."""
    pos = run.pos
    return {"epoch": pos.epoch + 1, "step": pos.step, "train_loss": pos.loss_sum / counted(run, pos),
            "train_accuracy": train_accuracy(run, pos)}


def summary_line(r: dict) -> str:
    """The root's line at an epoch's end, from its record: train and test accuracy for classifiers (and the
    subset accuracy for multilabel), the held-out loss, RMSE and R² for regression."""
    train = "" if "test_r2" in r else f"train {_percent(r['train_accuracy'])}  "
    return (f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  {train}test {held_out(r)}  "
            f"{r['samples_per_s']:9.0f} samples/s  "
            f"compute {r['compute_s']:.2f}s comm {r['comm_s']:.2f}s" + ("  (weighted)" if r.get("weighted") else ""))


def eval_line(r: dict) -> str:
    """The root's line for a mid-epoch evaluation (--eval-every), beside the epochs' summary lines."""
    line = f"epoch {r['epoch']:3d}  step {r['eval_step']:6d}  test loss {r['test_loss']:.4f}"
    if "test_r2" in r:
        return line + "  " + _rmse_r2(r)
    if r["test_accuracy"] is None:
        return line
    return line + f"  test {100 * r['test_accuracy']:5.1f}%" + _subset(r)


def held_out(r: dict) -> str:
    """A record's held-out scores for the summary line: "93.0%" (classifier), "93.0%  subset  80.0%"
    (multilabel), "loss 0.1234  rmse 12.3  R² 0.8123" (regression), "  -   " without held-out rows."""
    if "test_r2" in r and r.get("test_loss") is not None:
        return f"loss {r['test_loss']:.4f}  " + _rmse_r2(r)
    return _percent(r.get("test_accuracy")) + _subset(r)


def _percent(v: float | None) -> str:
    return "  -   " if v is None else f"{100 * v:5.1f}%"


def _subset(r: dict) -> str:
    v = r.get("test_subset_accuracy")
    return "" if v is None else f"  subset {_percent(v)}"


def _rmse_r2(r: dict) -> str:
    rmse, r2 = r.get("test_rmse"), r.get("test_r2")
    return f"rmse {'-' if rmse is None else format(rmse, '.4g')}  R² {'-' if r2 is None else format(r2, '.4f')}"


def announce_start(run: Run, exhausted: bool) -> None:
    """Root: why a (resumed) run trains nothing, if it does not: it stopped early, or did all its epochs."""
    if not run.comm.is_root:
        return
    if exhausted:
        print(run.stopping.stopped_line(run.pos), flush=True)
    elif run.pos.epoch >= run.cfg.epochs:
        print(f"distbp: the run already finished its {run.pos.epoch} epochs; nothing to train "
              "(raise --epochs to train more)", flush=True)


def announce_stop(run: Run) -> None:
    """Root: early stopping ends the run here."""
    if run.comm.is_root:
        print(run.stopping.stop_line(run.pos), flush=True)


def announce_end(run: Run) -> None:
    """Root: where the best model is (--save-best), and how many updates were skipped (--skip-nonfinite)."""
    cfg, pos = run.cfg, run.pos
    if cfg.save_best and pos.best_step is not None and run.comm.is_root:
        print(f"distbp: the best model ({cfg.early_stop_metric} {pos.best:.6g} at step {pos.best_step}) is in "
              f"{cfg.save_best}", flush=True)
    if pos.skipped and run.comm.is_root:
        print(f"distbp: warning: {pos.skipped} of {pos.step} updates were skipped for NaN/Inf (--skip-nonfinite)",
              file=sys.stderr, flush=True)


def log(run: Run, sinks: RecordSinks | None, record: dict, line: str) -> None:
    """The record into the history (every rank); the root prints its line and writes it to --metrics and
    --tensorboard."""
    run.history.append(record)
    if run.comm.is_root:
        print(line, flush=True)
        if sinks is not None:
            sinks.write(record)


class RecordSinks:
    """Root: where the records go besides the history: the --metrics file (JSON lines) and the --tensorboard
    log, each written and flushed per record."""

    def __init__(self, metrics: TextIO | None, tensorboard: TensorBoardLog | None):
        self.metrics, self.tensorboard = metrics, tensorboard

    def write(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        for sink in (self.metrics, self.tensorboard):
            if sink is not None:
                sink.close()


def open_sinks(run: Run) -> RecordSinks | None:
    """Root: the metrics file, rewound to what the run had done (a resumed run rewrites the epochs of its
    checkpoint, so that epochs after the checkpoint are not listed twice), and the TensorBoard log, whose
    axis goes on from the step the run starts at (distbp.observe.tensorboard); None where neither is asked."""
    if not ((run.cfg.metrics or run.cfg.tensorboard) and run.comm.is_root):
        return None
    fh = None
    if run.cfg.metrics:
        os.makedirs(os.path.dirname(os.path.abspath(run.cfg.metrics)), exist_ok=True)
        fh = open(run.cfg.metrics, "w")  # noqa: SIM115 (open for the run: RecordSinks.close closes it)
        fh.writelines(json.dumps(record) + "\n" for record in run.history)
        fh.flush()
    board = TensorBoardLog(run.cfg.tensorboard, run.pos.step) if run.cfg.tensorboard else None
    return RecordSinks(fh, board)
