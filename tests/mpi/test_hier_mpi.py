"""The hierarchical allreduce on several ranks: shared memory on a node, slices across nodes.

One machine acts out several nodes with node_size (consecutive ranks form a node, as a launcher places
them); across real hosts it runs in tests/jobs/test_multinode.py. Run by launch/test under MPI on 2, 3 and 4
ranks.
"""

import numpy as np
import pytest

from distbp.comm.hier import SMALL_BUCKET_BYTES, HierarchicalAllreduce
from distbp.comm.mpi import world
from tests.unit.test_sync import trained

ALG = "hier"
N = 1001  # not divisible by 2, 3 or 4 ranks
# buckets as the reducer starts them (last layer first); the 1-element bucket leaves most ranks' slice empty
BUCKETS = [(500, 1001), (4, 500), (3, 4), (0, 3)]


def node_sizes(size: int) -> list[int | None]:
    """Every way to cut `size` ranks into equal nodes: None (by shared memory: one node here) and each k | size."""
    return [None] + [k for k in range(1, size) if size % k == 0]


def sum_over_ranks(transport: HierarchicalAllreduce, full: np.ndarray, rank: int) -> np.ndarray:
    transport.grad[:] = full[rank]
    for lo, hi in BUCKETS:
        transport.start(transport.grad[lo:hi])
        transport.progress()
    transport.wait()
    return transport.grad.copy()


# with one rank per node, buckets of at most small_bytes go by MPI's Iallreduce: none, the three small ones of
# BUCKETS (the large one by Bruck's, so both are in flight in one step), all of them (the default)
ROUTES = {"node path": 0, "mixed": 100 * 8, "default": SMALL_BUCKET_BYTES}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("small_bytes", ROUTES.values(), ids=ROUTES.keys())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_rank_gets_the_same_bits_of_the_sum_on_any_split_into_nodes(dtype, small_bytes):
    comm = world()
    for node_size in node_sizes(comm.size):
        transport = HierarchicalAllreduce(comm, N, dtype, node_size=node_size, small_bytes=small_bytes)
        try:
            for step in range(3):  # the flags carry over from step to step
                full = np.random.default_rng(step).standard_normal((comm.size, N)).astype(dtype)
                got = sum_over_ranks(transport, full, comm.rank)
                tol = 1e-12 if dtype == np.float64 else 1e-5
                assert np.abs(got - full.astype(np.float64).sum(0)).max() < tol * comm.size
                everyone = comm.allgather_object(got)
                assert all(np.array_equal(everyone[0], g) for g in everyone), f"node_size {node_size}"
                assert transport.in_flight == 0
        finally:
            transport.close()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("small_bytes", ROUTES.values(), ids=ROUTES.keys())
def test_one_rank_nodes_send_buckets_whole_and_small_ones_by_mpi(small_bytes):
    comm = world()
    itemsize = 8
    for node_size in node_sizes(comm.size):
        transport = HierarchicalAllreduce(comm, N, np.float64, node_size=node_size, small_bytes=small_bytes)
        try:
            sum_over_ranks(transport, np.ones((comm.size, N)), comm.rank)
            # one rank per node across several: every bucket goes whole, the small ones by MPI's Iallreduce;
            # otherwise every bucket takes the node path (the node's sum pays even for small buckets)
            direct = transport.nodes > 1 and transport.local_size == 1
            small = sum(1 for lo, hi in BUCKETS if 0 < (hi - lo) * itemsize <= small_bytes) if direct else 0
            assert transport.small_elements == (small_bytes // itemsize if direct else 0)
            assert transport.direct_buckets == {"small": small, "across": (len(BUCKETS) - small) if direct else 0}
        finally:
            transport.close()


@pytest.mark.mpi(min_size=2)
def test_nodes_and_slices_follow_the_split():
    comm = world()
    for node_size in node_sizes(comm.size):
        transport = HierarchicalAllreduce(comm, N, np.float64, node_size=node_size)
        expected_local = comm.size if node_size is None else node_size
        assert (transport.local_size, transport.nodes) == (expected_local, comm.size // expected_local)
        assert (transport.cross is None) == (transport.nodes == 1)
        transport.close()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("overrides", [
    dict(),
    dict(accumulate=3),
    dict(batch_size=23),  # a partial last batch and, on 4 ranks, shards of 5 and 6 rows
    dict(batch_size=3),  # at 4 ranks one shard is empty
    dict(overlap=False),
    dict(optimizer="adam", clip_grad_norm=0.5),
])
def test_p_ranks_with_the_hierarchical_allreduce_match_one_rank(overrides):
    from distbp.comm.serial import SerialComm

    flags = dict(dtype="float64", epochs=2, allreduce=ALG, **overrides)
    one = trained(SerialComm(), **flags)
    many = trained(world(), **flags)
    assert many.sync.algorithm == ALG
    assert np.abs(many.model.flat_params - one.model.flat_params).max() < 1e-10
    everyone = world().allgather_object(many.model.flat_params.copy())
    assert all(np.array_equal(everyone[0], p) for p in everyone)
