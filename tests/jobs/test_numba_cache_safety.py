"""A Numba cache another user planted, or one that is damaged, costs at most a recompile: never code run as
the user, never the job. The planted cache is a warm copy whose every index is a pickle that touches a marker
(and kills its reader), written by a second uid into a world-writable NUMBA_CACHE_DIR."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from caches import plant_evil_cache, reachable_tmp, warm_numba_cache
from jobs import REPO, job_env, run_job

TRAIN = ["distbp", "train", "--data", "synthetic:rows=600,features=10,classes=3", "--layers", "10,8,3",
         "--epochs", "1", "--batch-size", "50", "--progress", "none"]

FIT = """
import sys
import numpy as np
if sys.argv[1] == "unchecked":  # the control: distbp's check taken out, numba reads the planted cache
    from distbp.host import numbacache
    numbacache.check_loaded = lambda is_root=True: None
import distbp
X = np.random.default_rng(0).random((200, 10)).astype(np.float32)
model = distbp.MLP([10, 8, 3], activation="relu", loss="cross_entropy")
distbp.fit(model, X, (X[:, 0] * 3).astype(int), epochs=1, batch_size=50, verbose=False)
print("fitted")
"""


@pytest.fixture
def place():
    path = reachable_tmp()
    home = path / "home-cache"
    warm_numba_cache(home / "distbp" / "numba")  # the private fallback, warm: the jobs start fast
    for p in (home, home / "distbp", home / "distbp" / "numba"):
        p.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def planted(place: Path) -> tuple[Path, Path]:
    cache = place / "shared-numba"
    cache.mkdir(mode=0o777)
    cache.chmod(0o1777)
    marker = place / "code-ran"
    assert plant_evil_cache(cache, marker) > 0
    return cache, marker


def env_for(place: Path, cache: Path) -> dict:
    return {"NUMBA_CACHE_DIR": str(cache), "XDG_CACHE_HOME": str(place / "home-cache"), "DISTBP_DATA_CACHE": "off"}


def fit(mode: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FIT, mode], env=job_env(env), cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_a_planted_index_runs_code_when_nothing_checks_it(place):
    """The control: the planted cache is a real attack (numba unpickles it), so the tests below prove something."""
    cache, marker = planted(place)
    done = fit("unchecked", env_for(place, cache))
    assert marker.exists(), done.stderr


def test_fit_never_unpickles_a_planted_index_and_warns_once(place):
    cache, marker = planted(place)
    done = fit("checked", env_for(place, cache))
    assert done.returncode == 0 and "fitted" in done.stdout, done.stderr
    assert not marker.exists()
    warnings = [line for line in done.stderr.splitlines() if line.startswith("distbp: warning:")]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "chmod go-w" in warnings[0], done.stderr


def test_train_never_unpickles_a_planted_index_and_warns_once_for_two_ranks(place):
    cache, marker = planted(place)
    done = run_job(2, TRAIN, env=env_for(place, cache), timeout=300)
    assert done.returncode == 0, done.output
    assert not marker.exists()
    warnings = [line for line in done.output.splitlines() if "Numba cache" in line]
    assert len(warnings) == 1 and str(place / "home-cache" / "distbp" / "numba") in warnings[0], done.output


def damage(cache: Path) -> list[str]:
    """A garbage index, cut-short data files, a symlinked index: of kernels every training step runs."""
    nn = next(cache.glob("nn_*"))
    hurt = []
    for p in nn.glob("kernels.all_finite-*.nbi"):
        p.write_bytes(os.urandom(200))
        hurt.append(p.name)
    for p in nn.glob("kernels.column_sum-*.nbc"):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        hurt.append(p.name)
    for p in nn.glob("optim.gd_update-*.nbi"):
        (cache / "elsewhere.nbi").write_bytes(p.read_bytes())
        p.unlink()
        p.symlink_to(cache / "elsewhere.nbi")
        hurt.append(p.name)
    return hurt


@pytest.mark.parametrize("mode", ["fit", "train"])
def test_a_damaged_cache_recompiles_with_one_warning(place, mode):
    cache = warm_numba_cache(place / "mine")
    cache.chmod(0o700)
    hurt = damage(cache)
    assert len(hurt) >= 3
    env = env_for(place, cache)
    done = fit("checked", env) if mode == "fit" else run_job(2, TRAIN, env=env, timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    output = done.stdout + done.stderr  # a launched job's ranks may write their stderr to its stdout
    warnings = [line for line in output.splitlines() if line.startswith("distbp: warning:")]
    assert len(warnings) == 1 and "damaged or untrusted Numba cache file" in warnings[0], output
    assert "Traceback" not in output and "Unpickling" not in output
    again = fit("checked", env)  # recompiled and written back: the next start is clean and silent
    assert again.returncode == 0 and "distbp: warning" not in again.stderr, again.stderr
