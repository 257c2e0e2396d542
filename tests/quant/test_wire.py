"""quant.wire: framing large fields, the CRC trailer, and splitting a message strictly."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from proto import update_pb2
from quant import Codec, PayloadError, wire

SPECS = (
    "fp32",
    "bf16",
    "int4",
    "mxfp6_e3m2:scale=ue5m3",
    "sign:sr",
    "topk:0.1+int8",
    "randk:0.7+fp16",
)


@pytest.mark.parametrize("text", SPECS)
def test_encoded_bytes_are_protobufs_deterministic_serialization(text: str) -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((7, 45)).astype(np.float32),
        np.zeros(0, dtype=np.float32),
        np.array(1.5, dtype=np.float64),
        rng.standard_normal(300).astype(np.float16),
    ]
    data = Codec.from_spec(text).encode(arrays, generator=torch.Generator().manual_seed(1))
    message = update_pb2.CompressedUpdate.FromString(data)
    assert message.SerializeToString(deterministic=True) == data
    body = message.__class__()
    body.CopyFrom(message)
    body.ClearField("crc32")
    assert message.crc32 == zlib.crc32(body.SerializeToString(deterministic=True))


@pytest.mark.parametrize("size", [0, 1, 4 << 20, (8 << 20) + 3])
def test_crc32_of_parts_is_zlibs_of_their_concatenation(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    parts = [b"head", data, memoryview(b"tail"), data[: size // 3]]
    joined = b"".join(bytes(wire.as_part(p)) for p in parts)
    assert wire.crc32(parts) == zlib.crc32(joined)


def test_seal_leaves_out_a_crc_of_zero_and_unseal_accepts_it() -> None:
    message = b"\x08\x02\x12\x04int8" + _zero_crc_suffix(b"\x08\x02\x12\x04int8")
    assert zlib.crc32(message) == 0
    assert wire.seal([message]) == message  # proto3 leaves out a fixed32 of 0
    assert bytes(wire.unseal(message)) == message


def _zero_crc_suffix(body: bytes) -> bytes:
    """Four bytes ``s`` with ``crc32(body + s) == 0``, solved over GF(2).

    ``crc32(body + s) = base ^ L(s)`` with ``L`` linear in the 32 bits of ``s``.
    """
    base = zlib.crc32(body + bytes(4))
    basis: dict[int, tuple[int, int]] = {}  # leading bit -> (L(mask), mask)
    for i in range(32):
        column, mask = zlib.crc32(body + (1 << i).to_bytes(4, "little")) ^ base, 1 << i
        for lead in sorted(basis, reverse=True):
            if column >> lead & 1:
                column, mask = column ^ basis[lead][0], mask ^ basis[lead][1]
        if column:
            basis[column.bit_length() - 1] = (column, mask)
    target, solution = base, 0
    for lead in sorted(basis, reverse=True):
        if target >> lead & 1:
            target, solution = target ^ basis[lead][0], solution ^ basis[lead][1]
    assert target == 0
    return solution.to_bytes(4, "little")


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # truncated varint
        b"\x0a\x05ab",  # a length past the end
        b"\x0b",  # a group (wire type 3)
        b"\x00\x01",  # field number 0
        b"\x08" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x3a\x01a\x3a\x01b",  # a large field twice
        b"\x38\x01",  # a large field as a varint
    ],
)
def test_split_refuses_malformed_wire_data(data: bytes) -> None:
    with pytest.raises(PayloadError):
        wire.split(memoryview(data), bulk=frozenset({7}), max_fields=16)


def test_split_returns_large_fields_as_views_and_the_rest_as_bytes() -> None:
    message = update_pb2.CompressedTensor(shape=[2, 3], payload=b"xyz", num_values=6)
    data = memoryview(message.SerializeToString(deterministic=True))
    rest, large, _ = wire.split(data, bulk=frozenset({7}), max_fields=16)
    assert bytes(large[7]) == b"xyz"
    parsed = update_pb2.CompressedTensor.FromString(rest)
    assert list(parsed.shape) == [2, 3] and parsed.num_values == 6 and not parsed.payload


def test_too_many_fields_are_refused() -> None:
    with pytest.raises(PayloadError, match="more than 3 fields"):
        wire.split(memoryview(b"\x08\x01" * 4), max_fields=3)
