"""Element values <-> their bit codes, for every format a codec can send.

A quantized element is a value on its format's grid (see :mod:`quant.formats`); on the wire
it is the format's bit pattern:

* integer formats (``int8``, ``int4``, ``mxint8``): ``k = value * 2**fraction_bits`` in
  two's complement of the element width (8 or 4 bits). The most negative code
  (-128, -8) is never produced (the grids are symmetric) and is refused when decoding.
* float formats (``fp8_*``, every ``mxfp*``, the ``ue5m3`` scale): sign bit, then the
  exponent and mantissa fields, i.e. ``sign << (width - 1) | magnitude_index``, where the
  magnitude index orders the non-negative values of the format (0, the subnormals, the
  normals up to max_normal). Codes past max_normal (Inf/NaN patterns such as E4M3's
  S.1111.111) are refused when decoding. Unsigned formats (``ue5m3``) have no sign bit.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from quant.constants import FormatSpec
from quant.errors import PayloadError


def code_bits(spec: FormatSpec, *, signed: bool = True) -> int:
    """Width of one element code (bits): 8 for int8/mxint8, 4 for int4, 1+e+m for floats."""
    if spec.kind == "int":
        return 4 if spec.max_normal * 2**spec.mbits < 8 else 8
    return int(signed) + spec.ebits + spec.mbits


@cache
def magnitudes(spec: FormatSpec) -> np.ndarray:
    """Every non-negative finite value of a float format, indexed by its magnitude code."""
    values = []
    for code in range(2 ** (spec.ebits + spec.mbits)):
        exponent, mantissa = code >> spec.mbits, code & ((1 << spec.mbits) - 1)
        if exponent == 0:
            value = mantissa * 2.0 ** (spec.emin - spec.mbits)
        else:
            value = (1 + mantissa / 2**spec.mbits) * 2.0 ** (exponent - spec.bias)
        if value > spec.max_normal:
            break
        values.append(value)
    table = np.asarray(values, dtype=np.float32)
    table.flags.writeable = False
    return table


def to_codes(values: torch.Tensor, spec: FormatSpec, *, signed: bool = True) -> np.ndarray:
    """Codes (uint8) of float32 ``values`` that lie exactly on the grid of ``spec``.

    Raises:
        ValueError: a value is not on the grid (a bug upstream: callers pass rounded values).
    """
    flat = values.reshape(-1).numpy()
    width = code_bits(spec, signed=signed)
    if spec.kind == "int":
        k = flat * np.float32(2**spec.mbits)
        ints = np.rint(k).astype(np.int16)
        if (
            not np.array_equal(ints, k)
            or np.abs(ints).max(initial=0) > spec.max_normal * 2**spec.mbits
        ):
            raise ValueError(f"values are not on the {spec.name} grid")
        return (ints & ((1 << width) - 1)).astype(np.uint8)
    table = magnitudes(spec)
    magnitude = np.abs(flat)
    index = np.searchsorted(table, magnitude).clip(max=len(table) - 1)
    if not np.array_equal(table[index], magnitude):
        raise ValueError(f"values are not on the {spec.name} grid")
    codes = index.astype(np.uint8)
    if signed:
        codes |= np.signbit(flat).astype(np.uint8) << (width - 1)
    return codes


def from_codes(codes: np.ndarray, spec: FormatSpec, *, signed: bool = True) -> torch.Tensor:
    """float32 values of uint8 ``codes``; a code that is no finite value -> PayloadError."""
    width = code_bits(spec, signed=signed)
    if spec.kind == "int":
        k = codes.astype(np.int16)
        k = np.where(k >= 1 << (width - 1), k - (1 << width), k)
        if np.any(k == -(1 << (width - 1))):
            raise PayloadError(
                f"{spec.name} payload holds the code {-(1 << (width - 1))}, "
                f"outside the format's range ±{int(spec.max_normal * 2**spec.mbits)}"
            )
        return torch.from_numpy(k.astype(np.float32) * np.float32(2.0**-spec.mbits))
    table = magnitudes(spec)
    index = codes & ((1 << (width - 1 if signed else width)) - 1)
    if index.size and int(index.max()) >= len(table):
        raise PayloadError(
            f"{spec.name} payload holds a code that is not a finite value "
            f"(magnitude code {int(index.max())}, allowed 0..{len(table) - 1})"
        )
    values = table[index]
    if signed:
        values = np.where(codes >> (width - 1) != 0, -values, values)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
