"""Start-up compiles every kernel a run needs before its first step, once per machine: the root compiles,
the other ranks load from the shared cache, nothing compiles during training, and the first epoch's
figures do not include the compilation (it is reported as start-up)."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from jobs import run_job

# configurations whose steps call different kernels: dtypes, activations, losses, optimizers, strategies
MODES = [
    dict(),
    dict(activation="relu,tanh", layers=[12, 9, 20, 3], loss="mse", dtype="float64", optimizer="adam",
         shard_optimizer=True, accumulate=2),  # δ of the relu layer by the wide kernel, of the tanh one narrow
    dict(reproducible=True, micro_batch=16, activation="tanh", optimizer="momentum"),
    dict(dropout=[0.3], activation="relu", layers=[12, 9, 5, 3]),  # masks; the narrow layer above forced wide
]


def test_nothing_compiles_or_loads_after_the_warm_up():
    # a fresh interpreter: a kernel's first call with new argument types compiles it or loads it from the
    # cache, and either way adds an overload to its dispatcher. So a kernel the warm-up missed would show as
    # a new overload during training, whatever the shared cache holds (test_four_ranks… covers an empty one)
    code = textwrap.dedent(f"""
        import gc, json
        from numba.core.dispatcher import Dispatcher
        from distbp.comm.serial import SerialComm
        from distbp.config import Config, validate
        from distbp.train import loop
        from distbp.train.setup import setup
        from distbp.train.warmup import shared_warmup

        def overloads():
            return {{id(d): (d.py_func.__qualname__, len(d.overloads)) for d in gc.get_objects()
                     if isinstance(d, Dispatcher)}}

        out = []
        for mode in {MODES!r}:
            cfg = validate(Config(**{{**dict(data="synthetic:rows=200,features=12,classes=3,test=20",
                                             layers=[12, 9, 3], epochs=1, batch_size=40, lr=0.01,
                                             progress="none", timeout=0, bucket_mb=0.001), **mode}}))
            run = setup(cfg, SerialComm())
            before_warm_up = overloads()
            shared_warmup(run)
            before = overloads()
            loop.fit(run)
            run.watchdog.stop()
            after = overloads()
            warmed = sum(n - before_warm_up.get(k, (q, 0))[1] for k, (q, n) in before.items())
            new = sorted(q for k, (q, n) in after.items() if n > before.get(k, (q, 0))[1])
            out.append({{"warm_up": warmed, "training": new}})
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(g["warm_up"] > 0 for g in got), got  # every mode's warm-up brought kernels in
    assert [g["training"] for g in got] == [[]] * len(MODES), got


def test_four_ranks_on_an_empty_cache_compile_once(tmp_path):
    cache = tmp_path / "cache"
    args = ["distbp", "train", "--data", "synthetic:rows=400,features=10,classes=3,test=40", "--layers", "10,8,3",
            "--epochs", "1", "--batch-size", "40", "--progress", "none", "--metrics", str(tmp_path / "m.jsonl"),
            "--save", str(tmp_path / "a.npz")]
    first = run_job(4, args, timeout=300, env={"NUMBA_CACHE_DIR": str(cache)})
    assert first.returncode == 0, first.output
    line = next(line for line in first.stdout.splitlines() if line.startswith("distbp: start-up"))
    assert "rank 0 compiled" in line and "the other 3 rank(s) loaded them from the cache" in line, line
    record = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert record["startup_s"] > 0
    # the cache the four ranks shared holds good kernels: a second job loads all and trains the same
    again = run_job(4, [*args[:-1], str(tmp_path / "b.npz")], timeout=300, env={"NUMBA_CACHE_DIR": str(cache)})
    assert again.returncode == 0, again.output
    assert "(every kernel loaded from the cache, by all ranks at once)" in again.stdout, again.stdout
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def startup_of(done) -> str:
    return next(line for line in done.stdout.splitlines() if line.startswith("distbp: start-up"))


def warmup(cache, *options) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-m", "distbp", "warmup", *options], capture_output=True, text=True,
                          timeout=300, env=env)


JOB = ["distbp", "train", "--data", "synthetic:rows=300,features=10,classes=3,test=30", "--layers", "10,8,3",
       "--epochs", "1", "--batch-size", "30", "--progress", "none"]


def test_distbp_warmup_marks_a_configuration_that_a_job_then_loads_on_all_ranks_at_once(tmp_path):
    # the shared cache of the suite (it may hold these kernels already: compiling into an empty cache is
    # test_four_ranks…'s part); the mark is what this configuration's job finds
    cache = os.environ["NUMBA_CACHE_DIR"]
    options = ["--activation", "tanh", "--optimizer", "momentum", "--dtype", "float64"]
    for marked in (Path(cache) / "distbp-warm").glob("*"):
        marked.unlink()  # no run of the suite marked this configuration before the warm-up did
    done = warmup(cache, *options)
    assert done.returncode == 0, done.stderr
    assert re.search(r"distbp: warm-up .* compiled \d+ kernel\(s\) into .* \(marked warm: \w+\)", done.stdout), done.stdout
    job = run_job(2, [*JOB, *options], timeout=300, env={"NUMBA_CACHE_DIR": str(cache)})
    assert job.returncode == 0, job.output
    assert "(every kernel loaded from the cache, by all ranks at once)" in startup_of(job), job.stdout


def test_distbp_warmup_draws_a_large_synthetic_set_into_the_data_cache(tmp_path, monkeypatch):
    import numpy as np

    from distbp.data import cache as datacache
    from distbp.data.datasets import load_dataset

    spec = "synthetic:rows=5400,features=784,classes=3"  # 16.9 MB of features: just above datacache.MIN_BYTES
    monkeypatch.setenv(datacache.ENV, str(tmp_path / "data"))
    done = warmup(os.environ["NUMBA_CACHE_DIR"], "--data", spec)
    assert done.returncode == 0, done.stderr
    entry, = (tmp_path / "data").iterdir()
    assert "distbp: data" in done.stdout and f"{spec} is in the data cache, {entry}" in done.stdout, done.stdout
    cached = load_dataset(spec)
    assert isinstance(cached.train.X, np.memmap)
    monkeypatch.setenv(datacache.ENV, "off")
    assert cached.fingerprint() == load_dataset(spec).fingerprint()


def test_a_stale_marker_costs_compilation_not_correctness(tmp_path):
    # a cache marked warm that lacks kernels (entries deleted by hand, say): every rank compiles the missing
    # ones at once, writing the same cache entries (index files included) concurrently; the job trains, and
    # the cache it leaves is whole for the next job. A copy of the suite's cache with the backward kernels
    # removed (compiling all of them is test_four_ranks…'s part; an empty cache here works the same, slower)
    stale = tmp_path / "stale"
    shutil.copytree(os.environ["NUMBA_CACHE_DIR"], stale, ignore=shutil.ignore_patterns("distbp-warm"))
    for entry in stale.glob("*/kernels.*backward*"):
        entry.unlink()
    (stale / "distbp-warm").mkdir()
    (stale / "distbp-warm" / key_of(JOB)).write_text("marked by hand\n")
    args = [*JOB, "--save", str(tmp_path / "a.npz")]
    first = run_job(2, args, timeout=300, env={"NUMBA_CACHE_DIR": str(stale)})
    assert first.returncode == 0, first.output
    # the missing kernels were compiled (by every rank, unless one lagged behind another's cache write)
    assert "rank 0 compiled" in startup_of(first), first.stdout
    again = run_job(2, [*JOB, "--save", str(tmp_path / "b.npz")], timeout=300, env={"NUMBA_CACHE_DIR": str(stale)})
    assert again.returncode == 0, again.output
    assert "(every kernel loaded from the cache, by all ranks at once)" in startup_of(again), again.stdout
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def warm_key_of(**options) -> str:
    """The warm key (distbp.train.warmup.warm_key) of a run with these Config fields, on one rank."""
    from distbp.comm.serial import SerialComm
    from distbp.config import Config, validate
    from distbp.train.setup import setup
    from distbp.train.warmup import warm_key

    cfg = validate(Config(**{**dict(data="synthetic:rows=60,features=6,classes=3,test=6", layers=[6, 5, 3],
                                    epochs=1, progress="none", timeout=0), **options}))
    run = setup(cfg, SerialComm())
    run.watchdog.stop()
    return warm_key(run.model, cfg.optimizer, run.sync, run.data)


def key_of(job: list[str]) -> str:
    """The warm key of a `distbp train` command line (its flags; the data and sizes do not enter the key)."""
    import argparse

    from distbp.config import add_arguments, from_sources

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_sources(parser.parse_args(job[2:]))
    return warm_key_of(activation=cfg.activation, optimizer=cfg.optimizer, dtype=cfg.dtype, loss=cfg.loss)


def test_the_warm_key_names_the_kernels_not_the_sizes():
    key = warm_key_of

    base = key()
    assert key(layers=[6, 9, 9, 3], batch_size=32, lr=0.5, momentum=0.5) == base  # sizes and values: same kernels
    for changed in (dict(dtype="float64"), dict(activation="relu"), dict(loss="mse"), dict(optimizer="adam"),
                    dict(clip_grad_norm=1.0), dict(reproducible=True, micro_batch=8),
                    dict(data="synthetic:rows=60,features=6,classes=20,test=6", layers=[6, 5, 20]),  # a wide output
                    dict(scale="none")):  # the gather's kernel without the scaling's passes
        assert key(**changed) != base, changed
