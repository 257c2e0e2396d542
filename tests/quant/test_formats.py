"""Tests for quant.fake_quantize: exact numerics per format, errors and properties."""

from __future__ import annotations

import bisect
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quant import FORMATS, FormatSpec, fake_quantize
from quant.constants import FP4_E2M1_VALUES, REGISTRY, UE5M3
from quant.formats import _round_to_grid

MX_FORMATS = tuple(name for name in FORMATS if REGISTRY[name].is_mx)
BLOCK_FORMATS = tuple(name for name in FORMATS if REGISTRY[name].block_scaled)
UE5M3_FORMATS = ("mxfp4_e2m1", "mxfp6_e3m2", "mxfp6_e2m3")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit-for-bit equality (NaN equals NaN), with a readable failure."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


# --- Registry --------------------------------------------------------------------------


def test_registry_names_and_spec_type() -> None:
    assert set(FORMATS) == {
        "int8",
        "int4",
        "fp8_e4m3",
        "fp8_e5m2",
        "mxfp8_e4m3",
        "mxfp8_e5m2",
        "mxfp6_e3m2",
        "mxfp6_e2m3",
        "mxfp4_e2m1",
        "mxint8",
        "bf16",
        "fp16",
    }
    assert all(isinstance(REGISTRY[name], FormatSpec) for name in FORMATS)


@pytest.mark.parametrize(
    ("name", "max_normal", "min_subnormal"),
    [
        ("fp8_e4m3", 448.0, 2.0**-9),
        ("fp8_e5m2", 57344.0, 2.0**-16),
        ("mxfp6_e3m2", 28.0, 2.0**-4),
        ("mxfp6_e2m3", 7.5, 2.0**-3),
        ("mxfp4_e2m1", 6.0, 0.5),
        ("mxint8", 127 / 64, 2.0**-6),
        ("fp16", 65504.0, 2.0**-24),
    ],
)
def test_spec_constants_are_consistent(name: str, max_normal: float, min_subnormal: float) -> None:
    spec = REGISTRY[name]
    assert spec.max_normal == max_normal
    assert spec.min_subnormal == min_subnormal
    if spec.kind == "float":
        # max_normal lies in the top binade emax and is a multiple of its spacing.
        assert 2.0**spec.emax <= max_normal < 2.0 ** (spec.emax + 1)
        assert (max_normal / 2.0 ** (spec.emax - spec.mbits)).is_integer()
    assert UE5M3.max_normal == 2.0**15 * 1.875 and UE5M3.min_subnormal == 2.0**-17


# --- FP4 E2M1 grid ---------------------------------------------------------------------


def _nearest_e2m1(v: float) -> float:
    """Reference: nearest E2M1 value, ties to the even mantissa (0, 1, 2, 4 are even)."""
    grid = [-g for g in reversed(FP4_E2M1_VALUES[1:])] + list(FP4_E2M1_VALUES)
    best = min(abs(v - g) for g in grid)
    ties = [g for g in grid if abs(v - g) == best]
    return next((g for g in ties if abs(g) in (0.0, 1.0, 2.0, 4.0)), ties[0])


def test_e2m1_grid_with_unit_scale() -> None:
    values = torch.arange(-6 * 64, 6 * 64 + 1, dtype=torch.float32) / 64
    # Each value shares a block of two with the anchor 4.0: amax in [4, 8) -> shared_exp 0.
    blocks = torch.stack([torch.full_like(values, 4.0), values], dim=1)
    out = fake_quantize(blocks, "mxfp4_e2m1", block_size=2)
    expected = torch.tensor([_nearest_e2m1(v) for v in values.tolist()])
    _assert_same(out[:, 1], expected)
    assert torch.all(out[:, 0] == 4.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.25, 0.0),
        (0.75, 1.0),
        (1.25, 1.0),
        (1.75, 2.0),
        (2.5, 2.0),
        (3.5, 4.0),
        (5.0, 4.0),
        (-5.0, -4.0),
        (2.6, 3.0),
        (5.5, 6.0),
        (7.9, 6.0),
    ],
)
def test_e2m1_ties_and_saturation(value: float, expected: float) -> None:
    out = fake_quantize(torch.tensor([4.0, value]), "mxfp4_e2m1", block_size=2)
    assert out[1].item() == expected


# --- Plain FP8 and casts ---------------------------------------------------------------

FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@pytest.mark.parametrize(
    ("fmt", "max_value", "min_sub"), [("fp8_e4m3", 448.0, 2.0**-9), ("fp8_e5m2", 57344.0, 2.0**-16)]
)
def test_fp8_extremes(fmt: str, max_value: float, min_sub: float) -> None:
    x = torch.tensor(
        [
            max_value,
            1e6,
            -1e6,
            math.inf,
            -math.inf,
            min_sub,
            min_sub / 2,
            3 * min_sub / 2,
            -min_sub / 2,
            0.6 * min_sub,
            math.nan,
        ]
    )
    expected = torch.tensor(
        [
            max_value,
            max_value,
            -max_value,
            max_value,
            -max_value,
            min_sub,
            0.0,
            2 * min_sub,
            -0.0,
            min_sub,
            math.nan,
        ]
    )
    _assert_same(fake_quantize(x, fmt), expected)


@pytest.mark.parametrize("fmt", sorted(FP8))
def test_fp8_matches_torch_cast(fmt: str) -> None:
    spec = REGISTRY[fmt]
    g = _gen(1)
    # Magnitudes from deep in the subnormals up to the largest finite value.
    exponents = torch.randint(spec.emin - spec.mbits - 2, spec.emax + 1, (50_000,), generator=g)
    x = torch.randn(50_000, generator=g) * torch.exp2(exponents.float())
    x = x.clamp(-spec.max_normal, spec.max_normal)
    _assert_same(fake_quantize(x, fmt), x.to(FP8[fmt]).float())


@pytest.mark.parametrize(("fmt", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_casts_match_torch_and_saturate(fmt: str, dtype: torch.dtype) -> None:
    g = _gen(2)
    finfo = torch.finfo(dtype)
    exponents = torch.randint(-30, 14, (50_000,), generator=g).float()
    x = torch.randn(50_000, generator=g) * torch.exp2(exponents)
    x[:4] = torch.tensor([finfo.tiny / 3, -finfo.tiny / 7, finfo.max, -finfo.max])
    _assert_same(fake_quantize(x, fmt), x.to(dtype).float())
    over = torch.tensor([3.4e38 if fmt == "bf16" else 65520.0, -math.inf, math.nan])
    _assert_same(fake_quantize(over, fmt), torch.tensor([finfo.max, -finfo.max, math.nan]))


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
        ("fp8_e4m3", torch.float8_e4m3fn),
        ("fp8_e5m2", torch.float8_e5m2),
    ],
)
def test_generic_grid_rounding_matches_native_casts(fmt: str, dtype: torch.dtype) -> None:
    """The (ebits, mbits, emax) rounding used by every format agrees with torch's casts."""
    spec = REGISTRY[fmt]
    g = _gen(3)
    lo = max(spec.emin - spec.mbits - 2, -140)
    exponents = torch.randint(lo, spec.emax + 1, (50_000,), generator=g).float()
    x = (torch.randn(50_000, generator=g) * torch.exp2(exponents)).clamp(
        -spec.max_normal, spec.max_normal
    )
    work = x.to(torch.float64 if fmt == "bf16" else torch.float32)
    out = _round_to_grid(work, spec, "nearest_even", None, out=work).float()
    _assert_same(out, x.to(dtype).float())


# --- Absmax integers -------------------------------------------------------------------


def test_int8_hand_computed_blocks() -> None:
    x = torch.tensor([[127.0, 3.5, -2.5, 0.4], [254.0, 5.0, -3.0, 1.0]])
    # Row 0: scale 1 -> round half to even. Row 1: scale 2 -> q = [127, 2, -2, 0].
    expected = torch.tensor([[127.0, 4.0, -2.0, 0.0], [254.0, 4.0, -4.0, 0.0]])
    _assert_same(fake_quantize(x, "int8", block_size=4), expected)


def test_int4_hand_computed() -> None:
    x = torch.tensor([3.5, 1.3, -0.74, 0.25])  # scale 0.5 -> q = [7, 3, -1, 0]
    _assert_same(fake_quantize(x, "int4", block_size=4), torch.tensor([3.5, 1.5, -0.5, 0.0]))


def test_int8_per_tensor_vs_per_block() -> None:
    x = torch.tensor([[127.0, 1.4], [0.5, 2.6]])
    # One scale (127 / 127 = 1) for the whole tensor.
    _assert_same(fake_quantize(x, "int8", block_size=0), torch.tensor([[127.0, 1.0], [0.0, 3.0]]))
    # Per row: the second row gets its own, finer scale and keeps 0.5 almost exactly.
    per_row = fake_quantize(x, "int8", block_size=2)
    row_scale = torch.tensor(2.6) / 127
    expected_row = torch.round(x[1] / row_scale) * row_scale
    _assert_same(per_row[1], expected_row)
    assert abs(per_row[1, 0].item() - 0.5) < 0.01
    # block_size equal to the axis length is per-channel.
    _assert_same(fake_quantize(x, "int8", block_size=2, axis=0), fake_quantize(x.T, "int8").T)


def test_int_scale_floor_for_subnormal_blocks() -> None:
    # amax / 127 would be a (lossy) float32 subnormal; the scale stops at 2**-126.
    x = torch.tensor([1e-40, 3e-39, 0.0])
    tiny = torch.finfo(torch.float32).tiny
    _assert_same(fake_quantize(x, "int8", block_size=0), torch.round(x / tiny) * tiny)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_int_near_float32_max_stays_finite(fmt: str) -> None:
    # amax / qmax rounds up here, and qmax * scale would overflow to inf.
    big = torch.finfo(torch.float32).max
    out = fake_quantize(torch.tensor([big, -big, 1.0]), fmt, block_size=0)
    assert torch.all(torch.isfinite(out)) and out[0].item() == -out[1].item() > 0.99 * big


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
def test_int_zero_block_and_clamp(fmt: str, rounding: str) -> None:
    qmax = REGISTRY[fmt].max_normal
    x = torch.randn(64, 16, generator=_gen(4)) * 3
    x[5] = 0.0
    out = fake_quantize(x, fmt, block_size=16, rounding=rounding, generator=_gen(5))
    assert torch.all(out[5] == 0)
    amax = x.abs().amax(dim=1, keepdim=True)
    scale = (amax / qmax).clamp_min(torch.finfo(torch.float32).tiny)
    q = out / scale
    # Every element sits on the integer grid, inside [-qmax, qmax], and the block
    # maximum maps exactly to +-qmax.
    torch.testing.assert_close(q, torch.round(q), rtol=0, atol=1e-4)
    assert torch.all(q.abs() <= qmax + 1e-4)
    if rounding == "stochastic":
        return
    rows = torch.arange(64)
    peak = x.abs().argmax(dim=1)
    nonzero = amax.squeeze(1) > 0
    _assert_same(out[rows, peak].abs()[nonzero], (qmax * scale.squeeze(1))[nonzero])


# --- MX --------------------------------------------------------------------------------


def test_mx_shared_exponent_by_hand() -> None:
    # amax 1000: floor(log2) = 9, emax(E4M3) = 8 -> scale 2; 1000/2 = 500 saturates to 448,
    # -3.3/2 = -1.65 -> -1.625 (spacing 1/8 in [1, 2)).
    x = torch.tensor([1000.0, 1.0, -3.3, 0.0])
    _assert_same(
        fake_quantize(x, "mxfp8_e4m3", block_size=4), torch.tensor([896.0, 1.0, -3.25, 0.0])
    )
    # amax 96: floor(log2) = 6, emax(E2M1) = 2 -> scale 16; 10/16 -> 0.5, 3/16 -> 0.
    y = torch.tensor([96.0, 10.0, 3.0, -40.0])
    _assert_same(
        fake_quantize(y, "mxfp4_e2m1", block_size=4), torch.tensor([96.0, 8.0, 0.0, -32.0])
    )
    # MXINT8, emax 0: amax 3 -> scale 2; 3/2 = 1.5 = 96/64; 0.1/2 -> round(3.2)/64.
    z = torch.tensor([3.0, 0.1])
    _assert_same(fake_quantize(z, "mxint8", block_size=2), torch.tensor([3.0, 2 * 3 / 64]))


@pytest.mark.parametrize(
    ("fmt", "dtype"), [("mxfp8_e4m3", torch.float8_e4m3fn), ("mxfp8_e5m2", torch.float8_e5m2)]
)
def test_mxfp8_matches_native_cast_reference(fmt: str, dtype: torch.dtype) -> None:
    """Independent MX reference: power-of-two scale from math.frexp, torch's FP8 cast."""
    spec = REGISTRY[fmt]
    g = _gen(21)
    x = torch.randn(512, 32, generator=g) * torch.exp2(
        torch.randint(-40, 40, (512, 1), generator=g)
    )
    scales = torch.tensor(
        [2.0 ** (math.frexp(a)[1] - 1 - spec.emax) for a in x.abs().amax(dim=1).tolist()]
    ).unsqueeze(1)
    v = (x / scales).clamp(-spec.max_normal, spec.max_normal)
    _assert_same(fake_quantize(x, fmt), v.to(dtype).float() * scales)


def test_e8m0_exponent_clamps_at_minus_127() -> None:
    # floor(log2(1e-40)) - 8 = -141 -> clamped to -127; 1e-40 * 2**127 = 8.71 * 2**-9.
    out = fake_quantize(torch.tensor([1e-40]), "mxfp8_e4m3")
    assert out.item() == 9 * 2.0**-136


@pytest.mark.parametrize("fmt", MX_FORMATS)
def test_mx_zero_block_nan_block_and_neighbours(fmt: str) -> None:
    x = torch.randn(4, 32, generator=_gen(6))
    x[1] = 0.0
    clean = fake_quantize(x, fmt)
    x[2, 7] = math.nan
    x[3, 0] = math.inf
    out = fake_quantize(x, fmt)
    assert torch.all(out[1] == 0)
    assert torch.all(out[2:].isnan())
    _assert_same(out[:2], clean[:2])


@pytest.mark.parametrize("fmt", BLOCK_FORMATS)
def test_ragged_tail_equals_zero_padding(fmt: str) -> None:
    x = torch.randn(3, 40, generator=_gen(7)) * 5
    padded = torch.cat([x, torch.zeros(3, 24)], dim=1)
    _assert_same(fake_quantize(x, fmt), fake_quantize(padded, fmt)[:, :40])


@pytest.mark.parametrize("fmt", BLOCK_FORMATS)
def test_axis_zero_matches_transpose(fmt: str) -> None:
    x = torch.randn(64, 5, 3, generator=_gen(8))
    along0 = fake_quantize(x, fmt, block_size=16, axis=0)
    moved = fake_quantize(x.permute(1, 2, 0).contiguous(), fmt, block_size=16)
    _assert_same(along0, moved.permute(2, 0, 1))
    _assert_same(fake_quantize(x[:, 0], fmt, axis=0), fake_quantize(x[:, 0].T, fmt).T)


# --- UE5M3 block scale -----------------------------------------------------------------


def _ue5m3_grid() -> list[float]:
    sub = [k * 2.0**-17 for k in range(8)]
    normal = [(1 + k / 8) * 2.0**e for e in range(-14, 16) for k in range(8)]
    return sub + normal


def _ue5m3_reference_scale(amax: float, max_elem: float) -> float:
    """Nearest UE5M3 value (ties to even mantissa), bumped up if below amax / max_elem."""
    grid = _ue5m3_grid()
    target = amax / max_elem
    i = bisect.bisect_left(grid, target)
    if i == len(grid):
        return grid[-1]
    lo, hi = grid[max(i - 1, 0)], grid[i]
    if hi == target or target - lo > hi - target:
        s = hi
    elif target - lo < hi - target:
        s = lo
    else:
        s = lo if grid.index(lo) % 2 == 0 else hi
    if amax > s * max_elem:
        s = grid[min(grid.index(s) + 1, len(grid) - 1)]
    return max(s, grid[1])


@pytest.mark.parametrize("fmt", UE5M3_FORMATS)
def test_ue5m3_scale_never_saturates(fmt: str) -> None:
    max_elem = REGISTRY[fmt].max_normal
    g = _gen(9)
    x = torch.randn(256, 8, generator=g) * torch.exp2(torch.randint(-20, 14, (256, 1), generator=g))
    out = fake_quantize(x, fmt, block_size=8, scale="ue5m3")
    scales = torch.tensor(
        [_ue5m3_reference_scale(a, max_elem) for a in x.abs().amax(dim=1).tolist()]
    ).unsqueeze(1)
    assert torch.all(out.abs() <= max_elem * scales)
    assert torch.all(x.abs() <= max_elem * scales)
    # Rounding x / s on the element grid and scaling back reproduces the output exactly.
    spec = REGISTRY[fmt]
    v = x / scales
    expected = _round_to_grid(v, spec, "nearest_even", None, out=v) * scales
    _assert_same(out, expected)


def test_ue5m3_mxfp4_matches_table_reference() -> None:
    x = torch.randn(64, 8, generator=_gen(10)) * 0.01
    out = fake_quantize(x, "mxfp4_e2m1", block_size=8, scale="ue5m3")
    for row_in, row_out in zip(x, out, strict=True):
        s = _ue5m3_reference_scale(row_in.abs().max().item(), 6.0)
        v = (row_in / s).tolist()  # float32 division, as documented
        assert row_out.tolist() == [_nearest_e2m1(e) * s for e in v]


@pytest.mark.parametrize("fmt", UE5M3_FORMATS)
def test_ue5m3_lowers_error_on_narrow_blocks(fmt: str) -> None:
    x = torch.randn(128, 256, generator=_gen(11))
    err_e8m0 = (fake_quantize(x, fmt, block_size=8) - x).pow(2).mean()
    err_ue5m3 = (fake_quantize(x, fmt, block_size=8, scale="ue5m3") - x).pow(2).mean()
    assert err_ue5m3 < err_e8m0


def test_ue5m3_zero_and_nan_blocks() -> None:
    x = torch.tensor([[0.0, 0.0], [1e-30, 0.0], [math.nan, 1.0], [1e9, 1.0]])
    out = fake_quantize(x, "mxfp4_e2m1", block_size=2, scale="ue5m3")
    assert torch.all(out[:2] == 0) and torch.all(out[2].isnan())
    # Beyond 61440 * 6 only the largest element saturates (to 6 * 61440).
    assert out[3, 0].item() == 6 * 61440.0


# --- Stochastic rounding ---------------------------------------------------------------

# (format, block with a fixed scale, index of x, lower neighbour, upper neighbour)
SR_CASES = [
    ("fp8_e4m3", [1.03], 0, 1.0, 1.125),
    ("fp8_e4m3", [0.3 * 2**-9], 0, 0.0, 2**-9),
    ("fp8_e5m2", [-3.3], 0, -3.5, -3.0),
    ("bf16", [1 + 2**-9], 0, 1.0, 1 + 2**-7),
    ("bf16", [1e-39], 0, 10 * 2.0**-133, 11 * 2.0**-133),  # bf16 subnormals
    ("fp16", [1000.3], 0, 1000.0, 1000.5),
    ("int8", [127.0, 3.3], 1, 3.0, 4.0),
    ("int4", [-7.0, -0.4], 1, -1.0, 0.0),
    ("mxfp4_e2m1", [4.0, 2.6], 1, 2.0, 3.0),
    ("mxfp6_e3m2", [16.0, 0.1], 1, 0.0625, 0.125),
    ("mxfp6_e2m3", [4.0, -1.3], 1, -1.375, -1.25),
    ("mxfp8_e5m2", [2.0**15, 5.1], 1, 5.0, 6.0),
    ("mxint8", [1.0, 0.01], 1, 0.0, 1 / 64),
]


@pytest.mark.parametrize(("fmt", "block", "index", "low", "high"), SR_CASES)
def test_stochastic_rounding_is_unbiased(
    fmt: str, block: list[float], index: int, low: float, high: float
) -> None:
    draws = 20_000
    x = torch.tensor(block).repeat(draws, 1)
    out = fake_quantize(x, fmt, block_size=len(block), rounding="stochastic", generator=_gen(12))
    samples = out[:, index].double()
    value = torch.tensor(block[index]).item()  # the float32 value actually quantized
    assert torch.all((samples == low) | (samples == high))
    p = (value - low) / (high - low)
    stderr = (high - low) * math.sqrt(p * (1 - p) / draws)
    assert abs(samples.mean().item() - value) <= 4 * stderr
    assert 0 < (samples == high).sum() < draws
    # Elements already on the grid (the anchors) never move.
    others = [i for i in range(len(block)) if i != index]
    assert torch.all(out[:, others] == x[:, others])


@pytest.mark.parametrize("fmt", FORMATS)
def test_stochastic_rounding_reproducible(fmt: str) -> None:
    x = torch.randn(8, 64, generator=_gen(13))
    kwargs = {"rounding": "stochastic", "block_size": 16}
    a = fake_quantize(x, fmt, generator=_gen(14), **kwargs)
    b = fake_quantize(x, fmt, generator=_gen(14), **kwargs)
    c = fake_quantize(x, fmt, generator=_gen(15), **kwargs)
    _assert_same(a, b)
    assert not torch.equal(a, c)


def test_stochastic_rounding_saturates_beyond_max() -> None:
    x = torch.tensor([460.0, -1e6, math.inf, math.nan]).repeat(100)
    out = fake_quantize(x, "fp8_e4m3", rounding="stochastic", generator=_gen(16))
    _assert_same(out, torch.tensor([448.0, -448.0, 448.0, math.nan]).repeat(100))


# --- Errors ----------------------------------------------------------------------------

X = torch.ones(4, 8)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"fmt": "int3"}, r"fmt='int3' is not a known format; allowed: .*int8.*mxfp4_e2m1"),
        ({"rounding": "up"}, r"rounding='up' .*allowed: nearest_even, stochastic"),
        ({"scale": "fp32"}, r"scale='fp32' .*allowed: e8m0, ue5m3"),
        (
            {"fmt": "mxfp8_e4m3", "scale": "ue5m3"},
            r"scale='ue5m3' .*fmt='mxfp8_e4m3'.*allowed: e8m0",
        ),
        ({"fmt": "int8", "scale": "ue5m3"}, r"scale='ue5m3' .*allowed: e8m0"),
        ({"block_size": -1}, r"block_size=-1 .*allowed: an int >= 0"),
        ({"block_size": 2.0}, r"block_size=2.0 .*allowed: an int >= 0"),
        ({"axis": 2}, r"axis=2 .*allowed: -2\.\.1"),
        ({"axis": -3}, r"axis=-3 .*allowed: -2\.\.1"),
        ({"x": torch.ones(4, dtype=torch.int32)}, r"x.dtype=torch.int32 .*allowed: floating"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], pattern: str) -> None:
    args = {"x": X, "fmt": "mxfp4_e2m1"} | kwargs
    x, fmt = args.pop("x"), args.pop("fmt")
    with pytest.raises(ValueError, match=pattern) as info:
        fake_quantize(x, fmt, **args)
    assert "\n" not in str(info.value)


def test_error_message_lists_every_format() -> None:
    with pytest.raises(ValueError, match=re.escape(", ".join(FORMATS))):
        fake_quantize(X, "int3")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
def test_input_untouched_and_layouts_agree(fmt: str, rounding: str) -> None:
    x = torch.randn(6, 64, generator=_gen(17))
    before = x.clone()
    kwargs = {"rounding": rounding, "block_size": 16}
    out = fake_quantize(x, fmt, generator=_gen(18), **kwargs)
    _assert_same(x, before)
    # A non-contiguous view and a float64 copy of the same values give the same result.
    wide = torch.zeros(6, 128)
    wide[:, ::2] = x
    _assert_same(fake_quantize(wide[:, ::2], fmt, generator=_gen(18), **kwargs), out)
    _assert_same(fake_quantize(x.double(), fmt, generator=_gen(18), **kwargs), out)


def test_shapes_dtypes_and_scalars() -> None:
    half = torch.randn(3, 5, dtype=torch.float16, generator=None)
    for fmt in FORMATS:
        assert fake_quantize(half, fmt).dtype == torch.float32
        assert fake_quantize(half, fmt).shape == half.shape
    assert fake_quantize(torch.tensor(5.0), "mxfp4_e2m1").item() == 4.0
    assert fake_quantize(torch.empty(0, 3), "int8").shape == (0, 3)


# --- Properties ------------------------------------------------------------------------

# Every finite float32, subnormals and values near the float32 maximum included.
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def _block_bound(x: torch.Tensor, spec: FormatSpec, block_size: int) -> torch.Tensor:
    """Per-element bound max_elem * scale (absmax: qmax * amax / qmax = amax, plus half a
    step when the scale sits at its floor, the smallest float32 normal)."""
    n = x.numel()
    bs = block_size or n
    padded = torch.cat([x, torch.zeros(-n % bs)]).view(-1, bs)
    amax = padded.abs().amax(dim=1, keepdim=True).double()
    if spec.is_mx:
        exps = [math.frexp(a)[1] - 1 - spec.emax if a > 0 else -127 for a in amax.flatten()]
        bound = spec.max_normal * torch.tensor([2.0 ** max(e, -127) for e in exps]).unsqueeze(1)
    else:
        bound = amax * (1 + 1e-6) + torch.finfo(torch.float32).tiny / 2
    return bound.expand(-1, bs).reshape(-1)[:n]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    values=st.lists(finite32, min_size=1, max_size=70),
    fmt=st.sampled_from(FORMATS),
    block_size=st.sampled_from([0, 1, 3, 8, 32]),
    rounding=st.sampled_from(["nearest_even", "stochastic"]),
)
def test_properties_finite_bounded_idempotent(
    values: list[float], fmt: str, block_size: int, rounding: str
) -> None:
    spec = REGISTRY[fmt]
    x = torch.tensor(values, dtype=torch.float32)
    out = fake_quantize(x, fmt, block_size=block_size, rounding=rounding, generator=_gen(19))
    assert torch.all(torch.isfinite(out))
    if spec.block_scaled:
        assert torch.all(out.abs().double() <= _block_bound(x, spec, block_size))
    else:
        assert torch.all(out.abs() <= spec.max_normal)
    # Quantizing a quantized tensor again changes nothing (stochastic rounding included:
    # grid points have no fractional part to round). Absmax integers are left out under
    # stochastic rounding: x / (amax / qmax) may come out a hair below qmax and round down.
    if rounding == "stochastic" and spec.kind == "int" and not spec.is_mx:
        return
    again = fake_quantize(out, fmt, block_size=block_size, rounding=rounding, generator=_gen(20))
    _assert_same(again, out)
