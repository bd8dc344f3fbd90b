"""Checkpoints of a training run: what goes in, how a run resumes, and the saved model.

The file format (atomic, checksummed) is `distbp.train.checkpoint`, the directory's lock is
`distbp.train.lock`; this module decides the contents: parameters, what the gradient-sync strategy
keeps (optimizer state, gathered from the ranks when it is sharded, and the strategy's own meta), the
position in the epoch with its running sums and the early-stopping state (best, since_best), the metrics
so far and the configuration.
It also writes the model files: --save at the end, --save-best after each improvement.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import tempfile
import time
import uuid

import numpy as np

from distbp.comm.base import Comm
from distbp.config import Config
from distbp.errors import ConfigError
from distbp.host.files import UnsafeFolder, make_private_dir
from distbp.nn.modelfile import save_model
from distbp.observe.tensorboard import summary_writer_class
from distbp.train import checkpoint as ckpt
from distbp.train.lock import lock_directory, refresh_lock, unlock_directory
from distbp.train.position import Position
from distbp.train.run import Run

# a resumed run must be the same run: the model, and what decides its batches and data
MUST_MATCH = ["config.layers", "config.activation", "config.loss", "config.dtype", "config.optimizer",
              "config.batch_size", "config.data", "config.seed", "config.scale", "config.test_fraction", "config.local_rows"]
# allowed to change on resume, but they change the trajectory: named in a warning
WARN_IF_CHANGED = ["lr", "lr_scale", "momentum", "lr_schedule", "lr_milestones", "lr_decay", "lr_final",
                   "warmup_steps", "warmup_epochs", "warmup_start", "weight_decay", "l2", "decay_biases",
                   "clip_grad_norm", "trust", "eval_every", "early_stop_patience", "early_stop_metric"]
LOCK_REFRESH_S = 10.0


def claim_checkpoint_dir(cfg: Config, comm: Comm) -> str | None:
    """Collective: the root locks cfg.checkpoint_dir for this job (returns the lock's path there, None
    elsewhere), and a fresh run (no --resume) is refused on a directory holding another run's checkpoints.

    The folder holds the run's state, which --resume trusts: one that another user could write into (or a
    symlink) is refused, naming the fix (`distbp.host.files`; DISTBP_SHARED_DIRS=1 for a group's folder)."""
    err, lock, directory = None, None, cfg.checkpoint_dir
    if comm.is_root:
        try:
            make_private_dir(directory, "--checkpoint-dir")  # made 0700 when missing
            lock = lock_directory(directory, socket.gethostname(), os.getpid(), warn=_warn_if(comm.is_root))
            theirs = [p for p in ckpt.list_checkpoints(directory) if ckpt.read_meta(p) is not None]
            if theirs and not cfg.resume:
                unlock_directory(lock)
                raise ckpt.CheckpointError(
                    f"{directory} holds checkpoints of another run (newest {theirs[-1].name}); pass --resume to "
                    "continue that run, or use another --checkpoint-dir (a run never deletes another's files)")
        except ckpt.CheckpointError as e:
            err = e
        except UnsafeFolder as e:
            err = ckpt.CheckpointError(str(e))
        except OSError as e:
            err = ckpt.CheckpointError(f"--checkpoint-dir {directory}: cannot hold checkpoints there ({_why(e)})")
    comm.agree_on_failure(err)
    return None if lock is None else str(lock)


def new_run_id(comm: Comm) -> str:
    """Collective: a fresh run's id, the root's, on every rank."""
    return comm.allgather_object(uuid.uuid4().hex if comm.is_root else None)[0]


def keep_claim(run: Run) -> None:
    """Root: refresh the directory's lock now and then, so that it never looks abandoned while we run."""
    if run.lock is not None and time.monotonic() - run.lock_refreshed > LOCK_REFRESH_S:
        refresh_lock(run.lock)
        run.lock_refreshed = time.monotonic()


def release_checkpoint_dir(run: Run) -> None:
    if run.lock is not None:
        unlock_directory(run.lock)
        run.lock = None


def write_failure(e: OSError, directory: str, step: int) -> str:
    """What to say when checkpoint `step` could not be written into `directory`."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        full = "no space left" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{full} in {directory} while writing checkpoint step {step}; the earlier checkpoints there are "
                "intact: free some space (or use another --checkpoint-dir), then --resume")
    return (f"cannot write checkpoint step {step} in {directory} ({_why(e) or e}); the earlier checkpoints there "
            "are intact")


def _why(e: OSError) -> str:
    return "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror


def _warn_if(is_root: bool):
    return (lambda m: print(f"distbp: warning: {m}", file=sys.stderr, flush=True)) if is_root else (lambda m: None)


def save(run: Run) -> None:
    """Root writes a checkpoint (atomic, checksummed); the others wait so nobody races ahead of a failure.

    A checkpoint that cannot be written (a full disk, a quota) ends every rank together with one error naming
    the folder and the step; the earlier checkpoints stay as they were and no temporary file is left."""
    state, sync_meta = run.sync.checkpoint_state()  # [dist] collective when the state is sharded
    err = None
    if run.comm.is_root:
        arrays = {"params": run.model.flat_params}
        arrays.update({"opt_" + k: v for k, v in state.items()})
        meta = {"run_id": run.run_id, "position": vars(run.pos).copy(), "optimizer_steps": run.sync.optimizer_steps,
                "sync": sync_meta, "config": run.cfg.to_dict(), "ranks": run.comm.size, "history": run.history}
        try:
            ckpt.save_checkpoint(run.cfg.checkpoint_dir, run.pos.step, arrays, meta, keep=run.cfg.keep_checkpoints)
        except OSError as e:
            err = ckpt.CheckpointError(write_failure(e, run.cfg.checkpoint_dir, run.pos.step))
    with run.watchdog.section("checkpoint", run.pos.step):
        run.comm.agree_on_failure(err)  # [dist] the root's failure, agreed: every rank ends with it


def optimizer_state(run: Run) -> dict:
    """[dist] The optimizer's state after training, whole on every rank (what `distbp.fit(optimizer_state=)` hands
    back): {"optimizer", "n_params", "steps", "arrays", "meta"}. A sharded state is gathered on the root and sent
    to every rank as one object (fine for the models a caller keeps state of between calls)."""
    arrays, meta = run.sync.checkpoint_state()  # [dist] collective when the state is sharded
    # [dist] whether the state is sharded, decided by every rank alike (the root holds it whole either way)
    if run.comm.size > 1 and run.comm.max_scalar(float(any(v is None for v in arrays.values()))) > 0:
        arrays = run.comm.allgather_object(arrays if run.comm.is_root else None)[0]
    return {"optimizer": run.cfg.optimizer, "n_params": run.model.n_params, "steps": run.sync.optimizer_steps,
            "arrays": {k: np.asarray(v) for k, v in arrays.items()}, "meta": meta}  # the ended run's own arrays


def load_optimizer_state(run: Run, state: dict) -> None:
    """Continue from an optimizer state `optimizer_state` made (momentum's velocity, Adam's moments and step
    count, the exact mode's scale); a ConfigError when it is another optimizer's or another model's."""
    if state.get("optimizer") != run.cfg.optimizer or state.get("n_params") != run.model.n_params:
        raise ConfigError(f"optimizer_state holds the state of {state.get('optimizer')!r} for "
                          f"{state.get('n_params')} parameters; this run trains {run.model.n_params} parameters "
                          f"with {run.cfg.optimizer!r}")
    run.sync.load_checkpoint_state(state["arrays"], state["meta"], state["steps"])


def resume(run: Run) -> None:
    """Continue from the newest valid checkpoint in cfg.checkpoint_dir (every rank reads it)."""
    err, found = None, None
    try:
        found = ckpt.latest_checkpoint(run.cfg.checkpoint_dir, warn=_warn_if(run.comm.is_root))
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
    run.run_id = meta.get("run_id", run.run_id)  # continue that run (older checkpoints carry no id)
    if run.comm.is_root:
        print(f"distbp: resumed from {path} (epoch {run.pos.epoch + 1}, step {run.pos.step}, "
              f"written by {meta['ranks']} ranks)", flush=True)
        for key in WARN_IF_CHANGED:
            old, new = meta["config"].get(key), getattr(run.cfg, key)
            if old is not None and old != new:
                print(f"distbp: warning: resuming with --{key.replace('_', '-')} {new} (the checkpoint's run "
                      f"used {old}): the run goes on on another trajectory", file=sys.stderr, flush=True)


def check_outputs(cfg: Config, comm: Comm) -> None:
    """Collective: the root makes sure it can write --save, --save-best, --metrics and --trace (their folders made,
    a probe file written and removed) and --tensorboard (a folder, made, and its writer's package there), so that
    a bad path is one clear error before the first step."""
    err = None
    if comm.is_root and cfg.tensorboard:
        err = _check_tensorboard(cfg.tensorboard)
    if comm.is_root and err is None:
        for flag, path in (("--save", cfg.save), ("--save-best", cfg.save_best), ("--metrics", cfg.metrics),
                           ("--trace", cfg.trace)):
            if not path:
                continue
            try:
                if os.path.isdir(path):
                    raise ckpt.CheckpointError(f"{flag} {path} is a directory; give a file name")
                directory = os.path.dirname(os.path.abspath(path))
                os.makedirs(directory, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=directory, prefix=".distbp-probe-"):
                    pass
            except ckpt.CheckpointError as e:
                err = e
            except OSError as e:
                err = ckpt.CheckpointError(f"{flag} {path}: cannot write there ({_why(e)})")
    comm.agree_on_failure(err)


def _check_tensorboard(folder: str) -> Exception | None:
    """None when the --tensorboard folder can be written (made if missing) and tensorboardX imports; else the
    error, naming the folder or the pip install line."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return ckpt.CheckpointError(f"--tensorboard {folder} is a file; give a folder for the event files")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".distbp-probe-"):
            pass
    except OSError as e:
        return ckpt.CheckpointError(f"--tensorboard {folder}: cannot write there ({_why(e)})")
    try:
        summary_writer_class()
    except ImportError as e:
        return ConfigError(str(e))
    return None


def save_params(run: Run, path: str) -> None:
    """--save: the final model as a model file (root only, atomic; distbp.nn.modelfile): W0, b0, W1, b1, … as
    before, plus what it takes to use the model (layers, activations, loss, dtype, the feature scaling)."""
    if run.comm.is_root:
        save_model(run.model, path, scaling=None if run.data.scaling == "none" else run.data.scaling)


def save_best(run: Run) -> None:
    """Collective: --save-best, the model as it is now (after an evaluation that improved the run's best) as a
    model file, written by the root atomically; a file that cannot be written stops every rank, named."""
    err = None
    run.attach_scaling()  # the file keeps the scaling, so that the best model predicts on raw rows
    if run.comm.is_root:
        try:
            save_params(run, run.cfg.save_best)
        except OSError as e:
            err = ckpt.CheckpointError(f"--save-best {run.cfg.save_best}: cannot write the best model ({_why(e)})")
    run.comm.agree_on_failure(err)  # [dist]
