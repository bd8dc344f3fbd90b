"""A library call that fails leaves nothing behind: 1,000 refused fits in one process keep communicators, the
gradient's shared window, threads, file descriptors and trace part files flat (issue 27)."""

import os
import threading

import numpy as np
import pytest

import distbp
from distbp.errors import DistbpError

FITS = int(os.environ.get("DISTBP_TEST_FITS", "1000"))  # fewer for a quick look; the suite runs 1,000


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(600)
def test_a_thousand_refused_fits_leave_nothing_behind(tmp_path):
    X = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    y = np.arange(64) % 3
    folder = str(tmp_path / "ckpt")
    distbp.fit(distbp.MLP([8, 16, 3]), X, y, epochs=1, batch_size=16, verbose=False, checkpoint_dir=folder)
    # each refused fit builds the strategy (its communicators and, on one node, the gradient's shared window
    # of 1 MB) and opens its trace part file, then its resume is refused: the checkpoint is another network's
    model = distbp.MLP([8, 20_000, 3])
    trace = str(tmp_path / "t.json")
    before = None
    for i in range(FITS):
        if i == 20:  # after the first fits' one-off allocations (kernels, MPI's own pools)
            before = open_fds(), threading.active_count(), rss_bytes()
        with pytest.raises(DistbpError, match="incompatible checkpoint"):
            distbp.fit(model, X, y, epochs=1, batch_size=16, verbose=False, checkpoint_dir=folder, resume=True,
                       trace=trace)
    fds, threads, rss = open_fds(), threading.active_count(), rss_bytes()
    assert (fds, threads) == before[:2]
    # a leaked window would hold 1 MB per fit: ~1 GB here
    assert rss - before[2] < 64 << 20, f"RSS grew by {(rss - before[2]) / 2**20:.0f} MiB over {FITS - 20} fits"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no trace part file left
    # and the process can still train (MPI has communicators left)
    assert distbp.fit(distbp.MLP([8, 16, 3]), X, y, epochs=1, batch_size=16, verbose=False)
