"""The SQLite store: WAL mode, idempotent writes, restarts, any valid report read back exactly."""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedq.errors import ConfigError
from monitor.rows import ClientRow
from monitor.store import SCHEMA_VERSION, Store
from monitor.validation import check_round_report
from proto import telemetry_pb2 as pb
from tests.monitor.sample_runs import NODES, sample_run


def _fill(store: Store, run=None) -> None:
    run = run or sample_run()
    store.start_run(run.started)
    for report in run.rounds:
        store.record_round(report)
    if run.finished is not None:
        store.finish_run(run.finished)


def test_wal_mode_and_schema_on_a_new_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "sub" / "m.sqlite")
    try:
        assert store.journal_mode() == "wal"
        assert store.list_runs() == []
        assert store.ping()
    finally:
        store.close()


def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = Store(path)
    _fill(store)
    store.close()
    reopened = Store(path)
    try:
        run = reopened.get_run("20260101-120000-fedau-run7")
        assert run is not None and run.status == "finished"
        assert run.rounds_done == 8 and run.rounds_reported == 9
        assert [r.round for r in reopened.rounds(run.run_id)] == list(range(9))
    finally:
        reopened.close()


def test_a_version_1_database_is_upgraded_and_keeps_its_history(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    store = Store(path)
    _fill(store)
    store.close()
    # Version 1 is version 3 without the run name, the client ids, the columns of stale runs
    # (seen_at, heartbeat_seconds) and the rounds' non_finite.
    with sqlite3.connect(path) as db:
        for table, column in [
            ("runs", "name"),
            ("client_rounds", "client_id"),
            ("runs", "seen_at"),
            ("runs", "heartbeat_seconds"),
            ("rounds", "non_finite"),
        ]:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("PRAGMA user_version=1")
    upgraded = Store(path)
    try:
        run = upgraded.get_run("20260101-120000-fedau-run7")
        assert run is not None and run.name == "" and run.rounds_done == 8
        assert {c.client_id for c in upgraded.clients(run.run_id)} == {None}
        _fill(upgraded, sample_run("2", name="20260101-120000-fedau-run2"))
        assert upgraded.get_run("2").name == "20260101-120000-fedau-run2"
        assert [c.client_id for c in upgraded.clients("2")] == [f"client-{i}" for i in range(4)]
    finally:
        upgraded.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_database_of_a_newer_monitor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    try:
        Store(path).close()
    except ConfigError as exc:
        assert f"schema version {SCHEMA_VERSION + 1}" in str(exc)
    else:
        raise AssertionError("a newer database was opened")


def test_repeated_reports_replace_earlier_copies(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.sqlite")
    try:
        run = sample_run(finished=False)
        _fill(store, run)
        _fill(store, run)  # a sender retrying everything
        rows = store.rounds(run.started.run_id)
        assert len(rows) == 9
        clients = store.clients(run.started.run_id)
        assert [c.node_id for c in clients] == [str(n) for n in sorted(NODES)]
        assert sum(c.bytes_up for c in clients) == rows[-1].cum_bytes_up
    finally:
        store.close()


def test_a_round_without_run_started_creates_the_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.sqlite")
    try:
        report = sample_run().rounds[2]
        store.record_round(report)
        run = store.get_run(report.run_id)
        assert run is not None and run.status == "running" and run.strategy == ""
        store.finish_run(pb.RunFinished(run_id="orphan", time=1.0, status=pb.RUN_STATUS_FAILED))
        assert store.get_run("orphan").status == "failed"
    finally:
        store.close()


def test_node_ids_above_two_to_the_63_are_kept_exactly(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.sqlite")
    try:
        _fill(store)
        row = store.rounds("20260101-120000-fedau-run7", since=0, limit=1)[0]
        assert NODES[3] > 2**63
        assert row.participants == [str(n) for n in NODES]
    finally:
        store.close()


node_ids = st.integers(min_value=0, max_value=2**64 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
figure_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,20}\Z")
reasons = st.text(min_size=1, max_size=60)


@st.composite
def round_reports(draw: st.DrawFn) -> pb.RoundReport:
    """Arbitrary RoundReports that pass validation."""
    nodes = draw(st.lists(node_ids, unique=True, max_size=6))
    split = draw(st.integers(0, len(nodes)))
    counters = {n: draw(st.integers(0, 2**40)) for n in ("bytes_up", "bytes_down")}
    msg = pb.RoundReport(
        run_id=draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,30}\Z")),
        round=draw(st.integers(0, 1_000_000)),
        time=draw(st.floats(1.0, 4e9)),
        elapsed_seconds=draw(st.floats(0.0, 1e7)),
        participants=nodes[:split],
        non_participants=nodes[split:],
        failures=[pb.NodeReason(node_id=draw(node_ids), reason=draw(reasons))],
        rejected=[pb.NodeReason(node_id=n, reason=draw(reasons)) for n in nodes[:1]],
        figures=draw(st.dictionaries(figure_names, finite, max_size=3)),
        **counters,
        **{f"cum_{name}": value + draw(st.integers(0, 2**40)) for name, value in counters.items()},
    )
    if draw(st.booleans()):
        msg.accuracy = draw(st.floats(0.0, 1.0))
    for node in nodes:
        msg.clients[node].bytes_up = draw(st.integers(0, 2**40))
        msg.clients[node].figures.update(draw(st.dictionaries(figure_names, finite, max_size=2)))
    return msg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(report=round_reports())
def test_any_valid_report_is_stored_and_read_back_exactly(report: pb.RoundReport) -> None:
    check_round_report(report)
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory) / "m.sqlite")
        try:
            store.record_round(report)
            (row,) = store.rounds(report.run_id)
            clients = {c.node_id: c for c in store.clients(report.run_id)}
        finally:
            store.close()
    assert row.round == report.round and row.time == report.time
    assert row.accuracy == (report.accuracy if report.HasField("accuracy") else None)
    assert row.participants == [str(n) for n in report.participants]
    assert row.non_participants == [str(n) for n in report.non_participants]
    assert [(r.node_id, r.reason) for r in row.failures] == [
        (str(f.node_id), f.reason) for f in report.failures
    ]
    assert row.figures == dict(report.figures)
    assert all(math.isfinite(v) for v in row.figures.values())
    for node, client in report.clients.items():
        assert clients[str(node)].bytes_up == client.bytes_up
        assert clients[str(node)].figures == dict(client.figures)
    assert (row.bytes_up, row.cum_bytes_down) == (report.bytes_up, report.cum_bytes_down)


def test_reads_never_wait_behind_a_write_in_progress(tmp_path: Path) -> None:
    """A write holds the store's write lock and an open transaction; reads go on meanwhile."""
    store = Store(tmp_path / "m.sqlite")
    _fill(store)
    inside, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with store._transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, status, updated_at) VALUES ('uncommitted', 'running', 1)"
            )
            inside.set()
            release.wait(30)

    writer = threading.Thread(target=long_write)
    writer.start()
    try:
        assert inside.wait(10)
        started = time.monotonic()
        runs = store.list_runs()
        rounds = store.rounds("20260101-120000-fedau-run7")
        clients = store.clients("20260101-120000-fedau-run7")
        assert store.ping()
        elapsed = time.monotonic() - started
        # The reads saw the last committed state, and did not wait for the write to end.
        assert [r.run_id for r in runs] == ["20260101-120000-fedau-run7"]
        assert (len(rounds), len(clients)) == (9, 4)
        assert elapsed < 2.0 and writer.is_alive()
    finally:
        release.set()
        writer.join(10)
    try:
        assert {r.run_id for r in store.list_runs()} == {
            "20260101-120000-fedau-run7",
            "uncommitted",
        }
    finally:
        store.close()


def test_a_closed_store_fails_its_health_check_and_its_reads(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.sqlite")
    assert store.ping()
    store.close()
    assert not store.ping()
    with pytest.raises(sqlite3.Error):
        store.list_runs()


def test_a_client_list_is_kept_only_until_the_next_round(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.sqlite")
    try:
        run = sample_run(rounds=3)
        store.start_run(run.started)
        for report in run.rounds[:3]:
            store.record_round(report)
        first = store.clients(run.started.run_id)
        assert store.clients(run.started.run_id) is first  # shared until the next write
        store.record_round(run.rounds[3])
        again = store.clients(run.started.run_id)
        assert again is not first
        assert [c.rounds_seen for c in again] == [c.rounds_seen + 1 for c in first]
    finally:
        store.close()


def _fold_client_round(client: ClientRow, row: sqlite3.Row) -> None:
    """The monitor's former Python fold of one client_rounds row (rounds in order): the
    reference the SQL summary of Store.clients must agree with."""
    client.rounds_seen += 1
    if row["client_id"]:
        client.client_id = row["client_id"]
    client.bytes_up += row["bytes_up"]
    client.bytes_down += row["bytes_down"]
    if row["participated"]:
        client.rounds_participated += 1
        client.last_seen_round = row["round"]
        client.last_seen_at = row["time"]
    if row["num_examples"] is not None:
        client.num_examples = row["num_examples"]
    if row["train_loss"] is not None:
        client.train_loss = row["train_loss"]
    figures = json.loads(row["figures"])
    if figures:
        client.figures = figures
    for reason_column, counter in (
        ("failure_reason", "failures"),
        ("rejected_reason", "rejections"),
    ):
        if row[reason_column] is not None:
            setattr(client, counter, getattr(client, counter) + 1)
            client.last_reason = row[reason_column]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reports=st.lists(round_reports(), min_size=1, max_size=6), ids=st.data())
def test_client_sums_in_sql_agree_with_a_fold_over_the_rounds(reports, ids) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.sqlite"
        store = Store(path)
        try:
            for n, report in enumerate(reports):  # one run, rounds in any order, some twice
                report.run_id = "r"
                report.round = ids.draw(st.integers(0, 8), label=f"round of report {n}")
                if report.rejected and ids.draw(st.booleans(), label="failed and rejected"):
                    report.failures.add(node_id=report.rejected[0].node_id, reason="timeout")
                for node in report.clients:
                    report.clients[node].client_id = ids.draw(st.sampled_from(["", "c-1"]))
                    if ids.draw(st.booleans(), label="num_examples"):
                        report.clients[node].num_examples = 7 + n
                    if ids.draw(st.booleans(), label="train_loss"):
                        report.clients[node].train_loss = 0.5 + n
                store.record_round(report)
            summed = store.clients("r")
        finally:
            store.close()
        with sqlite3.connect(path) as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT c.*, x.time FROM client_rounds c JOIN rounds x "
                "ON x.run_id = c.run_id AND x.round = c.round WHERE c.run_id = 'r' ORDER BY c.round"
            ).fetchall()
    folded: dict[str, ClientRow] = {}
    for row in rows:
        _fold_client_round(folded.setdefault(row["node_id"], ClientRow(row["node_id"])), row)
    assert summed == [folded[node] for node in sorted(folded, key=int)]


def test_a_resumed_run_runs_again_under_its_first_start(tmp_path: Path) -> None:
    run = sample_run()
    store = Store(tmp_path / "m.sqlite")
    try:
        _fill(store, run)
        failed = pb.RunFinished()
        failed.CopyFrom(run.finished)
        failed.status = pb.RUN_STATUS_FAILED
        failed.reason = "the ServerApp was killed"
        store.finish_run(failed)
        before = store.get_run(run.started.run_id)
        assert before.status == "failed"
        again = pb.RunStarted()
        again.CopyFrom(run.started)
        again.time = run.started.time + 600.0  # `fedq resume`: the same run id, later
        store.start_run(again)
        resumed = store.get_run(run.started.run_id)
        assert (resumed.status, resumed.reason, resumed.finished_at) == ("running", "", None)
        assert resumed.started_at == before.started_at
        assert resumed.rounds_reported == before.rounds_reported  # earlier rounds are kept
    finally:
        store.close()
