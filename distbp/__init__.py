"""distbp: data-parallel backpropagation for multilayer perceptrons.

Numba-parallel kernels on every MPI rank, gradients summed with one allreduce.
Imports are lazy so that the command line can pin thread counts before numpy,
SciPy or Numba start their thread pools.
"""

from distbp.threads import set_pool_waits as _set_pool_waits

_set_pool_waits()  # idle OpenMP and OpenBLAS workers spin briefly, then sleep: before numpy or numba start a pool

__version__ = "0.1.0"

_LAZY = {
    "MLP": "distbp.model",
    "GD": "distbp.optim",
    "Momentum": "distbp.optim",
    "Adam": "distbp.optim",
    "make_optimizer": "distbp.optim",
    "fit": "distbp.api",
    "Config": "distbp.config",
    "DistbpError": "distbp.errors",
    "ConfigError": "distbp.errors",
    "load": ("distbp.modelfile", "load_model"),  # distbp.load(path) -> MLP
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name] if isinstance(_LAZY[name], tuple) else (_LAZY[name], name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'distbp' has no attribute {name!r}")
