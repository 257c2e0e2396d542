"""The SQLite store: WAL mode, idempotent writes, history that survives a restart."""

from __future__ import annotations

from pathlib import Path

from proto import telemetry_pb2 as pb
from server.monitor.store import Store
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
