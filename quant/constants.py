"""Every element-format and scale-format constant used by :mod:`quant`.

The microscaling (MX) numbers follow the OCP Microscaling Formats (MX) v1.0
specification, section 5 (concrete formats) and section 6.3 (conversion):
https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf

The plain FP8 numbers follow the OCP 8-bit floating point (OFP8) specification:
E4M3 has no infinities (its only NaN is S.1111.111, so the largest finite value is
1.75 * 2**8 = 448), E5M2 is IEEE-like (largest finite value 1.75 * 2**15 = 57344).

A float format is described by (ebits, mbits, emax, max_normal):

* ``bias = 2**(ebits - 1) - 1`` and ``emin = 1 - bias`` (the exponent of the
  smallest normal; subnormals share the spacing ``2**(emin - mbits)``);
* ``emax`` is the exponent of the largest finite binade;
* ``max_normal`` is the largest finite magnitude; values beyond it saturate.

An integer ("int") format is the grid ``k * 2**-mbits`` with
``|k * 2**-mbits| <= max_normal``: ``mbits`` counts fraction bits (0 for the plain
int8/int4 formats, 6 for MXINT8's 1.6 fixed point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["int", "float", "cast"]


@dataclass(frozen=True)
class FormatSpec:
    """Static description of one number format.

    Attributes:
        name: the public format name accepted by ``fake_quantize``.
        kind: ``"int"`` (uniform grid), ``"float"`` (sign/exponent/mantissa grid) or
            ``"cast"`` (a float format torch supports natively; nearest rounding is a cast).
        ebits: exponent bits (0 for integer formats).
        mbits: mantissa bits of a float format, fraction bits of an integer format.
        emax: exponent of the largest finite binade; for MX formats it is the
            ``emax_elem`` of the shared-exponent rule.
        max_normal: largest finite magnitude; larger values saturate to it.
        is_mx: True for OCP MX formats (power-of-two scale shared by a block).
        scales: scale encodings the format accepts for the ``scale`` argument.
        torch_dtype: native dtype used for the fast round-to-nearest path, if any.
    """

    name: str
    kind: Kind
    ebits: int
    mbits: int
    emax: int
    max_normal: float
    is_mx: bool
    scales: tuple[str, ...] = ("e8m0",)
    torch_dtype: torch.dtype | None = None

    @property
    def bias(self) -> int:
        """Exponent bias of a float format (0 for integer formats)."""
        return 2 ** (self.ebits - 1) - 1 if self.ebits else 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number of a float format."""
        return 1 - self.bias

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: the subnormal spacing (or the integer step)."""
        if self.kind == "int":
            return 2.0**-self.mbits
        return 2.0 ** (self.emin - self.mbits)

    @property
    def block_scaled(self) -> bool:
        """Whether a per-block scale is computed (MX formats and absmax integers)."""
        return self.is_mx or self.kind == "int"


# --- Rounding modes and scale encodings ------------------------------------------------

NEAREST_EVEN = "nearest_even"
STOCHASTIC = "stochastic"
ROUNDINGS: tuple[str, ...] = (NEAREST_EVEN, STOCHASTIC)

SCALE_E8M0 = "e8m0"
SCALE_UE5M3 = "ue5m3"
SCALES: tuple[str, ...] = (SCALE_E8M0, SCALE_UE5M3)

# MX v1.0 section 5: the default (and only standardised) block size.
MX_BLOCK_SIZE = 32

# E8M0 (MX v1.0 section 5.4): an unbiased exponent in [-127, 127]; 0xFF is NaN.
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127

# Unsigned FP8 E5M3 block scale: 5 exponent bits (bias 15), 3 mantissa bits, no sign,
# subnormals. The all-ones exponent field is reserved (as in IEEE-style E5 formats), so
# the largest finite value is 2**15 * 1.875 = 61440 and the smallest is 2**-17.
UE5M3 = FormatSpec("ue5m3", "float", ebits=5, mbits=3, emax=15, max_normal=61440.0, is_mx=False)

# --- Integer formats -------------------------------------------------------------------

INT8_QMAX = 127
INT4_QMAX = 7
# MXINT8 elements are 1.6 fixed point: k / 64 for k in [-127, 127] (MX v1.0 section 5.3).
MXINT8_FRACTION_BITS = 6
MXINT8_MAX = 127 / 64

# --- Float formats ---------------------------------------------------------------------

FP8_E4M3_MAX = 448.0
FP8_E5M2_MAX = 57344.0
FP6_E3M2_MAX = 28.0
FP6_E2M3_MAX = 7.5
FP4_E2M1_MAX = 6.0
# Every non-negative FP4 E2M1 value (MX v1.0 section 5.3.3).
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP16_MAX = 65504.0
BF16_MAX = (2.0 - 2.0**-7) * 2.0**127

# MX element formats that may use the UE5M3 block scale instead of E8M0.
_NARROW_SCALES = (SCALE_E8M0, SCALE_UE5M3)

_SPECS: tuple[FormatSpec, ...] = (
    FormatSpec("bf16", "cast", 8, 7, 127, BF16_MAX, False, torch_dtype=torch.bfloat16),
    FormatSpec("fp16", "cast", 5, 10, 15, FP16_MAX, False, torch_dtype=torch.float16),
    FormatSpec("fp8_e4m3", "float", 4, 3, 8, FP8_E4M3_MAX, False),
    FormatSpec("fp8_e5m2", "float", 5, 2, 15, FP8_E5M2_MAX, False),
    FormatSpec("int8", "int", 0, 0, 6, float(INT8_QMAX), False),
    FormatSpec("int4", "int", 0, 0, 2, float(INT4_QMAX), False),
    FormatSpec("mxfp8_e4m3", "float", 4, 3, 8, FP8_E4M3_MAX, True),
    FormatSpec("mxfp8_e5m2", "float", 5, 2, 15, FP8_E5M2_MAX, True),
    FormatSpec("mxfp6_e3m2", "float", 3, 2, 4, FP6_E3M2_MAX, True, scales=_NARROW_SCALES),
    FormatSpec("mxfp6_e2m3", "float", 2, 3, 2, FP6_E2M3_MAX, True, scales=_NARROW_SCALES),
    FormatSpec("mxfp4_e2m1", "float", 2, 1, 2, FP4_E2M1_MAX, True, scales=_NARROW_SCALES),
    FormatSpec("mxint8", "int", 0, MXINT8_FRACTION_BITS, 0, MXINT8_MAX, True),
)

REGISTRY: dict[str, FormatSpec] = {spec.name: spec for spec in _SPECS}
FORMATS: tuple[str, ...] = tuple(REGISTRY)
