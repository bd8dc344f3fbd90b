"""The golden cases: each value that tests/golden/values.json records, computed from the current code.

record.py writes these values; tests/unit/test_golden.py and tests/mpi/test_golden_mpi.py compare them with
the file. Every function returns a JSON-ready dict {case name: {"inputs": …, value: …}}, so that a drifted value
is reported next to what it was computed from. What each value is and when regenerating it is legitimate:
record.py's docstring.

Exact values (hashes, integer lists) are for what must be the same bits on any CPU and thread count: the
built-in data draws (no BLAS: `product_without_blas`), the epoch permutations and the initial parameters
(numpy's Generator), the exact mode's fixed-point integers. The trained parameters go through BLAS, whose
float64 bits differ between CPUs, so they are recorded as numbers and compared to FIT_RTOL/FIT_ATOL.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

import distbp
from distbp.data.datasets import load_dataset
from distbp.data.shard import epoch_permutation
from distbp.sync.exact import HEADROOM_BITS, INT_BITS, add_fixed_point, from_fixed_point

# a changed rule (a coefficient 1e-6 off, a learning rate 1e-6 off) moves 5 float64 steps by far more than
# 1e-9 relative; a CPU's other BLAS kernels, or p ranks' other order of the same sums, by about 1e-14
FIT_RTOL, FIT_ATOL = 1e-9, 1e-12


def sha256(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' bytes, little-endian, in order (shapes are recorded beside it)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


# ---- the built-in data draws, as a trainer sees them ------------------------------------------------------

# (name, spec, seed, test_fraction): one set below the data cache's 16 MiB and one above it (drawn, not
# cached: the tests turn the cache off); the first has its own test split, the second holds one out
SYNTHETIC = [
    ("small-with-test-split", "synthetic:rows=300,features=12,classes=4,test=50", 3, 0.1),
    ("17MB-held-out", "synthetic:rows=67000,features=64,classes=10", 0, 0.2),
]


def split_values(dataset) -> dict:
    """The bytes a trainer sees of each split: its raw rows and labels (split_arrays), and every row gathered
    into float64 with the training rows' scaling (offset, factor) applied."""
    out = {"n_features": dataset.n_features, "n_classes": dataset.n_classes, "scaling": dataset.scaling}
    raw = dataset.split_arrays()
    out["raw_sha256"] = sha256(*(raw[k] for k in ("X", "y", "X_test", "y_test") if k in raw))
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        X = np.empty((split.n_rows, dataset.n_features))
        y = np.empty(split.n_rows, np.int64)
        split.gather(np.arange(split.n_rows, dtype=np.int64), X, y)
        out[name] = {"rows": split.n_rows, "scaling_sha256": sha256(split.offset, split.factor),
                     "gathered_sha256": sha256(X, y)}
    return out


def synthetic_draw(name: str) -> dict:
    """The synthetic set `name` of SYNTHETIC (call with the data cache off: DISTBP_DATA_CACHE=off)."""
    spec, seed, test_fraction = next(case[1:] for case in SYNTHETIC if case[0] == name)
    return {"inputs": {"spec": spec, "seed": seed, "test_fraction": test_fraction},
            **split_values(load_dataset(spec, seed=seed, test_fraction=test_fraction))}


def synthetic_draws() -> dict:
    """Every set of SYNTHETIC (call with the data cache off)."""
    return {name: synthetic_draw(name) for name, *_ in SYNTHETIC}


def digits() -> dict:
    """scikit-learn's digits (its bundled file), held out and standardized as `--data digits --seed 0`."""
    return {"digits": {"inputs": {"spec": "digits", "seed": 0}, **split_values(load_dataset("digits", seed=0))}}


# ---- the epoch permutations -------------------------------------------------------------------------------

PERMUTATIONS = [(10, 0, 0), (10, 0, 1), (59, 5, 0), (100_000, 7, 3)]  # (n_rows, seed, epoch)


def permutations() -> dict:
    """epoch_permutation(n_rows, seed, epoch): listed when short, hashed (int64) when long."""
    out = {}
    for n, seed, epoch in PERMUTATIONS:
        perm = epoch_permutation(n, seed, epoch)
        value = {"list": perm.tolist()} if n <= 100 else {"sha256": sha256(perm)}
        out[f"n{n}-seed{seed}-epoch{epoch}"] = {"inputs": {"n_rows": n, "seed": seed, "epoch": epoch}, **value}
    return out


# ---- the initial parameters --------------------------------------------------------------------------------

# (sizes, activation, dtype, seed): relu layers draw He normal, the others Glorot uniform; the last case has
# a W0 of more than INIT_CHUNK elements, drawn in two pieces
INITS = [
    ([9, 7, 3], "relu", "float32", 0),
    ([9, 7, 3], "relu", "float64", 0),
    ([9, 7, 3], "tanh", "float64", 1),
    ([9, 7, 5, 3], ["relu", "sigmoid"], "float64", 4),
    ([12, 6, 2], "linear", "float32", 2),
    ([1500, 800, 10], "relu", "float32", 3),
]


def initial_parameters() -> dict:
    """sha256 of distbp.MLP(sizes, activation, dtype, seed).flat_params."""
    out = {}
    for sizes, activation, dtype, seed in INITS:
        model = distbp.MLP(sizes, activation=activation, dtype=dtype, seed=seed)
        name = "-".join(map(str, sizes)) + f"-{activation if isinstance(activation, str) else ','.join(activation)}"
        out[f"{name}-{dtype}-seed{seed}"] = {"inputs": {"sizes": sizes, "activation": activation, "dtype": dtype,
                                                        "seed": seed},
                                             "n_params": model.n_params, "sha256": sha256(model.flat_params)}
    return out


# ---- the exact mode's fixed-point sums -----------------------------------------------------------------------

FIRST_STEP_SCALE = 2.0 ** 40  # ExactSync's scale when no earlier step's largest |g| is known


def rule_scale(max_abs_g: float, n_blocks: int) -> float:
    """The scale ExactSync picks after a step whose largest |g| was max_abs_g (its module docstring): the
    largest power of two that keeps n_blocks sums of rint(g·S) below 2^INT_BITS with 2^HEADROOM_BITS to spare."""
    bound = 2.0 ** INT_BITS / n_blocks
    return 2.0 ** math.floor(math.log2(bound / (max_abs_g * 2.0 ** HEADROOM_BITS)))


def gradient_blocks(dtype: str, n_blocks: int = 3, n: int = 500) -> list[np.ndarray]:
    """Block gradients from a fixed Generator: N(0, 1) times magnitudes from 1e-12 to 1e2, some exact zeros."""
    rng = np.random.default_rng([2024, n_blocks, n])
    blocks = []
    for _ in range(n_blocks):
        g = rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 2, n)
        g[rng.integers(0, n, n // 20)] = 0
        blocks.append(g.astype(dtype))
    return blocks


def fixed_point() -> dict:
    """Σ_blocks rint(g·S) (the int64 accumulator, hashed), the largest |g| each block reported, and ∇L = Σ/S
    converted back into float64 and float32 buffers, for float64 and float32 block gradients, at the first
    step's scale and at the scale the rule picks from these blocks' largest |g|."""
    out = {}
    for dtype in ("float64", "float32"):
        blocks = gradient_blocks(dtype)
        largest = max(float(np.abs(g).max()) for g in blocks)
        for which, scale in (("first-step", FIRST_STEP_SCALE), ("rule", rule_scale(largest, len(blocks)))):
            acc = np.zeros(blocks[0].shape, np.int64)
            maxima = [add_fixed_point(acc, g, scale) for g in blocks]
            back64, back32 = np.empty(acc.shape, np.float64), np.empty(acc.shape, np.float32)
            from_fixed_point(back64, acc, scale)
            from_fixed_point(back32, acc, scale)
            out[f"{dtype}-{which}-scale"] = {
                "inputs": {"dtype": dtype, "blocks": len(blocks), "n": len(acc), "scale": scale},
                "block_max_abs": [float(m) for m in maxima], "acc_sha256": sha256(acc),
                "float64_sha256": sha256(back64), "float32_sha256": sha256(back32)}
    return out


# ---- float64 parameters after a short run ----------------------------------------------------------------------

ROWS, FEATURES, CLASSES, BATCH = 59, 9, 3, 12  # 5 steps; the last batch of 11 rows is uneven on 2, 3 and 4 ranks


def classification_rows() -> tuple[np.ndarray, np.ndarray]:
    """X (59, 9) float32 (three shifted clusters), y (59,) int64 labels 0..2; only + and ×: the same bits anywhere."""
    rng = np.random.default_rng(20240610)
    centres = rng.standard_normal((CLASSES, FEATURES)) * 2
    y = rng.integers(0, CLASSES, ROWS)
    return (centres[y] + rng.standard_normal((ROWS, FEATURES)) + 3.0).astype(np.float32), y


def regression_rows() -> tuple[np.ndarray, np.ndarray]:
    """X (59, 9) float32, Y (59, 2) float64 targets, polynomials of X plus noise (no transcendental functions,
    whose last bits differ between numpy's CPU paths)."""
    X, _ = classification_rows()
    x = X.astype(np.float64)
    noise = np.random.default_rng(20240611).standard_normal((ROWS, 2)) * 0.1
    Y = np.stack([x[:, 0] - 0.5 * x[:, 1] * x[:, 2], 0.25 * x[:, 3] * x[:, 3] - x[:, 4]], axis=1) + noise
    return X, Y


# name: (model: sizes, activation, loss; fit options). Every optimizer, every sync mode (the replicated
# allreduce over each transport, blocking and bucketed; accumulation; the sharded optimizer; the exact mode),
# weight decay, schedules and warm-up, clipping, lr_scale mean, mse. Lossy communication (comm_dtype
# bfloat16/float16) is left out: its rounding depends on the rank count, so no single recorded value holds.
FIT_CASES = {
    "gd-sigmoid": (dict(sizes=[9, 7, 3], activation="sigmoid"), dict(optimizer="gd", lr=0.05)),
    "momentum-tanh-weight-decay-biases": (
        dict(sizes=[9, 7, 3], activation="tanh"),
        dict(optimizer="momentum", lr=0.02, momentum=0.9, weight_decay=1e-2, decay_biases=True)),
    "adam-relu-cosine-warmup": (
        dict(sizes=[9, 7, 3], activation="relu"),
        dict(optimizer="adam", lr=0.01, lr_schedule="cosine", lr_final=0.001, warmup_steps=2, warmup_start=0.25)),
    "adamw-tanh-linear-schedule-mean": (
        dict(sizes=[9, 7, 3], activation="tanh"),
        dict(optimizer="adam", lr=0.02, weight_decay=0.1, lr_schedule="linear", lr_scale="mean")),
    "lars-relu-tanh": (dict(sizes=[9, 7, 5, 3], activation=["relu", "tanh"]),
                       dict(optimizer="lars", lr=2.0, trust=0.02, momentum=0.8, weight_decay=1e-3)),
    "lamb-sigmoid-weight-decay": (dict(sizes=[9, 7, 3], activation="sigmoid"),
                                  dict(optimizer="lamb", lr=0.02, weight_decay=0.05)),
    "mse-momentum-clipped": (dict(sizes=[9, 7, 2], activation="tanh", loss="mse"),
                             dict(optimizer="momentum", lr=0.002, clip_grad_norm=5.0)),
    "accumulate-2-momentum": (dict(sizes=[9, 7, 5, 3], activation="tanh"),
                              dict(optimizer="momentum", lr=0.02, accumulate=2)),
    "reproducible-adam": (dict(sizes=[9, 7, 3], activation="relu"),
                          dict(optimizer="adam", lr=0.01, reproducible=True, micro_batch=4)),
    "shard-optimizer-adam": (dict(sizes=[9, 7, 3], activation="tanh"),
                             dict(optimizer="adam", lr=0.01, shard_optimizer=True)),
    "shard-optimizer-lars": (dict(sizes=[9, 7, 3], activation="relu"),
                             dict(optimizer="lars", lr=2.0, trust=0.02, shard_optimizer=True)),
    "ring-blocking-gd": (dict(sizes=[9, 7, 3], activation="tanh"),
                         dict(optimizer="gd", lr=0.02, allreduce="ring", overlap=False)),
    "mpi-small-buckets-momentum": (dict(sizes=[9, 7, 3], activation="sigmoid"),
                                   dict(optimizer="momentum", lr=0.02, allreduce="mpi", bucket_mb=1e-4)),
    "hier-small-buckets-step-schedule-2-epochs": (
        dict(sizes=[9, 7, 3], activation="relu"),
        dict(optimizer="momentum", lr=0.02, allreduce="hier", bucket_mb=1e-4, epochs=2, lr_schedule="step",
             lr_milestones=[1], lr_decay=0.5)),
}
FIT_SEED = 3


def fit_case(name: str, comm=None) -> np.ndarray:
    """The float64 parameters after one epoch (two for the step schedule) of case `name`, on `comm`'s ranks
    (None: MPI's world, as distbp.fit picks it)."""
    model_spec, options = FIT_CASES[name]
    X, y = regression_rows() if model_spec.get("loss") == "mse" else classification_rows()
    model = distbp.MLP(model_spec["sizes"], activation=model_spec["activation"],
                       loss=model_spec.get("loss", "cross_entropy"), dtype="float64", seed=FIT_SEED)
    distbp.fit(model, X, y, **{"epochs": 1, "batch_size": BATCH, "seed": FIT_SEED, "timeout": 60, **options},
               verbose=False, comm=comm)
    return model.flat_params.copy()


def fit_inputs(name: str) -> dict:
    """What the recorded parameters of case `name` were computed from."""
    model_spec, options = FIT_CASES[name]
    return {"model": model_spec, "options": {"epochs": 1, "batch_size": BATCH, "seed": FIT_SEED, **options},
            "rows": ROWS}


def fits(comm=None) -> dict:
    """Every case of FIT_CASES: its inputs and the float64 parameters it ends at (repr round-trips)."""
    return {name: {"inputs": fit_inputs(name), "params": fit_case(name, comm).tolist()} for name in FIT_CASES}


SECTIONS = {  # section of values.json: the function computing it
    "synthetic": synthetic_draws,
    "digits": digits,
    "epoch_permutation": permutations,
    "initial_parameters": initial_parameters,
    "fixed_point": fixed_point,
    "fit_float64": fits,
}
