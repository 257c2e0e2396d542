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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedq import wire
from strategies.participation import ParticipationEstimator

__all__ = ["MODES", "FedAU", "ParticipationEstimator", "RoundOutcome"]

log = logging.getLogger(__name__)

# mode -> how ω and the divisor are chosen
MODES = {
    "fedau": "ω from the participation estimator, divided by N (known clients)",
    "participants": "ω = 1, divided by |S_t| (FedAvg over participants)",
    "all": "ω = 1, divided by N",
    "known-prob": "ω = 1/p from the clients' configured availability (oracle), divided by N",
}


class UpdateRejected(ValueError):
    """A participant's reply cannot be used; the message is the reason."""


@dataclass
class RoundOutcome:
    """What one aggregation saw: who took part, their weights, what was rejected."""

    participants: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # client -> its latest Flower node id


class FedAU(FedAvg):
    """FedAU and its baselines (`mode`), on Flower's message-based FedAvg sampling."""

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
        self.last_outcome = RoundOutcome()
        self._global: ArrayRecord | None = None
        self._client_of_node: dict[int, str] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember x_t (updates are measured against it), then sample as FedAvg does."""
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weight each participant's update by ω and apply the FedAU global step."""
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        base = {k: v.numpy() for k, v in self._global.items()}
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
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.info("node %d: no update this round (%s)", node, reply.error.reason)
            return
        content = reply.content
        record = content.config_records.get(wire.CLIENT, ConfigRecord())
        client = str(record.get(wire.CLIENT_ID, node))
        self._client_of_node[node] = client
        if wire.AVAILABILITY_P in record:
            probabilities[client] = float(record[wire.AVAILABILITY_P])
        if not record.get(wire.PARTICIPATED, True):
            return
        try:
            deltas[client] = _delta(content.array_records.get(wire.ARRAYS), base)
        except UpdateRejected as exc:
            log.warning("node %d (client %s): update rejected: %s", node, client, exc)
            outcome.rejected.append({"client": client, "node": str(node), "reason": str(exc)})
            return
        metrics = content.metric_records.get(wire.METRICS, MetricRecord())
        if wire.TRAIN_LOSS in metrics:
            losses[client] = float(metrics[wire.TRAIN_LOSS])

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


def _delta(arrays: ArrayRecord | None, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Δ = x_local - x_t, after checking keys, shapes and finiteness."""
    if arrays is None:
        raise UpdateRejected(f"no {wire.ARRAYS!r} record in the reply")
    if set(arrays.keys()) != set(base):
        missing, extra = set(base) - set(arrays.keys()), set(arrays.keys()) - set(base)
        raise UpdateRejected(
            f"array keys differ (missing {sorted(missing)}, extra {sorted(extra)})"
        )
    delta = {}
    for key, x in base.items():
        local = arrays[key].numpy()
        if local.shape != x.shape:
            raise UpdateRejected(f"{key}: shape {local.shape} != global shape {x.shape}")
        if not np.all(np.isfinite(local)):
            raise UpdateRejected(f"{key}: holds NaN or Inf")
        delta[key] = local.astype(np.float64) - x
    return delta
