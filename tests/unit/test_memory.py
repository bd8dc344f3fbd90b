"""The memory estimate matches the buffers a run really allocates."""

import pytest

from distbp import units
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.train import loop
from distbp.train.setup import setup
from tests.helpers import memcheck


@pytest.mark.parametrize("optimizer,accumulate,layers", [
    ("gd", 1, [12, 9, 7, 3]),  # every δ·Wᵀ narrow (kernels.narrow_backward): no BLAS scratch g
    ("adam", 1, [12, 20, 18, 3]),  # layer 1 wide: g holds its δ·Wᵀ
    ("momentum", 3, [12, 9, 7, 3]),
])
def test_estimate_equals_the_allocated_buffers(optimizer, accumulate, layers):
    cfg = validate(Config(data="synthetic:rows=200,features=12,classes=3,test=20", layers=layers,
                          batch_size=40, optimizer=optimizer, accumulate=accumulate, epochs=1, progress="none",
                          timeout=0))
    run = setup(cfg, SerialComm())
    loop.fit(run)
    run.watchdog.stop()
    ws = run.model._ws
    allocated = {
        "parameters": run.model.flat_params.nbytes,
        "gradients": run.sync.grad.nbytes + (run.sync.acc.nbytes if run.sync.acc is not None else 0),
        "optimizer_state": sum(a.nbytes for a in run.sync.optimizer.state_arrays().values()),
        "activations": memcheck.allocated_bytes(ws),  # z, a, g, row losses, db partials, narrow Wᵀ
        "batch_buffers": run.batch.X.nbytes + run.batch.y.nbytes,
    }
    est = memcheck.per_rank_bytes(cfg.layers, cfg.dtype, cfg.batch_size, 1, optimizer, False, accumulate)
    for key, value in allocated.items():
        assert est[key] == value, key


def test_one_rank_has_no_allreduce_scratch_and_more_ranks_share_the_largest_bucket():
    layers = [784, 1024, 1024, 10]
    assert memcheck.per_rank_bytes(layers, "float32", 512, 1, ring_bucket_bytes=4 << 20)["allreduce_scratch"] == 0
    assert memcheck.per_rank_bytes(layers, "float32", 512, 4, ring_bucket_bytes=0)["allreduce_scratch"] == 0
    two = memcheck.per_rank_bytes(layers, "float32", 512, 2, ring_bucket_bytes=4 << 20)["allreduce_scratch"]
    four = memcheck.per_rank_bytes(layers, "float32", 512, 4, ring_bucket_bytes=4 << 20)["allreduce_scratch"]
    assert 0 < four < two <= 2 << 20  # half a 4 MiB bucket at most


def test_sharding_divides_optimizer_state_by_the_rank_count():
    plain = memcheck.per_rank_bytes([784, 1024, 10], "float32", 512, 4, "adam", False)
    sharded = memcheck.per_rank_bytes([784, 1024, 10], "float32", 512, 4, "adam", True)
    assert sharded["optimizer_state"] == pytest.approx(plain["optimizer_state"] / 4, rel=1e-5)


def test_accumulation_divides_activation_memory():
    one = memcheck.per_rank_bytes([784, 1024, 10], "float32", 512, 1, accumulate=1)
    four = memcheck.per_rank_bytes([784, 1024, 10], "float32", 512, 1, accumulate=4)
    w_t = 10 * 1024 * 4  # the narrow output layer's contiguous Wᵀ (kernels.narrow_backward): not per row
    assert (four["activations"] - w_t) * 4 == one["activations"] - w_t


def test_largest_batch_fits_and_one_more_row_does_not():
    layers, budget = [784, 1024, 1024, 10], 64 << 20
    rows = memcheck.largest_batch_per_rank(budget, layers, "float32", 1, optimizer="adam")
    assert memcheck.per_rank_bytes(layers, "float32", rows, 1, "adam")["total"] <= budget
    assert memcheck.per_rank_bytes(layers, "float32", rows + 1, 1, "adam")["total"] > budget


@pytest.mark.parametrize("text,value", [("8GiB", 8 << 30), ("512MB", 512_000_000), ("1e9", 10**9)])
def test_memory_sizes_parse(text, value):
    assert units.parse_bytes(text) == value


def test_a_nonsense_memory_size_is_a_clear_error():
    with pytest.raises(ValueError, match="memory size"):
        units.parse_bytes("lots")
