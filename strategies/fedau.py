"""FedAU: federated averaging with adaptive weights under unknown participation.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging", ICLR 2024 (arXiv 2306.03401). Spec: ALGORITHMS.md, FedAU section.

x_{t+1} = x_t + η_g · (1/N) · Σ_{n ∈ S_t} ω_n Δ_n, with Δ_n = x_n - x_t, N the number of
clients the server knows and ω_n the participation estimator's weight (≈ 1/p_n). The
baselines share this code path and differ only in ω and the divisor (`MODES`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord

from fedq import wire
from strategies.codec_fedavg import CodecFedAvg
from strategies.participation import ParticipationEstimator
from strategies.updates import RoundOutcome, UpdateRejected

__all__ = ["MODES", "FedAU", "ParticipationEstimator", "RoundOutcome", "UpdateRejected"]

log = logging.getLogger(__name__)

# mode -> how ω and the divisor are chosen
MODES = {
    "fedau": "ω from the participation estimator, divided by N (known clients)",
    "participants": "ω = 1, divided by |S_t| (FedAvg over participants)",
    "all": "ω = 1, divided by N",
    "known-prob": "ω = 1/p from the clients' configured availability (oracle), divided by N",
}


class FedAU(CodecFedAvg):
    """FedAU and its baselines (`mode`), on Flower's message-based FedAvg sampling.

    Updates arrive as whole models or compressed by the uplink codec (`CodecFedAvg`); they
    are decoded and checked first, then weighted.
    """

    def __init__(
        self,
        *,
        mode: str = "fedau",
        server_lr: float = 1.0,
        cutoff: int | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not known; allowed: {', '.join(MODES)}")
        if not server_lr > 0:
            raise ValueError(f"server_lr={server_lr!r} must be > 0")
        super().__init__(**fedavg_kwargs)
        self.mode = mode
        self.server_lr = server_lr
        self.estimator = ParticipationEstimator(cutoff)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weight each participant's update by ω and apply the FedAU global step."""
        base = self._base()
        outcome, deltas, losses, probabilities = RoundOutcome(), {}, {}, {}
        for reply in replies:
            self._sort_reply(reply, base, outcome, deltas, losses, probabilities)
        participants = set(deltas)
        known = set(self._client_of_node.values()) | participants
        estimated = self.estimator.step(participants, known)
        outcome.participants = sorted(participants)
        outcome.absent = sorted(known - participants)
        outcome.weights = self._weights(estimated, probabilities)
        outcome.nodes = {client: node for node, client in self._client_of_node.items()}
        self.last_outcome = outcome
        if not participants:
            return None, None
        divisor = len(participants) if self.mode == "participants" else len(known)
        new = {
            key: (
                x
                + self.server_lr
                * sum(outcome.weights[c] * deltas[c][key] for c in deltas)
                / divisor
            ).astype(x.dtype)
            for key, x in base.items()
        }
        metrics = {"participants": len(participants), "known-clients": len(known)}
        if losses:
            metrics[wire.TRAIN_LOSS] = float(np.mean(list(losses.values())))
        return ArrayRecord({k: Array(v) for k, v in new.items()}), MetricRecord(metrics)

    def _weights(
        self, estimated: dict[str, float], probabilities: dict[str, float]
    ) -> dict[str, float]:
        if self.mode == "fedau":
            return estimated
        if self.mode == "known-prob":
            return {c: 1.0 / probabilities.get(c, 1.0) for c in estimated}
        return {c: 1.0 for c in estimated}

    def _sort_reply(
        self,
        reply: Message,
        base: dict[str, np.ndarray],
        outcome: RoundOutcome,
        deltas: dict[str, dict[str, np.ndarray]],
        losses: dict[str, float],
        probabilities: dict[str, float],
    ) -> None:
        """File one reply as a participant's update, an absence, or a rejection."""
        if reply.has_error():
            log.info(
                "node %d: no update this round (%s)", reply.metadata.src_node_id, reply.error.reason
            )
            return
        client, participated = self.identify(reply)
        record = reply.content.config_records.get(wire.CLIENT, ConfigRecord())
        if wire.AVAILABILITY_P in record:
            probabilities[client] = float(record[wire.AVAILABILITY_P])
        if not participated:
            return
        try:
            deltas[client] = self.checked_delta(reply, base)
        except UpdateRejected as exc:
            self.reject(outcome, reply, client, exc)
            return
        losses[client] = float(reply.content.metric_records[wire.METRICS][wire.TRAIN_LOSS])

    def state(self) -> dict[str, Any]:
        """Checkpointable strategy state (the estimator's, a few numbers per client)."""
        return {"mode": self.mode, "estimator": self.estimator.state()}

    def summary(self) -> None:
        """Log the configuration, Flower-style."""
        super().summary()
        log.info(
            "\t└──> FedAU: mode %s (%s), server lr %.3g, cutoff %s",
            self.mode,
            MODES[self.mode],
            self.server_lr,
            self.estimator.cutoff,
        )
