"""distbp: data-parallel backpropagation for multilayer perceptrons.

Numba-parallel kernels on every MPI rank, gradients summed with one allreduce.
Imports are lazy so that the command line can pin thread counts before numpy,
SciPy or Numba start their thread pools.
"""

from distbp.host.threads import set_pool_waits as _set_pool_waits
from distbp.version import __version__

_set_pool_waits()  # idle OpenMP and OpenBLAS workers spin briefly, then sleep: before numpy or numba start a pool

_LAZY = {
    "MLP": "distbp.nn.model",
    "GD": "distbp.nn.optim",
    "Momentum": "distbp.nn.optim",
    "Adam": "distbp.nn.optim",
    "make_optimizer": "distbp.nn.optim",
    "fit": "distbp.api",
    "KeptJob": "distbp.train.kept",
    "Config": "distbp.config",
    "DistbpError": "distbp.errors",
    "ConfigError": "distbp.errors",
    "load": ("distbp.nn.model", "load_model"),  # distbp.load(path) -> MLP
    "export_onnx": "distbp.export",  # distbp.export_onnx(model, path): needs distbp[onnx]
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name] if isinstance(_LAZY[name], tuple) else (_LAZY[name], name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'distbp' has no attribute {name!r}")
