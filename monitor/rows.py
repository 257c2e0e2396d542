"""What the store returns: runs with totals, rounds, and clients summed over a run.

Times are Unix seconds, bytes are bytes, node ids are decimal text (uint64 does not fit in a
SQLite integer, nor in a JavaScript number).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunRow:
    """A run with its totals. Times are Unix seconds, bytes are bytes, rounds count rounds."""

    run_id: str
    name: str  # for people (the run directory's name); empty until RunStarted arrives
    status: str
    strategy: str
    model: str
    num_parameters: int | None
    clients_expected: int | None
    config: dict[str, Any]
    reason: str
    started_at: float | None
    finished_at: float | None
    updated_at: float
    rounds_reported: int
    rounds_done: int
    last_report_at: float | None
    elapsed_seconds: float | None
    best_accuracy: float | None
    last_accuracy: float | None
    last_loss: float | None
    bytes_up: int
    bytes_down: int
    fp32_bytes_up: int
    fp32_bytes_down: int
    rejected: int
    failures: int
    last_seen_at: float | None  # the monitor's clock when it last heard from the run
    heartbeat_seconds: float | None  # the run's heartbeat interval; None: sends none


@dataclass(frozen=True)
class NodeReasonRow:
    """A node (decimal uint64) and why its reply was left out."""

    node_id: str
    reason: str


@dataclass(frozen=True)
class RoundRow:
    """One stored RoundReport (see proto/telemetry.proto for the units of each field)."""

    round: int
    time: float
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
    participants: list[str]
    non_participants: list[str]
    failures: list[NodeReasonRow]
    rejected: list[NodeReasonRow]
    figures: dict[str, float]
    non_finite: list[str]  # metrics that were NaN or ±Inf (stored as None, figures left out)


@dataclass
class ClientRow:
    """One client over a whole run: rounds, bytes (sums), its latest figures and reasons."""

    node_id: str
    client_id: str | None = None  # the latest non-empty client id reported for the node
    rounds_participated: int = 0
    rounds_seen: int = 0
    last_seen_round: int | None = None
    last_seen_at: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    num_examples: int | None = None
    train_loss: float | None = None
    figures: dict[str, float] = field(default_factory=dict)
    rejections: int = 0
    failures: int = 0
    last_reason: str | None = None


def run_from_sql(row: sqlite3.Row) -> RunRow:
    """A RunRow from a row of the store's run query (its status as shown: maybe "stale")."""
    values = dict(row)
    values["config"] = json.loads(values.pop("config_json"))
    values["status"] = values.pop("shown_status")
    values["last_seen_at"] = values.pop("seen_at") or values["updated_at"]
    # Sums are TOTALs (doubles, exact up to 2**53); the API gives whole bytes.
    for name in ("bytes_up", "bytes_down", "fp32_bytes_up", "fp32_bytes_down"):
        values[name] = int(values[name])
    return RunRow(**values)


def round_from_sql(row: sqlite3.Row) -> RoundRow:
    """A RoundRow from a row of the `rounds` table."""
    values = dict(row)
    del values["run_id"]
    for name in ("participants", "non_participants", "figures", "non_finite"):
        values[name] = json.loads(values[name])
    for name in ("failures", "rejected"):
        values[name] = [NodeReasonRow(**item) for item in json.loads(values[name])]
    return RoundRow(**values)


def client_from_sql(row: sqlite3.Row) -> ClientRow:
    """A ClientRow from a row of the store's client query (sums and latest values)."""
    values = dict(row)
    values["figures"] = json.loads(values["figures"] or "{}")
    # Sums are TOTALs (doubles, exact up to 2**53); the API gives whole bytes.
    values["bytes_up"], values["bytes_down"] = int(values["bytes_up"]), int(values["bytes_down"])
    return ClientRow(**values)
