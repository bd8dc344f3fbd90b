"""Helpers shared by the benchmark scripts: timing, a text table, JSON and an optional bar chart."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence


def interleaved_times(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                      lead: int = 0) -> dict[str, list[float]]:
    """Seconds of every timed call of each case, run round-robin (a, b, c, a, b, c, …).

    Round-robin, so load from other processes on a shared machine falls on every
    case alike and the ratios between them stay meaningful. `warmup` untimed calls
    of each case come first (Numba compiles on its first call); `lead` untimed calls
    precede each timed one, so a case is timed in its own steady state rather than
    just after another library's thread pool (OpenBLAS's idle workers spin ~0.1 s
    after a GEMM and halved a PyTorch step that followed at 2 threads).
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            for _ in range(lead):
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                        lead: int = 0) -> dict[str, float]:
    """Median seconds per call of each case, timed round-robin (see `interleaved_times`)."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(cases, repeats, warmup, lead).items()}


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> str:
    """Print rows (dicts) as an aligned text table of `columns`; floats get 3 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def machine() -> dict:
    """What the numbers were measured on (cores, load, library versions)."""
    import numba
    import numpy

    info = {"cpu": platform.processor() or platform.machine(), "cores_available": len(os.sched_getaffinity(0)),
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
            "numpy": numpy.__version__, "numba": numba.__version__,
            "numba_threading_layer_env": os.environ.get("NUMBA_THREADING_LAYER", "default"),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "unset"),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "unset"),
            "openblas_kernels": openblas_kernels()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def openblas_kernels() -> dict[str, str]:
    """Each loaded OpenBLAS's file name -> the kernel set it chose (e.g. Haswell, SkylakeX).

    OpenBLAS picks kernels from the CPU id; OPENBLAS_CORETYPE (set before numpy loads) overrides it.
    """
    import ctypes

    found = {}
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "openblas" in line and ".so" in line}
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                    "openblas_get_corename64_", "openblas_get_corename"):
            if hasattr(lib, sym):
                getattr(lib, sym).restype = ctypes.c_char_p
                found[Path(path).name] = getattr(lib, sym)().decode()
                break
    return found


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write data as indented JSON, creating the parent directory; atomic (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def bar_chart(path: str | os.PathLike, groups: Sequence[str], series: dict[str, Sequence[float]],
              ylabel: str, title: str) -> bool:
    """Grouped bars (one group per entry of `groups`, one bar per series) to a PNG; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return True
