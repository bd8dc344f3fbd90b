"""Fault injection for the fault-handling tests: inert unless DISTBP_INJECT_FAULT is set.

DISTBP_INJECT_FAULT=rank:step:kind makes `rank` fail at `step` with kind
raise (an exception), kill (SIGKILL to itself), stall (SIGSTOP to itself), nan
(a NaN in its first input row, so its local gradient carries NaN into the sum over ranks, in
every mode), desync (its step counter jumps ahead, as if it had skipped a batch) or hold (it waits, at most
HOLD_S, until the file PATH.release exists: a test then knows the job is at that step, and acts before it
goes on). DISTBP_INJECT_FAULT_ONCE=PATH fires it only if PATH does not exist yet, and creates it first, so a
job restarted by the launcher (same environment) does not fail again (hold needs it).

The training loop knows nothing of this: `setup` wraps the gradient-sync strategy in `FaultySync`
when a fault is planned, and the wrapper fires it as the planned step's local gradient starts.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np


def parse(spec: str) -> dict:
    """rank:step:kind; step is a number, or "start" (while the rank loads its data) or "end" (after the
    last epoch, before the job's final barrier)."""
    if not spec:
        return {}
    rank, step, kind = spec.split(":")
    return {"rank": int(rank), "step": step if step in ("start", "end") else int(step), "kind": kind}


HOLD_S = 120.0  # the longest a "hold" waits for its release file

# read once from the environment; tests replace it with monkeypatch
PLAN = parse(os.environ.get("DISTBP_INJECT_FAULT", ""))


def inject(rank: int, step: int | str) -> str | None:
    """Fire the planned fault if it is for this rank and step.

    Returns "nan" or "desync" when the caller must do the damage itself (it owns the gradient
    and the step counter), else None.
    """
    if not (PLAN and rank == PLAN["rank"] and step == PLAN["step"]):
        return None
    once = os.environ.get("DISTBP_INJECT_FAULT_ONCE")
    if once:
        try:
            open(once, "x").close()
        except FileExistsError:
            return None
    kind = PLAN["kind"]
    if kind in ("nan", "desync"):
        return kind
    if kind == "raise":
        raise RuntimeError(f"injected fault at step {step}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "stall":
        os.kill(os.getpid(), signal.SIGSTOP)
    if kind == "hold":
        release, deadline = f"{once}.release", time.monotonic() + HOLD_S
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.005)
    return None


class FaultySync:
    """A gradient-sync strategy that fires the planned fault as its step's local gradient starts.

    run: the training run (for this rank and the step counter, which desync moves). Everything
    else is the wrapped strategy's own.
    """

    def __init__(self, inner, run):
        self.inner, self.run = inner, run

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def local_gradient(self, gather, rows, batch_rows):
        kind = inject(self.run.comm.rank, self.run.pos.step)
        if kind == "desync":
            self.run.pos.step += 1  # this rank now counts one step ahead of the others
        if kind == "nan":
            gather = _nan_in_first_row(gather)
        return self.inner.local_gradient(gather, rows, batch_rows)


def _nan_in_first_row(gather):
    """gather that puts a NaN into X[0, 0] of the first non-empty rows it returns (before any backward
    pass reads them, so every rank sees the NaN in ∇L, as with a real one)."""
    pending = [True]

    def poisoned(rows, **kw):
        X, y, w = gather(rows, **kw)
        if pending[0] and X.shape[0]:
            X[0, 0] = np.nan
            pending[0] = False
        return X, y, w
    return poisoned
