"""Benchmark: bytes, both directions, until the model reaches a target accuracy.

Digits, 16 clients, Dirichlet(0.3) label skew, every client every round, 20 local SGD
steps of 32 examples (lr 0.1), FedAvg, 3 seeds. For each system — Flower's FedAvg with
fp32 models both ways (the baseline), and fedq's FedAvg with an uplink codec and a
compressed downlink — it records after every round the test accuracy and the bytes moved
so far each way (Flower's own serialization of every message, server/metering.py), and
reports:

* the round and the bytes (up + down) at which the global model first reaches the target;
* the mean test accuracy of the last 5 rounds (mean ± std over seeds);
* the bytes of the whole run each way, and their ratio to the baseline.

Goals (issue "Beat Flower on the wire" §4, against the baseline): ≥ 8x fewer uplink bytes
for a 4-bit-class uplink within 0.5 point of the baseline's accuracy; ≥ 10x fewer bytes
both ways together (4-bit class); ≥ 30x both ways with sparsification + error feedback,
within 1 point. Runs in this process (bench/in_process_grid.py: Flower's `Strategy.start`,
fedq's strategy and ClientApp, no gRPC transport; the same bytes as over gRPC).

    python bench/bytes_to_accuracy.py                          # 3 seeds, 40 rounds
    python bench/bytes_to_accuracy.py --seeds 1 --rounds 10    # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import plots
from compressed_fedavg import digits_fedavg
from in_process_grid import run_rounds

PER_TENSOR_INT4 = "int4:block=0+ans+ef / int4:block=0+ans+ef"
SPARSE_PER_TENSOR = "topk:0.03+int4:block=0+ans+ef / topk:0.05+int4:block=0+ans+ef"

# name -> (uplink codec, downlink); the first is the baseline.
SYSTEMS = {
    "Flower FedAvg fp32": ("none", "fp32"),
    "int8+ans / int8+ef": ("int8+ans", "int8+ef"),
    "int4+ans / int8+ef": ("int4+ans", "int8+ef"),
    "int4+ans / int4+ef": ("int4+ans", "int4+ef"),
    "int4+ans / int4+ans+ef": ("int4+ans", "int4+ans+ef"),
    # One scale per tensor: most codes land near zero, which +ans turns into fewer bits;
    # error feedback on both sides carries the coarser rounding into the next round.
    PER_TENSOR_INT4: ("int4:block=0+ans+ef", "int4:block=0+ans+ef"),
    "topk:0.05+int4+ans+ef / int4+ef": ("topk:0.05+int4+ans+ef", "int4+ef"),
    "topk:0.05+int4+ans+ef / topk:0.1+int8+ef": ("topk:0.05+int4+ans+ef", "topk:0.1+int8+ef"),
    "topk:0.05+int4+ans+ef / topk:0.1+int8+ans+ef": (
        "topk:0.05+int4+ans+ef",
        "topk:0.1+int8+ans+ef",
    ),
    "topk:0.05+int4:block=0+ans+ef / topk:0.1+int4:block=0+ans+ef": (
        "topk:0.05+int4:block=0+ans+ef",
        "topk:0.1+int4:block=0+ans+ef",
    ),
    SPARSE_PER_TENSOR: ("topk:0.03+int4:block=0+ans+ef", "topk:0.05+int4:block=0+ans+ef"),
}
FOUR_BIT_CLASS = (
    "int4+ans / int8+ef",
    "int4+ans / int4+ef",
    "int4+ans / int4+ans+ef",
    PER_TENSOR_INT4,
)
SPARSE = tuple(name for name in SYSTEMS if name.startswith("topk"))
LAST_ROUNDS = 5


@dataclass
class Run:
    """One system, one seed: per round (index 0: the initial model)."""

    accuracy: list[float]
    bytes_up: list[int]  # cumulative, all clients
    bytes_down: list[int]  # cumulative, all clients

    def first_reaching(self, target: float) -> int | None:
        """The first round whose model reaches `target` accuracy (None: never)."""
        return next((r for r, a in enumerate(self.accuracy) if a >= target), None)

    @property
    def last_mean(self) -> float:
        """Mean accuracy of the last `LAST_ROUNDS` rounds."""
        return statistics.fmean(self.accuracy[-LAST_ROUNDS:])


def run_system(uplink: str, downlink: str, clients: int, seed: int, rounds: int) -> Run:
    """Train `rounds` rounds; the accuracy and cumulative bytes after each."""
    config, grid = digits_fedavg(uplink, downlink, clients, seed)
    up, down = [0], [0]

    def after_round(server_round: int) -> None:
        if server_round == 0:
            return
        traffic = grid.ledger.take().values()
        up.append(up[-1] + sum(t.bytes_up for t in traffic))
        down.append(down[-1] + sum(t.bytes_down for t in traffic))

    accuracy = run_rounds(config, grid, rounds, after_round)
    return Run(accuracy, up, down)


def _mean_std(values: list[float], scale: float = 1.0) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.2f} ± {scale * std:.2f}"


def _goal(met: bool) -> str:
    return "met" if met else "MISSED"


def report(runs: dict[str, list[Run]], target: float) -> list[str]:
    """The table and the goals, as markdown lines."""
    baseline_name = next(iter(runs))
    baseline = runs[baseline_name]
    base_acc = statistics.fmean(r.last_mean for r in baseline)
    base_up = statistics.fmean(r.bytes_up[-1] for r in baseline)
    base_total = statistics.fmean(r.bytes_up[-1] + r.bytes_down[-1] for r in baseline)
    base_to_target = _bytes_to_target(baseline, target)
    lines = [
        f"| system (uplink / downlink) | rounds to {target:.2f} | MB to {target:.2f} (up+down) "
        f"| x fewer to {target:.2f} | last-{LAST_ROUNDS} accuracy % | MB up | MB down "
        "| x fewer up | x fewer both |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, seeds in runs.items():
        reached = [r.first_reaching(target) for r in seeds]
        rounds_cell = ", ".join("never" if x is None else str(x) for x in reached)
        to_target = _bytes_to_target(seeds, target)
        up = statistics.fmean(r.bytes_up[-1] for r in seeds)
        down = statistics.fmean(r.bytes_down[-1] for r in seeds)
        lines.append(
            f"| {name} | {rounds_cell} "
            f"| {_mb(to_target)} | {_ratio(base_to_target, to_target)} "
            f"| {_mean_std([r.last_mean for r in seeds], 100)} "
            f"| {up / 1e6:.2f} | {down / 1e6:.2f} | {base_up / up:.1f}x "
            f"| {base_total / (up + down):.1f}x |"
        )
    lines += ["", "Goals against the baseline:", ""]
    for name, seeds in runs.items():
        acc = statistics.fmean(r.last_mean for r in seeds)
        up = statistics.fmean(r.bytes_up[-1] for r in seeds)
        total = statistics.fmean(r.bytes_up[-1] + r.bytes_down[-1] for r in seeds)
        gap = 100 * (base_acc - acc)
        if name in FOUR_BIT_CLASS:
            close = gap <= 0.5
            lines.append(
                f"- {name}: uplink {base_up / up:.1f}x fewer (goal >= 8x within 0.5 point: "
                f"{_goal(base_up / up >= 8 and close)}, accuracy {-gap:+.2f} points); both ways "
                f"{base_total / total:.1f}x fewer (goal >= 10x: {_goal(base_total / total >= 10)})"
            )
        elif name in SPARSE:
            lines.append(
                f"- {name}: both ways {base_total / total:.1f}x fewer, accuracy {-gap:+.2f} "
                f"points (goal >= 30x within 1 point: "
                f"{_goal(base_total / total >= 30 and gap <= 1.0)})"
            )
    return lines


def _bytes_to_target(seeds: list[Run], target: float) -> float | None:
    """Mean bytes (up + down) until the target, over the seeds that reached it."""
    values = []
    for run in seeds:
        r = run.first_reaching(target)
        if r is not None:
            values.append(run.bytes_up[r] + run.bytes_down[r])
    return statistics.fmean(values) if values else None


def _mb(value: float | None) -> str:
    return "never" if value is None else f"{value / 1e6:.2f}"


def _ratio(base: float | None, value: float | None) -> str:
    return "-" if not base or not value else f"{base / value:.1f}x"


def plot(runs: dict[str, list[Run]], target: float, path: Path) -> None:
    """Accuracy against bytes (both ways, all clients; mean over seeds) per system, as a PNG."""
    plt = plots.pyplot()
    fig, axis = plt.subplots(figsize=(8, 4.8))
    for name, seeds in runs.items():
        rounds = min(len(run.accuracy) for run in seeds)
        megabytes = [
            statistics.fmean(run.bytes_up[r] + run.bytes_down[r] for run in seeds) / 1e6
            for r in range(1, rounds)
        ]
        accuracy = [statistics.fmean(run.accuracy[r] for run in seeds) for r in range(1, rounds)]
        axis.plot(megabytes, accuracy, marker=".", label=name)
    axis.axhline(target, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("bytes up + down so far, all clients (MB, log scale)")
    axis.set_ylabel("test accuracy (mean over seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    plots.save(fig, path)


def main() -> None:
    """Run every system and seed; print the table and goals; optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy, 0..1")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated names")
    parser.add_argument("--json", type=Path, help="also write every run's curves here")
    parser.add_argument("--png", type=Path, help="also plot accuracy against bytes here")
    parser.add_argument(
        "--from-json", type=Path, help="run nothing: report and plot the runs of a --json file"
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    names = [n.strip() for n in args.systems.split(",")]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; allowed: {', '.join(SYSTEMS)}")
    runs: dict[str, list[Run]] = {}
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        runs = {name: [Run(**run) for run in seeds] for name, seeds in saved.items()}
        names = []
    for name in names:
        uplink, downlink = SYSTEMS[name]
        runs[name] = []
        for seed in range(args.seeds):
            run = run_system(uplink, downlink, args.clients, seed, args.rounds)
            runs[name].append(run)
            print(
                f"{name}, seed {seed}: last accuracy {run.accuracy[-1]:.4f}, "
                f"{run.bytes_up[-1]:,} B up, {run.bytes_down[-1]:,} B down",
                flush=True,
            )
    print()
    print(
        f"the runs in {args.from_json}, target accuracy {args.target:.2f}"
        if args.from_json
        else f"digits, {args.clients} clients, Dirichlet 0.3, {args.seeds} seeds, "
        f"{args.rounds} rounds, target accuracy {args.target:.2f}"
    )
    print()
    print("\n".join(report(runs, args.target)))
    if args.json:
        payload = {name: [asdict(r) for r in seeds] for name, seeds in runs.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    if args.png:
        plot(runs, args.target, args.png)


if __name__ == "__main__":
    main()
