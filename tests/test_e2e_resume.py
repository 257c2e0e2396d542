"""A killed ServerApp loses at most the round in flight: `fedq resume` finishes the run.

Real processes throughout: `fedq demo` starts Flower's SuperLink and SuperNodes, the
ServerApp process the SuperLink started is killed with SIGKILL mid-run, and `fedq resume`
starts the federation again and continues the run directory from its checkpoint.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cli.demo import SERVERAPP_PROGRAM
from cli.processes import command_line, find_marked_processes
from fedq.run_directory import read_rounds
from tests.conftest import FEDQ, kill_demo, leftover_processes

# FedAU with clients that sit rounds out: the estimator's history must survive the kill.
DEMO = ["--clients", "3", "--rounds", "5", "--strategy", "fedau"]
DEMO += ["--availability", "bernoulli:0.7", "--no-monitor"]


def _start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [FEDQ, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=out,
    )


def _serverapp_after_round(demo_root: Path, server_round: int, proc: subprocess.Popen):
    """(run directory, ServerApp PID) once rounds.jsonl holds `server_round`."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for rounds in demo_root.glob("demo-*/*-run*/rounds.jsonl"):
            if len(read_rounds(rounds)) > server_round:
                marker = json.loads((rounds.parent.parent / "processes.json").read_text())["marker"]
                pids = [
                    pid
                    for pid in find_marked_processes(marker)
                    if any(Path(a).name == SERVERAPP_PROGRAM for a in command_line(pid)[:2])
                ]
                assert len(pids) == 1, pids
                return rounds.parent, pids[0]
        time.sleep(0.3)
    raise AssertionError(f"round {server_round} never arrived")


@pytest.mark.e2e
def test_a_killed_serverapp_resumes_to_the_model_an_uninterrupted_run_reaches(tmp_path):
    full_root, killed_root = tmp_path / "full", tmp_path / "killed"
    full_root.mkdir(), killed_root.mkdir()
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        # The same run without interruption, for comparison.
        full = _start(full_root, "demo", *DEMO, "--output-dir", str(full_root))
        procs.append((full, full_root))
        _, stderr = full.communicate(timeout=600)
        assert full.returncode == 0, stderr[-3000:]
        (full_run,) = full_root.glob("demo-*/*-run*")

        killed = _start(killed_root, "demo", *DEMO, "--output-dir", str(killed_root))
        procs.append((killed, killed_root))
        run_dir, serverapp = _serverapp_after_round(killed_root, 2, killed)
        subprocess.run(["kill", "-9", str(serverapp)], check=True)
        killed_at = time.monotonic()
        _, stderr = killed.communicate(timeout=120)
        # The demo notices at once (Flower alone takes about 90 s), says what to do ...
        assert time.monotonic() - killed_at < 45
        assert killed.returncode == 1
        assert f"continue it with `fedq resume {run_dir}`" in stderr
        assert "Traceback" not in stderr
        # ... and leaves the run directory saying so, every process stopped.
        failure = json.loads((run_dir / "failure.json").read_text())["reason"]
        assert "the ServerApp stopped after round" in failure
        assert not (run_dir / "summary.json").exists()
        assert leftover_processes(run_dir.parent) == []
        checkpointed = torch.load(run_dir / "checkpoint.pt", weights_only=False)["round"]
        assert checkpointed >= 2

        summary_path = tmp_path / "resumed-summary.json"
        resumed = _start(
            killed_root, "resume", str(run_dir), "--no-monitor", "--summary", str(summary_path)
        )
        procs.append((resumed, killed_root))
        stdout, stderr = resumed.communicate(timeout=600)
        assert "fedq resume: " in stdout
        assert resumed.returncode == 0, stderr[-3000:]
        summary = json.loads(summary_path.read_text())
        assert summary["rounds"] == 5 and Path(summary["run_dir"]) == run_dir
        # Every round exactly once, as many as the uninterrupted run ...
        records = read_rounds(run_dir / "rounds.jsonl")
        reference = read_rounds(full_run / "rounds.jsonl")
        assert [r["round"] for r in records] == list(range(6))
        # ... computing the same: same accuracies, bytes and FedAU weights every round,
        assert [r["accuracy"] for r in records] == [r["accuracy"] for r in reference]
        assert [r["cum_bytes_up"] for r in records] == [r["cum_bytes_up"] for r in reference]
        assert [r.get("figures") for r in records] == [r.get("figures") for r in reference]
        # and the same final model, bit for bit.
        model = torch.load(run_dir / "model.pt")
        expected = torch.load(full_run / "model.pt")
        assert all(torch.equal(model[k], expected[k]) for k in expected)
        resumes = (run_dir / "resumes.jsonl").read_text().splitlines()
        (resume,) = [json.loads(line) for line in resumes]
        assert resume["from_round"] == checkpointed
        assert resume["previous_failure"]["reason"] == failure
        assert not (run_dir / "failure.json").exists()
        for demo_dir in killed_root.glob("demo-*"):
            assert leftover_processes(demo_dir) == []
    finally:
        for proc, root in procs:
            kill_demo(proc, root)
