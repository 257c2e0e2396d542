"""FedAvg over compressed links: Flower's FedAvg with codecs on both directions.

Downlink: with `downlink` bf16 or fp16 the global model goes out once per round as the
bytes of one `CompressedUpdate` (a ``model`` record) instead of fp32 arrays.

Uplink: with a `compress` codec each client replies with its compressed update Δ_n (an
``update`` record). The server decodes every reply, rebuilds x_t + Δ_n and hands those to
Flower's own `FedAvg.aggregate_train`, so the average is exactly Flower's. A reply that
fails to decode or check is dropped with its reason (logged and kept in `last_outcome`);
the round goes on with the others. Replies of clients that sat the round out are set aside.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedq import wire
from fedq.runconfig import NO_COMPRESSION
from quant.codec import Codec
from strategies.updates import RoundOutcome, UpdateRejected, arrays_of, reply_delta

log = logging.getLogger(__name__)

FULL_PRECISION_DOWNLINK = "fp32"
# The metrics fedq clients send with an update; FedAvg averages them by num-examples.
REPLY_METRICS = frozenset({wire.NUM_EXAMPLES, wire.TRAIN_LOSS})


class CodecFedAvg(FedAvg):
    """Flower's FedAvg with an uplink codec (`compress`) and a downlink format."""

    def __init__(
        self,
        *,
        compress: str = NO_COMPRESSION,
        downlink: str = FULL_PRECISION_DOWNLINK,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        self.uplink = None if compress == NO_COMPRESSION else Codec.from_spec(compress)
        self.downlink = None if downlink == FULL_PRECISION_DOWNLINK else Codec.from_spec(downlink)
        self.last_outcome = RoundOutcome()
        self._global: ArrayRecord | None = None
        self._client_of_node: dict[int, str] = {}

    # --- server -> clients -------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample as FedAvg does; tell clients the codec; narrow the model if asked."""
        self._global = arrays
        config[wire.COMPRESS] = self.uplink.spec.describe() if self.uplink else NO_COMPRESSION
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.downlink is None or not messages:
            return messages
        payload = self.downlink.encode(list(arrays_of(arrays).values()))
        content = RecordDict(
            {wire.MODEL: ConfigRecord({wire.PAYLOAD: payload}), wire.CONFIG: config}
        )
        return [
            Message(
                content=content,
                message_type=m.metadata.message_type,
                dst_node_id=m.metadata.dst_node_id,
            )
            for m in messages
        ]

    # --- clients -> server -------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode and check each update, then average the accepted ones as FedAvg does."""
        base = self._base()
        outcome, accepted = RoundOutcome(), []
        for reply in replies:
            if reply.has_error():
                accepted.append(reply)  # FedAvg logs and skips it
                continue
            client, participated = self.identify(reply)
            if not participated:
                outcome.absent.append(client)
                continue
            try:
                delta = self.checked_delta(reply, base)
            except UpdateRejected as exc:
                self.reject(outcome, reply, client, exc)
                continue
            if self.uplink is not None:
                reply.content[wire.ARRAYS] = ArrayRecord(
                    {k: Array((base[k] + delta[k]).astype(base[k].dtype)) for k in base}
                )
                del reply.content[wire.UPDATE]
            outcome.participants.append(client)
            accepted.append(reply)
        outcome.nodes = {client: node for node, client in self._client_of_node.items()}
        self.last_outcome = outcome
        return super().aggregate_train(server_round, accepted)

    def identify(self, reply: Message) -> tuple[str, bool]:
        """(client id, took part this round) of a reply; remembers the client's node."""
        node = reply.metadata.src_node_id
        record = reply.content.config_records.get(wire.CLIENT, ConfigRecord())
        client = str(record.get(wire.CLIENT_ID, node))
        self._client_of_node[node] = client
        return client, bool(record.get(wire.PARTICIPATED, True))

    def checked_delta(self, reply: Message, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Δ_n of a participant's reply (decoded with the uplink codec), metrics checked."""
        metrics = reply.content.metric_records.get(wire.METRICS)
        if metrics is None or set(metrics.keys()) != REPLY_METRICS:
            keys = sorted(metrics.keys()) if metrics is not None else None
            raise UpdateRejected(
                f"metrics {keys} must be exactly {sorted(REPLY_METRICS)} in {wire.METRICS!r}"
            )
        examples = metrics[wire.NUM_EXAMPLES]
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise UpdateRejected(f"{wire.NUM_EXAMPLES}={examples!r} must be an integer >= 1")
        return reply_delta(reply.content, base, self.uplink)

    @staticmethod
    def reject(outcome: RoundOutcome, reply: Message, client: str, exc: UpdateRejected) -> None:
        """Drop a reply: log it and keep node, client and reason in the round's outcome."""
        node = reply.metadata.src_node_id
        log.warning("node %d (client %s): update rejected: %s", node, client, exc)
        outcome.rejected.append({"client": client, "node": str(node), "reason": str(exc)})

    def _base(self) -> dict[str, np.ndarray]:
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        return arrays_of(self._global)

    def summary(self) -> None:
        """Log the configuration, Flower-style."""
        super().summary()
        log.info(
            "\t└──> codecs: uplink %s, downlink %s",
            self.uplink.spec.describe() if self.uplink else NO_COMPRESSION,
            self.downlink.name if self.downlink else FULL_PRECISION_DOWNLINK,
        )
