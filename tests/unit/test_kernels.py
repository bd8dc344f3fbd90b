"""Each fast kernel against its plain-numpy twin (optim's layer norms too), and the float32 exp and tanh against
numpy's."""

import numpy as np
import pytest
from numba import njit

from distbp.nn import kernels, optim
from distbp.nn.activations import ACTIVATIONS, exp_f32, tanh_f32
from tests.helpers import reference
from tests.helpers.reference import ACT


def elementwise(fn):
    """x (n,) → fn applied to each element inside a Numba loop, as the kernels inline it."""
    @njit
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    def run(x):
        out = np.empty_like(x)
        apply(x, out)
        return out
    return run


exp32, tanh32 = elementwise(exp_f32), elementwise(tanh_f32)


def test_float32_exp_is_within_two_ulp_of_the_exact_value():
    x = np.linspace(-87.3, 88.7, 2_000_003, dtype=np.float32)  # results are normal float32 numbers
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(exp32(x).astype(np.float64) - exact) / exact
    assert rel.max() < 2 * 2.0 ** -23  # an ulp is at most 2^-23 relative


def test_float32_exp_of_subnormal_results_is_off_by_at_most_two_of_the_smallest_steps():
    x = np.linspace(-103, -87.4, 100_001, dtype=np.float32)
    err = np.abs(exp32(x).astype(np.float64) - np.exp(x.astype(np.float64)))
    assert err.max() <= 2 * 2.0 ** -149


def test_float32_exp_overflows_underflows_and_propagates_nan_like_numpy():
    x = np.array([100.0, 89.0, -110.0, -200.0, np.inf, -np.inf, np.nan, 0.0], np.float32)
    with np.errstate(over="ignore"):
        expected = np.exp(x)
    got = exp32(x)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert got[2] == 0 and got[3] == 0 and got[5] == 0 and got[7] == 1


def ulps_from_rounded(got, exact):
    """|got − exact rounded to float32| in float32 steps (same-signed finite values)."""
    rounded = exact.astype(np.float32)
    return np.abs(got.view(np.int32).astype(np.int64) - rounded.view(np.int32).astype(np.int64))


def test_float32_tanh_is_within_two_ulp_of_the_rounded_value():
    # both branches (|x| < 0.625 by the polynomial, above by exp), the switch, tiny values and the flat tails
    x = np.concatenate([np.linspace(-12, 12, 2_000_001, dtype=np.float32),
                        np.geomspace(1e-38, 1, 100_001, dtype=np.float32),
                        np.nextafter(np.float32(0.625), np.float32([0, 1]))])
    x = np.concatenate([x, -x])
    assert ulps_from_rounded(tanh32(x), np.tanh(x.astype(np.float64))).max() <= 2


def test_float32_tanh_saturates_keeps_the_sign_of_zero_and_propagates_nan():
    x = np.array([44.0, 100.0, np.inf, -50.0, -np.inf, 0.0, -0.0, np.nan, 1e-45, -1e-45], np.float32)
    got = tanh32(x)
    np.testing.assert_array_equal(got[:5], [1, 1, 1, -1, -1])
    np.testing.assert_array_equal(np.signbit(got[5:7]), [False, True])
    assert got[5] == 0 and got[6] == 0 and np.isnan(got[7])
    np.testing.assert_array_equal(got[8:], x[8:])  # tanh(x) = x below float32's resolution


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_activation_forward_matches_numpy(name, dtype):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((37, 70)) * 3).astype(dtype)
    b = rng.standard_normal(70).astype(dtype)
    a = np.empty_like(z)
    before = z.copy()
    kernels.bias_activation_forward_for(name)(z, a, b)
    np.testing.assert_array_equal(z, before)  # z + b is not stored: the backward pass needs only a
    tol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(a, ACT[name][0]((z + b).astype(np.float64)), rtol=tol, atol=tol)
    in_place = z.copy()
    kernels.bias_activation_forward_for(name)(in_place, in_place, b)  # the output layer's way
    np.testing.assert_array_equal(in_place, a)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_backward_matches_numpy_and_sums_db(name):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((45, 33))  # rows not a multiple of the row chunk
    a = ACT[name][0](z)
    g = rng.standard_normal((45, 33))
    delta, db = np.empty_like(z), np.empty(33)
    kernels.activation_backward_for(name)(delta, g, a, db, np.empty((3, 40)))
    expected = g * ACT[name][1](z)
    np.testing.assert_allclose(delta, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(db, expected.sum(axis=0), rtol=1e-12, atol=1e-13)


def test_column_sum_and_ordered_sum_match_numpy():
    x = np.random.default_rng(2).standard_normal((50, 7))
    db = np.empty(7)
    kernels.column_sum(x, db, np.empty((4, 7)))
    np.testing.assert_allclose(db, x.sum(axis=0), rtol=1e-12)
    assert kernels.ordered_sum(x[:, 0]) == pytest.approx(x[:, 0].sum(), rel=1e-12)


def test_all_finite_finds_a_single_nan_or_inf():
    x = np.zeros(1000, np.float32)
    assert kernels.all_finite(x)
    x[999] = np.nan
    assert not kernels.all_finite(x)
    x[999] = -np.inf
    assert not kernels.all_finite(x)


def test_correct_counts_match_numpy_argmax_including_ties():
    rng = np.random.default_rng(3)
    out = rng.integers(0, 3, (200, 4)).astype(np.float32)  # many ties
    labels = rng.integers(0, 4, 200)
    assert kernels.count_correct(out, labels) == np.count_nonzero(out.argmax(axis=1) == labels)
    onehot = np.eye(4)[labels]
    assert kernels.count_correct_onehot(out, onehot) == np.count_nonzero(out.argmax(axis=1) == labels)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_narrow_backward_is_the_product_the_derivative_and_db_in_one_pass(name):
    rng = np.random.default_rng(4)
    n, m, k = 45, 70, 10  # rows not a multiple of the row chunk; k as a classifier's output layer
    a = ACT[name][0](rng.standard_normal((n, m)))
    d_next, W = rng.standard_normal((n, k)), rng.standard_normal((m, k))
    delta, db = np.empty((n, m)), np.empty(m)
    kernels.narrow_backward_for(name)(delta, d_next, np.ascontiguousarray(W.T), a, db, np.empty((3, m)))
    expected = (d_next @ W.T) * ACT[name][1](np.log(a / (1 - a)) if name == "sigmoid" else
                                             np.arctanh(a) if name == "tanh" else a)
    np.testing.assert_allclose(delta, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(db, expected.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_narrow_backward_rows_do_not_depend_on_threads_or_on_the_rows_beside_them():
    import numba

    rng = np.random.default_rng(5)
    n, m, k = 100, 300, 7
    a = rng.random((n, m)).astype(np.float32)
    d_next = rng.standard_normal((n, k)).astype(np.float32)
    w_t = rng.standard_normal((k, m)).astype(np.float32)
    narrow = kernels.narrow_backward_for("sigmoid")

    def rows(lo, hi, threads):
        delta, db = np.empty((hi - lo, m), np.float32), np.empty(m, np.float32)
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            narrow(delta, d_next[lo:hi].copy(), w_t, a[lo:hi].copy(), db, np.empty((8, m), np.float32))
        finally:
            numba.set_num_threads(before)
        return delta

    whole = rows(0, n, 2)
    np.testing.assert_array_equal(rows(0, n, 1), whole)
    np.testing.assert_array_equal(np.vstack([rows(0, 33, 1), rows(33, n, 2)]), whole)  # a split of the rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lars_and_lamb_layer_norms_match_numpy_on_a_range_that_cuts_through_layers(dtype):
    sizes, lo, hi = [300, 40, 30, 10], 5000, 13000  # cuts layer 0's W and ends in layer 1's W
    segs = optim.segments_of(sizes, lo, hi)
    table = segs.table(decay_biases=False)
    layer_of = np.concatenate([np.full(b - a, layer) for a, b, layer, _ in segs.pieces])
    decayed = np.concatenate([np.full(b - a, not bias) for a, b, _, bias in segs.pieces])
    rng = np.random.default_rng(6)
    theta, grad = rng.standard_normal(hi - lo).astype(dtype), rng.standard_normal(hi - lo).astype(dtype)
    t = np.dtype(dtype).type
    scale, lam = 0.5, 0.01
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)

    sums = np.zeros((segs.n_layers, 2))
    optim.lars_norms(sums, theta, (grad,), (t(scale),), table, t(lam))
    u = scale * grad.astype(np.float64) + lam * decayed * theta.astype(np.float64)
    np.testing.assert_allclose(sums, reference.layer_sums_of_squares(theta, u, layer_of, segs.n_layers), **tol)

    m, v = rng.standard_normal(hi - lo).astype(dtype), rng.random(hi - lo).astype(dtype)
    beta1, beta2, corr, eps_t = 0.9, 0.999, 0.3, 1e-6
    m_ref, v_ref, r = reference.lamb_direction(m.astype(np.float64), v.astype(np.float64),
                                               scale * grad.astype(np.float64), theta.astype(np.float64),
                                               beta1, beta2, corr, eps_t, lam * decayed)
    sums = np.zeros((segs.n_layers, 2))
    optim.lamb_norms(sums, theta, (grad, m, v), (t(scale), t(beta1), t(beta2), t(corr), t(eps_t)), table, t(lam))
    np.testing.assert_allclose(m, m_ref, **tol)  # the moments are updated in the same pass
    np.testing.assert_allclose(v, v_ref, **tol)
    np.testing.assert_allclose(sums, reference.layer_sums_of_squares(theta, r, layer_of, segs.n_layers), **tol)
