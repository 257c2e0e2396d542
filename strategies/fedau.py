"""FedAU: federated averaging with adaptive weights under unknown participation.

Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging", ICLR 2024 (arXiv 2306.03401). Spec: docs/algorithms.md, FedAU section.

x_{t+1} = x_t + η_g · (1/N) · Σ_{n ∈ S_t} ω_n Δ_n, with Δ_n = x_n - x_t, N the total number
of clients when the run config names it (`fedau-num-clients`), else the number of clients the
server has heard from, and ω_n the participation estimator's weight (≈ 1/p_n). The baselines
share this code path and differ only in ω and the divisor (`MODES`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedq import wire
from strategies.participation import ParticipationEstimator
from strategies.replies import ReplyReader, RoundReplies, arrays_of
from strategies.seam import Aggregate
from strategies.weighted_sum import weighted_sum

__all__ = ["MODES", "WEIGHT_FIGURE", "FedAU", "ParticipationEstimator"]

log = logging.getLogger(__name__)

# mode -> how ω and the divisor are chosen
MODES = {
    "fedau": "ω from the participation estimator, divided by N (all clients)",
    "participants": "ω = 1, divided by |S_t| (FedAvg over participants)",
    "all": "ω = 1, divided by N",
    "known-prob": "ω = 1/p from the clients' configured availability (oracle), divided by N",
}
# Per-client figure each participant's ω is reported under (the dashboard draws it).
WEIGHT_FIGURE = "fedau_weight"


class FedAU(FedAvg):
    """FedAU and its baselines (`mode`), on Flower's message-based FedAvg sampling.

    It aggregates checked updates Δ_n (`aggregate_updates`), which the `Link` hands it
    decoded from any uplink codec; on its own (`aggregate_train`) it reads whole-model
    replies with the same checks.

    `num_clients` is the total number of clients N, when known; None: N counts the clients
    heard from so far. If more distinct clients than `num_clients` reply, N grows to their
    number (a warning says so once): dividing by too small an N would scale every step up.
    """

    def __init__(
        self,
        *,
        mode: str = "fedau",
        server_lr: float = 1.0,
        cutoff: int | None = None,
        num_clients: int | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not known; allowed: {', '.join(MODES)}")
        if num_clients is not None and num_clients < 1:
            raise ValueError(
                f"num_clients={num_clients!r} must be >= 1 (all clients), or None (unknown)"
            )
        if not server_lr > 0:
            raise ValueError(f"server_lr={server_lr!r} must be > 0")
        super().__init__(**fedavg_kwargs)
        self.mode = mode
        self.server_lr = server_lr
        self.num_clients = num_clients
        self._warned_more_clients = False
        # Every client the server has heard from (N of them), with its history.
        self.estimator = ParticipationEstimator(cutoff)
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample as FedAvg does; remember x_t, the model the updates are relative to."""
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Without a `Link`: read whole-model replies, then aggregate them as FedAU."""
        base = arrays_of(self._base())
        replies = list(replies)
        reference = {reply.metadata.src_node_id: base for reply in replies}
        aggregate = self.aggregate_updates(server_round, ReplyReader().read(replies, reference))
        return aggregate.arrays, aggregate.metrics

    def aggregate_updates(self, server_round: int, replies: RoundReplies) -> Aggregate:
        """Weight each participant's Δ by ω and apply the FedAU global step."""
        base = arrays_of(self._base())
        participants = {u.client for u in replies.updates}
        # A rejected update is an absence of its client; a reply that could not say who
        # sent it is no client at all (it must not grow N).
        rejected = {r.client for r in replies.rejected if r.identified}
        heard = participants | set(replies.absent) | rejected
        estimated = self.estimator.step(participants, heard)
        probabilities = {u.client: u.availability_p for u in replies.updates}
        weights = self._weights(estimated, probabilities)
        figures = {c: {WEIGHT_FIGURE: w} for c, w in weights.items()}
        if not participants:
            return Aggregate(client_figures=figures)
        divisor = len(participants) if self.mode == "participants" else self.population()
        # Σ_n ω_n Δ_n, in the updates' order (sorted by client id): reproducible bit for bit.
        total = weighted_sum(
            [u.delta for u in replies.updates],
            [weights[u.client] for u in replies.updates],
            {key: x.shape for key, x in base.items()},
        )
        step = self.server_lr / divisor
        new = {key: (x + step * total[key]).astype(x.dtype, copy=False) for key, x in base.items()}
        metrics = {
            "participants": len(participants),
            "known-clients": len(self.estimator),
            wire.TRAIN_LOSS: float(np.mean([u.train_loss for u in replies.updates])),
        }
        arrays = ArrayRecord({k: Array(v) for k, v in new.items()})
        return Aggregate(arrays, MetricRecord(metrics), client_figures=figures)

    def _weights(
        self, estimated: dict[str, float], probabilities: Mapping[str, float | None]
    ) -> dict[str, float]:
        if self.mode == "fedau":
            return estimated
        if self.mode == "known-prob":
            return {
                c: 1.0 if probabilities.get(c) is None else 1.0 / probabilities[c]
                for c in estimated
            }
        return {c: 1.0 for c in estimated}

    def _base(self) -> ArrayRecord:
        if self._global is None:
            raise RuntimeError("aggregate called before configure_train")
        return self._global

    def population(self) -> int:
        """N, the divisor of every mode but `participants` (clients): `num_clients`, or the
        clients heard from when that is unknown or exceeded."""
        known = len(self.estimator)
        if self.num_clients is None:
            return known
        if known > self.num_clients and not self._warned_more_clients:
            self._warned_more_clients = True
            log.warning(
                "FedAU: %d distinct clients have replied, more than fedau-num-clients=%d; "
                "N is now the number of clients heard from",
                known,
                self.num_clients,
            )
        return max(known, self.num_clients)

    @property
    def known(self) -> set[str]:
        """Every client the server has heard from (a copy; N is its size)."""
        return set(self.estimator.ids)

    def state(self) -> dict[str, Any]:
        """Checkpointable state: the mode and the estimator's (the client ids once, three
        numbers per client in numpy arrays: 16 bytes a client beside its id)."""
        return {"mode": self.mode, "estimator": self.estimator.state()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `state()` returned (the mode must match this strategy's).

        Also reads the checkpoints of earlier fedq versions, which kept a `known` list
        beside a dict client -> (gap, interval mean, interval count).
        """
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint of fedau-mode={state['mode']!r}, not {self.mode!r}")
        self.estimator.load_state(state["estimator"])
        if "known" in state:  # the earlier form; its known clients are the estimator's
            self.estimator.add_clients(state["known"])

    def summary(self) -> None:
        """Log the configuration, Flower-style."""
        super().summary()
        log.info(
            "\t└──> FedAU: mode %s (%s), server lr %.3g, cutoff %s, N %s",
            self.mode,
            MODES[self.mode],
            self.server_lr,
            self.estimator.cutoff,
            self.num_clients or "the clients heard from",
        )
