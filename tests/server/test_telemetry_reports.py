"""Telemetry message builders from ServerApp records; what they build passes the monitor checks."""

from __future__ import annotations

from monitor.validation import check_round_report, check_run_finished, check_run_started
from proto import telemetry_pb2 as pb
from proto.telemetry_limits import MAX_LABEL_CHARS, MAX_REASON_CHARS
from server.telemetry import reports

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
        "11": {
            "bytes_up": 40_612,
            "bytes_down": 40_612,
            "num_examples": 359,
            "train_loss": 1.0,
            "client_id": "client-0",
        },
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
    assert (msg.clients[11].client_id, msg.clients[7].client_id) == ("client-0", "")


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


def test_names_for_people_are_shortened_to_what_the_monitor_accepts() -> None:
    started = reports.run_started(
        "123",
        strategy="fedau",
        model="mlp",
        num_parameters=9_610,
        clients_expected=3,
        config={},
        name="20260101-120000-fedau-run123" + "x" * 500,
    )
    check_run_started(started)
    assert len(started.name) == MAX_LABEL_CHARS and started.name.startswith("20260101-1200")
    record = {**RECORDER_RECORD, "clients": {"11": {"bytes_up": 1, "client_id": "c" * 999}}}
    msg = reports.round_report("123", record)
    check_round_report(msg)
    assert len(msg.clients[11].client_id) == MAX_LABEL_CHARS
