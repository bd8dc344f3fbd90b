"""MPI through mpi4py: `MPIComm`, and `world()`, the communicator a job runs on.

This is the only module of distbp that calls MPI. Hot paths use mpi4py's upper-case buffer methods on
numpy arrays (no pickling); the lower-case pickling methods appear only in the rare checks.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from typing import NoReturn

import numpy as np

from distbp.comm.base import PIECE_BYTES, Comm, Handle, SharedSegments, pieces
from distbp.comm.serial import SerialComm

# seconds between writing a fatal message and aborting, so the launcher forwards the message first
ABORT_GRACE_S = 0.3
# seconds hard_exit gives MPI_Abort before this process exits by itself (see MPIComm.hard_exit)
HARD_EXIT_BACKSTOP_S = 2.0


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
        for piece in pieces(buf, piece_bytes):
            self._comm.Allreduce(self._MPI.IN_PLACE, piece, op=self._MPI.SUM)

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        for piece in pieces(buf):
            self._comm.Bcast(piece, root=root)

    def sum_scalars(self, values) -> np.ndarray:
        out = np.array(values, dtype=np.float64).reshape(-1)
        if self.size > 1:  # one rank: the sums are the values (a step's totals, without a call into MPI)
            self._comm.Allreduce(self._MPI.IN_PLACE, out, op=self._MPI.SUM)
        return out

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

    def subgroup(self, ranks: list[int]) -> Comm | None:
        inside = self.rank in ranks
        sub = self._comm.Split(0 if inside else self._MPI.UNDEFINED, ranks.index(self.rank) if inside else 0)
        return MPIComm(sub) if inside else None

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
