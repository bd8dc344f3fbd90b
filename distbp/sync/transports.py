"""How one bucket of the flat gradient is summed over ranks: the transports, and their registry.

A transport sums buffers (buckets of the gradient) in place over ranks, advanced by its caller, the way
MPI's non-blocking collectives are: `start(buf)` for each bucket in the same order on every rank,
`progress()` between compute chunks, `wait()` before the update. `distbp.sync.reducer.GradientReducer`
drives any of them through that one interface; the strategy (`distbp.sync.allreduce`) picks one by name
from TRANSPORTS (`--allreduce`, resolved by `distbp.sync.factory.allreduce_algorithm`).

    name   class          what travels                                     module it adapts
    mpi    MpiTransport   the MPI library's Iallreduce (16-bit: a user op)  distbp.comm (Comm)
    ring   RingTransport  distbp's ring of point-to-point messages          distbp.comm.ring
    hier   HierTransport  shared memory on a node, Bruck's allreduce        distbp.comm.hier
                          (2·ceil(log₂ h) latencies) across h nodes

Sizes are known before anything is allocated: `memory(...)` (bytes beyond the gradient) and
`describe(...)` (its words in the header line) are class methods, so `--dry-run` can ask them. A new
transport is a Transport subclass and one line in TRANSPORTS.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from distbp.comm.base import Comm, Handle
from distbp.comm.bruck import bruck_buffer_elements
from distbp.comm.codecs import Codec, codec_for
from distbp.comm.hier import FLAG_BYTES, SMALL_BUCKET_BYTES, HierarchicalAllreduce, slice_elements
from distbp.comm.ring import ring_allreduce, ring_buffer_elements
from distbp.sync.base import Layout


class Transport:
    """In-place SUM over ranks of buffers of one flat gradient of n elements, advanced by its caller.

    Built collectively in the strategy's build() with sizes: n elements of dtype, buckets of at most
    max_bucket elements (None: n), codec (`distbp.comm.codecs`, None: the gradient's own dtype travels).
    Buffers complete in the order they were started; do not touch a started buffer before wait() returns.
    """

    name: ClassVar[str] = "?"  # the registry name
    label: ClassVar[str] = ""  # the header's words for it on several ranks, e.g. " (MPI)"
    adds: ClassVar[str] = ""  # the header's words for how it adds 16-bit words, on several ranks

    # the gradient buffer the backward pass must write into (memory the transport shares); None: any
    grad: np.ndarray | None = None
    # overlap=False may sum the whole gradient in one blocking allreduce instead of bucket by bucket
    # (the same sums: the buffer's own values, added by MPI)
    whole_blocking: bool = False
    # on one rank without a codec its sum is the buffer as it is, so the reducer may skip its calls (distbp's
    # own transports; one from elsewhere is called as always)
    identity_alone: ClassVar[bool] = False

    def __init__(self, comm: Comm, n: int, dtype, max_bucket: int | None = None, codec: Codec | None = None):
        self.comm, self.n, self.dtype, self.codec = comm, int(n), np.dtype(dtype), codec
        self.max_bucket = self.n if max_bucket is None else int(max_bucket)

    # ---- sizes: known before anything is allocated -------------------------------------------------
    @classmethod
    def memory(cls, layout: Layout, n: int, itemsize: int, largest_bucket: int, compressed: bool) -> int:
        """Bytes it allocates beyond the gradient, for n elements of itemsize in buckets of at most largest_bucket."""
        return 0

    @classmethod
    def describe(cls, layout: Layout, comm_dtype: str | None) -> str:
        """Its part of the header line, after "allreduce overlapped|blocking": the transport and the 16-bit wording."""
        text = cls.label if layout.size > 1 else ""
        if comm_dtype:
            text += f", {comm_dtype} on the wire" + (cls.adds if layout.size > 1 else "")
        return text

    @property
    def wire_itemsize(self) -> int:
        """Bytes each element takes on the wire."""
        return 2 if self.codec is not None else self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of its own buffers (what memory() said)."""
        return 0

    # ---- the reducer's interface -------------------------------------------------------------------
    def start(self, buf: np.ndarray) -> None:
        """Start summing buf (a flat contiguous bucket of the gradient) in place."""
        raise NotImplementedError

    def progress(self) -> None:
        """Advance what is in flight without blocking."""

    def wait(self) -> None:
        """Block until every started buffer holds its sum over ranks."""

    @property
    def in_flight(self) -> int:
        """How many of the buffers started last may not be complete yet (0: every started one is)."""
        return 0

    def close(self) -> None:
        """Collective: give back communicators and shared memory (idempotent)."""


class MpiTransport(Transport):
    """The MPI library's Iallreduce, one per bucket.

    With a codec each bucket is encoded into its 16-bit copy and the copies are summed by a user-defined
    MPI op that adds in float32 and rounds back after every partial sum (each element is rounded once on
    encoding and once per partial sum, at most p−1 times); wait() decodes them into the buckets. The
    copies lie side by side in one uint16 array of n words, in start order (the buckets of one step tile
    the gradient). MPI says only whether all started collectives are complete, so in_flight is all or none.
    """

    name, label, adds = "mpi", " (MPI)", " (added by an MPI user op)"
    identity_alone = True

    def __init__(self, comm: Comm, n: int, dtype, max_bucket: int | None = None, codec: Codec | None = None):
        super().__init__(comm, n, dtype, max_bucket, codec)
        self.whole_blocking = codec is None
        self.copies = codec.empty(self.n) if codec is not None else None  # every bucket's 16-bit copy
        self._used = 0  # words of copies handed out since the last wait
        self._decode: list[tuple[np.ndarray, np.ndarray]] = []  # (copy, bucket) to decode in wait
        self._handles: list[Handle] = []
        self._complete = 0  # handles MPI has said are complete

    @classmethod
    def memory(cls, layout, n, itemsize, largest_bucket, compressed) -> int:
        return 2 * n if compressed else 0

    @property
    def nbytes(self) -> int:
        return self.copies.nbytes if self.copies is not None else 0

    def start(self, buf: np.ndarray) -> None:
        if self.codec is None:
            self.track(self.comm.start_allreduce(buf))
            return
        if self._used + buf.size > self.n:
            raise ValueError(f"the MPI transport's copies hold {self.n} words per step; {self._used + buf.size} "
                             f"were started")
        copy = self.copies[self._used:self._used + buf.size]
        self._used += buf.size
        self.codec.encode(buf, copy)
        self._decode.append((copy, buf))
        self.track(self.comm.start_allreduce(copy, self.codec))

    def track(self, handle: Handle) -> None:
        """Count a collective started on comm elsewhere (the sharded reducer's reduce-scatters) as in flight."""
        self._handles.append(handle)

    def progress(self) -> None:
        if self._handles and self.comm.test_all(self._handles):
            self._complete = len(self._handles)

    @property
    def in_flight(self) -> int:
        return len(self._handles) - self._complete

    def wait(self) -> None:
        self.comm.wait_all(self._handles)
        for copy, buf in self._decode:
            self.codec.decode(copy, buf)
        self._handles, self._decode, self._complete, self._used = [], [], 0, 0


class _Driven(Transport):
    """A transport of distbp's own (`engine`: a RingAllreduce or HierarchicalAllreduce), which already has the
    interface: start, progress, wait, in_flight, close."""

    engine: object

    def start(self, buf: np.ndarray) -> None:
        self.engine.start(buf)

    def progress(self) -> None:
        self.engine.progress()

    def wait(self) -> None:
        self.engine.wait()

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    def close(self) -> None:
        self.engine.close()


class RingTransport(_Driven):
    """distbp's ring allreduce (`distbp.comm.ring.RingAllreduce`): one scratch of ceil(max_bucket / p) elements
    for every bucket. With a codec the bucket stays in the gradient and the ring encodes what it sends, adds
    what it receives in the gradient's dtype and rounds each completed sum once."""

    name, label, adds = "ring", " (distbp ring)", " (added in float by the ring)"
    identity_alone = True

    def __init__(self, comm: Comm, n: int, dtype, max_bucket: int | None = None, codec: Codec | None = None):
        super().__init__(comm, n, dtype, max_bucket, codec)
        self.ring = self.engine = ring_allreduce(comm, self.max_bucket, self.dtype, codec)

    @classmethod
    def memory(cls, layout, n, itemsize, largest_bucket, compressed) -> int:
        # a scratch of the largest bucket's 1/p (uint16 words when compressed, and a uint16 wire of the bucket)
        wire, scratch = ring_buffer_elements(largest_bucket, layout.size, compressed)
        return 2 * (wire + scratch) if compressed else scratch * itemsize

    @property
    def nbytes(self) -> int:
        return self.ring.nbytes


class HierTransport(_Driven):
    """The hierarchical allreduce (`distbp.comm.hier.HierarchicalAllreduce`): the node's ranks add each other's
    buckets in shared memory, and slices cross nodes by distbp's Bruck allreduce (`distbp.comm.bruck`: 2·ceil(log₂ h)
    message latencies; 16-bit with a codec, while a node sums in full precision); with one rank per node, buckets of
    at most SMALL_BUCKET_BYTES go through MPI's Iallreduce (not with a codec). Its gradient buffer is that shared
    memory: the strategy takes `grad` from it."""

    name = "hier"
    identity_alone = True

    def __init__(self, comm: Comm, n: int, dtype, max_bucket: int | None = None, codec: Codec | None = None):
        super().__init__(comm, n, dtype, max_bucket, codec)
        self.hier = self.engine = HierarchicalAllreduce(comm, self.n, self.dtype, codec=codec,
                                                        max_bucket=self.max_bucket)
        self.grad = self.hier.grad

    @classmethod
    def memory(cls, layout, n, itemsize, largest_bucket, compressed) -> int:
        # the flags beside the shared gradient, and the Bruck allreduce of slices across nodes
        r, h = layout.node_sizes[0], len(layout.node_sizes)
        wire, scratch = bruck_buffer_elements(slice_elements(largest_bucket, r), h, itemsize, compressed)
        return FLAG_BYTES + (2 * (wire + scratch) if compressed else scratch * itemsize)

    @classmethod
    def describe(cls, layout, comm_dtype) -> str:
        text = ""
        if layout.size > 1:
            r, h = layout.node_sizes[0], len(layout.node_sizes)
            text += f" (hierarchical: nodes of {r} in shared memory" + \
                (f", {h} nodes by distbp's Bruck allreduce" + ("" if comm_dtype or r > 1 else
                 f", buckets up to {SMALL_BUCKET_BYTES >> 10} KiB by MPI's") + ")" if h > 1 else ")")
        if comm_dtype:
            # only the slices that cross nodes travel as 16-bit words; a node sums in full precision
            text += f", {comm_dtype} between nodes" + (" (one node here: none)" if layout.single_node else "")
        return text

    @property
    def nbytes(self) -> int:
        return FLAG_BYTES + (self.hier.cross.nbytes if self.hier.cross is not None else 0)

    def close(self) -> None:
        if self.hier is not None:  # its window, communicators and ring, once
            self.hier.close()
            self.hier = self.engine = None


# name: the transport class (--allreduce picks one; distbp.sync.factory.allreduce_algorithm resolves auto)
TRANSPORTS: dict[str, type[Transport]] = {"mpi": MpiTransport, "ring": RingTransport, "hier": HierTransport}


def transport_class(name: str) -> type[Transport]:
    """The registry's transport class called `name`; ValueError for an unknown name."""
    if name not in TRANSPORTS:
        raise ValueError(f"allreduce algorithm must be one of {', '.join(map(repr, TRANSPORTS))}, got {name!r}")
    return TRANSPORTS[name]


def make_transport(name: str, comm: Comm, n: int, dtype, max_bucket: int | None = None,
                   comm_dtype: str | None = None) -> Transport:
    """Collective: the transport `name` for a gradient of n elements of dtype in buckets of at most max_bucket
    elements, sending 16-bit words when comm_dtype is "bfloat16" or "float16"."""
    return transport_class(name)(comm, n, dtype, max_bucket=max_bucket, codec=codec_for(comm_dtype))
