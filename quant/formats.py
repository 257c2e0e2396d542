"""Fake quantization: round a tensor to a number format and return it as float32.

Supported formats (see :mod:`quant.constants` for every constant):

* ``bf16``, ``fp16`` - plain casts with round-to-nearest-even. Overflow saturates to
  the largest finite value (``±65504`` for fp16) instead of torch's ``inf``, so that
  every format in this module treats overflow the same way.
* ``fp8_e4m3``, ``fp8_e5m2`` - OCP FP8 elements with **no per-tensor scale**: values are
  rounded as they are, subnormals included, and saturate to ±448 / ±57344.
* ``int8``, ``int4`` - symmetric absmax integers, one scale per block of ``block_size``
  elements along ``axis`` (``block_size=0``: one scale for the whole tensor).
* ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e3m2``, ``mxfp6_e2m3``, ``mxfp4_e2m1``, ``mxint8``
  - OCP Microscaling v1.0 (section 5 formats, section 6.3 conversion rule):
  https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf

Special values: NaN inputs stay NaN. For the element-wise formats (bf16, fp16, fp8) ±Inf
saturates to ±max finite (the "satfinite" convention); for every block-scaled format a
NaN or Inf anywhere in a block makes the whole block NaN (MX: the shared scale is NaN).

Inputs of any floating dtype are first converted to float32; the result is float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quant.constants import (
    E8M0_MIN_EXP,
    FORMATS,
    NEAREST_EVEN,
    REGISTRY,
    ROUNDINGS,
    SCALE_E8M0,
    SCALES,
    STOCHASTIC,
    UE5M3,
    FormatSpec,
)
from quant.uniforms import Uniforms

# (integer view dtype, mantissa bits, exponent bias) of the dtypes we compute in; the
# exponent field is read straight from the bits because log2 is not exact near powers of 2.
_FLOAT_LAYOUT: dict[torch.dtype, tuple[torch.dtype, int, int]] = {
    torch.float32: (torch.int32, 23, 127),
    torch.float64: (torch.int64, 52, 1023),
}
_F32_EXP_MASK = 0x7F800000


def fake_quantize(
    x: torch.Tensor,
    fmt: str,
    *,
    block_size: int = 32,
    axis: int = -1,
    rounding: str = NEAREST_EVEN,
    scale: str = SCALE_E8M0,
    generator: torch.Generator | None = None,
    uniforms: Uniforms | None = None,
) -> torch.Tensor:
    """Round ``x`` to the number format ``fmt`` and return the dequantized float32 tensor.

    ``fp8_e4m3`` / ``fp8_e5m2`` apply **no per-tensor scale**: callers that need one must
    scale ``x`` themselves. ``bf16`` / ``fp16`` saturate on overflow (fp16: ±65504), where
    a plain torch cast would give inf. Zeros may come back as +0.0 whatever their sign.

    Args:
        x: a floating-point tensor of any shape.
        fmt: one of :data:`quant.FORMATS`.
        block_size: elements sharing one scale, taken along ``axis`` (block-scaled formats
            only). ``0`` means one scale for the whole tensor; ``x.shape[axis]`` gives a
            per-channel scale. A ragged tail block behaves as if zero-padded.
        axis: the dimension the blocks run along.
        rounding: ``"nearest_even"`` or ``"stochastic"``. Stochastic rounding picks one of
            the two neighbouring grid points with probability proportional to proximity,
            so ``E[q(x)] = x`` for ``|x|`` inside the representable range; values beyond
            the largest finite value still saturate deterministically (biased there;
            with E8M0 scales that includes MX block maxima above max_elem * 2**shared_exp).
        scale: block-scale encoding of the MX formats. ``"e8m0"`` is the MX power of two
            and the only value the other formats accept (they ignore it).
            ``"ue5m3"`` (mxfp4_e2m1 and mxfp6_* only) uses an unsigned FP8 E5M3 scale:
            ``s = amax / max_elem`` rounded to nearest-even on the UE5M3 grid, bumped to
            the next UE5M3 value up when that rounding went below ``amax / max_elem`` (so
            ``amax / s <= max_elem`` and no element saturates), then clamped to
            ``[2**-17, 61440]``; elements are ``fl32(x / s)`` rounded to the element grid.
            Only the block amax can saturate, and only when ``amax > 61440 * max_elem``.
        generator: random source for stochastic rounding: one draw from it seeds the
            tensor's stream of uniforms (:class:`quant.uniforms.Uniforms`), so a seeded
            generator makes the result reproducible.
        uniforms: the stream to draw from instead, from its position ``start`` on: value
            ``i`` (C order; for block formats, of the blocks zero-padded along ``axis``)
            takes draw ``start + i``. A codec rounding a large tensor a piece at a time
            passes each piece its span of one stream, and gets the draws of one call.

    Returns:
        A float32 tensor with the shape of ``x``.

    Raises:
        ValueError: on an unknown format, rounding or scale, a scale the format does not
            support, a negative block size, a non-floating dtype or an out-of-range axis.
    """
    spec = _validate(x, fmt, block_size, axis, rounding, scale)
    if x.dim() == 0:
        # A scalar is a one-element vector; both valid axes (-1, 0) name its only dim.
        flat = fake_quantize(
            x.reshape(1),
            fmt,
            block_size=block_size,
            rounding=rounding,
            scale=scale,
            generator=generator,
            uniforms=uniforms,
        )
        return flat.reshape(())
    if x.numel() == 0:
        return x.to(torch.float32, copy=True)
    if uniforms is None:
        uniforms = _uniforms(rounding, generator)
    if spec.block_scaled:
        return _quantize_blocks(x, spec, block_size, axis, rounding, scale, uniforms)
    return _quantize_elementwise(x, spec, rounding, uniforms)


def _uniforms(rounding: str, generator: torch.Generator | None) -> Uniforms | None:
    """A fresh stream of draws for stochastic rounding (one draw from ``generator``)."""
    return Uniforms.from_generator(generator) if rounding == STOCHASTIC else None


# --- Argument checking -----------------------------------------------------------------


def _validate(
    x: torch.Tensor, fmt: str, block_size: int, axis: int, rounding: str, scale: str
) -> FormatSpec:
    """Check every argument and return the format's spec; raise ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    spec = REGISTRY.get(fmt) if isinstance(fmt, str) else None
    if spec is None:
        raise ValueError(f"fmt={fmt!r} is not a known format; allowed: {', '.join(FORMATS)}")
    if rounding not in ROUNDINGS:
        raise ValueError(
            f"rounding={rounding!r} is not a known rounding mode; allowed: {', '.join(ROUNDINGS)}"
        )
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not a known scale; allowed: {', '.join(SCALES)}")
    if scale not in spec.scales:
        raise ValueError(
            f"scale={scale!r} is not supported by fmt={fmt!r}; allowed: {', '.join(spec.scales)}"
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0:
        raise ValueError(
            f"block_size={block_size!r} is invalid; allowed: an int >= 0 "
            "(0 = one scale for the whole tensor)"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"x.dtype={x.dtype} is not a floating dtype; allowed: floating dtypes "
            "(float16, bfloat16, float32, float64, float8_*)"
        )
    ndim = max(x.dim(), 1)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis!r} is out of range for a {x.dim()}-d tensor; allowed: {-ndim}..{ndim - 1}"
        )
    return spec


# --- Element-wise formats --------------------------------------------------------------


def _quantize_elementwise(
    x: torch.Tensor, spec: FormatSpec, rounding: str, uniforms: Uniforms | None
) -> torch.Tensor:
    """Round every element on its own (bf16, fp16, plain fp8: no scale at all)."""
    if rounding == NEAREST_EVEN and spec.torch_dtype is not None:
        return _native_cast(x, spec).to(torch.float32)
    src = x.to(torch.float32).to(_compute_dtype(spec))
    out = torch.empty(src.shape, dtype=src.dtype, device=src.device)
    return _round_to_grid(src, spec, rounding, uniforms, out=out).to(torch.float32)


def native_cast(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``fake_quantize(x, fmt)`` of a format torch has (bf16, fp16), in that native dtype.

    The same round-to-nearest-even and saturation, before the widening back to float32:
    what a codec sends. Raises ValueError on a format without a native dtype.
    """
    spec = _validate(x, fmt, 0, -1, NEAREST_EVEN, SCALE_E8M0)
    if spec.torch_dtype is None:
        raise ValueError(f"fmt={fmt!r} has no native torch dtype; allowed: bf16, fp16")
    return _native_cast(x, spec)


def _native_cast(x: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    # A native cast is round-to-nearest-even. Clamping the narrow result afterwards
    # turns the cast's overflow to inf into saturation (clamp keeps NaN) and costs
    # half of what clamping the float32 input would.
    narrow = x.to(torch.float32).to(spec.torch_dtype)
    return narrow.clamp_(-spec.max_normal, spec.max_normal)


def _compute_dtype(spec: FormatSpec) -> torch.dtype:
    """float32 unless the format's smallest spacing is not a float32 normal (bf16)."""
    if spec.kind != "int" and spec.emin - spec.mbits < -126:
        return torch.float64
    return torch.float32


# --- Block-scaled formats --------------------------------------------------------------


def _quantize_blocks(
    x: torch.Tensor,
    spec: FormatSpec,
    block_size: int,
    axis: int,
    rounding: str,
    scale: str,
    uniforms: Uniforms | None,
) -> torch.Tensor:
    """Absmax-integer and MX formats: one scale per block, elements on the format grid."""
    blocks, block_scale, restore = _blocks_on_grid(
        x, spec, block_size, axis, rounding, scale, uniforms
    )
    return restore(blocks.mul_(block_scale))


def block_quantize(
    x: torch.Tensor,
    fmt: str,
    *,
    block_size: int = 32,
    rounding: str = NEAREST_EVEN,
    scale: str = SCALE_E8M0,
    generator: torch.Generator | None = None,
    uniforms: Uniforms | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of a block-scaled format before they are multiplied: what codecs send.

    For a block-scaled ``fmt`` (int8, int4, the MX formats) and ``x`` of shape (n,) or
    (rows, n), blocked along its last axis, returns ``(elements, scales)``: ``elements``
    holds every element on the element grid (integers as k * 2**-fraction_bits), each
    row's ragged tail zero-padded, in blocks of shape (blocks, block_size) for a 1-D ``x``
    and (rows, blocks, block_size) for a 2-D one; ``scales`` (shape (blocks, 1) or (rows,
    blocks, 1)) the float32 block scales. ``block_size=0`` is one block of the whole
    tensor: shapes (1, x.numel()) and (1, 1). By construction ``elements * scales``,
    un-padded back to x's shape, is bit for bit ``fake_quantize(x, fmt, block_size=
    block_size, rounding=rounding, scale=scale, generator=generator)``, stochastic draws
    included (``uniforms`` as there).

    Raises:
        ValueError: as `fake_quantize`, and for a format without block scales or an
            ``x`` that is neither 1-D nor 2-D.
    """
    spec = _validate(x, fmt, block_size, -1, rounding, scale)
    if not spec.block_scaled:
        raise ValueError(f"fmt={fmt!r} has no block scales; allowed: int8, int4, mx formats")
    if x.dim() not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D, got shape {tuple(x.shape)}")
    if uniforms is None:
        uniforms = _uniforms(rounding, generator)
    blocks, block_scale, _ = _blocks_on_grid(x, spec, block_size, -1, rounding, scale, uniforms)
    return blocks, block_scale


def _blocks_on_grid(
    x: torch.Tensor,
    spec: FormatSpec,
    block_size: int,
    axis: int,
    rounding: str,
    scale: str,
    uniforms: Uniforms | None,
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Blocks of ``x`` divided by their scale and rounded; the scales; the un-blocking map."""
    src, owned, restore = _to_blocks(x, axis, block_size)
    # One scratch buffer serves the |x| pass and then the grid bits: on CPU a fresh
    # full-size allocation costs about as much as one arithmetic pass.
    scratch = torch.empty_like(src)
    amax = torch.abs(src, out=scratch).amax(dim=-1, keepdim=True)
    rule = scale if spec.is_mx else "absmax"
    block_scale = _SCALE_RULES[rule](amax, spec)
    blocks = torch.div(src, block_scale, out=src if owned else torch.empty_like(src))
    _round_to_grid(blocks, spec, rounding, uniforms, out=blocks, scratch=scratch)
    return blocks, block_scale, restore


def _to_blocks(
    x: torch.Tensor, axis: int, block_size: int
) -> tuple[torch.Tensor, bool, Callable[[torch.Tensor], torch.Tensor]]:
    """View ``x`` as float32 (..., nblocks, block_size) blocks, zero-padding a ragged tail.

    Returns the blocks, whether they are a private copy (False: a view of ``x``, which
    must not be written) and a function mapping a same-shaped result back to x's shape.
    """
    moved = x.movedim(axis, -1)
    lead, n = moved.shape[:-1], moved.shape[-1]
    pad = (-n) % block_size if block_size else 0
    shape = (*lead, -1, block_size) if block_size else (1, -1)

    def restore(out: torch.Tensor) -> torch.Tensor:
        return out.view(*lead, n + pad)[..., :n].movedim(-1, axis).contiguous()

    if pad == 0 and moved.dtype == torch.float32 and moved.is_contiguous():
        # Common case: read x where it is; the first arithmetic pass makes the copy.
        return moved.view(shape), False, restore
    buf = torch.empty((*lead, n + pad), dtype=torch.float32, device=x.device)
    buf[..., :n].copy_(moved)
    buf[..., n:].zero_()
    return buf.view(shape), True, restore


def _absmax_scale(amax: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """Integer formats: scale = amax / qmax, kept >= the smallest float32 normal.

    The floor keeps x / scale and q * scale accurate: a subnormal (or zero) amax / qmax
    would lose bits or divide by zero. It only coarsens blocks with amax below
    qmax * 2**-126, and an all-zero block still comes out as zeros. Near the float32
    maximum, amax / qmax can round up so far that qmax * scale overflows; the scale
    then steps one float down so the largest element dequantizes to a finite value.
    """
    block_scale = (amax / spec.max_normal).clamp_min_(torch.finfo(torch.float32).tiny)
    overflows = torch.isinf(block_scale * spec.max_normal)
    block_scale = torch.where(
        overflows, torch.nextafter(block_scale, amax.new_zeros(())), block_scale
    )
    return _nan_unless_finite(block_scale, amax)


def _e8m0_scale(amax: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """MX v1.0 section 6.3: 2**(floor(log2(amax)) - emax_elem), exponent clamped to E8M0.

    Keeping only amax's exponent field gives 2**floor(log2(amax)) exactly (0 for a
    subnormal amax); multiplying by 2**-emax is exact down to 2**-149, and anything below
    2**-127 is raised to E8M0's smallest scale. The upper E8M0 limit (2**127) cannot be
    exceeded by a finite float32 amax, and non-finite blocks become NaN below.
    """
    pow2 = torch.bitwise_and(amax.view(torch.int32), _F32_EXP_MASK).view(torch.float32)
    block_scale = pow2.mul_(2.0**-spec.emax).clamp_min_(2.0**E8M0_MIN_EXP)
    return _nan_unless_finite(block_scale, amax)


def _ue5m3_scale(amax: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """Smallest-safe UE5M3 scale: nearest to amax / max_elem, bumped up if below it."""
    # float64 keeps amax / max_elem and the comparison below exact enough to be decisive:
    # s * max_elem has at most 8 significant bits, so the product is exact.
    amax64 = amax.to(torch.float64)
    target = amax64 / spec.max_normal
    s = _round_to_grid(target, UE5M3, NEAREST_EVEN, None, out=target)
    # The grid point above s is s + ulp(s) (also across a binade edge: 1.875*2**e + ulp
    # = 2**(e+1)), and ulp(0) is the smallest subnormal.
    s = torch.where(amax64 > s * spec.max_normal, s + _ulp(s, UE5M3), s)
    s = s.clamp_(UE5M3.min_subnormal, UE5M3.max_normal).to(torch.float32)
    return _nan_unless_finite(s, amax)


def _nan_unless_finite(block_scale: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """MX: a NaN/Inf in a block makes its scale NaN, hence the whole block NaN.

    ``amax - amax`` is +0 for a finite amax (adding it keeps the positive scale exactly)
    and NaN otherwise: one fused pass instead of isfinite + where, which cost ten times
    more on the small scale tensors.
    """
    return block_scale.add_(amax - amax)


_SCALE_RULES: dict[str, Callable[[torch.Tensor, FormatSpec], torch.Tensor]] = {
    "absmax": _absmax_scale,
    "e8m0": _e8m0_scale,
    "ue5m3": _ue5m3_scale,
}


# --- Rounding to an element grid -------------------------------------------------------


def _round_to_grid(
    src: torch.Tensor,
    spec: FormatSpec,
    rounding: str,
    uniforms: Uniforms | None,
    out: torch.Tensor,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write ``src`` rounded to the grid of ``spec``, saturated at ±max_normal, to ``out``.

    ``out`` may be ``src`` itself; ``scratch`` (same shape and itemsize, contiguous) saves
    an allocation. The grid spacing at v is ``ulp = 2**(clamp(floor(log2|v|), emin, emax)
    - mbits)`` for floats and the constant ``2**-mbits`` for integers.
    """
    return _ROUNDERS[rounding](src, spec, uniforms, out, scratch)


def _round_nearest_even(
    src: torch.Tensor,
    spec: FormatSpec,
    uniforms: Uniforms | None,
    out: torch.Tensor,
    scratch: torch.Tensor | None,
) -> torch.Tensor:
    """Round to nearest, ties to even, by adding and subtracting a magic constant.

    For ``c = 1.5 * 2**p * ulp(v)`` (p = the dtype's mantissa bits), ``v + c`` lands in the
    binade of c, whose float spacing is exactly ulp(v), so the hardware's round-to-nearest-
    even addition rounds v on the format grid and ``(v + c) - c`` recovers it exactly.
    c / ulp is even, so the tie parity is that of v / ulp. Saturating first is exact
    (max_normal is on the grid) and keeps c finite; it is 2 passes instead of div/round/mul.
    """
    v = torch.clamp(src, -spec.max_normal, spec.max_normal, out=out)
    # c = alpha * pow2 is formed inside add/sub (exactly: alpha * pow2 is a product of
    # powers of two and 1.5), which saves materialising c in its own pass.
    pow2, alpha = _magic_parts(v, spec, scratch)
    return v.add_(pow2, alpha=alpha).sub_(pow2, alpha=alpha)


def _round_stochastic(
    src: torch.Tensor,
    spec: FormatSpec,
    uniforms: Uniforms | None,
    out: torch.Tensor,
    scratch: torch.Tensor | None,
) -> torch.Tensor:
    """Round to floor(v / ulp) or the next grid point up, up with probability frac.

    ``E[q] = v`` for |v| <= max_normal; beyond it the result saturates to ±max_normal.
    Value ``i`` of ``src`` (C order) compares its fraction with draw ``i`` of ``uniforms``.
    """
    if uniforms is None:
        raise ValueError("stochastic rounding needs a stream of uniforms")
    fixed = spec.kind == "int"  # one spacing for all: scratch stays free for the draws
    ulp = 2.0**-spec.mbits if fixed else _ulp(src, spec, scratch)
    f = torch.div(src, ulp, out=out)  # exact: ulp is a power of two
    low = torch.floor(f)
    # The fraction: exact for f >= 0; for f < 0 it is 1 - |fractional part|, rounded to
    # float's 2**-24 near 1 (to 1.0 at worst), the draws' own resolution.
    f.sub_(low)
    # Up exactly when the draw is below the fraction, so P(up) = fraction (to the draws'
    # 2**-24); comparing instead of adding f + u keeps large |f| from rounding the sum.
    u = uniforms.tensor(f.shape, f.dtype, out=scratch if fixed else None)
    f.gt_(u).add_(low)
    return f.mul_(ulp).clamp_(-spec.max_normal, spec.max_normal)


_Rounder = Callable[
    [torch.Tensor, FormatSpec, Uniforms | None, torch.Tensor, torch.Tensor | None],
    torch.Tensor,
]
_ROUNDERS: dict[str, _Rounder] = {
    "nearest_even": _round_nearest_even,
    "stochastic": _round_stochastic,
}


def _exponent_bits(
    v: torch.Tensor, spec: FormatSpec, scratch: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """v's exponent field clamped to [emin, emax] of ``spec`` (as an int view of v's dtype).

    Read from the bits because log2 is not exact near powers of two. The lower clamp
    gives the subnormal range emin's spacing; the upper one keeps Inf/NaN (all-ones
    field) and out-of-range values from overflowing the field in later arithmetic.
    Returns the field tensor (mantissa bits zero) and the dtype's mantissa width.
    """
    int_dtype, mant_bits, bias = _FLOAT_LAYOUT[v.dtype]
    exp_mask = ((1 << (torch.finfo(v.dtype).bits - 1 - mant_bits)) - 1) << mant_bits
    out = scratch.view(int_dtype) if scratch is not None else None
    bits = torch.bitwise_and(v.view(int_dtype), exp_mask, out=out)
    lo, hi = (spec.emin + bias) << mant_bits, (spec.emax + bias) << mant_bits
    return bits.clamp_(lo, hi), mant_bits


def _ulp(v: torch.Tensor, spec: FormatSpec, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Grid spacing of the float format ``spec`` around each element of ``v``.

    Needs emin - mbits >= the dtype's smallest normal exponent (see ``_compute_dtype``).
    """
    bits, mant_bits = _exponent_bits(v, spec, scratch)
    return bits.sub_(spec.mbits << mant_bits).view(v.dtype)


def _magic_parts(
    v: torch.Tensor, spec: FormatSpec, scratch: torch.Tensor | None
) -> tuple[torch.Tensor | float, float]:
    """``(pow2, alpha)`` with ``alpha * pow2 = 1.5 * 2**p * ulp(v)`` (see _round_nearest_even).

    For floats pow2 is ``2**clamp(floor(log2|v|), emin, emax)`` per element (ulp = pow2 *
    2**-mbits); integers have the fixed ulp ``2**-mbits``, so pow2 is just 1.
    Alpha is ``1.5 * 2**(p - mbits)``, p = mantissa bits of v's dtype.
    """
    mant_bits = _FLOAT_LAYOUT[v.dtype][1]
    alpha = 1.5 * 2.0 ** (mant_bits - spec.mbits)
    if spec.kind == "int":
        return 1.0, alpha
    bits, _ = _exponent_bits(v, spec, scratch)
    return bits.view(v.dtype), alpha
