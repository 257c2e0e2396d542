"""The server's end of the link to its clients: codecs both ways, every reply checked.

`Link(strategy, uplink=..., downlink=...)` wraps any Flower strategy, the way Flower's
differential-privacy wrappers do, so compression and checking are a layer every strategy
gets without inheriting it:

* downlink: a model in an outgoing message (its ``arrays`` record) goes out encoded by the
  ``downlink`` codec as a ``model`` record (encoded once per distinct model); with
  ``downlink_changes`` the codec encodes the change of the global model against the
  reference model each client holds, or the client gets the whole model once
  (strategies/downlink.py);
* uplink: every train reply is read by a `ReplyReader` — decoded with the ``uplink`` codec,
  checked, sorted into updates, absences, rejections (with reasons) and failures;
* aggregation: a fedq strategy (`UpdateAggregator`) receives the sorted replies; any other
  Flower strategy (stock FedAvg, the baseline) receives the accepted replies as Flower
  replies whose ``arrays`` are the client's model x_t + Δ, so its own aggregation runs
  unchanged on checked input.

Clients that sat the round out and refused replies never reach the wrapped strategy. The
outcome of each round (`round_outcome`) is what the ServerApp records and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedq import wire
from quant.codec import Codec
from strategies.downlink import ChangeDownlink
from strategies.replies import (
    MAX_EXAMPLES,
    ClientUpdate,
    ReplyReader,
    RoundReplies,
    arrays_of,
    read_evaluations,
)
from strategies.seam import (
    Aggregate,
    FederatedEvaluation,
    KeepsClientState,
    RoundOutcome,
    Stateful,
    UpdateAggregator,
)
from strategies.update_norms import CLIPPED_FIGURE, NormBounds
from strategies.weighted_sum import weighted_sum

log = logging.getLogger(__name__)
# Seconds between two looks at the connected nodes while the first round waits for them.
NODE_WAIT_SECONDS = 1.0


class Link(Strategy):
    """Wrap ``strategy`` with an uplink codec (None: whole fp32 models) and a downlink one."""

    def __init__(
        self,
        strategy: Strategy,
        *,
        uplink: Codec | None = None,
        downlink: Codec | None = None,
        downlink_changes: bool = False,
        max_examples: int = MAX_EXAMPLES,
        min_clients: int = 1,
        min_replies: int = 1,
        norm_bounds: NormBounds | None = None,
    ) -> None:
        self.strategy = strategy
        self.min_clients = min_clients  # connected nodes the first round waits for
        self.min_replies = min_replies  # accepted updates a round needs to aggregate
        self.uplink = uplink
        self.downlink = downlink
        if downlink_changes and downlink is None:
            raise ValueError("downlink_changes needs a downlink codec to encode the changes")
        # The server's end of a downlink that sends changes (None: whole models).
        self.changes = ChangeDownlink(downlink) if downlink_changes else None
        self.reader = ReplyReader(uplink, max_examples)
        self.norm_bounds = norm_bounds or NormBounds()  # refuse / clip by ‖Δ‖ (off: 0)
        # node -> the model it trains from this round (its reply is read against it), and
        # the server's model it was sent: the same, except with a downlink of changes,
        # where the client trains from the reference x̂ and Δ is applied to the global x_t.
        self._reference: dict[int, dict[str, np.ndarray]] = {}
        self._server_model: dict[int, dict[str, np.ndarray]] = {}
        self._outcome: RoundOutcome | None = None
        self._evaluation: FederatedEvaluation | None = None
        self._waited = False

    @property
    def round_outcome(self) -> RoundOutcome | None:
        """The outcome of the latest aggregated round, None before the first."""
        return self._outcome

    @property
    def federated_evaluation(self) -> FederatedEvaluation | None:
        """The clients' evaluation of the latest round's model, None before the first."""
        return self._evaluation

    # --- server -> clients -------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's messages, with each model encoded by the downlink codec.

        Remembers the model each node was sent (the global model when a message carries
        none), which the node's reply is read against; with a downlink of changes that is
        the reference x̂ the node holds after the message, and the update is applied to
        the global model x_t.
        """
        if not self._waited:
            _wait_for_nodes(grid, self.min_clients)
            self._waited = True
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        global_model = arrays_of(arrays)
        self._reference = {}
        for message in messages:
            sent = wire.record(message.content, wire.ARRAYS, ArrayRecord)
            self._reference[message.metadata.dst_node_id] = (
                global_model if sent is None or sent is arrays else arrays_of(sent)
            )
        self._server_model = dict(self._reference)
        if self.changes is not None:
            return self._send_changes(server_round, arrays, messages)
        return self._encode_models(messages)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages, models encoded like training ones."""
        messages = self.strategy.configure_evaluate(server_round, arrays, config, grid)
        if self.changes is not None:
            return self._send_evaluation_changes(server_round, arrays, list(messages))
        return self._encode_models(list(messages))

    def _send_changes(
        self, server_round: int, arrays: ArrayRecord, messages: list[Message]
    ) -> list[Message]:
        """Train messages with the change of the global model, or the whole model once.

        The new reference x̂ is what every node sent a model trains from this round.
        """
        self.changes.broadcast(server_round, arrays_of(arrays))
        for node in self._reference:
            self._reference[node] = self.changes.reference

        def record_of(node: int, model: ArrayRecord) -> ConfigRecord:
            _check_global(model, arrays)
            return self.changes.record_for(self._held_version(node))

        return _with_model_records(messages, record_of)

    def _send_evaluation_changes(
        self, server_round: int, arrays: ArrayRecord, messages: list[Message]
    ) -> list[Message]:
        """Evaluation messages with a one-off model: the change for clients holding the
        current reference, the whole fp32 model for the others (each made once)."""
        global_model = arrays_of(arrays)
        records: dict[bool, ConfigRecord] = {}

        def record_of(node: int, model: ArrayRecord) -> ConfigRecord:
            _check_global(model, arrays)
            current = self.changes.version is not None and (
                self._held_version(node) == self.changes.version
            )
            if current not in records:
                records[current] = self.changes.one_off(server_round, global_model, current)
            return records[current]

        return _with_model_records(messages, record_of)

    def _held_version(self, node: int) -> int | None:
        """The reference version the client at ``node`` last said it holds (None: none)."""
        return self.reader.model_version.get(self.reader.client_of_node.get(node, ""))

    def _encode_models(self, messages: list[Message]) -> list[Message]:
        if self.downlink is None:
            return messages
        encoded: dict[int, ConfigRecord] = {}  # id(ArrayRecord) -> its model record

        def record_of(_: int, model: ArrayRecord) -> ConfigRecord:
            if id(model) not in encoded:
                encoded[id(model)] = ConfigRecord(
                    {
                        wire.PAYLOAD: self.downlink.encode(list(arrays_of(model).values())),
                        wire.KEYS: list(model.keys()),
                    }
                )
            return encoded[id(model)]

        return _with_model_records(messages, record_of)

    # --- clients -> server -------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Read and check every reply, then let the wrapped strategy aggregate."""
        replies = list(replies)
        sorted_replies = self.reader.read(replies, self._reference)
        clipped = self.norm_bounds.apply(sorted_replies)
        for node, reason in sorted_replies.failed:
            log.warning("node %d: no update this round: %s", node, reason)
        for rejection in sorted_replies.rejected:
            log.warning(
                "node %d (client %s): update rejected: %s",
                rejection.node,
                rejection.client,
                rejection.reason,
            )
        # The strategy always sees the round (stateful ones must: FedAU counts absences,
        # LoDAdaC's copies follow what the clients applied); min-replies only decides
        # whether the model it returns is taken.
        if isinstance(self.strategy, UpdateAggregator):
            aggregate = self.strategy.aggregate_updates(server_round, sorted_replies)
        else:
            aggregate = self._flower_aggregate(server_round, replies, sorted_replies)
        for client, norm in clipped.items():
            aggregate.client_figures.setdefault(client, {})[CLIPPED_FIGURE] = norm
        failure = ""
        if len(sorted_replies.updates) < self.min_replies:
            failure = (
                f"{len(sorted_replies.updates)} accepted updates, fewer than "
                f"min-replies={self.min_replies}: the model is left as it was"
            )
            log.warning("round %d failed: %s", server_round, failure)
            aggregate.arrays = None
        nodes = {client: node for node, client in self.reader.client_of_node.items()}
        self._outcome = RoundOutcome.of(sorted_replies, aggregate, nodes, failure)
        return aggregate.arrays, aggregate.metrics

    def _flower_aggregate(
        self, server_round: int, replies: list[Message], sorted_replies: RoundReplies
    ) -> Aggregate:
        """Hand a plain Flower strategy the accepted replies (and the failures it logs)."""
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        if self._averages_updates(sorted_replies):
            return self._fedavg_of_updates(by_node, sorted_replies)
        accepted = [reply for reply in replies if reply.has_error()]
        for update in sorted_replies.updates:
            accepted.append(self._as_model_reply(by_node[update.node], update))
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        return Aggregate(arrays, metrics)

    def _averages_updates(self, sorted_replies: RoundReplies) -> bool:
        """Whether this round's FedAvg is computed on the updates Δ rather than on models.

        With an uplink codec or a downlink of changes the models FedAvg would average are
        x_t + Δ_n, rebuilt here; when every update is relative to the same x_t and the
        wrapped strategy aggregates with Flower's FedAvg rule itself, the average is
        x_t + Σ_n (n_n / Σ n) Δ_n: the same weights, without rebuilding, serialising and
        reading back a model per reply. Whole-model replies always go to Flower's own code.
        """
        updates = sorted_replies.updates
        return (
            bool(updates)
            and (self.uplink is not None or self.changes is not None)
            and isinstance(self.strategy, FedAvg)
            and type(self.strategy).aggregate_train is FedAvg.aggregate_train
            and self.strategy.weighted_by_key == wire.NUM_EXAMPLES
            and len({id(self._server_model[u.node]) for u in updates}) == 1
        )

    def _fedavg_of_updates(
        self, by_node: Mapping[int, Message], sorted_replies: RoundReplies
    ) -> Aggregate:
        """Flower's FedAvg of the models x_t + Δ_n, computed as x_t + weighted mean of Δ_n
        (float32, like Flower's), and its metrics by the strategy's own aggregation."""
        updates = sorted_replies.updates
        base = self._server_model[updates[0].node]
        examples = sum(update.num_examples for update in updates)
        mean = weighted_sum(
            [update.delta for update in updates],
            [update.num_examples / examples for update in updates],
            {key: x.shape for key, x in base.items()},
        )
        arrays = ArrayRecord(
            {k: Array((x + mean[k]).astype(x.dtype, copy=False)) for k, x in base.items()}
        )
        metrics = self.strategy.train_metrics_aggr_fn(
            [RecordDict({wire.METRICS: _metrics(by_node[u.node])}) for u in updates],
            self.strategy.weighted_by_key,
        )
        return Aggregate(arrays, metrics)

    def _as_model_reply(self, reply: Message, update: ClientUpdate) -> Message:
        """The reply as exactly the two records Flower's strategies read: the client's
        model x_t + Δ (float32, or as sent when the client sent its whole model) and its
        checked metrics. Anything else a reply carries cannot upset their checks."""
        if update.payload is None and self.changes is None and not update.clipped:
            model = wire.record(reply.content, wire.ARRAYS, ArrayRecord)
        else:
            base = self._server_model[update.node]
            model = ArrayRecord(
                {k: Array((base[k] + update.delta[k]).astype(base[k].dtype)) for k in base}
            )
        reply.content = RecordDict({wire.ARRAYS: model, wire.METRICS: _metrics(reply)})
        return reply

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Keep the clients' checked evaluations, then the wrapped strategy's aggregate."""
        replies = list(replies)
        evaluations, problems = read_evaluations(replies)
        for problem in problems:
            log.warning("evaluation left out: %s", problem)
        self._evaluation = FederatedEvaluation.of(server_round, evaluations, problems)
        usable = {e.node for e in evaluations}
        kept = [r for r in replies if r.has_error() or r.metadata.src_node_id in usable]
        return self.strategy.aggregate_evaluate(server_round, kept)

    # --- the rest ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Checkpointable state: the wrapped strategy's and which node is which client."""
        inner = self.strategy.state() if isinstance(self.strategy, Stateful) else {}
        return {"strategy": inner, "client_of_node": dict(self.reader.client_of_node)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `state()` returned."""
        self.reader.client_of_node = {int(n): str(c) for n, c in state["client_of_node"].items()}
        if isinstance(self.strategy, Stateful):
            self.strategy.load_state(state["strategy"])

    def forget_client_state(self) -> None:
        """Clients start afresh (a resumed run): the wrapped strategy rebuilds what it needs.

        The link's own client-side state, the uplink's error-feedback residuals, restarts
        at zero on each client: that only delays what those residuals would have added. A
        downlink of changes sends every client the whole model first.
        """
        self.reader.model_version.clear()
        if self.changes is not None:
            self.changes.forget()
        if isinstance(self.strategy, KeepsClientState):
            self.strategy.forget_client_state()

    def summary(self) -> None:
        """Log the wrapped strategy's configuration and the codecs, Flower-style."""
        self.strategy.summary()
        log.info(
            "\t└──> link: uplink %s, downlink %s",
            self.uplink.spec.describe() if self.uplink else "whole fp32 models",
            _describe_downlink(self.downlink, self.changes is not None),
        )


def _describe_downlink(downlink: Codec | None, changes: bool) -> str:
    """How the downlink sends the model, for the summary."""
    if downlink is None:
        return "fp32 arrays"
    if changes:
        return f"changes as {downlink.spec.describe()} (whole models in fp32 once)"
    return downlink.name


def _check_global(model: ArrayRecord, arrays: ArrayRecord) -> None:
    """A downlink of changes sends one global model a round, the strategy's ``arrays``."""
    if model is not arrays:
        raise ValueError(
            "a downlink of changes needs every message to carry the round's global model; "
            "this strategy sends per-client models (use downlink fp32, bf16 or fp16)"
        )


def _with_model_records(
    messages: list[Message], record_of: Callable[[int, ArrayRecord], ConfigRecord]
) -> list[Message]:
    """Each message that carries a model (``arrays``) with the ``model`` record
    ``record_of(node, model)`` instead; the others as they are."""
    result = []
    for message in messages:
        model = wire.record(message.content, wire.ARRAYS, ArrayRecord)
        if model is None:
            result.append(message)
            continue
        record = record_of(message.metadata.dst_node_id, model)
        result.append(_with_model_record(message, record))
    return result


def _with_model_record(message: Message, record: ConfigRecord) -> Message:
    """``message`` with its ``arrays`` record replaced by the encoded ``model`` record."""
    content = RecordDict({k: v for k, v in message.content.items() if k != wire.ARRAYS})
    content[wire.MODEL] = record
    return Message(
        content=content,
        message_type=message.metadata.message_type,
        dst_node_id=message.metadata.dst_node_id,
    )


def _metrics(reply: Message) -> MetricRecord:
    """The (checked) metrics record of an accepted reply."""
    metrics = wire.record(reply.content, wire.METRICS, MetricRecord)
    assert metrics is not None  # ReplyReader refuses a reply without it
    return metrics


def _wait_for_nodes(grid: Grid, count: int) -> None:
    """Block until at least `count` nodes are connected (the first round's gate)."""
    while (connected := len(list(grid.get_node_ids()))) < count:
        log.info("waiting for clients: %d connected of the %d min-clients", connected, count)
        time.sleep(NODE_WAIT_SECONDS)
