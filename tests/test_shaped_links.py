"""bench/shaped_links.py's harness at a tiny size: it runs, and leaves nothing behind.

No figure is checked here (speed figures come from the benchmark alone): one system, two
clients on shaped, delayed links, two rounds of a 1,482-parameter MLP; then a run cut short
by its timeout while every process is still busy. Both must remove every namespace and
every process they started.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.shaped_links import SYSTEMS, Outcome, run_system
from cli.processes import find_marked_processes
from tests.netns import unavailable_reason

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.timeout(600)]

REASON = unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"needs network namespaces: {REASON}")
TINY_MODEL = "python:wide_mlp:tiny_mlp"


def _run(tmp_path: Path, timeout_seconds: float) -> Outcome:
    return run_system(
        SYSTEMS["fedq-int4"],
        clients=2,
        rate_mbit=10.0,
        target=1.01,  # never reached: the run goes to its round cap
        max_rounds=2,
        model=TINY_MODEL,
        downlink="bf16",
        workdir=tmp_path,
        timeout_seconds=timeout_seconds,
        delay_ms=20.0,
    )


def _assert_nothing_left(outcome: Outcome) -> None:
    assert outcome.netns_suffix and outcome.process_marker
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert outcome.netns_suffix not in namespaces + links
    assert find_marked_processes(outcome.process_marker) == []


@needs_netns
def test_a_shaped_run_records_every_round_and_leaves_nothing(tmp_path: Path) -> None:
    outcome = _run(tmp_path, timeout_seconds=300.0)
    assert outcome.error is None, outcome.error
    assert [r["round"] for r in outcome.rounds] == [0, 1, 2]
    assert outcome.reached_round is None and outcome.reached_seconds is None
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in outcome.rounds)
    assert outcome.rounds[-1]["cum_bytes_up"] > 0 and outcome.rounds[-1]["cum_bytes_down"] > 0
    _assert_nothing_left(outcome)


@needs_netns
def test_a_run_cut_short_leaves_nothing(tmp_path: Path) -> None:
    outcome = _run(tmp_path, timeout_seconds=1.0)
    assert outcome.error is not None and "no end within" in outcome.error
    _assert_nothing_left(outcome)
