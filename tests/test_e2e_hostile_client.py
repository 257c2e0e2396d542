"""A client sending a different bad update every round, over Flower's real gRPC.

The federation is `fedq demo`'s (Flower's SuperLink, three SuperNodes, warm ClientApps),
with the app's ClientApp swapped for tests/hostile/client_app.py: partition 1 trains like
the others, then damages its reply (NaN, a wrong shape, zero or 10^12 examples, ... or,
with an uplink codec, damaged bytes). Every bad update must be refused with its reason,
recorded and reported to the monitor, while the run goes on and the model stays finite.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from cli.demo import APP_DIR, DemoPlan, run_demo, stage_app
from cli.processes import find_marked_processes
from fedq.run_directory import read_rounds
from fedq.runconfig import RunConfig
from tests.conftest import leftover_processes

HOSTILE = Path(__file__).resolve().parent / "hostile"

# Round -> the reason the server must give, for whole-model replies and encoded ones.
MODEL_REASONS = {
    1: r"holds NaN or Inf",
    2: r"shape \(1, 2\) != global shape",
    3: r"num-examples=0 must be an integer >= 1",
    4: r"num-examples=1000000000000 exceeds max-examples=10000000",
    5: r"array keys differ \(missing \[",
    6: r"dtype float64 != global dtype float32",
    7: r"holds NaN or Inf",
}
PAYLOAD_REASONS = {
    1: r"payload rejected: ",
    2: r"payload rejected: ",
    3: r"payload rejected: .*CRC",
    4: r"'payload' is str, expected bytes",
}


def _hostile_app(target: Path) -> Path:
    """fedq's app with tests/hostile's ClientApp in place of fedq's."""
    app = stage_app(APP_DIR, target)
    shutil.copytree(HOSTILE, app / "hostile", ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (app / "pyproject.toml").read_text()
    pyproject = pyproject.replace(
        'clientapp = "client.client_app:app"', 'clientapp = "hostile.client_app:app"'
    )
    pyproject = pyproject.replace("fab-include = [", 'fab-include = [\n    "/hostile/**/*.py",')
    assert "hostile.client_app:app" in pyproject and "/hostile/" in pyproject
    (app / "pyproject.toml").write_text(pyproject)
    return app


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("compress", "reasons"), [("none", MODEL_REASONS), ("int4", PAYLOAD_REASONS)]
)
def test_every_bad_update_is_refused_with_its_reason_and_the_run_goes_on(
    tmp_path: Path, compress: str, reasons: dict[int, str]
) -> None:
    rounds = len(reasons)
    demo_dir = tmp_path / "demo"
    config = RunConfig.from_mapping(
        {
            "num-server-rounds": rounds,
            "strategy": "fedavg",
            "compress": compress,
            "min-clients": 3,
            "round-timeout": 60.0,
            "output-dir": str(demo_dir),
        }
    )
    plan = DemoPlan(
        config=config,
        clients=3,
        demo_dir=demo_dir,
        timeout_seconds=600,
        app_dir=_hostile_app(tmp_path / "hostile-app"),
    )
    try:
        summary = run_demo(plan, lambda progress: None)
    finally:  # run_demo stops what it started; this catches anything left, by PID
        processes = demo_dir / "processes.json"
        if processes.exists():
            for pid in find_marked_processes(json.loads(processes.read_text())["marker"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert summary["rounds"] == rounds
    run_dir = Path(summary["run_dir"])
    records = read_rounds(run_dir / "rounds.jsonl")
    assert [r["round"] for r in records] == list(range(rounds + 1))
    for record in records[1:]:
        hostile = {
            int(node) for node, c in record["clients"].items() if c.get("client_id") == "client-1"
        }
        (rejection,) = record["rejected"]
        assert {rejection["node"]} == hostile, record["rejected"]
        assert re.search(reasons[record["round"]], rejection["reason"]), rejection["reason"]
        # The others' updates made the round; the bad one never reached the model.
        assert len(record["participants"]) == 2 and rejection["node"] not in record["participants"]
        assert record["accuracy"] is not None and math.isfinite(record["loss"])
    assert records[-1]["accuracy"] > records[0]["accuracy"] + 0.3
    # The monitor received every rejection with its reason.
    with sqlite3.connect(demo_dir / "monitor.sqlite") as db:
        stored = db.execute(
            "SELECT round, rejected_reason FROM client_rounds "
            "WHERE rejected_reason IS NOT NULL ORDER BY round"
        ).fetchall()
    assert [r for r, _ in stored] == list(range(1, rounds + 1))
    for server_round, reason in stored:
        assert re.search(reasons[server_round], reason)
    assert leftover_processes(demo_dir) == []
