"""hier across nodes: the slices' sum over nodes by distbp's Bruck allreduce (distbp.comm.bruck), on 2, 3 and 4 ranks.

Every rank acts as its own node here (node_size=1 or a Bruck allreduce on the world), so the cross-node part is
all there is: the same bits on every rank, the sum within rounding, the bytes a rank sends (2(p−1)/p·n, the least
an allreduce moves), and training through it equal to one rank to 1e-10. Across real hosts:
tests/jobs/test_multinode.py and tests/jobs/test_bench_commands.py.

    launch/local -n 4 --threads 1 python -m pytest -p no:cacheprovider --with-mpi -m mpi \
        tests/mpi/test_hier_crossnode_mpi.py
"""

import functools

import numpy as np
import pytest

from distbp.comm import bruck
from distbp.comm.bruck import bruck_allreduce, rounds
from distbp.comm.codecs import codec_for
from distbp.comm.hier import HierarchicalAllreduce
from distbp.comm.mpi import world
from tests.unit.test_sync import trained

# sizes that leave blocks empty (fewer elements than ranks), wrap unevenly, and exceed DOUBLING_BYTES
SIZES = [1, 2, 3, 7, 1001, 20000]
FLOAT64_TOLERANCE = 1e-12  # per rank of |sum| ~ 1: other orders of the same additions
BF16_U = 2.0 ** -8  # bfloat16's unit roundoff


class CountingComm:
    """A communicator that counts the elements this rank sends (Comm.start_send), else the wrapped one's."""

    def __init__(self, inner):
        self.inner, self.sent = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def duplicate(self):
        return self  # keep counting on the Bruck allreduce's own communicator

    def free(self):
        pass

    def start_send(self, buf, dest):
        self.sent += buf.size
        return self.inner.start_send(buf, dest)


def summed(engine, parts: list[np.ndarray]) -> np.ndarray:
    """The parts (copies), summed over ranks through `engine`, started one after another, then concatenated."""
    bufs = [p.copy() for p in parts]
    for b in bufs:
        engine.start(b)
        engine.progress()
    engine.wait()
    return np.concatenate(bufs)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("doubling_bytes", [0, bruck.DOUBLING_BYTES], ids=["bruck-halves", "default"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_rank_gets_the_same_bits_of_the_sum(monkeypatch, doubling_bytes, dtype):
    monkeypatch.setattr(bruck, "DOUBLING_BYTES", doubling_bytes)
    comm = world()
    for n in SIZES:
        engine = bruck_allreduce(comm, n, dtype)
        try:
            full = np.random.default_rng(n).standard_normal((comm.size, n))
            mine = full[comm.rank].astype(dtype)
            got = summed(engine, [mine[: n // 3], mine[n // 3:]])  # two buffers in flight, in order
            assert engine.in_flight == 0
            tol = FLOAT64_TOLERANCE if dtype == np.float64 else 1e-5
            assert np.abs(got - full.sum(0)).max() < tol * comm.size, f"n={n}"
            everyone = comm.allgather_object(got)
            assert all(np.array_equal(everyone[0], g) for g in everyone), f"n={n}: ranks differ"
        finally:
            engine.close()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("doubling_bytes", [0, bruck.DOUBLING_BYTES], ids=["bruck-halves", "default"])
def test_bfloat16_on_the_wire_gives_every_rank_the_same_bits_within_the_rounding_bound(monkeypatch, doubling_bytes):
    monkeypatch.setattr(bruck, "DOUBLING_BYTES", doubling_bytes)
    comm = world()
    n = 4099
    engine = bruck_allreduce(comm, n, np.float32, codec_for("bfloat16"))
    try:
        full = np.random.default_rng(7).standard_normal((comm.size, n)).astype(np.float32)
        got = summed(engine, [full[comm.rank]])
        # each partial sum is rounded once on its way: (K + 1)·u·Σ|g| with K = ceil(log2 p) rounds
        bound = (len(rounds(comm.size)) + 1) * BF16_U * np.abs(full).astype(np.float64).sum(0)
        assert np.all(np.abs(got - full.astype(np.float64).sum(0)) <= bound)
        everyone = comm.allgather_object(got)
        assert all(np.array_equal(everyone[0], g) for g in everyone)
    finally:
        engine.close()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("n", [1000, 4 << 20])
def test_a_rank_sends_the_bandwidth_optimal_share_in_logarithmic_rounds(monkeypatch, n):
    # large buffers: reduce-scatter and allgather, 2(p−1)/p·n elements; small ones on 2^k ranks double instead
    # (log2 p rounds of n), which on 2 ranks is the same n
    comm = world()
    counting = CountingComm(comm)
    engine = bruck.BruckAllreduce(counting, n, np.float32)
    buf = np.ones(n, np.float32)
    p = comm.size
    doubling = bruck.doubles(p, n, 4)
    engine.start(buf)
    assert engine._queue[0].steps == len(rounds(p)) * (1 if doubling else 2)  # ceil(log2 p) rounds per half
    engine.wait()
    assert np.all(buf == p)
    share = n * np.log2(p) if doubling else 2 * (p - 1) / p * n
    assert abs(counting.sent - share) <= 2 * p, f"sent {counting.sent} elements, the share is {share:.0f}"
    if n > bruck.DOUBLING_BYTES:
        assert abs(counting.sent - 2 * (p - 1) / p * n) <= 2 * p


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("doubling_bytes", [0, bruck.DOUBLING_BYTES], ids=["bruck-halves", "default"])
@pytest.mark.parametrize("overrides", [{}, {"comm_dtype": "bfloat16", "dtype": "float32"}, {"overlap": False}])
def test_training_with_every_rank_its_own_node_matches_one_rank(monkeypatch, doubling_bytes, overrides):
    from distbp.comm.serial import SerialComm
    from distbp.sync import transports

    monkeypatch.setattr(bruck, "DOUBLING_BYTES", doubling_bytes)
    # every rank a node of its own: hier's sum is all cross-node, through the Bruck allreduce
    monkeypatch.setattr(transports, "HierarchicalAllreduce", functools.partial(HierarchicalAllreduce, node_size=1))
    flags = {"dtype": "float64", "epochs": 2, "allreduce": "hier", **overrides}
    one = trained(SerialComm(), **flags)
    many = trained(world(), **flags)
    assert many.sync.transport.hier.nodes == world().size
    tolerance = 1e-10 if flags["dtype"] == "float64" else 2e-2  # bfloat16: the rounding of each partial sum
    assert np.abs(many.model.flat_params - one.model.flat_params).max() < tolerance
    everyone = world().allgather_object(many.model.flat_params.copy())
    assert all(np.array_equal(everyone[0], p) for p in everyone)


@pytest.mark.mpi(min_size=2)
def test_the_memory_hier_reports_is_what_it_allocates_across_nodes():
    from distbp.sync.base import Layout
    from distbp.sync.transports import HierTransport

    comm = world()
    for n, bucket in [(1001, 1001), (300000, 70000)]:
        for codec in (None, "bfloat16"):
            hier = HierarchicalAllreduce(comm, n, np.float32, node_size=1, max_bucket=bucket, codec=codec_for(codec))
            try:
                layout = Layout(comm.rank, comm.size, (1,) * comm.size)
                expected = HierTransport.memory(layout, n, 4, bucket, codec is not None) - 64  # less the flags
                assert hier.cross.nbytes == expected, (n, bucket, codec)
            finally:
                hier.close()
