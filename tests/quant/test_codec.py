"""Codecs: spec parsing, decode(encode(x)) == fake_quantize(x) per row, sizes, error bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from proto import update_pb2
from quant import Codec, PayloadError, fake_quantize
from quant.codec_spec import VALUE_FORMATS, CodecSpecError, parse_codec_spec

MX_FORMATS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8")
# Every quantizing value format, with the spellings that change its numerics.
QUANTIZING_SPECS = (
    "fp16",
    "bf16",
    "fp8_e4m3",
    "fp8_e5m2",
    "int8",
    "int4",
    "int4:block=0",
    "int8:block=17",
    *MX_FORMATS,
    "mxfp4_e2m1:scale=ue5m3",
    "mxfp6_e3m2:scale=ue5m3",
    "mxfp6_e2m3:scale=ue5m3",
    "mxfp4_e2m1:block=16",
    "mxfp4_e2m1:block=0",
    "mxfp6_e2m3:block=0:scale=ue5m3",
)
# Rows that straddle the flattened blocks of every block size above (45 = 32 + 13, 1000 is
# no multiple of 64, 27 = a 3x3x3 fan-in), 3-D and 4-D (conv-like) arrays, empty ones.
SHAPES = (
    (),
    (1,),
    (7,),
    (64,),
    (100,),
    (3, 33),
    (7, 45),
    (5, 1),
    (3, 5, 7),
    (8, 3, 3, 3),
    (8, 1, 3, 3),
    (0,),
    (0, 4),
    (2, 0, 5),
)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.int32)


def _reference(x: np.ndarray, codec: Codec, generator: torch.Generator | None = None):
    """fake_quantize with the codec's format, block, scale and rounding, blocks along rows.

    1-D and 2-D arrays go in as they are (default axis=-1); higher ones as the 2-D view
    (shape[0], -1) that quantized training blocks too (a conv kernel's fan-in).
    """
    spec = codec.spec
    kwargs = {"rounding": "stochastic" if spec.stochastic else "nearest_even"}
    if spec.block_scaled:
        kwargs |= {"block_size": spec.block_size, "scale": spec.scale}
    x32 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if x.ndim > 2:
        x32 = x32.reshape(x.shape[0], math.prod(x.shape[1:]))
    out = fake_quantize(x32, spec.value_format, generator=generator, **kwargs)
    return out.numpy().reshape(x.shape)


# --- spec strings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("int4", "int4:block=64"),
        ("int8:block=32", "int8:block=32"),
        ("mxfp4_e2m1", "mxfp4_e2m1"),
        ("mxfp4_e2m1:block=16:scale=ue5m3", "mxfp4_e2m1:block=16:scale=ue5m3"),
        ("bf16:sr", "bf16:sr"),
        ("sign+ef", "sign:block=512+ef"),
        ("topk:0.010+int8+ef", "topk:0.01+int8:block=64+ef"),
        ("randk:0.5+fp32", "randk:0.5+fp32"),
    ],
)
def test_specs_parse_to_a_canonical_string_that_parses_back(text: str, canonical: str) -> None:
    spec = parse_codec_spec(text)
    assert spec.describe() == canonical
    assert parse_codec_spec(canonical) == spec


def test_error_feedback_is_not_part_of_the_bytes_name() -> None:
    codec = Codec.from_spec("topk:0.01+int8+ef")
    assert codec.error_feedback
    assert codec.name == "topk:0.01+int8:block=64"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("int3", "value format 'int3' is not known; allowed value formats: fp32"),
        ("topk:0+int8", "topk fraction '0' must be a number in (0, 1]"),
        ("topk:1.5+int8", "must be a number in (0, 1]"),
        ("topk:abc+int8", "must be a number in (0, 1]"),
        ("zipk:0.1+int8", "sparsifier 'zipk' is not known; allowed: topk, randk"),
        ("fp32:sr", "option 'sr' does not apply to fp32; allowed: none"),
        ("int8:scale=ue5m3", "does not apply to int8; allowed: block=N, sr"),
        ("mxfp4_e2m1:scale=e4m3", "scale='e4m3' is not known; allowed: e8m0, ue5m3"),
        ("int8:block=-1", "block='-1' must be an integer >= 0"),
        ("topk:0.1+randk:0.1+int8", "3 value stages"),
        ("", "is empty"),
    ],
)
def test_bad_specs_name_the_bad_part_and_the_choices(text: str, fragment: str) -> None:
    with pytest.raises(CodecSpecError) as info:
        Codec.from_spec(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


# --- one numerics, two uses ---------------------------------------------------------------


@pytest.mark.parametrize("text", QUANTIZING_SPECS)
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_of_encode_is_fake_quantize_bit_for_bit(text: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(abs(hash((text, shape))) % 2**32)
    x = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 30.0])).astype(np.float32)
    codec = Codec.from_spec(text)
    (decoded,) = codec.decode(codec.encode([x]))
    assert decoded.shape == x.shape and decoded.dtype == np.float32
    np.testing.assert_array_equal(_bits(decoded), _bits(_reference(x, codec)))


def test_a_large_weight_update_is_fake_quantize_of_its_rows() -> None:
    # 600 rows of 1000: with 64- or 32-value blocks most flattened blocks straddle two rows.
    x = np.random.default_rng(8).standard_normal((600, 1000)).astype(np.float32)
    x[::7] *= 1e-3  # rows of very different magnitudes next to each other
    for text in ("int8", "int4", "mxfp8_e4m3", "mxfp4_e2m1", "mxfp6_e3m2:scale=ue5m3"):
        codec = Codec.from_spec(text)
        (decoded,) = codec.decode(codec.encode([x]))
        np.testing.assert_array_equal(_bits(decoded), _bits(_reference(x, codec)))


@pytest.mark.parametrize(
    "text",
    [
        "int4:sr",
        "int8:block=0:sr",
        "mxfp4_e2m1:sr",
        "mxfp8_e4m3:block=16:sr",
        "bf16:sr",
        "mxfp6_e2m3:scale=ue5m3:sr",
    ],
)
@pytest.mark.parametrize("shape", [(77,), (5, 77), (7, 45), (8, 3, 3, 3)])
def test_stochastic_rounding_matches_fake_quantize_with_the_same_generator(
    text: str, shape: tuple[int, ...]
) -> None:
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    codec = Codec.from_spec(text)
    (decoded,) = codec.decode(codec.encode([x], generator=torch.Generator().manual_seed(9)))
    expected = _reference(x, codec, torch.Generator().manual_seed(9))
    np.testing.assert_array_equal(_bits(decoded), _bits(expected))


def test_fp32_round_trips_exactly_and_keeps_dtypes() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((4, 5)).astype(np.float32),
        rng.standard_normal(3).astype(np.float64),
        rng.standard_normal(6).astype(np.float16),
    ]
    decoded = Codec.from_spec("fp32").decode(Codec.from_spec("fp32").encode(arrays))
    for before, after in zip(arrays, decoded, strict=True):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before.astype(np.float32).astype(before.dtype))


# --- error bounds ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bound"),
    [
        ("fp16", 2.0**-11),  # relative to |x|, per element
        ("bf16", 2.0**-8),
        ("int8", 0.5 / 127),  # relative to the block's amax
        ("int4", 0.5 / 7),
        ("mxint8", 2.0**-6),
        # MX: E8M0 scales let a block max above max_elem * 2**shared saturate (MX v1.0 6.3).
        ("mxfp8_e4m3", 2.0**-3),
        ("mxfp6_e2m3", 2.0**-3),
        ("mxfp4_e2m1", 2.0**-1),
    ],
)
def test_round_trip_error_is_within_the_format_bound(text: str, bound: float) -> None:
    x = np.random.default_rng(1).standard_normal(64 * 50).astype(np.float32)
    codec = Codec.from_spec(text)
    (y,) = codec.decode(codec.encode([x]))
    err = np.abs(y - x)
    if codec.spec.block_scaled:
        block = codec.spec.block_size
        amax = np.repeat(np.abs(x).reshape(-1, block).max(axis=1), block)
        assert np.all(err <= bound * amax * (1 + 1e-6))
    else:
        assert np.all(err <= bound * np.abs(x) * (1 + 1e-6))
    assert np.linalg.norm(err) < np.linalg.norm(x)


def test_sign_sends_block_mean_magnitudes_with_the_signs() -> None:
    x = np.array([3.0, -1.0, 2.0, -2.0, 0.5, -0.5, 4.0], dtype=np.float32)
    codec = Codec.from_spec("sign:block=4")
    (y,) = codec.decode(codec.encode([x]))
    magnitudes = np.array([2.0] * 4 + [5 / 3] * 3, dtype=np.float32)  # block mean |x|
    expected = np.sign(x) * magnitudes
    np.testing.assert_allclose(y, expected, rtol=1e-7)


def test_stochastic_sign_is_unbiased() -> None:
    x = np.array([0.9, -0.3, 0.0, 0.6, -1.0, 0.1], dtype=np.float32)
    codec = Codec.from_spec("sign:sr")
    generator = torch.Generator().manual_seed(0)
    draws = np.stack([codec.decode(codec.encode([x], generator=generator))[0] for _ in range(4000)])
    # Each draw is ±amax = ±1 per element, so the standard error is below 1/sqrt(4000).
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=4 / math.sqrt(4000))
    assert set(np.unique(np.abs(draws))) == {1.0}


def test_topk_keeps_exactly_the_largest_magnitudes() -> None:
    x = np.random.default_rng(2).standard_normal((10, 37)).astype(np.float32)
    codec = Codec.from_spec("topk:0.05+fp32")
    (y,) = codec.decode(codec.encode([x]))
    kept = math.ceil(0.05 * x.size)
    assert np.count_nonzero(y) == kept
    threshold = np.sort(np.abs(x).ravel())[-kept]
    np.testing.assert_array_equal(y, np.where(np.abs(x) >= threshold, x, 0))


def test_topk_values_are_fake_quantized_as_one_vector() -> None:
    # A 2-D array: the kept values have no rows and are blocked as one flat vector.
    x = np.random.default_rng(4).standard_normal((20, 50)).astype(np.float32)
    codec = Codec.from_spec("topk:0.1+int8:block=16")
    (y,) = codec.decode(codec.encode([x]))
    flat_x, flat_y = x.ravel(), y.ravel()
    positions = np.flatnonzero(flat_y)
    order = np.sort(np.argsort(-np.abs(flat_x))[:100])
    np.testing.assert_array_equal(positions, order)
    expected = fake_quantize(torch.from_numpy(flat_x[order]), "int8", block_size=16).numpy()
    np.testing.assert_array_equal(_bits(flat_y[order]), _bits(expected))
    message = update_pb2.CompressedUpdate.FromString(codec.encode([x]))
    assert len(message.tensors[0].scales) == 4 * math.ceil(100 / 16)


def test_randk_keeps_the_count_and_exact_values_at_random_positions() -> None:
    x = np.arange(1, 501, dtype=np.float32)
    codec = Codec.from_spec("randk:0.1+fp32")
    first, second = (
        codec.decode(codec.encode([x], generator=torch.Generator().manual_seed(s)))[0]
        for s in (1, 2)
    )
    for y in (first, second):
        assert np.count_nonzero(y) == 50
        np.testing.assert_array_equal(y[y != 0], x[y != 0])
    assert not np.array_equal(first != 0, second != 0)


# --- sizes -------------------------------------------------------------------------------------

# Size goals of docs/benchmarks.md on a dense 1M-parameter update, bits per parameter, all counted.
SIZE_GOALS = {
    "fp16": 16.1,
    "bf16": 16.1,
    "int8": 8.6,
    "int4": 4.6,
    "mxfp4_e2m1": 4.3,
    "sign": 1.1,
    "topk:0.01+int8": 0.35,
}


@pytest.mark.parametrize(("text", "goal"), SIZE_GOALS.items())
def test_a_million_parameter_update_meets_its_size_goal(text: str, goal: float) -> None:
    rng = np.random.default_rng(0)
    # A realistic layer mix: two matrices, a conv kernel and biases, 1,000,000 in all.
    shapes = [(512, 1024), (400, 1000), (64, 32, 3, 3), (1024,), (10,), (64,), (56182,)]
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    assert sum(a.size for a in arrays) == 1_000_000
    bits = 8 * len(Codec.from_spec(text).encode(arrays)) / 1_000_000
    assert bits <= goal


def test_exact_sizes_of_the_parts_of_a_known_input() -> None:
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    cases = {
        # spec: (payload bytes, scale bytes)
        "int4": (50, 2 * 4),  # 100 nibbles; 2 blocks of 64, float32 scales
        "int8:block=0": (100, 4),
        "mxfp4_e2m1": (50, 4),  # 4 blocks of 32, one E8M0 byte each
        "mxfp6_e3m2": (75, 4),  # four 6-bit codes per 3 bytes
        "mxfp8_e4m3": (100, 4),
        "sign": (13, 4),  # 100 bits; one block of 512
        "bf16": (200, 0),
        "fp32": (400, 0),
    }
    for text, (payload, scales) in cases.items():
        message = update_pb2.CompressedUpdate.FromString(Codec.from_spec(text).encode([x]))
        (tensor,) = message.tensors
        assert (len(tensor.payload), len(tensor.scales)) == (payload, scales), text
        assert tensor.num_values == 100 and not tensor.indices, text


@pytest.mark.parametrize(
    ("text", "scale_bytes"),
    [
        ("int8:block=32", 4 * 7 * 2),  # 7 rows of 45 = 32 + 13: two float32 scales a row
        ("int4", 4 * 7),  # 45 < 64: one block a row, not ceil(315 / 64) = 5
        ("int4:block=0", 4),  # one scale for the whole tensor
        ("mxfp4_e2m1", 7 * 2),  # one E8M0 byte per block
        ("mxfp4_e2m1:block=16:scale=ue5m3", 7 * 3),
        ("sign:block=32", 4 * 10),  # sign: blocks of the flattened array, ceil(315 / 32)
        ("topk:0.1+int8:block=16", 4 * 2),  # 32 kept values in one vector
    ],
)
def test_a_2d_array_has_a_scale_per_block_of_each_row(text: str, scale_bytes: int) -> None:
    x = np.random.default_rng(6).standard_normal((7, 45)).astype(np.float32)
    message = update_pb2.CompressedUpdate.FromString(Codec.from_spec(text).encode([x]))
    assert len(message.tensors[0].scales) == scale_bytes


def test_a_conv_kernel_is_blocked_along_its_fan_in() -> None:
    # (out, in, kh, kw) = (8, 3, 3, 3): 8 rows of 27 values, the rows quantized training uses.
    x = np.random.default_rng(7).standard_normal((8, 3, 3, 3)).astype(np.float32)
    codec = Codec.from_spec("int8:block=16")
    message = update_pb2.CompressedUpdate.FromString(codec.encode([x]))
    assert len(message.tensors[0].scales) == 4 * 8 * 2
    (y,) = codec.decode(codec.encode([x]))
    fan_in = torch.from_numpy(x).reshape(8, -1)
    expected = fake_quantize(fan_in, "int8", block_size=16).reshape(x.shape).numpy()
    np.testing.assert_array_equal(_bits(y), _bits(expected))


def test_sparse_indices_use_the_smaller_coding() -> None:
    x = np.random.default_rng(5).standard_normal(100_000).astype(np.float32)
    sparse = update_pb2.CompressedUpdate.FromString(Codec.from_spec("topk:0.01+int8").encode([x]))
    dense = update_pb2.CompressedUpdate.FromString(Codec.from_spec("topk:0.6+int8").encode([x]))
    assert sparse.tensors[0].index_coding == update_pb2.INDEX_DELTA_VARINT
    assert len(sparse.tensors[0].indices) < 1.5 * 1000
    assert dense.tensors[0].index_coding == update_pb2.INDEX_BITMAP
    assert len(dense.tensors[0].indices) == 100_000 // 8


# --- encode-side errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.array([1.0, np.nan], dtype=np.float32), "holds NaN, Inf"),
        (np.array([1.0, np.inf]), "holds NaN, Inf"),
        (np.array([1e300]), "beyond float32"),
        (np.array([1, 2], dtype=np.int64), "dtype int64 cannot be encoded; allowed: float16"),
    ],
)
def test_encode_refuses_arrays_it_cannot_send(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(ValueError, match="array 0") as info:
        Codec.from_spec("int8").encode([array])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "text", [*VALUE_FORMATS, "sign:sr", "int4:sr", "topk:0.5+int8", "randk:0.5+fp32"]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_codec_refuses_nan_and_inf(text: str, bad: float) -> None:
    # Block-scaled codecs find them through their block scales, the others in one pass.
    x = np.random.default_rng(0).standard_normal((6, 70)).astype(np.float32)
    x[4, 33] = bad
    with pytest.raises(ValueError, match="array 1: holds NaN, Inf"):
        Codec.from_spec(text).encode([np.ones(3, dtype=np.float32), x])


def test_decode_with_a_different_codec_is_refused() -> None:
    data = Codec.from_spec("int8").encode([np.ones(3, dtype=np.float32)])
    with pytest.raises(PayloadError, match="codec 'int8:block=64' does not match this run's"):
        Codec.from_spec("int4").decode(data)
