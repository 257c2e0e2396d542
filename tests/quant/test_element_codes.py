"""Element codes: every value of every format <-> its bit pattern, exactly, both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quant.constants import REGISTRY, UE5M3, FormatSpec
from quant.element_codes import code_bits, code_values, from_codes, magnitudes, to_codes
from quant.errors import PayloadError

FLOAT_FORMATS = [spec for spec in REGISTRY.values() if spec.kind == "float"]
INT_FORMATS = [spec for spec in REGISTRY.values() if spec.kind == "int"]
# Long enough for the vectorized loops of the conversions, not just their scalar tails.
TILES = 97


def _bits(values: torch.Tensor | np.ndarray) -> np.ndarray:
    array = values.numpy() if isinstance(values, torch.Tensor) else values
    return np.ascontiguousarray(array, dtype=np.float32).view(np.int32)


def _every_value(spec: FormatSpec, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(codes, float32 values) of every finite value of a float format, -0.0 included."""
    table = magnitudes(spec)
    codes = np.arange(len(table), dtype=np.uint8)
    values = table.copy()
    if signed:
        sign = np.uint8(1 << (code_bits(spec) - 1))
        codes = np.concatenate([codes, codes | sign])
        values = np.concatenate([values, -table])
    return np.tile(codes, TILES), np.tile(values, TILES)


@pytest.mark.parametrize("spec", FLOAT_FORMATS, ids=lambda s: s.name)
def test_every_float_value_maps_to_its_bit_pattern_and_back(spec: FormatSpec) -> None:
    codes, values = _every_value(spec, signed=True)
    np.testing.assert_array_equal(to_codes(torch.from_numpy(values), spec), codes)
    np.testing.assert_array_equal(_bits(from_codes(codes, spec)), _bits(values))


def test_ue5m3_scales_are_unsigned_codes() -> None:
    codes, values = _every_value(UE5M3, signed=False)
    assert len(magnitudes(UE5M3)) == 248  # exponent field 31 is reserved
    np.testing.assert_array_equal(to_codes(torch.from_numpy(values), UE5M3, signed=False), codes)
    np.testing.assert_array_equal(_bits(from_codes(codes, UE5M3, signed=False)), _bits(values))


@pytest.mark.parametrize(
    ("name", "code", "value"),
    [
        ("mxfp4_e2m1", 0b0001, 0.5),  # the only subnormal
        ("mxfp4_e2m1", 0b1111, -6.0),
        ("mxfp6_e3m2", 0b000001, 0.0625),  # 2**-4: smallest subnormal
        ("mxfp6_e2m3", 0b011111, 7.5),
        ("fp8_e4m3", 0x01, 2.0**-9),
        ("fp8_e4m3", 0x7E, 448.0),
        ("fp8_e5m2", 0x7B, 57344.0),
        ("mxfp8_e5m2", 0x80, -0.0),
    ],
)
def test_known_codes(name: str, code: int, value: float) -> None:
    spec = REGISTRY[name]
    values = torch.full((TILES,), value)
    assert set(to_codes(values, spec).tolist()) == {code}
    np.testing.assert_array_equal(
        _bits(from_codes(np.full(TILES, code, dtype=np.uint8), spec)), _bits(values.numpy())
    )


@pytest.mark.parametrize("spec", INT_FORMATS, ids=lambda s: s.name)
def test_every_integer_value_is_twos_complement(spec: FormatSpec) -> None:
    width = code_bits(spec)
    top = int(spec.max_normal * 2**spec.mbits)
    k = np.tile(np.arange(-top, top + 1), TILES)
    values = (k * 2.0**-spec.mbits).astype(np.float32)
    codes = (k & ((1 << width) - 1)).astype(np.uint8)
    np.testing.assert_array_equal(to_codes(torch.from_numpy(values), spec), codes)
    np.testing.assert_array_equal(_bits(from_codes(codes, spec)), _bits(values))


@pytest.mark.parametrize(
    ("name", "code", "fragment"),
    [
        ("fp8_e4m3", 0x7F, "not a finite value"),  # S.1111.111 is NaN
        ("fp8_e4m3", 0xFF, "not a finite value"),
        ("fp8_e5m2", 0x7C, "not a finite value"),  # infinity
        ("mxfp8_e5m2", 0xFE, "not a finite value"),
        ("int8", 0x80, "outside the format's range"),
        ("int4", 0x08, "outside the format's range"),
        ("mxint8", 0x80, "outside the format's range"),
    ],
)
def test_codes_that_are_no_finite_value_are_refused(name: str, code: int, fragment: str) -> None:
    codes = np.zeros(TILES, dtype=np.uint8)
    codes[TILES // 2] = code
    with pytest.raises(PayloadError, match=fragment):
        from_codes(codes, REGISTRY[name])


def test_received_read_only_codes_decode() -> None:
    codes = np.frombuffer(bytes(range(16)) * 8, dtype=np.uint8)
    values = from_codes(codes, REGISTRY["mxfp4_e2m1"])
    assert values.shape == (128,) and bool(torch.isfinite(values).all())


@pytest.mark.parametrize("spec", FLOAT_FORMATS + INT_FORMATS, ids=lambda s: s.name)
def test_code_values_times_the_factor_are_the_values(spec: FormatSpec) -> None:
    codes = np.arange(1 << code_bits(spec), dtype=np.uint8)
    if spec.kind == "float":
        codes, _ = _every_value(spec, signed=True)
    else:
        codes = codes[codes != 1 << (code_bits(spec) - 1)]
    narrow, factor = code_values(codes, spec)
    assert narrow.dtype in (torch.int8, torch.float16)
    expected = from_codes(codes, spec)
    np.testing.assert_array_equal(_bits(narrow.to(torch.float32) * factor), _bits(expected))


def test_overwrite_scales_the_values_in_place_for_the_same_codes() -> None:
    spec = REGISTRY["mxfp4_e2m1"]
    _, values = _every_value(spec, signed=True)
    expected = to_codes(torch.from_numpy(values), spec)
    scratch = torch.from_numpy(values.copy())
    np.testing.assert_array_equal(to_codes(scratch, spec, overwrite=True), expected)
    assert not torch.equal(scratch, torch.from_numpy(values))  # it was scaled by 2**-14
