"""LoDAdaC's server (strategies/lodadac.py): relaying, public copies, resync and repair."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, MetricRecord, RecordDict

from fedq import wire
from fedq.topology import Topology
from quant import Codec
from strategies.link import Link
from strategies.lodadac import CONSENSUS_FIGURE, DISTANCE_FIGURE, MESSAGE_TYPE, LoDAdaC
from tests.flower_messages import NodesGrid, message, reply

NODES = [13, 10, 12, 11]  # agents 0..3 are the nodes in sorted order: 10, 11, 12, 13
X0 = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 10, "b": np.ones(2, np.float32)}
CODEC = Codec.from_spec("fp32")
THIRD = 1 / 3  # ring of 4: self and neighbour weights are 1/3


def _linked() -> Link:
    return Link(LoDAdaC(topology=Topology("ring"), min_available_nodes=4), uplink=CODEC)


def _configure(link: Link, server_round: int) -> dict[int, RecordDict]:
    messages = link.configure_train(
        server_round,
        ArrayRecord({k: Array(v) for k, v in X0.items()}),
        ConfigRecord({wire.LR: 0.01}),
        NodesGrid(NODES),
    )
    by_node = {}
    for m in messages:
        assert m.metadata.message_type == MESSAGE_TYPE
        by_node[m.metadata.dst_node_id] = m.content
    return by_node


def _delta(shift: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, shift, np.float32) for k, v in X0.items()}


def _update(node: int, shift: float, payload: bytes | None = None):
    identity = ConfigRecord({wire.CLIENT_ID: f"c{node}", wire.PARTICIPATED: True})
    content = RecordDict(
        {
            wire.UPDATE: ConfigRecord(
                {wire.PAYLOAD: payload or CODEC.encode(list(_delta(shift).values()))}
            ),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0}),
            wire.CLIENT: identity,
        }
    )
    return reply(message(RecordDict(), dst=node), content)


def _absent(node: int):
    identity = ConfigRecord({wire.CLIENT_ID: f"c{node}", wire.PARTICIPATED: False})
    return reply(message(RecordDict(), dst=node), RecordDict({wire.CLIENT: identity}))


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def test_the_first_round_starts_every_agent_from_x0() -> None:
    instructions = _configure(_linked(), 1)
    assert sorted(instructions) == sorted(NODES)
    for content in instructions.values():
        assert wire.NEIGHBOR_MIX not in content
        for key, value in _arrays(content[wire.PUBLIC_COPY]).items():
            np.testing.assert_array_equal(value, X0[key])
        assert content[wire.GOSSIP][wire.SELF_WEIGHT] == pytest.approx(THIRD)
        assert content[wire.CONFIG][wire.SERVER_ROUND] == 1


def test_updates_move_the_public_copies_and_the_average_is_reported() -> None:
    link = _linked()
    _configure(link, 1)
    arrays, metrics = link.aggregate_train(
        1, [_update(10, 1.0), _update(11, 2.0), _update(12, 3.0), _absent(13)]
    )
    lodadac = link.strategy
    for agent, shift in enumerate([1.0, 2.0, 3.0, 0.0]):
        for key in X0:
            np.testing.assert_array_equal(lodadac.public[agent][key], X0[key] + shift)
    for key in X0:  # the average public model, what the server evaluates
        np.testing.assert_allclose(arrays[key].numpy(), X0[key] + 1.5, rtol=1e-6)
    # (1/n) Σ ‖x̂_i - x̄‖², 8 parameters each: shifts -0.5, 0.5, 1.5, -1.5 from the mean.
    outcome = link.round_outcome
    expected = 8 * (0.25 + 0.25 + 2.25 + 2.25) / 4
    assert outcome.figures[CONSENSUS_FIGURE] == pytest.approx(expected)
    assert outcome.client_figures["c12"][DISTANCE_FIGURE] == pytest.approx(8 * 2.25)
    assert outcome.participants == ["c10", "c11", "c12"] and outcome.absent == ["c13"]
    assert metrics["participants"] == 3


def test_the_next_round_relays_neighbours_messages_and_resyncs_the_absent() -> None:
    link = _linked()
    _configure(link, 1)
    sent = {node: CODEC.encode(list(_delta(s).values())) for node, s in [(10, 1.0), (11, 2.0)]}
    link.aggregate_train(1, [_update(10, 1.0, sent[10]), _update(11, 2.0, sent[11]), _absent(12)])
    instructions = _configure(link, 2)
    # Agent 0 (node 10) took part: its ring neighbours are agents 1 and 3; only 1 sent.
    gossip = instructions[10][wire.GOSSIP]
    assert list(gossip[wire.NEIGHBOR_PAYLOADS]) == [sent[11]]
    assert list(gossip[wire.NEIGHBOR_WEIGHTS]) == pytest.approx([THIRD])
    assert wire.PUBLIC_COPY not in instructions[10] and wire.NEIGHBOR_MIX not in instructions[10]
    # Agent 2 (node 12) sat round 1 out and never started: its x̂ (= x0) and y to start from.
    assert wire.PUBLIC_COPY in instructions[12]
    mix = _arrays(instructions[12][wire.NEIGHBOR_MIX])
    for key in X0:  # y_2 = (x̂_1 + x̂_2 + x̂_3) / 3 = x0 + 2/3
        np.testing.assert_allclose(mix[key], X0[key] + 2 / 3, rtol=1e-6)
    # Agent 3 (node 13) did not answer at all and never started either.
    assert wire.PUBLIC_COPY in instructions[13]


def test_an_agent_back_from_an_absence_gets_its_mix_rebuilt() -> None:
    link = _linked()
    _configure(link, 1)
    link.aggregate_train(1, [_update(n, 0.5) for n in (10, 11, 12, 13)])
    _configure(link, 2)
    link.aggregate_train(2, [_update(10, 1.0), _absent(11), _update(12, 1.0), _update(13, 1.0)])
    instructions = _configure(link, 3)
    content = instructions[11]
    assert wire.PUBLIC_COPY not in content and wire.NEIGHBOR_PAYLOADS not in content[wire.GOSSIP]
    mix = _arrays(content[wire.NEIGHBOR_MIX])
    for key in X0:  # y_1 = (x̂_0 + x̂_1 + x̂_2) / 3 with shifts 1.5, 0.5, 1.5
        np.testing.assert_allclose(mix[key], X0[key] + 3.5 / 3, rtol=1e-6)


@pytest.mark.parametrize("how", ["refused", "failed", "silent"])
def test_an_agent_whose_message_was_lost_is_repaired_with_the_servers_copy(how: str) -> None:
    link = _linked()
    _configure(link, 1)
    link.aggregate_train(1, [_update(n, 0.5) for n in (10, 11, 12, 13)])
    _configure(link, 2)
    lost = {
        "refused": [_update(11, 1.0, b"not a payload")],
        "failed": [reply(message(RecordDict(), dst=11), error=Error(code=2, reason="crashed"))],
        "silent": [],
    }[how]
    link.aggregate_train(2, [_update(10, 1.0), _update(12, 1.0), _update(13, 1.0), *lost])
    content = _configure(link, 3)[11]
    public = _arrays(content[wire.PUBLIC_COPY])
    for key in X0:  # the server never applied the lost message: x̂_1 = x0 + 0.5
        np.testing.assert_array_equal(public[key], X0[key] + 0.5)
    assert wire.NEIGHBOR_MIX in content
    # A repaired agent that answers is back to relaying the round after.
    link.aggregate_train(3, [_update(n, 0.0) for n in (10, 11, 12, 13)])
    assert wire.PUBLIC_COPY not in _configure(link, 4)[11]


def test_state_round_trips_to_the_same_instructions() -> None:
    link = _linked()
    _configure(link, 1)
    link.aggregate_train(1, [_update(10, 1.0), _update(11, 2.0), _absent(12)])
    restored = _linked()
    restored.load_state(link.state())
    ours, theirs = _configure(link, 2), _configure(restored, 2)
    for node in NODES:
        assert ours[node].keys() == theirs[node].keys()
        assert dict(ours[node][wire.GOSSIP]) == dict(theirs[node][wire.GOSSIP])
    with pytest.raises(ValueError, match="checkpoint of topology='ring', not 'complete'"):
        LoDAdaC(topology=Topology("complete")).load_state(link.strategy.state())


def test_on_its_own_it_refuses_to_read_encoded_messages() -> None:
    with pytest.raises(TypeError, match=r"wrap it as Link\(LoDAdaC"):
        LoDAdaC(topology=Topology("ring")).aggregate_train(1, [])


def test_a_restarted_supernode_gets_its_seat_back_under_its_new_node_id() -> None:
    link = _linked()
    _configure(link, 1)
    link.aggregate_train(1, [_update(n, 0.5) for n in (10, 11, 12, 13)])
    # Node 13 restarts as node 99: same client id "c13", no state.
    grid = NodesGrid([10, 11, 12, 99])
    config = ConfigRecord({wire.LR: 0.01})
    arrays = ArrayRecord({k: Array(v) for k, v in X0.items()})
    messages = {
        m.metadata.dst_node_id: m.content for m in link.configure_train(2, arrays, config, grid)
    }
    assert sorted(messages) == [10, 11, 12, 99]
    public = _arrays(messages[99][wire.PUBLIC_COPY])
    for key in X0:  # the seat's own public copy, and the neighbours' mix, to start from
        np.testing.assert_array_equal(public[key], X0[key] + 0.5)
    assert wire.NEIGHBOR_MIX in messages[99]
    reply_99 = _update(99, 1.0)
    reply_99.content[wire.CLIENT][wire.CLIENT_ID] = "c13"
    link.aggregate_train(2, [_update(10, 1.0), _update(11, 1.0), _update(12, 1.0), reply_99])
    lodadac = link.strategy
    assert lodadac.node_of[3] == 99 and lodadac.agent_of["c13"] == 3
    for key in X0:
        np.testing.assert_array_equal(lodadac.public[3][key], X0[key] + 1.5)


def test_a_newcomer_that_is_not_the_seats_client_is_not_let_in() -> None:
    link = _linked()
    _configure(link, 1)
    link.aggregate_train(1, [_update(n, 0.5) for n in (10, 11, 12, 13)])
    grid = NodesGrid([10, 11, 12, 77])
    arrays = ArrayRecord({k: Array(v) for k, v in X0.items()})
    list(link.configure_train(2, arrays, ConfigRecord(), grid))
    link.aggregate_train(2, [_update(77, 9.0)])  # client "c77" on agent 3's seat
    lodadac = link.strategy
    for key in X0:
        np.testing.assert_array_equal(lodadac.public[3][key], X0[key] + 0.5)
    assert "c77" not in lodadac.agent_of
    nodes = [m.metadata.dst_node_id for m in link.configure_train(3, arrays, ConfigRecord(), grid)]
    assert sorted(nodes) == [10, 11, 12]  # node 77 is not offered a seat again


def test_a_resumed_run_seats_each_client_at_its_own_agent_and_repairs_it() -> None:
    link = _linked()
    _configure(link, 1)
    link.aggregate_train(1, [_update(n, 0.1 * n) for n in (10, 11, 12, 13)])
    # The server restarts from its checkpoint; every SuperNode restarted too: new node ids
    # (offered seats in sorted order, not by client) and no client state at all.
    resumed = _linked()
    resumed.load_state(link.state())
    resumed.forget_client_state()
    clients = {20: "c12", 21: "c10", 22: "c13", 23: "c11"}
    grid = NodesGrid(sorted(clients))
    arrays = ArrayRecord({k: Array(v) for k, v in X0.items()})

    def answer(server_round: int, shift: float) -> dict[int, RecordDict]:
        sent = {
            m.metadata.dst_node_id: m.content
            for m in resumed.configure_train(server_round, arrays, ConfigRecord(), grid)
        }
        replies = []
        for node in sent:
            r = _update(node, shift)
            r.content[wire.CLIENT][wire.CLIENT_ID] = clients[node]
            replies.append(r)
        resumed.aggregate_train(server_round, replies)
        return sent

    # Round 2: every client answers from another agent's seat: each moves to its own, and
    # nothing is applied to the public copies (the messages were made for other seats).
    answer(2, 5.0)
    lodadac = resumed.strategy
    for node, client in clients.items():
        assert lodadac.node_of[lodadac.agent_of[client]] == node
    for agent, node in enumerate((10, 11, 12, 13)):
        for key in X0:
            np.testing.assert_array_equal(lodadac.public[agent][key], X0[key] + 0.1 * node)
    # Round 3: each is repaired from its own agent's public copy and its update counts.
    sent = answer(3, 1.0)
    for node, client in clients.items():
        agent = lodadac.agent_of[client]
        own = 10 + agent  # the node agent `agent` had before the restart
        public = _arrays(sent[node][wire.PUBLIC_COPY])
        for key in X0:
            np.testing.assert_array_equal(public[key], X0[key] + 0.1 * own)
            np.testing.assert_allclose(lodadac.public[agent][key], X0[key] + 0.1 * own + 1.0)
    assert all(wire.PUBLIC_COPY not in content for content in answer(4, 0.0).values())


def test_relays_and_mixes_use_w_ji_even_when_w_is_not_symmetric() -> None:
    link = _linked()
    _configure(link, 1)
    lodadac = link.strategy
    # Column-stochastic and asymmetric: the weight agent i gives agent j is W[j, i].
    w = np.array(
        [[0.5, 0.2, 0.0, 0.3], [0.1, 0.6, 0.3, 0.0], [0.0, 0.2, 0.4, 0.3], [0.4, 0.0, 0.3, 0.4]]
    )
    lodadac.w = w
    sent = {n: CODEC.encode(list(_delta(s).values())) for n, s in [(10, 1.0), (11, 2.0), (13, 4.0)]}
    link.aggregate_train(
        1, [_update(n, s, sent[n]) for n, s in [(10, 1.0), (11, 2.0), (13, 4.0)]] + [_absent(12)]
    )
    instructions = _configure(link, 2)
    gossip = instructions[10][wire.GOSSIP]  # agent 0: neighbours 1 (W[1,0]) and 3 (W[3,0])
    assert list(gossip[wire.NEIGHBOR_WEIGHTS]) == pytest.approx([0.1, 0.4])
    assert list(gossip[wire.NEIGHBOR_PAYLOADS]) == [sent[11], sent[13]]
    assert gossip[wire.SELF_WEIGHT] == pytest.approx(0.5)
    mix = _arrays(instructions[12][wire.NEIGHBOR_MIX])  # agent 2: Σ_j W[j,2] x̂_j
    for key in X0:
        expected = 0.3 * (X0[key] + 2.0) + 0.4 * X0[key] + 0.3 * (X0[key] + 4.0)
        np.testing.assert_allclose(mix[key], expected, rtol=1e-6)


def test_sampling_keeps_at_least_min_train_nodes() -> None:
    link = Link(
        LoDAdaC(
            topology=Topology("ring"), min_available_nodes=4, fraction_train=0.25, min_train_nodes=3
        ),
        uplink=CODEC,
    )
    assert len(_configure(link, 1)) == 3
