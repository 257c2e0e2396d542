"""Reports that once broke the monitor, sent for real: over gRPC to `python -m monitor`.

Each case is from the reliability issue: a round naming 10**6 participants, byte counts near
SQLite's int64, values of 2**63 and more, a deeply nested configuration, NaN and infinite
metrics, a broken database behind /healthz, a ServerApp that dies mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import httpx
import pytest

from monitor.validation import MAX_CONFIG_DEPTH
from proto import telemetry_pb2 as pb
from proto import telemetry_pb2_grpc as pb_grpc
from proto.telemetry_limits import MAX_COUNT, MAX_NODES_PER_ROUND, MAX_REPORT_BYTES
from tests.monitor.conftest import INGEST_TOKEN, REPO_ROOT, MonitorProcess
from tests.monitor.sample_runs import sample_run

AUTH = (("authorization", f"Bearer {INGEST_TOKEN}"),)
READ_PATHS = ("", "/rounds", "/clients")


def _call(monitor: MonitorProcess, method: str, msg, timeout: float = 30.0) -> grpc.StatusCode:
    """Send one message; the status code it was answered with (OK when accepted)."""
    with grpc.insecure_channel(monitor.grpc_address) as channel:
        stub = pb_grpc.TelemetryStub(channel)
        try:
            getattr(stub, method)(msg, metadata=AUTH, timeout=timeout)
        except grpc.RpcError as exc:
            _call.details = exc.details()  # type: ignore[attr-defined]
            return exc.code()
    _call.details = ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK


def _details() -> str:
    return _call.details  # type: ignore[attr-defined]


def _database_bytes(database: Path) -> int:
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*"))


def _api_is_whole(monitor: MonitorProcess, run_id: str | None = None) -> None:
    """Every read endpoint answers 200 (and a run's own endpoints, when given)."""
    assert httpx.get(f"{monitor.http_url}/healthz").status_code == 200
    assert httpx.get(f"{monitor.http_url}/api/runs").status_code == 200
    assert httpx.get(f"{monitor.http_url}/metrics").status_code == 200
    for tail in READ_PATHS if run_id else ():
        response = httpx.get(f"{monitor.http_url}/api/runs/{run_id}{tail}", timeout=30)
        assert response.status_code == 200, (tail, response.text)


def _round(run_id: str, r: int = 1) -> pb.RoundReport:
    report = pb.RoundReport()
    report.CopyFrom(sample_run(run_id, rounds=max(r, 1)).rounds[r])
    return report


@pytest.mark.parametrize(
    ("first_node", "code", "reason"),
    [
        # Small node ids: 3 MB on the wire, parsed, then refused by the bound on the list.
        (1, grpc.StatusCode.INVALID_ARGUMENT, "RoundReport.participants='1000000 entries'"),
        # Flower's random 64-bit ids: 10 MB, refused by gRPC before it is parsed.
        (2**63, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ],
)
def test_a_million_participants_is_refused_quickly_without_growing_the_database(
    shared_monitor, first_node: int, code: grpc.StatusCode, reason: str
) -> None:
    report = _round("million-participants")
    del report.participants[:]
    report.clients.clear()
    report.participants.extend(range(first_node, first_node + 10**6))
    before = _database_bytes(shared_monitor.database)
    started = time.monotonic()
    assert _call(shared_monitor, "ReportRound", report) == code
    assert time.monotonic() - started < 5.0
    assert reason in _details()
    assert _database_bytes(shared_monitor.database) == before
    assert httpx.get(f"{shared_monitor.http_url}/api/runs/million-participants").status_code == 404
    _api_is_whole(shared_monitor)


def test_a_round_of_the_largest_allowed_federation_is_stored_and_read(shared_monitor) -> None:
    report = _round("ten-thousand-clients")
    del report.participants[:]
    report.clients.clear()
    nodes = range(2**62, 2**62 + MAX_NODES_PER_ROUND)
    report.participants.extend(nodes)
    for node in nodes:
        report.clients[node].bytes_up = 1000
        report.clients[node].client_id = f"client-{node - 2**62}"
    assert report.ByteSize() < MAX_REPORT_BYTES
    assert _call(shared_monitor, "ReportRound", report) == grpc.StatusCode.OK, _details()
    clients = httpx.get(f"{shared_monitor.http_url}/api/runs/ten-thousand-clients/clients").json()
    assert len(clients) == MAX_NODES_PER_ROUND
    report.participants.append(2**62 + MAX_NODES_PER_ROUND)  # one more is refused, and says so
    assert _call(shared_monitor, "ReportRound", report) == grpc.StatusCode.INVALID_ARGUMENT
    assert _details() == (
        "RoundReport.participants='10001 entries' is not allowed; allowed: at most 10000"
    )
    _api_is_whole(shared_monitor, "ten-thousand-clients")


def test_byte_counts_near_int64_are_refused_and_sums_cannot_overflow(shared_monitor) -> None:
    run_id = "near-int64"
    for r in (1, 2):  # the two reports of 2**62 + 2**61 bytes: 500 ever after
        report = _round(run_id, r)
        report.bytes_up = report.cum_bytes_up = 2**62 + 2**61
        assert _call(shared_monitor, "ReportRound", report) == grpc.StatusCode.INVALID_ARGUMENT
        assert _details().startswith("RoundReport.bytes_up=6917529027641081856 is not allowed")
        assert f"≤ {MAX_COUNT} (2^53 - 1)" in _details()
    # At the bound, a thousand and more rounds sum past 2**63 without an overflow.
    rounds = 1100
    for r in range(rounds):
        report = pb.RoundReport(run_id=run_id, round=r, time=1.7e9 + r)
        report.bytes_up = report.cum_bytes_up = MAX_COUNT
        assert _call(shared_monitor, "ReportRound", report) == grpc.StatusCode.OK, _details()
    _api_is_whole(shared_monitor, run_id)
    totals = httpx.get(f"{shared_monitor.http_url}/api/runs/{run_id}").json()["totals"]
    assert totals["bytes_up"] == float(MAX_COUNT) * rounds > 2**63
    metrics = httpx.get(f"{shared_monitor.http_url}/metrics").text
    assert f'fedq_run_bytes_up_total{{run_id="{run_id}",strategy=""}} 9.9079' in metrics


@pytest.mark.parametrize(
    ("method", "build", "field"),
    [
        ("ReportRound", lambda m: setattr(m, "bytes_up", 2**63), "bytes_up"),
        ("ReportRound", lambda m: setattr(m, "cum_fp32_bytes_down", 2**64 - 1), "cum_fp32_bytes"),
        ("ReportRound", lambda m: setattr(m.clients[5], "num_examples", 2**63), "num_examples"),
        ("ReportRound", lambda m: setattr(m.clients[5], "bytes_down", 2**63), "bytes_down"),
        ("StartRun", lambda m: setattr(m, "num_parameters", 2**64 - 1), "num_parameters"),
        ("StartRun", lambda m: setattr(m, "clients_expected", 2**32 - 1), "clients_expected"),
        ("StartRun", lambda m: setattr(m, "time", 1e300), "RunStarted.time"),
    ],
)
def test_values_of_2_63_and_more_are_refused_as_invalid(
    shared_monitor, method: str, build, field: str
) -> None:
    msg = _round("huge-values") if method == "ReportRound" else sample_run("huge-values").started
    build(msg)
    assert _call(shared_monitor, method, msg) == grpc.StatusCode.INVALID_ARGUMENT
    assert field in _details() and "\n" not in _details()
    assert httpx.get(f"{shared_monitor.http_url}/api/runs/huge-values").status_code == 404


@pytest.mark.parametrize(
    "config_json",
    [
        "[" * 20_000 + "]" * 20_000,  # past Python's recursion limit
        '{"a": ' * 5_000 + "1" + "}" * 5_000,
        '{"a": ' * (MAX_CONFIG_DEPTH + 1) + "1" + "}" * (MAX_CONFIG_DEPTH + 1),
        '{"lr": NaN}',
        '{"lr": Infinity}',
        '{"lr": 1e999}',
        '{"n": ' + "9" * 5_000 + "}",
        '["not", "an", "object"]',
    ],
)
def test_bad_configurations_are_refused_as_invalid(shared_monitor, config_json: str) -> None:
    started = sample_run("bad-config").started
    started.config_json = config_json
    assert _call(shared_monitor, "StartRun", started) == grpc.StatusCode.INVALID_ARGUMENT
    assert _details().startswith("RunStarted.config_json=")
    assert "a JSON object of finite numbers, nested at most 8 deep" in _details()


def test_a_configuration_nested_to_the_limit_is_stored(shared_monitor) -> None:
    started = sample_run("deep-config").started
    started.config_json = '{"a": ' * MAX_CONFIG_DEPTH + "1" + "}" * MAX_CONFIG_DEPTH
    assert _call(shared_monitor, "StartRun", started) == grpc.StatusCode.OK, _details()
    _api_is_whole(shared_monitor, "deep-config")


def test_non_finite_metrics_are_recorded_not_dropped(shared_monitor) -> None:
    run = sample_run("non-finite", rounds=3, finished=False)
    run.rounds[2].loss = float("nan")
    run.rounds[2].train_loss = float("inf")
    run.rounds[2].figures["consensus_distance"] = float("nan")
    node = next(iter(run.rounds[2].clients))
    run.rounds[2].clients[node].train_loss = float("-inf")
    run.rounds[2].clients[node].figures["fedau_weight"] = float("inf")
    run.rounds[3].accuracy = float("inf")
    for msg, method in [(run.started, "StartRun")] + [(m, "ReportRound") for m in run.rounds]:
        assert _call(shared_monitor, method, msg) == grpc.StatusCode.OK, _details()
    _api_is_whole(shared_monitor, "non-finite")
    rounds = httpx.get(f"{shared_monitor.http_url}/api/runs/non-finite/rounds").json()
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]  # no round dropped
    assert rounds[2]["loss"] is None and rounds[2]["train_loss"] is None
    assert "consensus_distance" not in rounds[2]["figures"]
    assert rounds[2]["non_finite"] == [
        "loss",
        "train_loss",
        "figures.consensus_distance",
        f"clients.{node}.train_loss",
        f"clients.{node}.figures.fedau_weight",
    ]
    assert rounds[3]["accuracy"] is None and rounds[3]["non_finite"] == ["accuracy"]
    assert rounds[3]["loss"] == pytest.approx(run.rounds[3].loss)
    assert [r["non_finite"] for r in rounds[:2]] == [[], []]
    (client,) = [
        c
        for c in httpx.get(f"{shared_monitor.http_url}/api/runs/non-finite/clients").json()
        if c["node_id"] == str(node)
    ]
    assert client["rounds_seen"] == 3


def test_healthz_is_503_when_the_database_is_broken(monitor_service, tmp_path: Path) -> None:
    monitor = monitor_service(database=tmp_path / "broken.sqlite")
    assert _call(monitor, "StartRun", sample_run("before").started) == grpc.StatusCode.OK
    assert httpx.get(f"{monitor.http_url}/healthz").json() == {"status": "ok", "database": "ok"}
    with sqlite3.connect(monitor.database) as db:  # another process damages the schema
        db.execute("DROP TABLE client_rounds")
    response = httpx.get(f"{monitor.http_url}/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "database": "unavailable"}
    # A report it cannot store is UNAVAILABLE (the sender keeps it), and logged.
    assert _call(monitor, "ReportRound", _round("before")) == grpc.StatusCode.UNAVAILABLE
    assert "the monitor's database failed" in _details()
    assert "could not store round_report of run before" in monitor.log()


_DYING_SERVER_APP = textwrap.dedent(
    """
    import sys, time
    from server.telemetry.sender import TelemetrySender
    from tests.monitor.sample_runs import sample_run

    sender = TelemetrySender(sys.argv[1], sys.argv[2], heartbeat=0.25, backoff_max=0.5)
    run = sample_run("dies-mid-run", rounds=4, finished=False)
    for msg in run.messages[:3]:
        sender.send(msg)
    sender.flush(10)
    print("reported", flush=True)
    time.sleep(600)  # killed here, as a ServerApp that dies
    """
)


def test_a_run_whose_server_app_died_is_stale_not_running(monitor_service) -> None:
    monitor = monitor_service()
    argv = [sys.executable, "-c", _DYING_SERVER_APP, monitor.grpc_address, INGEST_TOKEN]
    server_app = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server_app.stdout is not None
        assert server_app.stdout.readline().strip() == "reported"
        time.sleep(1.5)  # heartbeats keep it running for 1 s after the rounds (4 x 0.25 s)
        assert _run(monitor, "dies-mid-run")["status"] == "running"
    finally:
        os.kill(server_app.pid, signal.SIGKILL)
        server_app.wait(10)
    _wait_for(lambda: _run(monitor, "dies-mid-run")["status"] == "stale", timeout=10)
    listed = httpx.get(f"{monitor.http_url}/api/runs", params={"status": "stale"}).json()
    assert [r["run_id"] for r in listed] == ["dies-mid-run"]
    assert 'fedq_monitor_runs{status="stale"} 1.0' in httpx.get(f"{monitor.http_url}/metrics").text
    # A stale run that reports again is running again; one that finishes is finished.
    assert _call(monitor, "ReportRound", _round("dies-mid-run", 3)) == grpc.StatusCode.OK
    assert _run(monitor, "dies-mid-run")["status"] == "running"
    finished = pb.RunFinished(run_id="dies-mid-run", time=2e9, status=pb.RUN_STATUS_FAILED)
    assert _call(monitor, "FinishRun", finished) == grpc.StatusCode.OK
    assert _run(monitor, "dies-mid-run")["status"] == "failed"


def test_a_run_without_heartbeats_is_stale_after_the_configured_time(monitor_service) -> None:
    monitor = monitor_service(env={"FEDQ_MONITOR_STALE_AFTER": "1"})
    assert _call(monitor, "StartRun", sample_run("quiet").started) == grpc.StatusCode.OK
    assert _run(monitor, "quiet")["status"] == "running"
    _wait_for(lambda: _run(monitor, "quiet")["status"] == "stale", timeout=10)


@pytest.mark.parametrize("run_id", ["run-1\n", "run-1\r", "run 1", "-run"])
def test_run_ids_are_matched_whole(shared_monitor, run_id: str) -> None:
    started = sample_run(run_id).started
    assert _call(shared_monitor, "StartRun", started) == grpc.StatusCode.INVALID_ARGUMENT
    assert _details().startswith("RunStarted.run_id=")


def test_heartbeats_are_checked_and_an_unknown_run_stores_nothing(shared_monitor) -> None:
    alive = pb.RunAlive(run_id="never-started", time=1.7e9, interval_seconds=1.0)
    assert _call(shared_monitor, "Heartbeat", alive) == grpc.StatusCode.OK
    assert httpx.get(f"{shared_monitor.http_url}/api/runs/never-started").status_code == 404
    alive.interval_seconds = 0.0
    assert _call(shared_monitor, "Heartbeat", alive) == grpc.StatusCode.INVALID_ARGUMENT
    assert _details().startswith("RunAlive.interval_seconds=0.0 is not allowed; allowed: 0.1 ≤")


def _run(monitor: MonitorProcess, run_id: str) -> dict:
    return httpx.get(f"{monitor.http_url}/api/runs/{run_id}").json()


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_bytes_that_are_no_report_are_refused_and_change_nothing(shared_monitor) -> None:
    with grpc.insecure_channel(shared_monitor.grpc_address) as channel:
        call = channel.unary_unary("/fedq.telemetry.v1.Telemetry/ReportRound")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff", metadata=AUTH, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    _api_is_whole(shared_monitor)
    assert json.loads(httpx.get(f"{shared_monitor.http_url}/healthz").text)["status"] == "ok"
