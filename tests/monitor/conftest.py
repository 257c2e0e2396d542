"""Fixtures of the monitor tests: a store on a temporary file, an app, the service as a process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cli.processes import free_port
from monitor.context import MonitorContext
from monitor.main import create_app
from monitor.settings import MonitorSettings
from monitor.validation import check_round_report, check_run_finished, check_run_started
from proto import telemetry_pb2 as pb

INGEST_TOKEN = "test-ingest-token"
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker of the browser tests (`-m "not browser"` skips them)."""
    config.addinivalue_line("markers", "browser: drives Debian's Chromium through Playwright")


_CHECKS = {
    pb.RunStarted: (check_run_started, "start_run"),
    pb.RoundReport: (check_round_report, "record_round"),
    pb.RunFinished: (check_run_finished, "finish_run"),
}


def ingest(context: MonitorContext, *messages: pb.RunStarted | pb.RoundReport | pb.RunFinished):
    """Validate and store messages the way the gRPC ingest does, without the network."""
    for msg in messages:
        check, method = _CHECKS[type(msg)]
        check(msg)
        getattr(context.store, method)(msg)
        context.hub.publish(msg.run_id)


@pytest.fixture
def make_context(tmp_path: Path) -> Iterator[Callable[..., MonitorContext]]:
    """Build monitor contexts on a real SQLite file under tmp_path; all closed afterwards."""
    made: list[MonitorContext] = []

    def make(**settings: object) -> MonitorContext:
        values = {"database": tmp_path / "monitor.sqlite", "ingest_token": INGEST_TOKEN}
        context = MonitorContext.open(MonitorSettings(**{**values, **settings}))
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


@pytest.fixture
def context(make_context) -> MonitorContext:
    """A monitor context on a fresh temporary database."""
    return make_context()


@pytest.fixture
def client(context: MonitorContext) -> Iterator[TestClient]:
    """A TestClient of the app over `context`."""
    with TestClient(create_app(context)) as test_client:
        yield test_client


@dataclass
class MonitorProcess:
    """A running `python -m monitor` and where it listens."""

    process: subprocess.Popen
    http_url: str
    grpc_address: str
    database: Path
    log_path: Path

    def log(self) -> str:
        """What the process wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_monitor(
    tmp_path: Path,
    database: Path,
    *,
    grpc_port: int | None = None,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> MonitorProcess:
    """Start the service on free ports and wait for /healthz; the caller stops it."""
    http_port, grpc_port = free_port(), grpc_port or free_port()
    log_path = tmp_path / f"monitor-{http_port}.log"
    argv = [sys.executable, "-m", "monitor", "--host", "127.0.0.1", "--port", str(http_port)]
    argv += ["--grpc-port", str(grpc_port), "--db", str(database), *extra_args]
    environment = {**os.environ, "FEDQ_MONITOR_INGEST_TOKEN": INGEST_TOKEN, **(env or {})}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    handle = MonitorProcess(
        process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", database, log_path
    )
    try:
        _wait_healthy(handle)
    except BaseException:
        stop_monitor(handle)
        raise
    return handle


def _wait_healthy(handle: MonitorProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(f"monitor exited with {handle.process.returncode}:\n{handle.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{handle.http_url}/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"monitor not healthy after {START_TIMEOUT_S} s:\n{handle.log()}")


def stop_monitor(handle: MonitorProcess, timeout: float = 10.0) -> int:
    """SIGTERM the monitor by PID, SIGKILL it if it does not stop in `timeout` seconds."""
    process = handle.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)
    return process.returncode


@pytest.fixture(scope="module")
def shared_monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitorProcess]:
    """One monitor process for the tests of a module that only add runs of their own."""
    tmp_path = tmp_path_factory.mktemp("shared-monitor")
    handle = start_monitor(tmp_path, tmp_path / "mon.sqlite")
    try:
        yield handle
    finally:
        stop_monitor(handle)


@pytest.fixture
def monitor_service(tmp_path: Path) -> Iterator[Callable[..., MonitorProcess]]:
    """Start monitor processes; every one is stopped by PID when the test ends."""
    started: list[MonitorProcess] = []

    def start(**kwargs: object) -> MonitorProcess:
        handle = start_monitor(tmp_path, kwargs.pop("database", tmp_path / "mon.sqlite"), **kwargs)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        stop_monitor(handle)
