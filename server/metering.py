"""Exact byte counts of every message the ServerApp exchanges, per client and direction.

Flower 1.39 moves a message's content between SuperLink and SuperNode as "inflatable
objects": each record, array and array chunk is serialized (`deflate()`) and pushed or pulled
once per distinct object. The bytes a message costs are therefore the summed lengths of the
deflated objects of its content; that is what is counted here, never an estimate.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, Metadata, MetricRecord, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=no-name-in-module
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.run import Run

from fedq import trace, wire

# Seconds between two pulls of replies (Flower's own grid: 3 s).
DEFAULT_POLL_INTERVAL = 0.1


def content_bytes(content: RecordDict) -> int:
    """Serialized size of a message content as Flower transfers it (bytes)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


def payload_bytes(content: RecordDict) -> int:
    """The model part of a message content (bytes): what a codec could make smaller.

    A compressed update or model counts its encoded bytes (`update`/`model` records), and
    the messages LoDAdaC relays theirs (`gossip` record); plain Flower arrays count their
    raw data. Everything else in `content_bytes` (metrics, config, record and object
    framing) is message overhead.
    """
    total = 0
    for key in (wire.UPDATE, wire.MODEL):
        record = content.config_records.get(key)
        if record is not None and isinstance(record.get(wire.PAYLOAD), bytes):
            total += len(record[wire.PAYLOAD])
    gossip = content.config_records.get(wire.GOSSIP)
    if gossip is not None:
        total += sum(len(payload) for payload in gossip.get(wire.NEIGHBOR_PAYLOADS, []))
    for record in content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    return total


@dataclass
class NodeTraffic:
    """What one node sent and received since the ledger was last taken."""

    bytes_down: int = 0  # server -> client
    bytes_up: int = 0  # client -> server
    payload_down: int = 0  # the model part of bytes_down (see `payload_bytes`)
    payload_up: int = 0  # the update part of bytes_up
    train_metrics: MetricRecord | None = None  # the node's last train reply metrics
    errors: list[str] = field(default_factory=list)  # reasons of failed replies


class TrafficLedger:
    """Per-node traffic accumulated between two calls of `take()`."""

    def __init__(self) -> None:
        self._nodes: dict[int, NodeTraffic] = {}

    def node(self, node_id: int) -> NodeTraffic:
        """The (created on demand) traffic entry of `node_id`."""
        return self._nodes.setdefault(node_id, NodeTraffic())

    def record_sent(self, message: Message) -> None:
        """Count a message the server sends to its destination node."""
        entry = self.node(message.metadata.dst_node_id)
        entry.bytes_down += content_bytes(message.content)
        entry.payload_down += payload_bytes(message.content)

    def record_received(self, reply: Message) -> None:
        """Count a reply from its source node; keep its train metrics or error reason."""
        entry = self.node(reply.metadata.src_node_id)
        if reply.has_error():
            entry.errors.append(reply.error.reason)
            return
        entry.bytes_up += content_bytes(reply.content)
        entry.payload_up += payload_bytes(reply.content)
        if wire.category(reply.metadata.message_type) == "train" and wire.METRICS in reply.content:
            entry.train_metrics = reply.content.metric_records[wire.METRICS]

    def take(self) -> dict[int, NodeTraffic]:
        """Return the traffic since the last call and start afresh."""
        taken, self._nodes = self._nodes, {}
        return taken


class MeteredGrid(Grid):
    """A Grid that forwards everything to `inner` and records each message's bytes.

    `send_and_receive` pulls replies every `poll_interval` seconds; Flower's own grid
    waits 3 s between pulls, so each round would last a whole multiple of 3 s.
    """

    def __init__(
        self,
        inner: Grid,
        ledger: TrafficLedger | None = None,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval={poll_interval!r} must be > 0 seconds")
        self._inner = inner
        self.ledger = ledger or TrafficLedger()
        self.poll_interval = poll_interval
        self._destination: dict[str, int] = {}  # message id -> the node it was sent to

    def set_run(self, run: Run) -> None:
        """Forward to the wrapped grid."""
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Forward to the wrapped grid."""
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Node IDs of the connected SuperNodes."""
        return self._inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Forward to the wrapped grid."""
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push and count messages."""
        messages = list(messages)
        for message in messages:
            self.ledger.record_sent(message)
        ids = list(self._inner.push_messages(messages))
        self._destination.update(
            (i, m.metadata.dst_node_id) for i, m in zip(ids, messages, strict=False)
        )
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull and count replies; an error the SuperLink sends about a node is that node's.

        When a node is gone (no heartbeat) or its reply expired, the SuperLink answers in
        its place, from its own node id; the reply is re-addressed from the node it is
        about, so the failure is recorded, reported and repaired for the right client.
        """
        replies = [self._attributed(r) for r in self._inner.pull_messages(message_ids)]
        for reply in replies:
            self.ledger.record_received(reply)
        return replies

    def _attributed(self, reply: Message) -> Message:
        node = self._destination.pop(reply.metadata.reply_to_message_id, None)
        if not reply.has_error() or node is None or reply.metadata.src_node_id == node:
            return reply
        meta = reply.metadata
        metadata = Metadata(
            run_id=meta.run_id,
            message_id=meta.message_id,
            src_node_id=node,
            dst_node_id=meta.dst_node_id,
            reply_to_message_id=meta.reply_to_message_id,
            group_id=meta.group_id,
            created_at=meta.created_at,
            ttl=meta.ttl,
            message_type=meta.message_type,
        )
        return Message(reply.error, metadata=metadata)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then pull every `poll_interval` s until all replied or `timeout` s passed.

        The same contract as Flower's `Grid.send_and_receive` (replies that arrived, in the
        order they arrived), on its public push and pull calls; both directions counted.
        """
        messages = list(messages)
        group = messages[0].metadata.group_id if messages else ""
        trace.mark("server-push", group=group, messages=len(messages))
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            for reply in self.pull_messages(waiting):
                replies.append(reply)
                waiting.discard(reply.metadata.reply_to_message_id)
                trace.mark("server-reply", group=group, node=reply.metadata.src_node_id)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval)
        return replies
