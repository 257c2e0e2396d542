"""Benchmark: how long a round of `fedq demo` takes, and where the time goes.

Runs `fedq demo` as a user does (4 clients, the MLP, Flower's real SuperLink and SuperNodes
over gRPC, no monitor), alternately with fedq's process handling (warm, forked ClientApps
from `fedq-superexec`, short polls) and with Flower 1.39's own (`--stock-flower`: a fresh
`flwr-clientapp` process per message, a 1 s task poll, a 3 s reply pull). Every process
records its steps (fedq/trace.py), and each round is put back together per client:

* to the ClientApp process: from the server's push to the start of the process (or fork)
  that runs the message — the SuperNode's pull (every 3 s, hard-coded in Flower 1.39) and
  the SuperExec's task poll;
* start-up: from that start to the message entering the ClientApp — imports, installing
  the app from its FAB, loading it, pulling the message and the Context;
* ClientApp: the app itself (local training);
* back to the server: from the reply leaving the ClientApp to the server pulling it.

A round is the time between two consecutive training pushes of the server (it includes the
server's evaluation). Medians with min and max over every round of every repetition.

    python bench/round_overhead.py                  # 3 repetitions of 10 rounds each way
    python bench/round_overhead.py --repeats 1 --rounds 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDQ = str(Path(sys.executable).parent / "fedq")
MODES = {"fedq": [], "stock Flower": ["--stock-flower"]}
PHASES = ("to the ClientApp process", "start-up", "ClientApp", "back to the server")
GOAL_SECONDS = 4.0


def run_demo(flags: list[str], rounds: int, clients: int, workdir: Path) -> list[dict]:
    """Run one `fedq demo` with tracing on; return its trace events in time order."""
    trace_file = workdir / "trace.jsonl"
    env = {**os.environ, "FEDQ_TRACE": str(trace_file)}
    argv = [FEDQ, "demo", "--clients", str(clients), "--rounds", str(rounds), "--no-monitor"]
    argv += ["--output-dir", str(workdir / "runs"), *flags]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fedq demo {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    events = [json.loads(line) for line in trace_file.read_text().splitlines()]
    return sorted((e for e in events if e.get("t")), key=lambda e: e["t"])


def breakdown(events: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
    """(round durations, phase -> durations per client per round) of one demo's trace."""
    pushes = [e for e in events if e["event"] == "server-push" and e["messages"] > 0]
    train_pushes = [p for p in pushes if _is_train(p, events)]
    rounds = [b["t"] - a["t"] for a, b in itertools.pairwise(train_pushes)]
    phases: dict[str, list[float]] = defaultdict(list)
    for start, end in zip(train_pushes, [*train_pushes[1:], None], strict=True):
        window = [e for e in events if start["t"] <= e["t"] and (end is None or e["t"] < end["t"])]
        for steps in _per_node(window).values():
            if {"process", "enter", "exit", "reply"} <= steps.keys():
                phases[PHASES[0]].append(steps["process"] - start["t"])
                phases[PHASES[1]].append(steps["enter"] - steps["process"])
                phases[PHASES[2]].append(steps["exit"] - steps["enter"])
                phases[PHASES[3]].append(steps["reply"] - steps["exit"])
    return rounds, phases


def _is_train(push: dict, events: list[dict]) -> bool:
    """Whether the ClientApps that answer this push got a train message."""
    later = (e for e in events if e["t"] >= push["t"] and e["event"] == "clientapp-enter")
    first = next(later, None)
    return first is not None and str(first.get("type", "")).startswith("train")


def _per_node(window: list[dict]) -> dict[int, dict[str, float]]:
    """node -> when its process started, its message entered and left, the server saw it."""
    steps: dict[int, dict[str, float]] = defaultdict(dict)
    names = {
        "clientapp-process": "process",
        "clientapp-enter": "enter",
        "clientapp-exit": "exit",
        "server-reply": "reply",
    }
    for event in window:
        name = names.get(event["event"])
        if name is not None and "node" in event:
            steps[int(event["node"])].setdefault(name, event["t"])
    return steps


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    """Run the demo both ways, interleaved; print the round time and its breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="demos per mode")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    rounds: dict[str, list[float]] = defaultdict(list)
    phases: dict[str, dict[str, list[float]]] = {mode: defaultdict(list) for mode in MODES}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for mode, flags in MODES.items():
            with tempfile.TemporaryDirectory(prefix="fedq-round-") as workdir:
                events = run_demo(flags, args.rounds, args.clients, Path(workdir))
            mode_rounds, mode_phases = breakdown(events)
            rounds[mode] += mode_rounds
            for phase, values in mode_phases.items():
                phases[mode][phase] += values
            print(
                f"  [{repeat + 1}/{args.repeats}] {mode}: median round "
                f"{statistics.median(mode_rounds):.2f} s",
                flush=True,
            )
    print(
        f"\n{args.clients} clients, MLP, {args.rounds} rounds x {args.repeats} demos per mode, "
        f"interleaved; {os.cpu_count()} cores; {time.perf_counter() - started:.0f} s in all\n"
    )
    print("| seconds: median (min-max) | " + " | ".join(MODES) + " |")
    print("| --- |" + " --- |" * len(MODES))
    print("| round | " + " | ".join(_stats(rounds[m]) for m in MODES) + " |")
    for phase in PHASES:
        print(f"| {phase} | " + " | ".join(_stats(phases[m][phase]) for m in MODES) + " |")
    fedq, stock = (statistics.median(rounds[m]) for m in MODES)
    verdict = "met" if fedq <= GOAL_SECONDS else "MISSED"
    print(
        f"\nmedian round: fedq {fedq:.2f} s, stock Flower {stock:.2f} s ({stock / fedq:.1f}x); "
        f"goal <= {GOAL_SECONDS:g} s: {verdict}"
    )


if __name__ == "__main__":
    main()
