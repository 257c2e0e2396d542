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
     bit (same format, block size, rounding, scale; for ``:sr`` the same generator, whose
     draws line up because both quantize the same 2-D tensor in one call) -- for 1-D and
     2-D arrays that is exactly ``fake_quantize(x)``.
   * ``sign``: one bit per value and one float32 scale per block, the block's mean
     magnitude (deterministic) or, with ``:sr``, its largest magnitude with the sign drawn
     so that the expectation is the value (unbiased). Its blocks run over the flattened
     array, not per row: sign has no ``fake_quantize`` counterpart to agree with, and
     512-value blocks on short rows (a 288-value conv fan-in) would multiply the cost of
     its scales.

Decoding is strict (see `Codec.decode`): bytes either decode to exactly what was encoded or
raise `PayloadError` with the reason.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf.message import DecodeError

from proto import update_pb2
from quant.bitpack import pack_codes, unpack_codes
from quant.codec_spec import FP32, SIGN, CodecSpec, parse_codec_spec
from quant.constants import NEAREST_EVEN, SCALE_UE5M3, STOCHASTIC, UE5M3
from quant.element_codes import code_bits, from_codes, to_codes
from quant.errors import PayloadError
from quant.formats import block_quantize, fake_quantize
from quant.index_coding import BITMAP, DELTA_VARINT, NONE, decode_indices, encode_indices

# 2: block scales run per row (version 1 blocked the flattened array; refused).
WIRE_VERSION = 2
DTYPES: tuple[str, ...] = ("float16", "float32", "float64")
MAX_DIMS = 8
# Decoding refuses updates beyond these (override per Codec); 2**28 float32s are 1 GiB.
DEFAULT_MAX_ELEMENTS = 2**28
DEFAULT_MAX_TENSORS = 4096

_SCALE_NONE = update_pb2.SCALE_NONE
_SCALE_FP32 = update_pb2.SCALE_FP32
_SCALE_E8M0 = update_pb2.SCALE_E8M0
_SCALE_UE5M3 = update_pb2.SCALE_UE5M3
_E8M0_BIAS = 127
_E8M0_NAN = 0xFF


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

    def encode(
        self, arrays: list[np.ndarray], *, generator: torch.Generator | None = None
    ) -> bytes:
        """Compress ``arrays`` (floating, finite) into one serialized `CompressedUpdate`.

        ``generator`` drives ``randk`` and stochastic rounding (seed it for reproducible
        bytes). Raises ValueError on a non-floating or non-finite array.
        """
        message = update_pb2.CompressedUpdate(version=WIRE_VERSION, codec=self.name)
        for position, array in enumerate(arrays):
            message.tensors.append(self._encode_tensor(position, array, generator))
        message.crc32 = zlib.crc32(message.SerializeToString(deterministic=True))
        return message.SerializeToString(deterministic=True)

    def decode(self, data: bytes) -> list[np.ndarray]:
        """Decompress bytes made by `encode` of a codec with the same spec.

        Raises:
            PayloadError: unparsable bytes, a wrong version, a codec other than this one,
                more than ``max_tensors`` tensors or ``max_elements`` elements, a bad shape
                or dtype, truncated or padded payloads, scales or indices, codes outside
                the format, or any non-finite value in the result.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise PayloadError(f"payload must be bytes, got {type(data).__name__}")
        message = update_pb2.CompressedUpdate()
        try:
            message.ParseFromString(bytes(data))
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise PayloadError(f"not a CompressedUpdate message ({exc})") from None
        crc, _ = message.crc32, message.ClearField("crc32")
        if zlib.crc32(message.SerializeToString(deterministic=True)) != crc:
            raise PayloadError("CRC-32 mismatch: the bytes were damaged or not made by a Codec")
        if message.version != WIRE_VERSION:
            raise PayloadError(
                f"wire version {message.version} is not supported; allowed: {WIRE_VERSION}"
            )
        if message.codec != self.name:
            raise PayloadError(f"codec {message.codec!r} does not match this run's {self.name!r}")
        if len(message.tensors) > self.max_tensors:
            raise PayloadError(
                f"{len(message.tensors)} tensors exceed the limit of {self.max_tensors}"
            )
        budget = self.max_elements
        arrays = []
        for position, tensor in enumerate(message.tensors):
            shape = _checked_shape(position, tensor)
            numel = math.prod(shape)
            if numel > budget:
                raise PayloadError(
                    f"tensor {position}: the update exceeds the limit of "
                    f"{self.max_elements} elements"
                )
            budget -= numel
            arrays.append(self._decode_tensor(position, tensor, shape, numel))
        return arrays

    # --- one tensor ----------------------------------------------------------------

    def _encode_tensor(
        self, position: int, array: np.ndarray, generator: torch.Generator | None
    ) -> update_pb2.CompressedTensor:
        array = np.asarray(array)
        if array.dtype.name not in DTYPES:
            raise ValueError(
                f"array {position}: dtype {array.dtype} cannot be encoded; "
                f"allowed: {', '.join(DTYPES)}"
            )
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            flat32 = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(flat32)):
            raise ValueError(
                f"array {position}: holds NaN, Inf or values beyond float32; "
                "only finite float32 updates are sent"
            )
        flat = torch.from_numpy(flat32)
        tensor = update_pb2.CompressedTensor(
            shape=array.shape,
            dtype=array.dtype.name,
            format=self.spec.value_format,
            block_size=self.spec.block_size,
        )
        values = flat
        kept = self._kept_count(flat.numel())
        if kept < flat.numel():
            indices = self._select(flat, kept, generator)
            tensor.index_coding, tensor.indices = encode_indices(indices.numpy(), flat.numel())
            values = flat[indices]
        tensor.num_values = values.numel()
        rows = _block_rows(array.shape, values.numel(), dense=kept == flat.numel())
        scale_encoding, scales, payload = self._encode_values(values, rows, generator)
        tensor.scale_encoding, tensor.scales, tensor.payload = scale_encoding, scales, payload
        return tensor

    def _kept_count(self, numel: int) -> int:
        if self.spec.sparsifier is None or numel == 0:
            return numel
        return min(numel, max(1, math.ceil(self.spec.fraction * numel)))

    def _select(self, flat: torch.Tensor, kept: int, generator: torch.Generator | None):
        if self.spec.sparsifier == "topk":
            chosen = torch.topk(flat.abs(), kept, sorted=False).indices
        else:
            chosen = torch.randperm(flat.numel(), generator=generator)[:kept]
        return torch.sort(chosen).values

    def _decode_tensor(
        self, position: int, tensor: update_pb2.CompressedTensor, shape: tuple[int, ...], numel: int
    ) -> np.ndarray:
        where = f"tensor {position}"
        if tensor.format != self.spec.value_format or tensor.block_size != self.spec.block_size:
            raise PayloadError(
                f"{where}: format {tensor.format!r} block {tensor.block_size} does not match "
                f"the codec's {self.spec.value_format!r} block {self.spec.block_size}"
            )
        kept = self._kept_count(numel)
        if tensor.num_values != kept:
            raise PayloadError(f"{where}: {tensor.num_values} values, expected {kept} of {numel}")
        rows = _block_rows(shape, kept, dense=kept == numel)
        values = self._decode_values(where, tensor, kept, rows)
        if kept < numel:
            if tensor.index_coding not in (DELTA_VARINT, BITMAP):
                raise PayloadError(
                    f"{where}: index coding {tensor.index_coding} is not allowed for a sparse "
                    f"tensor; allowed: {DELTA_VARINT} (delta varint), {BITMAP} (bitmap)"
                )
            try:
                positions = decode_indices(tensor.index_coding, tensor.indices, kept, numel)
            except PayloadError as exc:
                raise PayloadError(f"{where}: {exc}") from None
            dense = torch.zeros(numel, dtype=torch.float32)
            dense[torch.from_numpy(positions)] = values
            values = dense
        elif tensor.index_coding != NONE or tensor.indices:
            raise PayloadError(f"{where}: a dense tensor must carry no indices")
        result = values.numpy().reshape(shape)
        return result.astype(tensor.dtype, copy=False)

    # --- values ----------------------------------------------------------------------

    def _rounding(self) -> str:
        return STOCHASTIC if self.spec.stochastic else NEAREST_EVEN

    def _encode_values(
        self, values: torch.Tensor, rows: int, generator: torch.Generator | None
    ) -> tuple[int, bytes, bytes]:
        """(scale encoding, scales, payload) of a 1-D float32 vector of ``rows`` equal rows."""
        spec, fmt = self.spec, self.spec.format_spec
        if values.numel() == 0:
            return _SCALE_NONE, b"", b""
        if spec.value_format == FP32:
            return _SCALE_NONE, b"", _float32_bytes(values)
        if spec.value_format == SIGN:
            return self._encode_sign(values, generator)
        if fmt.torch_dtype is not None:  # bf16, fp16: the native 16-bit pattern
            rounded = fake_quantize(
                values, fmt.name, rounding=self._rounding(), generator=generator
            )
            return (
                _SCALE_NONE,
                b"",
                rounded.to(fmt.torch_dtype).view(torch.int16).numpy().astype("<i2").tobytes(),
            )
        if not fmt.block_scaled:  # plain fp8: codes of the rounded values, no scale
            rounded = fake_quantize(
                values, fmt.name, rounding=self._rounding(), generator=generator
            )
            return _SCALE_NONE, b"", pack_codes(to_codes(rounded, fmt), code_bits(fmt))
        elements, scales = block_quantize(
            values.view(rows, -1),
            fmt.name,
            block_size=spec.block_size,
            rounding=self._rounding(),
            scale=spec.scale,
            generator=generator,
        )
        # Drop each row's zero padding; the codes of all rows go out back to back.
        codes = to_codes(elements.reshape(rows, -1)[:, : values.numel() // rows], fmt)
        scale_encoding, scale_bytes = _encode_scales(scales.reshape(-1), fmt.is_mx, spec.scale)
        return scale_encoding, scale_bytes, pack_codes(codes, code_bits(fmt))

    def _decode_values(
        self, where: str, tensor: update_pb2.CompressedTensor, count: int, rows: int
    ) -> torch.Tensor:
        spec, fmt = self.spec, self.spec.format_spec
        expected_scale = self._scale_encoding()
        if count == 0:
            expected_scale = _SCALE_NONE
        if tensor.scale_encoding != expected_scale:
            raise PayloadError(
                f"{where}: scale encoding {tensor.scale_encoding}, expected {expected_scale}"
            )
        try:
            if count == 0:
                _expect_length(where, "payload", tensor.payload, 0)
                _expect_length(where, "scales", tensor.scales, 0)
                return torch.zeros(0, dtype=torch.float32)
            if spec.value_format == FP32:
                _expect_length(where, "scales", tensor.scales, 0)
                _expect_length(where, "payload", tensor.payload, 4 * count)
                values = torch.from_numpy(np.frombuffer(tensor.payload, "<f4").astype(np.float32))
            elif spec.value_format == SIGN:
                values = self._decode_sign(where, tensor, count)
            elif fmt.torch_dtype is not None:
                _expect_length(where, "scales", tensor.scales, 0)
                _expect_length(where, "payload", tensor.payload, 2 * count)
                words = torch.from_numpy(np.frombuffer(tensor.payload, "<i2").astype(np.int16))
                values = words.view(fmt.torch_dtype).to(torch.float32)
            elif not fmt.block_scaled:
                _expect_length(where, "scales", tensor.scales, 0)
                values = from_codes(unpack_codes(tensor.payload, code_bits(fmt), count), fmt)
            else:
                values = self._decode_blocks(tensor, count, rows)
        except PayloadError as exc:
            if str(exc).startswith(where):
                raise
            raise PayloadError(f"{where}: {exc}") from None
        if not torch.isfinite(values).all():
            raise PayloadError(f"{where}: decodes to NaN or Inf values")
        return values

    def _scale_encoding(self) -> int:
        fmt = self.spec.format_spec
        if self.spec.value_format == SIGN or (
            fmt is not None and fmt.kind == "int" and not fmt.is_mx
        ):
            return _SCALE_FP32
        if fmt is not None and fmt.is_mx:
            return _SCALE_UE5M3 if self.spec.scale == SCALE_UE5M3 else _SCALE_E8M0
        return _SCALE_NONE

    def _num_blocks(self, count: int, rows: int = 1) -> int:
        """Scales of ``count`` values in ``rows`` equal rows: rows * ceil(n / block), or 1."""
        block = self.spec.block_size
        return 1 if block == 0 else rows * -(-(count // rows) // block)

    def _decode_blocks(
        self, tensor: update_pb2.CompressedTensor, count: int, rows: int
    ) -> torch.Tensor:
        fmt = self.spec.format_spec
        scales = _decode_scales(tensor.scale_encoding, tensor.scales, self._num_blocks(count, rows))
        if not bool((scales > 0).all()):
            raise PayloadError("block scales must be > 0")
        elements = from_codes(unpack_codes(tensor.payload, code_bits(fmt), count), fmt)
        return _scale_rows(elements, scales, rows, self.spec.block_size)

    # --- sign ------------------------------------------------------------------------

    def _encode_sign(
        self, values: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[int, bytes, bytes]:
        count, block = values.numel(), self.spec.block_size or values.numel()
        padded = torch.zeros(self._num_blocks(count) * block, dtype=torch.float32)
        padded[:count] = values
        blocks = padded.view(-1, block)
        if self.spec.stochastic:
            scales = blocks.abs().amax(dim=1)
            safe = torch.where(scales > 0, scales, torch.ones_like(scales))
            p_plus = (1 + blocks / safe.view(-1, 1)) / 2
            u = torch.rand(blocks.shape, generator=generator)
            negative = (u >= p_plus).reshape(-1)[:count]
        else:
            sizes = torch.full((blocks.shape[0],), float(block))
            sizes[-1] = count - block * (blocks.shape[0] - 1)
            scales = blocks.abs().sum(dim=1, dtype=torch.float64).div(sizes).to(torch.float32)
            negative = values < 0
        bits = negative.numpy().astype(np.uint8)
        return _SCALE_FP32, _float32_bytes(scales), pack_codes(bits, 1)

    def _decode_sign(
        self, where: str, tensor: update_pb2.CompressedTensor, count: int
    ) -> torch.Tensor:
        blocks = self._num_blocks(count)
        scales = _decode_scales(_SCALE_FP32, tensor.scales, blocks)
        if bool((scales < 0).any()):
            raise PayloadError("sign scales must be >= 0")
        negative = torch.from_numpy(unpack_codes(tensor.payload, 1, count).astype(bool))
        per_value = scales.repeat_interleave(self.spec.block_size or count)[:count]
        return torch.where(negative, -per_value, per_value)


# --- block rows --------------------------------------------------------------------------


def _block_rows(shape: tuple[int, ...], count: int, *, dense: bool) -> int:
    """Rows the block scales run along: shape[0] of a non-empty dense array with ndim >= 2.

    A 0-d or 1-D array, and the kept values of a sparsified one, are a single row.
    """
    return shape[0] if dense and len(shape) >= 2 and count > 0 else 1


def _scale_rows(
    elements: torch.Tensor, scales: torch.Tensor, rows: int, block: int
) -> torch.Tensor:
    """Multiply each block of ``rows`` equal rows of ``elements`` by its scale, in place.

    The same float32 products as fake_quantize's zero-padded ``blocks * scale``, without
    materialising the padding: a shape such as (2**28, 1) would pad every row to a block.
    """
    if block == 0:
        return elements.mul_(scales)
    grid, per_row = elements.view(rows, -1), scales.view(rows, -1)
    whole = grid.shape[1] - grid.shape[1] % block
    if whole:
        grid[:, :whole].unflatten(1, (-1, block)).mul_(per_row[:, : whole // block, None])
    if whole < grid.shape[1]:
        grid[:, whole:].mul_(per_row[:, -1:])
    return elements


# --- scales ------------------------------------------------------------------------------


def _encode_scales(scales: torch.Tensor, is_mx: bool, scale: str) -> tuple[int, bytes]:
    """Block scales -> (scale encoding, bytes): float32 for integers, one byte for MX."""
    if not is_mx:
        return _SCALE_FP32, _float32_bytes(scales)
    if scale == SCALE_UE5M3:
        return _SCALE_UE5M3, to_codes(scales, UE5M3, signed=False).tobytes()
    mantissa, exponent = torch.frexp(scales.to(torch.float64))
    if not bool((mantissa == 0.5).all()):
        raise ValueError("E8M0 scales must be powers of two")
    return _SCALE_E8M0, (exponent - 1 + _E8M0_BIAS).to(torch.uint8).numpy().tobytes()


def _decode_scales(encoding: int, data: bytes, blocks: int) -> torch.Tensor:
    """float32 block scales; each must be finite and > 0 (sign: >= 0, checked by caller)."""
    if encoding == _SCALE_FP32:
        _expect_length("", "scales", data, 4 * blocks)
        scales = torch.from_numpy(np.frombuffer(data, "<f4").astype(np.float32))
        if not bool(torch.isfinite(scales).all()):
            raise PayloadError("scales hold NaN or Inf")
        return scales
    _expect_length("", "scales", data, blocks)
    codes = np.frombuffer(data, np.uint8)
    if encoding == _SCALE_UE5M3:
        return from_codes(codes, UE5M3, signed=False)
    if np.any(codes == _E8M0_NAN):
        raise PayloadError("an E8M0 scale is the NaN code 0xFF")
    return torch.from_numpy(np.ldexp(1.0, codes.astype(np.int32) - _E8M0_BIAS).astype(np.float32))


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


def _expect_length(where: str, what: str, data: bytes, expected: int) -> None:
    if len(data) != expected:
        prefix = f"{where}: " if where else ""
        raise PayloadError(f"{prefix}{what} has {len(data)} bytes, expected {expected}")


def _float32_bytes(values: torch.Tensor) -> bytes:
    """Little-endian float32 bytes of a float32 tensor (values, fp32 scales)."""
    return values.numpy().astype("<f4").tobytes()
