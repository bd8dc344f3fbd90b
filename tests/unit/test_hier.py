"""The hierarchical allreduce's shared memory: one rank's view, and what a job leaves behind.

MPICH's shared windows are System V segments marked for removal once attached, so the memory goes
with the last process that maps it, however the job ends; these tests hold the code to that. The
multi-rank sums are in tests/mpi/test_hier_mpi.py and, across hosts, tests/jobs/test_multinode.py.
"""

import shutil
import subprocess

import numpy as np
import pytest
from jobs import run_job

from distbp.comm.hier import HierarchicalAllreduce, slice_elements
from distbp.comm.serial import SerialComm

TRAIN = ["distbp", "train", "--data", "synthetic:rows=2000,features=32,classes=4", "--layers", "32,64,4",
         "--epochs", "3", "--batch-size", "50", "--allreduce", "hier", "--progress", "none", "--timeout", "5"]


def shm_segments() -> dict[int, int]:
    """{shmid: attached processes} of every System V shared memory segment on the machine."""
    out = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    segments = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[1].isdigit():
            segments[int(cols[1])] = int(cols[5])
    return segments


def test_one_rank_sums_nothing_and_keeps_its_gradient():
    transport = HierarchicalAllreduce(SerialComm(), 10, np.float32)
    transport.grad[:] = np.arange(10, dtype=np.float32)
    transport.start(transport.grad[3:10])
    transport.start(transport.grad[0:3])
    transport.wait()
    assert transport.in_flight == 0
    assert np.array_equal(transport.grad, np.arange(10, dtype=np.float32))


def test_a_bucket_must_be_a_slice_of_the_shared_gradient():
    transport = HierarchicalAllreduce(SerialComm(), 10, np.float64)
    with pytest.raises(ValueError, match="slices of its own gradient buffer"):
        transport.start(np.zeros(3))
    with pytest.raises(ValueError, match="slices of its own gradient buffer"):
        transport.start(transport.grad[::2])


@pytest.mark.parametrize("bucket, ranks, largest", [(10, 4, 3), (3, 4, 1), (8, 2, 4), (1, 1, 1)])
def test_the_largest_slice_is_the_bucket_shared_out_rounding_up(bucket, ranks, largest):
    assert slice_elements(bucket, ranks) == largest


@pytest.mark.skipif(shutil.which("ipcs") is None, reason="needs ipcs (util-linux) to list shared memory")
@pytest.mark.parametrize("fault", [None, "1:7:kill", "1:7:raise"])
def test_no_shared_memory_outlives_the_job_however_it_ends(fault):
    before = shm_segments()
    done = run_job(2, TRAIN, env={"DISTBP_INJECT_FAULT": fault} if fault else None, timeout=90)
    assert (done.returncode == 0) == (fault is None), done.output
    if fault and fault.endswith("raise"):
        assert "distbp: rank 1: RuntimeError: injected fault at step 7" in done.stderr, done.output
    else:
        assert "hierarchical" in done.stdout, done.output
    # a segment nobody has attached is held by nothing but the kernel: leaked (others belong to live processes)
    left = [shmid for shmid, attached in shm_segments().items() if shmid not in before and attached == 0]
    assert not left, f"shared memory segments left after the job: {left}\n{done.output}"
