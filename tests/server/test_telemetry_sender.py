"""TelemetrySender against a real monitor process that is away, comes back, or refuses."""

from __future__ import annotations

import time

import httpx
import pytest

from cli.processes import free_port
from server.telemetry.sender import TelemetrySender
from tests.monitor.conftest import INGEST_TOKEN
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
