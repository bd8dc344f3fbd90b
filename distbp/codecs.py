"""16-bit gradient compression: how a bucket travels when --comm-dtype is set.

A codec turns a float32/float64 bucket into 16-bit words for the wire (`encode`), adds two words
arrays as the reduction operator (`add`: widen to float32, add, round back, so every partial sum is
rounded once), and turns the summed words back (`decode`). One small class per format; `CODECS`
maps the --comm-dtype names to them.

    bfloat16: upper 16 bits of float32, round to nearest even; relative error ~2^-8 per rounding,
              the same range as float32.
    float16:  relative error ~2^-11 per rounding, but values above 65504 become inf and values
              below ~6e-8 flush to zero: scale the loss if gradients are large or tiny.
"""

from __future__ import annotations

import numpy as np


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

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """b <- round16(float32(a) + float32(b)) for word arrays a, b: the reduction operator."""
        raise NotImplementedError


class Float16(Codec):
    name = "float16"

    def encode(self, src, dst):
        dst.view(np.float16)[...] = src

    def decode(self, src, dst):
        dst[...] = src.view(np.float16)

    def add(self, a, b):
        fb = b.view(np.float16)
        fb[...] = a.view(np.float16).astype(np.float32) + fb.astype(np.float32)


class BFloat16(Codec):
    name = "bfloat16"

    def encode(self, src, dst):
        bf16_encode(src, out=dst)

    def decode(self, src, dst):
        dst[...] = bf16_decode(src)

    def add(self, a, b):
        bf16_encode(bf16_decode(a) + bf16_decode(b), out=b)


CODECS: dict[str, type[Codec]] = {"float16": Float16, "bfloat16": BFloat16}


def codec_for(name: str | None) -> Codec | None:
    """The codec of a --comm-dtype name; None sends the gradient's own dtype."""
    if name is None:
        return None
    if name not in CODECS:
        raise ValueError(f"comm_dtype must be None, {', '.join(map(repr, CODECS))}, got {name!r}")
    return CODECS[name]()
