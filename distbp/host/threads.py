"""Threads per rank: how many, and setting them for Numba and every loaded BLAS.

Numba's thread pool and OpenBLAS's read their size from the environment when they are
first loaded, so `pin_threads_env` must run before numpy, scipy or numba are imported.
Later, `set_threads` changes the pools at run time. Two OpenBLAS copies are usually
loaded: numpy's (scipy_openblas64_) and scipy's (scipy_openblas), which numba's
np.dot calls; each has its own pool, so both are set.

This module imports nothing heavy at module level: importing it must not load numpy.
"""

import ctypes
import os
import re
import sys
from pathlib import Path

THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "MKL_NUM_THREADS", "DISTBP_THREADS")

# (setter, getter) symbol pairs, tried in order, for the BLAS builds numpy and scipy ship
BLAS_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
    ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads"),
)
BLAS_NAME = re.compile(r"lib(scipy_)?openblas|libmkl_rt|libblas")


def cores_available() -> int:
    """Cores this process may run on (its affinity mask, not the machine's core count)."""
    return len(os.sched_getaffinity(0))


def _slurm_local_tasks(env: dict) -> int | None:
    """Tasks on this node from SLURM's variables, e.g. SLURM_TASKS_PER_NODE='4(x2),3'."""
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    spec = env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = int(env.get("SLURM_NODEID", 0))
    return counts[node] if node < len(counts) else counts[0]


def local_rank_count() -> int:
    """Ranks sharing this node, as the launcher tells them (MPICH hydra, Open MPI, SLURM); else 1."""
    env = os.environ
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCAL_SIZE"):
        if env.get(var, "").isdigit():
            return max(1, int(env[var]))
    slurm = _slurm_local_tasks(env)
    return max(1, slurm) if slurm else 1


def requested_threads(explicit: int | None = None) -> tuple[int, str]:
    """(threads asked for, who asked): --threads, else DISTBP_THREADS, else SLURM_CPUS_PER_TASK,
    else the rank's cores divided by the ranks on its node."""
    if explicit:
        return explicit, "--threads"
    for var in ("DISTBP_THREADS", "SLURM_CPUS_PER_TASK"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var]), var
    return max(1, cores_available() // local_rank_count()), DEFAULT_SOURCE


DEFAULT_SOURCE = "cores / local ranks"  # what requested_threads says when nobody asked for a count


def choose_threads(explicit: int | None = None) -> tuple[int, str | None]:
    """Threads for this rank, never more than the cores it may run on, and a note when capped.

    A launcher can say more than it binds: SLURM 22.05 binds an inner `srun` to one CPU per task
    unless --cpus-per-task is on its own line, while SLURM_CPUS_PER_TASK still says the allocation's
    count. Threads beyond the affinity mask would only take turns on the same cores.
    """
    n, source = requested_threads(explicit)
    cores = cores_available()
    if n > cores:
        return cores, f"{source} asked for {n}, capped at the {cores} core(s) this rank may run on"
    return n, None


# A step of fewer floating-point operations than this runs on one thread when nobody asked for a count: there the
# second thread's wake-ups cost about what it computes. benchmarks/threads.py (2-core EPYC Zen 4), two threads
# against one, since every kernel and product has its grain (distbp.nn.grain): 64-128-10 at batch 32 (1.8 MFLOP)
# 1.08x, at 128 (7 MFLOP) 1.05x, 64-256-256-10 at 128 (65 MFLOP) 0.77x, 784-256-10 at 128 (156 MFLOP) 0.63x
# (before the grains: 1.28x, 5.75x, 1.75x, 0.70x). The bound stays at 10^8 all the same: with 2 threads by default,
# benchmarks/vs_sklearn.py's 784-256-10 batch-32 fits (39 MFLOP a step) took from 0.8x to 3.6x the 1-thread time
# in one process after scikit-learn's fits, a spread no step timing showed and not explained yet.
SMALL_STEP_FLOPS = 1e8


def step_threads(n: int, n_params: int, rows: int) -> int:
    """The threads for a step of `rows` rows through n_params parameters (about 6·n_params·rows operations): n,
    or 1 for a step below SMALL_STEP_FLOPS. Only the default thread count is lowered this way."""
    return 1 if 6 * n_params * rows < SMALL_STEP_FLOPS else n


def default_threads() -> int:
    """Threads for this rank (see choose_threads): asked for, capped at the affinity mask."""
    return choose_threads()[0]


# How long idle pool workers spin before they sleep. A worker that spins on after its own library's call
# takes the core the other library's worker needs next: the step alternates OpenBLAS's GEMMs with numba's
# kernels on the same cores.
# - libgomp (numba's threading layer 'omp', and PyTorch's): its default, 300,000 spins, kept numba's workers
#   on the core OpenBLAS's second thread needed (2 threads: 6,400 samples/s for 784-1024-1024-10). Sleeping at
#   once (OMP_WAIT_POLICY=PASSIVE, the setting until now) put a futex sleep and wake-up on every barrier of every
#   kernel. A short spin, GOMP_SPINCOUNT=1000 (microseconds), has neither cost: the 2-thread step went from
#   37.6-40.6 ms to 32.6-32.8 ms (benchmarks/step.py, two runs with each setting).
# - OpenBLAS: its workers spin 2^28 cycles (a tenth of a second) after each GEMM, so on 2 threads numba's
#   kernels right after a GEMM ran at the speed of 1 thread; with OPENBLAS_THREAD_TIMEOUT=12 (2^12 cycles)
#   the step's element-wise kernels on 2 threads went from 2.1 ms to 1.0 ms (benchmarks/step.py, run with
#   each setting). Read when OpenBLAS loads, so only before numpy is imported.
OPENMP_SPIN_COUNT = "1000"
OPENBLAS_TIMEOUT = "12"


def set_pool_waits(environ=os.environ) -> None:
    """Short spins for libgomp's and OpenBLAS's idle workers (see above), unless the user set them; must
    run before numpy (OpenBLAS) loads and numba starts its pool (importing distbp does it first)."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
    if "OPENBLAS_THREAD_TIMEOUT" not in environ and "GOTO_THREAD_TIMEOUT" not in environ:
        environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_TIMEOUT


def pin_threads_env(n: int) -> None:
    """Set the thread variables to n before numpy/scipy/numba load; if one already did, set_threads(n)."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    numba_loaded = "numba" in sys.modules
    for var in THREAD_VARS:
        # numba re-reads its config on compile and raises if NUMBA_NUM_THREADS changed
        # after its pool started, so leave that one alone once numba is loaded
        if var == "NUMBA_NUM_THREADS" and numba_loaded:
            continue
        os.environ[var] = str(n)
    if numba_loaded or "numpy" in sys.modules or "scipy" in sys.modules:
        set_threads(n)


def set_threads(n: int) -> None:
    """At run time: numba's pool (capped at NUMBA_NUM_THREADS) and every loaded BLAS get n threads."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    if "numba" in sys.modules:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    for lib, setter, _ in _loaded_blas():
        getattr(lib, setter)(ctypes.c_int(n))


def thread_setter():
    """A fast set_threads(n) bound to the BLAS libraries loaded now, for switching every step.

    set_threads looks the libraries up in /proc/self/maps each call (about 1 ms); this looks once.
    """
    import numba

    setters = [getattr(lib, setter) for lib, setter, _ in _loaded_blas()]
    cap = numba.config.NUMBA_NUM_THREADS

    def set_threads_now(n: int) -> None:
        numba.set_num_threads(min(n, cap))
        for fn in setters:
            fn(ctypes.c_int(n))
    return set_threads_now


class NumpyBlas:
    """The thread count of the BLAS that numpy's matmul calls, read and set without a lookup per call
    (ctypes calls of about 0.3 µs; see distbp.nn.grain.matmul, which runs small products on one thread)."""

    def __init__(self, lib, setter: str, getter: str):
        self.get = getattr(lib, getter)
        self.set = getattr(lib, setter)
        self.set.argtypes = [ctypes.c_int]  # set(n) with a Python int, no c_int made per call


def numpy_blas() -> NumpyBlas | None:
    """numpy's BLAS (the library mapped from numpy's own folder, numpy.libs in a wheel), or None when numpy is not
    loaded or its BLAS is none this module knows (then nobody changes its threads per call)."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if _BLAS_SEEN.get("numpy_modules") != len(sys.modules):
        here = str(Path(numpy.__file__).resolve().parent.parent)
        ours = [(lib, setter, getter) for lib, setter, getter, path in _loaded_blas(with_path=True)
                if str(Path(path).resolve()).startswith(here) and "numpy" in path]
        _BLAS_SEEN.update(numpy_modules=len(sys.modules), numpy=NumpyBlas(*ours[0]) if ours else None)
    return _BLAS_SEEN["numpy"]


def blas_threads() -> dict[str, int]:
    """Each loaded BLAS library's file name -> its current thread count."""
    return {Path(path).name: int(getattr(lib, getter)())
            for lib, _, getter, path in _loaded_blas(with_path=True)}


def _loaded_blas(with_path: bool = False) -> list[tuple]:
    """(library, setter, getter[, path]) for each BLAS mapped into this process.

    Reading /proc/self/maps costs milliseconds (7.6 ms a call measured here, most of a small partial_fit), so
    the answer is kept until a module is imported: a BLAS is mapped when numpy or SciPy (an extension module)
    loads, which adds to sys.modules first."""
    modules = len(sys.modules)
    if _BLAS_SEEN["modules"] != modules:
        _BLAS_SEEN.update(modules=modules, found=_scan_blas())
    return [entry if with_path else entry[:3] for entry in _BLAS_SEEN["found"]]


_BLAS_SEEN: dict = {"modules": -1, "found": []}  # a fact of this process, kept by _loaded_blas


def _scan_blas() -> list[tuple]:
    """(library, setter, getter, path) for each BLAS in /proc/self/maps now."""
    found = []
    for path in _mapped_libraries():
        if not BLAS_NAME.search(Path(path).name):
            continue
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        for setter, getter in BLAS_SYMBOLS:
            if hasattr(lib, setter) and hasattr(lib, getter):
                getattr(lib, getter).restype = ctypes.c_int
                found.append((lib, setter, getter, path))
                break
    return found


def _mapped_libraries() -> list[str]:
    """Shared objects mapped into this process, in load order, from /proc/self/maps."""
    paths: dict[str, None] = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and ".so" in fields[5]:
                paths.setdefault(fields[5].strip(), None)
    return list(paths)


def default_cache_dir() -> str:
    """Where Numba caches compiled kernels: NUMBA_CACHE_DIR, else the checkout's .numba_cache, else ~/.cache."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and os.access(checkout, os.W_OK):
        return str(checkout / ".numba_cache")
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache_home, "distbp", "numba")
