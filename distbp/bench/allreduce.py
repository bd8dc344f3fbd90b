"""`distbp bench allreduce`: the gradient's collective alone, OSU / nccl-tests style, on every transport.

    launch/local -n 4 distbp bench allreduce --max-bytes 1048576
    srun --mpi=pmi2 --ntasks-per-node=8 python -m mpi4py -m distbp bench allreduce --json allreduce.json
    mpirun -n 64 python -m mpi4py -m distbp bench allreduce --layers 784,1024,1024,10 --bucket-mb 4

Every transport (`distbp.sync.transports`: mpi, ring, hier; each also with bfloat16 on the wire) sums, in
turns (so that load and noise hit them alike), one buffer of each size from 4 B to --max-bytes (powers of 4)
and each distinct bucket of the model's gradient (--layers, --dtype, --bucket-mb), through the reducer training
uses, and the whole gradient in its buckets. Per row: the latency (the slowest rank's, median over the turns),
the algorithm bandwidth (bytes / latency) and the bus bandwidth (algorithm × 2(p−1)/p, what each rank's link
carried for a bandwidth-optimal allreduce) against the link between the first and the last rank in placement
(a ping-pong, on another node when the job spans two); and per transport an α–β fit (`distbp.bench.model`).
"""

from __future__ import annotations

import time

import numpy as np

from distbp.bench import model as ab
from distbp.bench.timing import median, slowest
from distbp.comm.base import Comm
from distbp.sync.reducer import GradientReducer, bucket_layout
from distbp.sync.transports import make_transport

TRANSPORTS = ("mpi", "ring", "hier")
CODECS = (None, "bfloat16")
LINK_BYTES = 16 << 20  # the ping-pong's large message (at most --max-bytes)


def variant_name(transport: str, comm_dtype: str | None) -> str:
    return transport + ("+bf16" if comm_dtype == "bfloat16" else "+fp16" if comm_dtype else "")


def message_sizes(max_bytes: int, itemsize: int) -> list[int]:
    """4 B, 16 B, 64 B, … up to max_bytes (powers of 4, and max_bytes itself), each at least one element."""
    sizes, n = [], 4
    while n < max_bytes:
        sizes.append(n)
        n *= 4
    sizes.append(max_bytes)
    return sorted({max(itemsize, s - s % itemsize) for s in sizes})


def repeats_for(nbytes: int, repeats: int) -> int:
    """Fewer turns for large buffers: `repeats` up to 1 MiB, a quarter of it (at least 3) above."""
    return repeats if nbytes <= 1 << 20 else max(3, repeats // 4)


class Case:
    """One transport summing one buffer layout through `GradientReducer`, as training sends it.

    layers: the buffer's layer slices (one slice: one message); bucket_bytes cuts them into buckets."""

    def __init__(self, comm: Comm, transport: str, comm_dtype: str | None, layers: list[slice], dtype,
                 bucket_bytes: int):
        n = layers[-1].stop
        itemsize = np.dtype(dtype).itemsize
        largest = max(b.stop - b.start for b in bucket_layout(layers, n, itemsize, bucket_bytes))
        self.transport = make_transport(transport, comm, n, dtype, max_bucket=largest, comm_dtype=comm_dtype)
        grad = self.transport.grad if self.transport.grad is not None else np.empty(n, dtype)
        grad[:] = 0  # zeros: repeated sums stay finite
        self.reducer = GradientReducer(comm, grad, layers, bucket_bytes=bucket_bytes, transport=self.transport)
        self.n_layers, self.buckets = len(layers), len(self.reducer.buckets)

    def __call__(self) -> None:
        for layer in reversed(range(self.n_layers)):  # every layer ready at once: nothing to hide behind
            self.reducer.layer_ready(layer)
        self.reducer.finish()

    def close(self) -> None:
        self.transport.close()


def variants(names: list[str], codecs: list[str | None], even_nodes: bool) -> list[tuple[str, str | None]]:
    """(transport, comm_dtype) pairs to run; hier only where every node has the same number of ranks."""
    return [(t, c) for t in names for c in codecs if t != "hier" or even_nodes]


def measure(comm: Comm, pairs: list[tuple[str, str | None]], layouts: list[tuple[str, int, list[slice], int]],
            dtype, repeats: int) -> list[dict]:
    """Collective: one row per (layout, transport): the layouts are (kind, bytes, layer slices, bucket bytes),
    timed with every transport in turns. Rows: kind, transport, comm_dtype, bytes, buckets, latency_s (median
    of the slowest rank's), algbw_GBps, busbw_GBps."""
    p, rows = comm.size, []
    for kind, nbytes, layers, bucket_bytes in layouts:
        cases = [(t, c, Case(comm, t, c, layers, dtype, bucket_bytes)) for t, c in pairs]
        times = {i: [] for i in range(len(cases))}
        turns = repeats_for(nbytes, repeats)
        for i, (_, _, case) in enumerate(cases):  # warm-up (Numba compiles the codecs on their first call)
            slowest(comm, case, 0, warmup=2)
        for _ in range(turns):
            for i, (_, _, case) in enumerate(cases):
                times[i] += slowest(comm, case, 1, warmup=0)
        for i, (t, c, case) in enumerate(cases):
            latency = median(times[i])
            alg = nbytes / latency / 1e9 if latency > 0 else None
            rows.append({"kind": kind, "transport": t, "comm_dtype": c, "variant": variant_name(t, c),
                         "bytes": nbytes, "buckets": case.buckets, "latency_s": latency, "turns": turns,
                         "algbw_GBps": alg, "busbw_GBps": alg * 2 * (p - 1) / p if alg is not None else None})
            case.close()
    return rows


def model_layouts(sizes: list[int], dtype, bucket_bytes: int) -> tuple[list[tuple], list[int]]:
    """The model's layouts to time (each distinct bucket alone, and the whole gradient in its buckets) and its
    buckets' sizes in bytes, in the order the backward pass sends them."""
    from distbp.nn.model import layer_slices_of  # numpy's model sizes: only when the model's buckets are asked for

    itemsize = np.dtype(dtype).itemsize
    layers = layer_slices_of(sizes)
    n = layers[-1].stop
    buckets = [(b.stop - b.start) * itemsize for b in bucket_layout(layers, n, itemsize, bucket_bytes)]
    out = [("bucket", b, [slice(0, b // itemsize)], b) for b in sorted(set(buckets))]
    out.append(("gradient", n * itemsize, layers, bucket_bytes))
    return out, buckets


def fits(rows: list[dict]) -> dict[str, dict]:
    """α–β fit per variant over its single-message rows (sizes and buckets)."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name and r["kind"] != "gradient"]
        out[name] = ab.fit([r["bytes"] for r in mine], [r["latency_s"] for r in mine])
    return out


def link(comm: Comm, a: int, b: int, nbytes: int, repeats: int = 20) -> dict:
    """Collective: ping-pong between ranks a and b (the others wait): one-way latency of 4 bytes and bandwidth
    of nbytes, medians over `repeats` round trips (the others idle at the barriers)."""
    out = {"ranks": [a, b], "bytes": nbytes}
    if a == b:
        return {**out, "latency_s": None, "bandwidth_GBps": None}
    for key, size in (("latency_s", 4), ("seconds", nbytes)):
        buf = np.zeros(max(1, size // 4), np.float32)
        times = []
        for _ in range(repeats + 2):
            comm.barrier()
            t0 = time.perf_counter()
            if comm.rank == a:
                comm.wait_all([comm.start_send(buf, b)])
                comm.wait_all([comm.start_recv(buf, b)])
            elif comm.rank == b:
                comm.wait_all([comm.start_recv(buf, a)])
                comm.wait_all([comm.start_send(buf, a)])
            times.append(comm.max_scalar(time.perf_counter() - t0 if comm.rank == a else 0.0))
        out[key] = median(times[2:]) / 2  # one way
    out["bandwidth_GBps"] = nbytes / out.pop("seconds") / 1e9
    return out


def run(comm: Comm, args, cfg, order: list[int], node_sizes: list[int]) -> dict:
    """Collective: the whole `distbp bench allreduce` measurement; returns the JSON document (on every rank)."""
    dtype = np.dtype(cfg.dtype)
    itemsize = dtype.itemsize
    names = args.transports.split(",") if args.transports else list(TRANSPORTS)
    codecs = [None] if args.no_bf16 else list(CODECS)
    pairs = variants(names, codecs, len(set(node_sizes)) == 1)
    layouts = [("size", s, [slice(0, s // itemsize)], s) for s in message_sizes(args.max_bytes, itemsize)]
    bucket_bytes = int(cfg.bucket_mb * (1 << 20))
    extra, buckets = model_layouts(cfg.layers, dtype, bucket_bytes) if cfg.layers else ([], [])
    rows = measure(comm, pairs, layouts + extra, dtype, args.repeats)
    return {"command": "allreduce", "ranks": comm.size, "node_sizes": node_sizes, "dtype": dtype.name,
            "transports": [variant_name(t, c) for t, c in pairs],
            "model": {"layers": cfg.layers, "bucket_bytes": bucket_bytes, "buckets": buckets} if cfg.layers else None,
            "link": link(comm, order[0], order[-1], min(args.max_bytes, LINK_BYTES)),
            "rows": rows, "fits": fits(rows)}


COLUMNS = [("transport", "variant", ""), ("kind", "kind", ""), ("bytes", "bytes", "d"), ("buckets", "buckets", "d"),
           ("latency us", "latency_us", ".1f"), ("algbw GB/s", "algbw_GBps", ".3f"),
           ("busbw GB/s", "busbw_GBps", ".3f"), ("of link %", "of_link", ".0f")]


def report(doc: dict) -> str:
    """The root's text: the rows per transport, then the fits."""
    from distbp.bench.timing import table  # the table: only on the root, which prints it

    link_bw = doc["link"].get("bandwidth_GBps")
    rows = [{**r, "latency_us": 1e6 * r["latency_s"],
             "of_link": 100 * r["busbw_GBps"] / link_bw if link_bw and r["busbw_GBps"] is not None else None}
            for r in doc["rows"]]
    lk = doc["link"]
    where = (f"link ranks {lk['ranks'][0]}↔{lk['ranks'][1]}: {1e6 * lk['latency_s']:.1f} us one way, "
             f"{lk['bandwidth_GBps']:.3f} GB/s" if lk.get("latency_s") is not None else "one rank: no link")
    text = [table(rows, COLUMNS, f"distbp bench allreduce: {doc['ranks']} rank(s) on {len(doc['node_sizes'])} "
                                 f"node(s), {doc['dtype']}; {where}; latency = slowest rank, median of turns")]
    fit_rows = [{"variant": k, "alpha_us": 1e6 * f["alpha_s"], "beta_ps": 1e12 * f["beta_s_per_byte"],
                 "GBps": 1e-9 / f["beta_s_per_byte"] if f["beta_s_per_byte"] > 0 else None,
                 "err": 100 * f["max_rel_error"]} for k, f in doc["fits"].items()]
    text.append(table(fit_rows, [("transport", "variant", ""), ("alpha us", "alpha_us", ".2f"),
                                 ("beta ps/B", "beta_ps", ".2f"), ("1/beta GB/s", "GBps", ".3f"),
                                 ("max error %", "err", ".0f")],
                      "α–β fit T(n) = α + β·n per transport (single messages and buckets)"))
    return "\n\n".join(text)
