"""Dropout: what it costs a step, and what it does to the train-test gap on digits.

    .venv/bin/python benchmarks/dropout.py
    .venv/bin/python benchmarks/dropout.py --repeats 30 --epochs 60

1. The step (loss_and_grad_into + a gradient-descent update, as training runs it) of 784-1024-1024-10 relu,
   batch 512, float32, with and without dropout 0.2 on both hidden layers, side by side and round-robin in one
   process (1 thread, then every core). The masks are drawn in the kernels from (seed, step, row, layer, unit):
   a hash per unit, in the forward pass and again in the backward pass.
2. digits (8×8 images, 10 classes; 500 rows to train on, the other 1,297 held out): 64-1024-1024-10 tanh and
   relu, Adam, batch 32, the same seed, trained without and with dropout 0.5 on both hidden layers; the table
   gives the train and held-out accuracy at the end and the gap between them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402
from benchmarks.common import interleaved_times, machine, print_table, write_json  # noqa: E402
from distbp.comm.serial import SerialComm  # noqa: E402
from distbp.host.threads import cores_available, set_threads  # noqa: E402
from distbp.nn.model import MLP  # noqa: E402
from distbp.nn.optim import make_optimizer  # noqa: E402


def step_costs(args) -> list[dict]:
    sizes, batch = [784, 1024, 1024, 10], 512
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, 10, batch)
    rows = np.arange(batch, dtype=np.int64)
    results = []
    for threads in sorted({1, cores_available()}):
        set_threads(threads)
        cases = {}
        for p in (0.0, 0.2):
            model = MLP(sizes, activation="relu", dtype="float32", seed=0)
            model.dropout = [p, p] if p else None
            grad = np.zeros(model.n_params, np.float32)
            opt = make_optimizer("gd", model.n_params, np.float32, lr=1e-4)

            def step(model=model, grad=grad, opt=opt):
                model.dropout_step += 1
                model.loss_and_grad_into(X, y, grad, validate=False, rows=rows)
                opt.step(model.flat_params, grad, 1.0 / batch)
            cases[f"dropout {p}"] = step
        times = interleaved_times(cases, args.repeats, warmup=2)
        base = statistics.median(times["dropout 0.0"])
        for name, t in times.items():
            results.append({"threads": threads, "case": name, "ms": 1e3 * statistics.median(t),
                            "vs no dropout": statistics.median(t) / base})
    print_table([{**r, "ms": f"{r['ms']:.2f}", "vs no dropout": f"{r['vs no dropout']:.3f}"} for r in results],
                ["threads", "case", "ms", "vs no dropout"],
                title=f"step of 784-1024-1024-10 relu, batch 512, float32, median of {args.repeats}")
    return results


def digits_gap(args) -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, train_size=500, random_state=0, stratify=y)
    out = []
    for activation, lr in (("tanh", 1e-3), ("relu", 3e-4)):
        for p in (0.0, 0.5):
            model = distbp.MLP([64, 1024, 1024, 10], activation=activation, dtype="float32", seed=0)
            distbp.fit(model, X_train, y_train, epochs=args.epochs, batch_size=32, optimizer="adam", lr=lr,
                       lr_scale="mean", seed=0, scale="none", dropout=[p] if p else None, comm=SerialComm(),
                       verbose=False, timeout=0)
            train = float((model.predict(X_train).argmax(1) == y_train).mean())
            test = float((model.predict(X_test).argmax(1) == y_test).mean())
            out.append({"activation": activation, "dropout": p, "train_accuracy": train, "test_accuracy": test,
                        "gap": train - test})
    print_table([{"activation": r["activation"], "dropout": r["dropout"], "train": f"{100 * r['train_accuracy']:.2f}%",
                  "held-out": f"{100 * r['test_accuracy']:.2f}%", "gap (points)": f"{100 * r['gap']:.2f}"}
                 for r in out], ["activation", "dropout", "train", "held-out", "gap (points)"],
                title=f"digits, 64-1024-1024-10, adam, batch 32, {args.epochs} epochs, seed 0 "
                      f"({len(y_train)} train / {len(y_test)} held-out rows)")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--out", default="results/dropout.json")
    args = p.parse_args(argv)
    steps = step_costs(args)
    gap = digits_gap(args)
    write_json(args.out, {"benchmark": "dropout", "machine": machine(), "step": steps, "digits": gap,
                          "epochs": args.epochs, "repeats": args.repeats})


if __name__ == "__main__":
    main()
