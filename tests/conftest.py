"""Shared fixtures: running `fedq demo` as a user would, and proving it left nothing behind."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli.processes import find_marked_processes

FEDQ = str(Path(sys.executable).parent / "fedq")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def run_demo(tmp_path):
    """Run `fedq demo ARGS` to completion; afterwards kill anything it left, by PID."""
    started: list[subprocess.Popen] = []

    def run(*args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, Path]:
        out = tmp_path / "out"
        proc = subprocess.Popen(
            [FEDQ, "demo", "--output-dir", str(out), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        stdout, stderr = proc.communicate(timeout=timeout)
        demo_dirs = sorted(out.glob("demo-*"))
        assert len(demo_dirs) == 1, (stdout, stderr)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), demo_dirs[0]

    yield run

    for proc in started:
        kill_demo(proc, tmp_path / "out")


def kill_demo(proc: subprocess.Popen, out: Path) -> None:
    """Kill a `fedq demo` process group and anything its children left, by PID."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for record in out.glob("demo-*/processes.json"):
        payload = json.loads(record.read_text())
        for pid in find_marked_processes(payload["marker"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def leftover_processes(demo_dir: Path) -> list[int]:
    """PIDs of processes the demo started (or their descendants) that still run."""
    payload = json.loads((demo_dir / "processes.json").read_text())
    pids = [p["pid"] for p in payload["processes"] if _alive(p["pid"])]
    return sorted(set(pids) | set(find_marked_processes(payload["marker"])))
