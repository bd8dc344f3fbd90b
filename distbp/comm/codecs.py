"""16-bit gradient compression: how a bucket travels when --comm-dtype is set.

A codec turns a float32/float64 bucket into 16-bit words for the wire (`encode`), turns words back
(`decode`), adds the values of received words into a float buffer (`decode_add`, in the buffer's own
dtype: what distbp's ring does at each hop), rounds a float buffer to the format in place (`round`:
encode then decode, without a wire buffer), and adds two words arrays as an MPI reduction operator
(`add`: widen to float32, add, round back, so every partial sum is rounded once). One small class
per format; `CODECS` maps the --comm-dtype names to them.

    bfloat16: upper 16 bits of float32, round to nearest even; relative error ~2^-8 per rounding,
              the same range as float32.
    float16:  relative error ~2^-11 per rounding, but values above 65504 become inf and values
              below ~6e-8 flush to zero: scale the loss if gradients are large or tiny.

bfloat16 runs in Numba kernels (`bf16_encode_into`, `bf16_decode_into`, `bf16_decode_add`,
`bf16_round`, `bf16_add`): element-wise and parallel, so their results do not depend on the thread
count. `bf16_encode` / `bf16_decode` are their plain-numpy reference twins (tests compare the bits).
float16 stays numpy: its casts through `view(np.float16)` are already vectorised.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

# ---- plain-numpy reference twins ----------------------------------------------------------------


def bf16_encode(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bits (uint16, same shape) of x: the upper 16 bits of float32 with round-to-nearest-even.

    NaN stays NaN (a quiet NaN); values that round past the largest bfloat16 become inf.
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # adding 0x7fff plus the lowest kept bit rounds the dropped 16 bits to nearest, ties to even
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    bits = rounded.astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        bits[nan] = np.uint16(0x7FC0) | (u[nan] >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
    if out is None:
        return bits
    out[...] = bits
    return out


def bf16_decode(bits: np.ndarray, dtype=np.float32) -> np.ndarray:
    """float values (dtype) of bfloat16 bits (uint16): exact, the low 16 bits of float32 are zero."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(dtype, copy=False)


# ---- Numba kernels (bfloat16) ------------------------------------------------------------------
# Numba widens every integer expression to 64 bits (uint32 + uint32 is uint64), which halves the
# vector lanes: the rounding is written as an intrinsic in 32-bit LLVM integer operations instead
# (encoding 2^19 float32 took ~240 us in int64, ~130 us so, on one thread; numpy bf16_encode ~1000 us)

@intrinsic
def _bf16_word_of_float32(typingctx, x):
    """The bfloat16 word (uint16) of the float32 x: round to nearest even, NaN a quiet NaN of x's sign."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.bitcast(args[0], i32)
        high = builder.lshr(u, ir.Constant(i32, 16))
        # adding 0x7fff plus the lowest kept bit rounds the dropped 16 bits to nearest, ties to even;
        # it wraps only for NaNs, which the select replaces
        bias = builder.add(ir.Constant(i32, 0x7FFF), builder.and_(high, ir.Constant(i32, 1)))
        rounded = builder.lshr(builder.add(u, bias), ir.Constant(i32, 16))
        nan_word = builder.or_(ir.Constant(i32, 0x7FC0), builder.and_(high, ir.Constant(i32, 0x8000)))
        is_nan = builder.icmp_unsigned(">", builder.and_(u, ir.Constant(i32, 0x7FFFFFFF)),
                                       ir.Constant(i32, 0x7F800000))
        return builder.trunc(builder.select(is_nan, nan_word, rounded), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _bf16_value(typingctx, w):
    """The float32 value of the bfloat16 word w (uint16): its bits shifted up by 16, exact."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(u, ir.FloatType())
    return types.float32(types.uint16), codegen


@njit(inline="always", cache=True)
def _bf16_word(v):
    """bfloat16 word (uint16) of the float v, first rounded to float32 like the numpy twin."""
    return _bf16_word_of_float32(np.float32(v))


@njit(parallel=True, cache=True, nogil=True)
def bf16_encode_into(x, words):
    """words (uint16, n) = bfloat16 bits of x (float32/float64, n); the same bits as bf16_encode."""
    for i in prange(x.shape[0]):
        words[i] = _bf16_word(x[i])


@njit(parallel=True, cache=True, nogil=True)
def bf16_decode_into(words, x):
    """x (float32/float64, n) = the values of the bfloat16 words (uint16, n)."""
    for i in prange(x.shape[0]):
        x[i] = _bf16_value(words[i])


@njit(parallel=True, cache=True, nogil=True)
def bf16_decode_add(words, x):
    """x (float32/float64, n) += the values of the bfloat16 words (uint16, n), added in x's dtype."""
    for i in prange(x.shape[0]):
        x[i] += _bf16_value(words[i])


@njit(parallel=True, cache=True, nogil=True)
def bf16_round(x):
    """x (float32/float64, n) = x rounded to bfloat16, in place (bf16_encode then bf16_decode)."""
    for i in prange(x.shape[0]):
        x[i] = _bf16_value(_bf16_word(x[i]))


@njit(parallel=True, cache=True, nogil=True)
def bf16_add(a, b):
    """b (uint16 words, n) = bfloat16(float32(a) + float32(b)): the MPI reduction operator."""
    for i in prange(b.shape[0]):
        b[i] = _bf16_word(_bf16_value(a[i]) + _bf16_value(b[i]))


# ---- the codecs -------------------------------------------------------------------------------


class Codec:
    """A 16-bit wire format; buffers on the wire are uint16 words."""

    name: str

    def empty(self, n: int) -> np.ndarray:
        """A wire buffer for n values."""
        return np.empty(n, np.uint16)

    def encode(self, src: np.ndarray, dst: np.ndarray) -> None:
        """dst (uint16 words, n) = src (float, n) rounded to the format."""
        raise NotImplementedError

    def decode(self, src: np.ndarray, dst: np.ndarray) -> None:
        """dst (float, n) = the values of the words src (uint16, n)."""
        raise NotImplementedError

    def decode_add(self, src: np.ndarray, dst: np.ndarray) -> None:
        """dst (float, n) += the values of the words src (uint16, n), added in dst's dtype."""
        raise NotImplementedError

    def round(self, buf: np.ndarray) -> None:
        """buf (float, n) = buf rounded to the format, in place: the same bits as encode then decode."""
        raise NotImplementedError

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """b <- round16(float32(a) + float32(b)) for word arrays a, b: the reduction operator."""
        raise NotImplementedError

    def warm_up(self, dtype) -> None:
        """Call every operation once on tiny arrays of the float dtype (compiles the Numba kernels)."""
        x, words = np.zeros(2, dtype), self.empty(2)
        self.encode(x, words)
        self.decode(words, x)
        self.decode_add(words, x)
        self.round(x)
        self.add(words, self.empty(2))


class Float16(Codec):
    name = "float16"

    def encode(self, src, dst):
        dst.view(np.float16)[...] = src

    def decode(self, src, dst):
        dst[...] = src.view(np.float16)

    def decode_add(self, src, dst):
        np.add(dst, src.view(np.float16), out=dst)  # float16 widens exactly to dst's dtype

    def round(self, buf):
        buf[...] = buf.astype(np.float16)

    def add(self, a, b):
        fb = b.view(np.float16)
        fb[...] = a.view(np.float16).astype(np.float32) + fb.astype(np.float32)


class BFloat16(Codec):
    name = "bfloat16"

    def encode(self, src, dst):
        bf16_encode_into(src, dst)

    def decode(self, src, dst):
        bf16_decode_into(src, dst)

    def decode_add(self, src, dst):
        bf16_decode_add(src, dst)

    def round(self, buf):
        bf16_round(buf)

    def add(self, a, b):
        bf16_add(a, b)


CODECS: dict[str, type[Codec]] = {"float16": Float16, "bfloat16": BFloat16}


def codec_for(name: str | None) -> Codec | None:
    """The codec of a --comm-dtype name; None sends the gradient's own dtype."""
    if name is None:
        return None
    if name not in CODECS:
        raise ValueError(f"comm_dtype must be None, {', '.join(map(repr, CODECS))}, got {name!r}")
    return CODECS[name]()
