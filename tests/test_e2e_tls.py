"""`fedq demo --tls`: the federation deploy/ runs, here: TLS and SuperNode authentication."""

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from cli.security import certificate_hosts
from tests.conftest import leftover_processes


@pytest.mark.e2e
def test_demo_with_tls_and_supernode_authentication(run_demo, tmp_path):
    summary_path = tmp_path / "summary.json"
    result, demo_dir = run_demo(
        "--tls",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--set",
        "local-steps=5",
        "--summary",
        str(summary_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["rounds"] == 2
    security = demo_dir / "security"
    assert certificate_hosts(security / "certs" / "superlink.crt") == ["localhost", "127.0.0.1"]
    for name in ("client-0", "client-1"):
        key = security / "keys" / "private" / f"{name}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    logs = demo_dir / "logs"
    superlink = (logs / "superlink.log").read_text()
    assert "Uvicorn running on https://" in superlink
    assert "SuperNode authentication is disabled" not in superlink
    config = (demo_dir / "flwr-home" / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config
    # With authentication on, only registered SuperNodes are activated: both were.
    assert superlink.count("[Fleet.ActivateNode] Activated node_id=") >= 2
    # Every client is named by its key's name, which the monitor shows.
    with sqlite3.connect(demo_dir / "monitor.sqlite") as db:
        names = {row[0] for row in db.execute("SELECT DISTINCT client_id FROM client_rounds")}
        (run_name,) = db.execute("SELECT name FROM runs").fetchone()
    assert names - {""} == {"client-0", "client-1"}
    assert run_name == Path(summary["run_dir"]).name
    assert leftover_processes(demo_dir) == []
