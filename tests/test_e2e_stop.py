"""`fedq demo` stops everything it started when interrupted or when a Flower process dies."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli.processes import command_line, find_marked_processes
from tests.conftest import FEDQ, kill_demo, leftover_processes


def _start_demo(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [FEDQ, "demo", "--output-dir", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_round(out: Path, server_round: int, proc: subprocess.Popen) -> Path:
    """Block until rounds.jsonl holds `server_round`; return the demo directory."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for rounds in out.glob("demo-*/*-run*/rounds.jsonl"):
            if len(rounds.read_text().splitlines()) > server_round:
                return rounds.parent.parent
        time.sleep(0.5)
    raise AssertionError(f"round {server_round} never arrived")


def _has_ingest_token(pid: int) -> bool | None:
    """Whether process `pid` has the monitor's ingest token in its environment (None: gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return any(item.startswith(b"FEDQ_MONITOR_INGEST_TOKEN=") for item in environ)


def _check_only_the_reporting_side_holds_the_ingest_token(demo_dir: Path) -> None:
    """The monitor and the SuperLink (which starts the ServerApp) hold the token; no
    SuperNode, SuperExec, ClientApp or `flwr run` does."""
    payload = json.loads((demo_dir / "processes.json").read_text())
    named = {p["pid"]: p["name"] for p in payload["processes"]}
    holders, others = set(), set()
    for pid in find_marked_processes(payload["marker"]):
        command = " ".join(command_line(pid)[:2])
        name = named.get(pid) or command
        (holders if _has_ingest_token(pid) else others).add(name)
    holders.discard(None)
    assert {"monitor", "superlink"} <= holders
    assert all(
        h in {"monitor", "superlink"} or "flower-superexec" in h or "flwr-serverapp" in h
        for h in holders
    ), holders
    assert {"supernode-0", "supernode-1", "superexec", "flwr-run"} <= others


@pytest.mark.e2e
def test_ctrl_c_stops_every_process(tmp_path):
    proc = _start_demo(tmp_path, "--clients", "2", "--rounds", "50")
    try:
        demo_dir = _wait_for_round(tmp_path, 1, proc)
        _check_only_the_reporting_side_holds_the_ingest_token(demo_dir)
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert "interrupted; every process fedq started has been stopped" in stderr
        assert "Traceback" not in stderr
        assert leftover_processes(demo_dir) == []
    finally:
        kill_demo(proc, tmp_path)


@pytest.mark.e2e
def test_a_dying_superlink_fails_the_demo_and_the_rest_is_stopped(tmp_path):
    proc = _start_demo(tmp_path, "--clients", "2", "--rounds", "50")
    try:
        demo_dir = _wait_for_round(tmp_path, 1, proc)
        started = json.loads((demo_dir / "processes.json").read_text())["processes"]
        victim = next(p["pid"] for p in started if p["name"] == "superlink")
        os.killpg(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1
        lines = stderr.strip().splitlines()
        assert lines[0] == "fedq: error: superlink exited with code -9:"
        assert leftover_processes(demo_dir) == []
    finally:
        kill_demo(proc, tmp_path)


@pytest.mark.e2e
def test_a_dying_supernode_costs_a_round_and_the_run_goes_on(tmp_path):
    proc = _start_demo(tmp_path, "--clients", "3", "--rounds", "5", "--no-monitor")
    try:
        demo_dir = _wait_for_round(tmp_path, 1, proc)
        started = json.loads((demo_dir / "processes.json").read_text())["processes"]
        victim = next(p["pid"] for p in started if p["name"] == "supernode-1")
        os.killpg(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert "supernode-1 exited with code -9; the run goes on with the other clients" in stdout
        (rounds_file,) = demo_dir.glob("*-run*/rounds.jsonl")
        records = [json.loads(line) for line in rounds_file.read_text().splitlines()]
        assert [r["round"] for r in records] == list(range(6))
        dead = next(
            int(node)
            for node, c in records[1]["clients"].items()
            if c.get("client_id") == "client-1"
        )
        # Its failure, if the SuperLink reported one, is its own node's, never node 1's.
        failed = [f["node"] for r in records for f in r["failures"]]
        assert set(failed) <= {dead}
        assert len(records[-1]["participants"]) == 2 and dead not in records[-1]["participants"]
        assert records[-1]["accuracy"] > records[1]["accuracy"]
        assert leftover_processes(demo_dir) == []
    finally:
        kill_demo(proc, tmp_path)
