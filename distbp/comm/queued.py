"""What distbp's own allreduces (the ring, Bruck's) share: buffers summed one after another in the order they
were started, on a communicator of their own, moved only when called (progress between compute chunks, wait
at the end), with scratch (and, with a 16-bit codec, wire) buffers sized for the largest buffer."""

from __future__ import annotations

import collections

import numpy as np

from distbp.comm.base import Comm
from distbp.comm.codecs import Codec


class QueuedAllreduce:
    """The queue, the buffers' checks and the calls; a subclass says how a queued buffer advances
    (`_advance`) and what it queues (`_queue_op`)."""

    what = "allreduce"  # for the errors

    def __init__(self, comm: Comm, max_elems: int, dtype, codec: Codec | None = None):
        self.comm = comm  # its own (Comm.duplicate), so that no other message is taken for one of its own
        self.rank, self.size = comm.rank, comm.size
        self.max_elems = int(max_elems)
        self.dtype, self.codec = np.dtype(dtype), codec
        self.scratch: np.ndarray = np.empty(0, self.dtype)
        self.wire: np.ndarray | None = None
        self._queue: collections.deque = collections.deque()

    def close(self) -> None:
        """Collective: give back its own communicator."""
        if self.size > 1 and self.comm is not None:
            self.comm.free()
            self.comm = None

    @property
    def nbytes(self) -> int:
        """Bytes of its own buffers (scratch, and the wire with a codec)."""
        return self.scratch.nbytes + (self.wire.nbytes if self.wire is not None else 0)

    def start(self, buf: np.ndarray) -> None:
        """Queue buf (flat, contiguous, its dtype, at most max_elems elements) for summing in place."""
        if buf.dtype != self.dtype or buf.ndim != 1 or buf.size > self.max_elems or not buf.flags.c_contiguous:
            raise ValueError(f"{self.what} takes flat contiguous {self.dtype} buffers of at most "
                             f"{self.max_elems} elements, got {buf.dtype} {buf.shape}")
        if self.size > 1:
            self._queue.append(self._queue_op(buf))
        elif self.codec is not None:
            self.codec.round(buf)  # one rank: its buffer is the completed sum, rounded like an owner's

    @property
    def in_flight(self) -> int:
        """Buffers started and not yet summed (they complete in the order they were started)."""
        return len(self._queue)

    def progress(self) -> bool:
        """Advance without blocking as far as the messages allow; True when nothing is left in flight."""
        return self._advance(block=False)

    def wait(self) -> None:
        """Block until every started buffer holds its sum over ranks."""
        self._advance(block=True)

    def _queue_op(self, buf: np.ndarray):
        raise NotImplementedError

    def _advance(self, block: bool) -> bool:
        raise NotImplementedError
