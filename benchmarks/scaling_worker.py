"""One MPI job of benchmarks/scaling.py: distbp training steps on synthetic data, timed per phase on every rank.

    launch/local -n 2 --threads 1 python benchmarks/scaling_worker.py --batches 256,512 --out /tmp/w.json

For each per-rank batch in --batches and each reducer (overlapped buckets, one blocking allreduce) the job
runs the same step as distbp.train (forward/backward with the reducer's hooks, finish, sum of the loss over
ranks, gradient-descent update). Variants take turns in rounds (A, B, A, B, ...) so that load from other
processes on the shared machine hits them alike. Rank 0 writes the per-step phase times of every rank,
ru_maxrss of every rank and the theoretical memory of a rank's shard as JSON.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distbp.host import threads  # noqa: E402  (imports nothing heavy: threads are pinned before numpy loads)

threads.pin_threads_env(threads.default_threads())

import json  # noqa: E402

import numpy as np  # noqa: E402

from distbp.comm.mpi import world  # noqa: E402
from distbp.comm.serial import SerialComm
from distbp.nn.model import MLP  # noqa: E402
from distbp.nn.optim import make_optimizer  # noqa: E402
from distbp.sync.reducer import GradientReducer, bucket_layout  # noqa: E402
from distbp.sync.transports import make_transport  # noqa: E402

LR = 1e-5  # small: random labels and a summed loss must not saturate the sigmoids during the run


def rss_bytes() -> int:
    """Resident set size of this process now (VmRSS), bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """ru_maxrss of this process (Linux reports kilobytes), bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def theory_bytes(sizes: list[int], rows: int, itemsize: int, optimizer_state: int) -> dict:
    """Memory a rank's shard needs by construction (bytes): what MLP, its workspace and the trainer allocate."""
    n_params = sum(fi * fo + fo for fi, fo in zip(sizes[:-1], sizes[1:]))
    outs = sizes[1:]
    parts = {
        "parameters": n_params * itemsize,
        "gradients": n_params * itemsize,
        "optimizer_state": optimizer_state,
        "activations_z_a": 2 * rows * sum(outs) * itemsize,  # z and a of every layer
        "g_scratch": rows * max(outs[:-1], default=1) * itemsize,  # δ·Wᵀ, shared by the layers
        "row_loss": rows * itemsize,
        "gather_X_y": rows * sizes[0] * itemsize + rows * 8,  # this rank's batch slice, int64 labels
    }
    parts["total"] = sum(parts.values())
    return parts


def gather_rows(comm, values) -> np.ndarray:
    """(ranks, len(values)) array of every rank's values, on every rank (a SUM of zero-padded rows)."""
    out = np.zeros((comm.size, len(values)), np.float64)
    out[comm.rank] = values
    comm.allreduce_sum(out)
    return out


def sleeping_barrier(comm) -> None:
    """A barrier that sleeps instead of spinning, so a waiting rank leaves its core idle as in a 1-rank job."""
    if comm.size == 1:
        return
    from mpi4py import MPI  # a benchmark harness detail, not distbp's interface: MPI's own Ibarrier

    request = MPI.COMM_WORLD.Ibarrier()
    while not request.Test():
        time.sleep(0.001)


class Variant:
    """One configuration timed in this job: a per-rank batch and a reducer mode.

    solo: rank 0 alone on one thread without communication (SerialComm), the 1 rank x 1 thread base measured
    inside this job, in turns with the others, so that the efficiency ratios see the same machine load.
    """

    def __init__(self, comm, model: MLP, grad, rows: int, mode: str, bucket_bytes: int, algorithm: str,
                 reducers: dict, solo: bool = False, transport=None):
        self.rows, self.mode, self.solo = rows, mode, solo
        self.overlap = mode != "blocking"
        # overlap-mpi / overlap-ring: the same buckets through the MPI library's Iallreduce or distbp's ring
        self.algorithm = {"overlap-mpi": "mpi", "overlap-ring": "ring"}.get(mode, algorithm)
        # nocomm: every rank steps at once without communicating, what sharing the machine alone costs
        self.comm = SerialComm() if solo or mode == "nocomm" else comm
        if self.comm.size == 1:
            self.algorithm = "mpi"  # one rank communicates nothing, whatever the transport
        # one reducer per mode, shared by the batch sizes, as one training run has one (its scratch counts once)
        key = (mode, solo)
        if key not in reducers:
            if self.algorithm != "hier":  # the hierarchical one is built once, beside the shared gradient
                largest = max(b.stop - b.start for b in bucket_layout(model.layer_slices, grad.size, grad.itemsize,
                                                                      bucket_bytes))
                transport = make_transport(self.algorithm, self.comm, grad.size, grad.dtype, max_bucket=largest)
            reducers[key] = GradientReducer(self.comm, grad, model.layer_slices, bucket_bytes=bucket_bytes,
                                            overlap=self.overlap, transport=transport)
        self.reducer = reducers[key]
        self.times: dict[str, list[float]] = {k: [] for k in ("step", "compute", "hooks", "exposed", "other")}

    @property
    def name(self) -> str:
        return f"{self.rows}:{'solo' if self.solo else self.mode}"


def step(model: MLP, opt, grad, X, y, v: Variant, record: bool) -> None:
    """One training step as in distbp.train.train_step, with the phases timed."""
    r = v.reducer
    hooks0, exposed0 = r.stats["overlap_s"], r.stats["exposed_s"]
    t0 = time.perf_counter()
    loss = model.loss_and_grad_into(X[:v.rows], y[:v.rows], grad, hooks=r, progress_chunks=4, validate=False)
    t1 = time.perf_counter()
    r.finish()  # [dist] ∇L = Σ over ranks (timed by the reducer as exposed_s)
    v.comm.sum_scalars([loss])  # [dist] the trainer's global loss of the batch
    t3 = time.perf_counter()
    opt.step(model.flat_params, grad)
    t4 = time.perf_counter()
    if record:
        hooks = r.stats["overlap_s"] - hooks0  # Testall/Iallreduce calls made inside backward
        exposed = r.stats["exposed_s"] - exposed0  # waiting in finish
        compute = (t1 - t0 - hooks) + (t4 - t3)
        total = t4 - t0
        for k, val in (("step", total), ("compute", compute), ("hooks", hooks), ("exposed", exposed),
                       ("other", total - compute - hooks - exposed)):
            v.times[k].append(val)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batches", default="512", help="per-rank batch sizes to time, comma-separated")
    p.add_argument("--modes", default="overlap,blocking",
                   help="reducers: overlap (buckets during backward), blocking (all after backward), "
                        "overlap-mpi (overlap with the MPI library's Iallreduce), overlap-ring (with distbp's ring), "
                        "nocomm (all ranks step at once without communicating)")
    p.add_argument("--allreduce", default="hier", choices=["hier", "ring", "mpi"],
                   help="transport of the overlap and blocking modes (distbp train's default on one node: hier)")
    p.add_argument("--solo", default="", help="per-rank batches to time on rank 0 alone, 1 thread, no MPI")
    p.add_argument("--bucket-mb", type=float, default=4.0)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (Numba compiles on the first)")
    p.add_argument("--rounds", type=int, default=3, help="turns of A, B, ... ")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    p.add_argument("--out", required=True, help="JSON file rank 0 writes")
    args = p.parse_args(argv)

    comm = world()
    is_root = comm.is_root
    sizes = [int(s) for s in args.layers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    solo = [int(b) for b in args.solo.split(",") if b]

    # compile every kernel on a tiny model first, so the baseline RSS holds the runtime and the compiled code
    tiny = MLP([sizes[0], 4, 4, sizes[-1]], seed=1)
    tiny_grad = np.zeros(tiny.n_params, np.float32)
    tiny_transport = make_transport("ring" if args.allreduce == "hier" else args.allreduce, comm, tiny.n_params,
                                    tiny_grad.dtype)
    tiny_red = GradientReducer(comm, tiny_grad, tiny.layer_slices, transport=tiny_transport)
    rng = np.random.default_rng(comm.rank)
    Xt = rng.standard_normal((4, sizes[0]), dtype=np.float32)
    yt = rng.integers(0, sizes[-1], 4)
    tiny.loss_and_grad_into(Xt, yt, tiny_grad, hooks=tiny_red, progress_chunks=4)
    tiny_red.finish()
    make_optimizer("gd", tiny.n_params, tiny.dtype, LR).step(tiny.flat_params, tiny_grad)
    del tiny, tiny_grad, tiny_red
    comm.barrier()
    baseline_rss = rss_bytes()

    model = MLP(sizes, activation="sigmoid", loss="cross_entropy", dtype="float32", seed=0)
    opt = make_optimizer("gd", model.n_params, model.dtype, LR)
    # the hierarchical allreduce sums a gradient that lives in the node's shared memory; the others take any
    transport = make_transport("hier", comm, model.n_params, model.dtype) if args.allreduce == "hier" else None
    grad = transport.grad if transport is not None else np.zeros(model.n_params, model.dtype)
    rows = max(batches + solo)
    # synthetic data: a speed benchmark needs the shapes, not a learnable task
    X = rng.standard_normal((rows, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], rows).astype(np.int64)
    # one step without communication: the model's own buffers are all touched now
    model.loss_and_grad_into(X, y, grad, validate=False)
    opt.step(model.flat_params, grad)
    model_rss = rss_bytes()
    training_peak = None
    reducers: dict = {}
    variants = [Variant(comm, model, grad, b, m, int(args.bucket_mb * (1 << 20)), args.allreduce, reducers,
                        transport=transport) for b in batches for m in modes]
    variants += [Variant(comm, model, grad, b, "overlap", 1 << 20, args.allreduce, reducers, solo=True)
                 for b in solo]
    n_threads = threads.default_threads()

    def turn(v: Variant, count: int, record: bool) -> None:
        if v.solo and comm.rank == 0:
            threads.set_threads(1)
            for _ in range(count):
                step(model, opt, grad, X, y, v, record)
            threads.set_threads(n_threads)
        if v.solo:
            sleeping_barrier(comm)  # the other ranks leave rank 0's core (and theirs) to the machine meanwhile
            return
        for _ in range(count):
            step(model, opt, grad, X, y, v, record)

    # warm up the overlapped variants first: the peak RSS then is what training (overlap is its default) needs,
    # before the other variants add their transports' scratch (MPICH's Iallreduce and Allreduce allocate some)
    for v in sorted(variants, key=lambda v: v.mode != "overlap"):
        if v.mode != "overlap" and training_peak is None:
            training_peak = peak_rss_bytes()
        turn(v, args.warmup, record=False)
    if training_peak is None:
        training_peak = peak_rss_bytes()
    for _ in range(args.rounds):
        for v in variants:
            comm.barrier()  # every variant starts its turn together
            turn(v, args.steps, record=True)
    comm.barrier()

    opt_state = sum(a.nbytes for a in opt.state_arrays().values())
    memory = gather_rows(comm, [peak_rss_bytes(), baseline_rss, model_rss, training_peak])
    # solo variants ran on rank 0 only: their times go as rank 0's list
    times = {v.name: {k: ([t] if v.solo else gather_rows(comm, t).tolist()) for k, t in v.times.items()}
             for v in variants}
    if is_root:
        result = {"ranks": comm.size, "threads": n_threads, "layers": sizes, "allreduce": args.allreduce,
                  "n_params": model.n_params, "buckets": len(variants[0].reducer.buckets),
                  "theory": theory_bytes(sizes, rows, model.dtype.itemsize, opt_state), "rows_per_rank": rows,
                  "peak_rss": memory[:, 0].tolist(), "baseline_rss": memory[:, 1].tolist(),
                  "model_rss": memory[:, 2].tolist(), "overlap_peak_rss": memory[:, 3].tolist(),
                  "times": times, "blas_threads": threads.blas_threads(),
                  # the model's own account of the same buffers, as a cross-check of the formula above
                  "model_memory_bytes": model.memory_bytes(rows) if hasattr(model, "memory_bytes") else None}
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
