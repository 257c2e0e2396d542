"""FedAU's participation estimator: aggregation weights from each client's history alone.

Per client the server keeps three numbers: `gap` (rounds since the client last took part),
and the running mean and count of the participation intervals recorded so far. With
Bernoulli participation of (unknown) probability p and no cutoff, the mean interval
estimates 1/p, so weighting a participant's update by it undoes the bias that unequal
participation puts on plain averaging (Wang & Ji, ICLR 2024, arXiv 2306.03401).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(slots=True)
class ClientHistory:
    """What the estimator remembers of one client (three numbers)."""

    gap: int = 0  # rounds since the client last took part
    interval_mean: float = 0.0  # mean of the recorded intervals (rounds)
    interval_count: int = 0  # how many intervals were recorded

    def record(self, interval: int) -> None:
        """Fold one participation interval (rounds) into the running mean."""
        self.interval_count += 1
        self.interval_mean += (interval - self.interval_mean) / self.interval_count

    def weight(self) -> float:
        """The aggregation weight: mean recorded interval, or 1.0 before any is recorded."""
        return self.interval_mean if self.interval_count else 1.0


class ParticipationEstimator:
    """FedAU's online estimate of each client's aggregation weight ω (≈ 1/p).

    `cutoff` is the paper's K: a client absent for K rounds gets an interval of K recorded
    and its gap restarted, bounding ω by K. None means no cutoff (K = ∞).
    """

    def __init__(self, cutoff: int | None = None) -> None:
        if cutoff is not None and cutoff < 1:
            raise ValueError(f"cutoff={cutoff!r} must be a positive number of rounds or None")
        self.cutoff = cutoff
        self.clients: dict[str, ClientHistory] = {}

    def step(self, participants: set[str], known: set[str]) -> dict[str, float]:
        """Return this round's weight ω of each participant, then record the round.

        Weights use only intervals recorded before this round (1.0 for a client with none).
        `known` is every client the server knows of this round, participants included; a
        client seen for the first time starts with no history.
        """
        unknown = participants - known
        if unknown:
            raise ValueError(f"participants {sorted(unknown)} are not in `known`")
        weights = {}
        for client in sorted(known):
            history = self.clients.setdefault(client, ClientHistory())
            if client in participants:
                weights[client] = history.weight()
                history.record(history.gap + 1)
                history.gap = 0
            else:
                history.gap += 1
                if self.cutoff is not None and history.gap >= self.cutoff:
                    history.record(self.cutoff)
                    history.gap = 0
        return weights

    def weights(self) -> dict[str, float]:
        """The weight each known client would get if it took part now."""
        return {client: history.weight() for client, history in self.clients.items()}

    def state(self) -> dict[str, tuple[int, float, int]]:
        """Checkpointable state: client -> (gap, interval mean, interval count)."""
        return {
            c: (h.gap, h.interval_mean, h.interval_count) for c, h in sorted(self.clients.items())
        }

    def load_state(self, state: Mapping[str, tuple[int, float, int]]) -> None:
        """Restore what `state()` returned."""
        self.clients = {
            c: ClientHistory(int(gap), float(mean), int(count))
            for c, (gap, mean, count) in state.items()
        }
