"""Bit packing of fixed-width unsigned codes into bytes, little-endian within a byte.

Codes of ``bits`` bits (one of 1, 2, 4, 6, 8) are laid out as follows; ``c0`` is the first code:

* 8 bits: one code per byte.
* 4 bits: two codes per byte, ``c0`` in the low nibble: ``byte = c0 | c1 << 4``.
* 2 bits: four codes per byte, ``c0`` in the lowest two bits: ``byte = c0 | c1 << 2 | ...``.
* 1 bit: eight codes per byte, ``c0`` in bit 0 (``np.packbits(..., bitorder="little")``).
* 6 bits: four codes per 3 bytes: the 24-bit word ``w = c0 | c1 << 6 | c2 << 12 | c3 << 18``
  is stored as the bytes ``w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF``.

A last partial group (byte, or 3 bytes for 6 bits) is padded with zero codes, so ``count``
codes take exactly :func:`packed_size` bytes. Decoding is strict: the byte count must be exactly
that, and the padding codes must be zero; any defect of the bytes raises
:class:`~quant.errors.PayloadError`. Wrong arguments (an unsupported width, a negative count, a
code that does not fit its width) are programming errors and raise ``ValueError``.
"""

from __future__ import annotations

import numpy as np

from quant.errors import PayloadError

WIDTHS: tuple[int, ...] = (1, 2, 4, 6, 8)
"""The supported code widths, in bits."""


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by ``count`` codes (elements) of ``bits`` bits each, padding included.

    That is ``ceil(count * bits / 8)`` for 1, 2, 4 and 8 bits and ``3 * ceil(count / 4)`` for
    6 bits.

    Raises:
        ValueError: ``bits`` is not in :data:`WIDTHS`, or ``count`` is negative.
    """
    bits = _check_width(bits)
    count = _check_count(count)
    if bits == 6:
        return 3 * -(-count // 4)
    return -(-count * bits // 8)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack a 1-D array of unsigned integer codes, each below ``2**bits``, into bytes.

    Args:
        codes: 1-D array (any integer or bool dtype) of ``len(codes)`` codes (elements).
        bits: the code width in bits, one of :data:`WIDTHS`.

    Returns:
        Exactly ``packed_size(len(codes), bits)`` bytes in the layout of the module docstring.

    Raises:
        ValueError: unsupported ``bits``, ``codes`` not a 1-D integer array, or a code outside
            ``[0, 2**bits)``.
    """
    bits = _check_width(bits)
    array = np.asarray(codes)
    if array.ndim != 1 or array.dtype.kind not in "biu":
        raise ValueError(
            f"codes must be a 1-D integer array, got {array.ndim}-D of dtype {array.dtype}"
        )
    if array.size and (array.min() < 0 or array.max() >= 1 << bits):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, "
            f"got values in [{array.min()}, {array.max()}]"
        )
    small = array.astype(np.uint8, copy=False)
    if bits == 8:
        return small.tobytes()
    if bits == 1:
        return np.packbits(small, bitorder="little").tobytes()
    per_group = 4 if bits == 6 else 8 // bits
    groups = _padded_groups(small, per_group)
    if bits == 6:
        c0, c1, c2, c3 = groups.T
        out = np.empty((len(groups), 3), dtype=np.uint8)
        out[:, 0] = c0 | (c1 << 6)
        out[:, 1] = (c1 >> 2) | (c2 << 4)
        out[:, 2] = (c2 >> 4) | (c3 << 2)
        return out.tobytes()
    out = groups[:, 0].copy()
    for j in range(1, per_group):  # over the 2 or 4 codes of a byte, not over elements
        out |= groups[:, j] << (j * bits)
    return out.tobytes()


def unpack_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes packed in ``data`` by :func:`pack_codes`, as a uint8 array.

    Args:
        data: exactly ``packed_size(count, bits)`` bytes.
        bits: the code width in bits, one of :data:`WIDTHS`.
        count: the number of codes (elements) to return.

    Raises:
        PayloadError: ``data`` is not exactly ``packed_size(count, bits)`` bytes long, or a
            padding code after the first ``count`` is not zero.
        ValueError: unsupported ``bits`` or a negative ``count``.
    """
    expected = packed_size(count, bits)
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != expected:
        raise PayloadError(
            f"packed codes: got {raw.size} bytes, expected {expected} for {count} codes of "
            f"{bits} bits"
        )
    if bits == 8:
        return raw.copy()
    if bits == 1:
        codes = np.unpackbits(raw, bitorder="little")
    elif bits == 6:
        b0, b1, b2 = raw.reshape(-1, 3).T
        out = np.empty((len(b0), 4), dtype=np.uint8)
        out[:, 0] = b0 & 0x3F
        out[:, 1] = (b0 >> 6) | ((b1 & 0x0F) << 2)
        out[:, 2] = (b1 >> 4) | ((b2 & 0x03) << 4)
        out[:, 3] = b2 >> 2
        codes = out.reshape(-1)
    else:
        per_byte = 8 // bits
        out = np.empty((raw.size, per_byte), dtype=np.uint8)
        for j in range(per_byte):  # over the 2 or 4 codes of a byte, not over elements
            out[:, j] = (raw >> (j * bits)) & ((1 << bits) - 1)
        codes = out.reshape(-1)
    if codes[count:].any():
        raise PayloadError(
            f"packed codes: the {codes.size - count} padding codes after {count} codes of "
            f"{bits} bits must be zero"
        )
    return codes[:count]


def _padded_groups(codes: np.ndarray, per_group: int) -> np.ndarray:
    """``codes`` (uint8) padded with zeros to whole groups, shaped (groups, per_group)."""
    tail = -len(codes) % per_group
    if tail:
        codes = np.concatenate([codes, np.zeros(tail, dtype=np.uint8)])
    return codes.reshape(-1, per_group)


def _check_width(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits not in WIDTHS:
        raise ValueError(f"bits={bits!r} is not a supported code width; allowed: {WIDTHS}")
    return int(bits)


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise ValueError(f"count={count!r} must be an integer")
    count = int(count)
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    return count
