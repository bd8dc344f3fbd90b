"""Launched jobs of the inputs' hardening: `distbp` without a subcommand prints its usage once under MPI,
and `distbp predict` on 2 ranks refuses to write over its input (exit 2, the rows intact)."""

import numpy as np
import pytest
from jobs import run_job

from distbp.nn.model import MLP

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("args, code, stream", [
    ([], 2, "stdout"), (["--help"], 0, "stdout"), (["bogus"], 2, "stderr"),
], ids=["no subcommand", "--help", "unknown command"])
def test_the_usage_is_printed_once_by_a_two_rank_job(args, code, stream):
    done = run_job(2, ["distbp", *args], timeout=60)
    assert done.returncode == code, done.output
    assert getattr(done, stream).count("usage: distbp {train,") == 1, done.output


def test_predict_on_two_ranks_refuses_to_write_over_its_input(tmp_path):
    MLP([4, 3], seed=2).save(tmp_path / "m.npz")
    np.save(tmp_path / "X.npy", np.ones((5, 4)))
    before = (tmp_path / "X.npy").read_bytes()
    done = run_job(2, ["distbp", "predict", "--model", "m.npz", "--data", "X.npy", "--output", "X.npy"],
                   cwd=tmp_path)
    assert done.returncode == 2, done.output
    assert done.stderr.count("--output X.npy is the --data file X.npy") == 1, done.output
    assert (tmp_path / "X.npy").read_bytes() == before
