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
    # the clocks of one machine agree, so the offset is the shift, to within half a round trip
    assert abs(tracer.offset_us + comm.rank * SHIFT_US) < 50_000, tracer.offset_us
    if comm.rank == 0:
        assert tracer.offset_us == 0.0 and len(rtts) == comm.size - 1 and all(r > 0 for r in rtts)
