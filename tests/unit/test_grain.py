"""Grain sizes (distbp.nn.grain): below its grain a kernel runs its serial twin, a small product runs on one BLAS
thread, and neither changes a bit: the twin computes what the parallel kernel computes, on any thread count."""

import os

import numba
import numpy as np
import pytest

from distbp.host.threads import numpy_blas, set_threads
from distbp.nn import grain, kernels, losses, optim
from distbp.nn.model import MLP

DTYPES = [np.float32, np.float64]


TEST_THREADS = int(os.environ.get("DISTBP_TEST_THREADS", "1"))  # what tests/conftest.py pinned


@pytest.fixture
def two_threads():
    """2 BLAS threads (and 2 of Numba's where the suite's pool has them)."""
    set_threads(2)
    yield
    set_threads(TEST_THREADS)


def same_bits(a, b) -> bool:
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


def layer_cases(rng, dtype, n=70, m=33, k=10):
    """(kernel, a function of k that calls it and returns its outputs) for every twinned kernel of a layer."""
    z = rng.standard_normal((n, m)).astype(dtype)
    g = rng.standard_normal((n, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    d_next, w_t = rng.standard_normal((n, k)).astype(dtype), rng.standard_normal((k, m)).astype(dtype)
    part = lambda: np.empty((-(-n // kernels.ROW_CHUNK), m), dtype)  # noqa: E731
    rows, key = np.arange(n, dtype=np.int64) + 5, np.uint64(kernels.dropout_key(3, 7, 1))
    dropout = (rows, np.int64(11), key, kernels.dropout_threshold(0.3), np.dtype(dtype).type(1 / 0.7))

    def forward(act):
        def run(kern):
            a = np.empty_like(z)
            kern(z, a, b)
            return [a]
        return kernels.bias_activation_forward_for(act), run

    def backward(act):
        def run(kern):
            d, db = np.empty_like(z), np.empty(m, dtype)
            kern(d, g, np.abs(z) / 4, db, part())
            return [d, db]
        return kernels.activation_backward_for(act), run

    def narrow(act):
        def run(kern):
            d, db = np.empty_like(z), np.empty(m, dtype)
            kern(d, d_next, w_t, np.abs(z) / 4, db, part())
            return [d, db]
        return kernels.narrow_backward_for(act), run

    def column_sum(kern):
        db = np.empty(m, dtype)
        kern(g, db, part())
        return [db]

    def dropout_forward(kern):
        out = np.empty_like(z)
        kern(out, z, *dropout)
        return [out]

    def dropout_backward(kern):
        g2 = g.copy()
        kern(g2, *dropout)
        return [g2]

    flat = z.reshape(-1)
    cases = [forward(act) for act in ("relu", "tanh", "sigmoid", "linear")]
    cases += [backward(act) for act in ("relu", "tanh", "sigmoid")]
    cases += [narrow(act) for act in ("relu", "tanh")]
    cases += [(kernels.column_sum, column_sum), (kernels.dropout_forward, dropout_forward),
              (kernels.dropout_backward, dropout_backward),
              (kernels.sum_of_squares, lambda kern: [kern(flat)]), (kernels.all_finite, lambda kern: [kern(flat)])]
    return cases


def loss_cases(rng, dtype, n=70, k=10):
    z = (rng.standard_normal((n, k)) * 3).astype(dtype)
    labels = rng.integers(0, k, n)
    targets = rng.random((n, k)).astype(dtype)
    cases = []
    for name, act in [("cross_entropy", None), ("binary_cross_entropy", None), ("mse", None), ("mse", "sigmoid"),
                      ("mse", "tanh"), ("mse", "softmax"), ("mse", "relu")]:
        loss = losses.get_loss(name, act)
        y = labels if loss.labels else (targets.round() if name == "binary_cross_entropy" else targets)

        def delta(kern, y=y):
            out, d, row = np.empty_like(z), np.empty_like(z), np.empty(n, dtype)
            kern(z, y, out, d, row)
            return [out, d, row]

        def output(kern):
            out = np.empty_like(z)
            kern(z, out)
            return [out]
        cases += [(loss.loss_delta, delta), (loss.output, output)]
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_serial_twin_computes_the_parallel_kernels_bits(dtype, two_threads):
    rng = np.random.default_rng(0)
    for kernel, run in layer_cases(rng, dtype) + loss_cases(rng, dtype):
        parallel, serial = run(kernel), run(kernel.serial)
        assert all(same_bits(p, s) for p, s in zip(parallel, serial)), kernel.py_func.__name__


def test_sized_picks_the_twin_below_the_kernels_grain_and_the_pool_from_it():
    kernel = kernels.column_sum
    assert kernel.grain == grain.SUM_GRAIN
    assert grain.sized(kernel, kernel.grain - 1) is kernel.serial
    assert grain.sized(kernel, kernel.grain) is kernel


def test_an_activation_that_takes_an_exp_gets_the_smaller_grain():
    assert kernels.bias_activation_forward_for("tanh").grain == grain.HEAVY_GRAIN
    assert kernels.bias_activation_forward_for("relu").grain == grain.LIGHT_GRAIN
    assert grain.HEAVY_GRAIN < grain.LIGHT_GRAIN


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_a_sigma_whose_float32_form_vectorises_takes_its_float32_grain_for_float32_work(name):
    kernel = kernels.bias_activation_forward_for(name)
    work = grain.VECTOR_HEAVY_GRAIN - 1
    assert grain.HEAVY_GRAIN <= work
    assert grain.sized(kernel, work, np.dtype(np.float32)) is kernel.serial
    assert grain.sized(kernel, work, np.dtype(np.float64)) is kernel  # np.tanh and np.exp stay scalar in float64
    assert grain.sized(kernel, work) is kernel
    assert grain.sized(kernel, grain.VECTOR_HEAVY_GRAIN, np.dtype(np.float32)) is kernel


def test_the_twin_is_cached_apart_from_the_parallel_kernel():
    # numba's disk cache keys a function by its qualified name: one name for both would load one's code for the other
    kernel = kernels.column_sum
    assert kernel.serial.py_func.__qualname__ != kernel.py_func.__qualname__
    assert kernel.serial.py_func.__code__ is kernel.py_func.__code__
    assert kernel.targetoptions.get("parallel") and not kernel.serial.targetoptions.get("parallel")


class BlasThreadsSeen:
    """Stands in for numpy inside distbp.nn.grain: records numpy's BLAS threads during each product."""

    def __init__(self):
        self.seen = []

    def matmul(self, a, b, out):
        self.seen.append(numpy_blas().get())
        return np.matmul(a, b, out=out)


@pytest.mark.skipif(numpy_blas() is None, reason="numpy's BLAS is none distbp sets threads of")
def test_a_small_product_runs_on_one_blas_thread_and_the_count_comes_back(two_threads, monkeypatch):
    spy = BlasThreadsSeen()
    monkeypatch.setattr(grain, "np", spy)
    rng = np.random.default_rng(1)
    small = rng.standard_normal((32, 64)), rng.standard_normal((64, 128))  # 262,144 multiply-adds
    large = rng.standard_normal((64, 256)), rng.standard_normal((256, grain.PRODUCT_GRAIN // (64 * 256)))
    for a, b in (small, large):
        out = np.empty((a.shape[0], b.shape[1]))
        grain.matmul(a, b, out)
        assert np.array_equal(out, a @ b)
    assert spy.seen == [1, 2]
    assert numpy_blas().get() == 2


@pytest.mark.skipif(numpy_blas() is None, reason="numpy's BLAS is none distbp sets threads of")
def test_a_pass_of_small_products_lowers_the_blas_threads_once_and_gives_them_back(two_threads):
    restore = grain.lower_blas(grain.PRODUCT_GRAIN - 1)
    assert restore == 2 and numpy_blas().get() == 1
    grain.restore_blas(restore)
    assert numpy_blas().get() == 2
    assert grain.lower_blas(grain.PRODUCT_GRAIN) == 0 and numpy_blas().get() == 2
    model = MLP([20, 40, 5], "relu", "cross_entropy", "float32", seed=0)
    model.loss_and_grad_into(np.zeros((8, 20), np.float32), np.zeros(8, np.int64), np.zeros(model.n_params, np.float32))
    assert numpy_blas().get() == 2


@pytest.mark.parametrize("update", ["adam_update", "momentum_update", "lamb_update"])
def test_a_small_update_runs_the_serial_twin_and_gives_the_parallel_kernels_bits(two_threads, update):
    kernel = getattr(optim, update)
    rng = np.random.default_rng(3)
    t = np.float32
    n = 1000
    arrays = {"adam_update": 4, "momentum_update": 3, "lamb_update": 3}[update]
    first = [rng.standard_normal(n).astype(t) for _ in range(arrays)]
    first[-1] = np.abs(first[-1]) if update != "momentum_update" else first[-1]  # Adam's/LAMB's v ≥ 0
    second = [a.copy() for a in first]
    coefs = {"adam_update": (t(1e-3), t(0.5), t(0.9), t(0.999), t(1e-8)),
             "momentum_update": (t(1e-2), t(0.5), t(0.9)),
             "lamb_update": (np.array([0.01, 0.02], t), t(1.1), t(1e-6),
                             np.array([[0, 600, 0, 1], [600, n, 1, 0]], np.int64), t(0.01))}[update]
    assert grain.sized(kernel, n) is kernel.serial
    assert kernel.serial is not kernel and "parallel" not in kernel.serial.targetoptions
    kernel(*first, *coefs)
    kernel.serial(*second, *coefs)
    assert all(same_bits(a, b) for a, b in zip(first, second))


def test_compile_twins_readies_the_other_twin_for_the_types_called():
    x = np.zeros(5, np.int16)  # a type no other test calls all_finite with
    kernels.all_finite.serial(x)
    assert not any(sig[0].dtype == numba.int16 for sig in kernels.all_finite.signatures)
    assert grain.compile_twins() >= 1
    assert any(sig[0].dtype == numba.int16 for sig in kernels.all_finite.signatures)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_small_step_gives_the_same_bits_on_one_and_two_threads(dtype):
    """Below every grain a step runs its kernels' twins and single-threaded products: the thread count cannot
    change its bits (on some CPUs OpenBLAS's own split of a product did)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((48, 20)).astype(dtype)
    y = rng.integers(0, 5, 48)
    grads = []
    for threads in (1, 2):
        set_threads(threads)
        model = MLP([20, 40, 30, 5], "tanh", "cross_entropy", dtype, seed=4)
        grad = np.zeros(model.n_params, dtype)
        model.loss_and_grad_into(X, y, grad)
        grads.append(grad)
    set_threads(TEST_THREADS)
    assert same_bits(grads[0], grads[1])
