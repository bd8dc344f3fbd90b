"""Communication between ranks: the only module of distbp that calls MPI.

`world()` returns a `Comm`: `MPIComm` over COMM_WORLD when mpi4py imports, else `SerialComm`
(one process, no mpi4py needed). Every other module uses only this interface, which both implement:

    comm.rank, comm.size, comm.is_root, comm.library (the MPI library's version text; '' on SerialComm)
    blocking collectives
      comm.allreduce_sum(buf)               in place SUM over ranks, numpy buffers, pieces of <= 16 MiB
      comm.bcast(buf, root)                 in place
      comm.sum_scalars(values)              float64 sums of a few metrics
      comm.max_scalar(x)                    float MAX over ranks
      comm.allgather_parts(buf, counts)     in place: rank r's part (counts[r] elements, rank order) to all
      comm.gather_parts(part, counts)       the parts concatenated on the root (None elsewhere)
      comm.allgather_object(obj)            obj of every rank (pickled: small objects, rare calls)
      comm.barrier(), comm.barrier_within(seconds), comm.single_node()
    non-blocking collectives, for the gradient's sum during the backward pass; each returns a `Handle`
      comm.start_allreduce(buf, codec)      in place SUM (codec: 16-bit words summed by codec.add)
      comm.start_reduce_scatter(send, recv, counts)   recv = this rank's part of Σ_ranks send
      comm.test_all(handles) -> bool        advance them (MPI moves them only inside Test/Wait)
      comm.wait_all(handles)                block until all are complete
      comm.start_send(buf, dest), comm.start_recv(buf, source)       point to point
      comm.ring_allreduce(max_elems, dtype, codec=None)  distbp's own ring (`distbp.ring`), advanced by its
                                            caller; a codec sends 16-bit words
      comm.duplicate(), comm.free()         the same ranks, messages kept apart; give a made one back
    nodes and shared memory, for the hierarchical allreduce (`distbp.hier`)
      comm.node_sizes()                     ranks on each node, in the order of the nodes' first ranks
      comm.split_by_node(node_size)         (ranks of this node, ranks of the same local index on all nodes)
      comm.shared_segments(nbytes)          a `SharedSegments`: nbytes of memory per rank of a node, every
                                            rank's segment readable and writable by the node's ranks
    checks that fail loudly and on every rank
      comm.check_agree / check_identical / agree_on_failure
    ending the job
      comm.say(message)                     "distbp: rank r: message" on stderr, at once
      comm.abort(message, code)             end the whole job now (from the main thread)
      comm.exit_quietly(code)               end this rank after an error every rank has reported
      comm.hard_exit(code)                  end the whole job from any thread, no clean-up (the watchdog)

Hot paths use mpi4py's upper-case buffer methods on numpy arrays (no pickling); the lower-case
pickling methods appear only in the rare checks (a hash per rank, the causes of a failure).

MPI is initialized with THREAD_MULTIPLE (mpi4py's default) so the watchdog thread may call Abort.
Run jobs with `mpiexec -n P python -m mpi4py ...`: then an unhandled exception on one rank aborts
the job instead of leaving the other ranks waiting forever in a collective.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from typing import TYPE_CHECKING, Iterator, NoReturn

import numpy as np

from distbp.checks import AgreementChecks
# the errors, importable from here as before
from distbp.errors import ConfigMismatchError, DistbpError, DivergenceError, StallError  # noqa: F401

if TYPE_CHECKING:
    from distbp.ring import RingAllreduce

# one allreduce of 64 MiB is ~3x slower than four of 16 MiB with MPICH (measured), so big buffers go in pieces
PIECE_BYTES = 16 << 20
# seconds between writing a fatal message and aborting, so the launcher forwards the message first
ABORT_GRACE_S = 0.3
# seconds hard_exit gives MPI_Abort before this process exits by itself (see MPIComm.hard_exit)
HARD_EXIT_BACKSTOP_S = 2.0


class Handle:
    """A started non-blocking collective: pass lists of handles to `Comm.test_all` / `Comm.wait_all`.

    `request` is the MPI request (None on one rank, where every collective completes at once).
    Do not touch the buffers of a started collective before wait_all returns (or test_all says True).
    """

    __slots__ = ("request",)

    def __init__(self, request=None):
        self.request = request


def _pieces(buf: np.ndarray, piece_bytes: int = PIECE_BYTES) -> Iterator[np.ndarray]:
    """Contiguous 1-d views of buf, each at most piece_bytes long (at least one element)."""
    if not buf.flags.c_contiguous:
        raise ValueError("communication buffers must be C-contiguous numpy arrays")
    flat = buf.reshape(-1)
    step = max(1, piece_bytes // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        yield flat[start:start + step]


class SharedSegments:
    """Memory shared by the ranks of one node: one segment of nbytes per local rank.

    segments[k]: local rank k's segment (uint8, nbytes), readable and writable by every rank of the node;
    mine: this rank's. After writing shared memory that another rank will read, call sync() before
    publishing that fact (a memory barrier; MPI_Win_sync on a window). free() gives the memory back
    (collective over the node; idempotent). A process that ends without free() loses the memory with it:
    MPICH's windows are System V segments already marked for removal.
    """

    def __init__(self, segments: list[np.ndarray], rank: int, window=None):
        self.segments, self.mine, self._window = segments, segments[rank], window

    def sync(self) -> None:
        if self._window is not None:
            self._window.Sync()

    def free(self) -> None:
        if self._window is not None:
            self.segments = []
            self._window.Unlock_all()
            self._window.Free()
            self._window = None


# ---------------------------------------------------------------------------------------------
# the interface and its shared checks
# ---------------------------------------------------------------------------------------------

class Comm(AgreementChecks):
    """What distbp needs from a communicator. Subclasses provide the primitives; the checks are shared
    (`distbp.checks`)."""

    rank: int
    size: int
    is_root: bool

    # primitives -------------------------------------------------------------------------------
    def allreduce_sum(self, buf: np.ndarray, piece_bytes: int = PIECE_BYTES) -> None:
        """Sum buf over ranks in place, in calls of at most piece_bytes (benchmarks vary it)."""
        raise NotImplementedError

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        raise NotImplementedError

    def max_scalar(self, x: float) -> float:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def barrier_within(self, seconds: float) -> bool:
        """Barrier that gives up after `seconds`; True when every rank arrived (for exits after an error)."""
        raise NotImplementedError

    def allgather_parts(self, buf: np.ndarray, counts: list[int]) -> None:
        """In place: every rank's part of buf (counts[r] elements in rank order) is copied to all ranks."""
        raise NotImplementedError

    def gather_parts(self, part: np.ndarray, counts: list[int]) -> np.ndarray | None:
        """The parts of all ranks concatenated in rank order on the root (None elsewhere)."""
        raise NotImplementedError

    def abort(self, message: str, code: int = 1) -> NoReturn:
        raise NotImplementedError

    def exit_quietly(self, code: int, finalize: bool = True) -> int:
        """End this rank with `code` after its error was reported, without MPI_Abort's lines.

        Under `python -m mpi4py` a non-zero exit calls MPI_Abort, which prints one "Abort(code)" line
        per rank; after a clean, agreed error that is noise. finalize=False skips MPI_Finalize (when
        the ranks may not all get there, e.g. after ctrl-c). Returns `code` where nothing needs ending.
        """
        return code

    def allgather_object(self, obj) -> list:
        """Collective: obj of every rank, in rank order (pickled: small objects, rare calls only)."""
        raise NotImplementedError

    def start_allreduce(self, buf: np.ndarray, codec=None) -> Handle:
        """Start an in-place SUM of buf over ranks.

        codec (`distbp.codecs.Codec`): None for a float buffer; else buf holds the codec's 16-bit words,
        summed by codec.add.
        """
        raise NotImplementedError

    def start_reduce_scatter(self, send: np.ndarray, recv: np.ndarray, counts: list[int]) -> Handle:
        """Start recv = this rank's part (counts[rank] elements, parts in rank order) of Σ_ranks send."""
        raise NotImplementedError

    def test_all(self, handles: list[Handle]) -> bool:
        """Advance the started collectives without blocking; True when all are complete."""
        raise NotImplementedError

    def wait_all(self, handles: list[Handle]) -> None:
        """Block until every started collective is complete."""
        raise NotImplementedError

    def start_send(self, buf: np.ndarray, dest: int) -> Handle:
        """Start sending buf to rank dest (point to point, for distbp's ring)."""
        raise NotImplementedError

    def start_recv(self, buf: np.ndarray, source: int) -> Handle:
        """Start receiving into buf from rank source."""
        raise NotImplementedError

    def duplicate(self) -> "Comm":
        """Collective: a communicator of the same ranks whose messages never mix with this one's."""
        raise NotImplementedError

    def free(self) -> None:
        """Collective: release a communicator made by duplicate or split_by_node (MPI has a few thousand)."""

    def single_node(self) -> bool:
        """Collective: True when every rank runs on this one node (shares memory with this rank)."""
        return len(self.node_sizes()) == 1

    def node_sizes(self) -> list[int]:
        """Collective: the number of ranks on each node (ranks that share memory), nodes in the order of
        their lowest rank."""
        raise NotImplementedError

    def split_by_node(self, node_size: int | None = None) -> tuple["Comm", "Comm"]:
        """Collective: (node, cross). node: the ranks of this rank's node; cross: the ranks with this rank's
        local index on every node, in node order. node_size=k groups consecutive ranks by k instead of by
        shared memory (k must divide size), so tests can act out several nodes on one machine."""
        raise NotImplementedError

    def shared_segments(self, nbytes: int) -> "SharedSegments":
        """Collective over a node communicator (`split_by_node`): nbytes per rank of shared memory."""
        raise NotImplementedError

    def hard_exit(self, code: int) -> NoReturn:
        """End the whole job from any thread, without cleanup (the watchdog's last resort)."""
        raise NotImplementedError

    # shared ----------------------------------------------------------------------------------
    def ring_allreduce(self, max_elems: int, dtype, codec=None) -> "RingAllreduce":
        """Collective: distbp's own ring allreduce (`distbp.ring`) for buffers of up to max_elems elements.

        codec (`distbp.codecs.Codec`): None sends the buffers' own dtype; else 16-bit words travel and
        the sums are rounded to the codec's format (the same bits on every rank).
        """
        from distbp.ring import RingAllreduce

        # a duplicate communicator keeps the ring's messages apart from everything else
        return RingAllreduce(self.duplicate() if self.size > 1 else self, max_elems, dtype, codec)

    def sum_scalars(self, values) -> np.ndarray:
        """Float64 sums over ranks of a few numbers (e.g. loss sum, correct count, example count)."""
        out = np.array(values, dtype=np.float64).reshape(-1)
        self.allreduce_sum(out)
        return out

    def say(self, message: str) -> None:
        """'distbp: rank r: message' on stderr, flushed at once (for messages only this rank can give)."""
        sys.stderr.write(f"distbp: rank {self.rank}: {message}\n")
        sys.stderr.flush()

class SerialComm(Comm):
    """One process: every collective is the identity."""

    def __init__(self):
        self.rank, self.size, self.is_root = 0, 1, True
        self.library = ""

    def allreduce_sum(self, buf: np.ndarray, piece_bytes: int = PIECE_BYTES) -> None:
        if not isinstance(buf, np.ndarray):
            raise TypeError("allreduce_sum needs a numpy array")

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        if root != 0:
            raise ValueError(f"root {root} out of range for 1 rank")

    def max_scalar(self, x: float) -> float:
        return float(x)

    def barrier(self) -> None:
        pass

    def abort(self, message: str, code: int = 1) -> NoReturn:
        self.say(message)
        sys.exit(code)

    def allgather_object(self, obj) -> list:
        return [obj]

    def start_allreduce(self, buf, codec=None) -> Handle:
        return Handle()

    def start_send(self, buf, dest) -> Handle:
        raise ValueError("one rank has no peer to send to")

    def start_recv(self, buf, source) -> Handle:
        raise ValueError("one rank has no peer to receive from")

    def duplicate(self) -> Comm:
        return SerialComm()

    def node_sizes(self) -> list[int]:
        return [1]

    def split_by_node(self, node_size: int | None = None) -> tuple[Comm, Comm]:
        if node_size not in (None, 1):
            raise ValueError(f"node_size {node_size} does not divide 1 rank")
        return self, SerialComm()

    def shared_segments(self, nbytes: int) -> SharedSegments:
        # like a window's, the memory is not a numpy array of its own (distbp.memory counts it as shared)
        return SharedSegments([np.frombuffer(bytearray(nbytes), np.uint8)], 0)

    def start_reduce_scatter(self, send, recv, counts) -> Handle:
        recv[...] = send
        return Handle()

    def test_all(self, handles) -> bool:
        return True

    def wait_all(self, handles) -> None:
        pass

    def hard_exit(self, code: int) -> NoReturn:
        os._exit(code)

    def barrier_within(self, seconds: float) -> bool:
        return True

    def allgather_parts(self, buf, counts) -> None:
        pass

    def gather_parts(self, part, counts):
        return part.copy()


class MPIComm(Comm):
    """An mpi4py communicator (COMM_WORLD by default)."""

    def __init__(self, mpi_comm=None):
        from mpi4py import MPI  # imported here so SerialComm works without mpi4py

        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self.is_root = self.rank == 0
        self.library = MPI.Get_library_version()
        self._ops: dict[str, object] = {}

    def allreduce_sum(self, buf: np.ndarray, piece_bytes: int = PIECE_BYTES) -> None:
        for piece in _pieces(buf, piece_bytes):
            self._comm.Allreduce(self._MPI.IN_PLACE, piece, op=self._MPI.SUM)

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        for piece in _pieces(buf):
            self._comm.Bcast(piece, root=root)

    def max_scalar(self, x: float) -> float:
        buf = np.array([x], dtype=np.float64)
        self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.MAX)
        return float(buf[0])

    def barrier(self) -> None:
        self._comm.Barrier()

    def barrier_within(self, seconds: float) -> bool:
        request = self._comm.Ibarrier()
        deadline = time.monotonic() + seconds
        while not request.Test():
            if time.monotonic() > deadline:
                return False  # the request is left pending: the process is about to exit
            time.sleep(0.005)
        return True

    def allgather_parts(self, buf, counts) -> None:
        self._comm.Allgatherv(self._MPI.IN_PLACE, [buf, (list(counts), _displacements(counts))])

    def gather_parts(self, part, counts):
        full = np.empty(sum(counts), part.dtype) if self.is_root else None
        recv = [full, (list(counts), _displacements(counts))] if self.is_root else None
        self._comm.Gatherv(part, recv, root=0)
        return full

    def abort(self, message: str, code: int = 1) -> NoReturn:
        self.say(message)
        self.hard_exit(code)

    def exit_quietly(self, code: int, finalize: bool = True) -> int:
        if "mpi4py.run" not in sys.modules:
            return code  # not under `python -m mpi4py`: a plain exit aborts nothing
        sys.stdout.flush()
        sys.stderr.flush()
        if finalize:
            self._MPI.Finalize()
        os._exit(code)

    def allgather_object(self, obj) -> list:
        return self._comm.allgather(obj)

    def _op(self, codec):
        """The MPI operator for codec: SUM, or a user-defined 16-bit add (MPICH has no float16 SUM)."""
        if codec is None:
            return self._MPI.SUM
        if codec.name not in self._ops:
            def add(inbuf, inoutbuf, datatype):
                codec.add(np.frombuffer(inbuf, np.uint16), np.frombuffer(inoutbuf, np.uint16))
            self._ops[codec.name] = self._MPI.Op.Create(add, commute=True)
        return self._ops[codec.name]

    def start_allreduce(self, buf: np.ndarray, codec=None) -> Handle:
        spec = buf if codec is None else [buf, self._MPI.UINT16_T]
        return Handle(self._comm.Iallreduce(self._MPI.IN_PLACE, spec, op=self._op(codec)))

    def start_send(self, buf, dest) -> Handle:
        return Handle(self._comm.Isend(buf, dest, 0))

    def start_recv(self, buf, source) -> Handle:
        return Handle(self._comm.Irecv(buf, source, 0))

    def duplicate(self) -> Comm:
        return MPIComm(self._comm.Dup())

    def free(self) -> None:
        if self._comm != self._MPI.COMM_WORLD and self._comm != self._MPI.COMM_NULL:
            self._comm.Free()

    def node_sizes(self) -> list[int]:
        local = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            first = local.allreduce(self.rank, op=self._MPI.MIN)  # names the node
        finally:
            local.Free()
        firsts = self._comm.allgather(first)
        return [firsts.count(f) for f in sorted(set(firsts))]

    def split_by_node(self, node_size: int | None = None) -> tuple[Comm, Comm]:
        if node_size is None:
            node = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
        elif node_size < 1 or self.size % node_size:
            raise ValueError(f"node_size {node_size} does not divide {self.size} ranks")
        else:
            node = self._comm.Split(self.rank // node_size, self.rank)
        cross = self._comm.Split(node.Get_rank(), self.rank)  # one rank per node, in rank order
        return MPIComm(node), MPIComm(cross)

    def shared_segments(self, nbytes: int) -> SharedSegments:
        MPI = self._MPI
        window = MPI.Win.Allocate_shared(max(1, nbytes), 1, comm=self._comm)
        window.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch for the whole life: sync() is Win_sync
        segments = [np.frombuffer(window.Shared_query(k)[0], np.uint8)[:nbytes] for k in range(self.size)]
        return SharedSegments(segments, self.rank, window)

    def start_reduce_scatter(self, send, recv, counts) -> Handle:
        return Handle(self._comm.Ireduce_scatter(send, recv, list(counts), op=self._MPI.SUM))

    def test_all(self, handles: list[Handle]) -> bool:
        # mpi4py writes each completed request back into its Request object, so the handles see it
        return self._MPI.Request.Testall([h.request for h in handles])

    def wait_all(self, handles: list[Handle]) -> None:
        self._MPI.Request.Waitall([h.request for h in handles])

    def hard_exit(self, code: int) -> NoReturn:
        # Abort ends every rank under any launcher. If it cannot (the MPI library wedged), this process
        # exits anyway, which hydra also turns into the end of the job (checked with MPICH). That backstop
        # must not need the GIL: mpi4py calls MPI_Abort holding it, so a Python timer thread could never
        # run. faulthandler's is a C thread; it prints every thread's stack (where it hung) and _exits.
        faulthandler.dump_traceback_later(ABORT_GRACE_S + HARD_EXIT_BACKSTOP_S, exit=True, file=2)  # fd 2: stderr
        # hydra forwards a rank's output through a pipe; MPI_Abort right after a write can end the job
        # before the message is forwarded (seen in tests: only the first traceback line arrived)
        time.sleep(ABORT_GRACE_S)
        self._comm.Abort(code)
        os._exit(code)


def _displacements(counts: list[int]) -> list[int]:
    """Start offset of each rank's part when parts of counts[r] elements follow each other in rank order."""
    return [int(x) for x in np.concatenate([[0], np.cumsum(counts)[:-1]])]


def world() -> Comm:
    """MPIComm over COMM_WORLD when mpi4py is importable (also for one process), else SerialComm."""
    try:
        import mpi4py
    except ImportError:
        return SerialComm()
    # only takes effect if mpi4py.MPI is not imported yet; `python -m mpi4py` uses "multiple" already
    mpi4py.rc.thread_level = "multiple"
    return MPIComm()
