"""How `hier` should sum its slices across nodes: distbp's ring, distbp's Bruck allreduce or MPI's Iallreduce (as root).

    sudo .venv/bin/python benchmarks/hier_cross.py                        # 2x1, 2x2, 3x1, 4x1 namespace hosts
    sudo .venv/bin/python benchmarks/hier_cross.py --layouts 4x1 --repeats 15 --out results/hier_cross.json
    launch/local -n 4 --threads 1 python benchmarks/hier_cross.py --worker --node-size 1 --out /tmp/x.json

For each layout (hosts x ranks per host, tests/helpers/netns.py: ranks of a host share memory, hosts talk TCP
over veth links) one MPI job times, in turns (a, b, c, a, b, c, …, so that load hits all alike):

    mpi          the MPI library's Iallreduce on every rank (`--allreduce mpi`)
    hier-ring    the node's sum in shared memory, slices across nodes by distbp's ring (hier before issue 32)
    hier-bruck   the same, slices across nodes by distbp's Bruck allreduce (`distbp.comm.bruck`, hier now)
    hier-mpi     the same, slices across nodes by MPI's Iallreduce on the cross-node communicator
    hier         the registry's hier: hier-bruck, but buckets of at most SMALL_BUCKET_BYTES go whole through
                 MPI's Iallreduce over all ranks (`distbp.comm.hier`)

(hier-ring, hier-bruck and hier-mpi take the node path for every bucket; with one rank per host they all skip
the node's flags, as hier does.)

on single buckets of --sizes bytes and on the 7.45 MB float32 gradient of MLP 784-1024-1024-10 in 4 MiB buckets,
each through `distbp.sync.reducer.GradientReducer` as training sends it. A time is the slowest rank's, the median
of --repeats turns. The table gives each variant's time and its ratio to mpi's (below 1: faster than MPI).

With a 2x1 layout it also projects to 2 … 1024 nodes of 8 ranks (docs/multinode.md, "Projection to 1024 nodes"):
per message latency α/2 of T = α + β·n fitted on the 2x1 single buckets (benchmarks/multinode.py's `fit`), the
share of the link --link-use, --compute-ms of compute per step, no overlap; mpi as MPICH's large-message
allreduce over all ranks (2·ceil(log₂ p) messages, 2(p−1)/p·n bytes), hier-ring 2(h−1) messages and hier-bruck
2·ceil(log₂ h) across h nodes, 2(h−1)/h·n bytes per node. A model, not a measurement.
`--analyse results/hier_cross.json` prints a saved run's tables again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))
sys.path.insert(0, str(REPO / "benchmarks"))

GRADIENT = 784 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10  # parameters of MLP 784-1024-1024-10
VARIANTS = ("mpi", "hier-ring", "hier-bruck", "hier-mpi", "hier")


def make(variant: str, comm, n: int, bucket: int, node_size: int | None):
    """(transport, gradient) of one variant for n float32 elements in buckets of at most `bucket` elements."""
    import numpy as np

    from distbp.comm.bruck import bruck_allreduce
    from distbp.comm.hier import SMALL_BUCKET_BYTES, HierarchicalAllreduce
    from distbp.comm.library import library_allreduce
    from distbp.comm.ring import ring_allreduce
    from distbp.sync.transports import HierTransport, Transport, make_transport

    if variant == "mpi":
        return make_transport("mpi", comm, n, np.float32, max_bucket=bucket), np.zeros(n, np.float32)

    class Hier(HierTransport):
        """The registry's hier, with the cross-node allreduce (and pretend nodes) chosen here."""

        def __init__(self, across, small_bytes):
            Transport.__init__(self, comm, n, np.float32, bucket, None)
            self.hier = self.engine = HierarchicalAllreduce(comm, n, np.float32, node_size=node_size,
                                                            max_bucket=bucket, across=across, small_bytes=small_bytes)
            self.grad = self.hier.grad

    across = {"hier-ring": ring_allreduce, "hier-mpi": library_allreduce}.get(variant, bruck_allreduce)
    transport = Hier(across, SMALL_BUCKET_BYTES if variant == "hier" else 0)
    return transport, transport.grad


def worker(args) -> None:
    """One MPI job: every variant on every size, in turns; rank 0 writes {variant: {size: seconds}}."""
    import numpy as np

    from distbp.comm.mpi import world
    from distbp.sync.reducer import GradientReducer

    comm = world()
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = []  # (variant, size key, reducer, transport)
    for variant in VARIANTS:
        for key, n, bucket_bytes in [(str(s), s // 4, s) for s in sizes] + [("gradient", GRADIENT, 4 << 20)]:
            transport, grad = make(variant, comm, n, min(n, bucket_bytes // 4), args.node_size)
            grad[:] = np.float32(comm.rank + 1)
            layers = [slice(0, n)]
            cases.append((variant, key, GradientReducer(comm, grad, layers, bucket_bytes=bucket_bytes,
                                                        transport=transport), transport))
    times: dict = {}

    def once(reducer) -> float:
        t0 = time.perf_counter()
        reducer.layer_ready(0)
        reducer.finish()
        return time.perf_counter() - t0

    for rep in range(args.warmup + args.repeats):
        for variant, key, reducer, _ in cases:
            comm.barrier()  # every rank starts together: the time is the sum's, not a late start's
            t = comm.max_scalar(once(reducer))
            if rep >= args.warmup:
                times.setdefault(variant, {}).setdefault(key, []).append(t)
    for *_, transport in cases:
        transport.close()
    nodes = comm.node_sizes()
    if comm.is_root:
        Path(args.out).write_text(json.dumps({
            "ranks": comm.size, "nodes": len(nodes) if args.node_size is None else comm.size // args.node_size,
            "seconds": {v: {k: statistics.median(ts) for k, ts in d.items()} for v, d in times.items()}}))


def project(seconds: dict, compute_s: float, link_use: float) -> list[dict]:
    """Weak-scaling efficiency compute / (compute + T) at 25 and 100 Gb/s for 2 … 1024 nodes of 8 ranks, per variant
    but hier-mpi, from the 2x1 fits (see the module docstring)."""
    import math

    from multinode import fit

    rows = []
    for rate in (25e9, 100e9):
        for h in (2, 16, 128, 1024):
            row = {"Gb/s": rate / 1e9, "nodes": h}
            for v in ("mpi", "hier-ring", "hier-bruck"):
                a = fit(seconds[v])["alpha_s"] / 2  # a 2-host exchange: two messages' latency
                p = 8 * h
                steps, k = {"mpi": (2 * math.ceil(math.log2(p)), p), "hier-ring": (2 * (h - 1), h),
                            "hier-bruck": (2 * math.ceil(math.log2(h)), h)}[v]
                t = steps * a + 2 * (k - 1) / k * GRADIENT * 4 * 8 / rate / link_use
                row[f"{v} ms"], row[f"{v} eff %"] = 1e3 * t, 100 * compute_s / (compute_s + t)
            rows.append(row)
    return rows


def driver(args) -> int:
    import netns
    from common import print_table, write_json

    if args.analyse:
        saved = json.loads(Path(args.analyse).read_text())
        print_table(saved["rows"], list(saved["rows"][0]), "MEASURED (saved)")
        if "2x1" in saved["seconds"]:
            proj = project(saved["seconds"]["2x1"], args.compute_ms * 1e-3, args.link_use)
            print_table(proj, list(proj[0]), "PROJECTED (a model, not a measurement)")
        return 0
    reason = netns.unavailable_reason()
    if reason:
        print(f"hier_cross: cannot run: {reason}", file=sys.stderr)
        return 2
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts.split(","):
            hosts, per_host = (int(x) for x in layout.split("x"))
            out = Path(tmp) / f"{layout}.json"
            with netns.Cluster(hosts, rate=args.rate) as cluster:
                t0 = time.monotonic()
                done = cluster.run(["python", str(Path(__file__).resolve()), "--worker", "--out", str(out),
                                    "--sizes", args.sizes, "--repeats", str(args.repeats)],
                                   ranks_per_host=per_host, timeout=1200)
                if done.returncode != 0:
                    sys.exit(f"hier_cross: the {layout} job failed\n{done.output}")
                print(f"hier_cross: {layout} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            results[layout] = json.loads(out.read_text())["seconds"]
            mpi = results[layout]["mpi"]
            for key in mpi:
                row = {"hosts x ranks": layout, "bytes": key, "mpi us": 1e6 * mpi[key]}
                for v in VARIANTS[1:]:
                    row[f"{v} us"] = 1e6 * results[layout][v][key]
                    row[f"{v}/mpi"] = results[layout][v][key] / mpi[key]
                rows.append(row)
    print_table(rows, list(rows[0]), f"MEASURED: slowest rank's time per sum, median of {args.repeats} turns; "
                                     f"links {args.rate or 'unshaped'}")
    proj = project(results["2x1"], args.compute_ms * 1e-3, args.link_use) if "2x1" in results else []
    if proj:
        print_table(proj, list(proj[0]), "PROJECTED (a model, not a measurement)")
    write_json(args.out, {"args": vars(args), "seconds": results, "rows": rows, "projection": proj})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--layouts", default="2x1,2x2,3x1,4x1", help="hosts x ranks per host, comma-separated")
    p.add_argument("--sizes", default="4096,65536,262144,1048576,4194304", help="single-bucket sizes in bytes")
    p.add_argument("--rate", help="shape every link to this rate (e.g. 1gbit); default unshaped")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="results/hier_cross.json")
    p.add_argument("--compute-ms", type=float, default=41.0, help="compute per step for the projection")
    p.add_argument("--link-use", type=float, default=0.96, help="share of the link the projection's transports "
                   "reach (0.96: the 1gbit 2x1 fits of benchmarks/multinode.py)")
    p.add_argument("--analyse", help="print a saved --out's tables and projection again (no namespaces)")
    p.add_argument("--worker", action="store_true", help="run one MPI job's measurements (what the driver starts)")
    p.add_argument("--node-size", type=int, help="worker on one machine: pretend nodes of this many ranks")
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
