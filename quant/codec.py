"""Codecs: a list of arrays <-> the bytes of one `CompressedUpdate` (proto/update.proto).

``Codec.from_spec("topk:0.01+int8+ef")`` parses a spec once (grammar: :mod:`quant.codec_spec`).
Each array is compressed on its own, its values in C order:

1. sparsifier (optional): ``topk`` keeps the ``ceil(fraction * n)`` largest magnitudes of
   the flattened array, ``randk`` as many uniformly random positions (unscaled:
   contractive, meant for error feedback); the positions go out delta+varint or as a
   bitmap, whichever is smaller.
2. value format: the values (all of them, or the kept ones) in one number format:

   * ``fp32``: raw little-endian float32.
   * ``fp16``, ``bf16``, ``fp8_*``: the format's own bit pattern per value, no scale.
   * ``int8``, ``int4``, every MX format: :func:`quant.formats.block_quantize` gives the
     element grid values and block scales; elements go out as bit-packed codes
     (:mod:`quant.element_codes`, :mod:`quant.bitpack`), contiguous in C order, scales as
     float32 (integers), E8M0 or UE5M3 bytes (MX), row by row. Blocks run **per row**, as
     in quantized training (:mod:`quant.qat`): a dense array with ndim >= 2 is viewed as
     ``(shape[0], -1)`` (a Linear weight's input features, a conv kernel's fan-in) and
     each row is blocked on its own, its ragged tail zero-padded, so a tensor carries
     ``rows * ceil(n / block)`` scales; a 0-d or 1-D array is one row. ``block=0`` is one
     scale for the whole tensor, as ``fake_quantize(..., block_size=0)`` of the 2-D view.
     A sparsified array's kept values have no rows: they are blocked as one vector.
     Decoding multiplies the parts back exactly as :func:`quant.fake_quantize` does, so
     ``decode(encode(x)) == fake_quantize(x.reshape(rows, -1)).reshape(x.shape)`` bit for
     bit (same format, block size, rounding, scale; for ``:sr`` the same generator: both
     seed one stream of uniforms per tensor from it, :mod:`quant.uniforms`) -- for 1-D and
     2-D arrays that is exactly ``fake_quantize(x)``.
   * ``sign``: one bit per value and one float32 scale per block, the block's mean
     magnitude (deterministic) or, with ``:sr``, its largest magnitude with the sign drawn
     so that the expectation is the value (unbiased). Its blocks run over the flattened
     array, not per row: sign has no ``fake_quantize`` counterpart to agree with, and
     512-value blocks on short rows (a 288-value conv fan-in) would multiply the cost of
     its scales.

3. entropy coding (``+ans``, optional): the payload and the indices are each sent raw or,
   where that is smaller, rANS- or zstd-coded (:mod:`quant.entropy_coding`); lossless, so
   a ``+ans`` codec decodes to exactly what the same codec without it does.

The bytes are protobuf's deterministic serialization of the message, with the CRC-32 as its
last field. Protobuf serializes the small fields; the large ones (scales, payload, indices)
are framed by :mod:`quant.wire` around the arrays as they are, so neither side copies them
through protobuf, and the CRC is computed over the bytes as sent and checked over the bytes
as received. Block-scaled values are quantized, coded and packed a cache-sized piece at a
time (:mod:`quant.block_payload`).

Decoding is strict (see `Codec.decode`): bytes either decode to exactly what was encoded or
raise `PayloadError` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from google.protobuf.message import DecodeError

from proto import update_pb2
from quant import wire
from quant.bitpack import packed_size
from quant.block_payload import BlockDecoder, BlockLayout, encode_blocks
from quant.block_scales import (
    SCALE_E8M0,
    SCALE_FP32,
    SCALE_NONE,
    SCALE_UE5M3_BYTES,
    decode_scales,
    encode_scales,
    float32_bytes,
)
from quant.codec_spec import SIGN, CodecSpec, parse_codec_spec
from quant.constants import NEAREST_EVEN, SCALE_UE5M3, STOCHASTIC
from quant.element_codes import code_bits
from quant.entropy_coding import RAW, CodedStream, decode_stream, encode_stream
from quant.errors import PayloadError
from quant.index_coding import (
    BITMAP,
    DELTA_VARINT,
    NONE,
    bitmap_size,
    decode_indices,
    encode_indices,
)
from quant.plain_payload import decode_plain, encode_plain
from quant.received_tensor import BlockTensor, DenseTensor, ReceivedTensor, SparseTensor
from quant.sign_payload import decode_sign, encode_sign
from quant.sparsify import random_positions, top_k_positions

# 2: block scales run per row (version 1 blocked the flattened array; refused).
WIRE_VERSION = 2
DTYPES: tuple[str, ...] = ("float16", "float32", "float64")
MAX_DIMS = 8
# Decoding refuses updates beyond these (override per Codec); 2**28 float32s are 1 GiB.
DEFAULT_MAX_ELEMENTS = 2**28
DEFAULT_MAX_TENSORS = 4096

# Field numbers, from the schema. The large `bytes` fields are framed by quant.wire.
_TENSORS = update_pb2.CompressedUpdate.DESCRIPTOR.fields_by_name["tensors"].number
_FIELDS = {f.name: f.number for f in update_pb2.CompressedTensor.DESCRIPTOR.fields}
_SCALES, _PAYLOAD, _INDICES = _FIELDS["scales"], _FIELDS["payload"], _FIELDS["indices"]
_LARGE = frozenset((_SCALES, _PAYLOAD, _INDICES))
_MAX_TENSOR_FIELDS = 64
_EMPTY = memoryview(b"")
_NO_STREAMS = update_pb2.CompressedTensor()  # a codec without +ans: no stream fields


@dataclass(frozen=True)
class _Values:
    """One tensor's encoded values: scale encoding, scale bytes, payload bytes."""

    scale_encoding: int
    scales: wire.Part = b""
    payload: wire.Part = b""
    finite: bool = True  # False: a scale is NaN or Inf, the values held NaN or Inf


@dataclass(frozen=True)
class _Received:
    """One received tensor: its small fields, parsed, and views of its large ones."""

    header: update_pb2.CompressedTensor
    scales: memoryview
    payload: memoryview
    indices: memoryview


@dataclass(frozen=True)
class Codec:
    """A parsed codec; `encode` and `decode` are inverse up to the format's rounding."""

    spec: CodecSpec
    max_elements: int = DEFAULT_MAX_ELEMENTS
    max_tensors: int = DEFAULT_MAX_TENSORS

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_tensors: int = DEFAULT_MAX_TENSORS,
    ) -> Codec:
        """Parse ``spec`` (raises `quant.codec_spec.CodecSpecError`, a ValueError).

        ``max_elements`` (elements, all tensors together) and ``max_tensors`` bound what
        `decode` accepts.
        """
        return cls(parse_codec_spec(spec), max_elements, max_tensors)

    @property
    def name(self) -> str:
        """The canonical spec of the bytes, as written into every `CompressedUpdate`."""
        return self.spec.wire_name()

    @property
    def error_feedback(self) -> bool:
        """Whether the spec asked for error feedback (``+ef``)."""
        return self.spec.error_feedback

    def dense(self) -> Codec:
        """This codec without its sparsifier: the same values, scales, ``+ans`` and ``+ef``."""
        return replace(self, spec=replace(self.spec, sparsifier=None, fraction=1.0))

    def encode(
        self, arrays: list[np.ndarray], *, generator: torch.Generator | None = None
    ) -> bytes:
        """Compress ``arrays`` (floating, finite) into one serialized `CompressedUpdate`.

        ``generator`` drives ``randk`` and stochastic rounding (seed it for reproducible
        bytes). Raises ValueError on a non-floating or non-finite array. The bytes are
        protobuf's deterministic serialization of the message.
        """
        head = update_pb2.CompressedUpdate(version=WIRE_VERSION, codec=self.name)
        parts: list[wire.Part] = [head.SerializeToString(deterministic=True)]
        for position, array in enumerate(arrays):
            parts += wire.message_field(_TENSORS, self._encode_tensor(position, array, generator))
        return wire.seal(parts)

    def decode(self, data: bytes) -> list[np.ndarray]:
        """Decompress bytes made by `encode` of a codec with the same spec.

        Raises:
            PayloadError: as `read` does.
        """
        return [tensor.numpy() for tensor in self.read(data)]

    def read(self, data: bytes) -> list[ReceivedTensor]:
        """Check bytes made by `encode` of a codec with the same spec, tensor by tensor.

        As strict as `decode`; each tensor can then be decoded (``numpy()``, what `decode`
        returns) or added, weighted, into a float32 sum (``add_span``) without an array of
        its own (:mod:`quant.received_tensor`). Block-scaled codes and sparse values stay
        as received where every check could be made on them.

        Raises:
            PayloadError: unparsable bytes, a wrong version, a codec other than this one,
                more than ``max_tensors`` tensors or ``max_elements`` elements, a bad shape
                or dtype, truncated or padded payloads, scales or indices, codes outside
                the format, or any non-finite value in the result.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
        body = wire.unseal(data)
        rest, _, tensors = wire.split(body, repeated=_TENSORS, max_fields=self.max_tensors + 16)
        message = _parse(update_pb2.CompressedUpdate, rest)
        if message.version != WIRE_VERSION:
            raise PayloadError(
                f"wire version {message.version} is not supported; allowed: {WIRE_VERSION}"
            )
        if message.codec != self.name:
            raise PayloadError(f"codec {message.codec!r} does not match this run's {self.name!r}")
        if len(tensors) > self.max_tensors:
            raise PayloadError(f"{len(tensors)} tensors exceed the limit of {self.max_tensors}")
        budget = self.max_elements
        arrays = []
        for position, view in enumerate(tensors):
            received = _received(view)
            shape = _checked_shape(position, received.header)
            numel = math.prod(shape)
            if numel > budget:
                raise PayloadError(
                    f"tensor {position}: the update exceeds the limit of "
                    f"{self.max_elements} elements"
                )
            budget -= numel
            arrays.append(self._read_tensor(position, received, shape, numel))
        return arrays

    # --- one tensor ----------------------------------------------------------------

    def _encode_tensor(
        self, position: int, array: np.ndarray, generator: torch.Generator | None
    ) -> list[wire.Part]:
        """The parts of one serialized `CompressedTensor`, in field order."""
        array = np.asarray(array)
        if array.dtype.name not in DTYPES:
            raise ValueError(
                f"array {position}: dtype {array.dtype} cannot be encoded; "
                f"allowed: {', '.join(DTYPES)}"
            )
        with np.errstate(over="ignore"):  # overflow to inf is reported below
            flat32 = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        flat = torch.from_numpy(flat32)
        numel, kept = flat.numel(), self._kept_count(flat.numel())
        # A block's scale is NaN or Inf when the block holds NaN or Inf, so checking the
        # scales is enough for a dense scaled tensor; the rest is checked here, one pass.
        scaled = kept == numel and self._scale_encoding() != SCALE_NONE
        if not scaled and not _all_finite(flat):
            raise _non_finite(position)
        values, index_coding, indices = flat, NONE, b""
        if kept < numel:
            chosen = self._select(flat, kept, generator)
            index_coding, indices = encode_indices(chosen.numpy(), numel)
            values = flat[chosen]
        rows = _block_rows(array.shape, values.numel(), dense=kept == numel)
        encoded = self._encode_values(values, rows, generator)
        if scaled and not encoded.finite:
            raise _non_finite(position)
        head = update_pb2.CompressedTensor(
            shape=array.shape,
            dtype=array.dtype.name,
            format=self.spec.value_format,
            block_size=self.spec.block_size,
            scale_encoding=encoded.scale_encoding,
        )
        tail = update_pb2.CompressedTensor(num_values=values.numel(), index_coding=index_coding)
        payload, indices, streams = self._entropy_code(encoded.payload, values.numel(), indices)
        return [
            head.SerializeToString(deterministic=True),
            *wire.length_field(_SCALES, [wire.as_part(encoded.scales)]),
            *wire.length_field(_PAYLOAD, [wire.as_part(payload.data)]),
            tail.SerializeToString(deterministic=True),
            *wire.length_field(_INDICES, [wire.as_part(indices.data)]),
            streams.SerializeToString(deterministic=True),
        ]

    def _entropy_code(
        self, payload: wire.Part, count: int, indices: bytes
    ) -> tuple[CodedStream, CodedStream, update_pb2.CompressedTensor]:
        """The payload and indices as sent, and their stream fields (empty without +ans)."""
        if not self.spec.entropy_coding:
            return CodedStream(RAW, data=payload), CodedStream(RAW, data=indices), _NO_STREAMS
        bits, symbols = self.payload_symbols(count)
        coded_payload = encode_stream(payload, symbols, bits)
        coded_indices = encode_stream(indices, len(indices), 8)
        fields = update_pb2.CompressedTensor(
            payload_entropy=coded_payload.coding,
            payload_model=coded_payload.model,
            indices_entropy=coded_indices.coding,
            indices_model=coded_indices.model,
        )
        return coded_payload, coded_indices, fields

    def payload_symbols(self, count: int) -> tuple[int, int]:
        """(bits per symbol, symbols) of a tensor's payload of ``count`` values, as ``+ans``
        codes it: its codes when they are 2 to 8 bits wide, else (sign bits, 16- and
        32-bit values) its bytes."""
        fmt = self.spec.format_spec
        if self.spec.value_format == SIGN:
            return 8, packed_size(count, 1)
        if fmt is None or fmt.torch_dtype is not None:  # fp32, bf16, fp16: whole bytes
            return 8, count * (4 if fmt is None else 2)
        return code_bits(fmt), count  # 4, 6 or 8 bits

    def _entropy_decode(self, where: str, received: _Received, kept: int, numel: int) -> _Received:
        """``received`` with its payload and indices as the codec made them, before `+ans`.

        Raises:
            PayloadError: stream fields without ``+ans``, or a stream that does not decode.
        """
        header = received.header
        if not self.spec.entropy_coding:
            streams = (header.payload_entropy, header.payload_model, header.indices_entropy)
            if any(streams) or header.indices_model:
                raise PayloadError(f"{where}: entropy-coded streams need a '+ans' codec")
            return received
        bits, symbols = self.payload_symbols(kept)
        payload = decode_stream(
            header.payload_entropy,
            header.payload_model,
            received.payload,
            bits=bits,
            symbols=symbols,
            what=f"{where}: payload",
        )
        # Index bytes are at most a bitmap's: encode_indices sends the smaller coding.
        longest = bitmap_size(numel) if kept < numel else 0
        indices = decode_stream(
            header.indices_entropy,
            header.indices_model,
            received.indices,
            bits=8,
            max_symbols=longest,
            what=f"{where}: indices",
        )
        return _Received(header, received.scales, payload, indices)

    def _kept_count(self, numel: int) -> int:
        if self.spec.sparsifier is None or numel == 0:
            return numel
        return min(numel, max(1, math.ceil(self.spec.fraction * numel)))

    def _select(self, flat: torch.Tensor, kept: int, generator: torch.Generator | None):
        if self.spec.sparsifier == "topk":
            return top_k_positions(flat, kept)
        return random_positions(flat.numel(), kept, generator)

    def _read_tensor(
        self, position: int, received: _Received, shape: tuple[int, ...], numel: int
    ) -> ReceivedTensor:
        where, tensor = f"tensor {position}", received.header
        if tensor.format != self.spec.value_format or tensor.block_size != self.spec.block_size:
            raise PayloadError(
                f"{where}: format {tensor.format!r} block {tensor.block_size} does not match "
                f"the codec's {self.spec.value_format!r} block {self.spec.block_size}"
            )
        kept = self._kept_count(numel)
        if tensor.num_values != kept:
            raise PayloadError(f"{where}: {tensor.num_values} values, expected {kept} of {numel}")
        rows = _block_rows(shape, kept, dense=kept == numel)
        received = self._entropy_decode(where, received, kept, numel)
        values = self._decode_values(where, received, kept, rows, lazy=kept == numel)
        if kept < numel:
            if tensor.index_coding not in (DELTA_VARINT, BITMAP):
                raise PayloadError(
                    f"{where}: index coding {tensor.index_coding} is not allowed for a sparse "
                    f"tensor; allowed: {DELTA_VARINT} (delta varint), {BITMAP} (bitmap)"
                )
            try:
                positions = decode_indices(tensor.index_coding, received.indices, kept, numel)
            except PayloadError as exc:
                raise PayloadError(f"{where}: {exc}") from None
            return SparseTensor(shape, tensor.dtype, torch.from_numpy(positions), values)
        if tensor.index_coding != NONE or len(received.indices):
            raise PayloadError(f"{where}: a dense tensor must carry no indices")
        if isinstance(values, BlockDecoder):
            return BlockTensor(shape, tensor.dtype, values)
        return DenseTensor(shape, tensor.dtype, values)

    # --- values ----------------------------------------------------------------------

    def _rounding(self) -> str:
        return STOCHASTIC if self.spec.stochastic else NEAREST_EVEN

    def _encode_values(
        self, values: torch.Tensor, rows: int, generator: torch.Generator | None
    ) -> _Values:
        """Scales and payload of a 1-D float32 vector of ``rows`` equal rows."""
        spec, fmt = self.spec, self.spec.format_spec
        if values.numel() == 0:
            return _Values(SCALE_NONE)
        if spec.value_format == SIGN:
            scales, bits = encode_sign(
                values, spec.block_size, stochastic=spec.stochastic, generator=generator
            )
            finite = bool(torch.isfinite(scales).all())
            return _Values(SCALE_FP32, float32_bytes(scales), bits, finite)
        if fmt is None or not fmt.block_scaled:  # fp32, bf16, fp16, plain fp8
            payload = encode_plain(values, fmt, stochastic=spec.stochastic, generator=generator)
            return _Values(SCALE_NONE, payload=payload)
        scales, payload = encode_blocks(
            values.view(rows, -1),
            fmt,
            block=spec.block_size,
            rounding=STOCHASTIC if spec.stochastic else NEAREST_EVEN,
            scale=spec.scale,
            generator=generator,
        )
        if not bool(torch.isfinite(scales).all()):  # the values held NaN or Inf
            return _Values(self._scale_encoding(), finite=False)
        scale_encoding, scale_bytes = encode_scales(scales, is_mx=fmt.is_mx, scale=spec.scale)
        return _Values(scale_encoding, scale_bytes, payload)

    def _decode_values(
        self, where: str, received: _Received, count: int, rows: int, *, lazy: bool = False
    ) -> torch.Tensor | BlockDecoder:
        """The float32 values of one tensor; with ``lazy``, block-scaled codes that could be
        checked without decoding them come back undecoded, as their `BlockDecoder`."""
        spec, fmt = self.spec, self.spec.format_spec
        tensor, scales, payload = received.header, received.scales, received.payload
        expected_scale = self._scale_encoding() if count else SCALE_NONE
        if tensor.scale_encoding != expected_scale:
            raise PayloadError(
                f"{where}: scale encoding {tensor.scale_encoding}, expected {expected_scale}"
            )
        try:
            if count == 0:
                _expect_empty("payload", payload)
                _expect_empty("scales", scales)
                return torch.zeros(0, dtype=torch.float32)
            if spec.value_format == SIGN:
                block = spec.block_size or count
                sign_scales = decode_scales(SCALE_FP32, scales, self._num_blocks(count))
                return torch.from_numpy(decode_sign(payload, sign_scales, count, block))
            if fmt is not None and fmt.block_scaled:
                return self._decode_blocks(
                    tensor.scale_encoding, scales, payload, count, rows, lazy=lazy
                )
            _expect_empty("scales", scales)
            values = decode_plain(payload, fmt, count)
        except PayloadError as exc:
            if str(exc).startswith(where):
                raise
            raise PayloadError(f"{where}: {exc}") from None
        if not _all_finite(values):
            raise PayloadError(f"{where}: decodes to NaN or Inf values")
        return values

    def _scale_encoding(self) -> int:
        fmt = self.spec.format_spec
        if self.spec.value_format == SIGN or (
            fmt is not None and fmt.kind == "int" and not fmt.is_mx
        ):
            return SCALE_FP32
        if fmt is not None and fmt.is_mx:
            return SCALE_UE5M3_BYTES if self.spec.scale == SCALE_UE5M3 else SCALE_E8M0
        return SCALE_NONE

    def _num_blocks(self, count: int, rows: int = 1) -> int:
        """Scales of ``count`` values in ``rows`` equal rows: rows * ceil(n / block), or 1."""
        block = self.spec.block_size
        return 1 if block == 0 else rows * -(-(count // rows) // block)

    def _decode_blocks(
        self,
        encoding: int,
        scale_bytes: memoryview,
        payload: memoryview,
        count: int,
        rows: int,
        *,
        lazy: bool,
    ) -> torch.Tensor | BlockDecoder:
        layout = BlockLayout(rows, count // rows, self.spec.block_size)
        scales = decode_scales(encoding, scale_bytes, layout.num_scales)
        if not bool((scales > 0).all()):
            raise PayloadError("block scales must be > 0")
        decoder = BlockDecoder(payload, scales, self.spec.format_spec, layout)
        return decoder if lazy and decoder.adds_without_decoding else decoder.decode_all()


# --- helpers -----------------------------------------------------------------------------


def _received(view: memoryview) -> _Received:
    """Split one serialized `CompressedTensor`: protobuf parses all but the large fields."""
    rest, large, _ = wire.split(view, bulk=_LARGE, max_fields=_MAX_TENSOR_FIELDS)
    header = _parse(update_pb2.CompressedTensor, rest)
    return _Received(
        header, large.get(_SCALES, _EMPTY), large.get(_PAYLOAD, _EMPTY), large.get(_INDICES, _EMPTY)
    )


def _parse(message_type, data: bytes):
    message = message_type()
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PayloadError(f"not a CompressedUpdate message ({exc})") from None
    return message


def _block_rows(shape: tuple[int, ...], count: int, *, dense: bool) -> int:
    """Rows the block scales run along: shape[0] of a non-empty dense array with ndim >= 2.

    A 0-d or 1-D array, and the kept values of a sparsified one, are a single row.
    """
    return shape[0] if dense and len(shape) >= 2 and count > 0 else 1


def _all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite, in one pass (min and max carry any NaN or Inf)."""
    if values.numel() == 0:
        return True
    low, high = torch.aminmax(values)
    return math.isfinite(low) and math.isfinite(high)


def _non_finite(position: int) -> ValueError:
    return ValueError(
        f"array {position}: holds NaN, Inf or values beyond float32; "
        "only finite float32 updates are sent"
    )


# --- checks ------------------------------------------------------------------------------


def _checked_shape(position: int, tensor: update_pb2.CompressedTensor) -> tuple[int, ...]:
    if len(tensor.shape) > MAX_DIMS:
        raise PayloadError(
            f"tensor {position}: {len(tensor.shape)} dimensions exceed the limit of {MAX_DIMS}"
        )
    if tensor.dtype not in DTYPES:
        raise PayloadError(
            f"tensor {position}: dtype {tensor.dtype!r} is not allowed; "
            f"allowed: {', '.join(DTYPES)}"
        )
    if any(d > DEFAULT_MAX_ELEMENTS for d in tensor.shape):
        raise PayloadError(f"tensor {position}: shape {list(tensor.shape)} is too large")
    return tuple(int(d) for d in tensor.shape)


def _expect_empty(what: str, data: memoryview) -> None:
    if len(data):
        raise PayloadError(f"{what} has {len(data)} bytes, expected 0")
