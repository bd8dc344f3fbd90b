"""SerialComm semantics, gradient bucket layout and 16-bit compression, all without MPI."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from distbp.comm.codecs import bf16_decode, bf16_encode
from distbp.comm.serial import SerialComm
from distbp.errors import ConfigMismatchError, DistbpError, DivergenceError, StallError
from distbp.sync.reducer import Bucket, GradientReducer, bucket_layout
from distbp.sync.transports import make_transport
from distbp.train.watchdog import Watchdog


def layer_slices(sizes):
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


# ---- SerialComm -----------------------------------------------------------------------------

def test_serial_comm_is_rank_zero_of_one():
    comm = SerialComm()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)


def test_serial_collectives_leave_buffers_unchanged():
    comm = SerialComm()
    buf = np.arange(7, dtype=np.float32)
    comm.allreduce_sum(buf)
    comm.bcast(buf)
    comm.barrier()
    assert np.array_equal(buf, np.arange(7, dtype=np.float32))
    assert comm.max_scalar(2.5) == 2.5


def test_a_serial_subgroup_is_the_process_or_nothing():
    comm = SerialComm()
    assert comm.subgroup([0]) is comm
    assert comm.subgroup([]) is None
    with pytest.raises(ValueError, match="rank 0 only"):
        comm.subgroup([0, 1])


def test_sum_scalars_returns_float64():
    sums = SerialComm().sum_scalars([1, 2.5, 3])
    assert sums.dtype == np.float64 and np.array_equal(sums, [1.0, 2.5, 3.0])


def test_serial_checks_pass_and_failure_is_reported():
    comm = SerialComm()
    comm.check_agree("configuration", {"lr": 0.1, "layers": [784, 10]})
    comm.check_identical(np.ones(5), step=3)
    comm.agree_on_failure(None)
    with pytest.raises(DistbpError, match=r"^rank 0: FileNotFoundError: no such file data\.npz$"):
        comm.agree_on_failure(FileNotFoundError("no such file data.npz"))


def test_error_classes_are_distbp_errors():
    for cls in (ConfigMismatchError, DivergenceError, StallError):
        assert issubclass(cls, DistbpError)


def test_serial_abort_exits_with_code_and_message(capsys):
    with pytest.raises(SystemExit) as info:
        SerialComm().abort("cannot read data.npz", code=3)
    assert info.value.code == 3
    assert capsys.readouterr().err == "distbp: rank 0: cannot read data.npz\n"


# ---- bucket layout --------------------------------------------------------------------------

def test_buckets_are_whole_layers_formed_from_the_end():
    # four layers of 10, 20, 30, 40 float32 elements, buckets of at most 50 elements
    buckets = bucket_layout(layer_slices([10, 20, 30, 40]), 100, 4, 50 * 4)
    assert buckets == [Bucket(60, 100, (3,)), Bucket(10, 60, (2, 1)), Bucket(0, 10, (0,))]


def test_buckets_tile_the_gradient_in_backward_order():
    sizes = [5, 17, 3, 64, 9, 1]
    buckets = bucket_layout(layer_slices(sizes), sum(sizes), 8, 20 * 8)
    assert buckets[0].stop == sum(sizes) and buckets[-1].start == 0
    for later, earlier in zip(buckets, buckets[1:]):
        assert earlier.stop == later.start
    assert all(b.stop - b.start <= 20 for b in buckets)


def test_a_layer_bigger_than_a_bucket_is_cut_into_pieces():
    buckets = bucket_layout(layer_slices([4, 250, 6]), 260, 4, 100 * 4)
    assert buckets[0] == Bucket(254, 260, (2,))
    cut = [b for b in buckets if b.layers == (1,)]
    assert len(cut) == 3 and all(b.stop - b.start <= 100 for b in cut)
    assert cut[0].stop == 254 and cut[-1].start == 4
    assert buckets[-1] == Bucket(0, 4, (0,))


def test_one_bucket_when_everything_fits():
    assert bucket_layout(layer_slices([3, 4, 5]), 12, 4, 1 << 20) == [Bucket(0, 12, (2, 1, 0))]


@pytest.mark.parametrize("slices, n", [
    ([slice(0, 4), slice(5, 10)], 10),      # gap
    ([slice(0, 4), slice(4, 9)], 10),       # does not cover the end
    ([slice(4, 10), slice(0, 4)], 10),      # out of order
    ([slice(0, 10, 2)], 10),                # strided
])
def test_layer_slices_that_do_not_tile_the_gradient_are_rejected(slices, n):
    with pytest.raises(ValueError, match="layer_slices"):
        bucket_layout(slices, n, 4, 1024)


# ---- reducer on one rank --------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["mpi", "ring"], ids=["MPI Iallreduce", "ring"])  # an id "mpi" reads as a marker
@pytest.mark.parametrize("overlap", [True, False])
def test_serial_reducer_leaves_an_uncompressed_gradient_unchanged(overlap, algorithm):
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(1000).astype(np.float32)
    expected = grad.copy()
    reducer = GradientReducer(SerialComm(), grad, layer_slices([100, 300, 600]), bucket_bytes=256, overlap=overlap,
                              transport=make_transport(algorithm, SerialComm(), grad.size, grad.dtype))
    for layer in (2, 1, 0):
        reducer.layer_ready(layer)
        reducer.progress()
    reducer.finish()
    assert np.array_equal(grad, expected)
    assert reducer.stats["steps"] == 1 and reducer.stats["bytes"] == grad.nbytes


@pytest.mark.parametrize("algorithm", ["mpi", "ring"], ids=["MPI Iallreduce", "ring"])
def test_serial_reducer_applies_the_compression_rounding(algorithm):
    rng = np.random.default_rng(1)
    grad = rng.standard_normal(500).astype(np.float32)
    expected = bf16_decode(bf16_encode(grad))
    transport = make_transport(algorithm, SerialComm(), grad.size, grad.dtype, comm_dtype="bfloat16")
    reducer = GradientReducer(SerialComm(), grad, layer_slices([200, 300]), transport=transport)
    reducer.finish()
    assert np.array_equal(grad, expected)
    assert reducer.stats["bytes"] == grad.size * 2


@pytest.mark.parametrize("comm_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_rank_rounds_the_same_bits_through_the_ring_as_through_mpi(comm_dtype, dtype):
    # the ring encodes in place (no 16-bit copies), so one rank must still round like the MPI path does
    values = np.random.default_rng(2).standard_normal(1000).astype(dtype)
    results = []
    for algorithm in ("mpi", "ring"):
        grad = values.copy()
        transport = make_transport(algorithm, SerialComm(), grad.size, dtype, comm_dtype=comm_dtype)
        reducer = GradientReducer(SerialComm(), grad, layer_slices([100, 300, 600]), bucket_bytes=256,
                                  transport=transport)
        for layer in (2, 1, 0):
            reducer.layer_ready(layer)
            reducer.progress()
        reducer.finish()
        results.append(grad)
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[1], values)  # it did round


def test_reducer_rejects_a_layer_reported_twice_and_bad_options():
    grad = np.zeros(10, np.float32)
    reducer = GradientReducer(SerialComm(), grad, layer_slices([5, 5]))
    reducer.layer_ready(1)
    with pytest.raises(ValueError, match="twice"):
        reducer.layer_ready(1)
    with pytest.raises(ValueError, match="comm_dtype"):
        make_transport("mpi", SerialComm(), grad.size, grad.dtype, comm_dtype="int8")
    with pytest.raises(ValueError, match="flat contiguous"):
        GradientReducer(SerialComm(), np.zeros(10, np.float16), layer_slices([5, 5]))
    with pytest.raises(ValueError, match="algorithm must be"):
        make_transport("tree", SerialComm(), grad.size, grad.dtype)


# ---- bfloat16 encoding ----------------------------------------------------------------------

def test_bf16_round_trip_is_exact_for_representable_values():
    values = np.array([0.0, -0.0, 1.0, -2.5, 0.15625, 3.0e38, -1.0e-38, np.inf, -np.inf], np.float32)
    values = bf16_decode(bf16_encode(values))   # now representable
    assert np.array_equal(bf16_decode(bf16_encode(values)), values)
    assert np.array_equal(np.signbit(values), np.signbit(bf16_decode(bf16_encode(values))))


def test_bf16_rounds_to_nearest_even():
    one = np.float32(1.0)
    ulp = np.float32(2.0 ** -7)  # spacing of bfloat16 just above 1
    cases = {
        one + ulp / 2: one,                  # tie, 1.0 is even
        one + ulp + ulp / 2: one + 2 * ulp,  # tie, round up to even
        one + ulp / 2 + ulp / 64: one + ulp,  # just above the tie
        one + ulp / 2 - ulp / 64: one,        # just below the tie
    }
    for x, expected in cases.items():
        assert bf16_decode(bf16_encode(np.array([x], np.float32)))[0] == expected


def test_bf16_keeps_nan_and_overflows_to_inf():
    x = np.array([np.nan, np.float32(3.4e38)], np.float32)
    y = bf16_decode(bf16_encode(x))
    assert np.isnan(y[0]) and y[1] == np.inf


def test_bf16_relative_error_is_at_most_two_to_the_minus_eight():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(200_000) * np.exp(rng.uniform(-20, 20, 200_000))).astype(np.float32)
    rel = np.abs(bf16_decode(bf16_encode(x)) - x) / np.abs(x)
    assert rel.max() <= 2.0 ** -8
    assert 2.0 ** -10 < rel.mean() < 2.0 ** -8  # the bound is tight, not loose


def test_fp16_relative_error_is_at_most_two_to_the_minus_eleven_in_range():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(200_000) * np.exp(rng.uniform(-5, 9, 200_000))).astype(np.float32)
    x = x[(np.abs(x) > 6.2e-5) & (np.abs(x) < 65504)]  # normal float16 range
    rel = np.abs(x.astype(np.float16).astype(np.float32) - x) / np.abs(x)
    assert rel.max() <= 2.0 ** -11
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(70000).astype(np.float16))  # the overflow risk the docstring warns about


# ---- watchdog -------------------------------------------------------------------------------

def test_disabled_watchdog_starts_no_thread():
    def watchdogs() -> int:
        return sum(t.name == "distbp-watchdog" for t in threading.enumerate())

    before = watchdogs()
    enabled = Watchdog(SerialComm(), timeout=30)  # the control: an enabled one does start its thread
    assert watchdogs() == before + 1
    enabled.stop()
    dog = Watchdog(SerialComm(), timeout=0)
    with dog.section("allreduce", 1):
        assert watchdogs() == before
    dog.stop()
    assert watchdogs() == before


def test_watchdog_stays_quiet_when_sections_finish_in_time():
    dog = Watchdog(SerialComm(), timeout=0.5)
    for step in range(5):
        with dog.section("allreduce", step):
            pass
    dog.stop()


def test_watchdog_ends_a_stalled_process_with_a_message():
    script = textwrap.dedent("""
        import time
        from distbp.comm.serial import SerialComm
        from distbp.train.watchdog import Watchdog
        dog = Watchdog(SerialComm(), timeout=0.5)
        with dog.section("gradient allreduce", 7):
            time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 124
    assert ("distbp: rank 0: no progress for 0.5 s in gradient allreduce at step 7 "
            "(a peer rank is stalled or dead)") in done.stderr
