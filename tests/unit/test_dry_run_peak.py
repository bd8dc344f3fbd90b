"""`distbp train --dry-run` says what a run allocates: its total per rank equals the peak memory a real run
adds, within 10 %, on three model sizes and optimizers (issue 27: the warm-up once made a second gradient of
the model's size, and the initial draw a float64 copy of every W, which the dry run did not count).

The peak is the process's (VmHWM) in a real `distbp train`. What every run holds whatever its model (the
interpreter, numpy, Numba, the loaded kernels, the data) is measured by a baseline run with the same data,
flags and layer count but hidden layers just wide enough (17 units) to call the same kernels; both the dry
run's figure and the peak are taken as differences to it.
"""

import os
import re
import subprocess
import sys

import pytest

DATA = "synthetic:rows=1024,features=784,classes=10,test=128"
# the peak is this process's VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (pytest's) size
MEASURE = ("import sys\n"
           "from distbp.cli import main\n"
           "sys.argv = ['distbp', *sys.argv[1:]]\n"
           "code = main()\n"
           "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
           "print('peak bytes', int(hwm.split()[1]) * 1024, flush=True)\n"
           "sys.exit(code)\n")


def train(layers: list[int], optimizer: str, *extra: str) -> str:
    """Rank 0's output of `distbp train` in one process, one thread, followed by 'peak bytes N'."""
    argv = ["train", "--data", DATA, "--layers", ",".join(map(str, layers)), "--optimizer", optimizer,
            "--epochs", "1", "--batch-size", "256", "--progress", "none", "--threads", "1", *extra]
    done = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, DISTBP_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dry_run_total(layers: list[int], optimizer: str) -> int:
    out = train(layers, optimizer, "--dry-run")
    return int(re.search(r"total .*\((\d+) bytes\)", out).group(1))


def peak(layers: list[int], optimizer: str) -> int:
    return int(re.search(r"peak bytes (\d+)", train(layers, optimizer)).group(1))


@pytest.mark.parametrize("layers, optimizer", [
    ([784, 1500, 1500, 10], "adam"),             # about 61 MiB: parameters, gradient, two moments
    ([784, 3000, 3000, 10], "momentum"),         # about 146 MiB
    ([784, 4000, 4000, 4000, 10], "gd"),         # about 297 MiB: parameters and gradient only
])
def test_the_dry_run_total_is_the_peak_a_run_adds(layers, optimizer):
    baseline = [layers[0], *[17] * (len(layers) - 2), layers[-1]]
    peak(baseline, optimizer)  # compiles (or loads) the kernels: the measured runs below only load them
    estimate = dry_run_total(layers, optimizer) - dry_run_total(baseline, optimizer)
    measured = peak(layers, optimizer) - peak(baseline, optimizer)
    assert abs(measured / estimate - 1) <= 0.10, (layers, optimizer, estimate, measured)
