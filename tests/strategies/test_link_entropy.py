"""An entropy-coded uplink (`+ans`) end to end: run config, client, Link, aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.serverapp.strategy import FedAvg

from client.compression import EF_RESIDUAL_KEY, compress_update
from fedq.runconfig import RunConfig
from quant import Codec
from tests.strategies.test_link import GLOBAL, SAMPLING, _compressed_reply, _deltas, _linked


@pytest.mark.parametrize(
    ("compress", "name"),
    [
        ("int4+ans", "int4:block=64+ans"),
        ("topk:0.01+int8+ans+ef", "topk:0.01+int8:block=64+ans"),
        ("mxfp4_e2m1+ans", "mxfp4_e2m1+ans"),
    ],
)
def test_the_run_config_takes_an_entropy_coded_uplink(compress: str, name: str) -> None:
    config = RunConfig.from_mapping({"compress": compress})
    assert config.uplink_codec is not None
    assert config.uplink_codec.name == name
    assert config.uplink_codec.spec.entropy_coding
    assert config.uplink_codec.error_feedback == compress.endswith("+ef")


def _round(spec: str, payloads: list[bytes]):
    link = _linked(FedAvg(**SAMPLING), uplink=spec)
    replies = [_compressed_reply(10 + i, f"c{i}", p, 10 * (i + 1)) for i, p in enumerate(payloads)]
    return link, link.aggregate_train(1, replies)


def test_an_int4_ans_uplink_aggregates_exactly_as_int4() -> None:
    deltas = _deltas(3)
    coded = [Codec.from_spec("int4+ans").encode(list(d.values())) for d in deltas]
    plain = [Codec.from_spec("int4").encode(list(d.values())) for d in deltas]
    link, (arrays, metrics) = _round("int4+ans", coded)
    _, (expected, expected_metrics) = _round("int4", plain)
    for key in GLOBAL:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
    assert dict(metrics) == dict(expected_metrics)
    assert link.round_outcome.participants == ["c0", "c1", "c2"]
    # 320 values: the tables cost about what rANS saves; at worst the name's "+ans" more.
    assert all(len(c) <= len(p) + 4 for c, p in zip(coded, plain, strict=True))


def test_the_link_refuses_plain_int4_bytes_on_an_ans_uplink() -> None:
    payload = Codec.from_spec("int4").encode(list(_deltas(1)[0].values()))
    link, (arrays, _) = _round("int4+ans", [payload])
    assert link.round_outcome.participants == []
    assert arrays is None


def test_error_feedback_composes_with_ans() -> None:
    # +ans is lossless: the client sends and keeps exactly what it would without it.
    states = {spec: RecordDict() for spec in ("topk:0.1+int4+ef", "topk:0.1+int4+ans+ef")}
    for round_ in range(3):
        delta = _deltas(round_ + 1)[round_]
        sent = {}
        for spec, state in states.items():
            codec = Codec.from_spec(spec)
            sent[spec] = codec.decode(compress_update(delta, codec, state, seed=round_))
        for a, b in zip(*sent.values(), strict=True):
            assert a.tobytes() == b.tobytes()
    residuals = [state.array_records[EF_RESIDUAL_KEY] for state in states.values()]
    for key in GLOBAL:
        assert residuals[0][key].numpy().tobytes() == residuals[1][key].numpy().tobytes()
