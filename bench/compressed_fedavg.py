"""Benchmark: FedAvg accuracy and uplink bytes for each uplink codec on digits.

Digits, Dirichlet(0.3) label skew, 4 and 16 clients, every client every round, 20 local SGD
steps of 32 examples (lr 0.1), fp32 downlink. The baseline `none` is Flower's stock FedAvg
with whole fp32 models; every other row is Flower's FedAvg behind fedq's Link with that codec.
Uplink bytes are Flower's own serialization of every reply (server/metering.py), summed
over all rounds and clients. Runs in this process (bench/in_process_grid.py): Flower's
`Strategy.start`, fedq's strategy and ClientApp, no gRPC transport (same bytes, same numbers).

Goal (docs/benchmarks.md): within 1 point of fp32 accuracy with >= 8x fewer uplink bytes at
4 bits, >= 30x with sparsification + error feedback.

    python bench/compressed_fedavg.py                       # 3 seeds, 30 rounds, 4 and 16 clients
    python bench/compressed_fedavg.py --seeds 1 --clients 4  # quick look
    python bench/compressed_fedavg.py --downlinks fp32,bf16,int8+ef,int4+ef  # downlink table

With ``--downlinks`` it measures the downlink instead: each run-config `downlink` (a
whole-model format, or the codec of the model's change) with the uplink ``--uplink``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from in_process_grid import InProcessGrid, run_rounds

from client.client_app import app as client_app
from fedq.runconfig import RunConfig
from server.metering import MeteredGrid

CODECS = (
    "none",
    "bf16",
    "int8",
    "int4",
    "mxfp4_e2m1",
    "sign+ef",
    "topk:0.05+int8+ef",
    "topk:0.01+int8+ef",
)
# codec -> the uplink reduction it must reach (x fewer bytes than fp32) to meet the goal
REDUCTION_GOALS = {"int4": 8.0, "mxfp4_e2m1": 8.0, "topk:0.05+int8+ef": 30.0}
REDUCTION_GOALS["topk:0.01+int8+ef"] = 30.0
ACCURACY_GOAL_POINTS = 1.0


def digits_fedavg(
    compress: str, downlink: str, clients: int, seed: int
) -> tuple[RunConfig, MeteredGrid]:
    """The benchmarks' FedAvg on digits (Dirichlet 0.3, 20 steps of 32, lr 0.1) with these
    codecs, and a metered in-process grid of `clients` clients."""
    config = RunConfig(
        strategy="fedavg",
        partitioner="dirichlet",
        dirichlet_alpha=0.3,
        local_steps=20,
        batch_size=32,
        lr=0.1,
        seed=seed,
        compress=compress,
        downlink=downlink,
        min_clients=clients,
    )
    nodes = [{"partition-id": i, "num-partitions": clients} for i in range(clients)]
    return config, MeteredGrid(InProcessGrid(client_app, nodes, config.to_mapping()))


def run_once(
    compress: str, clients: int, seed: int, rounds: int, downlink: str = "fp32"
) -> tuple[float, int, int, int]:
    """(final test accuracy, cumulative uplink bytes, their payload part, cumulative
    downlink bytes) of one run."""
    config, grid = digits_fedavg(compress, downlink, clients, seed)
    accuracies = run_rounds(config, grid, rounds)
    traffic = grid.ledger.take().values()
    return (
        accuracies[-1],
        sum(t.bytes_up for t in traffic),
        sum(t.payload_up for t in traffic),
        sum(t.bytes_down for t in traffic),
    )


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    """Run every (clients, codec, seed); print one table per client count with the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", default="4,16", help="comma-separated client counts")
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--downlinks", default="", help="comma-separated: the downlink table")
    parser.add_argument("--uplink", default="none", help="the uplink codec of the downlink table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.downlinks:
        downlink_table(args)
        return
    codecs = args.codecs.split(",")
    print(f"digits, Dirichlet 0.3, {args.rounds} rounds, seeds 0..{args.seeds - 1}, fp32 downlink")
    for clients in (int(c) for c in args.clients.split(",")):
        accuracy: dict[str, list[float]] = {}
        uplink: dict[str, list[int]] = {}
        payload: dict[str, list[int]] = {}
        for codec in codecs:
            started = time.perf_counter()
            runs = [run_once(codec, clients, s, args.rounds) for s in range(args.seeds)]
            accuracy[codec] = [r[0] for r in runs]
            uplink[codec] = [r[1] for r in runs]
            payload[codec] = [r[2] for r in runs]
            print(
                f"  [{clients} clients] {codec}: {time.perf_counter() - started:.0f} s", flush=True
            )
        base_acc = statistics.fmean(accuracy[codecs[0]])
        base_bytes = statistics.fmean(uplink[codecs[0]])
        base_payload = statistics.fmean(payload[codecs[0]])
        print(f"\n## {clients} clients\n")
        print(
            "| uplink codec | final accuracy (%) | Δ vs fp32 (points) | uplink MB (cumulative) "
            "| fewer bytes than fp32 | payload only: fewer bytes | goal |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for codec in codecs:
            delta = 100 * (statistics.fmean(accuracy[codec]) - base_acc)
            reduction = base_bytes / statistics.fmean(uplink[codec])
            goal = ""
            if codec in REDUCTION_GOALS:
                ok = delta >= -ACCURACY_GOAL_POINTS and reduction >= REDUCTION_GOALS[codec]
                goal = (
                    f"≥ {REDUCTION_GOALS[codec]:g}x within {ACCURACY_GOAL_POINTS:g} pt: "
                    f"{'met' if ok else 'MISSED'}"
                )
            print(
                f"| {codec} | {_fmt(accuracy[codec])} | {delta:+.2f} | "
                f"{statistics.fmean(uplink[codec]) / 1e6:.3f} | {reduction:.1f}x | "
                f"{base_payload / statistics.fmean(payload[codec]):.1f}x | {goal} |",
                flush=True,
            )
        print()


def downlink_table(args: argparse.Namespace) -> None:
    """Run every (clients, downlink, seed) with the uplink ``args.uplink``; print the
    downlink bytes per round (all clients together) and the final accuracy."""
    downlinks = args.downlinks.split(",")
    print(
        f"digits, Dirichlet 0.3, {args.rounds} rounds, seeds 0..{args.seeds - 1}, "
        f"uplink {args.uplink}"
    )
    for clients in (int(c) for c in args.clients.split(",")):
        rows = []
        for downlink in downlinks:
            started = time.perf_counter()
            runs = [
                run_once(args.uplink, clients, s, args.rounds, downlink) for s in range(args.seeds)
            ]
            rows.append((downlink, [r[0] for r in runs], statistics.fmean(r[3] for r in runs)))
            print(
                f"  [{clients} clients] {downlink}: {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        base_acc, base_bytes = statistics.fmean(rows[0][1]), rows[0][2]
        print(f"\n## {clients} clients\n")
        print(
            "| downlink | downlink kB per round | fewer bytes than the first row "
            "| final accuracy (%) | Δ vs the first row (points) |"
        )
        print("| --- | --- | --- | --- | --- |")
        for downlink, accuracy, down in rows:
            print(
                f"| {downlink} | {down / args.rounds / 1e3:.1f} | {base_bytes / down:.1f}x | "
                f"{_fmt(accuracy)} | {100 * (statistics.fmean(accuracy) - base_acc):+.2f} |",
                flush=True,
            )
        print()


if __name__ == "__main__":
    main()
