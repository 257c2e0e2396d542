"""The lossless stage of a ``+ans`` codec: one byte stream in, the smallest of three codings out.

A codec's streams (a tensor's packed element codes, its index bytes) are a sequence of
``count`` *symbols* of ``bits`` bits, packed as :mod:`quant.bitpack` lays them out: the codes
themselves for 2- to 8-bit codes, else (``bits = 8``) the stream's bytes. Each stream goes out
in whichever of these codings (proto ``StreamCoding``) takes the fewest bytes in the message,
the raw stream unless another is strictly smaller:

* ``RAW`` (0): the stream as it is; no model.
* ``RANS`` (1): rANS (`constriction`'s ``AnsCoder``) of the symbols under one categorical
  model for the whole stream, the symbols' empirical frequencies quantized to a power-of-two
  total. The data is the coder's 32-bit words, little-endian; the model goes with it as
  varints (:mod:`quant.varints`): the symbol count, then the frequency of each symbol
  ``0 .. alphabet - 1`` (2 <= alphabet <= 2**bits, summing to a power of two up to
  ``2**MAX_PRECISION_BITS``). The coder's model is ``constriction.stream.model.Categorical(
  frequencies / total, perfect=False)``, built the same way on both sides.
* ``ZSTD`` (2): one Zstandard frame of the stream's bytes, its content size in the header.

The cost compared is every byte the choice adds to the message: the data, the model and their
protobuf field headers, and the coding's enum field.

Decoding is strict and bounded: a model that is no valid table, a symbol count other than
the one expected (or above the bound), rANS data that does not end exactly where its symbols
do (the coder must be empty after the last one: corrupt data, a wrong table or a truncated
stream), a zstd frame without content size, of another size, followed by extra bytes or
broken, all raise :class:`~quant.errors.PayloadError`; decoding runs over at most the
expected number of symbols, so it always ends. The library's own errors (and a Rust panic)
become a PayloadError too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import zstandard

from quant.bitpack import pack_into, packed_size, unpack_array
from quant.errors import PayloadError
from quant.varints import decode_varints, encode_varints, varint_lengths

RAW, RANS, ZSTD = 0, 1, 2
CODINGS: dict[int, str] = {RAW: "raw", RANS: "rANS", ZSTD: "zstd"}
"""Each stream coding's number (proto ``StreamCoding``) and name."""

MAX_PRECISION_BITS = 16
"""The frequencies of a rANS model sum to ``2**p`` with ``p`` at most this."""
ZSTD_LEVEL = 3
"""zstd's compression level (its default)."""
_MAX_MODEL_BYTES = 4096  # 1 + 256 varints of at most 3 bytes each fit easily
_MIN_ZSTD_WINDOW = 1 << 10  # zstd's smallest window


@dataclass(frozen=True)
class CodedStream:
    """One stream as sent: its coding, its model (rANS only) and its data."""

    coding: int
    model: bytes = b""
    data: bytes | memoryview | np.ndarray = b""


def encode_stream(raw: bytes | memoryview | np.ndarray, count: int, bits: int) -> CodedStream:
    """The smallest coding of ``raw``: ``count`` symbols of ``bits`` bits, bit-packed.

    ``raw`` holds exactly ``packed_size(count, bits)`` bytes (for ``bits = 8``, the bytes
    themselves). The raw stream is kept unless a coding is strictly smaller, counting the
    bytes it adds to the message (fields with one-byte tags).
    """
    data = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8)
    if data.size != packed_size(count, bits):
        raise ValueError(
            f"a stream of {count} {bits}-bit symbols takes {packed_size(count, bits)} "
            f"bytes, got {data.size}"
        )
    best, best_cost = CodedStream(RAW, data=raw), _field_bytes(data.size)
    if count == 0:
        return best
    frame = _zstd_compressor().compress(data)
    cost = _ENUM_FIELD_BYTES + _field_bytes(len(frame))
    if cost < best_cost:
        best, best_cost = CodedStream(ZSTD, data=frame), cost
    symbols = data if bits == 8 else unpack_array(data, bits, count)
    counts = np.bincount(symbols, minlength=2)
    frequencies = _best_frequencies(counts)
    model = encode_varints(np.concatenate([[count], frequencies]).astype(np.uint64))
    estimate = _cross_entropy_bits(counts, frequencies) / 8
    overhead = _ENUM_FIELD_BYTES + _field_bytes(len(model))
    if overhead + estimate >= best_cost:  # rANS cannot beat it: do not run it
        return best
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _categorical(frequencies))
    words = coder.get_compressed().astype("<u4", copy=False)
    if overhead + _field_bytes(words.nbytes) < best_cost:
        best = CodedStream(RANS, model, words.tobytes())
    return best


def decode_stream(
    coding: int,
    model: bytes,
    data: bytes | memoryview,
    *,
    bits: int,
    what: str,
    symbols: int | None = None,
    max_symbols: int = 0,
) -> memoryview:
    """The raw bytes of a stream `encode_stream` coded as ``coding``.

    The stream must hold exactly ``symbols`` symbols of ``bits`` bits when given, else at most
    ``max_symbols``; ``what`` names it in error messages.

    Raises:
        PayloadError: an unknown coding, a model where none belongs or an invalid one, a count
            of symbols other than allowed, or data that is not exactly such a stream in that
            coding.
    """
    limit = symbols if symbols is not None else max_symbols
    if coding != RAW and limit == 0:
        raise PayloadError(f"{what}: an empty stream is sent raw, got coding {coding!r}")
    if coding == RAW:
        if model:
            raise PayloadError(f"{what}: a raw stream has no model, got {len(model)} bytes")
        return memoryview(data)
    if coding not in CODINGS:
        allowed = ", ".join(f"{number} ({name})" for number, name in CODINGS.items())
        raise PayloadError(f"{what}: stream coding {coding!r} is not known; allowed: {allowed}")
    if coding == ZSTD:
        if model:
            raise PayloadError(f"{what}: a zstd stream has no model, got {len(model)} bytes")
        return memoryview(_unzstd(data, packed_size(limit, bits), symbols is not None, what))
    count, frequencies = _parse_model(model, bits, what)
    if count == 0 or count > limit or (symbols is not None and count != symbols):
        expected = f"exactly {symbols}" if symbols is not None else f"1 to {max_symbols}"
        raise PayloadError(f"{what}: the rANS model holds {count} symbols, expected {expected}")
    decoded = _unrans(data, count, frequencies, what)
    out = np.empty(packed_size(count, bits), dtype=np.uint8)
    pack_into(decoded, bits, out)
    return memoryview(out)


# --- the model ---------------------------------------------------------------------------


def quantize_frequencies(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies (int64) summing to ``2**precision``, near ``counts`` in proportion.

    Every symbol with a non-zero count gets at least 1, the others 0. Needs at most
    ``2**precision`` symbols with non-zero counts.
    """
    counts = np.asarray(counts, dtype=np.int64)
    present, total = counts > 0, 1 << precision
    scaled = counts * (total / counts.sum())
    frequencies = np.where(present, np.maximum(np.floor(scaled), 1), 0).astype(np.int64)
    missing = total - int(frequencies.sum())
    while missing:  # a few passes at most: each moves min(|missing|, symbols) units
        if missing > 0:  # to the largest remainders
            order = np.argsort(np.where(present, frequencies - scaled, np.inf), kind="stable")
            step = order[: min(missing, int(present.sum()))]
            frequencies[step] += 1
        else:  # from the largest frequencies above 1
            room = np.flatnonzero(frequencies > 1)
            order = room[np.argsort(-(frequencies[room] - scaled[room]), kind="stable")]
            step = order[: min(-missing, order.size)]
            frequencies[step] -= 1
        missing = total - int(frequencies.sum())
    return frequencies


def _best_frequencies(counts: np.ndarray) -> np.ndarray:
    """The quantized table (trailing zeros cut, at least 2 symbols) that costs the fewest
    bytes with the data it codes, over every precision the symbols allow."""
    present = np.flatnonzero(counts)
    alphabet = max(2, int(present[-1]) + 1)
    counts = counts[:alphabet]
    lowest = max(1, math.ceil(math.log2(present.size)))
    best, best_bits, worse = None, math.inf, 0
    for precision in range(lowest, MAX_PRECISION_BITS + 1):
        frequencies = quantize_frequencies(counts, precision)
        cost = _cross_entropy_bits(counts, frequencies)
        cost += 8 * int(varint_lengths(frequencies.astype(np.uint64)).sum())
        if cost < best_bits:
            best, best_bits, worse = frequencies, cost, 0
        else:
            worse += 1
            if worse == 2:  # past the trade-off between table bytes and data bits
                break
    return best


def _cross_entropy_bits(counts: np.ndarray, frequencies: np.ndarray) -> float:
    """Bits to code symbols with ``counts`` under the table ``frequencies`` (ideal coder)."""
    used = counts[: frequencies.size] > 0
    total = float(frequencies.sum())
    return float(np.sum(counts[: frequencies.size][used] * np.log2(total / frequencies[used])))


def _categorical(frequencies: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(
        frequencies.astype(np.float64) / float(frequencies.sum()), perfect=False
    )


def _parse_model(model: bytes, bits: int, what: str) -> tuple[int, np.ndarray]:
    """(symbol count, frequencies) of a rANS model, checked."""
    if len(model) > _MAX_MODEL_BYTES:
        raise PayloadError(
            f"{what}: the rANS model has {len(model)} bytes, at most {_MAX_MODEL_BYTES} allowed"
        )
    raw = np.frombuffer(model, dtype=np.uint8)
    values = decode_varints(raw, int(np.count_nonzero(raw < 0x80)), f"{what}: rANS model")
    frequencies = values[1:]
    if not 2 <= frequencies.size <= 1 << bits:
        raise PayloadError(
            f"{what}: the rANS model has {frequencies.size} frequencies, expected 2 to "
            f"{1 << bits} for {bits}-bit symbols"
        )
    total = int(frequencies.sum()) if frequencies.max() <= 1 << MAX_PRECISION_BITS else 0
    if total <= 0 or total & (total - 1) or total > 1 << MAX_PRECISION_BITS:
        raise PayloadError(
            f"{what}: the rANS frequencies must sum to a power of two up to 2**{MAX_PRECISION_BITS}"
        )
    return int(values[0]), frequencies.astype(np.int64)


# --- the coders --------------------------------------------------------------------------


def _unrans(data: bytes | memoryview, count: int, frequencies: np.ndarray, what: str):
    """``count`` uint8 symbols of rANS ``data``, which the coder must use up exactly."""
    if len(data) % 4:
        raise PayloadError(f"{what}: rANS data of {len(data)} bytes is no whole number of words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        decoded = coder.decode(_categorical(frequencies), count)
        finished = coder.is_empty()
    except Exception as exc:
        raise PayloadError(f"{what}: the rANS data does not decode ({exc})") from None
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException
        if type(exc).__name__ != "PanicException":
            raise
        raise PayloadError(f"{what}: the rANS data does not decode ({exc})") from None
    if not finished:
        raise PayloadError(
            f"{what}: the rANS data does not end after its {count} symbols (corrupt, truncated "
            "or coded under another model)"
        )
    return decoded.astype(np.uint8)


def _zstd_compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_content_size=True, write_checksum=False, write_dict_id=False
    )


def _unzstd(data: bytes | memoryview, limit: int, exact: bool, what: str) -> bytes:
    """The bytes of one zstd frame: exactly ``limit`` of them if ``exact``, else 1 to limit."""
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"{what}: not a zstd frame ({exc})") from None
    if size < 0:
        raise PayloadError(f"{what}: the zstd frame does not state its content size")
    if size == 0 or size > limit or (exact and size != limit):
        expected = f"exactly {limit}" if exact else f"1 to {limit}"
        raise PayloadError(f"{what}: the zstd frame holds {size} bytes, expected {expected}")
    window = max(_MIN_ZSTD_WINDOW, 1 << (size - 1).bit_length())
    try:
        out = zstandard.ZstdDecompressor(max_window_size=window).decompress(
            data, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise PayloadError(f"{what}: the zstd frame does not decode ({exc})") from None
    if len(out) != size:
        raise PayloadError(f"{what}: the zstd frame gave {len(out)} bytes, stated {size}")
    return out


# --- message bytes -----------------------------------------------------------------------

_ENUM_FIELD_BYTES = 2  # a one-byte tag and a one-byte enum value


def _field_bytes(size: int) -> int:
    """Bytes of a `bytes` field of ``size`` bytes with a one-byte tag (0 when empty)."""
    return 0 if size == 0 else 1 + int(varint_lengths(np.array([size], dtype=np.uint64))[0]) + size
