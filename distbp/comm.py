"""Communication between ranks: the only module of distbp that calls MPI.

`world()` returns a `Comm`: `MPIComm` over COMM_WORLD when mpi4py imports, else `SerialComm`
(one process, no mpi4py needed). The rest of distbp sees a small interface:

    comm.rank, comm.size, comm.is_root
    comm.allreduce_sum(buf)        in place SUM over ranks, numpy buffers, pieces of <= 16 MiB
    comm.bcast(buf, root)          in place
    comm.sum_scalars(values)       float64 sums of a few metrics
    comm.check_agree / check_identical / agree_on_failure    fail loudly and on every rank
    comm.abort(message)            end the whole job now

plus `RingAllreduce` (distbp's own non-blocking ring allreduce, which `distbp.reducer.GradientReducer`
drives during the backward pass). `distbp.watchdog.Watchdog` ends the job when a collective phase makes
no progress, through this interface.

Hot paths use mpi4py's upper-case buffer methods on numpy arrays (no pickling); the lower-case
pickling methods appear only in the rare checks (a hash per rank, the causes of a failure).

MPI is initialized with THREAD_MULTIPLE (mpi4py's default) so the watchdog thread may call Abort.
Run jobs with `mpiexec -n P python -m mpi4py ...`: then an unhandled exception on one rank aborts
the job instead of leaving the other ranks waiting forever in a collective.
"""

from __future__ import annotations

import collections
import json
import hashlib
import os
import sys
import threading
import time
import zlib
from typing import Iterator, NoReturn

import numpy as np

# one allreduce of 64 MiB is ~3x slower than four of 16 MiB with MPICH (measured), so big buffers go in pieces
PIECE_BYTES = 16 << 20
# seconds between writing a fatal message and aborting, so the launcher forwards the message first
ABORT_GRACE_S = 0.3


class DistbpError(Exception):
    """A clear, user-facing error of distbp (bad input, failure on a rank, ranks that disagree)."""


class ConfigMismatchError(DistbpError):
    """Ranks hold different values of something that must be the same everywhere (configuration, model shape)."""


class DivergenceError(DistbpError):
    """Parameters that must be identical on every rank are not."""


class StallError(DistbpError):
    """A collective phase made no progress for longer than the watchdog timeout."""


def _pieces(buf: np.ndarray, piece_bytes: int = PIECE_BYTES) -> Iterator[np.ndarray]:
    """Contiguous 1-d views of buf, each at most piece_bytes long (at least one element)."""
    if not buf.flags.c_contiguous:
        raise ValueError("communication buffers must be C-contiguous numpy arrays")
    flat = buf.reshape(-1)
    step = max(1, piece_bytes // max(1, flat.itemsize))
    for start in range(0, flat.size, step):
        yield flat[start:start + step]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def rank_list(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def _fingerprint(value) -> str:
    """sha256 of a canonical text of value (dict keys sorted; values JSON cannot hold by repr)."""
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except TypeError:  # dict keys of mixed types cannot be sorted
        text = repr(value)
    return hashlib.sha256(text.encode()).hexdigest()


def _dict_differences(ref: dict, other: dict) -> list[str]:
    """'key: <value on rank 0> on rank 0 vs <value here>' for every key whose value differs or is missing."""
    out = []
    for key in sorted(set(ref) | set(other), key=str):
        if key in ref and key in other and _fingerprint([ref[key]]) == _fingerprint([other[key]]):
            continue
        a = repr(ref[key]) if key in ref else "<missing>"
        b = repr(other[key]) if key in other else "<missing>"
        out.append(f"{key}: {a} on rank 0 vs {b}")
    return out


# ---------------------------------------------------------------------------------------------
# the interface and its shared checks
# ---------------------------------------------------------------------------------------------

class Comm:
    """What distbp needs from a communicator. Subclasses provide the primitives; the checks are shared."""

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

    def _allgather(self, obj) -> list:
        """obj of every rank, in rank order (pickled: small objects and rare calls only)."""
        raise NotImplementedError

    def allgather_object(self, obj) -> list:
        """Collective: obj of every rank, in rank order (pickled: small objects, rare calls only)."""
        return self._allgather(obj)

    def _start_allreduce(self, buf: np.ndarray, codec):
        """Start an in-place SUM of buf over ranks; returns a handle for _test_all/_wait_all.

        codec (`distbp.reducer._Codec`): None-named for plain floats, else buf holds 16-bit words
        that codec.add sums.
        """
        raise NotImplementedError

    def ring_allreduce(self, max_elems: int, dtype) -> "RingAllreduce":
        """Collective: distbp's own ring allreduce for buffers of up to max_elems elements of dtype."""
        raise NotImplementedError(f"{type(self).__name__} has no ring allreduce (one rank needs none)")

    def single_node(self) -> bool:
        """Collective: True when every rank runs on this one node (shares memory with this rank)."""
        raise NotImplementedError

    def _start_reduce_scatter(self, send: np.ndarray, recv: np.ndarray, counts: list[int]):
        """Start recv = this rank's part (counts[rank] elements) of Σ_ranks send; a handle for _wait_all."""
        raise NotImplementedError

    def _test_all(self, handles: list) -> bool:
        raise NotImplementedError

    def _wait_all(self, handles: list) -> None:
        raise NotImplementedError

    def _hard_exit(self, code: int) -> NoReturn:
        """End the whole job from any thread, without cleanup (the watchdog's last resort)."""
        raise NotImplementedError

    # shared ----------------------------------------------------------------------------------
    def sum_scalars(self, values) -> np.ndarray:
        """Float64 sums over ranks of a few numbers (e.g. loss sum, correct count, example count)."""
        out = np.array(values, dtype=np.float64).reshape(-1)
        self.allreduce_sum(out)
        return out

    def _say(self, message: str) -> None:
        sys.stderr.write(f"distbp: rank {self.rank}: {message}\n")
        sys.stderr.flush()

    def check_agree(self, what: str, value: dict | str) -> None:
        """Raise ConfigMismatchError on every rank unless value is the same on all ranks.

        Compares a hash first; only on a mismatch are the values themselves gathered, so the
        message can name the ranks that differ from rank 0 and, for dicts, the keys and values.
        """
        hashes = self._allgather(_fingerprint(value))
        if all(h == hashes[0] for h in hashes):
            return
        values = self._allgather(value)
        lines = [f"{what} differs between ranks:"]
        for r in range(1, self.size):
            if hashes[r] == hashes[0]:
                continue
            ref, other = values[0], values[r]
            if isinstance(ref, dict) and isinstance(other, dict):
                diffs = "; ".join(_dict_differences(ref, other))
            else:
                diffs = f"{ref!r} on rank 0 vs {other!r}"
            lines.append(f"  rank {r} differs from rank 0: {diffs}")
        raise ConfigMismatchError("\n".join(lines))

    def check_identical(self, buf: np.ndarray, step: int) -> None:
        """Raise DivergenceError on every rank unless buf has the same bytes on all ranks.

        Costs a crc32 of the buffer (about 1 ms per 10 MB) and an allgather of 8 bytes.
        """
        if not buf.flags.c_contiguous:
            raise ValueError("check_identical needs a C-contiguous buffer")
        crc = zlib.crc32(memoryview(buf).cast("B"))
        crcs = self._allgather((crc, buf.nbytes))
        bad = [r for r in range(self.size) if crcs[r] != crcs[0]]
        if bad:
            raise DivergenceError(
                f"parameters on {rank_list(bad)} differ from rank 0 at step {step} "
                f"(crc32 {crcs[0][0]:08x} on rank 0 vs {', '.join(f'{crcs[r][0]:08x}' for r in bad)}); "
                "the ranks no longer train the same model")

    def agree_on_failure(self, exc: BaseException | None) -> None:
        """Collective: raise DistbpError on every rank if any rank passes an exception.

        The message lists "rank r: <cause>" per failed rank; ranks with the same cause are listed
        together, and a cause shared by all ranks is reported once as "all ranks: <cause>".
        """
        causes = self._allgather(None if exc is None else _describe(exc))
        failed = [r for r in range(self.size) if causes[r] is not None]
        if not failed:
            return
        by_cause: dict[str, list[int]] = {}
        for r in failed:
            by_cause.setdefault(causes[r], []).append(r)
        lines = []
        for cause, ranks in by_cause.items():
            who = "all ranks" if len(ranks) == self.size and self.size > 1 else rank_list(ranks)
            lines.append(f"{who}: {cause}")
        message = lines[0] if len(lines) == 1 else "failed on several ranks:\n  " + "\n  ".join(lines)
        raise DistbpError(message) from exc


class SerialComm(Comm):
    """One process: every collective is the identity."""

    def __init__(self):
        self.rank, self.size, self.is_root = 0, 1, True

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
        self._say(message)
        sys.exit(code)

    def _allgather(self, obj) -> list:
        return [obj]

    def _start_allreduce(self, buf, codec):
        return None

    def single_node(self) -> bool:
        return True

    def _start_reduce_scatter(self, send, recv, counts):
        recv[...] = send
        return None

    def _test_all(self, handles) -> bool:
        return True

    def _wait_all(self, handles) -> None:
        pass

    def _hard_exit(self, code: int) -> NoReturn:
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
        self._say(message)
        # hydra forwards a rank's output through a pipe; MPI_Abort right after the write can end the
        # job before the message is forwarded (seen in tests: only the first traceback line arrived)
        time.sleep(ABORT_GRACE_S)
        self._comm.Abort(code)
        os._exit(code)  # not reached: Abort does not return

    def _allgather(self, obj) -> list:
        return self._comm.allgather(obj)

    def _op(self, codec):
        """The MPI operator for codec: SUM, or a user-defined 16-bit add (MPICH has no float16 SUM)."""
        if codec.name is None:
            return self._MPI.SUM
        if codec.name not in self._ops:
            def add(inbuf, inoutbuf, datatype):
                codec.add(np.frombuffer(inbuf, np.uint16), np.frombuffer(inoutbuf, np.uint16))
            self._ops[codec.name] = self._MPI.Op.Create(add, commute=True)
        return self._ops[codec.name]

    def _start_allreduce(self, buf: np.ndarray, codec):
        spec = buf if codec.name is None else [buf, self._MPI.UINT16_T]
        return self._comm.Iallreduce(self._MPI.IN_PLACE, spec, op=self._op(codec))

    def ring_allreduce(self, max_elems: int, dtype) -> RingAllreduce:
        # a duplicate communicator keeps the ring's messages apart from everything else
        return RingAllreduce(self._comm.Dup(), max_elems, dtype)

    def single_node(self) -> bool:
        local = self._comm.Split_type(self._MPI.COMM_TYPE_SHARED)
        try:
            return local.Get_size() == self.size
        finally:
            local.Free()

    def _start_reduce_scatter(self, send, recv, counts):
        return self._comm.Ireduce_scatter(send, recv, list(counts), op=self._MPI.SUM)

    def _test_all(self, handles: list) -> bool:
        return self._MPI.Request.Testall(handles)

    def _wait_all(self, handles: list) -> None:
        self._MPI.Request.Waitall(handles)

    def _hard_exit(self, code: int) -> NoReturn:
        # Abort ends every rank under any launcher; if it cannot (the MPI library wedged), a timer
        # exits this process, which hydra also turns into the end of the job (checked with MPICH)
        threading.Timer(2.0, os._exit, args=(code,)).start()
        time.sleep(ABORT_GRACE_S)
        self._comm.Abort(code)
        os._exit(code)


class RingAllreduce:
    """In-place SUM over ranks by a ring of point-to-point messages, advanced by its caller.

    A buffer of n elements is cut into p chunks. In p−1 reduce-scatter steps rank r sends one chunk
    to rank r+1 and adds the chunk it receives from rank r−1 into its own copy, so that rank r ends
    up holding the complete sum of chunk (r+1) mod p; in p−1 allgather steps those sums travel round
    the ring into every rank's buffer. Each rank sends and receives 2(p−1)/p·n elements (the least any
    allreduce moves), and the result is the same bits on every rank: each chunk is summed once, along
    the ring, and then copied.

    Why distbp has its own: on one node with MPICH it measured faster than MPICH's Iallreduce for the
    gradient's buckets and needs no message-sized temporary per call (benchmarks/allreduce.py).

    Buffers are summed one after another in the order start() was called (every rank must start the
    same buffers, of the same sizes, in the same order); only the first unfinished one has messages in
    flight, so one scratch array of ceil(max_elems / p) elements serves them all. Like MPI's own
    non-blocking collectives it moves only when called: progress() between compute chunks, wait() at
    the end. Do not touch a started buffer before wait() returns.
    """

    def __init__(self, mpi_comm, max_elems: int, dtype):
        from mpi4py import MPI

        self._MPI, self._comm = MPI, mpi_comm
        self.rank, self.size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        self.max_elems = int(max_elems)
        self.scratch = np.empty(-(-self.max_elems // self.size), dtype=dtype)
        self._queue: collections.deque[_RingOp] = collections.deque()

    def start(self, buf: np.ndarray) -> None:
        """Queue buf (flat, contiguous, the ring's dtype, at most max_elems elements) for summing in place."""
        if buf.dtype != self.scratch.dtype or buf.ndim != 1 or buf.size > self.max_elems or not buf.flags.c_contiguous:
            raise ValueError(f"ring allreduce takes flat contiguous {self.scratch.dtype} buffers of at most "
                             f"{self.max_elems} elements, got {buf.dtype} {buf.shape}")
        if self.size > 1:
            self._queue.append(_RingOp(buf, self.size))

    def progress(self) -> bool:
        """Advance without blocking as far as the messages allow; True when nothing is left in flight."""
        return self._advance(block=False)

    def wait(self) -> None:
        """Block until every started buffer holds its sum over ranks."""
        self._advance(block=True)

    def _advance(self, block: bool) -> bool:
        """Run the queue's steps as their messages arrive: waiting for them (block) or only testing."""
        p, r = self.size, self.rank
        while self._queue:
            op = self._queue[0]
            reduce = op.step < p - 1  # else allgather
            # chunk offsets: reduce-scatter step s sends chunk r-s; allgather step s sends chunk r-(s-p),
            # the sum this rank completed (r+1 at s = p-1) and then the ones it received
            send = (r - (op.step if reduce else op.step - p)) % p
            recv = (send - 1) % p
            if op.requests is None:
                # a reduce-scatter chunk is added, so it lands in scratch first; an allgather chunk is final
                into = self.scratch[:op.bounds[recv + 1] - op.bounds[recv]] if reduce else op.chunk(recv)
                op.requests = [self._comm.Irecv(into, (r - 1) % p, 0),
                               self._comm.Isend(op.chunk(send), (r + 1) % p, 0)]
            if block:
                self._MPI.Request.Waitall(op.requests)
            elif not self._MPI.Request.Testall(op.requests):
                return False
            if reduce:
                chunk = op.chunk(recv)
                np.add(chunk, self.scratch[:chunk.size], out=chunk)
            op.step, op.requests = op.step + 1, None
            if op.step == 2 * (p - 1):
                self._queue.popleft()
        return True


class _RingOp:
    """One buffer in the ring: its p chunk bounds, the step it is at, that step's requests."""

    __slots__ = ("buf", "bounds", "step", "requests")

    def __init__(self, buf: np.ndarray, p: int):
        self.buf, self.step, self.requests = buf, 0, None
        self.bounds = [buf.size * k // p for k in range(p + 1)]

    def chunk(self, k: int) -> np.ndarray:
        return self.buf[self.bounds[k]:self.bounds[k + 1]]


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
