"""Benchmark: FedAU vs its baselines when clients take part with unknown, unequal rates.

Digits, 20 clients, Dirichlet(0.1) label skew, participation correlated with each client's
labels (docs/algorithms.md: p_n = max(0.02, C * m * <a_n, b>), mean about m), under three
patterns (Bernoulli, Markov, cyclic); aggregation modes `fedau`, `participants` (FedAvg over
participants), `all` (FedAvg over all clients) and `known-prob` (oracle 1/p weights).
Reference settings of the paper: 5 local SGD steps, minibatch 16, lr 0.1, server lr 1.

Runs in this process (bench/in_process_grid.py): Flower's `Strategy.start` with fedq's FedAU
and fedq's ClientApp, without the gRPC transport. Prints mean ± std over seeds of the final
and the best test accuracy, and whether the goals hold: FedAU >= participants + 3 points,
FedAU within 1 point of known-prob.

    python bench/fedau_participation.py                      # 3 seeds, 200 rounds
    python bench/fedau_participation.py --rounds 50 --seeds 1  # quick look
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from in_process_grid import InProcessGrid, run_rounds

from client.client_app import app as client_app
from fedq.runconfig import FEDAU_MODES, RunConfig

PATTERNS = {
    "bernoulli": "bernoulli:label:{m}",
    "markov": "markov:0.2:label:{m}",
    "cyclic": "cyclic:20:label:{m}",
}


def run_once(mode: str, availability: str, seed: int, rounds: int, clients: int) -> list[float]:
    """Test accuracy after each round (index 0: the initial model)."""
    config = RunConfig(
        strategy="fedau",
        fedau_mode=mode,
        partitioner="dirichlet",
        dirichlet_alpha=0.1,
        local_steps=5,
        batch_size=16,
        lr=0.1,
        server_lr=1.0,
        seed=seed,
        availability=availability,
        min_clients=1,
    )
    nodes = [{"partition-id": i, "num-partitions": clients} for i in range(clients)]
    grid = InProcessGrid(client_app, nodes, config.to_mapping())
    return run_rounds(config, grid, rounds)


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    """Run every (pattern, mode, seed), print one table per pattern and the goal check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mean-p", type=float, default=0.2, help="target mean participation")
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print(
        f"{args.clients} clients, Dirichlet 0.1, {args.rounds} rounds, seeds 0..{args.seeds - 1},"
        f" label-correlated participation with mean about {args.mean_p}"
    )
    for pattern in args.patterns.split(","):
        availability = PATTERNS[pattern].format(m=args.mean_p)
        final: dict[str, list[float]] = {}
        best: dict[str, list[float]] = {}
        for mode in FEDAU_MODES:
            started = time.perf_counter()
            runs = [
                run_once(mode, availability, s, args.rounds, args.clients)
                for s in range(args.seeds)
            ]
            final[mode] = [r[-1] for r in runs]
            best[mode] = [max(r) for r in runs]
            print(f"  [{pattern}] {mode}: {time.perf_counter() - started:.0f} s", flush=True)
        print(f'\n## {pattern} (`availability = "{availability}"`)\n')
        print("| mode | final accuracy (%) | best accuracy (%) |")
        print("| --- | --- | --- |")
        for mode in FEDAU_MODES:
            print(f"| {mode} | {_fmt(final[mode])} | {_fmt(best[mode])} |")
        gain = 100 * (statistics.fmean(final["fedau"]) - statistics.fmean(final["participants"]))
        gap = 100 * (statistics.fmean(final["known-prob"]) - statistics.fmean(final["fedau"]))
        print(
            f"\nFedAU - participants: {gain:+.2f} points (goal >= +3: "
            f"{'met' if gain >= 3 else 'MISSED'}); known-prob - FedAU: {gap:+.2f} points "
            f"(goal <= 1: {'met' if gap <= 1 else 'MISSED'})\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
