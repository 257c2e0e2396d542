"""Codecs with ``+ans``: the same arrays as without it, in fewer bytes, strictly decoded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import update_pb2
from quant import Codec, PayloadError
from quant.codec_spec import VALUE_FORMATS, parse_codec_spec
from quant.entropy_coding import RANS, RAW, ZSTD
from quant.varints import decode_varints, encode_varints
from tests.quant.test_codec_decode import _sealed, arrays

RNG = np.random.default_rng(0)
SHAPES = [(), (0,), (0, 3), (7,), (33, 17), (4, 2, 3, 3), (300, 64)]
SPARSIFIERS = ["", "topk:0.05+", "randk:0.3+", "topk:1+"]


def _update(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An update-like array: mostly small values, a few large ones."""
    return (RNG.standard_normal(shape) * RNG.exponential(0.01, shape)).astype(dtype)


def _decoded(text: str, arrays_: list[np.ndarray], seed: int = 7) -> tuple[list, int]:
    codec = Codec.from_spec(text)
    data = codec.encode(arrays_, generator=torch.Generator().manual_seed(seed))
    return codec.decode(data), len(data)


def _assert_identical(left: list[np.ndarray], right: list[np.ndarray]) -> None:
    for a, b in zip(left, right, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("value", [*VALUE_FORMATS, "int4:sr", "mxfp4_e2m1:block=16:scale=ue5m3"])
@pytest.mark.parametrize("sparsifier", SPARSIFIERS)
def test_ans_decodes_bit_for_bit_to_what_the_codec_without_it_does(value, sparsifier) -> None:
    arrays_ = [_update(shape) for shape in SHAPES] + [_update((9, 5), np.float16)]
    plain, plain_bytes = _decoded(sparsifier + value, arrays_)
    coded, coded_bytes = _decoded(sparsifier + value + "+ans", arrays_)
    _assert_identical(coded, plain)
    # Never more than the 4 bytes "+ans" adds to the codec's name.
    assert coded_bytes <= plain_bytes + 4


@pytest.mark.parametrize("text", ["int4", "int8", "mxfp4_e2m1", "fp8_e4m3", "bf16"])
def test_low_bit_codes_of_an_update_get_smaller(text: str) -> None:
    arrays_ = [_update((300, 64))]
    assert _decoded(text + "+ans", arrays_)[1] < 0.97 * _decoded(text, arrays_)[1]


def test_streams_are_chosen_per_tensor_and_every_byte_is_in_the_message() -> None:
    arrays_ = [_update((300, 64)), np.float32([0.5, -0.25]), _update((2000,))]
    data = Codec.from_spec("topk:0.05+int4+ans").encode(arrays_)
    message = update_pb2.CompressedUpdate.FromString(data)
    # The message is protobuf's serialization of what it holds: no byte outside its fields.
    assert message.SerializeToString(deterministic=True) == data
    assert message.codec == "topk:0.05+int4:block=64+ans"
    big, small, _ = message.tensors
    assert big.payload_entropy == RANS and big.payload_model
    assert big.indices_entropy in (RANS, ZSTD)
    assert small.payload_entropy == RAW and not small.payload_model
    assert small.indices_entropy == RAW and not small.indices_model


def test_without_ans_the_stream_fields_stay_empty() -> None:
    data = Codec.from_spec("topk:0.05+int4").encode([_update((300, 64))])
    (tensor,) = update_pb2.CompressedUpdate.FromString(data).tensors
    assert not any(
        [tensor.payload_entropy, tensor.payload_model, tensor.indices_entropy, tensor.indices_model]
    )


@pytest.mark.parametrize(
    ("text", "canonical", "wire"),
    [
        ("int4+ans", "int4:block=64+ans", "int4:block=64+ans"),
        ("topk:0.01+int8+ans+ef", "topk:0.01+int8:block=64+ans+ef", "topk:0.01+int8:block=64+ans"),
        ("sign+ef+ans", "sign:block=512+ans+ef", "sign:block=512+ans"),
        ("mxfp4_e2m1+ans", "mxfp4_e2m1+ans", "mxfp4_e2m1+ans"),
    ],
)
def test_ans_is_a_suffix_that_composes_with_error_feedback(text, canonical, wire) -> None:
    spec = parse_codec_spec(text)
    assert spec.entropy_coding
    assert spec.error_feedback == ("ef" in text)
    assert spec.describe() == canonical and spec.wire_name() == wire
    assert parse_codec_spec(canonical) == spec


@pytest.mark.parametrize("text", ["int4+ans+ans", "int4+ef+ans+ef"])
def test_a_suffix_given_twice_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is given twice"):
        parse_codec_spec(text)


def test_codecs_with_and_without_ans_refuse_each_others_bytes() -> None:
    arrays_ = [_update((30, 64))]
    with pytest.raises(PayloadError, match="does not match this run's"):
        Codec.from_spec("int4").decode(Codec.from_spec("int4+ans").encode(arrays_))
    with pytest.raises(PayloadError, match="does not match this run's"):
        Codec.from_spec("int4+ans").decode(Codec.from_spec("int4").encode(arrays_))


# --- strict decoding of the coded streams --------------------------------------------------

ARRAYS = [_update((300, 64)), _update((50,)), _update((2000,))]


def _edited(text: str, change) -> bytes:
    message = update_pb2.CompressedUpdate.FromString(Codec.from_spec(text).encode(ARRAYS))
    change(message.tensors[0])
    return _sealed(message)


def _setter(**fields):
    def change(tensor) -> None:
        for name, value in fields.items():
            setattr(tensor, name, value(tensor) if callable(value) else value)

    return change


def _wrong_table(tensor) -> bytes:
    """The same frequencies moved one symbol up: a valid table of another model."""
    raw = np.frombuffer(tensor.payload_model, dtype=np.uint8)
    values = decode_varints(raw, int(np.count_nonzero(raw < 0x80)), "model")
    values[1:] = np.roll(values[1:], 1)
    return encode_varints(values)


CORRUPTIONS = [
    ("int4+ans", _setter(payload=lambda t: t.payload[:-4]), "does not end after its 19200"),
    ("int4+ans", _setter(payload=lambda t: t.payload[:-1]), "no whole number of words"),
    ("int4+ans", _setter(payload_model=b""), "expected 2 to 16"),
    ("int4+ans", _setter(payload_model=_wrong_table), "tensor 0: payload: the rANS data does"),
    ("int4+ans", _setter(payload_entropy=RAW), "tensor 0: payload: a raw stream has no model"),
    ("int4+ans", _setter(payload_entropy=ZSTD, payload_model=b""), "not a zstd frame"),
    ("int4+ans", _setter(payload_entropy=7), "stream coding 7 is not known"),
    ("int4+ans", _setter(indices_entropy=ZSTD), "tensor 0: indices: an empty stream is sent"),
    ("int4", _setter(payload_entropy=RANS), "entropy-coded streams need a '+ans' codec"),
    ("int4", _setter(indices_model=b"\1"), "entropy-coded streams need a '+ans' codec"),
    ("topk:0.05+int8+ans", _setter(indices=lambda t: t.indices[:-2]), "tensor 0: indices:"),
    ("topk:0.05+int8+ans", _setter(indices_model=b"\x05\x01\x01"), "tensor 0: indices:"),
]


@pytest.mark.parametrize(("text", "change", "fragment"), CORRUPTIONS)
def test_each_defect_of_a_coded_stream_is_a_payload_error(text, change, fragment) -> None:
    with pytest.raises(PayloadError) as info:
        Codec.from_spec(text).decode(_edited(text, change))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text", ["int4+ans", "int8+ans", "mxfp6_e3m2+ans", "bf16+ans", "topk:0.05+int8+ans"]
)
def test_fuzzed_coded_messages_only_ever_raise_payload_error(text: str) -> None:
    codec = Codec.from_spec(text)
    valid = update_pb2.CompressedUpdate.FromString(codec.encode(ARRAYS))
    rng = np.random.default_rng(len(text))
    fields = ["payload", "payload_model", "indices", "indices_model"]
    for trial in range(150):
        message = update_pb2.CompressedUpdate()
        message.CopyFrom(valid)
        tensor = message.tensors[int(rng.integers(0, len(message.tensors)))]
        field = fields[trial % 4]
        value = bytearray(getattr(tensor, field))
        if value and trial % 3:
            for position in rng.integers(0, len(value), size=int(rng.integers(1, 4))):
                value[position] ^= 1 << int(rng.integers(0, 8))
        else:
            value = value[: int(rng.integers(0, len(value) + 1))] + rng.bytes(
                int(rng.integers(0, 5))
            )
        setattr(tensor, field, bytes(value))
        if trial % 7 == 0:
            tensor.payload_entropy = int(rng.integers(0, 3))
        try:
            decoded = codec.decode(_sealed(message))
        except PayloadError:
            continue
        for array in decoded:
            assert np.all(np.isfinite(array))


@settings(max_examples=60, deadline=None)
@given(
    x=arrays(),
    text=st.sampled_from(
        ["int4", "int8", "mxfp4_e2m1", "sign", "bf16", "fp8_e5m2", "topk:0.3+int4"]
    ),
)
def test_any_array_round_trips_as_without_ans(x: np.ndarray, text: str) -> None:
    plain, _ = _decoded(text, [x])
    coded, _ = _decoded(text + "+ans", [x])
    _assert_identical(coded, plain)
