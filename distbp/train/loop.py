"""The data-parallel training loop: the step and the epochs.

Per global batch (Horovod-style markers show the distributed steps):
  1. every rank gathers the rows of the batch that its strategy assigns it (`GradientSync.my_rows`);
  2. backward on them gives Σₙ ∂lⁿ/∂θ over those rows (`local_gradient`, in micro-batches if asked);
  3. [dist] the sum over ranks, started while backward still runs, gives ∇L (`finish`); the ranks
     agree on one verdict: loss and ∇L finite, every rank at the same step;
  4. every rank applies the same update θ ← θ − η·s·∇L (s = 1, or 1/B with --lr-scale mean) (`apply`),
     or the non-finite policy stops or skips it.
How each step is done is the gradient-sync strategy's business (`distbp.sync`); this module has no
mode branches. Only the root prints, writes metrics, checkpoints and the saved model. The run comes
from `distbp.train.setup`; the watchdog, tracer and timers are its instruments (`distbp.train.instruments`);
the records and printed lines are `distbp.train.report`'s. A run alone (one rank, untraced: `Run.alone`) takes the
same steps without what only ranks together need (`step_alone`): no sums over ranks, no instruments' contexts.

Evaluations on the held-out rows come at each epoch's end and, with --eval-every N, after every N-th
update within an epoch; each is judged by the early-stopping rule (`distbp.train.stopping`), which may keep the
model (--save-best) or end the run there. Records (the history `fit` returns, the --metrics lines), in
order: one per epoch, as always, and one per mid-epoch evaluation, told apart by its "eval_step" key.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np

from distbp.config import Config
from distbp.errors import DistbpError, NonFiniteError
from distbp.observe.progress import Progress
from distbp.train import report
from distbp.train.run import Run
from distbp.train.runstate import keep_claim, release_checkpoint_dir, save, save_best
from distbp.train.scores import Evaluation, Scores, score_kind

Callback = Callable[[dict], object]


# ---- one step ---------------------------------------------------------------------------------

def train_step(run: Run, rows: np.ndarray, batch_rows: int,
               batch_weight: float | None = None) -> tuple[float, float, float]:
    """One global batch, steps 2–4 of the module docstring on this rank's rows (step 1).

    rows: this rank's rows of the batch (indices into the training split); batch_rows: B, the global
    batch's rows. With per-row weights, batch_weight is the global batch's Σ wₙ when every rank knows it
    (`plan.batch_weights`), else None: the ranks add their rows' weights in the step's scalar sum.
    Returns (Σ loss, correct, Σ wₙ) over all ranks (Σ wₙ = B without weights).
    """
    if run.alone:
        return step_alone(run, rows, batch_rows, batch_weight)
    sync, inst, w = run.sync, run.instruments, run.data.train.w
    # pos.step is read at each use: a test's desync fault moves it inside the local gradient
    run.model.dropout_step = run.pos.step  # dropout's masks are a function of the global step
    with inst.section("gradient allreduce", run.pos.step):
        with inst.compute("local gradient", rows=rows.shape[0]):
            loss, correct = sync.local_gradient(run.gather_train, rows, batch_rows)  # 2, and [dist] 3 starts
        with inst.comm("finish"):
            sync.finish()  # [dist] 3: ∇L (or this rank's part of it), identical on every rank
        with inst.comm("scalar allreduce"):
            mine = 0.0 if w is None or batch_weight is not None else math.fsum(w[rows])
            totals = agreed_totals(run, loss, correct, sync.all_finite(), mine)  # [dist] 3: the verdict
    weight = (float(batch_rows) if w is None else
              batch_weight if batch_weight is not None else float(totals[5]))
    with inst.compute():  # the update counts as compute
        update(run, float(totals[0]), totals[2] == 0, weight)  # 4
    return float(totals[0]), float(totals[1]), weight


def step_alone(run: Run, rows: np.ndarray, batch_rows: int,
               batch_weight: float | None = None) -> tuple[float, float, float]:
    """`train_step` of a run alone (`Run.alone`: one rank, untraced): the strategy's calls in the same order, and
    none of what only ranks together need. The verdict's sums over ranks are this rank's own values (the same
    float64s), the ranks cannot be out of step, and the watchdog's sections are no-ops in one process. Its
    seconds: the rows gathered count as data, the rest as compute (nothing waits for another rank)."""
    sync, timers, w = run.sync, run.timers, run.data.train.w
    run.model.dropout_step = run.pos.step
    t0, data0 = time.perf_counter(), timers.data_s
    loss, correct = sync.local_gradient(run.gather_train, rows, batch_rows)
    sync.finish()
    weight = (float(batch_rows) if w is None else
              batch_weight if batch_weight is not None else math.fsum(w[rows]))
    update(run, float(loss), sync.all_finite(), weight)
    timers.compute_s += time.perf_counter() - t0 - (timers.data_s - data0)
    return float(loss), float(correct), weight


def update(run: Run, loss: float, finite: bool, batch_rows: float) -> None:
    """Step 4: θ ← θ − η·s·∇L on every rank if the loss (Σ over ranks) is finite and, as the ranks agreed, so is
    ∇L (`finite`), else the non-finite policy."""
    sync = run.sync
    if math.isfinite(loss) and finite:
        if not run.schedule.constant:
            sync.set_lr(run.schedule(run.pos.step))  # a pure function of the step: resume gets it back
        with run.instruments.section("parameter update", run.pos.step, span="update"):
            sync.apply(run.model.flat_params, lr_scale(run.cfg, batch_rows))
    else:
        handle_nonfinite(run, loss, sync.nonfinite_layers())


def agreed_totals(run: Run, loss: float, correct: float, finite: bool, weight: float = 0.0) -> np.ndarray:
    """[dist] Σ over ranks of (loss, correct, ranks with NaN/Inf in ∇L, step, step², weight); raises if the
    ranks are not all at the same step (p·Σs² − (Σs)² is 0 exactly then, and every rank sees the same value).
    weight: this rank's rows' Σ wₙ where the ranks must add them (local rows with weights), else 0."""
    step = float(run.pos.step)
    totals = run.comm.sum_scalars([loss, correct, 0.0 if finite else 1.0, step, step * step, weight])
    p = run.comm.size
    if p * totals[4] - totals[3] ** 2 != 0:
        raise DistbpError(f"ranks are out of step: this batch is step {run.pos.step} on rank {run.comm.rank}, "
                          f"but the ranks' mean step is {totals[3] / p:g}; they would mix gradients "
                          "of different batches")
    return totals


def lr_scale(cfg: Config, batch_rows: float) -> float:
    """s in θ ← θ − η·s·∇L: 1 for the summed loss (the seed's), 1/B for the mean over the global batch (1/Σ wₙ,
    the weighted mean, with per-row weights: scikit-learn's rule)."""
    return 1.0 if cfg.lr_scale == "sum" else 1.0 / batch_rows


def handle_nonfinite(run: Run, loss: float, where: list[str]) -> None:
    """Stop (or skip with --skip-nonfinite) on NaN/Inf; every rank sees the same verdict, so all decide alike.

    where: the layers with NaN/Inf in ∇L (the strategy's `nonfinite_layers`).
    """
    what = ("loss " + str(loss) + ("; " if where else "")) if not np.isfinite(loss) else ""
    msg = (f"non-finite values at epoch {run.pos.epoch} step {run.pos.step}: {what}"
           f"{'NaN/Inf in ∇L of ' + ', '.join(where) if where else ''}")
    if run.cfg.skip_nonfinite:
        run.pos.skipped += 1
        if run.comm.is_root:
            print(f"distbp: warning: {msg}; update skipped (--skip-nonfinite)", file=sys.stderr, flush=True)
        return
    raise NonFiniteError(msg + " (lower --lr, check the data, or pass --skip-nonfinite)")


# ---- epochs -----------------------------------------------------------------------------------

def fit(run: Run, callback: Callback | None = None, callback_every: int = 0) -> list[dict]:
    """Train for cfg.epochs from the current position, or until early stopping; returns the history (the
    --metrics records: one per epoch, and one per mid-epoch evaluation with --eval-every).

    callback(record) is called on every rank with each epoch's metrics (the --metrics line) and, if
    callback_every > 0, every that many steps with a step record (epoch, step, the epoch's running
    train_loss and train_accuracy); a true return on any rank stops training on every rank after that
    epoch or step (with a checkpoint there, when checkpointing). Early stopping ends it the same way.
    """
    pos = run.pos
    metrics_file = report.open_sinks(run)
    stop = run.stopping.exhausted(pos)  # a resumed run that had stopped early stays stopped
    report.announce_start(run, stop)
    while pos.epoch < run.cfg.epochs and not stop:
        t_epoch = time.perf_counter()
        run.timers.reset()
        run.sync.reset_stats()
        if not run_epoch(run, callback, callback_every, metrics_file):
            save_stopped(run)  # stopped mid-epoch (callback, early stopping): a resume continues from this step
            break
        stop = end_epoch(run, time.perf_counter() - t_epoch, callback, metrics_file)
    if metrics_file:
        metrics_file.close()
    report.announce_end(run)
    release_checkpoint_dir(run)
    return run.history


def end_epoch(run: Run, elapsed: float, callback: Callback | None, metrics_file: report.RecordSinks | None) -> bool:
    """[dist] After an epoch's last step (elapsed: its seconds): evaluate, judge, record, show the callback, move
    on to the next epoch and checkpoint (every --checkpoint-every epochs, the last, and where the run stops).

    Returns True when the run stops here (early stopping or the callback)."""
    cfg, pos = run.cfg, run.pos
    test = evaluate(run) if run.data.test is not None else None
    record = report.epoch_record(run, elapsed, test)
    early = judge(run, record)
    report.log(run, metrics_file, record, report.summary_line(record))
    if early:
        report.announce_stop(run)
    stop = asks_to_stop(run, callback, record) or early
    pos.epoch += 1
    pos.batch = 0
    pos.loss_sum = pos.correct = pos.seen = pos.weight = 0.0
    if cfg.checkpoint_dir and (pos.epoch % cfg.checkpoint_every == 0 or pos.epoch == cfg.epochs or stop):
        with run.instruments.span("checkpoint", step=pos.step):
            save(run)
    return stop


def asks_to_stop(run: Run, callback: Callback | None, record: dict) -> bool:
    """[dist] callback(record) on every rank; True on every rank if it returned a true value on any."""
    if callback is None:
        return False
    return run.comm.max_scalar(1.0 if callback(record) else 0.0) > 0


def judge(run: Run, record: dict) -> bool:
    """[dist] The early-stopping rule on the evaluation in `record` (which it completes, see
    `EarlyStopping.observe`); --save-best keeps the model when it improved. True: the run stops here."""
    improved, stop = run.stopping.observe(run.pos, record)
    if improved and run.cfg.save_best:
        save_best(run)  # [dist] collective: a failed write stops every rank
    return stop


def save_stopped(run: Run) -> None:
    """A checkpoint where a callback or early stopping stopped the run mid-epoch (with checkpointing on)."""
    if run.cfg.checkpoint_dir:
        with run.instruments.span("checkpoint", step=run.pos.step):
            save(run)


def run_epoch(run: Run, callback: Callback | None = None, callback_every: int = 0,
              metrics_file: report.RecordSinks | None = None) -> bool:
    """The global batches of epoch pos.epoch from pos.batch on, with the checks, evaluations (--eval-every) and
    checkpoints between steps.

    Returns False if the callback or early stopping stopped it before its end (see `fit`)."""
    cfg, pos, inst = run.cfg, run.pos, run.instruments
    batches = run.plan.epoch(pos.epoch)  # (this rank's rows, the global batch's rows) per step
    n_batches = len(batches)
    w = run.data.train.w
    weights = None if w is None else run.plan.batch_weights(pos.epoch, w)  # None: summed in each step
    bar = Progress(n_batches, f"epoch {pos.epoch + 1}/{cfg.epochs}", cfg.progress, run.comm.is_root)
    # what may happen between two steps, read once: the loop below runs for every step of every epoch
    check_every, eval_every = cfg.check_every, cfg.eval_every
    checkpoint_steps = cfg.checkpoint_steps if cfg.checkpoint_dir else 0
    if run.alone and not (eval_every or checkpoint_steps or callback_every or bar.shown or run.lock):
        steps_alone(run, batches, weights)  # nothing between the steps: no other rank to check against
        bar.close()
        return True
    while pos.batch < n_batches:
        rows, batch_rows = batches[pos.batch]
        inst.trace.at_step(pos.step)  # --trace: write the last step's events; the --trace-steps window
        with inst.span("step", step=pos.step, epoch=pos.epoch):
            loss, correct, weight = train_step(run, rows, batch_rows,
                                               None if weights is None else weights[pos.batch])
        pos.stepped(loss, correct, batch_rows, weight)
        if bar.shown:
            bar.update(pos.batch, pos.loss_sum / report.counted(run, pos))
        if check_every and pos.step % check_every == 0:
            with inst.section("parameter check", pos.step):
                run.comm.check_identical(run.model.flat_params, pos.step)  # [dist] ranks still agree?
        # before the checkpoint of this step, which then carries the evaluation's record and verdict; the
        # epoch's last step is evaluated by `end_epoch` anyway
        if eval_every and pos.step % eval_every == 0 and pos.batch < n_batches:
            bar.close()  # the evaluation's line goes where the bar was; the bar is drawn again below it
            if evaluate_now(run, metrics_file):
                return False
        if checkpoint_steps and pos.step % checkpoint_steps == 0:
            with inst.span("checkpoint", step=pos.step):
                save(run)
        keep_claim(run)
        if callback_every and pos.step % callback_every == 0 and pos.batch < n_batches:
            if asks_to_stop(run, callback, report.step_record(run)):
                bar.close()
                return False
    bar.close()
    return True


def steps_alone(run: Run, batches: list[tuple[np.ndarray, int]], weights: list[float] | None) -> None:
    """The rest of the epoch's steps of a run alone with nothing to do between them (no evaluation, checkpoint,
    callback, progress bar or lock to refresh; the parameter check compares ranks, and there is one): the
    position moves as `run_epoch` moves it."""
    pos = run.pos
    for i in range(pos.batch, len(batches)):
        rows, batch_rows = batches[i]
        loss, correct, weight = step_alone(run, rows, batch_rows, None if weights is None else weights[i])
        pos.stepped(loss, correct, batch_rows, weight)


def evaluate_now(run: Run, metrics_file: report.RecordSinks | None = None) -> bool:
    """[dist] --eval-every: evaluate after pos.step updates, judge it, record and print it (`report.eval_record`).

    Returns True if early stopping ends the run here."""
    record = report.eval_record(run, evaluate(run))
    early = judge(run, record)
    report.log(run, metrics_file, record, report.eval_line(record))
    if early:
        report.announce_stop(run)
    return early


def evaluate(run: Run) -> Evaluation:
    """[dist] The scores on the test split (`distbp.train.scores`): (loss, accuracy), and the subset accuracy
    (multilabel) or RMSE and R² (regression) in `.scores`. Each rank scores a contiguous share, a chunk at a
    time; the sums are allreduced once."""
    split, model = run.data.test, run.model
    r0, r1, _ = run.plan.eval_share(split.n_rows)
    chunk = run.sync.rows_at_once  # the rows the buffers and the model's workspace hold
    # the factor that scaled the targets gather writes (None: unscaled): RMSE is given in the targets' own units
    scores = Scores(score_kind(model.loss, run.data), model.sizes[-1], getattr(run.data, "target_factor", None))
    # a classifier counts its correct rows; the other kinds read the outputs of each chunk's pass (from the
    # model's own workspace: training's memory estimate holds it, and no second one is made)
    with run.instruments.section("evaluation", run.pos.step):
        for s in range(r0, r1, chunk):
            rows = np.arange(s, min(s + chunk, r1), dtype=np.int64)
            X, y, w = run.batch.gather(split, rows)
            loss = model.loss_into(X, y, w=w)
            weights = None if split.w is None else split.w[rows]  # float64: Σ wₙ exactly as the split has them
            if scores.needs_outputs:
                scores.add(y, loss, weights, out=model.outputs(rows.shape[0]))
            else:
                scores.add(y, loss, weights, correct=model.count_correct(y, w=w))
        return scores.reduce(run.comm)  # [dist]
