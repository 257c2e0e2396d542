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

How (all exact, no table search over the elements):

* integers: one float -> int8 conversion (the values are whole multiples of the step).
* floats: multiplied by ``2**(bias - 15)``, every value of a format with at most 5 exponent
  and 10 mantissa bits (FP8, FP6, FP4, UE5M3) lands on the FP16 grid with its exponent
  field unchanged and its subnormals on FP16's subnormals. So the FP16 bits are the code
  with ``10 - mbits`` zero bits below the mantissa and the sign on bit 15: encoding is one
  float32 -> FP16 conversion and a few shifts and masks, decoding the reverse. (FP16 rather
  than torch's FP8 dtypes: its conversions are vectorized, 6x faster here.)

Encoding expects values on the grid (callers pass rounded elements) and does not check it.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import torch

from quant.constants import FormatSpec
from quant.errors import PayloadError

_FP16_BIAS, _FP16_MBITS = 15, 10


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


def _fp16_layout(spec: FormatSpec) -> tuple[int, int]:
    """(exponent shift, dropped bits): value * 2**shift in FP16 is the code << dropped."""
    if spec.ebits > 5 or spec.mbits > _FP16_MBITS:
        raise ValueError(f"{spec.name} does not fit FP16's exponent and mantissa fields")
    return spec.bias - _FP16_BIAS, _FP16_MBITS - spec.mbits


def to_codes(
    values: torch.Tensor, spec: FormatSpec, *, signed: bool = True, overwrite: bool = False
) -> np.ndarray:
    """Codes (uint8, flattened in C order) of float32 ``values`` on the grid of ``spec``.

    The values must lie on the grid (callers pass rounded elements); that is not checked,
    and an off-grid value would round to a neighbouring code. With ``overwrite`` the
    values may be scaled in place, which saves a pass. The two steps, `narrow_bits`
    (torch) and `codes_from_bits` (numpy, any slice), can also be called on their own.
    """
    return codes_from_bits(narrow_bits(values, spec, overwrite=overwrite), spec, signed=signed)


def narrow_bits(values: torch.Tensor, spec: FormatSpec, *, overwrite: bool = False) -> np.ndarray:
    """The narrow bit patterns codes are cut from, flattened: one torch conversion.

    int8 two's complement (integer formats) or E4M3 bytes as uint8, else FP16 bits as
    uint16 (of the values times ``2**(bias - 15)``).
    """
    if spec.kind == "int":
        k = _scaled(values, spec.mbits, overwrite).to(torch.int8)
        return k.reshape(-1).numpy().view(np.uint8)
    if (spec.ebits, spec.mbits) == (4, 3):  # torch's float8_e4m3fn is E4M3
        return values.to(torch.float8_e4m3fn).reshape(-1).view(torch.uint8).numpy()
    shift, _ = _fp16_layout(spec)
    half = _scaled(values, shift, overwrite).to(torch.float16).reshape(-1)
    return half.view(torch.int16).numpy().view(np.uint16)


def codes_from_bits(bits: np.ndarray, spec: FormatSpec, *, signed: bool = True) -> np.ndarray:
    """The uint8 codes of `narrow_bits`'s patterns (or of any slice of them)."""
    width = code_bits(spec, signed=signed)
    if bits.dtype == np.uint8:  # int8 (masked to the width) or E4M3: already the code
        return bits & np.uint8((1 << width) - 1) if width < 8 else bits
    _, drop = _fp16_layout(spec)
    codes = np.empty(bits.size, dtype=np.uint8)
    # After `bits >> drop` the magnitude code is in the low bits, the sign on bit 15 - drop
    # and zeros between (the scaled exponent field is below 2**ebits).
    magnitude = bits >> np.uint16(drop)
    if not signed:
        np.copyto(codes, magnitude, casting="unsafe")
        return codes
    gap = 15 - drop - (width - 1)  # from the sign's bit down to bit width - 1
    sign = magnitude >> np.uint16(gap)
    if gap < width - 1:  # the shifted copy would spill magnitude bits: mask both
        sign &= np.uint16(1 << (width - 1))
        magnitude &= np.uint16((1 << (width - 1)) - 1)
    magnitude |= sign
    np.bitwise_and(magnitude, (1 << width) - 1, out=codes, casting="unsafe")
    return codes


def from_codes(codes: np.ndarray, spec: FormatSpec, *, signed: bool = True) -> torch.Tensor:
    """float32 values of uint8 ``codes``; a code that is no finite value -> PayloadError."""
    narrow, factor = code_values(codes, spec, signed=signed)
    values = narrow.to(torch.float32)
    return values.mul_(factor) if factor != 1 else values


def code_values(
    codes: np.ndarray, spec: FormatSpec, *, signed: bool = True
) -> tuple[torch.Tensor, float]:
    """``(narrow, factor)``: the values of ``codes`` are ``narrow.to(float32) * factor``.

    ``narrow`` is int8 (integer formats) or float16 (floats), both exact, and ``factor``
    (`code_factor`) a power of two: a caller that multiplies by block scales next can let
    torch widen ``narrow`` inside that multiplication and fold ``factor`` into the scales
    when that is exact, one pass instead of three. A code that is no finite value ->
    PayloadError. The numpy step, `bits_from_codes`, can also run on its own, on slices.
    """
    out = np.empty(codes.size, dtype=np.uint8 if spec.kind == "int" else np.uint16)
    bits_from_codes(codes, spec, signed=signed, out=out)
    return narrow_tensor(out, spec), code_factor(spec)


def code_factor(spec: FormatSpec) -> float:
    """The power of two `code_values` leaves to multiply by: 2**-fraction bits for integer
    formats, 2**(15 - bias) for floats."""
    if spec.kind == "int":
        return 2.0**-spec.mbits
    return 2.0 ** -_fp16_layout(spec)[0]


def narrow_tensor(bits: np.ndarray, spec: FormatSpec) -> torch.Tensor:
    """The int8 or float16 tensor of `bits_from_codes`'s output, sharing its memory."""
    dtype = torch.int8 if spec.kind == "int" else torch.float16
    if not bits.flags.writeable:  # codes read in place from a payload: only ever read
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(bits).view(dtype)
    return torch.from_numpy(bits).view(dtype)


def bits_from_codes(
    codes: np.ndarray, spec: FormatSpec, *, signed: bool = True, out: np.ndarray
) -> None:
    """Write the narrow patterns of ``codes`` into ``out`` (uint8 for integers, else uint16).

    Raises:
        PayloadError: a code that is no finite value (the most negative integer, a float
            code past max_normal).
    """
    width = code_bits(spec, signed=signed)
    if spec.kind == "int":
        _check_integer_codes(codes, spec, width)
        if width < 8:  # sign-extend the nibble: 8..15 -> -8..-1
            np.bitwise_xor(codes, np.uint8(8), out=out)
            out -= np.uint8(8)
        else:
            out[:] = codes
        return
    magnitude_bits = width - 1 if signed else width
    table = magnitudes(spec)
    if len(table) < 1 << magnitude_bits:
        largest = int((codes & np.uint8((1 << magnitude_bits) - 1)).max(initial=0))
        if largest >= len(table):
            raise PayloadError(
                f"{spec.name} payload holds a code that is not a finite value "
                f"(magnitude code {largest}, allowed 0..{len(table) - 1})"
            )
    _, drop = _fp16_layout(spec)
    out[:] = codes
    if signed:  # the sign from bit width - 1 to bit 15
        sign = out << np.uint16(16 - width)
        sign &= np.uint16(0x8000)
        out &= np.uint16((1 << magnitude_bits) - 1)
        out <<= np.uint16(drop)
        out |= sign
    else:
        out <<= np.uint16(drop)


def all_codes_finite(spec: FormatSpec) -> bool:
    """Whether every code of a float format is a finite value (FP4, FP6: no Inf or NaN)."""
    return spec.kind != "int" and len(magnitudes(spec)) == 1 << (spec.ebits + spec.mbits)


def check_packed_integer_codes(packed: np.ndarray, spec: FormatSpec) -> None:
    """`bits_from_codes`'s check of an integer format's codes, on the packed bytes.

    8-bit codes are the bytes; 4-bit codes are the two nibbles of each byte (zero padding
    after the last code is a valid code). Raises PayloadError as `bits_from_codes` does.
    """
    width = code_bits(spec)
    if width == 8:
        _check_integer_codes(packed, spec, width)
        return
    if bool(((packed & np.uint8(0x0F)) == 8).any()) or bool(((packed >> 4) == 8).any()):
        raise _integer_code_error(spec, width)


def _check_integer_codes(codes: np.ndarray, spec: FormatSpec, width: int) -> None:
    """Refuse the most negative two's complement code, -2**(width - 1) (never sent)."""
    if codes.size and bool((codes == np.uint8(1 << (width - 1))).any()):
        raise _integer_code_error(spec, width)


def _integer_code_error(spec: FormatSpec, width: int) -> PayloadError:
    return PayloadError(
        f"{spec.name} payload holds the code {-(1 << (width - 1))}, "
        f"outside the format's range ±{int(spec.max_normal * 2**spec.mbits)}"
    )


def _scaled(values: torch.Tensor, shift: int, overwrite: bool) -> torch.Tensor:
    """``values * 2**shift`` (exact), in place with ``overwrite``."""
    if not shift:
        return values
    return values.mul_(2.0**shift) if overwrite else values * 2.0**shift
