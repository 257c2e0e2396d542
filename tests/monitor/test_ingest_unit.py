"""The Telemetry servicer without a network: what each outcome answers and counts."""

from __future__ import annotations

import grpc
import pytest

from monitor.context import MonitorContext
from monitor.ingest import TelemetryIngest
from tests.monitor.sample_runs import sample_run


class Aborted(Exception):
    """What FakeContext.abort raises, as grpc's real context raises to end the call."""


class FakeContext:
    """The part of grpc.ServicerContext the servicer uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


def test_accepted_reports_are_counted_and_published(context: MonitorContext) -> None:
    servicer = TelemetryIngest(context)
    run = sample_run(rounds=1)
    servicer.StartRun(run.started, FakeContext())
    servicer.ReportRound(run.rounds[0], FakeContext())
    servicer.FinishRun(run.finished, FakeContext())
    counts = context.ingest_stats.snapshot()
    assert counts == {
        ("run_started", "accepted"): 1,
        ("round_report", "accepted"): 1,
        ("run_finished", "accepted"): 1,
    }
    assert context.store.get_run(run.started.run_id).status == "finished"


def test_invalid_report_is_invalid_argument(context: MonitorContext) -> None:
    report = sample_run().rounds[1]
    report.accuracy = -0.5
    fake = FakeContext()
    with pytest.raises(Aborted):
        TelemetryIngest(context).ReportRound(report, fake)
    assert fake.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fake.details.startswith("RoundReport.accuracy=-0.5 is not allowed; allowed: 0.0 ≤")
    assert context.ingest_stats.snapshot() == {("round_report", "invalid"): 1}


def test_a_database_failure_is_unavailable_so_the_sender_retries(
    context: MonitorContext,
) -> None:
    context.store.close()
    fake = FakeContext()
    with pytest.raises(Aborted):
        TelemetryIngest(context).StartRun(sample_run().started, fake)
    assert fake.code == grpc.StatusCode.UNAVAILABLE
    assert "database" in fake.details
    assert context.ingest_stats.snapshot() == {("run_started", "error"): 1}
