"""Message builders from ServerApp records, and a store round trip of arbitrary valid reports."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import telemetry_pb2 as pb
from server.monitor import reports
from server.monitor.store import Store
from server.monitor.validation import MAX_REASON_CHARS, check_round_report, check_run_finished

# A record exactly as server/round_recorder.py writes it, without the monitor's extra keys.
RECORDER_RECORD = {
    "round": 2,
    "accuracy": 0.71,
    "loss": 1.02,
    "train_loss": 1.1,
    "participants": [11, 2**64 - 1],
    "failures": [{"node": 7, "reason": "Message timed out"}],
    "bytes_up": 81_224,
    "bytes_down": 121_836,
    "cum_bytes_up": 162_448,
    "cum_bytes_down": 243_672,
    "uplink_bits_per_param": 33.8,
    "clients": {
        "11": {"bytes_up": 40_612, "bytes_down": 40_612, "num_examples": 359, "train_loss": 1.0},
        str(2**64 - 1): {"bytes_up": 40_612, "bytes_down": 40_612, "num_examples": 360},
        "7": {"bytes_up": 0, "bytes_down": 40_612, "num_examples": None, "train_loss": None},
    },
    "elapsed_seconds": 61.5,
}


def test_round_report_from_a_recorder_record() -> None:
    msg = reports.round_report("run-1", RECORDER_RECORD)
    check_round_report(msg)
    assert (msg.round, msg.accuracy, msg.bytes_up, msg.cum_bytes_down) == (2, 0.71, 81_224, 243_672)
    assert list(msg.participants) == [11, 2**64 - 1]
    assert [(f.node_id, f.reason) for f in msg.failures] == [(7, "Message timed out")]
    assert msg.clients[2**64 - 1].num_examples == 360
    assert not msg.clients[2**64 - 1].HasField("train_loss")
    assert not msg.clients[7].HasField("num_examples")
    assert not msg.HasField("downlink_bits_per_param")
    assert msg.time > 0 and msg.fp32_bytes_up == 0


def test_round_zero_without_participants() -> None:
    record = {"round": 0, "accuracy": 0.09, "loss": 2.3, "train_loss": None, "participants": []}
    msg = reports.round_report("run-1", {**record, "uplink_bits_per_param": None, "clients": {}})
    check_round_report(msg)
    assert not msg.HasField("train_loss") and not msg.HasField("uplink_bits_per_param")


def test_long_reasons_are_shortened_to_what_the_monitor_accepts() -> None:
    record = {**RECORDER_RECORD, "rejected": [{"node": 11, "reason": "x" * 10_000}]}
    msg = reports.round_report("run-1", record)
    check_round_report(msg)
    assert len(msg.rejected[0].reason) == MAX_REASON_CHARS
    finished = reports.run_finished("run-1", failed=True, reason="y" * 5_000)
    check_run_finished(finished)
    assert finished.status == pb.RUN_STATUS_FAILED


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
