"""The downlink as changes: the Link and the real ClientApp agree on the model, round after round.

Messages go from the Link to fedq's ClientApp (compression_mod included) in this process,
each client with a Context that lives as a SuperNode's does; absences, a lost Context and
a newcomer are made by not delivering messages, replacing a Context and adding a node.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from client.client_app import app
from client.compression import held_reference
from fedq import wire
from fedq.models import ModelSpec, build_model
from quant import Codec
from server.metering import TrafficLedger, content_bytes
from strategies.downlink import WHOLE_MODEL, ChangeDownlink
from strategies.fedau import FedAU
from strategies.link import Link
from tests.flower_messages import NodesGrid, context, message, reply

SAMPLING = {
    "min_available_nodes": 1,
    "min_train_nodes": 1,
    "fraction_evaluate": 1.0,
    "min_evaluate_nodes": 1,
}
TRAIN = ConfigRecord({wire.LOCAL_STEPS: 2, wire.BATCH_SIZE: 8, wire.LR: 0.1})
PARTITIONS = 5


def _initial() -> ArrayRecord:
    return ArrayRecord(build_model(ModelSpec("mlp"), seed=0).state_dict())


def _deliver(sent: Message, ctx, message_id: str) -> Message:
    """``sent`` as its SuperNode hands it to the ClientApp (own content, full metadata)."""
    content = RecordDict(dict(sent.content.items()))
    delivered = message(
        content,
        dst=sent.metadata.dst_node_id,
        message_type=sent.metadata.message_type,
        message_id=message_id,
    )
    return app(delivered, ctx)


def _kind(sent: Message) -> str:
    record = sent.content.config_records[wire.MODEL]
    return "change" if wire.DELTA_OF in record else "whole"


def _assert_holds(ctx, link: Link) -> None:
    held, version = held_reference(ctx.state)
    assert version == link.changes.version
    reference = link.changes.reference
    assert list(held) == list(reference)
    for key, value in reference.items():
        assert held[key].dtype == value.dtype
        np.testing.assert_array_equal(held[key], value, err_msg=key)


@pytest.mark.parametrize(
    ("strategy", "downlink", "compress"),
    [
        (FedAvg(**SAMPLING), "int8+ef", "int4"),
        (FedAvg(**SAMPLING), "topk:0.05+int8+ef", "none"),
        (FedAU(mode="fedau", **SAMPLING), "int4+ans", "topk:0.1+int8+ef"),
    ],
)
def test_clients_hold_the_servers_reference_bit_for_bit_through_absences_and_rejoins(
    strategy, downlink: str, compress: str
) -> None:
    run = {"downlink": downlink, "compress": compress, "availability": "bernoulli:0.7"}
    link = Link(
        strategy,
        uplink=None if compress == "none" else Codec.from_spec(compress),
        downlink=Codec.from_spec(downlink),
        downlink_changes=True,
    )
    nodes = {
        100 + i: context({"partition-id": i, "num-partitions": PARTITIONS}, run, 100 + i)
        for i in range(4)
    }
    rng = np.random.default_rng(3)
    arrays = _initial()
    replied_last_round: set[int] = set()  # nodes whose reply the server read last round
    kinds: dict[int, list[str]] = {node: [] for node in range(100, 105)}
    errors: list[tuple[int, int, str]] = []
    for server_round in range(1, 31):
        if server_round == 12:  # node 103's SuperNode lost its Context
            nodes[103] = context({"partition-id": 3, "num-partitions": PARTITIONS}, run, 103)
        if server_round == 15:  # a newcomer
            nodes[104] = context({"partition-id": 4, "num-partitions": PARTITIONS}, run, 104)
        grid = NodesGrid(sorted(nodes))
        messages = list(link.configure_train(server_round, arrays, TRAIN, grid))
        assert sorted(m.metadata.dst_node_id for m in messages) == sorted(nodes)
        replies, delivered = [], set()
        for sent in messages:
            node = sent.metadata.dst_node_id
            # Every node that replied last round, and only those, holds the last reference.
            expected = "change" if node in replied_last_round else "whole"
            assert _kind(sent) == expected, (server_round, node)
            lost = rng.random() < 0.25  # lost on the way, or the node was offline
            if lost and not (node == 103 and server_round in (11, 12)):
                continue
            kinds[node].append(_kind(sent))
            answer = _deliver(sent, nodes[node], f"t{server_round}-{node}")
            replies.append(answer)
            if answer.has_error():
                errors.append((server_round, node, answer.error.reason))
                continue
            delivered.add(node)
            _assert_holds(nodes[node], link)
            assert answer.content[wire.CLIENT][wire.MODEL_VERSION] == server_round
        broadcast = arrays  # x_t, the model the reference was made from
        new, _ = link.aggregate_train(server_round, replies)
        arrays = new if new is not None else arrays
        replied_last_round = delivered
        if server_round % 5 == 0:
            _evaluate(link, server_round, arrays, nodes)
    # The node whose Context was lost was sent a change once, refused it, then got the
    # whole model; the newcomer got the whole model first and changes after.
    assert [e[1] for e in errors] == [103]
    assert "a change from model version" in errors[0][2] and "holds no model" in errors[0][2]
    assert kinds[104][0] == "whole" and "change" in kinds[104]
    assert sum(k.count("change") for k in kinds.values()) > 60
    assert sum(k.count("whole") for k in kinds.values()) >= 6
    # The clients' model never drifts from the server's: it stays within a small part of
    # how far training moved the model (one round's codec error, not 30 rounds' sum).
    initial = _initial()
    for key, value in broadcast.items():
        moved = np.max(np.abs(value.numpy() - initial[key].numpy()))
        error = np.max(np.abs(link.changes.reference[key] - value.numpy()))
        assert error < 0.5 * moved


def _evaluate(link: Link, server_round: int, arrays: ArrayRecord, nodes: dict) -> None:
    """Evaluate on every node: a one-off model, the held reference left as it was."""
    messages = list(
        link.configure_evaluate(server_round, arrays, ConfigRecord(), NodesGrid(sorted(nodes)))
    )
    held_before = {node: held_reference(ctx.state) for node, ctx in nodes.items()}
    replies = []
    for sent in messages:
        node = sent.metadata.dst_node_id
        record = sent.content.config_records[wire.MODEL]
        assert wire.MODEL_VERSION not in record  # nobody keeps an evaluation's model
        current = link.reader.model_version.get(link.reader.client_of_node.get(node))
        assert (wire.DELTA_OF in record) == (current == link.changes.version)
        answer = _deliver(sent, nodes[node], f"e{server_round}-{node}")
        assert not answer.has_error(), answer.error.reason if answer.has_error() else ""
        replies.append(answer)
    link.aggregate_evaluate(server_round, replies)
    assert len(link.federated_evaluation.clients) == len(nodes)
    assert 0.0 < link.federated_evaluation.accuracy <= 1.0
    for node, ctx in nodes.items():
        model, version = held_reference(ctx.state)
        before_model, before_version = held_before[node]
        assert version == before_version
        if model is not None:
            for key in model:
                np.testing.assert_array_equal(model[key], before_model[key])


def test_newcomers_get_the_whole_model_once_and_every_byte_is_counted() -> None:
    codec = Codec.from_spec("int8+ef")
    link = Link(FedAvg(**SAMPLING), downlink=codec, downlink_changes=True)
    run = {"downlink": "int8+ef", "compress": "int8"}
    nodes = {100: context({"partition-id": 0, "num-partitions": 2}, run, 100)}
    arrays = _initial()
    ledger = TrafficLedger()
    whole_size = len(WHOLE_MODEL.encode([a.numpy() for a in arrays.values()]))
    for server_round in (1, 2, 3):
        if server_round == 2:
            nodes[101] = context({"partition-id": 1, "num-partitions": 2}, run, 101)
        messages = list(link.configure_train(server_round, arrays, TRAIN, NodesGrid(sorted(nodes))))
        replies = []
        for sent in messages:
            ledger.record_sent(sent)
            replies.append(_deliver(sent, nodes[sent.metadata.dst_node_id], f"{server_round}"))
        traffic = ledger.take()
        sizes = {
            node: len(m.content[wire.MODEL][wire.PAYLOAD])
            for node, m in ((m.metadata.dst_node_id, m) for m in messages)
        }
        for sent in messages:
            node = sent.metadata.dst_node_id
            assert traffic[node].payload_down == sizes[node]
            assert traffic[node].bytes_down == content_bytes(sent.content) > sizes[node]
        newcomer = 101 if server_round == 2 else None
        for node, size in sizes.items():
            if node == newcomer:
                assert size == whole_size  # the whole model, fp32, once
            else:  # an int8 change, or round 1's model in int8: about a quarter
                assert size < whole_size / 3
        first = [m.content[wire.MODEL].get(wire.BY_CODEC) for m in messages]
        assert first == [True] * len(messages) if server_round == 1 else not any(first)
        new, _ = link.aggregate_train(server_round, replies)
        arrays = new if new is not None else arrays


def test_the_server_applies_updates_to_its_model_not_to_the_clients_reference() -> None:
    # With a lossy downlink the client trains from x̂ ≠ x_t; its whole-model reply x̂ + D
    # is read as Δ = D against x̂, and FedAvg averages x_t + D: the error is kept.
    link = Link(FedAvg(**SAMPLING), downlink=Codec.from_spec("int4+ef"), downlink_changes=True)
    rng = np.random.default_rng(0)
    x1 = {"w": rng.standard_normal((4, 80)).astype(np.float32)}
    x2 = {"w": x1["w"] + rng.standard_normal((4, 80)).astype(np.float32)}
    record = ArrayRecord({k: Array(v) for k, v in x1.items()})
    list(link.configure_train(1, record, TRAIN, NodesGrid([10])))
    identity = ConfigRecord({wire.CLIENT_ID: "a", wire.MODEL_VERSION: 1})
    metrics = MetricRecord({wire.NUM_EXAMPLES: 5, wire.TRAIN_LOSS: 1.0})
    first = RecordDict({wire.ARRAYS: record, wire.METRICS: metrics, wire.CLIENT: identity})
    link.aggregate_train(1, [reply(message(RecordDict(), dst=10), first)])
    (sent,) = link.configure_train(2, ArrayRecord({"w": Array(x2["w"])}), TRAIN, NodesGrid([10]))
    assert _kind(sent) == "change"
    reference = link.changes.reference["w"]
    assert not np.array_equal(reference, x2["w"])
    step = np.full((4, 80), 0.25, np.float32)
    local = ArrayRecord({"w": Array(reference + step)})
    identity = ConfigRecord({wire.CLIENT_ID: "a", wire.MODEL_VERSION: 2})
    content = RecordDict({wire.ARRAYS: local, wire.METRICS: metrics, wire.CLIENT: identity})
    arrays, _ = link.aggregate_train(2, [reply(message(RecordDict(), dst=10), content)])
    np.testing.assert_allclose(arrays["w"].numpy(), x2["w"] + step, atol=1e-6)


def test_a_resumed_run_sends_whole_models_first() -> None:
    link = Link(FedAvg(**SAMPLING), downlink=Codec.from_spec("int8+ef"), downlink_changes=True)
    link.reader.client_of_node[10] = "a"
    arrays = _initial()
    list(link.configure_train(1, arrays, TRAIN, NodesGrid([10])))
    link.reader.model_version["a"] = 1
    (sent,) = link.configure_train(2, arrays, TRAIN, NodesGrid([10]))
    assert _kind(sent) == "change"
    link.forget_client_state()  # a resumed run: the clients' Contexts are new
    (sent,) = link.configure_train(3, arrays, TRAIN, NodesGrid([10]))
    assert _kind(sent) == "whole"
    assert sent.content[wire.MODEL][wire.MODEL_VERSION] == 3


def _track(spec: str, rounds: int = 40) -> float:
    """Broadcast a random walk of the model; check a client applying every record holds x̂
    bit for bit; return the largest |x̂ − x| at the end."""
    rng = np.random.default_rng(1)
    model = {"w": rng.standard_normal((8, 100)).astype(np.float32)}
    downlink = ChangeDownlink(Codec.from_spec(spec))
    held = None
    for server_round in range(1, rounds + 1):
        model = {"w": model["w"] + 0.05 * rng.standard_normal((8, 100)).astype(np.float32)}
        downlink.broadcast(server_round, model)
        record = downlink.record_for(server_round - 1)
        if wire.DELTA_OF in record:  # a client applying every change, as compression_mod does
            (step,) = downlink.codec.decode(record[wire.PAYLOAD])
            held = held + step
        else:
            whole = downlink.codec.dense() if record.get(wire.BY_CODEC) else WHOLE_MODEL
            (held,) = whole.decode(record[wire.PAYLOAD])
        np.testing.assert_array_equal(held, downlink.reference["w"])
    return float(np.max(np.abs(downlink.reference["w"] - model["w"])))


@pytest.mark.parametrize("spec", ["int8+ef", "int4+ef", "topk:0.05+int8+ef", "int4+ans+ef"])
def test_with_error_feedback_the_reference_stays_within_one_changes_error(spec) -> None:
    # One int4 change of a 0.05-sized step loses about 0.01; top-k drops 95 % of a step.
    assert _track(spec) < (0.5 if "topk" in spec else 0.03)


def test_without_error_feedback_the_codec_errors_add_up() -> None:
    assert _track("int4") > 5 * _track("int4+ef")


@pytest.mark.parametrize(
    ("spec", "by_codec"),
    [
        ("int8+ef", True),
        ("int4+ans+ef", True),
        ("mxfp4_e2m1+ef", True),
        ("bf16+ef", True),
        ("topk:0.05+int8+ef", True),  # by int8+ef: a sparse first model would be mostly 0
        ("int4", False),  # no error feedback: the first model's error would stay
        ("sign+ef", False),
    ],
)
def test_the_first_model_goes_out_by_the_codec_only_for_dense_codecs_with_error_feedback(
    spec: str, by_codec: bool
) -> None:
    rng = np.random.default_rng(2)
    model = {"w": rng.standard_normal((8, 100)).astype(np.float32)}
    downlink = ChangeDownlink(Codec.from_spec(spec))
    downlink.broadcast(1, model)
    first = downlink.record_for(None)
    assert bool(first.get(wire.BY_CODEC)) == by_codec
    assert first[wire.MODEL_VERSION] == 1 and wire.DELTA_OF not in first
    whole = len(WHOLE_MODEL.encode(list(model.values())))
    if by_codec:
        assert len(first[wire.PAYLOAD]) < whole * 0.6
        (decoded,) = downlink.codec.dense().decode(first[wire.PAYLOAD])
        np.testing.assert_array_equal(decoded, downlink.reference["w"])
        assert np.count_nonzero(decoded) > 0.7 * decoded.size  # dense, also for top-k
    else:
        np.testing.assert_array_equal(downlink.reference["w"], model["w"])
    # A newcomer of round 2 gets the reference whole, in fp32: it must hold it exactly.
    downlink.broadcast(2, {"w": model["w"] + 0.01})
    late = downlink.record_for(None)
    assert wire.BY_CODEC not in late and len(late[wire.PAYLOAD]) == whole
