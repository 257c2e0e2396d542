"""Response bodies of the REST API, as explicit models (they are the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from monitor.figures import FEDAU_WEIGHT
from monitor.rows import ClientRow, RoundRow, RunRow

# "stale": the run never finished and its ServerApp has not been heard from for too long
# (4 heartbeat intervals, or the monitor's stale_after for a ServerApp without heartbeats).
RunStatus = Literal["running", "stale", "finished", "failed"]

NodeId = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,20}$",
        description=(
            "Flower node id (uint64) as decimal text: JavaScript numbers hold only 53 bits, "
            "so a number would lose digits in a browser"
        ),
        examples=["6173921174433711203"],
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(_Model):
    """An error: what was wrong, in one line."""

    detail: str


class Health(_Model):
    """Liveness of the monitor and its database."""

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]


class RunSummary(_Model):
    """A run in the run list."""

    run_id: str = Field(description="Flower's run id: the key of every /api/runs/{run_id} path")
    name: str = Field(
        description="the run's name for people: its run directory, "
        "<YYYYmmdd-HHMMSS>-<strategy>-run<run id>; empty until the run's RunStarted arrives",
        examples=["20260101-120000-fedau-run7"],
    )
    status: RunStatus
    strategy: str = Field(description="empty until the run's RunStarted arrives")
    model: str
    rounds_done: int = Field(description="highest round reported (0 = only the initial model)")
    started_at: datetime | None
    finished_at: datetime | None
    last_report_at: datetime | None
    last_seen_at: datetime | None = Field(
        description="when the monitor last heard from the run's ServerApp (a report or a "
        "heartbeat), by the monitor's clock"
    )
    last_accuracy: float | None = Field(description="test accuracy of the latest round, 0..1")


class RunTotals(_Model):
    """Sums over a run. Bytes are serialized bytes; fp32_* is the dense fp32 equivalent."""

    rounds_reported: int
    elapsed_seconds: float | None
    best_accuracy: float | None
    last_accuracy: float | None
    last_loss: float | None
    bytes_up: int
    bytes_down: int
    fp32_bytes_up: int
    fp32_bytes_down: int
    rejected: int = Field(description="client replies the strategy refused, over all rounds")
    failures: int = Field(description="clients that gave no usable reply, over all rounds")


class RunDetail(RunSummary):
    """A run with its configuration and totals."""

    num_parameters: int | None
    clients_expected: int | None
    reason: str = Field(description="why the run failed; empty otherwise")
    config: dict[str, Any]
    totals: RunTotals

    @classmethod
    def from_row(cls, row: RunRow) -> RunDetail:
        """Build from the store's row (which carries the totals too)."""
        return cls.model_validate(
            {
                **RunSummary.model_validate(row).model_dump(),
                "num_parameters": row.num_parameters,
                "clients_expected": row.clients_expected,
                "reason": row.reason,
                "config": row.config,
                "totals": RunTotals.model_validate(row),
            }
        )


class NodeReason(_Model):
    """A node and why its reply was left out of a round."""

    node_id: NodeId
    reason: str


class RoundOut(_Model):
    """One round. Bytes are per round unless cum_*; bits are per parameter per participant."""

    round: int = Field(description="0 is the initial model")
    time: datetime = Field(description="when the round ended")
    elapsed_seconds: float
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    cum_bytes_up: int
    cum_bytes_down: int
    fp32_bytes_up: int
    fp32_bytes_down: int
    cum_fp32_bytes_up: int
    cum_fp32_bytes_down: int
    uplink_bits_per_param: float | None
    downlink_bits_per_param: float | None
    participants: list[NodeId]
    non_participants: list[NodeId]
    failures: list[NodeReason]
    rejected: list[NodeReason]
    figures: dict[str, float] = Field(description="strategy figures, e.g. consensus_distance")
    non_finite: list[str] = Field(
        description="metrics of this round that were NaN or ±Inf, stored as null (figures left "
        "out): accuracy, loss, train_loss, figures.<name>, clients.<node>.train_loss, "
        "clients.<node>.figures.<name>",
        examples=[["loss", "accuracy"]],
    )

    @classmethod
    def from_row(cls, row: RoundRow) -> RoundOut:
        """Build from the store's row."""
        return cls.model_validate(row)


class ClientOut(_Model):
    """One client over a run: bytes are sums over its rounds."""

    node_id: NodeId
    client_id: str | None = Field(
        description="the client's stable name (its SuperNode's node-config client-id, "
        "e.g. client-0), which survives reconnects; null when never reported",
        examples=["client-0"],
    )
    rounds_participated: int = Field(description="rounds whose training reply arrived")
    rounds_seen: int = Field(description="rounds that mention this client at all")
    last_seen_round: int | None
    last_seen_at: datetime | None
    bytes_up: int
    bytes_down: int
    num_examples: int | None
    train_loss: float | None
    fedau_weight: float | None = Field(description="latest FedAU aggregation weight, if any")
    figures: dict[str, float] = Field(description="latest strategy figures of this client")
    rejections: int
    failures: int
    last_reason: str | None = Field(description="latest rejection or failure reason")

    @classmethod
    def from_row(cls, row: ClientRow) -> ClientOut:
        """Build from the store's row."""
        return cls.model_validate({**row.__dict__, "fedau_weight": row.figures.get(FEDAU_WEIGHT)})
