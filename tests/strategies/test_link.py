"""The Link: codecs both ways and checked replies in front of any strategy."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedq import wire
from quant import Codec
from strategies.fedau import FedAU
from strategies.link import Link
from strategies.replies import Rejection
from tests.flower_messages import NodesGrid, message, reply

RNG = np.random.default_rng(0)
GLOBAL = {
    "w": RNG.standard_normal((4, 80)).astype(np.float32),
    "b": RNG.standard_normal(4).astype(np.float32),
}
SAMPLING = {"min_available_nodes": 1, "min_train_nodes": 1}


def _global() -> ArrayRecord:
    return ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})


def _identity(client: str, participated: bool = True) -> ConfigRecord:
    record = ConfigRecord({wire.CLIENT_ID: client, wire.AVAILABILITY_P: 0.5})
    record[wire.PARTICIPATED] = participated
    return record


def _metrics(examples: int = 10) -> MetricRecord:
    return MetricRecord({wire.NUM_EXAMPLES: examples, wire.TRAIN_LOSS: 1.0})


def _linked(strategy, uplink: str | None = None, downlink: str | None = None) -> Link:
    """``strategy`` behind a Link that has sent the global model to nodes 10..19."""
    link = Link(
        strategy,
        uplink=Codec.from_spec(uplink) if uplink else None,
        downlink=Codec.from_spec(downlink) if downlink else None,
    )
    list(link.configure_train(1, _global(), ConfigRecord(), NodesGrid(list(range(10, 20)))))
    return link


def _compressed_reply(node: int, client: str, payload: bytes, examples: int = 10):
    content = RecordDict(
        {
            wire.UPDATE: ConfigRecord({wire.PAYLOAD: payload}),
            wire.METRICS: _metrics(examples),
            wire.CLIENT: _identity(client),
        }
    )
    return reply(message(RecordDict(), dst=node), content)


def _model_reply(node: int, client: str, model: dict[str, np.ndarray], examples: int = 10):
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in model.items()}),
            wire.METRICS: _metrics(examples),
            wire.CLIENT: _identity(client),
        }
    )
    return reply(message(RecordDict(), dst=node), content)


def _deltas(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [
        {k: rng.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in GLOBAL.items()}
        for _ in range(count)
    ]


@pytest.mark.parametrize("spec", ["int4", "mxfp4_e2m1", "topk:0.1+int8+ef", "sign"])
def test_the_average_is_flowers_fedavg_of_the_decoded_models(spec: str) -> None:
    codec = Codec.from_spec(spec)
    deltas = _deltas(3)
    payloads = [codec.encode(list(d.values())) for d in deltas]
    link = _linked(FedAvg(**SAMPLING), uplink=spec)
    replies = [_compressed_reply(10 + i, f"c{i}", p, 10 * (i + 1)) for i, p in enumerate(payloads)]
    arrays, metrics = link.aggregate_train(1, replies)

    # The same round by Flower's stock FedAvg on the models the server reconstructs.
    models = [
        {k: GLOBAL[k] + decoded for k, decoded in zip(GLOBAL, codec.decode(p), strict=True)}
        for p in payloads
    ]
    stock_replies = [_model_reply(10 + i, f"c{i}", m, 10 * (i + 1)) for i, m in enumerate(models)]
    expected, expected_metrics = FedAvg(**SAMPLING).aggregate_train(1, stock_replies)
    # The link averages the updates (x_t + mean Δ) instead of the rebuilt models: the same
    # FedAvg weights, float32 sums in another order, so equal to float32 rounding.
    for key in GLOBAL:
        np.testing.assert_allclose(arrays[key].numpy(), expected[key].numpy(), atol=1e-6)
        assert arrays[key].numpy().dtype == np.float32
    assert dict(metrics) == dict(expected_metrics)
    assert link.round_outcome.participants == ["c0", "c1", "c2"]


class _ModelsSeen(FedAvg):
    """A FedAvg variant with its own aggregation: it must be handed models, as Flower's."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen = [{k: v.numpy() for k, v in r.content[wire.ARRAYS].items()} for r in replies]
        return super().aggregate_train(server_round, replies)


def test_a_strategy_with_its_own_aggregation_gets_the_rebuilt_models() -> None:
    codec = Codec.from_spec("int8")
    deltas = _deltas(2)
    payloads = [codec.encode(list(d.values())) for d in deltas]
    strategy = _ModelsSeen(**SAMPLING)
    link = _linked(strategy, uplink="int8")
    link.aggregate_train(1, [_compressed_reply(10 + i, f"c{i}", p) for i, p in enumerate(payloads)])
    for seen, payload in zip(strategy.seen, payloads, strict=True):
        for (key, x), decoded in zip(GLOBAL.items(), codec.decode(payload), strict=True):
            np.testing.assert_array_equal(seen[key], x + decoded)


def test_the_update_average_adds_updates_in_client_order_whatever_the_arrival() -> None:
    codec = Codec.from_spec("int4")
    payloads = [codec.encode(list(d.values())) for d in _deltas(5)]
    replies = [_compressed_reply(10 + i, f"c{i}", p, 7 + i) for i, p in enumerate(payloads)]
    forward, _ = _linked(FedAvg(**SAMPLING), uplink="int4").aggregate_train(1, replies)
    again = [_compressed_reply(10 + i, f"c{i}", p, 7 + i) for i, p in enumerate(payloads)]
    backward, _ = _linked(FedAvg(**SAMPLING), uplink="int4").aggregate_train(1, again[::-1])
    for key in GLOBAL:
        np.testing.assert_array_equal(forward[key].numpy(), backward[key].numpy())


def test_a_bad_payload_is_rejected_with_its_reason_and_the_round_goes_on() -> None:
    codec = Codec.from_spec("int8")
    good = [codec.encode(list(d.values())) for d in _deltas(2)]
    damaged = bytearray(good[0])
    damaged[len(damaged) // 2] ^= 0xFF
    other_codec = Codec.from_spec("int4").encode(list(_deltas(1)[0].values()))
    link = _linked(FedAvg(**SAMPLING), uplink="int8")
    replies = [
        _compressed_reply(10, "good-0", good[0]),
        _compressed_reply(11, "damaged", bytes(damaged)),
        _compressed_reply(12, "good-1", good[1]),
        _compressed_reply(13, "wrong-codec", other_codec),
        _model_reply(14, "no-payload", GLOBAL),
        _compressed_reply(15, "no-examples", good[1], examples=0),
    ]
    arrays, _ = link.aggregate_train(1, replies)
    outcome = link.round_outcome
    assert outcome.participants == ["good-0", "good-1"]
    reasons = {r.client: (r.node, r.reason) for r in outcome.rejected}
    assert reasons["damaged"] == (
        11,
        "payload rejected: CRC-32 mismatch: the bytes were damaged or not made by a Codec",
    )
    assert "does not match this run's 'int8:block=64'" in reasons["wrong-codec"][1]
    assert "no 'update' record" in reasons["no-payload"][1]
    assert "num-examples=0 must be an integer >= 1" in reasons["no-examples"][1]
    decoded = [codec.decode(p) for p in good]
    for i, key in enumerate(GLOBAL):
        mean = (decoded[0][i] + decoded[1][i]) / 2
        np.testing.assert_allclose(arrays[key].numpy(), GLOBAL[key] + mean, atol=1e-6)


def test_clients_that_sat_out_are_set_aside() -> None:
    link = _linked(FedAvg(**SAMPLING), uplink="int8")
    absent = reply(message(RecordDict(), dst=12), RecordDict({wire.CLIENT: _identity("c2", False)}))
    payload = Codec.from_spec("int8").encode(list(_deltas(1)[0].values()))
    arrays, _ = link.aggregate_train(1, [_compressed_reply(11, "c1", payload), absent])
    assert arrays is not None
    assert link.round_outcome.absent == ["c2"]


@pytest.mark.parametrize("downlink", ["bf16", "fp16"])
def test_the_downlink_sends_the_model_once_encoded_in_the_narrow_format(downlink: str) -> None:
    link = Link(
        FedAvg(**SAMPLING), uplink=Codec.from_spec("int4"), downlink=Codec.from_spec(downlink)
    )
    messages = list(link.configure_train(3, _global(), ConfigRecord({}), NodesGrid([21, 22])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [21, 22]
    assert messages[0].content[wire.MODEL] is messages[1].content[wire.MODEL]  # encoded once
    for m in messages:
        assert wire.ARRAYS not in m.content
        assert m.content[wire.MODEL][wire.KEYS] == list(GLOBAL)
        decoded = Codec.from_spec(downlink).decode(m.content[wire.MODEL][wire.PAYLOAD])
        for value, (key, x) in zip(decoded, GLOBAL.items(), strict=True):
            narrow = {"bf16": np.float32, "fp16": np.float16}[downlink]
            if downlink == "fp16":
                np.testing.assert_array_equal(value, x.astype(narrow).astype(np.float32), key)
            else:
                np.testing.assert_allclose(value, x, rtol=2**-8)


def test_fedau_weights_decoded_updates_as_it_weights_whole_models() -> None:
    deltas = _deltas(2)
    codec = Codec.from_spec("fp32")
    results = []
    for compressed in (False, True):
        link = _linked(FedAU(mode="all", **SAMPLING), uplink="fp32" if compressed else None)
        if compressed:
            replies = [
                _compressed_reply(10 + i, f"c{i}", codec.encode(list(d.values())))
                for i, d in enumerate(deltas)
            ]
        else:
            replies = [
                _model_reply(10 + i, f"c{i}", {k: GLOBAL[k] + d[k] for k in GLOBAL})
                for i, d in enumerate(deltas)
            ]
        arrays, _ = link.aggregate_train(1, replies)
        results.append({k: v.numpy() for k, v in arrays.items()})
    for key, x in GLOBAL.items():
        expected = x + (deltas[0][key] + deltas[1][key]) / 2
        np.testing.assert_allclose(results[1][key], expected, rtol=1e-6)
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-6, atol=1e-7)


def test_behind_the_link_stock_fedavg_is_unchanged_on_good_replies() -> None:
    models = [{k: GLOBAL[k] + d[k] for k in GLOBAL} for d in _deltas(3)]
    replies = [_model_reply(10 + i, f"c{i}", m, 5 * (i + 1)) for i, m in enumerate(models)]
    arrays, metrics = _linked(FedAvg(**SAMPLING)).aggregate_train(1, replies)
    fresh = [_model_reply(10 + i, f"c{i}", m, 5 * (i + 1)) for i, m in enumerate(models)]
    expected, expected_metrics = FedAvg(**SAMPLING).aggregate_train(1, fresh)
    for key in GLOBAL:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
    assert dict(metrics) == dict(expected_metrics)


@pytest.mark.parametrize(
    ("model", "examples", "reason"),
    [
        ({"w": np.full((4, 80), np.nan, np.float32)}, 10, "w: holds NaN or Inf"),
        ({"w": np.full((4, 80), np.inf, np.float32)}, 10, "w: holds NaN or Inf"),
        ({"w": np.ones((1, 80), np.float32)}, 10, "w: shape (1, 80) != global shape (4, 80)"),
        ({"w": np.ones((3, 3), np.float32)}, 10, "w: shape (3, 3) != global shape (4, 80)"),
        ({"w": np.ones((4, 80), np.float64)}, 10, "w: dtype float64 != global dtype float32"),
        ({}, 0, "num-examples=0 must be an integer >= 1"),
        ({}, -9, "num-examples=-9 must be an integer >= 1"),
    ],
)
def test_the_baseline_refuses_a_bad_whole_model_and_keeps_the_model_finite(
    model: dict[str, np.ndarray], examples: int, reason: str
) -> None:
    good = {k: GLOBAL[k] + 0.5 for k in GLOBAL}
    bad = {**good, **model}
    link = _linked(FedAvg(**SAMPLING))
    arrays, _ = link.aggregate_train(
        1, [_model_reply(10, "good", good), _model_reply(11, "bad", bad, examples)]
    )
    assert link.round_outcome.rejected == [Rejection("bad", 11, reason)]
    assert link.round_outcome.participants == ["good"]
    for key in GLOBAL:
        np.testing.assert_array_equal(arrays[key].numpy(), good[key])


def test_failures_reach_flowers_log_and_all_refused_leaves_the_model() -> None:
    link = _linked(FedAvg(**SAMPLING))
    failed = reply(message(RecordDict(), dst=12), error=Error(code=1, reason="timeout"))
    bad = {k: np.full_like(v, np.nan) for k, v in GLOBAL.items()}
    assert link.aggregate_train(1, [failed, _model_reply(10, "bad", bad)]) == (None, None)
    assert [r.client for r in link.round_outcome.rejected] == ["bad"]


def test_metrics_other_than_the_fedq_pair_are_refused() -> None:
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 3}),
            wire.CLIENT: _identity("c"),
        }
    )
    link = _linked(FedAvg(**SAMPLING))
    link.aggregate_train(1, [reply(message(RecordDict(), dst=10), content)])
    (rejection,) = link.round_outcome.rejected
    assert rejection.reason.startswith("metrics ['num-examples'] must be exactly")


def test_duplicates_and_strangers_are_refused_before_anything_is_learnt_from_them() -> None:
    model = {k: GLOBAL[k] + 1.0 for k in GLOBAL}
    link = _linked(FedAvg(**SAMPLING))  # sent the model to nodes 10..19
    replies = [
        _model_reply(10, "a", model),
        _model_reply(10, "a", model),  # the same reply delivered twice
        _model_reply(11, "a", model),  # a second SuperNode calling itself "a"
        _model_reply(99, "stranger", model),  # a node the server sent nothing to
    ]
    arrays, _ = link.aggregate_train(1, replies)
    outcome = link.round_outcome
    assert outcome.participants == ["a"]
    reasons = [r.reason for r in outcome.rejected]
    assert reasons == [
        "a second reply from this node this round",
        "a second reply from client 'a' this round",
        "a reply from a node the server sent nothing to this round",
    ]
    assert 99 not in link.reader.client_of_node and link.reader.client_of_node[10] == "a"
    for key in GLOBAL:
        np.testing.assert_array_equal(arrays[key].numpy(), model[key])


def test_a_reply_with_extra_records_cannot_abort_flowers_fedavg() -> None:
    good = _model_reply(10, "good", {k: GLOBAL[k] + 1.0 for k in GLOBAL})
    extra = _model_reply(11, "extra", {k: GLOBAL[k] + 3.0 for k in GLOBAL})
    extra.content["more-arrays"] = ArrayRecord({"z": Array(np.ones(2, np.float32))})
    extra.content["more-metrics"] = MetricRecord({"other": 1.0})
    arrays, _ = _linked(FedAvg(**SAMPLING)).aggregate_train(1, [good, extra])
    for key in GLOBAL:
        np.testing.assert_allclose(arrays[key].numpy(), GLOBAL[key] + 2.0, atol=1e-6)


def test_an_implausible_example_count_is_refused() -> None:
    link = Link(FedAvg(**SAMPLING), max_examples=1000)
    list(link.configure_train(1, _global(), ConfigRecord(), NodesGrid([10, 11])))
    good = {k: GLOBAL[k] + 1.0 for k in GLOBAL}
    link.aggregate_train(1, [_model_reply(10, "a", good), _model_reply(11, "b", good, 2**62)])
    (rejection,) = link.round_outcome.rejected
    assert rejection.reason == f"num-examples={2**62} exceeds max-examples=1000"


@pytest.mark.parametrize("p", [float("nan"), 0.0, -0.5, 2.0])
def test_an_oracle_rate_that_is_no_probability_is_not_used(p) -> None:
    reply_ = _model_reply(10, "a", {k: GLOBAL[k] + 1.0 for k in GLOBAL})
    reply_.content[wire.CLIENT][wire.AVAILABILITY_P] = p
    link = _linked(FedAU(mode="known-prob", **SAMPLING))
    arrays, _ = link.aggregate_train(1, [reply_])
    assert link.round_outcome.client_figures["a"]["fedau_weight"] == 1.0
    assert np.all(np.isfinite(arrays["w"].numpy()))


def test_too_few_accepted_updates_leave_the_model_and_say_why() -> None:
    link = Link(FedAvg(**SAMPLING), min_replies=2)
    list(link.configure_train(1, _global(), ConfigRecord(), NodesGrid([10, 11])))
    bad = {k: np.full_like(v, np.nan) for k, v in GLOBAL.items()}
    good = {k: GLOBAL[k] + 1.0 for k in GLOBAL}
    arrays, _ = link.aggregate_train(1, [_model_reply(10, "a", good), _model_reply(11, "b", bad)])
    assert arrays is None
    assert link.round_outcome.failure.startswith("1 accepted updates, fewer than min-replies=2")
    assert link.round_outcome.participants == ["a"]


class _Arriving:
    """Nodes that connect one by one, as SuperNodes do after the ServerApp starts."""

    def __init__(self) -> None:
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return [10, 11, 12][: min(3, self.calls)]


def test_the_first_round_waits_for_min_clients_and_later_ones_do_not(monkeypatch) -> None:
    monkeypatch.setattr("strategies.link.NODE_WAIT_SECONDS", 0.0)
    link = Link(FedAvg(**SAMPLING), min_clients=3)
    grid = _Arriving()
    messages = list(link.configure_train(1, _global(), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [10, 11, 12]
    calls = grid.calls
    list(link.configure_train(2, _global(), ConfigRecord(), NodesGrid([10, 11])))
    assert grid.calls == calls  # no second wait: a node that is gone does not stall the run
