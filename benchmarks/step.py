"""One training step, side by side: distbp vs plain numpy vs PyTorch CPU, and numpy's GEMM rate.

    .venv/bin/python benchmarks/step.py                      # 784-1024-1024-10, batch 512, 1 and all threads
    .venv/bin/python benchmarks/step.py --threads 1 --repeats 30 --plot results/step.png
    OPENBLAS_CORETYPE=SkylakeX .venv/bin/python benchmarks/step.py   # OpenBLAS's AVX-512 kernels

It prints, in order: where a step's time goes (per phase), the narrow layer's fused backward pass against
BLAS + a pass, the step against numpy's GEMMs, plain numpy and PyTorch, and last the GEMM paths for the
step's products (benchmarks/gemm_path.py, run as its own process; --no-gemm-paths skips it).

OpenBLAS reads OPENBLAS_CORETYPE when numpy loads it; the table title names the
kernel set in use (it picks Haswell's AVX2 kernels on this AVX-512 EPYC by itself).

A step is loss_and_grad_into + a gradient-descent update (distbp), the same
maths in plain numpy, and nn.Linear+activation layers with CrossEntropyLoss(sum)
and SGD in PyTorch (when it is installed; it is only a baseline). All cases run
round-robin within one process for each thread count, so machine load falls on
all of them alike, each timed call after `--lead` untimed ones so every library
is timed in its own steady state; the table reports medians, a line below it the
best of the repeats. PyTorch shares libgomp with numba in one process, so it runs
with the pool waits distbp sets (short spins, distbp.host.threads.set_pool_waits; PyTorch
gained from them as distbp did: 2 threads 33.5 ms per step against 39.5-43 ms with PASSIVE).
The distbp step is what training runs: loss_and_grad_into without the per-call input checks
(validate=False; training checks its data once at start-up) and the update.

"numpy GEMMs of the step" times every product of the step through numpy, the narrow layer's δ·Wᵀ
included, although distbp computes that one in kernels.narrow_backward (its own table compares the two).

Executed GFLOP/s counts the matrix products the step really runs: forward
2·n·Σ fi·fo, dW = aᵀ·δ 2·n·Σ fi·fo, and δ·Wᵀ for every layer but the first.
"6PN" GFLOP/s is the usual 6 × parameters × batch estimate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
from benchmarks.common import (  # noqa: E402
    bar_chart,
    interleaved_medians,
    interleaved_times,
    machine,
    openblas_kernels,
    print_table,
    write_json,
)
from distbp import GD, MLP  # noqa: E402
from distbp.host.threads import cores_available, set_threads  # noqa: E402

LR = 1e-4


def gemms(model: MLP, X: np.ndarray, n: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, A, B, out) for every product the step executes, with the model's transposed views."""
    rng = np.random.default_rng(1)
    dt = model.dtype
    out = []
    a = X
    for l, (W, _) in enumerate(model.params):
        fi, fo = W.shape
        delta = rng.standard_normal((n, fo)).astype(dt)
        out.append((f"a@W[{l}] {n}x{fi}@{fi}x{fo}", a, W, np.empty((n, fo), dt)))
        out.append((f"aT@d[{l}] {fi}x{n}@{n}x{fo}", a.T, delta, np.empty((fi, fo), dt)))
        if l > 0:
            out.append((f"d@WT[{l}] {n}x{fo}@{fo}x{fi}", delta, W.T, np.empty((n, fi), dt)))
        a = rng.random((n, fo)).astype(dt)
    return out


def flops(A: np.ndarray, B: np.ndarray) -> int:
    return 2 * A.shape[0] * A.shape[1] * B.shape[1]


# ---- plain numpy twin: allocates as numpy code naturally does ------------------

NUMPY_ACT = {
    "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda a: a * (1 - a)),
    "tanh": (np.tanh, lambda a: 1 - a * a),
    "relu": (lambda z: np.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
}


def numpy_step(params: list, X: np.ndarray, y: np.ndarray, activation: str, lr: float) -> float:
    """Softmax cross-entropy (sum) forward, backward and θ -= lr·∇L on params [(W, b)] in place."""
    act, act_prime = NUMPY_ACT[activation]
    acts = [X]
    for W, b in params[:-1]:
        acts.append(act(acts[-1] @ W + b))
    z = acts[-1] @ params[-1][0] + params[-1][1]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = -np.log(p[rows, y]).sum()
    delta = p
    delta[rows, y] -= 1
    for l in range(len(params) - 1, -1, -1):
        W, b = params[l]
        dW = acts[l].T @ delta
        db = delta.sum(axis=0)
        if l:
            delta = (delta @ W.T) * act_prime(acts[l])
        W -= lr * dW
        b -= lr * db
    return float(loss)


# ---- PyTorch baseline ----------------------------------------------------------

def torch_step_fn(sizes: list[int], activation: str, dtype: str, X: np.ndarray, y: np.ndarray):
    """A zero-argument PyTorch training step, or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    layers = []
    act = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[activation]
    for l, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(fi, fo))
        if l < len(sizes) - 2:
            layers.append(act())
    net = torch.nn.Sequential(*layers).to(getattr(torch, dtype))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(net(Xt), yt)
        loss.backward()
        opt.step()
    return step


def phase_cases(model: MLP, X: np.ndarray, y: np.ndarray, grad: np.ndarray, opt) -> dict:
    """The step's non-GEMM work, each phase on the step's own buffers (the profile's parts).

    Reaches into the model's workspace and kernel lists on purpose: the profile times exactly the
    kernels loss_and_grad_into calls, with the arrays it calls them on (the step overwrites them).
    """
    model.loss_and_grad_into(X, y, grad)  # fills the workspace
    ws, n, L = model._ws, X.shape[0], model.n_layers - 1
    grads = model.views(grad)
    from distbp.nn import kernels

    def elementwise():
        for l, (_, b) in enumerate(model.params):
            z = ws.z[l][:n]
            model._forward_kernels[l](z, ws.a[l][:n] if l < L else z, b)
        kernels.column_sum(ws.z[L][:n], grads[L][1], ws.partial)
        for l in range(L, 0, -1):
            W, a_prev = model.params[l][0], X if l == 1 else ws.a[l - 2][:n]
            if l in ws.w_t:  # a narrow layer: its δ·Wᵀ is inside this kernel (so not in the step's GEMMs)
                model._narrow_kernels[l - 1](ws.z[l - 1][:n], ws.z[l][:n], ws.w_t[l], a_prev, grads[l - 1][1],
                                             ws.partial)
            else:
                model._backward_kernels[l - 1](ws.z[l - 1][:n], ws.g[:n, :W.shape[0]], a_prev, grads[l - 1][1],
                                               ws.partial)

    def loss():
        delta = ws.z[L][:n]
        model.loss.loss_delta(delta, y, ws.a[L][:n], delta, ws.row_loss[:n])
        kernels.ordered_sum(ws.row_loss[:n])

    return {"element-wise kernels": elementwise, "loss": loss,
            "update": lambda: opt.step(model.flat_params, grad)}


def narrow_cases(model: MLP, X: np.ndarray, y: np.ndarray, grad: np.ndarray) -> dict:
    """For each narrow layer l (kernels.narrow_backward): δ_{l-1} as the step computes it (one fused pass)
    and as it did before (BLAS δ·Wᵀ into g, then activation_backward), on the step's buffers."""
    model.loss_and_grad_into(X, y, grad, validate=False)
    ws, n = model._ws, X.shape[0]
    grads = model.views(grad)
    cases = {}
    for l in ws.w_t:
        W, a_prev, z_prev, d = model.params[l][0], (X if l == 1 else ws.a[l - 2][:n]), ws.z[l - 1][:n], ws.z[l][:n]
        g = ws.g[:n, :W.shape[0]]

        def fused(l=l, W=W, a_prev=a_prev, z_prev=z_prev, d=d):
            np.copyto(ws.w_t[l], W.T)
            model._narrow_kernels[l - 1](z_prev, d, ws.w_t[l], a_prev, grads[l - 1][1], ws.partial)

        def blas(l=l, W=W, a_prev=a_prev, z_prev=z_prev, d=d, g=g):
            np.matmul(d, W.T, out=g)
            model._backward_kernels[l - 1](z_prev, g, a_prev, grads[l - 1][1], ws.partial)
        cases[f"narrow {l}: fused"], cases[f"narrow {l}: BLAS + pass"] = fused, blas
    return cases


PHASES = ("gemms", "element-wise kernels", "loss", "update")


def set_all_threads(t: int) -> None:
    set_threads(t)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(t)


def measure(t: int, args, sizes, X, y) -> dict:
    set_all_threads(t)
    n = args.batch
    model = MLP(sizes, activation=args.activation, dtype=args.dtype, seed=0)
    opt = GD(model.n_params, model.dtype, lr=LR)
    grad = np.empty(model.n_params, model.dtype)
    np_params = [(W.copy(), b.copy()) for W, b in model.params]
    products = gemms(model, X, n)

    def distbp_step():
        model.loss_and_grad_into(X, y, grad, validate=False)  # as training calls it
        opt.step(model.flat_params, grad)

    def gemm_all():
        for _, A, B, out in products:
            np.matmul(A, B, out=out)

    cases = {"distbp": distbp_step, "numpy": lambda: numpy_step(np_params, X, y, args.activation, LR),
             "gemms": gemm_all, **phase_cases(model, X, y, grad, opt), **narrow_cases(model, X, y, grad)}
    torch_step = torch_step_fn(sizes, args.activation, args.dtype, X, y) if not args.no_torch else None
    if torch_step is not None:
        cases["torch"] = torch_step
    # untimed lead-in calls before each timed one: right after numpy's GEMMs, OpenBLAS's
    # idle workers spin and took half of PyTorch's second core (10,300 samples/s on
    # 2 threads timed straight after them, 19,000 in its own loop)
    times = interleaved_times(cases, args.repeats, lead=args.lead)
    med = {k: float(np.median(v)) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other processes
    per_gemm = interleaved_medians({name: (lambda A=A, B=B, o=o: np.matmul(A, B, out=o))
                                    for name, A, B, o in products}, max(5, args.repeats // 2), warmup=1)

    executed = sum(flops(A, B) for _, A, B, _ in products)
    gemm_rate = executed / med["gemms"] / 1e9
    mem = model.memory_bytes(n)
    mem["optimizer_state"] = sum(a.nbytes for a in opt.state_arrays().values())
    mem["step_total"] = mem["parameters"] + mem["gradients"] + mem["optimizer_state"] + mem["workspace"]
    mem["step_minimum"] = mem["step_total"] - mem["workspace"] + mem["workspace_minimum"]
    narrow = {k: 1e3 * v for k, v in med.items() if k.startswith("narrow ")}
    profile = {name: med[name] for name in PHASES}
    profile["python and the rest"] = med["distbp"] - sum(profile.values())
    res = {
        "threads": t,
        "profile_ms": {k: 1e3 * v for k, v in profile.items()},
        "narrow_backward_ms": narrow,
        "seconds": med,
        "seconds_best": best,
        "distbp_over_torch_best": best["torch"] / best["distbp"] if "torch" in best else None,
        "distbp_gemm_fraction_best": best["gemms"] / best["distbp"],
        "samples_per_s": {k: n / v for k, v in med.items() if k != "gemms"},
        "executed_gflop": executed / 1e9,
        "numpy_gemm_gflops": gemm_rate,
        "distbp_executed_gflops": executed / med["distbp"] / 1e9,
        "distbp_6pn_gflops": 6 * model.n_params * n / med["distbp"] / 1e9,
        "distbp_gemm_fraction": med["gemms"] / med["distbp"],
        "distbp_over_numpy_step": med["numpy"] / med["distbp"],
        "distbp_over_torch": med["torch"] / med["distbp"] if "torch" in med else None,
        "gemm_gflops_by_shape": {name: flops(A, B) / per_gemm[name] / 1e9 for name, A, B, _ in products},
        "memory_bytes": mem,
    }
    return res


def table_rows(r: dict, torch_missing: bool) -> list[dict]:
    t, sps = r["threads"], r["samples_per_s"]
    rows = [{"threads": t, "case": "numpy GEMMs of the step", "ms": r["seconds"]["gemms"] * 1e3,
             "GFLOP/s": r["numpy_gemm_gflops"]},
            {"threads": t, "case": "distbp step", "ms": r["seconds"]["distbp"] * 1e3, "samples/s": sps["distbp"],
             "GFLOP/s": r["distbp_executed_gflops"], "6PN GFLOP/s": r["distbp_6pn_gflops"],
             "of GEMM rate": f"{100 * r['distbp_gemm_fraction']:.1f}%"},
            {"threads": t, "case": "plain numpy step", "ms": r["seconds"]["numpy"] * 1e3, "samples/s": sps["numpy"],
             "distbp/this": r["distbp_over_numpy_step"]}]
    if "torch" in sps:
        rows.append({"threads": t, "case": "PyTorch CPU step", "ms": r["seconds"]["torch"] * 1e3,
                     "samples/s": sps["torch"], "distbp/this": r["distbp_over_torch"]})
    else:
        rows.append({"threads": t, "case": "PyTorch CPU step: " + ("skipped" if not torch_missing
                                                                     else "not installed")})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,1024,1024,10", help="layer sizes, comma separated")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--activation", default="sigmoid", choices=sorted(NUMPY_ACT))
    p.add_argument("--threads", default=f"1,{cores_available()}", help="thread counts, comma separated")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--lead", type=int, default=3, help="untimed calls before each timed call (steady state)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    p.add_argument("--no-gemm-paths", action="store_true",
                   help="skip the GEMM-path comparison (numpy's OpenBLAS, SciPy's through Numba, BLIS) printed last")
    p.add_argument("--out", default="results/step.json")
    p.add_argument("--plot", default=None, help="PNG path for a bar chart (needs matplotlib)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.layers.split(",")]
    threads = list(dict.fromkeys(int(t) for t in args.threads.split(",")))

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, sizes[0])).astype(args.dtype)
    y = rng.integers(0, sizes[-1], args.batch)
    torch_missing = False
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            torch_missing = True

    results, rows = [], []
    for t in threads:
        r = measure(t, args, sizes, X, y)
        results.append(r)
        rows += table_rows(r, torch_missing)
    profile_rows = [{"threads": r["threads"], "phase": name, "ms per step": ms,
                     "of the step": f"{100 * ms / (1e3 * r['seconds']['distbp']):.1f}%"}
                    for r in results for name, ms in r["profile_ms"].items()]
    print_table(profile_rows, ["threads", "phase", "ms per step", "of the step"],
                title="where a distbp step's time goes (each phase timed on its own, on the step's buffers; "
                      "the rest is the step's median minus the phases)")
    print()
    narrow_rows = [{"threads": r["threads"], "case": name, "ms": ms} for r in results
                   for name, ms in r["narrow_backward_ms"].items()]
    if narrow_rows:
        print_table(narrow_rows, ["threads", "case", "ms"],
                    title="δ below a narrow layer: kernels.narrow_backward (product, σ' and db in one pass) against "
                          "a BLAS δ·Wᵀ and activation_backward, interleaved")
        print()
    mem = results[0]["memory_bytes"]
    print_table(rows, ["threads", "case", "ms", "samples/s", "GFLOP/s", "6PN GFLOP/s", "of GEMM rate",
                       "distbp/this"],
                title=f"step of MLP {args.layers}, batch {args.batch}, {args.dtype}, {args.activation}; "
                      f"median of {args.repeats}, load avg {os.getloadavg()[0]:.1f}, OpenBLAS kernels "
                      f"{'/'.join(sorted(set(openblas_kernels().values())))}")
    for r in results:
        vs_torch = (f"distbp/PyTorch {r['distbp_over_torch_best']:.2f}, " if r["distbp_over_torch_best"] else "")
        rate = args.batch / r["seconds_best"]["distbp"]
        print(f"best of {args.repeats}, {r['threads']} thread(s): distbp {rate:,.0f} samples/s, {vs_torch}"
              f"of GEMM rate {100 * r['distbp_gemm_fraction_best']:.1f}%")
    print(f"distbp memory per step: parameters {mem['parameters'] / 2**20:.2f} MiB + gradients "
          f"{mem['gradients'] / 2**20:.2f} MiB + optimizer state {mem['optimizer_state'] / 2**20:.2f} MiB + "
          f"workspace {mem['workspace'] / 2**20:.2f} MiB (minimum {mem['workspace_minimum'] / 2**20:.2f} MiB) = "
          f"{mem['step_total'] / 2**20:.2f} MiB (minimum {mem['step_minimum'] / 2**20:.2f} MiB)")
    write_json(args.out, {"benchmark": "step", "layers": sizes, "batch": args.batch, "dtype": args.dtype,
                          "activation": args.activation, "repeats": args.repeats, "machine": machine(),
                          "pytorch": "not installed" if torch_missing else ("skipped" if args.no_torch else
                                                                            sys.modules["torch"].__version__),
                          "results": results})
    if not args.no_gemm_paths:
        # the step's products through each GEMM library, in a process of its own (its own thread pools)
        print(flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("gemm_path.py")), "--layers", args.layers,
                        "--batch", str(args.batch), "--dtype", args.dtype, "--threads", args.threads,
                        "--repeats", str(max(5, args.repeats // 2))], check=True)
    if args.plot:
        names = ["distbp", "numpy"] + (["torch"] if "torch" in results[0]["samples_per_s"] else [])
        label = {"distbp": "distbp", "numpy": "plain numpy", "torch": "PyTorch"}
        bar_chart(args.plot, [f"{r['threads']} thread(s)" for r in results],
                  {label[k]: [r["samples_per_s"][k] for r in results] for k in names},
                  "samples / s", f"training step, MLP {args.layers}, batch {args.batch}")


if __name__ == "__main__":
    main()
