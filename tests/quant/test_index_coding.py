"""Tests for quant.index_coding: exact bytes, the choice of coding, round trips, strictness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.bitpack import pack_codes
from quant.errors import PayloadError
from quant.index_coding import (
    BITMAP,
    DELTA_VARINT,
    MAX_VARINT_BYTES,
    NONE,
    IndexCoding,
    bitmap_size,
    decode_indices,
    delta_varint_size,
    encode_indices,
)

INT64_MAX = 2**63 - 1


def _idx(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _round_trip(indices: np.ndarray, length: int) -> tuple[int, bytes]:
    coding, data = encode_indices(indices, length)
    decoded = decode_indices(coding, data, len(indices), length)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, indices)
    return coding, data


def test_coding_numbers() -> None:
    assert (NONE, DELTA_VARINT, BITMAP) == (0, 1, 2)
    assert [int(c) for c in IndexCoding] == [0, 1, 2]
    assert IndexCoding.BITMAP == BITMAP


# --- Exact bytes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "expected"),
    [
        ((), b""),
        ((0,), b"\x00"),
        ((127,), b"\x7f"),
        ((128,), b"\x80\x01"),
        ((300,), b"\xac\x02"),
        # gaps 0, 0, 128, 16384
        ((0, 1, 130, 16515), b"\x00\x00\x80\x01\x80\x80\x01"),
        ((5, 6, 8), b"\x05\x00\x01"),
    ],
)
def test_delta_varint_bytes(indices: tuple[int, ...], expected: bytes) -> None:
    array = _idx(*indices)
    assert encode_indices(array, 1_000_000) == (DELTA_VARINT, expected)
    assert delta_varint_size(array) == len(expected)
    assert decode_indices(DELTA_VARINT, expected, len(indices), 1_000_000).tolist() == list(indices)


def test_largest_gap_is_a_nine_byte_varint() -> None:
    indices = _idx(INT64_MAX - 1)
    coding, data = _round_trip(indices, INT64_MAX)
    assert coding == DELTA_VARINT
    assert data == b"\xfe" + b"\xff" * 7 + b"\x7f"


@pytest.mark.parametrize(
    ("indices", "length", "expected"),
    [
        ((0, 2, 3, 9), 10, bytes([0x0D, 0x02])),
        ((0, 1, 2, 3, 4, 5, 6, 7), 8, bytes([0xFF])),
        ((1, 3, 5, 7, 8, 9, 10), 11, bytes([0xAA, 0x07])),
        ((7, 8, 9, 10, 11, 12, 13, 14, 15), 16, bytes([0x80, 0xFF])),
    ],
)
def test_bitmap_bytes(indices: tuple[int, ...], length: int, expected: bytes) -> None:
    array = _idx(*indices)
    assert delta_varint_size(array) > len(expected)
    assert encode_indices(array, length) == (BITMAP, expected)
    assert decode_indices(BITMAP, expected, len(indices), length).tolist() == list(indices)


def test_bitmap_is_one_bit_pack_codes() -> None:
    length = 1003
    mask = np.random.default_rng(5).random(length) < 0.6
    coding, data = encode_indices(np.flatnonzero(mask), length)
    assert coding == BITMAP
    assert data == pack_codes(mask.astype(np.uint8), 1)
    assert len(data) == bitmap_size(length) == 126


# --- Choice ----------------------------------------------------------------------------


def test_tie_picks_delta_varint() -> None:
    # 2 one-byte varints vs a 2-byte bitmap.
    assert encode_indices(_idx(0, 1), 16) == (DELTA_VARINT, b"\x00\x00")
    # 3 one-byte varints vs a 2-byte bitmap.
    assert encode_indices(_idx(0, 1, 2), 16) == (BITMAP, b"\x07\x00")


def test_empty() -> None:
    assert encode_indices(_idx(), 0) == (DELTA_VARINT, b"")
    assert encode_indices(_idx(), 100) == (DELTA_VARINT, b"")
    assert decode_indices(DELTA_VARINT, b"", 0, 0).shape == (0,)
    assert decode_indices(BITMAP, b"", 0, 0).shape == (0,)
    assert decode_indices(BITMAP, b"\x00", 0, 5).shape == (0,)


def test_sparse_picks_delta_varint_under_one_and_a_half_bytes_per_index() -> None:
    length = 1_000_000
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(length, size=length // 100, replace=False))
    coding, data = _round_trip(indices, length)
    assert coding == DELTA_VARINT
    assert len(data) == delta_varint_size(indices)
    assert len(data) / len(indices) < 1.5


def test_half_dense_picks_bitmap() -> None:
    length = 1_000_000
    indices = np.flatnonzero(np.random.default_rng(1).random(length) < 0.5)
    coding, data = _round_trip(indices, length)
    assert coding == BITMAP
    assert len(data) == length // 8
    assert delta_varint_size(indices) > len(data)


@pytest.mark.parametrize("density", [0.001, 0.05, 0.1, 0.125, 0.2, 0.9, 1.0])
def test_picks_the_smaller(density: float) -> None:
    length = 100_003
    indices = np.flatnonzero(np.random.default_rng(2).random(length) < density)
    coding, data = _round_trip(indices, length)
    delta, bitmap = delta_varint_size(indices), bitmap_size(length)
    assert len(data) == min(delta, bitmap)
    assert coding == (DELTA_VARINT if delta <= bitmap else BITMAP)


# --- Round trips -----------------------------------------------------------------------


def test_round_trip_all_small_lengths() -> None:
    rng = np.random.default_rng(7)
    for length in range(71):
        for density in (0.0, 0.05, 0.3, 0.7, 1.0):
            indices = np.flatnonzero(rng.random(length) < density)
            _round_trip(indices, length)
            for coding, data in (
                (DELTA_VARINT, _delta_bytes(indices)),
                (BITMAP, _bitmap_bytes(indices, length)),
            ):
                decoded = decode_indices(coding, data, len(indices), length)
                np.testing.assert_array_equal(decoded, indices)


def test_round_trip_large_gaps() -> None:
    length = 2**40
    rng = np.random.default_rng(11)
    indices = np.unique(rng.integers(0, length, size=5000))
    assert _round_trip(indices, length)[0] == DELTA_VARINT


def test_accepts_any_integer_dtype() -> None:
    indices = _idx(1, 5, 200)
    for dtype in (np.int32, np.uint16, np.uint64):
        assert encode_indices(indices.astype(dtype), 1000) == encode_indices(indices, 1000)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), length=st.integers(0, 2000))
def test_round_trip_property(data: st.DataObject, length: int) -> None:
    kept = data.draw(st.sets(st.integers(0, max(length - 1, 0)), max_size=length))
    indices = np.array(sorted(kept), dtype=np.int64)
    coding, encoded = _round_trip(indices, length)
    assert len(encoded) == min(delta_varint_size(indices), bitmap_size(length))
    assert coding in (DELTA_VARINT, BITMAP)


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.integers(0, 2**62), max_size=20))
def test_round_trip_property_huge_gaps(gaps: list[int]) -> None:
    positions = np.cumsum(np.array(gaps, dtype=object) + 1) - 1 if gaps else []
    length = INT64_MAX
    if gaps and positions[-1] >= length:
        return
    indices = np.array(positions, dtype=np.int64)
    assert _round_trip(indices, length)[0] == DELTA_VARINT


# --- NONE and unknown codings ----------------------------------------------------------


def test_none_means_every_position() -> None:
    assert decode_indices(NONE, b"", 5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(PayloadError, match=r"coding 0 .* no index bytes, got 1 bytes"):
        decode_indices(NONE, b"\x00", 5, 5)
    with pytest.raises(PayloadError, match=r"all 5 elements .* got 0 bytes for 4 positions"):
        decode_indices(NONE, b"", 4, 5)


@pytest.mark.parametrize("coding", [3, 255, -1, 2**40])
def test_unknown_coding(coding: int) -> None:
    with pytest.raises(
        PayloadError,
        match=rf"coding {coding} is not known; allowed: 0 \(none\), 1 \(delta varint\), "
        r"2 \(bitmap\)",
    ):
        decode_indices(coding, b"", 0, 10)


# --- Strict delta varint ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "count", "length", "message"),
    [
        (b"\x05\x80", 2, 100, "the last varint of 2 bytes is truncated"),
        (b"\x80", 1, 100, "the last varint of 1 bytes is truncated"),
        (b"\x05\x01\x02", 2, 100, "3 bytes hold 3 varints, expected exactly 2"),  # extra byte
        (b"\x05", 2, 100, "1 bytes hold 1 varints, expected exactly 2"),  # one value missing
        (b"", 1, 100, "0 bytes hold 0 varints, expected exactly 1"),
        (b"\x00", 0, 100, "1 bytes hold 1 varints, expected exactly 0"),
        (b"\x80" * 10 + b"\x01", 1, INT64_MAX, "is 11 bytes long, expected at most 10"),
        (b"\xff" * 20 + b"\x00", 1, INT64_MAX, "is 21 bytes long, expected at most 10"),
        (b"\x80" * 9 + b"\x02", 1, INT64_MAX, "overflows 64 bits"),
        (b"\xff" * 9 + b"\x7f", 1, INT64_MAX, "overflows 64 bits"),
        (b"\x80\x00", 1, 100, "not minimal"),
        (b"\x01\xff\x00", 2, 100, "not minimal"),
        (b"\x0a", 1, 10, "a gap of 10 elements points past the tensor's 10 elements"),
        (b"\x80" * 9 + b"\x01", 1, INT64_MAX, "points past the tensor's"),  # 2**63
        (b"\x05\x04", 2, 10, "positions run past the tensor's 10 elements"),  # 5, 10
    ],
)
def test_delta_varint_defects(data: bytes, count: int, length: int, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_indices(DELTA_VARINT, data, count, length)


def test_delta_varint_limits_are_exact() -> None:
    assert MAX_VARINT_BYTES == 10
    assert decode_indices(DELTA_VARINT, b"\x04\x04", 2, 10).tolist() == [4, 9]
    assert decode_indices(DELTA_VARINT, b"\x09", 1, 10).tolist() == [9]
    nine = b"\xfe" + b"\xff" * 7 + b"\x7f"  # 2**63 - 2
    assert decode_indices(DELTA_VARINT, nine, 1, INT64_MAX).tolist() == [INT64_MAX - 1]


def test_positions_that_wrap_around_uint64_are_rejected() -> None:
    # Each gap is below the length, but their sum wraps around 2**64.
    gap = 2**63 - 2
    data = _delta_bytes_of_gaps([gap, gap, gap, gap])
    with pytest.raises(PayloadError, match="positions run past"):
        decode_indices(DELTA_VARINT, data, 4, INT64_MAX)


# --- Strict bitmap ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "count", "length", "message"),
    [
        (b"\x0d", 4, 10, "bitmap of 1 bytes, expected 2 for 10 elements"),  # truncated
        (b"\x0d\x02\x00", 4, 10, "bitmap of 3 bytes, expected 2 for 10 elements"),  # extra byte
        (b"", 1, 1, "bitmap of 0 bytes, expected 1 for 1 elements"),
        (b"\x00", 0, 0, "bitmap of 1 bytes, expected 0 for 0 elements"),
        (b"\x0d\x02", 3, 10, "bitmap marks 4 positions, expected 3"),  # popcount mismatch
        (b"\x0d\x02", 5, 10, "bitmap marks 4 positions, expected 5"),
        (b"\x0d\x06", 5, 10, "bits set past the tensor's 10 elements"),  # bit 10 set
        (b"\x0d\x82", 5, 10, "bits set past the tensor's 10 elements"),  # bit 15 set
        (b"\x02", 1, 1, "bits set past the tensor's 1 elements"),
    ],
)
def test_bitmap_defects(data: bytes, count: int, length: int, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_indices(BITMAP, data, count, length)


# --- Programming errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "length", "message"),
    [
        (_idx(3, 2), 10, "strictly increasing"),
        (_idx(2, 2), 10, "strictly increasing"),
        (_idx(-1, 2), 10, r"must lie in \[0, 10\)"),
        (_idx(2, 10), 10, r"must lie in \[0, 10\)"),
        (_idx(0), 0, r"must lie in \[0, 0\)"),
        (np.array([1.0, 2.0]), 10, "1-D integer array"),
        (np.zeros((2, 2), dtype=np.int64), 10, "1-D integer array"),
        (_idx(1), -1, "length=-1"),
        (_idx(1), 2**63, "length=9223372036854775808"),
    ],
)
def test_encode_rejects_bad_arguments(indices: np.ndarray, length: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        encode_indices(indices, length)
    assert not isinstance(info.value, PayloadError)


def test_decode_rejects_negative_count_or_length() -> None:
    for count, length in ((-1, 10), (1, -1)):
        with pytest.raises(ValueError, match="must be an integer") as info:
            decode_indices(DELTA_VARINT, b"\x00", count, length)
        assert not isinstance(info.value, PayloadError)


# --- Fuzz ------------------------------------------------------------------------------


def _delta_bytes_of_gaps(gaps: list[int]) -> bytes:
    """Reference LEB128 encoder, one value at a time (independent of the module's)."""
    out = bytearray()
    for gap in gaps:
        while True:
            low, gap = gap & 0x7F, gap >> 7
            out.append(low | (0x80 if gap else 0))
            if not gap:
                break
    return bytes(out)


def _delta_bytes(indices: np.ndarray) -> bytes:
    previous, gaps = -1, []
    for index in indices.tolist():
        gaps.append(index - previous - 1)
        previous = index
    return _delta_bytes_of_gaps(gaps)


def _bitmap_bytes(indices: np.ndarray, length: int) -> bytes:
    bits = np.zeros(length, dtype=np.uint8)
    bits[indices] = 1
    return pack_codes(bits, 1)


def test_module_varints_match_the_reference_encoder() -> None:
    rng = np.random.default_rng(13)
    for scale in (10, 1000, 10**6, 10**12, 2**60):
        indices = np.unique(rng.integers(0, scale, size=300))
        coding, data = encode_indices(indices, 2**62)
        assert coding == DELTA_VARINT
        assert data == _delta_bytes(indices)


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    buffer = bytearray(data)
    kind = rng.integers(7)
    if kind == 0 and buffer:  # flip one bit
        buffer[rng.integers(len(buffer))] ^= 1 << int(rng.integers(8))
    elif kind == 1 and buffer:  # drop a byte
        del buffer[rng.integers(len(buffer))]
    elif kind == 2:  # insert a byte
        buffer.insert(int(rng.integers(len(buffer) + 1)), int(rng.integers(256)))
    elif kind == 3:  # cut short
        del buffer[rng.integers(len(buffer) + 1) :]
    elif kind == 4:  # append junk
        buffer += rng.bytes(int(rng.integers(1, 5)))
    elif kind == 5:  # a run of continuation bytes
        position = int(rng.integers(len(buffer) + 1))
        buffer[position:position] = b"\xff" * int(rng.integers(1, 14))
    elif buffer:  # set the last byte
        buffer[-1] = int(rng.integers(256))
    return bytes(buffer)


def test_fuzz_decode_raises_only_payload_errors() -> None:
    rng = np.random.default_rng(99)
    outcomes = {"accepted": 0, "rejected": 0}
    for trial in range(2000):
        length = int(rng.choice([0, 1, 7, 8, 9, 64, 100, 1000, 2**40, INT64_MAX]))
        if trial % 2:
            coding = int(rng.choice([NONE, DELTA_VARINT, BITMAP, 3, 7, -1]))
            data = rng.bytes(int(rng.integers(0, 40)))
            count = int(rng.integers(0, 20))
        else:
            small = min(length, 2000)
            indices = np.flatnonzero(rng.random(small) < rng.random())
            if length > small:
                indices = indices * (length // small)
            coding, data = encode_indices(indices, length)
            data = _mutate(rng, data)
            count = max(0, len(indices) + int(rng.integers(-1, 2)) * int(rng.integers(2)))
            if rng.random() < 0.1:
                coding = int(rng.choice([NONE, DELTA_VARINT, BITMAP, 3]))
        try:
            positions = decode_indices(coding, data, count, length)
        except PayloadError:
            outcomes["rejected"] += 1
            continue
        outcomes["accepted"] += 1
        assert positions.dtype == np.int64
        assert positions.shape == (count,)
        if count:
            assert positions[0] >= 0
            assert positions[-1] < length
            assert np.all(np.diff(positions) > 0)
        # What decodes is canonical: it re-encodes to the very same bytes.
        if coding == DELTA_VARINT:
            assert _delta_bytes(positions) == data
        elif coding == BITMAP:
            assert _bitmap_bytes(positions, length) == data
    assert outcomes["accepted"] > 100
    assert outcomes["rejected"] > 100


@settings(max_examples=500, deadline=None)
@given(
    coding=st.sampled_from([NONE, DELTA_VARINT, BITMAP, 3]),
    data=st.binary(max_size=30),
    count=st.integers(0, 30),
    length=st.sampled_from([0, 1, 5, 8, 100, 2**40, INT64_MAX]),
)
def test_arbitrary_bytes_raise_only_payload_errors(
    coding: int, data: bytes, count: int, length: int
) -> None:
    try:
        positions = decode_indices(coding, data, count, length)
    except PayloadError:
        return
    assert positions.shape == (count,)
    assert np.all(np.diff(positions) > 0)
    assert np.all((positions >= 0) & (positions < length))
