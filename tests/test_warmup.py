"""Start-up compiles every kernel a run needs before its first step, once per machine: the root compiles,
the other ranks load from the shared cache, nothing compiles during training, and the first epoch's
figures do not include the compilation (it is reported as start-up)."""

import json
import os
import subprocess
import sys
import textwrap

from jobs import run_job

# configurations whose steps call different kernels: dtypes, activations, losses, optimizers, strategies
MODES = [
    dict(),
    dict(activation="relu,tanh", layers=[12, 9, 7, 3], loss="mse", dtype="float64", optimizer="adam"),
    dict(optimizer="momentum", shard_optimizer=True, accumulate=2),
    dict(reproducible=True, micro_batch=16, activation="tanh"),
]


def test_nothing_compiles_after_the_warm_up(tmp_path):
    # a fresh interpreter on an empty cache: every first call of a kernel compiles, so a kernel the warm-up
    # missed would compile inside the training step, and the counter would see it
    code = textwrap.dedent(f"""
        import json
        from distbp.comm import SerialComm
        from distbp.config import Config, validate
        from distbp import train
        from distbp.warmup import CompileCounter, shared_warmup
        out = []
        for mode in {MODES!r}:
            cfg = validate(Config(**{{**dict(data="synthetic:rows=200,features=12,classes=3,test=20",
                                             layers=[12, 9, 3], epochs=1, batch_size=40, lr=0.01,
                                             progress="none", timeout=0, bucket_mb=0.001), **mode}}))
            run = train.setup(cfg, SerialComm())
            warm = shared_warmup(run)[0]
            with CompileCounter() as during:
                train.fit(run)
            run.watchdog.stop()
            out.append({{"warm_up": warm["compiled"], "training": during.compiled}})
        print(json.dumps(out))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got[0]["warm_up"] > 0  # the cache was empty: the warm-up compiled
    assert [g["training"] for g in got] == [0] * len(MODES), got


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
    assert "distbp: start-up" in again.stdout and "(every kernel loaded from the cache)" in again.stdout, again.stdout
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
