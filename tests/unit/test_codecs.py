"""The 16-bit codecs' kernels against their plain-numpy reference twins, bit for bit, without MPI.

bfloat16's encode/decode/decode_add/round/add are Numba kernels; `bf16_encode` / `bf16_decode` are
the numpy reference. float16 is numpy throughout; both codecs must offer the same operations.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distbp.comm.codecs import CODECS, bf16_decode, bf16_encode, codec_for

FLOATS = [np.float32, np.float64]
# the awkward values overflow float32 and cast NaNs on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in cast:RuntimeWarning")


def awkward_values(n: int, dtype, seed: int = 0) -> np.ndarray:
    """n values over the whole range of dtype, then every special case a rounding can get wrong."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-100, 100, n))
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    one, ulp = np.float32(1), np.float32(2.0 ** -7)  # spacing of bfloat16 just above 1
    f32 = np.finfo(np.float32)
    special = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0,
               f32.smallest_subnormal, -f32.smallest_subnormal, 3 * f32.smallest_subnormal, 1e-39, -2e-40,
               f32.tiny, f32.max, -f32.max, 3.39e38,                     # the last two round past bfloat16's max
               one + ulp / 2, one + 3 * ulp / 2, -(one + ulp / 2),       # ties: to even, down and up
               one + ulp / 2 + ulp / 64, one + ulp / 2 - ulp / 64]      # just above and below a tie
    x[:len(special)] = np.array(special, np.float64).astype(dtype)
    # NaNs with other payloads and signs (the bits, viewed as float32)
    nans = np.array([0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFC00000, 0x7FA00000], np.uint32).view(np.float32)
    x[len(special):len(special) + len(nans)] = nans.astype(dtype)
    return x


# ---- bfloat16: Numba kernels against the numpy twins ----------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_bf16_encode_kernel_gives_the_numpy_reference_bits(dtype):
    x = awkward_values(100_003, dtype)
    words = np.empty(x.size, np.uint16)
    codec_for("bfloat16").encode(x, words)
    assert np.array_equal(words, bf16_encode(x))


def test_bf16_decode_kernel_gives_the_reference_value_of_every_word():
    words = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)  # all 65536 of them, NaNs included
    for dtype in FLOATS:
        got = np.empty(words.size, dtype)
        codec_for("bfloat16").decode(words, got)
        want = bf16_decode(words, dtype)
        # compared as bits, so NaN payloads and signed zeros count
        assert np.array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("dtype", FLOATS)
def test_decode_add_adds_the_words_values_in_the_buffers_dtype(name, dtype):
    codec = codec_for(name)
    rng = np.random.default_rng(5)
    words = codec.empty(10_001)
    codec.encode(rng.standard_normal(words.size), words)
    x = rng.standard_normal(words.size).astype(dtype)
    values = np.empty(words.size, dtype)
    codec.decode(words, values)  # exact in either dtype
    want = x + values  # numpy adds dtype + dtype in dtype
    codec.decode_add(words, x)
    assert x.dtype == dtype and np.array_equal(x, want)


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("dtype", FLOATS)
def test_round_in_place_equals_encode_then_decode(name, dtype):
    codec = codec_for(name)
    x = awkward_values(50_001, dtype, seed=1)
    words = codec.empty(x.size)
    with np.errstate(over="ignore"):
        codec.encode(x, words)
        want = np.empty_like(x)
        codec.decode(words, want)
        codec.round(x)
    assert np.array_equal(x, want, equal_nan=True)


def test_bf16_add_kernel_equals_the_reference_sum_rounded_once():
    rng = np.random.default_rng(6)
    a = bf16_encode(awkward_values(20_000, np.float32, seed=2))
    b = bf16_encode(rng.standard_normal(a.size).astype(np.float32))
    want = bf16_encode(bf16_decode(a) + bf16_decode(b))
    codec_for("bfloat16").add(a, b)
    assert np.array_equal(b, want)


def test_float16_codec_is_numpys_float16():
    codec = codec_for("float16")
    x = np.random.default_rng(7).standard_normal(1000).astype(np.float32) * 100
    words = codec.empty(x.size)
    codec.encode(x, words)
    assert np.array_equal(words, x.astype(np.float16).view(np.uint16))
    a = words.copy()
    codec.add(a, words)
    assert np.array_equal(words, (2 * x.astype(np.float16).astype(np.float32)).astype(np.float16).view(np.uint16))


def test_bf16_kernels_give_the_same_bits_on_two_threads():
    # element-wise, so the thread count cannot matter; checked in a process whose Numba pool has 2 threads
    code = textwrap.dedent("""
        import numpy as np
        from distbp.comm.codecs import bf16_decode, bf16_encode, codec_for
        x = np.random.default_rng(3).standard_normal(300_001).astype(np.float32)
        codec, words = codec_for("bfloat16"), np.empty(x.size, np.uint16)
        codec.encode(x, words)
        y = np.ones(x.size, np.float64)
        codec.decode_add(words, y)
        assert np.array_equal(words, bf16_encode(x))
        assert np.array_equal(y, 1 + bf16_decode(words, np.float64))
        print("ok")
    """)
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2", DISTBP_THREADS="2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("name", list(CODECS))
def test_warm_up_calls_every_operation_of_a_codec(name):
    for dtype in FLOATS:
        codec_for(name).warm_up(dtype)  # raises if an operation is missing or mistyped
