"""Under MPI: --trace's clock alignment finds each rank's offset to the root's clock."""

import tempfile

import pytest

from distbp.comm.mpi import world
from distbp.observe.trace import Tracer, align_clocks

SHIFT_US = 1_000_000.0  # rank r's clock runs r seconds ahead


@pytest.mark.mpi(min_size=2)
def test_align_clocks_finds_a_known_offset_on_every_rank():
    comm = world()
    with tempfile.TemporaryDirectory() as d:
        tracer = Tracer(f"{d}/t.json", comm.rank)
        true_now = tracer.now
        tracer.now = lambda: true_now() + comm.rank * SHIFT_US
        rtts = align_clocks(tracer, comm)
        tracer.close_part()
    # the clocks of one machine agree, so each rank's offset is its shift, to within half the round trip of the
    # sample it was taken from (rank r's time was read between the root's t0 and t1): a bound from the run
    # itself, however loaded the machine
    offsets = comm.allgather_object(tracer.offset_us)
    if comm.rank == 0:
        assert offsets[0] == 0.0 and len(rtts) == comm.size - 1 and all(r > 0 for r in rtts)
        for r in range(1, comm.size):
            assert abs(offsets[r] + r * SHIFT_US) <= rtts[r - 1] / 2 + 1.0, (r, offsets[r], rtts[r - 1])
