"""One process: `SerialComm`, the communicator whose every collective is the identity.

Lets the model, the optimizers and the strategies run and be tested without MPI (mpi4py not needed).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import numpy as np

from distbp.comm.base import PIECE_BYTES, Comm, Handle, SharedSegments


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

    def subgroup(self, ranks: list[int]) -> Comm | None:
        if any(r != 0 for r in ranks):
            raise ValueError(f"one process has rank 0 only, got ranks {ranks}")
        return self if ranks else None

    def node_sizes(self) -> list[int]:
        return [1]

    def split_by_node(self, node_size: int | None = None) -> tuple[Comm, Comm]:
        if node_size not in (None, 1):
            raise ValueError(f"node_size {node_size} does not divide 1 rank")
        return self, SerialComm()

    def shared_segments(self, nbytes: int) -> SharedSegments:
        # like a window's, the memory is not a numpy array of its own (distbp.train.memory counts it as shared)
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
