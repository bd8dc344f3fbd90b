"""MPIComm and GradientReducer across ranks.

Run with 2, 3 or 4 ranks:
    mpiexec -n 3 python -m mpi4py -m pytest --with-mpi -m mpi tests/mpi/test_comm_mpi.py
"""

import numpy as np
import pytest

from distbp.comm.base import PIECE_BYTES
from distbp.comm.codecs import CODECS, bf16_decode, bf16_encode, codec_for
from distbp.comm.mpi import MPIComm
from distbp.comm.ring import ring_allreduce
from distbp.errors import ConfigMismatchError, DistbpError, DivergenceError
from distbp.sync.reducer import GradientReducer
from distbp.sync.transports import make_transport

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(scope="module")
def comm():
    return MPIComm()


def rank_array(rank: int, n: int, dtype, seed: int = 0) -> np.ndarray:
    """The array rank `rank` contributes: every rank can compute every other rank's."""
    rng = np.random.default_rng([seed, rank])
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-1000, 1000, n).astype(dtype)
    return rng.standard_normal(n).astype(dtype)


def exact_sum(size: int, n: int, dtype, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float64 sum over ranks and sum of absolute values (the scale of rounding errors)."""
    parts = [rank_array(r, n, dtype, seed).astype(np.float64) for r in range(size)]
    return np.sum(parts, axis=0), np.sum(np.abs(parts), axis=0)


def assert_sum_close(got, comm, n, dtype, ulps, seed=0):
    total, scale = exact_sum(comm.size, n, dtype, seed)
    eps = np.finfo(dtype).eps if np.issubdtype(dtype, np.floating) else 0
    assert np.all(np.abs(got.astype(np.float64) - total) <= ulps * eps * scale)


# ---- collectives ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32])
def test_allreduce_sum_equals_the_sum_of_rank_arrays(comm, dtype):
    buf = rank_array(comm.rank, 1001, dtype)
    comm.allreduce_sum(buf)
    assert buf.dtype == dtype
    assert_sum_close(buf, comm, 1001, dtype, ulps=comm.size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_allreduce_sum_of_a_buffer_bigger_than_one_piece(comm, dtype):
    n = PIECE_BYTES // np.dtype(dtype).itemsize + 12345  # two pieces, the second short
    buf = rank_array(comm.rank, n, dtype, seed=1)
    comm.allreduce_sum(buf)
    assert_sum_close(buf, comm, n, dtype, ulps=comm.size, seed=1)


def test_allreduce_sum_rejects_a_non_contiguous_buffer(comm):
    with pytest.raises(ValueError, match="contiguous"):
        comm.allreduce_sum(np.zeros((4, 4))[:, 0])


@pytest.mark.parametrize("root", [0, -1])
def test_bcast_copies_the_root_buffer_everywhere(comm, root):
    root = root % comm.size
    buf = rank_array(comm.rank, 777, np.float32)
    comm.bcast(buf, root=root)
    assert np.array_equal(buf, rank_array(root, 777, np.float32))


def test_a_subgroup_holds_the_ranks_listed_in_their_order_and_none_elsewhere(comm):
    members = [comm.size - 1, 0]  # the last rank first: the subgroup's order is the list's
    sub = comm.subgroup(members)
    if comm.rank not in members:
        assert sub is None
        return
    try:
        assert (sub.rank, sub.size) == (members.index(comm.rank), 2)
        got = np.array([float(comm.rank)])
        sub.allreduce_sum(got)  # only the members add: the ranks outside never join
        assert got[0] == comm.size - 1
    finally:
        sub.free()


def test_sum_scalars_and_max_scalar(comm):
    sums = comm.sum_scalars([1.0, comm.rank, 0.5])
    assert np.array_equal(sums, [comm.size, comm.size * (comm.size - 1) / 2, comm.size / 2])
    assert comm.max_scalar(float(comm.rank)) == comm.size - 1


# ---- agreement checks -----------------------------------------------------------------------

def test_check_agree_passes_when_all_ranks_agree(comm):
    comm.check_agree("configuration", {"lr": 0.1, "layers": [784, 1024, 10], "seed": 3})
    comm.check_agree("model", "784-1024-10 float32")


def test_check_agree_raises_on_every_rank_naming_the_rank_and_key(comm):
    last = comm.size - 1
    config = {"lr": 0.2 if comm.rank == last else 0.1, "layers": [784, 10], "seed": 3}
    with pytest.raises(ConfigMismatchError) as info:
        comm.check_agree("configuration", config)
    message = str(info.value)
    assert f"rank {last} differs from rank 0: lr: 0.1 on rank 0 vs 0.2" in message
    assert "layers" not in message and "seed" not in message
    assert ("rank 1 differs" in message) == (last == 1)


def test_check_agree_names_a_missing_key_and_differing_strings(comm):
    config = {"lr": 0.1} if comm.rank == 0 else {"lr": 0.1, "momentum": 0.9}
    with pytest.raises(ConfigMismatchError, match="momentum: <missing> on rank 0 vs 0.9"):
        comm.check_agree("configuration", config)
    with pytest.raises(ConfigMismatchError, match="'a' on rank 0 vs 'b'"):
        comm.check_agree("model", "a" if comm.rank == 0 else "b")


def test_check_identical_catches_a_one_ulp_difference_on_one_rank(comm):
    params = rank_array(0, 10_000, np.float32)
    comm.check_identical(params, step=5)
    last = comm.size - 1
    if comm.rank == last:
        params[1234] = np.nextafter(params[1234], np.float32(np.inf))
    with pytest.raises(DivergenceError, match=rf"rank {last} differ from rank 0 at step 17"):
        comm.check_identical(params, step=17)


def test_agree_on_failure_reports_one_ranks_error_on_every_rank(comm):
    exc = FileNotFoundError("data.npz") if comm.rank == 1 else None
    comm.agree_on_failure(None)
    with pytest.raises(DistbpError, match=r"^rank 1: FileNotFoundError: data\.npz$"):
        comm.agree_on_failure(exc)


def test_agree_on_failure_reports_a_shared_cause_once(comm):
    with pytest.raises(DistbpError, match=r"^all ranks: ValueError: batch size 0$"):
        comm.agree_on_failure(ValueError("batch size 0"))


def test_agree_on_failure_lists_different_causes_per_rank(comm):
    with pytest.raises(DistbpError) as info:
        comm.agree_on_failure(ValueError(f"bad shard {comm.rank}"))
    for r in range(comm.size):
        assert f"rank {r}: ValueError: bad shard {r}" in str(info.value)


# ---- gradient reducer -----------------------------------------------------------------------

LAYER_SIZES = [784 * 64 + 64, 64 * 32 + 32, 32 * 10 + 10]  # a small MLP's (dW, db) per layer


def layer_slices(sizes):
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def run_backward(reducer, grad, values):
    """Fill grad layer by layer from the last one, as backward does, with progress calls between."""
    slices = layer_slices(LAYER_SIZES)
    for layer in reversed(range(len(slices))):
        grad[slices[layer]] = values[slices[layer]]
        reducer.layer_ready(layer)
        for _ in range(3):
            np.dot(np.ones((32, 32)), np.ones((32, 32)))  # a bit of compute
            reducer.progress()
    reducer.finish()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("bucket_bytes", [1000, 64 << 10, 4 << 20])
@pytest.mark.parametrize("algorithm", ["mpi", "ring"])
def test_reducer_equals_a_plain_allreduce(comm, dtype, overlap, bucket_bytes, algorithm):
    n = sum(LAYER_SIZES)
    grad = np.zeros(n, dtype)
    reducer = GradientReducer(comm, grad, layer_slices(LAYER_SIZES), bucket_bytes, overlap,
                              transport=make_transport(algorithm, comm, n, dtype))
    for step in range(2):  # the second step checks that the reducer resets between steps
        values = rank_array(comm.rank, n, dtype, seed=step)
        run_backward(reducer, grad, values)
        plain = values.copy()
        comm.allreduce_sum(plain)
        assert_sum_close(grad, comm, n, dtype, ulps=comm.size, seed=step)
        assert np.allclose(grad, plain, rtol=0, atol=4 * comm.size * np.finfo(dtype).eps * np.abs(plain).max())
    assert reducer.stats["steps"] == 2 and reducer.stats["bytes"] == 2 * grad.nbytes
    assert reducer.stats["calls"] >= (2 * len(reducer.buckets) if overlap else 2)
    comm.check_identical(grad, step=1)  # the same bits on every rank, so parameters stay identical


# ---- distbp's ring allreduce ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 1000, 300_001])
def test_ring_allreduce_sums_any_length_to_the_same_bits_on_every_rank(comm, dtype, n):
    ring = ring_allreduce(comm, 300_001, dtype)
    buf = rank_array(comm.rank, n, dtype, seed=n)
    ring.start(buf)
    ring.wait()
    # each element is rounded once per partial sum, p-1 of them
    assert_sum_close(buf, comm, n, dtype, ulps=comm.size, seed=n)
    comm.check_identical(buf, step=0)


def test_ring_allreduce_runs_queued_buffers_in_order_with_progress_calls(comm):
    ring = ring_allreduce(comm, 50_000, np.float64)
    bufs = [rank_array(comm.rank, n, np.float64, seed=k) for k, n in enumerate([50_000, 2, 12_345, 50_000])]
    for buf in bufs:
        ring.start(buf)
        ring.progress()
    polls = 0
    while not ring.progress():
        polls += 1
        assert polls < 10**7, "the ring made no progress"
    for k, buf in enumerate(bufs):
        assert_sum_close(buf, comm, buf.size, np.float64, ulps=comm.size, seed=k)
    # its scratch holds one chunk of the largest buffer, not a copy of every buffer in flight
    assert ring.scratch.size == -(-50_000 // comm.size)


def test_ring_allreduce_refuses_a_buffer_it_was_not_built_for(comm):
    ring = ring_allreduce(comm, 100, np.float32)
    with pytest.raises(ValueError, match="at most 100 elements"):
        ring.start(np.zeros(101, np.float32))
    with pytest.raises(ValueError, match="float32"):
        ring.start(np.zeros(10, np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        ring.start(np.zeros(20, np.float32)[::2])


def test_every_rank_agrees_that_this_job_runs_on_one_node(comm):
    # the test jobs run on one machine (the multi-host tests live in test_multinode.py)
    assert comm.single_node()


# one rounding's relative error; each element is rounded on encoding (error <= u*sum|g_r|) and after each
# of at most p-1 partial sums (each <= u*sum|g_r|), so |error| <= p*u*sum|g_r| to first order (measured on
# 2^20 elements: max 1.95u with 2 ranks, 2.30u with 4, median 0.3u); 1% slack covers second-order terms.
# the compressed ring rounds once per reduce-scatter hop and once at the end: the same p roundings
COMPRESSION_REL_ERROR = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


@pytest.mark.parametrize("comm_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("algorithm", ["mpi", "ring"])
def test_compressed_reducer_is_within_its_documented_tolerance(comm, comm_dtype, overlap, algorithm):
    n = sum(LAYER_SIZES)
    grad = np.zeros(n, np.float32)
    reducer = GradientReducer(comm, grad, layer_slices(LAYER_SIZES), 64 << 10, overlap,
                              transport=make_transport(algorithm, comm, n, np.float32, comm_dtype=comm_dtype))
    values = rank_array(comm.rank, n, np.float32, seed=4)
    run_backward(reducer, grad, values)
    total, scale = exact_sum(comm.size, n, np.float32, seed=4)
    err = np.abs(grad - total) / scale
    bound = COMPRESSION_REL_ERROR[comm_dtype]
    assert err.max() <= comm.size * bound * 1.01
    assert err.max() > bound / 4  # the compression really rounded
    assert np.median(err) < bound  # typical elements see about one rounding's worth of error
    assert reducer.stats["bytes"] == n * 2
    # every rank ends with the same bits, so parameters stay identical
    comm.check_identical(grad, step=0)


# ---- the compressed ring --------------------------------------------------------------------

def round16(name: str, x: np.ndarray) -> np.ndarray:
    """x rounded to the 16-bit format by the plain-numpy reference (bf16_encode / a float16 cast)."""
    if name == "bfloat16":
        return bf16_decode(bf16_encode(x), x.dtype)
    return x.astype(np.float16).astype(x.dtype)


def ring_reference(name: str, size: int, n: int, dtype, seed: int) -> np.ndarray:
    """What the compressed ring computes, hop by hop, in numpy: chunk k (bounds n·k//p) starts on rank k
    and travels k+1, …, k+p−1 (its owner); each hop adds the next rank's values to the rounded partial
    sum, in dtype; the owner rounds the complete sum once more."""
    parts = [rank_array(r, n, dtype, seed) for r in range(size)]
    bounds = [n * k // size for k in range(size + 1)]
    out = np.empty(n, dtype)
    for k in range(size):
        lo, hi = bounds[k], bounds[k + 1]
        acc = parts[k][lo:hi].copy()
        for hop in range(1, size):
            acc = parts[(k + hop) % size][lo:hi] + round16(name, acc)
        out[lo:hi] = round16(name, acc)
    return out


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 1001, 30_001])  # uneven chunks, and buffers smaller than p
def test_compressed_ring_gives_every_rank_the_bits_of_its_numpy_twin(comm, name, dtype, n):
    ring = ring_allreduce(comm, 30_001, dtype, codec_for(name))
    buf = rank_array(comm.rank, n, dtype, seed=n)
    ring.start(buf)
    ring.wait()
    assert buf.dtype == dtype
    assert np.array_equal(buf, ring_reference(name, comm.size, n, dtype, seed=n))
    comm.check_identical(buf, step=0)  # the same bits on every rank, so parameters stay identical


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compressed_ring_error_is_within_the_documented_bound(comm, name, dtype):
    # RingAllreduce: p roundings of partial sums, |error| <= p·u·Σ|g_r| to first order; (1 + p·u) covers
    # the second-order terms (a rounding of an already rounded partial sum), the adds in dtype are far smaller
    n, p, u = 200_003, comm.size, COMPRESSION_REL_ERROR[name]
    ring = ring_allreduce(comm, n, dtype, codec_for(name))
    buf = rank_array(comm.rank, n, dtype, seed=9)
    ring.start(buf)
    ring.wait()
    total, scale = exact_sum(p, n, dtype, seed=9)
    err = np.abs(buf - total) / scale
    assert err.max() <= p * u * (1 + p * u)
    assert err.max() > u / 4  # the compression really rounded
    assert np.median(err) < u  # typical elements see about one rounding's worth of error
    assert np.array_equal(round16(name, buf), buf)  # every rank keeps values of the 16-bit format


def test_compressed_ring_runs_queued_buffers_through_one_wire_and_scratch(comm):
    ring = ring_allreduce(comm, 20_000, np.float32, codec_for("bfloat16"))
    sizes = [20_000, 2, 7_777, 20_000, 3]
    bufs = [rank_array(comm.rank, n, np.float32, seed=k) for k, n in enumerate(sizes)]
    for buf in bufs:
        ring.start(buf)
        ring.progress()
    polls = 0
    while not ring.progress():
        polls += 1
        assert polls < 10**7, "the ring made no progress"
    for k, buf in enumerate(bufs):
        assert np.array_equal(buf, ring_reference("bfloat16", comm.size, buf.size, np.float32, seed=k))
    # uint16 words: the wire holds the largest buffer, the scratch one chunk of it
    assert ring.wire.dtype == ring.scratch.dtype == np.uint16
    assert ring.wire.size == 20_000 and ring.scratch.size == -(-20_000 // comm.size)
    assert ring.nbytes == 2 * (ring.wire.size + ring.scratch.size)
