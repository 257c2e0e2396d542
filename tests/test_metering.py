"""Byte counting of the messages the ServerApp exchanges."""

from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from fedq import wire
from server.metering import MeteredGrid, content_bytes
from tests.flower_messages import message, reply


def _model(n: int) -> RecordDict:
    return RecordDict(
        {
            wire.ARRAYS: ArrayRecord([np.ones(n, np.float32), np.zeros((4, 4), np.float32)]),
            wire.CONFIG: ConfigRecord({wire.LR: 0.1}),
        }
    )


def test_content_bytes_grow_with_the_payload_by_exactly_its_size():
    small, large = content_bytes(_model(1_000)), content_bytes(_model(11_000))
    # 10,000 more float32 values: 40,000 more bytes, plus at most a few header digits.
    assert 40_000 <= large - small <= 40_010


def test_content_bytes_match_flowers_protobuf_size_closely():
    content = _model(25_000)
    proto_size = recorddict_to_proto(content).ByteSize()
    # Same payload, different framing (object headers vs protobuf tags).
    assert abs(content_bytes(content) - proto_size) < 0.01 * proto_size


class LoopbackGrid(Grid):
    """Flower's Grid interface answered in-process: each node replies with fixed metrics.

    A reply becomes available after `delay_pulls` pulls; nodes in `silent` never reply.
    """

    def __init__(
        self,
        failing: set[int],
        delay_pulls: int = 0,
        silent: frozenset = frozenset(),
        gone: frozenset = frozenset(),
    ):
        self.failing, self.delay_pulls, self.silent, self.gone = failing, delay_pulls, silent, gone
        self.pending: dict[str, tuple[int, Message]] = {}
        self.pulls = 0

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return [2, 3, 4]

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            m = message(m.content, dst=m.metadata.dst_node_id, message_id=f"m{i}")
            node = m.metadata.dst_node_id
            if node in self.gone:  # the SuperLink answers in its place, from node 1
                answer = message(
                    error=Error(code=5, reason="Error: Node Unavailable"),
                    src=1,
                    dst=1,
                    reply_to=m.metadata.message_id,
                )
            elif node in self.failing:
                answer = reply(m, error=Error(code=0, reason=f"node {node} broke"))
            else:
                metrics = MetricRecord({wire.NUM_EXAMPLES: node * 10, wire.TRAIN_LOSS: 0.5})
                answer = reply(m, RecordDict({wire.METRICS: metrics}))
            if node not in self.silent:
                self.pending[m.metadata.message_id] = (self.delay_pulls, answer)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [i for i in message_ids if i in self.pending and self.pending[i][0] < self.pulls]
        return [self.pending.pop(i)[1] for i in ready]

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        raise AssertionError("MeteredGrid pulls on its own interval")


def test_metered_grid_counts_each_direction_per_node_and_keeps_errors():
    grid = MeteredGrid(LoopbackGrid(failing={4}))
    sent = [message(_model(100 * node), dst=node) for node in (2, 3, 4)]
    replies = list(grid.send_and_receive(sent, timeout=1.0))
    assert len(replies) == 3
    traffic = grid.ledger.take()
    for m in sent:
        assert traffic[m.metadata.dst_node_id].bytes_down == content_bytes(m.content)
    (from_2,) = [r for r in replies if r.metadata.src_node_id == 2]
    reply_size = content_bytes(from_2.content)
    assert traffic[2].bytes_up == reply_size and traffic[3].bytes_up > 0
    assert traffic[2].train_metrics[wire.NUM_EXAMPLES] == 20
    assert traffic[4].bytes_up == 0 and traffic[4].errors == ["node 4 broke"]
    assert grid.ledger.take() == {}, "take() starts a new round"


def test_replies_are_pulled_on_a_short_interval_until_all_arrived():
    inner = LoopbackGrid(failing=set(), delay_pulls=3)
    grid = MeteredGrid(inner, poll_interval=0.01)
    sent = [message(_model(10), dst=node) for node in (2, 3, 4)]
    replies = list(grid.send_and_receive(sent, timeout=30.0))
    assert len(replies) == 3 and inner.pulls == 4  # no pull after the last reply


def test_a_silent_node_costs_the_timeout_and_the_others_are_kept():
    grid = MeteredGrid(LoopbackGrid(failing=set(), silent=frozenset({3})), poll_interval=0.01)
    sent = [message(_model(10), dst=node) for node in (2, 3, 4)]
    replies = list(grid.send_and_receive(sent, timeout=0.2))
    assert sorted(r.metadata.src_node_id for r in replies) == [2, 4]


def test_the_poll_interval_must_be_positive():
    with pytest.raises(ValueError, match="poll_interval=0 must be > 0 seconds"):
        MeteredGrid(LoopbackGrid(failing=set()), poll_interval=0)


def test_the_superlinks_error_about_a_gone_node_is_that_nodes_failure():
    grid = MeteredGrid(LoopbackGrid(failing=set(), gone=frozenset({3})), poll_interval=0.01)
    sent = [message(_model(10), dst=node) for node in (2, 3, 4)]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(sent, timeout=5.0)}
    assert sorted(replies) == [2, 3, 4]
    assert replies[3].has_error() and replies[3].error.reason == "Error: Node Unavailable"
    traffic = grid.ledger.take()
    assert traffic[3].errors == ["Error: Node Unavailable"] and 1 not in traffic
