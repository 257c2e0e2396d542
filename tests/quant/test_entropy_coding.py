"""quant.entropy_coding: smallest of raw, rANS and zstd per stream; strict, bounded decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.bitpack import pack_codes, packed_size
from quant.entropy_coding import (
    MAX_PRECISION_BITS,
    RANS,
    RAW,
    ZSTD,
    decode_stream,
    encode_stream,
    quantize_frequencies,
)
from quant.errors import PayloadError
from quant.varints import encode_varints


def _skewed_codes(count: int, bits: int, seed: int = 0) -> np.ndarray:
    """Codes of rounded Gaussians in two's complement: small magnitudes most often."""
    rng = np.random.default_rng(seed)
    limit = (1 << (bits - 1)) - 1
    values = np.clip(np.round(rng.standard_normal(count) * limit / 4), -limit, limit)
    return values.astype(np.int64) & ((1 << bits) - 1)


def _round_trip(raw: bytes, count: int, bits: int, **limits) -> tuple[int, int]:
    coded = encode_stream(raw, count, bits)
    limits = limits or {"symbols": count}
    out = decode_stream(coded.coding, coded.model, coded.data, bits=bits, what="s", **limits)
    assert bytes(out) == raw
    return coded.coding, len(coded.model) + len(bytes(coded.data))


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_skewed_codes_are_coded_near_their_entropy(bits: int) -> None:
    codes = _skewed_codes(20_000, bits)
    raw = pack_codes(codes, bits)
    coding, size = _round_trip(raw, codes.size, bits)
    # rANS, or zstd where its Huffman table is smaller than rANS's (8 bits: 256 symbols).
    assert coding == (ZSTD if bits == 8 else RANS)
    frequencies = np.bincount(codes) / codes.size
    entropy = -np.sum(frequencies[frequencies > 0] * np.log2(frequencies[frequencies > 0]))
    # Within 1.5% of the empirical entropy, the table and the coder's last words included.
    assert size * 8 < entropy * codes.size * 1.015
    assert size < len(raw)


def test_uniform_bytes_stay_raw_and_repetitive_bytes_go_to_zstd() -> None:
    noise = np.random.default_rng(1).bytes(5000)
    assert _round_trip(noise, 5000, 8)[0] == RAW
    pattern = bytes(range(200)) * 30  # every byte as often: rANS gains nothing, zstd a lot
    coding, size = _round_trip(pattern, len(pattern), 8)
    assert coding == ZSTD and size < 300


def test_an_empty_stream_is_raw() -> None:
    assert _round_trip(b"", 0, 8) == (RAW, 0)
    assert _round_trip(b"", 0, 4, max_symbols=0) == (RAW, 0)


def test_one_repeated_symbol_costs_next_to_nothing() -> None:
    raw = pack_codes(np.zeros(10_001, dtype=np.uint8), 4)
    coding, size = _round_trip(raw, 10_001, 4)
    assert coding == RANS and size <= 8


def test_a_stream_of_unknown_length_decodes_within_its_bound() -> None:
    raw = bytes(np.random.default_rng(2).integers(0, 4, 3000, dtype=np.uint8))
    coding, _ = _round_trip(raw, len(raw), 8, max_symbols=3000)
    assert coding == RANS
    coded = encode_stream(raw, len(raw), 8)
    with pytest.raises(PayloadError, match="holds 3000 symbols, expected 1 to 2999"):
        decode_stream(coded.coding, coded.model, coded.data, bits=8, what="s", max_symbols=2999)


@pytest.mark.parametrize("precision", [2, 8, 12, 16])
def test_quantized_frequencies_sum_to_the_total_and_keep_every_symbol(precision: int) -> None:
    rng = np.random.default_rng(precision)
    for _ in range(50):
        counts = rng.integers(0, 1000, 4) ** rng.integers(1, 4)
        counts[rng.integers(0, 4)] += 1
        frequencies = quantize_frequencies(counts, precision)
        assert frequencies.sum() == 1 << precision
        assert np.array_equal(frequencies > 0, counts > 0)


# --- strict decoding -----------------------------------------------------------------------

CODES = _skewed_codes(3001, 4, seed=3)
RAW_CODES = pack_codes(CODES, 4)
CODED = encode_stream(RAW_CODES, CODES.size, 4)


def _decode(model: bytes = CODED.model, data: bytes = CODED.data, coding: int = RANS) -> bytes:
    return bytes(decode_stream(coding, model, data, bits=4, what="payload", symbols=CODES.size))


def _model(count: int, frequencies: list[int]) -> bytes:
    return encode_varints(np.array([count, *frequencies], dtype=np.uint64))


def test_the_fixture_is_rans() -> None:
    assert CODED.coding == RANS
    assert _decode() == RAW_CODES


@pytest.mark.parametrize(
    ("model", "data", "coding", "fragment"),
    [
        (CODED.model, CODED.data[:-4], RANS, "does not end after its 3001 symbols"),
        (CODED.model, CODED.data[4:], RANS, "does not end after its 3001 symbols"),
        (CODED.model, CODED.data[:-1], RANS, "no whole number of words"),
        (CODED.model, CODED.data + b"\0\0\0\0", RANS, "never ends in a zero word"),
        (CODED.model, CODED.data + b"\1\0\0\0", RANS, "does not end after its 3001 symbols"),
        (_model(3001, [1] * 17), CODED.data, RANS, "17 frequencies, expected 2 to 16"),
        (_model(3001, [4096]), CODED.data, RANS, "1 frequencies, expected 2 to 16"),
        (_model(3001, [3, 4]), CODED.data, RANS, "sum to a power of two up to 2**16"),
        (_model(3001, [0, 0]), CODED.data, RANS, "sum to a power of two"),
        (_model(3001, [2**17, 2**17]), CODED.data, RANS, "sum to a power of two"),
        (_model(3001, [2**63, 2**63]), CODED.data, RANS, "sum to a power of two"),
        (_model(3000, [8] * 16), CODED.data, RANS, "holds 3000 symbols, expected exactly 3001"),
        (_model(0, [8] * 16), CODED.data, RANS, "holds 0 symbols"),
        (CODED.model[:-1] + b"\x80", CODED.data, RANS, "rANS model: the last varint"),
        (b"\xff" * 5000, CODED.data, RANS, "the rANS model has 5000 bytes"),
        (b"", CODED.data, RANS, "expected 2 to 16"),
        (CODED.model, RAW_CODES, RAW, "a raw stream has no model"),
        (b"\1", b"", ZSTD, "a zstd stream has no model"),
        (b"", CODED.data, 3, "stream coding 3 is not known; allowed: 0 (raw), 1 (rANS), 2"),
    ],
)
def test_each_defect_is_a_payload_error(model, data, coding, fragment) -> None:
    with pytest.raises(PayloadError) as info:
        _decode(model, data, coding)
    assert fragment in str(info.value)
    assert str(info.value).startswith("payload: ")


def test_a_wrong_frequency_table_is_refused() -> None:
    frequencies = quantize_frequencies(np.bincount(CODES, minlength=16), 12)
    for shift in range(1, 16):  # the right frequencies on the wrong symbols
        with pytest.raises(PayloadError, match="does not end after its 3001 symbols"):
            _decode(_model(3001, list(np.roll(frequencies, shift))))


ZSTD_RAW = bytes(range(200)) * 30
ZSTD_CODED = encode_stream(ZSTD_RAW, len(ZSTD_RAW), 8)


@pytest.mark.parametrize(
    ("data", "limit", "fragment"),
    [
        (ZSTD_CODED.data[:-3], {"symbols": 6000}, "the zstd frame does not decode"),
        (ZSTD_CODED.data + b"\0", {"symbols": 6000}, "unused data"),
        (ZSTD_CODED.data, {"symbols": 6001}, "holds 6000 bytes, expected exactly 6001"),
        (ZSTD_CODED.data, {"max_symbols": 5999}, "holds 6000 bytes, expected 1 to 5999"),
        (b"\x28\xb5\x2f\xfd\x00", {"symbols": 6000}, "zstd"),
        (b"hello", {"symbols": 6000}, "not a zstd frame"),
        (b"", {"symbols": 0}, "an empty stream is sent raw"),
    ],
)
def test_each_zstd_defect_is_a_payload_error(data: bytes, limit: dict, fragment: str) -> None:
    assert ZSTD_CODED.coding == ZSTD
    with pytest.raises(PayloadError, match=fragment):
        decode_stream(ZSTD, b"", data, bits=8, what="indices", **limit)


def test_a_frame_without_content_size_is_refused() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(ZSTD_RAW)
    with pytest.raises(PayloadError, match="does not state its content size"):
        decode_stream(ZSTD, b"", frame, bits=8, what="indices", symbols=6000)


@pytest.mark.parametrize("coding", [RANS, ZSTD])
def test_fuzzed_streams_only_ever_raise_payload_error(coding: int) -> None:
    rng = np.random.default_rng(coding)
    source = CODED if coding == RANS else ZSTD_CODED
    valid, bits, count = bytes(source.data), (4 if coding == RANS else 8), None
    count = CODES.size if coding == RANS else len(ZSTD_RAW)
    for trial in range(300):
        data, model = bytearray(valid), bytearray(source.model)
        target = model if coding == RANS and trial % 3 == 0 else data
        for position in rng.integers(0, len(target), size=int(rng.integers(1, 4))):
            target[position] ^= 1 << int(rng.integers(0, 8))
        if trial % 5 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        try:
            out = decode_stream(
                coding, bytes(model), bytes(data), bits=bits, what="s", symbols=count
            )
        except PayloadError:
            continue
        assert len(out) == packed_size(count, bits)


@settings(max_examples=150, deadline=None)
@given(
    bits=st.sampled_from([4, 6, 8]),
    data=st.binary(max_size=64),
    model=st.binary(max_size=40),
    coding=st.sampled_from([RANS, ZSTD]),
    count=st.integers(0, 300),
)
def test_random_models_and_data_only_ever_raise_payload_error(
    bits: int, data: bytes, model: bytes, coding: int, count: int
) -> None:
    try:
        out = decode_stream(coding, model, data, bits=bits, what="s", symbols=count)
    except PayloadError:
        return
    assert len(out) == packed_size(count, bits)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.sampled_from([4, 6, 8]),
    codes=st.lists(st.integers(0, 255), max_size=400),
    skew=st.integers(0, 7),
)
def test_any_stream_round_trips(bits: int, codes: list[int], skew: int) -> None:
    array = (np.array(codes, dtype=np.int64) >> skew) & ((1 << bits) - 1)
    raw = pack_codes(array, bits)
    coded = encode_stream(raw, array.size, bits)
    assert len(coded.model) + len(bytes(coded.data)) <= len(raw) or coded.coding == RAW
    out = decode_stream(
        coded.coding, coded.model, coded.data, bits=bits, what="s", symbols=array.size
    )
    assert bytes(out) == raw


def test_the_precision_bound_is_what_the_decoder_accepts() -> None:
    assert MAX_PRECISION_BITS == 16
    model = _model(3, [1 << 15, 1 << 15])
    # A legal table: the words are simply not this model's, so it fails at the end check.
    with pytest.raises(PayloadError, match="does not end"):
        decode_stream(RANS, model, b"\1\0\0\0", bits=8, what="s", symbols=3)
