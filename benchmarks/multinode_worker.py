"""One MPI job of benchmarks/multinode.py: bare allreduce times of every transport, in the same job.

    launch/local -n 2 --threads 1 python benchmarks/multinode_worker.py --out /tmp/a.json   # on one node
    (benchmarks/multinode.py runs it across namespace hosts with shaped links)

For each transport (MPI's Iallreduce, distbp's ring, the hierarchical allreduce, each in float32 and with
bfloat16 on the wire) and each size, the buffer goes through `distbp.sync.reducer.GradientReducer` as training
sends it: one bucket per size up to --bucket-mb, the gradient of MLP 784-1024-1024-10 (7.45 MB) in 4 MiB
buckets. The cases take turns (a, b, c, a, b, c, ...) so that load hits all alike; a time is the
slowest rank's, the median over --repeats turns. Rank 0 writes {case: {bytes: seconds}} as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
from distbp.comm.mpi import world  # noqa: E402
from distbp.sync.reducer import GradientReducer  # noqa: E402
from distbp.sync.transports import make_transport  # noqa: E402

GRADIENT = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10  # parameters of MLP 784-1024-1024-10


class Case:
    """One transport on one buffer size: its reducer, and how long each sum took (slowest rank)."""

    def __init__(self, comm, algorithm: str, codec: str | None, n: int, bucket_bytes: int):
        self.transport = make_transport(algorithm, comm, n, np.float32, max_bucket=min(n, bucket_bytes // 4),
                                        comm_dtype=codec)
        grad = self.transport.grad if self.transport.grad is not None else np.zeros(n, np.float32)
        grad[:] = np.float32(comm.rank + 1)
        self.reducer = GradientReducer(comm, grad, [slice(0, n)], bucket_bytes=bucket_bytes, transport=self.transport)
        self.comm, self.times = comm, []

    def run(self) -> float:
        t0 = time.perf_counter()
        self.reducer.layer_ready(0)  # starts every bucket (one layer)
        self.reducer.finish()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.transport.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="65536,262144,1048576,4194304", help="single-bucket buffer sizes (bytes)")
    p.add_argument("--algorithms", default="mpi,ring,hier")
    p.add_argument("--codecs", default="none,bfloat16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    comm = world()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict[str, float]] = {}
    for algorithm in args.algorithms.split(","):
        for codec in args.codecs.split(","):
            codec = None if codec == "none" else codec
            name = algorithm + ("" if codec is None else f"+{codec}")
            cases = {n_bytes: Case(comm, algorithm, codec, n_bytes // 4, max(n_bytes, 4)) for n_bytes in sizes}
            cases["gradient"] = Case(comm, algorithm, codec, GRADIENT, 4 << 20)
            for _ in range(args.warmup):
                for case in cases.values():
                    comm.barrier()
                    case.run()
            for _ in range(args.repeats):
                for case in cases.values():
                    comm.barrier()  # every rank starts together: the time is the sum's, not a late start's
                    case.times.append(comm.max_scalar(case.run()))
            results[name] = {str(k): statistics.median(c.times) for k, c in cases.items()}
            for case in cases.values():
                case.close()
    nodes = comm.node_sizes()  # [dist] collective
    if comm.is_root:
        Path(args.out).write_text(json.dumps({"ranks": comm.size, "nodes": len(nodes),
                                              "gradient_bytes": GRADIENT * 4, "seconds": results}))


if __name__ == "__main__":
    main()
