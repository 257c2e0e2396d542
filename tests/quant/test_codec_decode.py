"""Strict decoding: every defect of the bytes is a PayloadError with its reason, nothing else."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from proto import update_pb2
from quant import Codec, PayloadError, fake_quantize
from quant.codec import WIRE_VERSION
from quant.codec_spec import VALUE_FORMATS

# Block scales run per row: tensor 0 has 7 rows of 10 values (one block each at the default
# block sizes, 7 scales), tensor 1 is one row, tensor 2 (conv-like) 4 rows of 18.
ARRAYS = [
    np.linspace(-2, 2, 70, dtype=np.float32).reshape(7, 10),
    np.array([0.25, -0.5, 1.0], dtype=np.float32),
    np.linspace(-1, 3, 72, dtype=np.float32).reshape(4, 2, 3, 3),
]


def _message(text: str, arrays: list[np.ndarray] = ARRAYS) -> update_pb2.CompressedUpdate:
    return update_pb2.CompressedUpdate.FromString(Codec.from_spec(text).encode(arrays))


def _sealed(message: update_pb2.CompressedUpdate) -> bytes:
    """Serialize with a correct CRC, so decoding gets past the checksum to the real check."""
    message.ClearField("crc32")
    message.crc32 = zlib.crc32(message.SerializeToString(deterministic=True))
    return message.SerializeToString(deterministic=True)


def _edit(text: str, change: Callable[[update_pb2.CompressedUpdate], None]) -> bytes:
    message = _message(text)
    change(message)
    return _sealed(message)


def _set(field: str, value: object, tensor: int = 0):
    def change(message: update_pb2.CompressedUpdate) -> None:
        target = message.tensors[tensor]
        if isinstance(value, list):
            del getattr(target, field)[:]
            getattr(target, field).extend(value)
        else:
            setattr(target, field, value)

    return change


def test_the_wire_version_is_2() -> None:
    assert WIRE_VERSION == 2
    assert _message("int8").version == 2


CASES = [
    # Version 1 blocked the flattened array: its scales would be misread, so it is refused.
    ("int8", lambda m: setattr(m, "version", 1), "wire version 1 is not supported; allowed: 2"),
    ("int8", lambda m: setattr(m, "version", 3), "wire version 3 is not supported; allowed: 2"),
    ("int8", lambda m: setattr(m, "codec", "int9"), "codec 'int9' does not match this run's"),
    ("int8", _set("shape", [7, 11]), "values, expected 77 of 77"),
    ("int8", _set("dtype", "int64"), "dtype 'int64' is not allowed; allowed: float16"),
    ("int8", _set("format", "int4"), "format 'int4' block 64 does not match"),
    ("int8", _set("payload", b"\x01" * 69), "got 69 bytes, expected 70 for 70 codes of 8"),
    ("int8", _set("payload", b"\x01" * 71), "got 71 bytes, expected 70 for 70 codes of 8"),
    ("int4", _set("payload", b"\x11" * 36), "got 36 bytes, expected 35 for 70 codes of 4"),
    ("int8", _set("scales", b""), "scales has 0 bytes, expected 28"),
    # One scale per row (7), not per block of the flattened 70 values (2) ...
    ("int8", _set("scales", np.float32([1, 1]).tobytes()), "scales has 8 bytes, expected 28"),
    # ... truncated or padded by a whole scale or by a byte.
    ("int8", _set("scales", np.float32([1] * 6).tobytes()), "scales has 24 bytes, expected 28"),
    ("int8", _set("scales", np.float32([1] * 8).tobytes()), "scales has 32 bytes, expected 28"),
    ("int8", _set("scales", np.float32([1] * 7).tobytes() + b"\x00"), "29 bytes, expected 28"),
    ("int8", _set("scales", np.float32([1, 1, 1, 1]).tobytes(), 1), "16 bytes, expected 4"),
    ("int8:block=4", _set("scales", b"\x00" * 4 * 7), "scales has 28 bytes, expected 84"),
    ("int8:block=4", _set("scales", b"\x00" * 4 * 15, 2), "60 bytes, expected 80"),
    ("int8:block=0", _set("scales", b"\x00" * 4 * 7), "scales has 28 bytes, expected 4"),
    ("int8", _set("scales", np.float32([np.nan] + [1] * 6).tobytes()), "scales hold NaN or Inf"),
    ("int8", _set("scales", np.float32([1] * 6 + [-1]).tobytes()), "block scales must be > 0"),
    ("int8", _set("payload", b"\x80" * 70), "outside the format's range"),
    ("int4", _set("payload", b"\x88" * 35), "outside the format's range"),
    # one nibble is enough, low or high, anywhere in the payload
    ("int4", _set("payload", b"\x11" * 20 + b"\x08" + b"\x11" * 14), "outside the format's"),
    ("int4", _set("payload", b"\x11" * 34 + b"\x81"), "outside the format's range"),
    ("mxfp4_e2m1", _set("scales", b"\x7f" * 3), "scales has 3 bytes, expected 7"),
    ("mxfp4_e2m1", _set("scales", b"\x7f" * 8), "scales has 8 bytes, expected 7"),
    ("mxfp4_e2m1", _set("scales", b"\x7f" * 5, 2), "scales has 5 bytes, expected 4"),
    ("mxfp4_e2m1:block=8", _set("scales", b"\x7f" * 9, 2), "9 bytes, expected 12"),
    ("mxfp6_e3m2:scale=ue5m3", _set("scales", b"\x38" * 6), "6 bytes, expected 7"),
    ("mxfp4_e2m1", _set("scales", b"\x7f" * 6 + b"\xff"), "E8M0 scale is the NaN code 0xFF"),
    ("mxfp4_e2m1", _set("scales", b"\xfe" * 7), "decodes to NaN or Inf"),
    ("mxfp8_e4m3", _set("payload", b"\x7f" * 70), "not a finite value"),
    ("fp8_e5m2", _set("payload", b"\x7c" * 70), "not a finite value"),
    ("fp32", _set("payload", np.full(70, np.inf, np.float32).tobytes()), "NaN or Inf"),
    ("bf16", _set("payload", b"\x80\x7f" * 70), "NaN or Inf"),
    ("sign", _set("scales", np.float32([-1]).tobytes()), "sign scales must be >= 0"),
    ("int8", _set("scale_encoding", update_pb2.SCALE_E8M0), "scale encoding 2, expected 1"),
    ("int8", _set("indices", b"\x00"), "a dense tensor must carry no indices"),
    ("topk:0.1+int8", _set("num_values", 8), "8 values, expected 7 of 70"),
    # Kept values are one vector whatever the array's rows: one scale for 7 values.
    ("topk:0.1+int8", _set("scales", np.float32([1] * 7).tobytes()), "28 bytes, expected 4"),
    ("topk:0.1+int8", _set("index_coding", 0), "index coding 0 is not allowed"),
    ("topk:0.1+int8", _set("indices", b"\x7f" * 7), "tensor 0"),
    ("fp32", lambda m: m.tensors.add().shape.extend([1] * 9), "dimensions exceed the limit"),
]


@pytest.mark.parametrize(("text", "change", "fragment"), CASES)
def test_each_defect_is_a_payload_error_naming_it(text, change, fragment) -> None:
    with pytest.raises(PayloadError) as info:
        Codec.from_spec(text).decode(_edit(text, change))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_damaged_byte_fails_the_checksum() -> None:
    data = bytearray(Codec.from_spec("int4").encode(ARRAYS))
    data[len(data) // 2] ^= 0x10
    with pytest.raises(PayloadError, match="CRC-32 mismatch"):
        Codec.from_spec("int4").decode(bytes(data))


@pytest.mark.parametrize("cut", [1, 5, 40])
def test_truncated_bytes_are_refused(cut: int) -> None:
    data = Codec.from_spec("int4").encode(ARRAYS)
    with pytest.raises(PayloadError):
        Codec.from_spec("int4").decode(data[:-cut])


def test_sizes_beyond_the_configured_limit_are_refused_before_decoding() -> None:
    small = Codec.from_spec("int8", max_elements=50)
    with pytest.raises(PayloadError, match="exceeds the limit of 50 elements"):
        small.decode(Codec.from_spec("int8").encode(ARRAYS))
    few = Codec.from_spec("int8", max_tensors=1)
    with pytest.raises(PayloadError, match="3 tensors exceed the limit of 1"):
        few.decode(Codec.from_spec("int8").encode(ARRAYS))
    huge = _edit("fp32", _set("shape", [2**40, 2**40]))
    with pytest.raises(PayloadError, match="too large"):
        Codec.from_spec("fp32").decode(huge)


def test_non_bytes_input_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="payload must be bytes, got str"):
        Codec.from_spec("fp32").decode("hello")  # type: ignore[arg-type]


FUZZ_SPECS = (
    "fp32",
    "bf16",
    "int8",
    "int4",
    "int8:block=4",
    "mxfp4_e2m1",
    "mxfp6_e3m2",
    "mxfp4_e2m1:block=8:scale=ue5m3",
    "sign",
    "topk:0.2+int8",
)


@pytest.mark.parametrize("text", FUZZ_SPECS)
def test_fuzzed_bytes_only_ever_raise_payload_error(text: str) -> None:
    codec = Codec.from_spec(text)
    valid = codec.encode(ARRAYS)
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    for trial in range(400):
        kind = trial % 4
        if kind == 0:
            data = rng.bytes(int(rng.integers(0, 300)))
        elif kind == 1:  # flip bits of a valid encoding
            data = bytearray(valid)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[position] ^= 1 << int(rng.integers(0, 8))
            data = bytes(data)
        elif kind == 2:  # cut or extend
            cut = int(rng.integers(0, len(valid)))
            data = valid[:cut] + rng.bytes(int(rng.integers(0, 8)))
        else:  # structurally valid messages with random field contents and a good CRC
            message = _message(text)
            tensor = message.tensors[int(rng.integers(0, len(message.tensors)))]
            field = rng.choice(["payload", "scales", "indices"])
            setattr(
                tensor, field, rng.bytes(len(getattr(tensor, field)) + int(rng.integers(-2, 3)))
            )
            data = _sealed(message)
        try:
            arrays = codec.decode(data)
        except PayloadError:
            continue
        # Whatever decodes is finite and shaped like what a codec could have sent.
        for array in arrays:
            assert np.all(np.isfinite(array))


# --- property-based round trips -----------------------------------------------------------

PROPERTY_SPECS = [f for f in VALUE_FORMATS if f != "fp8_e4m3"] + ["fp8_e4m3", "topk:0.3+int4"]
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def arrays(draw) -> np.ndarray:
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
    elements = {
        np.float16: st.floats(-65504, 65504, width=16),
        np.float32: finite32,
        np.float64: finite32,
    }[dtype]
    kind = draw(st.sampled_from(["any", "zeros", "tiny", "huge"]))
    if kind == "zeros":
        return np.zeros(shape, dtype=dtype)
    if kind == "tiny" and dtype != np.float16:
        elements = st.floats(-(2.0**-130), 2.0**-130, width=32)
    if kind == "huge" and dtype != np.float16:
        elements = st.sampled_from([3.4e38, -3.4e38, 1e38, -2e37, 0.0])
    return draw(hnp.arrays(dtype, shape, elements=elements))


@settings(max_examples=60, deadline=None)
@given(x=arrays(), text=st.sampled_from(PROPERTY_SPECS))
def test_round_trip_keeps_shape_dtype_and_finiteness(x: np.ndarray, text: str) -> None:
    codec = Codec.from_spec(text)
    (y,) = codec.decode(codec.encode([x]))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.all(np.isfinite(y.astype(np.float32)))
    spec = codec.spec
    if spec.format_spec is not None and spec.sparsifier is None:
        import torch

        kwargs = {"block_size": spec.block_size, "scale": spec.scale} if spec.block_scaled else {}
        # Blocks run along the rows of the 2-D view (shape[0], -1); 0-d and 1-D: one row.
        rows = x.shape[0] if x.ndim >= 2 else 1
        view = torch.from_numpy(x.astype(np.float32).reshape(rows, x.size // max(rows, 1)))
        expected = fake_quantize(view, spec.value_format, **kwargs).numpy().reshape(x.shape)
        if x.dtype == np.float16:  # decoding saturates to float16's range, as formats do
            expected = np.clip(expected, -65504, 65504)
        np.testing.assert_array_equal(y, expected.astype(x.dtype))
