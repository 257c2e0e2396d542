"""Block scales on the wire: float32 (integer formats, sign), E8M0 or UE5M3 bytes (MX)."""

from __future__ import annotations

import numpy as np
import torch

from proto import update_pb2
from quant.constants import SCALE_UE5M3, UE5M3
from quant.element_codes import from_codes, to_codes
from quant.errors import PayloadError

SCALE_NONE = update_pb2.SCALE_NONE
SCALE_FP32 = update_pb2.SCALE_FP32
SCALE_E8M0 = update_pb2.SCALE_E8M0
SCALE_UE5M3_BYTES = update_pb2.SCALE_UE5M3
# E8M0 (MX v1.0 section 5.4): the byte is the exponent + 127; 0xFF is NaN.
E8M0_BIAS = 127
E8M0_NAN = 0xFF


def encode_scales(scales: torch.Tensor, *, is_mx: bool, scale: str) -> tuple[int, np.ndarray]:
    """Finite block scales -> (scale encoding, bytes): float32 for integers, a byte for MX."""
    if not is_mx:
        return SCALE_FP32, float32_bytes(scales)
    if scale == SCALE_UE5M3:
        return SCALE_UE5M3_BYTES, to_codes(scales, UE5M3, signed=False)
    # A power of two 2**e >= 2**-126 has float32 exponent field e + 127 (the E8M0 code)
    # and no mantissa bits; 2**-127 (code 0) is the subnormal 0x00400000.
    bits = scales.view(torch.int32)
    if not bool((((bits & 0x807FFFFF) == 0) | (bits == 0x00400000)).all()):
        raise ValueError("E8M0 scales must be powers of two")
    return SCALE_E8M0, (bits >> 23).to(torch.uint8).numpy()


def decode_scales(encoding: int, data: memoryview, blocks: int) -> torch.Tensor:
    """float32 block scales; each must be finite and > 0 (sign: >= 0, checked by caller).

    Raises:
        PayloadError: not ``blocks`` scales, a NaN or Inf scale, the E8M0 NaN code.
    """
    size = 4 * blocks if encoding == SCALE_FP32 else blocks
    if len(data) != size:
        raise PayloadError(f"scales has {len(data)} bytes, expected {size}")
    if encoding == SCALE_FP32:
        scales = torch.from_numpy(np.frombuffer(data, "<f4").astype(np.float32))
        if not bool(torch.isfinite(scales).all()):
            raise PayloadError("scales hold NaN or Inf")
        return scales
    codes = np.frombuffer(data, np.uint8)
    if encoding == SCALE_UE5M3_BYTES:
        return from_codes(codes, UE5M3, signed=False)
    if np.any(codes == E8M0_NAN):
        raise PayloadError("an E8M0 scale is the NaN code 0xFF")
    return torch.from_numpy(np.ldexp(1.0, codes.astype(np.int32) - E8M0_BIAS).astype(np.float32))


def float32_bytes(values: torch.Tensor) -> np.ndarray:
    """Little-endian float32 bytes of a float32 tensor, uncopied on little-endian machines."""
    array = values.numpy()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
