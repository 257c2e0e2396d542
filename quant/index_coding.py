"""Positions of the kept elements of a sparsified tensor, coded compactly.

A sparsified tensor of ``length`` elements keeps ``count`` of them, at strictly increasing
positions. The positions travel in one of these codings (:class:`IndexCoding`):

* ``NONE`` (0): the tensor is dense; there are no index bytes and every position is kept.
* ``DELTA_VARINT`` (1): the gaps ``g0 = i0, g_j = i_j - i_{j-1} - 1`` (all >= 0), each as an
  unsigned LEB128 varint: 7 bits per byte, the lowest group first, the high bit (0x80) set on
  every byte of a value but its last. At most 10 bytes per value, in minimal form.
* ``BITMAP`` (2): ``length`` bits, bit ``p`` set iff position ``p`` is kept, packed like
  ``pack_codes(..., bits=1)``: bit ``p % 8`` (LSB first) of byte ``p // 8``; the unused bits of
  the last byte are zero.

:func:`encode_indices` produces both sparse codings and keeps the smaller (ties: delta varint).
:func:`decode_indices` is strict: any defect of the bytes raises
:class:`~quant.errors.PayloadError`. Everything is vectorized with numpy.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from quant import varints
from quant.errors import PayloadError
from quant.varints import decode_varints, encode_varints, varint_lengths


class IndexCoding(IntEnum):
    """How the positions of the kept elements are coded."""

    NONE = 0
    DELTA_VARINT = 1
    BITMAP = 2


NONE: int = IndexCoding.NONE.value
DELTA_VARINT: int = IndexCoding.DELTA_VARINT.value
BITMAP: int = IndexCoding.BITMAP.value
CODINGS: dict[int, str] = {NONE: "none", DELTA_VARINT: "delta varint", BITMAP: "bitmap"}
"""Each coding's number and name."""

MAX_VARINT_BYTES = varints.MAX_VARINT_BYTES
"""Longest varint accepted, in bytes (:mod:`quant.varints`)."""

_INT64_MAX = np.iinfo(np.int64).max


def delta_varint_size(indices: np.ndarray) -> int:
    """Bytes of the ``DELTA_VARINT`` coding of strictly increasing non-negative ``indices``.

    ``indices`` are not validated here; :func:`encode_indices` does that.
    """
    return int(varint_lengths(_gaps(np.asarray(indices, dtype=np.int64))).sum())


def bitmap_size(length: int) -> int:
    """Bytes of the ``BITMAP`` coding of a tensor of ``length`` elements: ``ceil(length / 8)``."""
    return -(-_check_length(length) // 8)


def encode_indices(indices: np.ndarray, length: int) -> tuple[int, bytes]:
    """Code the positions of the kept elements in the smaller of the two sparse codings.

    Args:
        indices: 1-D integer array of strictly increasing positions in ``[0, length)``.
        length: number of elements of the (flattened) tensor.

    Returns:
        ``(coding, data)``: ``DELTA_VARINT`` or ``BITMAP`` (``DELTA_VARINT`` when both take the
        same number of bytes) and the coded bytes.

    Raises:
        ValueError: ``indices`` is not a 1-D integer array of strictly increasing positions
            in ``[0, length)``, or ``length`` is negative.
    """
    length = _check_length(length)
    array = np.asarray(indices)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(
            f"indices must be a 1-D integer array, got {array.ndim}-D of dtype {array.dtype}"
        )
    if array.size and (array.min() < 0 or array.max() >= length):
        raise ValueError(
            f"indices must lie in [0, {length}), got values in [{array.min()}, {array.max()}]"
        )
    positions = array.astype(np.int64, copy=False)
    if np.any(positions[1:] <= positions[:-1]):
        raise ValueError("indices must be strictly increasing")
    gaps = _gaps(positions)
    lengths = varint_lengths(gaps)
    if int(lengths.sum()) <= bitmap_size(length):
        return DELTA_VARINT, encode_varints(gaps, lengths)
    bitmap = np.zeros(bitmap_size(length) * 8, dtype=np.uint8)
    bitmap[positions] = 1
    return BITMAP, np.packbits(bitmap, bitorder="little").tobytes()


def decode_indices(coding: int, data: bytes, count: int, length: int) -> np.ndarray:
    """The ``count`` kept positions (int64, strictly increasing) coded in ``data``.

    Args:
        coding: one of :class:`IndexCoding` (``NONE`` requires empty ``data`` and
            ``count == length``, and gives every position).
        data: the coded bytes.
        count: the number of kept positions (elements) ``data`` must hold.
        length: number of elements of the (flattened) tensor; every position is below it.

    Raises:
        PayloadError: an unknown coding, or ``data`` that is not exactly ``count`` valid
            positions in that coding (truncated or extra bytes, too many or too few values, a
            varint longer than 10 bytes, overflowing or not minimal, a position
            ``>= length``, a bitmap of the wrong size, popcount or with bits set past
            ``length``).
        ValueError: a negative ``count`` or ``length``.
    """
    count, length = _check_count(count), _check_length(length)
    raw = np.frombuffer(data, dtype=np.uint8)
    if coding == DELTA_VARINT:
        gaps = decode_varints(raw, count, "indices")
        return _positions_from_gaps(gaps, length)
    if coding == BITMAP:
        return _decode_bitmap(raw, count, length)
    if coding == NONE:
        if raw.size or count != length:
            raise PayloadError(
                f"indices: coding 0 (none) means all {length} elements with no index bytes, "
                f"got {raw.size} bytes for {count} positions"
            )
        return np.arange(length, dtype=np.int64)
    allowed = ", ".join(f"{number} ({name})" for number, name in CODINGS.items())
    raise PayloadError(f"indices: coding {coding!r} is not known; allowed: {allowed}")


# --- delta varint ----------------------------------------------------------------------


def _gaps(positions: np.ndarray) -> np.ndarray:
    """``g0 = i0, g_j = i_j - i_{j-1} - 1`` of int64 ``positions``, as uint64."""
    return np.diff(positions, prepend=np.int64(-1)).astype(np.uint64) - np.uint64(1)


def _positions_from_gaps(gaps: np.ndarray, length: int) -> np.ndarray:
    """Positions ``i_j = sum_{k <= j} (g_k + 1) - 1`` of uint64 gaps, each checked ``< length``."""
    if not gaps.size:
        return np.zeros(0, dtype=np.int64)
    limit = np.uint64(length)
    if np.any(gaps >= limit):
        raise PayloadError(
            f"indices: a gap of {int(gaps.max())} elements points past the tensor's "
            f"{length} elements"
        )
    # Each term is below 2**63, so a wrap-around of the uint64 sum shows as a decrease.
    ends = np.cumsum(gaps + np.uint64(1), dtype=np.uint64)
    if np.any(ends[1:] <= ends[:-1]) or ends[-1] > limit:
        raise PayloadError(
            f"indices: the positions run past the tensor's {length} elements; "
            f"expected all below {length}"
        )
    return (ends - np.uint64(1)).astype(np.int64)


# --- bitmap ----------------------------------------------------------------------------


def _decode_bitmap(raw: np.ndarray, count: int, length: int) -> np.ndarray:
    expected = bitmap_size(length)
    if raw.size != expected:
        raise PayloadError(
            f"indices: bitmap of {raw.size} bytes, expected {expected} for {length} elements"
        )
    bits = np.unpackbits(raw, bitorder="little")
    if bits[length:].any():
        raise PayloadError(
            f"indices: bitmap has bits set past the tensor's {length} elements; expected zeros"
        )
    positions = np.flatnonzero(bits)
    if positions.size != count:
        raise PayloadError(f"indices: bitmap marks {positions.size} positions, expected {count}")
    return positions.astype(np.int64, copy=False)


# --- arguments -------------------------------------------------------------------------


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
        raise ValueError(f"count={count!r} must be an integer >= 0")
    return int(count)


def _check_length(length: int) -> int:
    if (
        isinstance(length, bool)
        or not isinstance(length, int | np.integer)
        or not 0 <= length <= _INT64_MAX
    ):
        raise ValueError(f"length={length!r} must be an integer in [0, 2**63)")
    return int(length)
