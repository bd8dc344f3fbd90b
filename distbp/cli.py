"""Command line: `distbp train …`, `distbp predict …`, `distbp evaluate …`, `distbp export …`, `distbp plot …`
and `distbp warmup …` (also `python -m distbp …`).

Thread counts must be fixed before numpy, SciPy or Numba start their pools, so
this module imports only the standard library and distbp's standard-library-only modules (errors, units,
`distbp.host`) until the thread count is known: every other import is inside the function that needs it,
after `prepare_environment`.

    distbp train --data digits --epochs 20                          # one process
    launch/local -n 4 distbp train --data synthetic --epochs 5      # four ranks on this machine
    mpirun -n 64 python -m mpi4py -m distbp train --config run.toml # a cluster
    distbp warmup --activation relu --optimizer adam                # compile a configuration's kernels now
    distbp predict --model m.npz --data X.csv --output P.npy       # a saved model's outputs
    launch/local -n 2 distbp evaluate --model m.npz --data test.npz # its loss and accuracy
    distbp export --model m.npz --onnx m.onnx                      # for ONNX Runtime (docs/deploy.md)
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import traceback

from distbp import units
from distbp.errors import ConfigError, DistbpError
from distbp.host import threads
from distbp.host.interrupts import INTERRUPTED, InterruptWatch
from distbp.host.launcher import launcher_rank
from distbp.host.startup import early_threads, prepare_environment, split_job_exit

USAGE = """usage: distbp {train,predict,evaluate,export,plot,warmup,bench} [options]

  train     train an MLP data-parallel over the MPI ranks (distbp train --help)
  predict   write a saved model's outputs or labels for the rows of a file (distbp predict --help)
  evaluate  a saved model's loss and accuracy on labelled data, data-parallel (distbp evaluate --help)
  export    write a saved model as an ONNX graph, for ONNX Runtime (distbp export --help, docs/deploy.md)
  plot      draw loss/accuracy curves from --metrics files (distbp plot --help)
  warmup    compile the kernels of a configuration (train's options) into the cache, without training
  bench     a scaling study, or the allreduce alone, in this job's allocation (distbp bench --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        if launcher_rank() == 0:  # under a launcher every rank runs this: the usage is printed once
            print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command in ("predict", "evaluate", "export"):
        return model_main(command, rest)
    if command == "plot":
        from distbp.observe.plot import main as plot_main  # matplotlib only when plotting
        return plot_main(rest)
    if command == "warmup":
        return warmup_main(rest)
    if command == "bench":
        from distbp.bench.main import bench_main  # pins the threads and starts MPI itself, as train_main does
        return bench_main(rest)
    if launcher_rank() == 0:
        print(f"distbp: unknown command {command!r}\n{USAGE}", file=sys.stderr, end="")
    return 2


def train_main(argv: list[str]) -> int:
    started = time.monotonic()
    n_threads, thread_note = prepare_environment(argv)
    from distbp.comm.mpi import world  # after the thread pools are pinned (module docstring)

    comm = world()
    split = split_job_exit(comm)
    if split is not None:
        return comm.exit_quietly(split)
    watch = None
    if threading.current_thread() is threading.main_thread():
        watch = InterruptWatch(comm)  # ctrl-c reaches a rank blocked inside MPI too
    try:
        return _train(argv, comm, n_threads, thread_note, watch, started)
    finally:
        if watch is not None:
            watch.close()


def warmup_main(argv: list[str]) -> int:
    """`distbp warmup [train options]`: one process compiles (or finds) the kernels a `distbp train` with these
    options would need, into the Numba cache its ranks will share, and marks the cache warm for them."""
    import argparse

    prepare_environment(argv)
    from distbp.config import add_arguments, from_sources  # after the thread pools are pinned

    parser = argparse.ArgumentParser(prog="distbp warmup", exit_on_error=False,
                                     description="Compile the kernels a `distbp train` with these options needs into "
                                                 "the Numba cache (NUMBA_CACHE_DIR), so that its first step starts "
                                                 "without compiling, and draw a large built-in dataset into the "
                                                 "data cache (DISTBP_DATA_CACHE). Sizes do not matter.")
    add_arguments(parser)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return 0
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
        from distbp.train.warmup import warm_configuration  # Numba: only once the flags are good
        done = warm_configuration(from_sources(args))
    except (argparse.ArgumentError, ValueError, DistbpError) as e:
        print(f"distbp: error: {e}", file=sys.stderr, flush=True)
        return 2
    if done["data"] is not None:
        print(f"distbp: data {done['data_s']:.1f} s: {done['data_spec']} is in the data cache, {done['data']}",
              flush=True)
    print(f"distbp: warm-up {done['seconds']:.1f} s: compiled {done['compiled']} kernel(s) into "
          f"{os.environ['NUMBA_CACHE_DIR']} (marked warm: {done['key'][:12]})", flush=True)
    return 0


def model_main(command: str, argv: list[str]) -> int:
    """`distbp predict` / `distbp evaluate` (distbp.predict) and `distbp export` (distbp.export) with threads
    pinned before numpy loads; an error
    (agreed by every rank) is printed once by the root, exit 2."""
    prepare_environment(argv)
    from distbp.comm.mpi import world  # after the thread pools are pinned (module docstring)

    comm = world()
    split = split_job_exit(comm)
    if split is not None:
        return comm.exit_quietly(split)
    from distbp import predict  # numpy and the model: after the thread pools are pinned

    try:
        if command == "export":
            from distbp.export import export_main  # onnx: only for this command, and lazily within it

            return export_main(argv, comm)
        return (predict.predict_main if command == "predict" else predict.evaluate_main)(argv, comm)
    except DistbpError as e:
        if comm.is_root:
            print(f"distbp: error: {e}", file=sys.stderr, flush=True)
        return comm.exit_quietly(2)


def _train(argv: list[str], comm, n_threads: int, thread_note: str | None, watch, started: float) -> int:
    """train_main once the job's ranks are known: parse, set up, fit, save; every ending handled here."""
    import argparse

    from distbp.config import add_arguments, from_sources  # after the thread pools are pinned

    is_root = comm.is_root
    parser = argparse.ArgumentParser(prog="distbp train", exit_on_error=False,
                                     description="Train an MLP by backpropagation, data-parallel over MPI ranks.")
    add_arguments(parser)
    if "-h" in argv or "--help" in argv:
        if is_root:
            parser.print_help()
        return 0
    err, cfg = None, None
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
        cfg = from_sources(args)
    except (argparse.ArgumentError, ConfigError, ValueError) as e:
        err = ConfigError(str(e))
    try:
        comm.agree_on_failure(err)  # [dist] a bad flag stops every rank; the root reports it once
        # decided (and capped) before numpy loaded, from --threads, the config or the environment; when nobody
        # asked, set-up takes this default or 1 thread for a step too small to share (setup.settle_threads)
        asked = threads.requested_threads(early_threads(argv))[1] != threads.DEFAULT_SOURCE
        cfg.threads = n_threads if asked or cfg.dry_run else None
        if cfg.dry_run:
            return dry_run(cfg, comm)
        from distbp.train.job import run_job  # Numba: only once the flags are good
        run_job(cfg, comm, started=started, thread_note=thread_note)
        return 0
    except DistbpError as e:
        # raised on every rank alike (collective checks, or NaN in the allreduced gradient): the root
        # reports it once. The barrier keeps the other ranks from exiting (which aborts the job under
        # `python -m mpi4py`) before the root has printed; a rank whose peers never arrive had the
        # error alone, so it reports it itself.
        if is_root:
            print(f"distbp: error: {e}", file=sys.stderr, flush=True)
        if not comm.barrier_within(10.0):
            if not is_root:
                print(f"distbp: rank {comm.rank}: error: {e}", file=sys.stderr, flush=True)
            return 2  # a rank is missing: leave the ending to MPI_Abort
        return comm.exit_quietly(2)
    except KeyboardInterrupt:
        # ctrl-c reaches every rank (mpiexec forwards it). The root says so once: from here, or, when its
        # main thread is stuck inside a collective, from the InterruptWatch's thread (which then ends the job)
        reports = watch is None or watch.claim()
        if is_root and reports:
            print(f"distbp: {INTERRUPTED}", file=sys.stderr, flush=True)
        if comm.barrier_within(3.0):  # every rank took the interrupt: end quietly, together
            return comm.exit_quietly(130, finalize=False)
        # a rank did not (stopped, or blocked where no signal reaches it): MPI_Abort ends it under any
        # launcher, where a plain exit would leave its ending to the launcher's clean-up
        comm.hard_exit(130)
    except BaseException as e:  # noqa: BLE001 — one rank failing alone: end the whole job now
        sys.stderr.write(traceback.format_exc())  # one write: less to lose if the job ends now
        comm.abort(f"{type(e).__name__}: {e}", code=1)


def dry_run(cfg, comm) -> int:
    """--dry-run: the per-rank memory table of the strategy the job would run (root prints it), no training."""
    import numpy as np

    # the strategies and the model's sizes: loaded only for --dry-run
    from distbp.sync.base import ModelShape
    from distbp.sync.factory import make_sync
    from distbp.train import memory
    from distbp.train.setup import dataset_options, dropout_probabilities, layout_of, resolve_layers

    layers = cfg.layers
    if layers is None:  # the default layers follow the data's shape
        from distbp.data.datasets import load_dataset  # only when the data decides the layers

        layers = resolve_layers(cfg, load_dataset(cfg.data, **dataset_options(cfg)))
    layout = layout_of(comm)  # collective: every rank runs the dry run
    cfg.layers = list(layers)
    dropped = frozenset(l for l, p in enumerate(dropout_probabilities(cfg) or ()) if p > 0)
    shape = ModelShape(tuple(layers), np.dtype(cfg.dtype), cfg.loss == "cross_entropy", dropped)
    budget = units.parse_bytes(cfg.memory_budget) if cfg.memory_budget else None

    def plan_for(batch_size: int):
        return make_sync(dataclasses.replace(cfg, batch_size=batch_size), layout, shape)

    # rank 0 has the largest share of every split (rows, sharded state), so its figures bound every rank's
    if comm.is_root:
        print(memory.report(make_sync(cfg, layout, shape), cfg.batch_size, cfg.optimizer, budget, plan_for))
    return 0
