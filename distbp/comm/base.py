"""The communicator interface: what distbp needs from MPI, and what every implementation shares.

`distbp.comm.mpi.world()` returns a `Comm`: `MPIComm` (`distbp.comm.mpi`, the only module of distbp that
calls MPI) over COMM_WORLD when mpi4py imports, else `SerialComm` (`distbp.comm.serial`: one process, no
mpi4py needed). Every other module uses only this interface, which both implement:

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
      comm.duplicate(), comm.free()         the same ranks, messages kept apart; give a made one back
      comm.subgroup(ranks)                  a communicator of some of the ranks (None on the others)
    nodes and shared memory, for the hierarchical allreduce (`distbp.comm.hier`)
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

import sys
from typing import Iterator, NoReturn

import numpy as np

from distbp.comm.checks import AgreementChecks

# one allreduce of 64 MiB is ~3x slower than four of 16 MiB with MPICH (measured), so big buffers go in pieces
PIECE_BYTES = 16 << 20


class Handle:
    """A started non-blocking collective: pass lists of handles to `Comm.test_all` / `Comm.wait_all`.

    `request` is the MPI request (None on one rank, where every collective completes at once).
    Do not touch the buffers of a started collective before wait_all returns (or test_all says True).
    """

    __slots__ = ("request",)

    def __init__(self, request=None):
        self.request = request


def pieces(buf: np.ndarray, piece_bytes: int = PIECE_BYTES) -> Iterator[np.ndarray]:
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
    (`distbp.comm.checks`)."""

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

        codec (`distbp.comm.codecs.Codec`): None for a float buffer; else buf holds the codec's 16-bit words,
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
        """Collective: release a communicator made by duplicate, subgroup or split_by_node (MPI has a few
        thousand)."""

    def subgroup(self, ranks: list[int]) -> "Comm | None":
        """Collective: a communicator of the ranks listed (ranks of this one; rank i of it is ranks[i]) on those
        ranks, None on the others."""
        raise NotImplementedError

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
    def sum_scalars(self, values) -> np.ndarray:
        """Float64 sums over ranks of a few numbers (e.g. loss sum, correct count, example count)."""
        out = np.array(values, dtype=np.float64).reshape(-1)
        self.allreduce_sum(out)
        return out

    def say(self, message: str) -> None:
        """'distbp: rank r: message' on stderr, flushed at once (for messages only this rank can give)."""
        sys.stderr.write(f"distbp: rank {self.rank}: {message}\n")
        sys.stderr.flush()
