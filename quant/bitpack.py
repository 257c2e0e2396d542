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
# Codes per whole group: a byte, or 3 bytes for 6 bits.
_PER_GROUP = {1: 8, 2: 4, 4: 2, 6: 4, 8: 1}
# Lanes of 2 or 4 codes; little-endian, so code 0 is the lane's low byte on any machine.
_U16, _U32 = np.dtype("<u2"), np.dtype("<u4")


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
    out = np.empty(packed_size(small.size, bits), dtype=np.uint8)
    pack_into(small, bits, out)
    return out.tobytes()


def pack_into(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Pack uint8 ``codes`` (1-D, each below ``2**bits``, unchecked) into ``out``.

    The fast path of :func:`pack_codes` for callers whose codes are in range by
    construction: ``out`` is a uint8 array of exactly ``packed_size(len(codes), bits)``
    bytes, written in place (a slice of a larger buffer is fine).
    """
    per_group = _PER_GROUP[bits]
    whole = codes.size - codes.size % per_group
    _pack_groups(codes[:whole], bits, out[: packed_size(whole, bits)])
    if whole < codes.size:  # zero-pad the last group
        tail = np.zeros(per_group, dtype=np.uint8)
        tail[: codes.size - whole] = codes[whole:]
        _pack_groups(tail, bits, out[packed_size(whole, bits) :])


def _pack_groups(codes: np.ndarray, bits: int, out: np.ndarray) -> None:
    """Pack a whole number of groups of uint8 codes into ``out`` (see the module doc).

    Works on 2 or 4 codes per uint16 / uint32 lane: x86 has no 8-bit shifts, and one
    wide shift moves every code of a group at once.
    """
    if bits == 8:
        out[:] = codes
    elif bits == 1:
        out[:] = np.packbits(codes, bitorder="little")
    elif bits == 4:  # lane c0 | c1 << 8 -> byte c0 | c1 << 4
        lanes = codes.view(_U16)
        packed = lanes >> np.uint16(4)
        packed |= lanes
        out[:] = packed  # keeps the low byte
    else:  # 2 or 6 bits: lane c0 | c1 << 8 | c2 << 16 | c3 << 24
        lanes, mask = codes.view(_U32), (1 << bits) - 1
        word = lanes & np.uint32(mask)
        for j in (1, 2, 3):  # over the 4 codes of a lane, not over elements
            word |= (lanes >> np.uint32((8 - bits) * j)) & np.uint32(mask << bits * j)
        if bits == 2:
            out[:] = word
        else:
            _write_words24(word, out)


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
    return unpack_array(np.frombuffer(data, dtype=np.uint8), bits, count)


def unpack_array(raw: np.ndarray, bits: int, count: int) -> np.ndarray:
    """:func:`unpack_codes` of a 1-D uint8 array (a view into a larger buffer is fine)."""
    expected = packed_size(count, bits)
    if raw.size != expected:
        raise PayloadError(
            f"packed codes: got {raw.size} bytes, expected {expected} for {count} codes of "
            f"{bits} bits"
        )
    if bits == 8:
        return raw.copy()
    if bits == 1:
        codes = np.unpackbits(raw, bitorder="little")
    elif bits == 4:  # byte c0 | c1 << 4 -> lane c0 | c1 << 8
        lanes = raw.astype(_U16)
        lanes |= lanes << np.uint16(4)
        lanes &= np.uint16(0x0F0F)
        codes = lanes.view(np.uint8)
    else:  # 2 bits: 1 byte -> 4 codes; 6 bits: 3 bytes -> 4 codes, as a uint32 lane
        word = _words24(raw) if bits == 6 else raw.astype(_U32)
        mask = np.uint32((1 << bits) - 1)
        lanes = word & mask
        for j in (1, 2, 3):  # over the 4 codes of a lane, not over elements
            lanes |= (word >> np.uint32(bits * j) & mask) << np.uint32(8 * j)
        codes = lanes.view(np.uint8)
    if codes[count:].any():
        raise PayloadError(
            f"packed codes: the {codes.size - count} padding codes after {count} codes of "
            f"{bits} bits must be zero"
        )
    return codes[:count]


def unpack_high_nibbles(raw: np.ndarray, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """The first ``count`` 4-bit codes of ``raw`` (uint8), each shifted into the high
    nibble of its byte (``code << 4``, low nibble zero): read as int8, a two's complement
    code k is 16·k, sign included. Length and padding are the caller's to check.

    ``out``: a uint8 array of ``2 * raw.size`` bytes to write into (default: a new one).
    """
    lanes = np.empty(raw.size, _U16) if out is None else out.view(_U16)
    np.copyto(lanes, raw)
    lanes |= lanes << np.uint16(4)
    lanes &= np.uint16(0x0F0F)
    lanes <<= np.uint16(4)
    return lanes.view(np.uint8)[:count]


def check_padding(raw: np.ndarray, bits: int, count: int) -> None:
    """Refuse non-zero padding codes after the first ``count`` codes of a packed array.

    ``raw`` holds exactly ``packed_size(count, bits)`` bytes; callers that unpack it piece
    by piece check the padding once here, with the message naming all ``count`` codes.

    Raises:
        PayloadError: a padding code is not zero.
    """
    per_group = _PER_GROUP[bits]
    whole = count - count % per_group
    if whole == count:
        return
    group = unpack_array(raw[packed_size(whole, bits) :], bits, per_group)
    if group[count - whole :].any():
        raise PayloadError(
            f"packed codes: the {per_group - (count - whole)} padding codes after {count} "
            f"codes of {bits} bits must be zero"
        )


def _write_words24(words: np.ndarray, out: np.ndarray) -> None:
    """Store 24-bit words (uint32) as 3 little-endian bytes each into ``out``.

    All but the last are written as 4-byte words 3 bytes apart whose 4th byte is the next
    word's first byte, so the overlapping writes agree whatever their order; copying
    3-byte rows instead is several times slower.
    """
    if words.size > 1:
        spill = words[1:] & np.uint32(0xFF)
        spill <<= np.uint32(24)
        spill |= words[:-1]
        view = np.ndarray((words.size - 1,), dtype=_U32, buffer=out, offset=0, strides=(3,))
        np.copyto(view, spill)
    if words.size:
        last = int(words[-1])
        out[out.size - 3 :] = (last & 0xFF, last >> 8 & 0xFF, last >> 16)


def _words24(raw: np.ndarray) -> np.ndarray:
    """The 24-bit little-endian words of 3-byte groups, as uint32.

    All groups but the last are read as overlapping 4-byte words 3 bytes apart (the 4th
    byte, the next group's first, masked off), which avoids copying 3-byte rows.
    """
    groups = raw.size // 3
    words = np.empty(groups, dtype=_U32)
    if groups > 1:
        view = np.ndarray((groups - 1,), dtype=_U32, buffer=raw, offset=0, strides=(3,))
        np.bitwise_and(view, np.uint32(0xFFFFFF), out=words[:-1])
    if groups:
        last = raw[3 * groups - 3 :]
        words[-1] = int(last[0]) | int(last[1]) << 8 | int(last[2]) << 16
    return words


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
