"""A round's shape is declared once, by RoundReport in proto/telemetry.proto.

The store derives its rows from the message descriptor; the explicit copies (the `rounds` and
`client_rounds` tables, RoundRow, RoundOut, the per-client rows) must name the same fields.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from monitor.api.schemas import ClientOut, NodeReason, RoundOut
from monitor.rows import ClientRow, NodeReasonRow, RoundRow
from monitor.store import Store
from proto import telemetry_pb2 as pb

# RoundReport fields that are not a column of `rounds`: the key of every row, and the
# per-client figures, stored one row per node in `client_rounds`.
NOT_ROUND_COLUMNS = {"run_id", "clients"}
# Round columns the store derives from the report: the metrics that were NaN or ±Inf.
DERIVED_ROUND_COLUMNS = {"non_finite"}
# client_rounds columns that come from elsewhere in the RoundReport than its ClientRound: the
# row's key (run, round, the `clients` map key) and the node's place in the round's lists.
CLIENT_COLUMNS_FROM_THE_ROUND = {
    "run_id",
    "round",
    "node_id",
    "participated",  # participants
    "skipped",  # non_participants
    "failure_reason",  # failures
    "rejected_reason",  # rejected
}


def _fields(message: type) -> set[str]:
    return {field.name for field in message.DESCRIPTOR.fields}


def _columns(tmp_path: Path, table: str) -> set[str]:
    Store(tmp_path / "m.sqlite").close()
    with sqlite3.connect(tmp_path / "m.sqlite") as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def test_round_fields_agree_with_round_report(tmp_path: Path) -> None:
    declared = _fields(pb.RoundReport) - NOT_ROUND_COLUMNS
    stored = declared | DERIVED_ROUND_COLUMNS
    assert _columns(tmp_path, "rounds") - {"run_id"} == stored, "rounds table"
    assert {f.name for f in dataclasses.fields(RoundRow)} == stored, "monitor/rows.py RoundRow"
    assert set(RoundOut.model_fields) == stored, "monitor/api/schemas.py RoundOut"


def test_client_fields_agree_with_client_round(tmp_path: Path) -> None:
    declared = _fields(pb.ClientRound)
    assert _columns(tmp_path, "client_rounds") - CLIENT_COLUMNS_FROM_THE_ROUND == declared
    assert declared <= {f.name for f in dataclasses.fields(ClientRow)}, "monitor/rows.py"
    assert declared <= set(ClientOut.model_fields), "monitor/api/schemas.py ClientOut"


def test_node_reason_fields_agree_with_node_reason() -> None:
    declared = _fields(pb.NodeReason)
    assert {f.name for f in dataclasses.fields(NodeReasonRow)} == declared
    assert set(NodeReason.model_fields) == declared


def test_every_round_field_is_stored_and_read_back(tmp_path: Path) -> None:
    report = pb.RoundReport(run_id="r", round=1, time=5.0, accuracy=0.5, bytes_up=3)
    report.failures.add(node_id=2**64 - 1, reason="timeout")
    report.clients[7].num_examples = 10
    store = Store(tmp_path / "m.sqlite")
    try:
        store.record_round(report)
        (row,) = store.rounds("r")
        (client,) = [c for c in store.clients("r") if c.node_id == "7"]
    finally:
        store.close()
    assert (row.round, row.time, row.accuracy, row.loss, row.bytes_up) == (1, 5.0, 0.5, None, 3)
    assert row.failures == [NodeReasonRow(node_id=str(2**64 - 1), reason="timeout")]
    assert (client.num_examples, client.train_loss, client.figures) == (10, None, {})


def test_the_figures_the_dashboard_draws_are_the_ones_strategies_report() -> None:
    from monitor import figures
    from strategies.fedau import WEIGHT_FIGURE
    from strategies.lodadac import CONSENSUS_FIGURE

    assert figures.FEDAU_WEIGHT == WEIGHT_FIGURE
    assert figures.CONSENSUS_DISTANCE == CONSENSUS_FIGURE
