"""`fedq bench`: run fedq's benchmark programs at their default sizes, collect the verdicts.

Each benchmark is a program in the repository's bench/ folder that prints its figures
with their goals and "met" or "MISSED" (docs/benchmarks.md says how each measures). This
command runs the chosen ones one after another, writes each one's output to
``OUT/NAME.txt`` and a summary (command, exit code, seconds, every goal line) to
``OUT/summary.json``, and prints the goal lines. It runs from a checkout of the repository
(the programs are not part of the installed package).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from fedq.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = "{out}"  # in a benchmark's arguments: the runner's output directory


@dataclass(frozen=True)
class Benchmark:
    """A bench/ program: its default arguments, and tiny ones that only check it runs."""

    script: str
    about: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


# bytes_to_accuracy.py's curves: JSON, and accuracy against bytes as a PNG.
_CURVES = (
    "--json",
    f"{OUT_DIR}/bytes_to_accuracy.json",
    "--png",
    f"{OUT_DIR}/bytes_to_accuracy.png",
)

# fedau_participation.py's accuracies (JSON) and curves (PNG); docs/fedau.md's full-size
# runs (1,000-1,500 rounds, about 70 minutes) are its own commands.
_FEDAU_CURVES = (
    *("--json", f"{OUT_DIR}/fedau_participation.json"),
    *("--plot", f"{OUT_DIR}/fedau_participation.png"),
)

_FEDAU_TUNED = (
    *("--lr", "fedau=0.0562", "--lr", "fedau-K50=0.178", "--lr", "participants=0.178:1.78"),
    *("--lr", "all=0.178:10", "--lr", "known-prob=0.0562"),
)

_BYTES_SYSTEMS = (
    "Flower FedAvg fp32",
    "int4+ans / int4+ans+ef",
    "int4:block=0+ans+ef / int4:block=0+ans+ef",
    "topk:0.03+int4:block=0+ans+ef / topk:0.05+int4:block=0+ans+ef",
)

BENCHMARKS: dict[str, Benchmark] = {
    "codecs": Benchmark(
        "bench_codecs.py",
        "bits per parameter and encode/decode speed of every codec",
        quick=("--reps", "1", "--codecs", "int4"),
    ),
    "entropy": Benchmark(
        "bench_entropy.py",
        "+ans: bits per value against the codes' entropy",
        quick=("--reps", "1", "--codecs", "int4"),
    ),
    "bytes-to-accuracy": Benchmark(
        "bytes_to_accuracy.py",
        "bytes both ways until a target accuracy, fedq against Flower FedAvg fp32",
        # The baseline, block-scaled and per-tensor int4, the sparsest system: 3 seeds, 30
        # rounds; every system is docs/bytes-to-accuracy.md's command.
        args=("--rounds", "30", "--systems", ",".join(_BYTES_SYSTEMS), *_CURVES),
        quick=("--seeds", "1", "--rounds", "2", "--clients", "2", "--target", "0.2", *_CURVES),
    ),
    "shaped-links": Benchmark(
        "shaped_links.py",
        "time to accuracy with every client on a rate-limited link (needs root)",
        # The goal's rate only; 10 Mbit/s too is `--rates 1,10` (docs/benchmarks.md).
        args=("--rates", "1", "--out", OUT_DIR),
        quick=(
            "--rates",
            "10",
            "--systems",
            "fedq-int4",
            "--clients",
            "2",
            "--max-rounds",
            "2",
            "--model",
            "python:wide_mlp:tiny_mlp",
            "--target",
            "0.2",
            "--out",
            OUT_DIR,
        ),
    ),
    "fedau": Benchmark(
        "fedau_participation.py",
        "FedAU against its baselines under unknown participation (last-50-round scoring)",
        # Bernoulli participation, 600 rounds, 3 seeds, with the step sizes docs/fedau.md's
        # 500-round tuning chose: FedAU needs a few hundred rounds to learn every client's
        # interval (at 200 rounds it still trails by 10-25 points); the cyclic and Markov
        # patterns over 1,000 rounds are docs/fedau.md's commands.
        args=(
            *("--rounds", "600", "--patterns", "bernoulli", "--tune-rounds", "0"),
            *(*_FEDAU_TUNED, *_FEDAU_CURVES),
        ),
        quick=(
            *("--clients", "2", "--rounds", "6", "--seeds", "1", "--patterns", "cyclic"),
            *("--tune-rounds", "0", *_FEDAU_CURVES),
        ),
    ),
    "round-overhead": Benchmark(
        "round_overhead.py",
        "one round's time on the Deployment Engine, warm against stock",
        args=("--repeats", "1", "--rounds", "8"),
        quick=("--repeats", "1", "--rounds", "2"),
    ),
    "aggregation": Benchmark(
        "aggregation_cost.py",
        "one round's decode, check and aggregation against Flower's FedAvg",
        quick=("--clients", "2", "--params", "0.01"),
    ),
    "scale": Benchmark(
        "scale.py",
        "FedAU with 100 and 1,000 clients on the Simulation Engine",
        quick=("--clients", "10", "--rounds", "2", "--in-process", "100"),
    ),
    "monitor-load": Benchmark(
        "monitor_load.py",
        "50 concurrent dashboard readers while a run reports",
        quick=("--readers", "2", "--duration", "2", "--clients", "4", "--history", "2"),
    ),
}


def run_benchmarks(names: list[str], out: Path, quick: bool = False) -> dict[str, dict]:
    """Run `names` in order; write OUT/NAME.txt and OUT/summary.json; return the summary."""
    bench_dir = REPO / "bench"
    if not bench_dir.is_dir():
        raise ConfigError(f"fedq bench runs from a checkout of fedq: no bench/ at {bench_dir}")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown benchmark {unknown[0]!r}; allowed: {', '.join(BENCHMARKS)}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for name in names:
        bench = BENCHMARKS[name]
        argv = [sys.executable, str(bench_dir / bench.script)]
        argv += [a.replace(OUT_DIR, str(out)) for a in (bench.quick if quick else bench.args)]
        typer.echo(f"== {name}: {' '.join(argv[1:])}")
        started = time.monotonic()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        output = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.returncode else "")
        (out / f"{name}.txt").write_text(output)
        # A program may print a row as it goes and again in its final table: each goal once.
        goals = list(
            dict.fromkeys(line.strip() for line in done.stdout.splitlines() if _is_verdict(line))
        )
        for line in goals:
            typer.echo(f"   {line}")
        if done.returncode:
            typer.echo(f"   exit code {done.returncode}: see {out / (name + '.txt')}")
        summary[name] = {
            "command": " ".join(["python", *argv[1:]]).replace(str(REPO) + "/", ""),
            "returncode": done.returncode,
            "seconds": round(time.monotonic() - started, 1),
            "goals": goals,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def list_lines() -> list[str]:
    """One line per benchmark: its name, program and what it measures."""
    return [f"{name:18} bench/{b.script}: {b.about}" for name, b in BENCHMARKS.items()]


def _is_verdict(line: str) -> bool:
    """A line that states a goal's outcome."""
    return re.search(r"\bmet\b|\bMISSED\b", line) is not None
