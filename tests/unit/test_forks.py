"""joblib after a fit: a fork-based pool fails at once with one clear error naming the fix, never hangs; the
default (spawning) backend works (issue 27). Each case runs in its own process, so pytest's is never forked."""

import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import numpy as np, distbp
    from joblib import Parallel, delayed  # scikit-learn's dependency, in the test extra
    X = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32); y = np.arange(200) % 3
    distbp.fit(distbp.MLP([8, 16, 3]), X, y, epochs=1, batch_size=32, verbose=False)  # the parent's kernels run

    def fit_one(seed):
        model = distbp.MLP([8, 16, 3], seed=seed)
        distbp.fit(model, X, y, epochs=1, batch_size=32, verbose=False, threads=1)
        return float(model.predict(X[:4]).sum())
    """)


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_a_fork_based_pool_after_a_fit_fails_at_once_naming_the_fix():
    done = run("""
        from distbp.errors import DistbpError
        try:
            Parallel(n_jobs=2, backend="multiprocessing")(delayed(fit_one)(s) for s in range(2))
        except DistbpError as e:
            print("refused:", e)
        """)
    assert done.returncode == 0, done.stderr
    assert "refused: distbp.fit cannot run in a process forked" in done.stdout
    assert "loky" in done.stdout and "Terminating" not in done.stderr


def test_the_default_spawning_backend_works_after_a_fit():
    done = run("""
        print("results:", Parallel(n_jobs=2)(delayed(fit_one)(s) for s in range(2)))
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("results: [") == 1
