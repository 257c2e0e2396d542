"""bench/scale.py end to end at 5 clients: the demo it starts runs, its figures are printed
and every process the demo started is gone afterwards. Speed is the benchmark's to
measure, never this test's."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.e2e
def test_the_scale_benchmark_runs_at_5_clients_and_leaves_no_process():
    argv = [sys.executable, "bench/scale.py", "--clients", "5", "--rounds", "1"]
    argv += ["--in-process", "1000", "--budget-seconds", "400"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    workdir = Path(re.search(r"log (\S+)/clients-5\.log", done.stderr).group(1))
    try:
        assert done.returncode == 0, done.stderr[-2000:]
        rows = [line for line in done.stdout.splitlines() if line.startswith("| 5 | 1 |")]
        assert len(rows) == 1, done.stdout  # one round done, its state read
        assert "| 1000 | " in done.stdout
        goal = next(line for line in done.stdout.splitlines() if "FedAU state <= 64 B" in line)
        assert goal.endswith(": met")
        started = json.loads(next(workdir.glob("clients-5/demo-*/processes.json")).read_text())
        assert started["processes"]
        assert not [p for p in started["processes"] if _alive(p["pid"])]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
