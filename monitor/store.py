"""The monitor's history in SQLite (WAL mode): runs, rounds and each client's share of a round.

Node ids are Flower's uint64 ids; SQLite integers are signed 64-bit, so they are stored as
decimal text. Every write replaces what an earlier copy of the same report wrote, which makes
the sender's retries harmless.

Writes go through one connection behind a lock; every reading thread has a read-only
connection of its own, so in WAL mode a read sees the last committed state at once and never
waits behind a write in progress. Sums over rounds are taken with TOTAL (a double), so no
history can overflow SQLite's int64. A NaN or infinite metric is stored as NULL and named in
the round's `non_finite` list.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
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
    client_from_sql,
    round_from_sql,
    run_from_sql,
)
from monitor.validation import ROUND_METRICS, non_finite_fields
from proto import telemetry_pb2 as pb

# 2: runs.name and client_rounds.client_id; 3: runs.seen_at and runs.heartbeat_seconds (stale
# runs), rounds.non_finite. Databases of older versions are upgraded on open.
SCHEMA_VERSION = 3
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE runs ADD COLUMN name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE client_rounds ADD COLUMN client_id TEXT NOT NULL DEFAULT ''",
    ),
    3: (
        "ALTER TABLE runs ADD COLUMN seen_at REAL",
        "ALTER TABLE runs ADD COLUMN heartbeat_seconds REAL",
        "ALTER TABLE rounds ADD COLUMN non_finite TEXT NOT NULL DEFAULT '[]'",
    ),
}
# "stale": stored as running, but not heard from for too long (computed when read).
RUN_STATUSES = ("running", "stale", "finished", "failed")
# A run that sends heartbeats is stale after this many of its intervals without a message.
STALE_HEARTBEATS = 4
# A run that sends none (an older ServerApp) is stale after this long without one, seconds.
DEFAULT_STALE_AFTER_SECONDS = 1800.0
# Runs whose client lists are kept until their next round (a dashboard re-reads them often).
CLIENTS_CACHE_RUNS = 16
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
    name TEXT NOT NULL DEFAULT '',
    seen_at REAL,
    heartbeat_seconds REAL
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
    non_finite TEXT NOT NULL DEFAULT '[]',
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
CREATE INDEX IF NOT EXISTS client_rounds_by_node_round
    ON client_rounds (run_id, node_id, round);
DROP INDEX IF EXISTS client_rounds_by_node;
"""

# Each client of a run over all its rounds, summed in SQLite (one pass, no per-row Python);
# a "latest" column reads, by index, the node's newest round that has a value.
_LATEST = """(SELECT {column} FROM client_rounds l
    WHERE l.run_id = c.run_id AND l.node_id = c.node_id AND {column} IS NOT NULL {extra}
    ORDER BY l.round DESC LIMIT 1)"""
_REASON = "COALESCE(l.rejected_reason, l.failure_reason)"  # a rejection says more
_CLIENT_QUERY = """
SELECT s.*,
    (SELECT time FROM rounds x WHERE x.run_id = :run_id AND x.round = s.last_seen_round)
        AS last_seen_at
FROM (
    SELECT c.node_id,
        COUNT(*) AS rounds_seen,
        SUM(c.participated) AS rounds_participated,
        MAX(CASE WHEN c.participated THEN c.round END) AS last_seen_round,
        TOTAL(c.bytes_up) AS bytes_up,
        TOTAL(c.bytes_down) AS bytes_down,
        COUNT(c.failure_reason) AS failures,
        COUNT(c.rejected_reason) AS rejections,
        {client_id} AS client_id,
        {num_examples} AS num_examples,
        {train_loss} AS train_loss,
        {figures} AS figures,
        {last_reason} AS last_reason
    FROM client_rounds c
    WHERE c.run_id = :run_id
    GROUP BY c.node_id
) s
""".format(
    client_id=_LATEST.format(column="l.client_id", extra="AND l.client_id != ''"),
    num_examples=_LATEST.format(column="l.num_examples", extra=""),
    train_loss=_LATEST.format(column="l.train_loss", extra=""),
    figures=_LATEST.format(column="l.figures", extra="AND l.figures != '{}'"),
    last_reason=_LATEST.format(column=_REASON, extra=""),
)

# A run's status as shown: a running run not heard from (by the monitor's clock) for
# STALE_HEARTBEATS of its heartbeat intervals, or :stale_after seconds without heartbeats, is
# "stale". Named parameters :now, :missed and :stale_after.
_STATUS = """CASE WHEN r.status = 'running' AND :now - COALESCE(r.seen_at, r.updated_at) >
    CASE WHEN r.heartbeat_seconds > 0 THEN :missed * r.heartbeat_seconds ELSE :stale_after END
    THEN 'stale' ELSE r.status END"""

# One row per run with its totals; `{where}` and `{order}` are filled from fixed strings only.
# TOTAL sums as a double: it cannot overflow, where SUM of large byte counts could.
_RUN_QUERY = """
SELECT r.*, {status} AS shown_status,
    COUNT(x.round) AS rounds_reported,
    COALESCE(MAX(x.round), 0) AS rounds_done,
    MAX(x.time) AS last_report_at,
    MAX(x.elapsed_seconds) AS elapsed_seconds,
    MAX(x.accuracy) AS best_accuracy,
    MAX(COALESCE(MAX(x.cum_bytes_up), 0), TOTAL(x.bytes_up)) AS bytes_up,
    MAX(COALESCE(MAX(x.cum_bytes_down), 0), TOTAL(x.bytes_down)) AS bytes_down,
    MAX(COALESCE(MAX(x.cum_fp32_bytes_up), 0), TOTAL(x.fp32_bytes_up)) AS fp32_bytes_up,
    MAX(COALESCE(MAX(x.cum_fp32_bytes_down), 0), TOTAL(x.fp32_bytes_down)) AS fp32_bytes_down,
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
    refused (ConfigError), since this monitor would not know its columns. A running run
    that sends no heartbeats is shown stale after `stale_after` seconds without a message.
    """

    def __init__(self, path: Path, stale_after: float = DEFAULT_STALE_AFTER_SECONDS) -> None:
        self.path = path
        self.stale_after = stale_after
        path.parent.mkdir(parents=True, exist_ok=True)
        # The one writing connection, behind a lock (the gRPC threads share it).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        # Read-only connections, one per reading thread, all closed by close().
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        # Rounds stored per run by this process; a cached client list of an older count is
        # out of date. One thread computes a run's client list at a time (`_computing`).
        self._rounds_written: dict[str, int] = {}
        self._clients_cache: dict[str, tuple[int, list[ClientRow]]] = {}
        self._computing: set[str] = set()
        self._clients_cond = threading.Condition()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            _migrate(self._db, path)

    def close(self) -> None:
        """Close the database and every reading connection; later calls fail."""
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        """True when every table of the database answers a trivial query."""
        try:
            reader = self._reader()
            for table in ("runs", "rounds", "client_rounds"):
                reader.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except sqlite3.Error:
            return False
        return True

    def journal_mode(self) -> str:
        """SQLite's journal mode of this database ("wal")."""
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use)."""
        reader: sqlite3.Connection | None = getattr(self._local, "db", None)
        if reader is not None:
            return reader
        with self._readers_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the store is closed")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            reader = sqlite3.connect(uri, uri=True, check_same_thread=False)
            reader.row_factory = sqlite3.Row
            reader.execute("PRAGMA busy_timeout=5000")
            self._readers.append(reader)
        self._local.db = reader
        return reader

    def _status_params(self) -> dict[str, float]:
        return {"now": time.time(), "missed": STALE_HEARTBEATS, "stale_after": self.stale_after}

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The writing connection inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
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
        """Record a run's start and configuration (again, if it was seen before).

        A run seen before that starts again is a resumed one (`fedq resume`): it is
        running again, whatever it ended as, and keeps its first start time.
        """
        with self._transaction() as db:
            _ensure_run(db, msg.run_id, msg.time)
            db.execute(
                "UPDATE runs SET name = ?, strategy = ?, model = ?, num_parameters = ?, "
                "clients_expected = ?, config_json = ?, started_at = COALESCE(started_at, ?), "
                "updated_at = ?, seen_at = ?, status = 'running', reason = '', "
                "finished_at = NULL WHERE run_id = ?",
                (
                    msg.name,
                    msg.strategy,
                    msg.model,
                    msg.num_parameters,
                    msg.clients_expected,
                    msg.config_json or "{}",
                    msg.time,
                    msg.time,
                    time.time(),
                    msg.run_id,
                ),
            )

    def record_round(self, msg: pb.RoundReport) -> None:
        """Store one round, replacing an earlier copy of the same (run, round)."""
        with self._transaction() as db:
            _ensure_run(db, msg.run_id, msg.time)
            db.execute("DELETE FROM rounds WHERE run_id = ? AND round = ?", (msg.run_id, msg.round))
            _insert(db, "rounds", [_round_columns(msg)])
            _insert(db, "client_rounds", _client_rows(msg))
            db.execute(
                "UPDATE runs SET updated_at = ?, seen_at = ? WHERE run_id = ?",
                (msg.time, time.time(), msg.run_id),
            )
        with self._lock:  # after the commit: a client list read from now on includes it
            self._rounds_written[msg.run_id] = self._rounds_written.get(msg.run_id, 0) + 1

    def finish_run(self, msg: pb.RunFinished) -> None:
        """Mark a run finished or failed, with the reason."""
        with self._transaction() as db:
            _ensure_run(db, msg.run_id, msg.time)
            db.execute(
                "UPDATE runs SET status = ?, reason = ?, finished_at = ?, updated_at = ?, "
                "seen_at = ? WHERE run_id = ?",
                (_STATUS_OF[msg.status], msg.reason, msg.time, msg.time, time.time(), msg.run_id),
            )

    def note_alive(self, msg: pb.RunAlive) -> bool:
        """Note a heartbeat of a known run; False (nothing stored) for a run never reported."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET seen_at = ?, heartbeat_seconds = ? WHERE run_id = ?",
                (time.time(), msg.interval_seconds, msg.run_id),
            )
            return cursor.rowcount > 0

    # -- reads --------------------------------------------------------------------------------

    def list_runs(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRow]:
        """Runs, newest start first, optionally only those with `status` (as shown)."""
        where = f"WHERE {_STATUS} = :status" if status else ""
        order = (
            "ORDER BY COALESCE(r.started_at, r.updated_at) DESC, r.run_id "
            "LIMIT :limit OFFSET :offset"
        )
        params = {**self._status_params(), "status": status, "limit": limit, "offset": offset}
        query = _RUN_QUERY.format(status=_STATUS, where=where, order=order)
        rows = self._reader().execute(query, params).fetchall()
        return [run_from_sql(row) for row in rows]

    def count_runs_by_status(self) -> dict[str, int]:
        """How many runs are running, stale, finished and failed."""
        rows = self._reader().execute(
            f"SELECT {_STATUS} AS shown, COUNT(*) FROM runs r GROUP BY shown",
            self._status_params(),
        )
        return {status: count for status, count in rows.fetchall()}

    def get_run(self, run_id: str) -> RunRow | None:
        """The run `run_id` with its totals, or None if it was never reported."""
        query = _RUN_QUERY.format(status=_STATUS, where="WHERE r.run_id = :run_id", order="")
        params = {**self._status_params(), "run_id": run_id}
        row = self._reader().execute(query, params).fetchone()
        return None if row is None else run_from_sql(row)

    def rounds(self, run_id: str, since: int = -1, limit: int | None = None) -> list[RoundRow]:
        """The run's rounds after round `since`, in order, at most `limit` of them."""
        rows = (
            self._reader()
            .execute(
                "SELECT * FROM rounds WHERE run_id = ? AND round > ? ORDER BY round LIMIT ?",
                (run_id, since, -1 if limit is None else limit),
            )
            .fetchall()
        )
        return [round_from_sql(row) for row in rows]

    def clients(self, run_id: str) -> list[ClientRow]:
        """Every client that appeared in any round of the run, ordered by node id.

        The list costs a pass over all the run's client rows, so it is kept until the run's
        next round, and one thread at a time computes a run's list: while it does, the others
        get the list before it (a round or so behind) rather than wait, or wait if there is
        none yet. Callers must not change the rows.
        """
        with self._clients_cond:
            while True:
                written = self._rounds_written.get(run_id, 0)
                cached = self._clients_cache.get(run_id)
                if cached is not None and (cached[0] == written or run_id in self._computing):
                    return cached[1]
                if run_id not in self._computing:
                    break
                self._clients_cond.wait()
            self._computing.add(run_id)
        clients: list[ClientRow] | None = None
        try:
            rows = self._reader().execute(_CLIENT_QUERY, {"run_id": run_id}).fetchall()
            clients = sorted((client_from_sql(r) for r in rows), key=lambda c: int(c.node_id))
        finally:
            with self._clients_cond:
                if clients is not None:
                    self._clients_cache.pop(run_id, None)
                    self._clients_cache[run_id] = (written, clients)
                    while len(self._clients_cache) > CLIENTS_CACHE_RUNS:
                        del self._clients_cache[next(iter(self._clients_cache))]
                self._computing.discard(run_id)
                self._clients_cond.notify_all()
        return clients


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


def _insert(db: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` (all with the same columns, in the same order) in one statement."""
    if not rows:
        return
    # Table and column names come from this module and the .proto, never from a report.
    columns = list(rows[0])
    marks = ", ".join("?" * len(columns))
    db.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
        [tuple(row[c] for c in columns) for row in rows],
    )


def _round_columns(msg: pb.RoundReport) -> dict[str, Any]:
    """The `rounds` row of a report: every RoundReport field but `clients` (client_rounds).

    A NaN or infinite metric becomes NULL (a figure is left out), and `non_finite` names it.
    """
    columns = _columns(msg, skip=_IN_OWN_TABLE)
    for name in ROUND_METRICS:
        columns[name] = _finite_or_none(columns[name])
    columns["figures"] = _finite_figures(msg.figures)
    columns["non_finite"] = json.dumps(non_finite_fields(msg))
    return columns


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _finite_figures(figures: Mapping[str, float]) -> str:
    """The figures as JSON, sorted by name, without the NaN and infinite ones."""
    return json.dumps({k: v for k, v in sorted(figures.items()) if math.isfinite(v)})


def _client_rows(msg: pb.RoundReport) -> list[dict[str, Any]]:
    """The `client_rounds` rows of a report: every node it names, in node id order."""
    failed = _reasons_by_node(msg.failures)
    rejected = _reasons_by_node(msg.rejected)
    participants = set(msg.participants)
    skipped = set(msg.non_participants)
    nodes = set(msg.clients) | participants | skipped | set(failed) | set(rejected)
    rows = []
    for node in sorted(nodes):
        # A node named only in a list has no ClientRound: its share is the defaults.
        client = msg.clients[node] if node in msg.clients else pb.ClientRound()
        columns = _columns(client)
        columns["train_loss"] = _finite_or_none(columns["train_loss"])
        columns["figures"] = _finite_figures(client.figures)
        rows.append(
            {
                "run_id": msg.run_id,
                "round": msg.round,
                "node_id": str(node),
                "participated": int(node in participants),
                "skipped": int(node in skipped),
                **columns,
                "failure_reason": failed.get(node),
                "rejected_reason": rejected.get(node),
            }
        )
    return rows


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
