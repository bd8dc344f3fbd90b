"""The MPI library's own Iallreduce behind the interface of distbp's queued allreduces (start, progress, wait,
in_flight, close), so the hierarchical allreduce (`distbp.comm.hier`) can send a bucket through it.

Where a sum is latency-bound (small buckets across nodes), the library's collective wins: it advances in C inside
one Test call, where distbp's own allreduces (`distbp.comm.bruck`, `distbp.comm.ring`) pay Python between
their messages (benchmarks/hier_cross.py).
"""

from __future__ import annotations

import numpy as np

from distbp.comm.base import Comm
from distbp.comm.codecs import Codec
from distbp.comm.queued import QueuedAllreduce


def library_allreduce(comm: Comm, max_elems: int, dtype, codec: Codec | None = None) -> LibraryAllreduce:
    """Collective: MPI's Iallreduce over `comm`'s ranks, on a duplicate communicator, for buffers of up to
    max_elems elements of dtype (no codec: 16-bit words go through distbp's own allreduces)."""
    if codec is not None:
        raise ValueError("the MPI library's allreduce sums the buffers' own dtype here; 16-bit words go "
                         "through distbp's Bruck allreduce")
    return LibraryAllreduce(comm.duplicate() if comm.size > 1 else comm, max_elems, dtype)


class LibraryAllreduce(QueuedAllreduce):
    """In-place SUM over ranks by one MPI Iallreduce per buffer, which completes in start order here.

    MPI may complete the requests in any order; in_flight counts from the first buffer not yet complete, so a
    buffer counts as done only when every buffer started before it is (the queued allreduces' promise). No
    scratch of its own (nbytes 0): the library's buffers are its business. The same bits on every rank as far
    as the library gives them (MPICH's reduce-scatter/allgather and recursive doubling do: each block is added
    along one order, or a + b against b + a, which IEEE addition makes equal).
    """

    what = "MPI library allreduce"

    def _queue_op(self, buf: np.ndarray):
        return self.comm.start_allreduce(buf)

    def _advance(self, block: bool) -> bool:
        if block:
            if self._queue:
                self.comm.wait_all(list(self._queue))
                self._queue.clear()
            return True
        while self._queue and self.comm.test_all([self._queue[0]]):
            self._queue.popleft()
        return not self._queue
