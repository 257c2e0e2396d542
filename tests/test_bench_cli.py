"""`fedq bench`: the runner of the benchmark programs, at tiny sizes (no figures here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli.bench import BENCHMARKS
from tests.conftest import FEDQ


def _fedq(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([FEDQ, *args], capture_output=True, text=True, timeout=timeout)


def test_it_lists_every_benchmark_program_and_each_exists() -> None:
    done = _fedq("bench", "--list")
    assert done.returncode == 0
    for name, bench in BENCHMARKS.items():
        assert f"bench/{bench.script}" in done.stdout and name in done.stdout
        assert (Path(__file__).resolve().parents[1] / "bench" / bench.script).is_file()


def test_an_unknown_benchmark_is_one_line_naming_the_allowed_ones(tmp_path: Path) -> None:
    done = _fedq("bench", "codec", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fedq: error: unknown benchmark 'codec'; allowed: " + ", ".join(BENCHMARKS)
    )


def test_quick_runs_write_each_output_and_a_summary_with_the_goal_lines(tmp_path: Path) -> None:
    names = ("codecs", "bytes-to-accuracy", "fedau")
    done = _fedq("bench", *names, "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == list(names)
    for name, entry in summary.items():
        assert entry["returncode"] == 0
        assert entry["command"].startswith(f"python bench/{BENCHMARKS[name].script}")
        assert entry["goals"], f"{name} printed no goal line"
        assert all("met" in g or "MISSED" in g for g in entry["goals"])
        assert (tmp_path / f"{name}.txt").read_text().strip()
    assert "int4" in (tmp_path / "codecs.txt").read_text()
    assert "Flower FedAvg fp32" in (tmp_path / "bytes-to-accuracy.txt").read_text()
    curves = json.loads((tmp_path / "bytes_to_accuracy.json").read_text())
    assert len(curves["Flower FedAvg fp32"][0]["accuracy"]) == 3  # the initial model + 2 rounds
    for png in ("bytes_to_accuracy.png", "fedau_participation.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fedau_participation.json").read_text().strip()


def test_every_benchmark_has_tiny_quick_sizes_of_its_own() -> None:
    # --quick must never fall back to a program's full default sizes.
    for name, bench in BENCHMARKS.items():
        assert bench.quick, f"{name} has no --quick arguments"
        assert bench.quick != bench.args, name


def test_a_goal_line_counts_whatever_punctuation_follows_its_verdict() -> None:
    from cli.bench import _is_verdict

    assert _is_verdict("- a: uplink 8.4x fewer (goal >= 8x: met, accuracy +0.06 points)")
    assert _is_verdict("both ways 12.7x fewer (goal >= 10x: met)")
    assert _is_verdict("| int4 | 4.508 | <= 4.6: met |")
    assert _is_verdict("goal <= 4 s: MISSED")
    assert not _is_verdict("metadata of the run, unmet in name only")


def test_the_default_bytes_systems_are_systems_of_the_program() -> None:
    # cli/bench.py names them as strings, to keep torch out of the CLI's imports.
    from bench.bytes_to_accuracy import SYSTEMS
    from cli.bench import _BYTES_SYSTEMS

    assert set(_BYTES_SYSTEMS) <= set(SYSTEMS)
    assert _BYTES_SYSTEMS[0] == next(iter(SYSTEMS))  # the baseline comes first
