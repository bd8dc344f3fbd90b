"""Each dense layer's forward and backward function against its plain-numpy twin (tests/helpers/reference.py)."""

import numpy as np
import pytest

from distbp import MLP
from distbp.nn import kernels, layers
from distbp.nn.activations import ACTIVATIONS
from tests.helpers import reference

TOL = dict(rtol=1e-12, atol=1e-13)  # float64 throughout: only the order of the sums differs


class CountingHooks:
    def __init__(self):
        self.calls = []

    def layer_ready(self, layer):
        self.calls.append(("layer_ready", layer))

    def progress(self):
        self.calls.append(("progress",))


def scratch(n, m):
    """The column sums' scratch for n rows of m columns."""
    return np.empty((-(-n // kernels.ROW_CHUNK), m))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_dense_forward_is_the_product_then_the_biased_activation(name):
    rng = np.random.default_rng(0)
    n, fan_in, fan_out = 37, 20, 30
    a_in, W, b = rng.standard_normal((n, fan_in)), rng.standard_normal((fan_in, fan_out)), rng.standard_normal(fan_out)
    z, a_out = np.empty((n, fan_out)), np.empty((n, fan_out))
    layers.dense_forward(z, a_out, a_in, W, b, kernels.bias_activation_forward_for(name))
    z_ref, a_ref = reference.dense_forward(a_in, W, b, name)
    np.testing.assert_allclose(z, z_ref, **TOL)
    np.testing.assert_allclose(a_out, a_ref, **TOL)
    # the output layer's way: a_out is z itself, and only the bias is added
    layers.dense_forward(z, z, a_in, W, b, kernels.bias_activation_forward_for("linear"))
    np.testing.assert_allclose(z, z_ref + b, **TOL)


def test_weight_and_bias_gradients_are_a_transposed_delta_and_the_column_sums():
    rng = np.random.default_rng(1)
    n, fan_in, fan_out = 45, 12, 9  # rows not a multiple of the row chunk
    a, delta = rng.standard_normal((n, fan_in)), rng.standard_normal((n, fan_out))
    dW, db = np.empty((fan_in, fan_out)), np.empty(fan_out)
    layers.weight_gradient(dW, a, delta)
    layers.bias_gradient(db, delta, scratch(n, fan_out))
    np.testing.assert_allclose(dW, reference.weight_gradient(a, delta), **TOL)
    np.testing.assert_allclose(db, reference.bias_gradient(delta), **TOL)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("chunks", [1, 3])
def test_dense_backward_is_the_layer_belows_delta_and_bias_gradient(name, chunks):
    rng = np.random.default_rng(2)
    n, fan_in, fan_out = 45, 30, 20
    z_in = rng.standard_normal((n, fan_in)) + (0.05 if name == "relu" else 0.0)
    a_in = reference.ACT[name][0](z_in)
    delta, W = rng.standard_normal((n, fan_out)), rng.standard_normal((fan_in, fan_out))
    delta_in, db_in, hooks = np.empty((n, fan_in)), np.empty(fan_in), CountingHooks()
    layers.dense_backward(delta_in, db_in, delta, W, a_in, kernels.activation_backward_for(name),
                          np.empty((n, fan_in)), scratch(n, fan_in), hooks, chunks)
    delta_ref, db_ref = reference.dense_backward(delta, W, z_in, name)
    np.testing.assert_allclose(delta_in, delta_ref, **TOL)
    np.testing.assert_allclose(db_in, db_ref, **TOL)
    assert hooks.calls == [("progress",)] * chunks  # one call after each row chunk of δ·Wᵀ


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_narrow_dense_backward_computes_what_dense_backward_does_and_reports_progress_once(name):
    rng = np.random.default_rng(3)
    n, fan_in, fan_out = 45, 30, kernels.NARROW_WIDTH
    z_in = rng.standard_normal((n, fan_in)) + (0.05 if name == "relu" else 0.0)
    a_in = reference.ACT[name][0](z_in)
    delta, W = rng.standard_normal((n, fan_out)), rng.standard_normal((fan_in, fan_out))
    delta_in, db_in, hooks = np.empty((n, fan_in)), np.empty(fan_in), CountingHooks()
    layers.narrow_dense_backward(delta_in, db_in, delta, W, a_in, kernels.narrow_backward_for(name),
                                 np.empty((fan_out, fan_in)), scratch(n, fan_in), hooks)
    delta_ref, db_ref = reference.dense_backward(delta, W, z_in, name)
    np.testing.assert_allclose(delta_in, delta_ref, **TOL)
    np.testing.assert_allclose(db_in, db_ref, **TOL)
    assert hooks.calls == [("progress",)]


@pytest.mark.parametrize("sizes", [[6, 40, 30, 5], [6, 40, 30, 20]], ids=["narrow output", "wide output"])
def test_the_backward_pass_reports_each_layer_from_the_output_down_with_progress_in_between(sizes):
    model = MLP(sizes, dtype="float64", seed=1)
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((33, sizes[0])), rng.integers(0, sizes[-1], 33)
    hooks = CountingHooks()
    model.loss_and_grad_into(X, y, np.empty(model.n_params), hooks=hooks, progress_chunks=2)
    narrow = sizes[-1] <= kernels.NARROW_WIDTH
    below_output = [("progress",)] if narrow else [("progress",)] * 2
    assert hooks.calls == [("layer_ready", 2), *below_output, ("layer_ready", 1), ("progress",), ("progress",),
                           ("layer_ready", 0)]


def test_the_workspace_names_delta_for_the_z_buffers_it_overwrites():
    ws = MLP([6, 40, 30, 5]).new_workspace(8)
    assert ws.delta is ws.z  # the same buffers: δ costs no memory of its own
