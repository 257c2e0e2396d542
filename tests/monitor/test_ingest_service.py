"""The running service (`python -m monitor`): gRPC ingest, live events, restarts, signals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from cli.processes import free_port
from proto import telemetry_pb2 as pb
from proto import telemetry_pb2_grpc as pb_grpc
from tests.monitor.conftest import INGEST_TOKEN, REPO_ROOT, stop_monitor
from tests.monitor.sample_runs import ACCURACY, HOSTILE_REASON, NODES, sample_run

AUTH = (("authorization", f"Bearer {INGEST_TOKEN}"),)


def _stub(address: str) -> tuple[grpc.Channel, pb_grpc.TelemetryStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.TelemetryStub(channel)


def _send_all(stub: pb_grpc.TelemetryStub, messages, metadata=AUTH) -> None:
    methods = {pb.RunStarted: stub.StartRun, pb.RoundReport: stub.ReportRound}
    methods[pb.RunFinished] = stub.FinishRun
    for msg in messages:
        methods[type(msg)](msg, metadata=metadata, timeout=5)


def test_refuses_to_start_with_an_empty_token(tmp_path: Path) -> None:
    env = {**os.environ, "FEDQ_MONITOR_INGEST_TOKEN": ""}
    argv = [sys.executable, "-m", "monitor", "--db", str(tmp_path / "m.sqlite")]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m monitor: error: ingest_token is empty; set FEDQ_MONITOR_INGEST_TOKEN, "
        "or run with --dev to accept telemetry without a token"
    ]
    assert not (tmp_path / "m.sqlite").exists()


def test_ingest_over_grpc_lands_in_the_rest_api(shared_monitor) -> None:
    monitor = shared_monitor
    run = sample_run()
    channel, stub = _stub(monitor.grpc_address)
    with channel:
        _send_all(stub, run.messages)
    rounds = httpx.get(f"{monitor.http_url}/api/runs/{run.started.run_id}/rounds").json()
    assert [r["accuracy"] for r in rounds] == list(ACCURACY[:9])
    assert rounds[3]["rejected"] == [{"node_id": str(NODES[1]), "reason": HOSTILE_REASON}]
    assert rounds[8]["cum_bytes_up"] == run.rounds[8].cum_bytes_up
    detail = httpx.get(f"{monitor.http_url}/api/runs/{run.started.run_id}").json()
    assert detail["status"] == "finished" and detail["strategy"] == "fedau"


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ((), "missing metadata 'authorization: Bearer <token>'"),
        ((("authorization", "Bearer wrong"),), "the ingest token is not valid"),
        ((("authorization", INGEST_TOKEN),), "the ingest token is not valid"),
    ],
)
def test_calls_without_the_token_are_unauthenticated(shared_monitor, metadata, detail) -> None:
    channel, stub = _stub(shared_monitor.grpc_address)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.StartRun(sample_run("never-stored").started, metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == detail
    assert httpx.get(f"{shared_monitor.http_url}/api/runs/never-stored").status_code == 404


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m, "accuracy", 1.5), "RoundReport.accuracy=1.5 is not allowed"),
        (lambda m: setattr(m, "accuracy", -1e-9), "RoundReport.accuracy=-1e-09 is not allowed"),
        (lambda m: setattr(m, "bytes_up", 2**63), "RoundReport.bytes_up=9223372036854775808 is"),
        (lambda m: setattr(m, "time", 1e300), "RoundReport.time=1e+300 is not allowed"),
        (lambda m: setattr(m, "run_id", "../etc"), "RoundReport.run_id='../etc' is not allowed"),
        (lambda m: setattr(m, "cum_bytes_up", 1), "RoundReport.cum_bytes_up=1 is not allowed"),
        (lambda m: m.participants.append(m.participants[0]), "each node id once"),
        (lambda m: m.figures.__setitem__("bad name!", 1.0), "RoundReport.figures name='bad name!'"),
        (lambda m: m.rejected.add(node_id=1), "a non-empty reason"),
    ],
)
def test_invalid_reports_are_refused_with_a_reason(shared_monitor, mutate, reason) -> None:
    report = pb.RoundReport()
    report.CopyFrom(sample_run("refused-run").rounds[3])
    mutate(report)
    channel, stub = _stub(shared_monitor.grpc_address)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.ReportRound(report, metadata=AUTH, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in info.value.details()
    assert "\n" not in info.value.details()
    assert httpx.get(f"{shared_monitor.http_url}/api/runs/refused-run").status_code == 404


def test_run_finished_needs_a_status(shared_monitor) -> None:
    channel, stub = _stub(shared_monitor.grpc_address)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.FinishRun(pb.RunFinished(run_id="r1", time=1.0), metadata=AUTH, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "RunFinished.status=0 is not allowed" in info.value.details()


def test_live_events_restart_and_clean_sigterm(monitor_service, tmp_path: Path) -> None:
    database = tmp_path / "history.sqlite"
    monitor = monitor_service(database=database)
    run = sample_run("live-run", rounds=4, finished=False)
    channel, stub = _stub(monitor.grpc_address)
    with channel:
        _send_all(stub, run.messages[:3])  # RunStarted, rounds 0 and 1
        events: list[tuple[str, dict]] = []
        reader = threading.Thread(target=_read_events, args=(monitor.http_url, events))
        reader.start()
        _wait_for(lambda: any(e[0] == "round" and e[1]["round"] == 1 for e in events))
        _send_all(stub, run.messages[3:])  # rounds 2 to 4 arrive while the stream is open
        _wait_for(lambda: any(e[0] == "round" and e[1]["round"] == 4 for e in events))
    started = time.monotonic()
    assert stop_monitor(monitor) == 0  # SIGTERM ends the open stream and exits cleanly
    assert time.monotonic() - started < 5
    reader.join(5)
    assert not reader.is_alive()
    assert [e[1]["round"] for e in events if e[0] == "round"] == [0, 1, 2, 3, 4]
    assert "monitor stopped" in monitor.log()

    again = monitor_service(database=database)
    rounds = httpx.get(f"{again.http_url}/api/runs/live-run/rounds").json()
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]


def test_dev_mode_accepts_telemetry_without_a_token(monitor_service) -> None:
    monitor = monitor_service(env={"FEDQ_MONITOR_INGEST_TOKEN": ""}, extra_args=("--dev",))
    channel, stub = _stub(monitor.grpc_address)
    with channel:
        _send_all(stub, sample_run("dev-run", rounds=1).messages, metadata=())
    assert httpx.get(f"{monitor.http_url}/api/runs/dev-run").json()["status"] == "finished"
    assert "dev mode" in monitor.log()


def _read_events(base_url: str, events: list[tuple[str, dict]]) -> None:
    url = f"{base_url}/api/runs/live-run/events"
    with httpx.stream("GET", url, timeout=httpx.Timeout(5.0, read=30.0)) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.partition(":")[2].strip()
            elif line.startswith("data:") and kind:
                events.append((kind, json.loads(line.partition(":")[2])))


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_port_in_use_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "FEDQ_MONITOR_INGEST_TOKEN": INGEST_TOKEN}
        argv = [sys.executable, "-m", "monitor", "--db", str(tmp_path / "m.sqlite")]
        argv += ["--port", str(port), "--grpc-port", str(free_port())]
        done = subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"python -m monitor: error: cannot serve HTTP on 127.0.0.1:{port}"
