"""The monitor's history in SQLite (WAL mode): runs, rounds and each client's share of a round.

Node ids are Flower's uint64 ids; SQLite integers are signed 64-bit, so they are stored as
decimal text. Every write replaces what an earlier copy of the same report wrote, which makes
the sender's retries harmless.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fedq.errors import ConfigError
from monitor.rows import (
    ClientRow,
    RoundRow,
    RunRow,
    add_client_round,
    round_from_sql,
    run_from_sql,
)
from proto import telemetry_pb2 as pb

# 2: runs.name and client_rounds.client_id (databases of version 1 are upgraded on open).
SCHEMA_VERSION = 2
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE runs ADD COLUMN name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE client_rounds ADD COLUMN client_id TEXT NOT NULL DEFAULT ''",
    ),
}
RUN_STATUSES = ("running", "finished", "failed")
_STATUS_OF = {pb.RUN_STATUS_COMPLETED: "finished", pb.RUN_STATUS_FAILED: "failed"}
# RoundReport fields stored in a table of their own rather than a column of `rounds`.
_IN_OWN_TABLE = frozenset({"clients"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    strategy TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    num_parameters INTEGER,
    clients_expected INTEGER,
    config_json TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL DEFAULT '',
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    name TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    round INTEGER NOT NULL,
    time REAL NOT NULL,
    elapsed_seconds REAL NOT NULL,
    accuracy REAL,
    loss REAL,
    train_loss REAL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    cum_bytes_up INTEGER NOT NULL,
    cum_bytes_down INTEGER NOT NULL,
    fp32_bytes_up INTEGER NOT NULL,
    fp32_bytes_down INTEGER NOT NULL,
    cum_fp32_bytes_up INTEGER NOT NULL,
    cum_fp32_bytes_down INTEGER NOT NULL,
    uplink_bits_per_param REAL,
    downlink_bits_per_param REAL,
    participants TEXT NOT NULL,
    non_participants TEXT NOT NULL,
    failures TEXT NOT NULL,
    rejected TEXT NOT NULL,
    figures TEXT NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS client_rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    node_id TEXT NOT NULL,
    participated INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL,
    bytes_down INTEGER NOT NULL,
    num_examples INTEGER,
    train_loss REAL,
    figures TEXT NOT NULL,
    failure_reason TEXT,
    rejected_reason TEXT,
    client_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, round, node_id),
    FOREIGN KEY (run_id, round) REFERENCES rounds (run_id, round) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS client_rounds_by_node ON client_rounds (run_id, node_id);
"""

# One row per run with its totals; `{where}` and `{order}` are filled from fixed strings only.
_RUN_QUERY = """
SELECT r.*,
    COUNT(x.round) AS rounds_reported,
    COALESCE(MAX(x.round), 0) AS rounds_done,
    MAX(x.time) AS last_report_at,
    MAX(x.elapsed_seconds) AS elapsed_seconds,
    MAX(x.accuracy) AS best_accuracy,
    MAX(COALESCE(MAX(x.cum_bytes_up), 0), COALESCE(SUM(x.bytes_up), 0)) AS bytes_up,
    MAX(COALESCE(MAX(x.cum_bytes_down), 0), COALESCE(SUM(x.bytes_down), 0)) AS bytes_down,
    MAX(COALESCE(MAX(x.cum_fp32_bytes_up), 0), COALESCE(SUM(x.fp32_bytes_up), 0))
        AS fp32_bytes_up,
    MAX(COALESCE(MAX(x.cum_fp32_bytes_down), 0), COALESCE(SUM(x.fp32_bytes_down), 0))
        AS fp32_bytes_down,
    (SELECT accuracy FROM rounds WHERE run_id = r.run_id AND accuracy IS NOT NULL
        ORDER BY round DESC LIMIT 1) AS last_accuracy,
    (SELECT loss FROM rounds WHERE run_id = r.run_id AND loss IS NOT NULL
        ORDER BY round DESC LIMIT 1) AS last_loss,
    (SELECT COUNT(rejected_reason) FROM client_rounds WHERE run_id = r.run_id) AS rejected,
    (SELECT COUNT(failure_reason) FROM client_rounds WHERE run_id = r.run_id) AS failures
FROM runs r LEFT JOIN rounds x ON x.run_id = r.run_id
{where}
GROUP BY r.run_id
{order}
"""


class Store:
    """Thread-safe access to one SQLite database file; the schema is created on open.

    A database an older monitor wrote is upgraded in place; one a newer monitor wrote is
    refused (ConfigError), since this monitor would not know its columns.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: the gRPC threads and the API's thread pool share it,
        # and every statement is short, so serialising them costs nothing visible.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            _migrate(self._db, path)

    def close(self) -> None:
        """Close the database; later calls fail."""
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def journal_mode(self) -> str:
        """SQLite's journal mode of this database ("wal")."""
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes -------------------------------------------------------------------------------

    def start_run(self, msg: pb.RunStarted) -> None:
        """Record a run's start and configuration (again, if it was seen before)."""
        with self._transaction() as db:
            _ensure_run(db, msg.run_id, msg.time)
            db.execute(
                "UPDATE runs SET name = ?, strategy = ?, model = ?, num_parameters = ?, "
                "clients_expected = ?, config_json = ?, started_at = ?, updated_at = ? "
                "WHERE run_id = ?",
                (
                    msg.name,
                    msg.strategy,
                    msg.model,
                    msg.num_parameters,
                    msg.clients_expected,
                    msg.config_json or "{}",
                    msg.time,
                    msg.time,
                    msg.run_id,
                ),
            )

    def record_round(self, msg: pb.RoundReport) -> None:
        """Store one round, replacing an earlier copy of the same (run, round)."""
        with self._transaction() as db:
            _ensure_run(db, msg.run_id, msg.time)
            db.execute("DELETE FROM rounds WHERE run_id = ? AND round = ?", (msg.run_id, msg.round))
            _insert(db, "rounds", _round_columns(msg))
            for row in _client_rows(msg):
                _insert(db, "client_rounds", row)
            db.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (msg.time, msg.run_id))

    def finish_run(self, msg: pb.RunFinished) -> None:
        """Mark a run finished or failed, with the reason."""
        with self._transaction() as db:
            _ensure_run(db, msg.run_id, msg.time)
            db.execute(
                "UPDATE runs SET status = ?, reason = ?, finished_at = ?, updated_at = ? "
                "WHERE run_id = ?",
                (_STATUS_OF[msg.status], msg.reason, msg.time, msg.time, msg.run_id),
            )

    # -- reads --------------------------------------------------------------------------------

    def list_runs(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRow]:
        """Runs, newest start first, optionally only those with `status`."""
        where = "WHERE r.status = ?" if status else ""
        order = "ORDER BY COALESCE(r.started_at, r.updated_at) DESC, r.run_id LIMIT ? OFFSET ?"
        params: tuple[Any, ...] = (status, limit, offset) if status else (limit, offset)
        with self._lock:
            rows = self._db.execute(_RUN_QUERY.format(where=where, order=order), params)
            return [run_from_sql(row) for row in rows.fetchall()]

    def count_runs_by_status(self) -> dict[str, int]:
        """How many runs are running, finished and failed."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status")
            return {status: count for status, count in rows.fetchall()}

    def get_run(self, run_id: str) -> RunRow | None:
        """The run `run_id` with its totals, or None if it was never reported."""
        with self._lock:
            row = self._db.execute(
                _RUN_QUERY.format(where="WHERE r.run_id = ?", order=""), (run_id,)
            ).fetchone()
        return None if row is None else run_from_sql(row)

    def rounds(self, run_id: str, since: int = -1, limit: int | None = None) -> list[RoundRow]:
        """The run's rounds after round `since`, in order, at most `limit` of them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM rounds WHERE run_id = ? AND round > ? ORDER BY round LIMIT ?",
                (run_id, since, -1 if limit is None else limit),
            ).fetchall()
        return [round_from_sql(row) for row in rows]

    def clients(self, run_id: str) -> list[ClientRow]:
        """Every client that appeared in any round of the run, ordered by node id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.*, x.time FROM client_rounds c JOIN rounds x "
                "ON x.run_id = c.run_id AND x.round = c.round "
                "WHERE c.run_id = ? ORDER BY c.round",
                (run_id,),
            ).fetchall()
        clients: dict[str, ClientRow] = {}
        for row in rows:
            client = clients.setdefault(row["node_id"], ClientRow(node_id=row["node_id"]))
            add_client_round(client, row)
        return [clients[node] for node in sorted(clients, key=int)]


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new database, or bring an older one up to SCHEMA_VERSION."""
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        db.close()
        raise ConfigError(
            f"database {str(path)!r} has schema version {found}; this monitor reads versions "
            f"up to {SCHEMA_VERSION} (a newer monitor wrote it)"
        )
    has_tables = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
    db.execute("BEGIN IMMEDIATE")
    try:
        if has_tables:
            # Version 0 with tables: written before versions were recorded, i.e. version 1.
            for version in range(max(found, 1) + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _ensure_run(db: sqlite3.Connection, run_id: str, time: float) -> None:
    # A report may arrive for a run whose RunStarted was lost; the run starts here then.
    db.execute(
        "INSERT OR IGNORE INTO runs (run_id, status, started_at, updated_at) "
        "VALUES (?, 'running', ?, ?)",
        (run_id, time, time),
    )


def _insert(db: sqlite3.Connection, table: str, row: Mapping[str, Any]) -> None:
    # Table and column names come from this module and the .proto, never from a report.
    marks = ", ".join("?" * len(row))
    db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", tuple(row.values()))


def _round_columns(msg: pb.RoundReport) -> dict[str, Any]:
    """The `rounds` row of a report: every RoundReport field but `clients` (client_rounds)."""
    return _columns(msg, skip=_IN_OWN_TABLE)


def _client_rows(msg: pb.RoundReport) -> list[dict[str, Any]]:
    """The `client_rounds` rows of a report: every node it names, in node id order."""
    failed = _reasons_by_node(msg.failures)
    rejected = _reasons_by_node(msg.rejected)
    participants = set(msg.participants)
    skipped = set(msg.non_participants)
    nodes = set(msg.clients) | participants | skipped | set(failed) | set(rejected)
    return [
        {
            "run_id": msg.run_id,
            "round": msg.round,
            "node_id": str(node),
            "participated": int(node in participants),
            "skipped": int(node in skipped),
            # A node named only in a list has no ClientRound: its share is the defaults.
            **_columns(msg.clients[node] if node in msg.clients else pb.ClientRound()),
            "failure_reason": failed.get(node),
            "rejected_reason": rejected.get(node),
        }
        for node in sorted(nodes)
    ]


def _columns(msg: Message, skip: Collection[str] = ()) -> dict[str, Any]:
    """Column values of `msg`'s fields by name, read from its descriptor (telemetry.proto).

    A scalar as it is; an unset `optional` field as NULL; a repeated field or a map as JSON,
    with uint64 values (node ids) as decimal text and map entries sorted by key.
    """
    columns: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        value = getattr(msg, field.name)
        if field.is_repeated:
            columns[field.name] = json.dumps(_json(field, value))
        elif field.has_presence and not msg.HasField(field.name):
            columns[field.name] = None
        else:
            columns[field.name] = value
    return columns


def _json(field: FieldDescriptor, value: Any) -> Any:
    """`value` of `field` as JSON-ready data; uint64s as text (SQLite and JavaScript lose them)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        item = field.message_type.fields_by_name["value"]
        return {str(k): _json_item(item, v) for k, v in sorted(value.items())}
    if field.is_repeated:
        return [_json_item(field, v) for v in value]
    return _json_item(field, value)


def _json_item(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return {f.name: _json(f, getattr(value, f.name)) for f in field.message_type.fields}
    if field.cpp_type == FieldDescriptor.CPPTYPE_UINT64:
        return str(value)
    return value


def _reasons_by_node(items: Any) -> dict[int, str]:
    reasons: dict[int, list[str]] = {}
    for item in items:
        reasons.setdefault(item.node_id, []).append(item.reason)
    return {node: "; ".join(texts) for node, texts in reasons.items()}
