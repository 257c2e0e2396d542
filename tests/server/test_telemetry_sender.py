"""TelemetrySender against a real monitor process that is away, comes back, or refuses."""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
import httpx
import pytest

from cli.processes import free_port
from server.telemetry import FINAL_DELIVERY_SECONDS, Telemetry
from server.telemetry.sender import MAX_FAULT_ATTEMPTS, TelemetrySender
from tests.monitor.conftest import INGEST_TOKEN, stop_monitor
from tests.monitor.sample_runs import ACCURACY, sample_run

FAST = {"backoff_initial": 0.05, "backoff_max": 0.3, "rpc_timeout": 2.0}


def _sender(port: int, token: str = INGEST_TOKEN, **kwargs: object) -> TelemetrySender:
    return TelemetrySender(f"127.0.0.1:{port}", token, **{**FAST, **kwargs})


def _wait_for_retries(sender: TelemetrySender, at_least: int = 2) -> None:
    deadline = time.monotonic() + 10
    while sender.stats.retries < at_least:
        assert time.monotonic() < deadline, sender.stats
        time.sleep(0.02)


def test_reports_wait_while_the_monitor_is_down_and_arrive_when_it_returns(monitor_service):
    port = free_port()
    sender = _sender(port, max_queue=50)
    run = sample_run("outage-run", rounds=8)
    try:
        started = time.perf_counter()
        for msg in run.messages:
            sender.send(msg)
        assert time.perf_counter() - started < 0.05  # send never waits for the network
        _wait_for_retries(sender)
        assert (sender.stats.queued, sender.stats.delivered) == (11, 0)  # start, 9 rounds, end

        monitor = monitor_service(grpc_port=port)
        assert sender.flush(timeout=20), sender.stats
        stats = sender.stats
        assert (stats.delivered, stats.dropped, stats.refused, stats.queued) == (11, 0, 0, 0)
    finally:
        final = sender.close(timeout=1)
    assert final.abandoned == 0
    rounds = httpx.get(f"{monitor.http_url}/api/runs/outage-run/rounds").json()
    assert [r["accuracy"] for r in rounds] == list(ACCURACY[:9])
    assert httpx.get(f"{monitor.http_url}/api/runs/outage-run").json()["status"] == "finished"


def test_overflow_drops_the_oldest_and_counts_them(monitor_service):
    port = free_port()
    sender = _sender(port, max_queue=4)
    run = sample_run("overflow-run", rounds=9, finished=False)
    try:
        for msg in run.rounds:  # rounds 0..9, ten reports into a queue of four
            sender.send(msg)
        _wait_for_retries(sender)
        assert sender.stats.dropped == 6 and sender.stats.queued == 4
        monitor = monitor_service(grpc_port=port)
        assert sender.flush(timeout=20), sender.stats
    finally:
        final = sender.close(timeout=1)
    assert (final.delivered, final.dropped, final.abandoned) == (4, 6, 0)
    rounds = httpx.get(f"{monitor.http_url}/api/runs/overflow-run/rounds").json()
    assert [r["round"] for r in rounds] == [6, 7, 8, 9]


def test_refused_reports_are_counted_not_retried(shared_monitor):
    port = int(shared_monitor.grpc_address.rpartition(":")[2])
    sender = _sender(port, token="not-the-token")
    try:
        sender.send(sample_run("refused-by-token").started)
        assert sender.flush(timeout=10)
    finally:
        final = sender.close(timeout=1)
    assert (final.refused, final.delivered, final.retries) == (1, 0, 0)
    status = httpx.get(f"{shared_monitor.http_url}/api/runs/refused-by-token").status_code
    assert status == 404


def test_close_gives_up_in_time_and_nothing_raises_afterwards():
    sender = _sender(free_port(), rpc_timeout=5.0)
    for msg in sample_run("never-delivered", rounds=2).messages:
        sender.send(msg)
    started = time.monotonic()
    final = sender.close(timeout=0.5)
    assert time.monotonic() - started < 3
    assert (final.abandoned, final.delivered, final.queued) == (5, 0, 0)
    sender.send(sample_run().started)  # after close: counted, never raised
    sender.send("not a report")  # type: ignore[arg-type]
    assert sender.stats.abandoned == 6
    assert sender.close(timeout=0.1).abandoned == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "localhost"}, "address='localhost' is not allowed; allowed: 'host:port'"),
        ({"max_queue": 0}, "max_queue=0 is not allowed; allowed: ≥ 1 reports"),
        ({"rpc_timeout": 0}, "rpc_timeout=0 is not allowed"),
        ({"backoff_initial": 2.0, "backoff_max": 1.0}, "0 < backoff_initial ≤ backoff_max"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    arguments = {"address": "127.0.0.1:1", "token": "t", **kwargs}
    with pytest.raises(ValueError) as info:
        TelemetrySender(**arguments)
    assert message in str(info.value)


def test_the_final_state_arrives_when_the_monitor_returns_after_the_run(
    monitor_service, tmp_path, caplog
) -> None:
    """The monitor is down at the end of a run and back 8 s later on the same database."""
    database = tmp_path / "outage.sqlite"
    monitor = monitor_service(database=database)
    port = int(monitor.grpc_address.rpartition(":")[2])
    run = sample_run("late-finish", rounds=3)
    telemetry = Telemetry(TelemetrySender(monitor.grpc_address, INGEST_TOKEN), "late-finish")
    for msg in run.messages[:-1]:  # RunStarted and rounds 0..3: delivered
        telemetry.sender.send(msg)
    assert telemetry.sender.flush(timeout=20), telemetry.sender.stats
    stop_monitor(monitor)

    finishing = threading.Thread(target=telemetry.finish, kwargs={"failed": False})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="server.telemetry"):
        finishing.start()  # RunFinished is queued while nobody listens
        time.sleep(8.0)  # longer than the old 5 s limit after which it was dropped
    assert finishing.is_alive() and telemetry.sender.stats.queued == 1
    assert "trying for up to 60 s more to deliver the 1 still queued" in caplog.text
    assert telemetry.sender.stats.delivered == 5
    again = monitor_service(database=database, grpc_port=port)
    finishing.join(FINAL_DELIVERY_SECONDS)
    assert not finishing.is_alive()
    assert time.monotonic() - started < FINAL_DELIVERY_SECONDS
    final = telemetry.sender.stats
    assert (final.delivered, final.abandoned, final.refused, final.queued) == (6, 0, 0, 0)
    detail = httpx.get(f"{again.http_url}/api/runs/late-finish").json()
    assert (detail["status"], detail["rounds_done"]) == ("finished", 3)


def test_an_invalid_report_is_refused_once_and_logged(shared_monitor, caplog) -> None:
    port = int(shared_monitor.grpc_address.rpartition(":")[2])
    sender = _sender(port)
    report = sample_run("invalid-once").rounds[1]
    report.bytes_up = report.cum_bytes_up = 2**63  # was UNKNOWN, retried forever
    try:
        with caplog.at_level(logging.WARNING, logger="server.telemetry.sender"):
            sender.send(report)
            sender.send(sample_run("invalid-once").rounds[2])  # the next one still goes
            assert sender.flush(timeout=10), sender.stats
    finally:
        final = sender.close(timeout=1)
    assert (final.refused, final.delivered, final.retries) == (1, 1, 0)
    (line,) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert "INVALID_ARGUMENT: RoundReport.bytes_up=9223372036854775808 is not allowed" in line
    assert "refused round_report of run 'invalid-once'" in shared_monitor.log()


def test_a_report_over_the_size_limit_is_refused_before_it_is_sent(shared_monitor) -> None:
    port = int(shared_monitor.grpc_address.rpartition(":")[2])
    sender = _sender(port)
    report = sample_run("too-large").rounds[1]
    report.participants.extend(range(2**63, 2**63 + 500_000))  # 5 MB
    try:
        sender.send(report)
        assert sender.flush(timeout=5)
    finally:
        final = sender.close(timeout=1)
    assert (final.refused, final.delivered, final.retries) == (1, 0, 0)


def test_a_monitor_fault_is_tried_three_times_then_dropped() -> None:
    """A stand-in for a monitor with a bug: every call answered INTERNAL."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    calls: list[str] = []

    def internal(_request: bytes, context: grpc.ServicerContext) -> None:
        calls.append("ReportRound")
        context.abort(grpc.StatusCode.INTERNAL, "the monitor failed")

    handler = grpc.method_handlers_generic_handler(
        "fedq.telemetry.v1.Telemetry",
        {"ReportRound": grpc.unary_unary_rpc_method_handler(internal)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sender = _sender(port, heartbeat=0)
    try:
        sender.send(sample_run("faulty").rounds[0])
        assert sender.flush(timeout=10), sender.stats
    finally:
        final = sender.close(timeout=1)
        server.stop(0)
    assert len(calls) == MAX_FAULT_ATTEMPTS
    assert (final.refused, final.retries, final.delivered) == (1, MAX_FAULT_ATTEMPTS - 1, 0)
