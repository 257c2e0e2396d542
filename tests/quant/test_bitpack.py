"""Tests for quant.bitpack: exact byte layouts, sizes, round trips, strict decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.bitpack import WIDTHS, pack_codes, packed_size, unpack_codes
from quant.errors import PayloadError


def _codes(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _per_group(bits: int) -> int:
    """Codes per whole group: a byte, or 3 bytes for 6 bits."""
    return 4 if bits == 6 else 8 // bits


# --- Exact layouts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codes", "bits", "expected"),
    [
        ((0, 255, 7), 8, bytes([0x00, 0xFF, 0x07])),
        ((1, 2, 3), 4, bytes([0x21, 0x03])),
        ((0xF, 0x0), 4, bytes([0x0F])),
        ((0x0, 0xF), 4, bytes([0xF0])),
        # 1 | 2 << 2 | 3 << 4 | 0 << 6 = 0x39, then 3 alone.
        ((1, 2, 3, 0, 3), 2, bytes([0x39, 0x03])),
        ((3, 3, 3, 3), 2, bytes([0xFF])),
        # bits 0, 2, 3 of byte 0; bit 0 of byte 1.
        ((1, 0, 1, 1, 0, 0, 0, 0, 1), 1, bytes([0x0D, 0x01])),
        ((0, 0, 0, 0, 0, 0, 0, 1), 1, bytes([0x80])),
        # w = 1 | 2 << 6 | 3 << 12 | 63 << 18 = 0xFC3081 -> 81 30 FC; then 5 padded -> 05 00 00.
        ((1, 2, 3, 63, 5), 6, bytes([0x81, 0x30, 0xFC, 0x05, 0x00, 0x00])),
        ((63, 63, 63, 63), 6, bytes([0xFF, 0xFF, 0xFF])),
        # c1 = 0b100001 straddles bytes 0 and 1: its low 2 bits at the top of byte 0.
        ((0, 0b100001), 6, bytes([0x40, 0x08, 0x00])),
        # c2 = 0b110000 straddles bytes 1 and 2.
        ((0, 0, 0b110000), 6, bytes([0x00, 0x00, 0x03])),
        ((0, 0, 0, 1), 6, bytes([0x00, 0x00, 0x04])),
    ],
)
def test_known_layouts(codes: tuple[int, ...], bits: int, expected: bytes) -> None:
    assert pack_codes(_codes(*codes), bits) == expected
    unpacked = unpack_codes(expected, bits, len(codes))
    assert unpacked.dtype == np.uint8
    assert unpacked.tolist() == list(codes)


def test_six_bit_layout_matches_the_24_bit_word_formula() -> None:
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 64, size=400)
    data = pack_codes(codes, 6)
    for group in range(100):
        c0, c1, c2, c3 = (int(c) for c in codes[4 * group : 4 * group + 4])
        word = c0 | c1 << 6 | c2 << 12 | c3 << 18
        assert data[3 * group : 3 * group + 3] == word.to_bytes(3, "little")


def test_one_bit_layout_is_little_endian_packbits() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, size=1001)
    assert pack_codes(codes, 1) == np.packbits(codes.astype(np.uint8), bitorder="little").tobytes()


@pytest.mark.parametrize("bits", [2, 4])
def test_sub_byte_layout_matches_shift_formula(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=64 * (8 // bits))
    data = pack_codes(codes, bits)
    per = 8 // bits
    expected = [sum(int(codes[per * i + j]) << (j * bits) for j in range(per)) for i in range(64)]
    assert list(data) == expected


# --- Sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "bits", "size"),
    [
        (0, 1, 0),
        (1, 1, 1),
        (8, 1, 1),
        (9, 1, 2),
        (0, 2, 0),
        (4, 2, 1),
        (5, 2, 2),
        (1, 4, 1),
        (2, 4, 1),
        (3, 4, 2),
        (0, 6, 0),
        (1, 6, 3),
        (4, 6, 3),
        (5, 6, 6),
        (8, 6, 6),
        (9, 6, 9),
        (0, 8, 0),
        (7, 8, 7),
        (1_000_000, 6, 750_000),
        (1_000_001, 6, 750_003),
    ],
)
def test_packed_size(count: int, bits: int, size: int) -> None:
    assert packed_size(count, bits) == size


@pytest.mark.parametrize("bits", WIDTHS)
def test_packed_size_formula(bits: int) -> None:
    for count in range(200):
        expected = 3 * -(-count // 4) if bits == 6 else -(-count * bits // 8)
        assert packed_size(count, bits) == expected


# --- Round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", WIDTHS)
def test_round_trip_all_lengths(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in range(71):
        for codes in (
            rng.integers(0, 1 << bits, size=count),
            np.full(count, (1 << bits) - 1),
            np.zeros(count, dtype=np.int64),
        ):
            data = pack_codes(codes, bits)
            assert isinstance(data, bytes)
            assert len(data) == packed_size(count, bits)
            unpacked = unpack_codes(data, bits, count)
            assert unpacked.dtype == np.uint8
            assert unpacked.shape == (count,)
            np.testing.assert_array_equal(unpacked, codes)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("count", [1_000_000, 999_997])
def test_round_trip_large(bits: int, count: int) -> None:
    codes = np.random.default_rng(count + bits).integers(0, 1 << bits, size=count)
    data = pack_codes(codes, bits)
    assert len(data) == packed_size(count, bits)
    np.testing.assert_array_equal(unpack_codes(data, bits, count), codes)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int32, np.uint64, np.int64])
@pytest.mark.parametrize("bits", WIDTHS)
def test_any_integer_dtype_packs_the_same(dtype: type, bits: int) -> None:
    codes = np.random.default_rng(3).integers(0, min(1 << bits, 128), size=37)
    assert pack_codes(codes.astype(dtype), bits) == pack_codes(codes, bits)


def test_bool_codes_pack_as_bits() -> None:
    flags = np.array([True, False, True, True, False, False, False, False, True])
    assert pack_codes(flags, 1) == bytes([0x0D, 0x01])


def test_unpack_accepts_any_bytes_like_and_returns_a_writable_copy() -> None:
    data = pack_codes(_codes(1, 2, 3), 8)
    for buffer in (data, bytearray(data), memoryview(data)):
        codes = unpack_codes(buffer, 8, 3)
        codes[0] = 9  # a copy, not a read-only view of the bytes
        assert codes.tolist() == [9, 2, 3]


@settings(max_examples=300, deadline=None)
@given(
    bits=st.sampled_from(WIDTHS),
    data=st.data(),
)
def test_round_trip_property(bits: int, data: st.DataObject) -> None:
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    packed = pack_codes(np.array(codes, dtype=np.int64), bits)
    assert len(packed) == packed_size(len(codes), bits)
    assert unpack_codes(packed, bits, len(codes)).tolist() == codes


@settings(max_examples=300, deadline=None)
@given(bits=st.sampled_from(WIDTHS), count=st.integers(0, 100), data=st.data())
def test_unpack_then_pack_is_identity_on_valid_bytes(
    bits: int, count: int, data: st.DataObject
) -> None:
    """Every accepted byte string is the unique packing of the codes it decodes to."""
    raw = data.draw(st.binary(min_size=packed_size(count, bits), max_size=packed_size(count, bits)))
    try:
        codes = unpack_codes(raw, bits, count)
    except PayloadError:
        return
    assert pack_codes(codes, bits) == raw


# --- Strict decoding -------------------------------------------------------------------


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("count", [1, 5, 16, 33])
def test_truncated_or_extended_bytes_are_rejected(bits: int, count: int) -> None:
    data = pack_codes(np.ones(count, dtype=np.uint8), bits)
    expected = packed_size(count, bits)
    message = f"got {{}} bytes, expected {expected} for {count} codes of {bits} bits"
    with pytest.raises(PayloadError, match=message.format(expected - 1)):
        unpack_codes(data[:-1], bits, count)
    with pytest.raises(PayloadError, match=message.format(expected + 1)):
        unpack_codes(data + b"\x00", bits, count)
    with pytest.raises(PayloadError, match=message.format(0)):
        unpack_codes(b"", bits, count)


@pytest.mark.parametrize("bits", WIDTHS)
def test_bytes_for_zero_codes_are_rejected(bits: int) -> None:
    assert unpack_codes(b"", bits, 0).shape == (0,)
    with pytest.raises(PayloadError, match="got 1 bytes, expected 0 for 0 codes"):
        unpack_codes(b"\x00", bits, 0)


@pytest.mark.parametrize(
    ("data", "bits", "count"),
    [
        (bytes([0x0D, 0x02]), 1, 9),  # bit 1 of the last byte is padding
        (bytes([0x80]), 1, 7),
        (bytes([0x39, 0x13]), 2, 5),  # code 5 (bits 2-3 of byte 1) is padding
        (bytes([0xC0]), 2, 3),
        (bytes([0x21, 0x13]), 4, 3),  # the high nibble of byte 1 is padding
        (bytes([0x81, 0x30, 0xFC, 0x05, 0x01, 0x00]), 6, 5),  # code 6 is padding
        (bytes([0x00, 0x00, 0x04]), 6, 3),  # code 4 is padding
        (bytes([0x00, 0x00, 0x00, 0x00, 0x00, 0x80]), 6, 5),
    ],
)
def test_nonzero_padding_is_rejected(data: bytes, bits: int, count: int) -> None:
    with pytest.raises(PayloadError, match=f"padding codes after {count} codes .* must be zero"):
        unpack_codes(data, bits, count)


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
def test_every_padding_bit_is_checked(bits: int) -> None:
    """Setting any one bit of the last group is accepted iff it belongs to a real code."""
    per = _per_group(bits)
    group_bytes = 3 if bits == 6 else 1
    for count in range(1, 3 * per):
        data = pack_codes(np.zeros(count, dtype=np.uint8), bits)
        for byte in range(len(data) - group_bytes, len(data)):
            for bit in range(8):
                mutated = bytearray(data)
                mutated[byte] |= 1 << bit
                code_index = (8 * byte + bit) // bits  # codes fill the bit stream LSB first
                if code_index < count:
                    codes = unpack_codes(bytes(mutated), bits, count)
                    assert codes[code_index] == 1 << ((8 * byte + bit) % bits)
                    assert pack_codes(codes, bits) == bytes(mutated)
                else:
                    with pytest.raises(PayloadError, match="must be zero"):
                        unpack_codes(bytes(mutated), bits, count)


# --- Programming errors ----------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 3, 5, 7, 16, -1])
def test_unsupported_width_is_a_value_error(bits: int) -> None:
    for call in (
        lambda: pack_codes(_codes(0), bits),
        lambda: unpack_codes(b"\x00", bits, 1),
        lambda: packed_size(1, bits),
    ):
        with pytest.raises(ValueError, match="not a supported code width") as info:
            call()
        assert not isinstance(info.value, PayloadError)


def test_negative_count_is_a_value_error() -> None:
    for call in (lambda: packed_size(-1, 8), lambda: unpack_codes(b"", 8, -1)):
        with pytest.raises(ValueError, match="must be >= 0") as info:
            call()
        assert not isinstance(info.value, PayloadError)


@pytest.mark.parametrize("bits", WIDTHS)
def test_code_too_wide_is_a_value_error(bits: int) -> None:
    with pytest.raises(ValueError, match=rf"\[0, {(1 << bits) - 1}\] for {bits}-bit"):
        pack_codes(_codes(0, 1 << bits), bits)
    with pytest.raises(ValueError, match="must lie in"):
        pack_codes(_codes(-1), bits)


@pytest.mark.parametrize(
    "codes",
    [np.zeros((2, 2), dtype=np.uint8), np.array([0.0, 1.0]), np.array(3, dtype=np.uint8)],
)
def test_codes_must_be_a_1d_integer_array(codes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-D integer array"):
        pack_codes(codes, 8)


# --- Fuzz ------------------------------------------------------------------------------


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    buffer = bytearray(data)
    kind = rng.integers(6)
    if kind == 0 and buffer:  # flip one bit
        position = rng.integers(len(buffer))
        buffer[position] ^= 1 << int(rng.integers(8))
    elif kind == 1 and buffer:  # drop a byte
        del buffer[rng.integers(len(buffer))]
    elif kind == 2:  # insert a byte
        buffer.insert(int(rng.integers(len(buffer) + 1)), int(rng.integers(256)))
    elif kind == 3:  # cut short
        del buffer[rng.integers(len(buffer) + 1) :]
    elif kind == 4:  # append junk
        buffer += rng.bytes(int(rng.integers(1, 5)))
    else:  # set the last byte
        if buffer:
            buffer[-1] = int(rng.integers(256))
    return bytes(buffer)


def test_fuzz_unpack_raises_only_payload_errors() -> None:
    rng = np.random.default_rng(2024)
    accepted = rejected = 0
    for trial in range(2000):
        bits = int(rng.choice(WIDTHS))
        count = int(rng.integers(0, 40))
        if trial % 2:
            data = rng.bytes(int(rng.integers(0, 40)))
        else:
            codes = rng.integers(0, 1 << bits, size=count)
            data = _mutate(rng, pack_codes(codes, bits))
            count = max(0, count + int(rng.integers(-1, 2)) * int(rng.integers(2)))
        try:
            codes = unpack_codes(data, bits, count)
        except PayloadError:
            rejected += 1
            continue
        accepted += 1
        assert codes.dtype == np.uint8
        assert codes.shape == (count,)
        assert int(codes.max(initial=0)) < 1 << bits
        assert pack_codes(codes, bits) == data
    assert accepted > 100
    assert rejected > 100
