"""FedAU's state at scale: the compact estimator gives the same weights to the last bit as
the dict-per-client one it replaced, reads its checkpoints, and stays within 64 bytes a
client with 1,000 clients driven through the Link."""

import io
import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedq import wire
from strategies.fedau import FedAU
from strategies.link import Link
from strategies.participation import ParticipationEstimator
from tests.flower_messages import NodesGrid, message, reply

STATE_GOAL_BYTES = 64  # FedAU's own state per client (issue 14, §4)


class _DictEstimator:
    """The estimator as fedq had it before (one Python float per client), for reference."""

    def __init__(self, cutoff=None):
        self.cutoff = cutoff
        self.clients = {}  # client -> [gap, interval mean, interval count]

    def _record(self, h, interval):
        h[2] += 1
        h[1] += (interval - h[1]) / h[2]

    def step(self, participants, known):
        weights = {}
        for client in sorted(known):
            h = self.clients.setdefault(client, [0, 0.0, 0])
            if client in participants:
                weights[client] = h[1] if h[2] else 1.0
                self._record(h, h[0] + 1)
                h[0] = 0
            else:
                h[0] += 1
                if self.cutoff is not None and h[0] >= self.cutoff:
                    self._record(h, self.cutoff)
                    h[0] = 0
        return weights


def _random_rounds(clients, rounds, seed):
    """(participants, known) per round: clients join over time, each with its own rate."""
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.02, 1.0, clients)
    joins = rng.integers(0, rounds // 2, clients)
    known = set()
    for t in range(rounds):
        known |= {f"c{i}" for i in range(clients) if joins[i] == t}
        participants = {c for c in known if rng.random() < rates[int(c[1:])]}
        yield participants, set(known)


@pytest.mark.parametrize("cutoff", [None, 1, 7])
def test_weights_are_bit_for_bit_those_of_the_dict_estimator(cutoff):
    compact, reference = ParticipationEstimator(cutoff), _DictEstimator(cutoff)
    for participants, known in _random_rounds(clients=60, rounds=400, seed=cutoff or 0):
        got, want = compact.step(participants, known), reference.step(participants, known)
        assert list(got) == list(want)  # same clients, same (sorted) order
        assert all(got[c] == want[c] for c in want)  # exact equality, not approx
    assert {c: (h.gap, h.interval_mean, h.interval_count) for c, h in compact.clients.items()} == {
        c: tuple(h) for c, h in reference.clients.items()
    }


def test_a_format_1_checkpoint_is_read_and_carries_on_identically():
    reference, compact = _DictEstimator(cutoff=5), ParticipationEstimator(cutoff=5)
    rounds = list(_random_rounds(clients=20, rounds=60, seed=3))
    for participants, known in rounds[:30]:
        reference.step(participants, known)
    fedau = FedAU(mode="fedau", cutoff=5)
    old_state = {
        "mode": "fedau",
        "estimator": {c: tuple(h) for c, h in sorted(reference.clients.items())},
        "known": sorted(reference.clients),
    }
    fedau.load_state(old_state)
    compact = fedau.estimator
    for participants, known in rounds[30:]:
        assert compact.step(participants, known) == reference.step(participants, known)


def test_a_state_of_an_unknown_format_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="state of format 3 cannot be read"):
        ParticipationEstimator().load_state({"format": 3, "ids": "[]"})
    bad = {**ParticipationEstimator().state(), "ids": json.dumps(["a"])}
    with pytest.raises(ValueError, match="1 client ids but arrays of shapes"):
        ParticipationEstimator().load_state(bad)


def _checkpoint_bytes(state):
    """Bytes of `state` serialized as checkpoint.pt serializes the strategy's (torch.save)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def _reply(node, took_part, weights):
    record = ConfigRecord({wire.CLIENT_ID: f"client-{node}", wire.PARTICIPATED: took_part})
    content = RecordDict({wire.CLIENT: record})
    if took_part:
        content[wire.ARRAYS] = weights
        content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 2, wire.TRAIN_LOSS: 1.0})
    return reply(message(RecordDict(), dst=node), content)


def test_fedau_state_of_1000_clients_through_the_link_is_at_most_64_bytes_a_client():
    clients, nodes = 1000, list(range(10_000, 11_000))
    fedau = FedAU(mode="fedau", min_available_nodes=1, min_train_nodes=1)
    link = Link(fedau)
    arrays = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    rng = np.random.default_rng(0)
    for server_round in range(1, 4):
        list(link.configure_train(server_round, arrays, ConfigRecord(), NodesGrid(nodes)))
        takes_part = rng.random(clients) < 0.1
        replies = [_reply(n, bool(t), arrays) for n, t in zip(nodes, takes_part, strict=True)]
        new, _ = link.aggregate_train(server_round, replies)
        arrays = new if new is not None else arrays
    assert len(fedau.estimator) == clients
    state = fedau.state()
    total = _checkpoint_bytes(state)
    without_ids = _checkpoint_bytes({**state, "estimator": {**state["estimator"], "ids": ""}})
    assert total / clients <= STATE_GOAL_BYTES
    assert without_ids / clients <= 20  # 16 bytes of numbers a client, and the container
    # The Link's node -> client map is its own, beside FedAU's: reported, not bounded here.
    assert _checkpoint_bytes(link.state()) > total
