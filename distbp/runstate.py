"""Checkpoints of a training run: what goes in, how a run resumes, and the saved model.

The file format (atomic, checksummed) is `distbp.checkpoint`; this module decides the
contents: parameters, what the gradient-sync strategy keeps (optimizer state, gathered from the
ranks when it is sharded, and the strategy's own meta), the position in the epoch with its
running sums, the metrics so far and the configuration.
"""

from __future__ import annotations

import os
import sys
import numpy as np

from distbp import checkpoint as ckpt
from distbp.run import Position, Run

MUST_MATCH = ["config.layers", "config.activation", "config.loss", "config.dtype", "config.optimizer"]


def save(run: Run) -> None:
    """Root writes a checkpoint (atomic, checksummed); the others wait so nobody races ahead of a failure."""
    state, sync_meta = run.sync.checkpoint_state()  # [dist] collective when the state is sharded
    if run.comm.is_root:
        arrays = {"params": run.model.flat_params}
        arrays.update({"opt_" + k: v for k, v in state.items()})
        meta = {"position": vars(run.pos).copy(), "optimizer_steps": run.sync.optimizer_steps,
                "sync": sync_meta, "config": run.cfg.to_dict(), "ranks": run.comm.size, "history": run.history}
        ckpt.save_checkpoint(run.cfg.checkpoint_dir, run.pos.step, arrays, meta, keep=run.cfg.keep_checkpoints)
    with run.watchdog.section("checkpoint", run.pos.step):
        run.comm.barrier()


def resume(run: Run) -> None:
    """Continue from the newest valid checkpoint in cfg.checkpoint_dir (every rank reads it)."""
    err, found = None, None
    try:
        warn = (lambda m: print(f"distbp: warning: {m}", file=sys.stderr)) if run.comm.is_root else (lambda m: None)
        found = ckpt.latest_checkpoint(run.cfg.checkpoint_dir, warn=warn)
        if found is not None:
            path, arrays, meta = found
            expected = {"config": run.cfg.to_dict()}
            ckpt.check_compatible(meta, expected, MUST_MATCH, path=path)
            if arrays["params"].shape != run.model.flat_params.shape:
                raise ckpt.CheckpointError(f"{path}: {arrays['params'].shape[0]} parameters, the model has "
                                           f"{run.model.n_params}")
    except (ckpt.CheckpointError, OSError, ValueError) as e:
        err = e
    run.comm.agree_on_failure(err)
    if found is None:
        if run.comm.is_root:
            print(f"distbp: no checkpoint in {run.cfg.checkpoint_dir}; starting from scratch", flush=True)
        return
    path, arrays, meta = found
    run.comm.check_agree("checkpoint", str(path.name))
    run.model.flat_params[...] = arrays["params"]
    run.sync.load_checkpoint_state({k[4:]: v for k, v in arrays.items() if k.startswith("opt_")},
                                   meta.get("sync", {}), meta["optimizer_steps"])
    run.pos = Position(**meta["position"])
    run.history = list(meta.get("history", []))
    if run.comm.is_root:
        print(f"distbp: resumed from {path} (epoch {run.pos.epoch + 1}, step {run.pos.step}, "
              f"written by {meta['ranks']} ranks)", flush=True)


def save_params(run: Run, path: str) -> None:
    """Final parameters as .npz with W0, b0, W1, b1, … (root only, atomic)."""
    if not run.comm.is_root:
        return
    arrays = {}
    for l, (W, b) in enumerate(run.model.params):
        arrays[f"W{l}"], arrays[f"b{l}"] = W, b
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
