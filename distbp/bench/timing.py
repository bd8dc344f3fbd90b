"""What every `distbp bench` measurement shares: the slowest rank's time, an idle wait, what the numbers were
measured on, a text table and the JSON file.

A time is the slowest rank's (a collective ends when its last rank does): every rank starts together after a
barrier, and the maximum over ranks of each rank's seconds is kept. Ranks not in the group being timed wait at
`idle_barrier`, which sleeps between polls, so they leave their cores to the ranks at work as a job of that
size would.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from distbp.comm.base import Comm

IDLE_POLL_S = 0.005  # how often a waiting rank looks whether the others arrived (Comm.barrier_within's)
IDLE_LIMIT_S = 7 * 24 * 3600.0  # a wait never given up on: a turn of the study is over when its ranks arrive


def slowest(comm: Comm, fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Collective: seconds of each of `repeats` timed calls of fn(), the slowest rank's, after `warmup` calls."""
    for _ in range(warmup):
        comm.barrier()
        fn()
    times = []
    for _ in range(repeats):
        comm.barrier()  # every rank starts together: the time is the call's, not a late start's
        t0 = time.perf_counter()
        fn()
        times.append(comm.max_scalar(time.perf_counter() - t0))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def idle_barrier(comm: Comm) -> None:
    """Collective over comm: a barrier that sleeps between polls (`Comm.barrier_within`), so a rank with nothing
    to do leaves its core idle."""
    if comm.size > 1:
        comm.barrier_within(IDLE_LIMIT_S)


def machine(comm: Comm, node_sizes: list[int]) -> dict:
    """What the numbers were measured on: host, CPU, cores, ranks and nodes, MPI library, load average."""
    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": platform.node(), "cpu": cpu, "cores_per_rank": len(os.sched_getaffinity(0)),
            "ranks": comm.size, "nodes": len(node_sizes), "ranks_per_node": list(node_sizes),
            "mpi": " ".join(comm.library.splitlines()[0].split()) if comm.library else "none",
            "python": platform.python_version(), "numpy": numpy.__version__,
            "load_average_1min": os.getloadavg()[0]}


def table(rows: list[dict], columns: list[tuple[str, str, str]], title: str = "") -> str:
    """rows as an aligned text table: columns are (heading, key, format spec); a missing value is '-'."""
    body = [[format(r[k], spec) if r.get(k) is not None else "-" for _, k, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, (h, _, _) in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths)))
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def write_json(path: str, data: dict) -> None:
    """data as indented JSON at path (its folder made), written whole: a temporary file, then renamed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(target)
