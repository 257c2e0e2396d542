"""Unsigned LEB128 varints of many values at once, vectorized with numpy.

A value is written 7 bits per byte, the lowest group first, with the high bit (0x80) set on
every byte but its last; at most :data:`MAX_VARINT_BYTES` bytes, in minimal form. The index
streams of sparsified tensors (:mod:`quant.index_coding`) and the frequency tables of the
entropy coder (:mod:`quant.entropy_coding`) are sequences of such varints.
"""

from __future__ import annotations

import numpy as np

from quant.errors import PayloadError

MAX_VARINT_BYTES = 10
"""Longest varint accepted, in bytes: 10 x 7 bits hold any 64-bit value."""

# 2**7, 2**14, ..., 2**63: a value needs k + 1 bytes iff it is >= the first k thresholds.
_VARINT_THRESHOLDS = np.array([1 << (7 * k) for k in range(1, MAX_VARINT_BYTES)], dtype=np.uint64)


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes (1..10) of the varint of each uint64 value."""
    lengths = np.ones(values.size, dtype=np.int64)
    largest = values.max(initial=0)
    for threshold in _VARINT_THRESHOLDS:  # <= 9 passes, only up to the largest value
        if largest < threshold:
            break
        lengths += values >= threshold
    return lengths


def encode_varints(values: np.ndarray, lengths: np.ndarray | None = None) -> bytes:
    """The varints of the uint64 ``values``, back to back.

    ``lengths`` (bytes per value, from :func:`varint_lengths`) may be passed when known.
    """
    values = np.asarray(values, dtype=np.uint64)
    if lengths is None:
        lengths = varint_lengths(values)
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    starts = ends - lengths
    width = int(lengths.max(initial=0))
    if width <= 4:  # values below 2**28: 32-bit arithmetic is enough
        values = values.astype(np.uint32)
    at, shifted, more = starts, values, lengths > 1
    for k in range(width):  # over byte positions (<= 10), not elements
        if k:  # only the values that are longer than k bytes
            has = np.flatnonzero(lengths > k)
            at, shifted = starts[has] + k, values[has] >> (7 * k)
            more = lengths[has] > k + 1
        group = (shifted & 0x7F).astype(np.uint8)
        group |= more.astype(np.uint8) << np.uint8(7)
        out[at] = group
    return out.tobytes()


def decode_varints(raw: np.ndarray, count: int, what: str) -> np.ndarray:
    """Exactly ``count`` varints filling all of the uint8 array ``raw``, as uint64.

    ``what`` names the bytes in error messages.

    Raises:
        PayloadError: a truncated last varint, more or fewer than ``count`` varints, one
            longer than 10 bytes, not minimal, or overflowing 64 bits.
    """
    last = (raw & 0x80) == 0
    if raw.size and not last[-1]:
        raise PayloadError(
            f"{what}: the last varint of {raw.size} bytes is truncated (its final byte has "
            "the continuation bit set); expected it to end in a byte below 0x80"
        )
    ends = np.flatnonzero(last)
    if ends.size != count:
        raise PayloadError(
            f"{what}: {raw.size} bytes hold {ends.size} varints, expected exactly {count}"
        )
    if not count:
        return np.zeros(0, dtype=np.uint64)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > MAX_VARINT_BYTES:
        raise PayloadError(
            f"{what}: a varint is {longest} bytes long, expected at most {MAX_VARINT_BYTES}"
        )
    if np.any((lengths > 1) & (raw[ends] == 0)):
        raise PayloadError(f"{what}: a varint is not minimal (ends in a 0x00 byte after others)")
    offset = np.arange(raw.size) - np.repeat(starts, lengths)  # byte index within its varint
    groups = (raw & 0x7F).astype(np.uint64)
    if np.any((offset == MAX_VARINT_BYTES - 1) & (groups > 1)):
        raise PayloadError(f"{what}: a varint overflows 64 bits (its 10th byte is above 0x01)")
    shifted = groups << (np.uint64(7) * offset.astype(np.uint64))
    return np.bitwise_or.reduceat(shifted, starts)
