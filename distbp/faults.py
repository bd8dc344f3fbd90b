"""Fault injection for the fault-handling tests: inert unless DISTBP_INJECT_FAULT is set.

DISTBP_INJECT_FAULT=rank:step:kind makes `rank` fail at `step` with kind
raise (an exception), kill (SIGKILL to itself), stall (SIGSTOP to itself), nan
(a NaN in its gradient before the allreduce) or desync (its step counter jumps ahead,
as if it had skipped a batch). DISTBP_INJECT_FAULT_ONCE=PATH fires
it only if PATH does not exist yet, and creates it first, so a job restarted by
the launcher (same environment) does not fail again.
"""

from __future__ import annotations

import os
import signal

import numpy as np


def parse(spec: str) -> dict:
    if not spec:
        return {}
    rank, step, kind = spec.split(":")
    return {"rank": int(rank), "step": int(step), "kind": kind}


# read once from the environment; tests replace it with monkeypatch
PLAN = parse(os.environ.get("DISTBP_INJECT_FAULT", ""))


def inject(rank: int, step: int) -> str | None:
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
    return None


class NanBeforeAllreduce:
    """Backward hooks that put a NaN into layer 0's gradient before its bucket goes to the allreduce.

    Writing it after layer_ready would race with the in-flight Iallreduce and leave the ranks
    with different gradients; this way every rank sees the NaN in ∇L, as with a real one.
    """

    def __init__(self, reducer, grad: np.ndarray):
        self.reducer, self.grad = reducer, grad

    def layer_ready(self, layer: int) -> None:
        if layer == 0:
            self.grad[0] = np.nan  # grad[0] is dW of layer 0, row 0, column 0
        self.reducer.layer_ready(layer)

    def progress(self) -> None:
        self.reducer.progress()
