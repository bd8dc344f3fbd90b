"""PyTorch side of benchmarks/time_to_accuracy.py: train to held-out accuracy, one JSON record per epoch.

    python benchmarks/tta_torch_worker.py --data rows.npz --ranks 2 --batch 2048 --lr 0.8 --schedule cosine \
        --warmup-epochs 1 --epochs 8 --out /tmp/ddp.json
    python benchmarks/tta_torch_worker.py --data rows.npz --plain --batch 128 --lr 0.05 --epochs 8 --out /tmp/pt.json

The same run as `distbp train --data rows.npz --scale none --lr-scale mean`, in PyTorch: --ranks processes
(DistributedDataParallel over gloo; --plain: one process, no DDP), each with torch.set_num_threads(threads) and
pinned to its own cores like launch/local pins distbp's ranks; nn.Linear + activation layers starting from
distbp's own initial weights (distbp.nn.model.MLP, same seed); CrossEntropyLoss on the mean over the global batch;
distbp's global batches (the same permutation per epoch, every row once, the last batch short) and each rank's
contiguous share of them (distbp.data.shard); η per step from distbp.train.schedule.Schedule. The optimizers are distbp's:
momentum is torch.optim.SGD (v ← μv + g, θ ← θ − ηv, as distbp.nn.optim.Momentum); LAMB and LARS have no
PyTorch version, so they are written here after distbp.nn.optim's definitions.

An epoch's time covers its training steps only (as distbp's `time_s`); the held-out evaluation after it is
timed apart (`eval_s`). Before the run, a throw-away copy of the model takes --warmup steps, so the timed
epochs start in steady state (distbp compiles its kernels before its first epoch too).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(sizes: list[int], activation: str, seed: int):
    """nn.Sequential of Linear + activation layers holding distbp's initial parameters for `seed`."""
    import torch
    import torch.nn as nn

    from distbp.nn.model import MLP

    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[activation]
    init = MLP(sizes, activation=activation, seed=seed).params  # [(W (fan_in, fan_out), b (fan_out,))]
    layers = []
    for i, (W, b) in enumerate(init):
        lin = nn.Linear(*W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.copy()))  # torch keeps W as (fan_out, fan_in)
            lin.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(lin)
        if i < len(init) - 1:
            layers.append(act())
    return nn.Sequential(*layers)


def lamb_and_lars():
    """distbp.nn.optim's LAMB and LARS in PyTorch (built here, so torch is imported in the worker processes only).

    Both take one trust ratio per layer, over its weight and bias together (one param group per nn.Linear,
    see `layer_groups`), 1 when either norm is 0, as distbp.nn.optim does; no weight decay (λ = 0 in this benchmark).
    """
    import torch

    def norm(tensors) -> float:
        # float64 accumulation, as distbp's norms
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64)
                                                           for t in tensors])))

    def ratio(theta: float, u: float, coefficient: float = 1.0) -> float:
        return coefficient * theta / u if theta > 0 and u > 0 else 1.0

    class Lamb(torch.optim.Optimizer):
        """LAMB (You et al., 2019): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², r = m̂/(√v̂ + ε);
        per layer l: θ_l ← θ_l − η·(‖θ_l‖/‖r_l‖)·r_l."""

        def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
            self.t = 0

        @torch.no_grad()
        def step(self):
            self.t += 1
            for group in self.param_groups:
                (b1, b2), eps = group["betas"], group["eps"]
                rs = []
                for p in group["params"]:
                    st = self.state[p]
                    if not st:
                        st.update(m=torch.zeros_like(p), v=torch.zeros_like(p))
                    st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                    st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    rs.append((st["m"] / (1 - b1 ** self.t)) / ((st["v"] / (1 - b2 ** self.t)).sqrt_().add_(eps)))
                rate = group["lr"] * ratio(norm(group["params"]), norm(rs))
                for p, r in zip(group["params"], rs):
                    p.add_(r, alpha=-rate)

    class Lars(torch.optim.Optimizer):
        """LARS (You et al., 2017): per layer l: η_l = η·τ·‖θ_l‖/‖g_l‖; v ← μv + η_l·g; θ ← θ − v."""

        def __init__(self, params, lr, momentum=0.9, trust=0.001):
            super().__init__(params, dict(lr=lr, momentum=momentum, trust=trust))

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                grads = [p.grad for p in group["params"]]
                rate = group["lr"] * ratio(norm(group["params"]), norm(grads), group["trust"])
                for p in group["params"]:
                    st = self.state[p]
                    if not st:
                        st["v"] = torch.zeros_like(p)
                    st["v"].mul_(group["momentum"]).add_(p.grad, alpha=rate)
                    p.sub_(st["v"])

    return Lamb, Lars


def layer_groups(model) -> list[dict]:
    """One param group per nn.Linear: [weight, bias] (the layer-wise optimizers' unit)."""
    import torch.nn as nn

    net = getattr(model, "module", model)  # under DDP
    return [{"params": [m.weight, m.bias]} for m in net if isinstance(m, nn.Linear)]


def make_optimizer(name: str, model, args):
    import torch

    Lamb, Lars = lamb_and_lars()
    if name == "momentum":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    if name == "lamb":
        return Lamb(layer_groups(model), lr=args.lr)
    if name == "lars":
        return Lars(layer_groups(model), lr=args.lr, momentum=args.momentum, trust=args.trust)
    raise ValueError(f"unknown optimizer {name!r}")


def run_rank(rank: int, args, tmpdir: str) -> None:
    """One process: pin, load the rows, warm up, then train and evaluate epoch by epoch; rank 0 writes JSON."""
    cores = sorted(os.sched_getaffinity(0))
    if args.ranks * args.threads <= len(cores):
        os.sched_setaffinity(0, cores[rank * args.threads:(rank + 1) * args.threads])
    import numpy as np
    import torch
    import torch.distributed as dist

    from distbp.data.shard import epoch_permutation, global_batches, rank_slice
    from distbp.train.schedule import Schedule

    torch.set_num_threads(args.threads)
    P = args.ranks
    with np.load(args.data) as f:
        X, y = torch.from_numpy(f["X"]), torch.from_numpy(f["y"])
        X_test, y_test = torch.from_numpy(f["X_test"]), torch.from_numpy(f["y_test"])
    sizes = [X.shape[1], *[int(s) for s in args.hidden.split(",")], int(max(y.max(), y_test.max())) + 1]
    if not args.plain:
        dist.init_process_group("gloo", rank=rank, world_size=P)

    def wrap(model):
        # [dist] DDP averages the ranks' gradients (allreduce in buckets during backward)
        return model if args.plain else torch.nn.parallel.DistributedDataParallel(model)

    bounds = global_batches(len(y), args.batch)
    schedule = Schedule(lr=args.lr, kind=args.schedule, total_steps=max(1, args.epochs * len(bounds)),
                        final=0.0, warmup_steps=args.warmup_epochs * len(bounds))
    sum_loss = torch.nn.CrossEntropyLoss(reduction="sum")

    def step(model, opt, rows: torch.Tensor, batch_rows: int, lr: float) -> None:
        opt.zero_grad(set_to_none=False)
        # this rank's summed loss × P/B: DDP's average over P ranks then gives the mean over the global batch
        # (also when shares differ by a row), distbp's --lr-scale mean
        loss = sum_loss(model(X[rows]), y[rows]) * (P / batch_rows)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()

    # warm-up on a throw-away copy: allocator, thread pool, DDP's buckets
    scratch = wrap(make_model(sizes, args.activation, args.seed))
    scratch_opt = make_optimizer(args.optimizer, scratch, args)
    r0, r1 = rank_slice(args.batch, rank, P)
    for _ in range(args.warmup):
        step(scratch, scratch_opt, torch.arange(r0, r1), args.batch, 0.0)
    del scratch, scratch_opt

    model = wrap(make_model(sizes, args.activation, args.seed))
    opt = make_optimizer(args.optimizer, model, args)
    records, s = [], 0
    for epoch in range(args.epochs):
        perm = torch.from_numpy(epoch_permutation(len(y), args.seed, epoch))
        if not args.plain:
            dist.barrier()  # every rank starts the epoch's clock together (distbp's ranks leave the evaluation's
            #               allreduce together)
        t0 = time.perf_counter()
        for start, stop in bounds:
            r0, r1 = rank_slice(stop - start, rank, P)
            step(model, opt, perm[start + r0:start + r1], stop - start, schedule(s))
            s += 1
        elapsed = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = model(X_test)
            test_loss = torch.nn.functional.cross_entropy(logits, y_test).item()
            test_acc = (logits.argmax(1) == y_test).double().mean().item()
        records.append({"epoch": epoch + 1, "time_s": elapsed, "eval_s": time.perf_counter() - t1,
                        "test_accuracy": test_acc, "test_loss": test_loss, "steps": s,
                        "lr": schedule(max(s - 1, 0))})
        if rank == 0:
            print(f"torch epoch {epoch + 1}: {elapsed:.2f} s, test {100 * test_acc:.2f}%", file=sys.stderr, flush=True)
        if not np.isfinite(test_loss):
            break  # diverged: distbp stops with an error here, so the case ends at the same point
    if rank == 0:
        Path(tmpdir, "out.json").write_text(json.dumps(
            {"records": records, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "cores": sorted(os.sched_getaffinity(0))}))
    if not args.plain:
        dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz with X, y, X_test, y_test (already scaled)")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plain", action="store_true", help="one process, no DDP or process group")
    p.add_argument("--hidden", default="256", help="hidden layer sizes, comma-separated")
    p.add_argument("--activation", default="relu")
    p.add_argument("--batch", type=int, required=True, help="global batch (split over the ranks)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--optimizer", choices=("momentum", "lamb", "lars"), default="momentum")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--trust", type=float, default=0.001, help="lars: the trust coefficient")
    p.add_argument("--schedule", choices=("constant", "cosine", "linear"), default="constant")
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps on a throw-away model first")
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order (distbp's)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.plain and args.ranks != 1:
        p.error("--plain runs one process: use --ranks 1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before torch loads in any process
    # the same pool waits distbp's processes get (distbp.host.threads.set_pool_waits: a short spin, then sleep);
    # libgomp's long default spin collapses when a shared machine deschedules a spinning worker
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "1000"
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    with tempfile.TemporaryDirectory() as tmpdir:
        if args.ranks == 1:
            run_rank(0, args, tmpdir)
        else:
            import torch.multiprocessing as mp
            mp.spawn(run_rank, args=(args, tmpdir), nprocs=args.ranks, join=True)
        out = json.loads(Path(tmpdir, "out.json").read_text())
    Path(args.out).write_text(json.dumps({**vars(args), **out}))


if __name__ == "__main__":
    sys.exit(main())
