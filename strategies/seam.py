"""The seam every fedq strategy shares: what it is handed, what it hands back, its state.

The `Link` (strategies/link.py) wraps any Flower strategy. It decodes and checks every
train reply and hands a fedq strategy the sorted `RoundReplies` through
`UpdateAggregator.aggregate_updates`; the strategy returns an `Aggregate`. From the two the
link builds the round's `RoundOutcome`, which the ServerApp's recorder, the run directory,
telemetry and the dashboard carry without knowing which strategy produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from flwr.app import ArrayRecord, MetricRecord

from strategies.replies import ClientEvaluation, Rejection, RoundReplies


@dataclass
class Aggregate:
    """What a strategy made of one round's updates."""

    arrays: ArrayRecord | None = None  # the new global (or evaluated) model; None: unchanged
    metrics: MetricRecord | None = None  # aggregated train metrics for Flower's history
    figures: dict[str, float] = field(default_factory=dict)  # per round, e.g. consensus
    client_figures: dict[str, dict[str, float]] = field(default_factory=dict)  # per client id


@dataclass
class RoundOutcome:
    """One round as the strategy saw it; clients by their stable client id."""

    participants: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # known, but no update and no rejection
    rejected: list[Rejection] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)  # every known client -> latest node
    figures: dict[str, float] = field(default_factory=dict)
    client_figures: dict[str, dict[str, float]] = field(default_factory=dict)
    failure: str = ""  # why the round left the model unchanged (e.g. too few updates)

    @classmethod
    def of(
        cls,
        replies: RoundReplies,
        aggregate: Aggregate,
        nodes: Mapping[str, int],
        failure: str = "",
    ) -> RoundOutcome:
        """Combine what the link read with what the strategy reported.

        ``nodes`` maps every client the server has heard from to its latest node id; a
        known client that sent no update this round (not sampled, sat out, silent) is
        absent, unless its update was rejected.
        """
        took_part = set(replies.participants) | {r.client for r in replies.rejected}
        return cls(
            participants=sorted(replies.participants),
            absent=sorted(set(nodes) - took_part),
            rejected=list(replies.rejected),
            nodes=dict(nodes),
            figures=dict(aggregate.figures),
            client_figures={c: dict(f) for c, f in aggregate.client_figures.items()},
            failure=failure,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (rounds.jsonl)."""
        return asdict(self)


@dataclass
class FederatedEvaluation:
    """The clients' evaluation of one round's model, weighted by their examples."""

    server_round: int
    accuracy: float | None  # in [0, 1]; None when no client's evaluation was usable
    loss: float | None  # nats
    clients: list[ClientEvaluation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # replies left out, and why

    @classmethod
    def of(
        cls, server_round: int, clients: list[ClientEvaluation], problems: list[str]
    ) -> FederatedEvaluation:
        """Example-weighted accuracy and loss over `clients`."""
        examples = sum(c.examples for c in clients)
        if not examples:
            return cls(server_round, None, None, clients, problems)
        accuracy = sum(c.accuracy * c.examples for c in clients) / examples
        loss = sum(c.loss * c.examples for c in clients) / examples
        return cls(server_round, accuracy, loss, clients, problems)


@runtime_checkable
class UpdateAggregator(Protocol):
    """A strategy that aggregates decoded, checked updates instead of raw replies."""

    def aggregate_updates(self, server_round: int, replies: RoundReplies) -> Aggregate:
        """Aggregate one round's sorted replies (Δ per participant, absences, rejections)."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """A strategy whose state survives a restart (written into every checkpoint)."""

    def state(self) -> dict[str, Any]:
        """Checkpointable state: plain Python values and numpy arrays."""
        ...

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `state()` returned."""
        ...


@runtime_checkable
class KeepsClientState(Protocol):
    """A strategy whose clients keep state between rounds that the server relies on."""

    def forget_client_state(self) -> None:
        """The clients lost what they kept (a resumed run is a new Flower run with fresh
        Contexts): rebuild it from the server's copy when each client next takes part."""
        ...


@runtime_checkable
class ReportsOutcome(Protocol):
    """A strategy that tells what its last round was (the Link does, for every strategy)."""

    @property
    def round_outcome(self) -> RoundOutcome | None:
        """The outcome of the latest aggregated round, None before the first."""
        ...


@runtime_checkable
class ReportsEvaluation(Protocol):
    """A strategy that keeps its clients' latest evaluation (the Link does)."""

    @property
    def federated_evaluation(self) -> FederatedEvaluation | None:
        """The latest round's federated evaluation, None before the first."""
        ...
