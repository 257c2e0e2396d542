"""Values without block scales: raw float32, bf16 / fp16 bit patterns, plain FP8 codes.

Encoding hands back arrays the message framing sends as they are (no copy of the bytes);
decoding reads the received bytes in place and writes each float32 result once.
"""

from __future__ import annotations

import numpy as np
import torch

from quant import parallel
from quant.bitpack import pack_into, packed_size, unpack_array
from quant.block_payload import PIECE_VALUES, BlockLayout
from quant.constants import NEAREST_EVEN, STOCHASTIC, FormatSpec
from quant.element_codes import code_bits, from_codes, to_codes
from quant.errors import PayloadError
from quant.formats import fake_quantize, native_cast
from quant.uniforms import Uniforms


def encode_plain(
    values: torch.Tensor,
    fmt: FormatSpec | None,
    *,
    stochastic: bool,
    generator: torch.Generator | None,
) -> np.ndarray:
    """The payload of a 1-D float32 vector in ``fmt`` (None: float32 as it is).

    bf16 / fp16: their little-endian 16-bit patterns; plain FP8: one code byte each.
    """
    if fmt is None:
        return little_endian(values.numpy())
    rounding = STOCHASTIC if stochastic else NEAREST_EVEN
    if fmt.torch_dtype is not None:
        if stochastic:
            rounded = fake_quantize(values, fmt.name, rounding=rounding, generator=generator)
            narrow = rounded.to(fmt.torch_dtype)
        else:
            narrow = native_cast(values, fmt.name)
        return little_endian(narrow.view(torch.int16).numpy())
    bits = code_bits(fmt)
    payload = np.empty(packed_size(values.numel(), bits), dtype=np.uint8)
    uniforms = Uniforms.from_generator(generator) if stochastic else None

    for piece in BlockLayout(1, values.numel(), 1).pieces():  # one row: columns only
        part = values[piece.col : piece.col_end]
        rounded = fake_quantize(
            part,
            fmt.name,
            rounding=rounding,
            uniforms=None if uniforms is None else uniforms.at(piece.col),
        )
        codes = to_codes(rounded, fmt, overwrite=True)
        offset = packed_size(piece.col, bits)
        pack_into(codes, bits, payload[offset : offset + packed_size(codes.size, bits)])
    return payload


def decode_plain(payload: memoryview, fmt: FormatSpec | None, count: int) -> torch.Tensor:
    """The ``count`` float32 values of `encode_plain`'s payload (not checked for finiteness).

    Raises:
        PayloadError: a payload of the wrong length, or a code that is no finite value.
    """
    if fmt is None:
        _expect_length(payload, 4 * count)
        return torch.from_numpy(_copied(np.frombuffer(payload, "<f4")))
    if fmt.torch_dtype is not None:
        _expect_length(payload, 2 * count)
        return torch.from_numpy(_widen(np.frombuffer(payload, "<u2"), fmt.torch_dtype))
    codes = unpack_array(np.frombuffer(payload, np.uint8), code_bits(fmt), count)
    return from_codes(codes, fmt)


def little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` in little-endian byte order (a no-op view on little-endian machines)."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _expect_length(payload: memoryview, expected: int) -> None:
    if len(payload) != expected:
        raise PayloadError(f"payload has {len(payload)} bytes, expected {expected}")


def _widen(words: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """float32 values of 16-bit patterns (uint16, read-only) of bf16 or fp16."""
    out = np.empty(words.size, dtype=np.float32)
    if dtype == torch.bfloat16:  # bf16 is float32's top half

        def widen(start: int, end: int) -> None:
            bits = out[start:end].view(np.uint32)
            np.left_shift(words[start:end], 16, out=bits, dtype=np.uint32)

        parallel.for_spans(words.size, widen)
        return out
    # numpy's fp16 conversion is scalar; torch's is vectorized but wants writable memory
    for first in range(0, words.size, PIECE_VALUES):
        half = torch.from_numpy(words[first : first + PIECE_VALUES].view(np.int16).copy())
        torch.from_numpy(out[first : first + half.numel()]).copy_(half.view(torch.float16))
    return out


def _copied(values: np.ndarray) -> np.ndarray:
    """A writable native float32 copy of received values, copied on the pool's threads."""
    out = np.empty(values.size, dtype=np.float32)
    parallel.for_spans(values.size, lambda start, end: np.copyto(out[start:end], values[start:end]))
    return out
