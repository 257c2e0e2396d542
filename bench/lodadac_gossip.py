"""Benchmark: LoDAdaC's accuracy against the bytes it moves, compressed vs uncompressed gossip.

Digits, 8 clients, Dirichlet(0.3) label skew, MLP, on a ring and on a torus (2 x 4 with
wrap-around, degree 3), seeds 0..2. Side by side, same data and seeds:

* LoDAdaC, Adam (lr 0.01, β = (0.9, 0.999), δ = 1e-3, γ = 0.5), K = 5 and K = 20 local
  steps per round, with each message codec: top-k 30 % (fp32 values), int4, sign,
  top-k 30 % + int4 — and uncompressed (fp32 values: local-Adam gossip);
* CHOCO-SGD (K = 1, plain SGD lr 0.1, δ = 1, γ = 0.5) with the same codecs, run for as many
  gradient steps as LoDAdaC with K = 5;
* Flower's stock FedAvg with fp32 models (20 local SGD steps, lr 0.1), the yardstick.

Bytes are Flower's serialization of every message both ways (server/metering.py), summed
over clients and rounds; LoDAdaC's include the initial model sent to every agent and every
relayed message. A run's accuracy is the mean test accuracy of the average public model
(FedAvg: the global model) over its last 10 % of rounds (at least 5), then mean ± std over
seeds. Goal (docs/benchmarks.md): compressed LoDAdaC within 1 point of uncompressed
local-Adam gossip (same K) with >= 6x fewer bytes.

Runs in this process (bench/in_process_grid.py): Flower's `Strategy.start`, fedq's strategy
and ClientApp, no gRPC transport (same bytes, same numbers).

    python bench/lodadac_gossip.py --plot docs/lodadac.png      # the full run (about 1 h)
    python bench/lodadac_gossip.py --seeds 1 --topologies ring  # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from in_process_grid import InProcessGrid, run_rounds

from client.client_app import app as client_app
from fedq.runconfig import RunConfig
from server.metering import MeteredGrid

CLIENTS = 8
CODECS = ("topk:0.3+fp32", "int4", "sign", "topk:0.3+int4")
UNCOMPRESSED = "none"
ADAM_LR, SGD_LR = 0.01, 0.1
GOAL_POINTS, GOAL_REDUCTION = 1.0, 6.0
TARGETS = (0.90, 0.95)  # test accuracy whose bytes-to-target the tables show


@dataclass(frozen=True)
class Setting:
    """One line of the comparison: which method, K and codec, on which graph."""

    method: str  # "lodadac", "choco" or "fedavg"
    topology: str
    local_steps: int
    codec: str
    rounds: int

    def label(self) -> str:
        """A short name for tables and plots."""
        if self.method == "fedavg":
            return "FedAvg fp32"
        codec = "fp32" if self.codec == UNCOMPRESSED else self.codec
        name = "LoDAdaC" if self.method == "lodadac" else "CHOCO-SGD"
        return f"{name} K={self.local_steps} {codec}"

    def run_config(self, seed: int) -> RunConfig:
        """The run configuration of this setting and seed."""
        common = {
            "partitioner": "dirichlet",
            "dirichlet_alpha": 0.3,
            "batch_size": 32,
            "seed": seed,
            "min_clients": CLIENTS,
        }
        if self.method == "fedavg":
            return RunConfig(strategy="fedavg", local_steps=20, lr=SGD_LR, **common)
        return RunConfig(
            strategy="lodadac",
            topology=self.topology,
            optimizer="adam" if self.method == "lodadac" else "sgd",
            lr=ADAM_LR if self.method == "lodadac" else SGD_LR,
            local_steps=self.local_steps,
            consensus_step=0.5,
            compress=self.codec,
            **common,
        )


@dataclass(frozen=True)
class Trace:
    """One run: test accuracy and cumulative bytes (both directions) after each round."""

    accuracy: list[float]
    cum_bytes: list[int]

    def bytes_to(self, target: float) -> int | None:
        """Cumulative bytes up to the first round whose accuracy reaches ``target``."""
        for accuracy, total in zip(self.accuracy, self.cum_bytes, strict=True):
            if accuracy >= target:
                return total
        return None

    def score(self) -> float:
        """Mean accuracy over the last 10 % of rounds, at least 5 and at most 50 of them."""
        rounds = self.accuracy[1:]
        tail = min(50, max(5, len(rounds) // 10))
        return statistics.fmean(rounds[-tail:])


def run_once(setting: Setting, seed: int) -> Trace:
    """Run one setting with one seed in this process."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    config = setting.run_config(seed)
    nodes = [{"partition-id": i, "num-partitions": CLIENTS} for i in range(CLIENTS)]
    grid = MeteredGrid(InProcessGrid(client_app, nodes, config.to_mapping()))
    cum_bytes: list[int] = []

    def count(server_round: int) -> None:
        traffic = grid.ledger.take().values()
        total = sum(t.bytes_up + t.bytes_down for t in traffic)
        cum_bytes.append((cum_bytes[-1] if cum_bytes else 0) + total)

    accuracy = run_rounds(config, grid, setting.rounds, after_round=count)
    return Trace(accuracy, cum_bytes)


def settings(topologies: list[str], rounds: int, choco_rounds: int) -> list[Setting]:
    """Every setting of the comparison, FedAvg once (it has no topology)."""
    chosen = [Setting("fedavg", "-", 20, UNCOMPRESSED, rounds)]
    for topology in topologies:
        for k in (5, 20):
            for codec in (UNCOMPRESSED, *CODECS):
                chosen.append(Setting("lodadac", topology, k, codec, rounds))
        for codec in (UNCOMPRESSED, *CODECS):
            chosen.append(Setting("choco", topology, 1, codec, choco_rounds))
    return chosen


def _fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def _to_target(traces: list[Trace], target: float) -> str:
    """Mean MB to reach ``target`` over the seeds that reached it, and how many did."""
    reached = [b for b in (t.bytes_to(target) for t in traces) if b is not None]
    if not reached:
        return "not reached"
    note = "" if len(reached) == len(traces) else f" ({len(reached)}/{len(traces)} seeds)"
    return f"{statistics.fmean(reached) / 1e6:.2f}{note}"


def _table(results: dict[Setting, list[Trace]], topology: str) -> None:
    """One markdown table per topology, with the goal checked against the same-K baseline."""
    print(f"\n## {topology}\n")
    targets = " | ".join(f"MB to {100 * t:.0f} %" for t in TARGETS)
    print(
        f"| method | accuracy (%) | MB both ways | {targets} | fewer bytes than fp32 gossip "
        "(same K) | Δ vs fp32 gossip (points) | goal |"
    )
    print("| --- " * (6 + len(TARGETS)) + "|")
    rows = [s for s in results if s.topology in (topology, "-")]
    for setting in rows:
        traces = results[setting]
        scores = [t.score() for t in traces]
        megabytes = statistics.fmean(t.cum_bytes[-1] for t in traces) / 1e6
        base = Setting(setting.method, topology, setting.local_steps, UNCOMPRESSED, setting.rounds)
        ratio = delta = goal = ""
        if setting.codec != UNCOMPRESSED and base in results:
            base_bytes = statistics.fmean(t.cum_bytes[-1] for t in results[base]) / 1e6
            points = 100 * (
                statistics.fmean(scores) - statistics.fmean(t.score() for t in results[base])
            )
            reduction = base_bytes / megabytes
            ratio, delta = f"{reduction:.2f}x", f"{points:+.2f}"
            if setting.method == "lodadac":
                met = points >= -GOAL_POINTS and reduction >= GOAL_REDUCTION
                goal = "met" if met else "MISSED"
        to_target = " | ".join(_to_target(traces, t) for t in TARGETS)
        print(
            f"| {setting.label()} | {_fmt(scores)} | {megabytes:.2f} | {to_target} | {ratio} "
            f"| {delta} | {goal} |",
            flush=True,
        )


def _plot(results: dict[Setting, list[Trace]], topologies: list[str], path: Path) -> None:
    """Accuracy against cumulative MB (mean over seeds), one panel per topology and K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip((UNCOMPRESSED, *CODECS), ("black", "C0", "C1", "C2", "C3"), strict=True))
    figure, axes = plt.subplots(
        len(topologies), 2, figsize=(12, 4.5 * len(topologies)), squeeze=False
    )
    for row, topology in enumerate(topologies):
        for column, k in enumerate((5, 20)):
            ax = axes[row][column]
            for setting, traces in results.items():
                if setting.method == "lodadac" and (setting.topology, setting.local_steps) != (
                    topology,
                    k,
                ):
                    continue
                if setting.method == "choco" and setting.topology != topology:
                    continue
                accuracy = [
                    statistics.fmean(a) for a in zip(*(t.accuracy for t in traces), strict=True)
                ]
                megabytes = [
                    statistics.fmean(b) / 1e6
                    for b in zip(*(t.cum_bytes for t in traces), strict=True)
                ]
                style = {"lodadac": "-", "choco": ":", "fedavg": "--"}[setting.method]
                color = "grey" if setting.method == "fedavg" else colors[setting.codec]
                ax.plot(megabytes[1:], accuracy[1:], style, color=color, label=setting.label())
            ax.set_xscale("log")
            ax.set_ylim(0.5, 1.0)
            ax.set_xlabel("cumulative MB, both directions (log)")
            ax.set_ylabel("test accuracy of the average public model")
            ax.set_title(f"{topology}, LoDAdaC K = {k} (CHOCO-SGD dotted, FedAvg dashed)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def _run_all(chosen: list[Setting], args: argparse.Namespace) -> dict[Setting, list[Trace]]:
    """Every setting for every seed, ``args.jobs`` runs at a time."""
    print(
        f"digits, {CLIENTS} clients, Dirichlet 0.3, seeds 0..{args.seeds - 1}; "
        f"{_cpu_model()}, {os.cpu_count()} cores",
        flush=True,
    )
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            (setting, seed): pool.submit(run_once, setting, seed)
            for setting in chosen
            for seed in range(args.seeds)
        }
        results = {s: [futures[(s, seed)].result() for seed in range(args.seeds)] for s in chosen}
    print(f"({len(futures)} runs in {time.perf_counter() - started:.0f} s)")
    return results


def _load(path: Path) -> dict[Setting, list[Trace]]:
    """The results a run saved with --json."""
    results = {}
    for item in json.loads(path.read_text()):
        traces = [Trace(**t) for t in item.pop("traces")]
        item.pop("label")
        results[Setting(**item)] = traces
    return results


def _cpu_model() -> str:
    """The CPU model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    """Run every setting and seed (in parallel processes); print tables, write the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--topologies", default="ring,torus")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of LoDAdaC and FedAvg")
    parser.add_argument("--choco-rounds", type=int, default=200, help="rounds of CHOCO-SGD")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--plot", type=Path, help="write the accuracy-vs-bytes plot here")
    parser.add_argument("--json", type=Path, help="write every trace here")
    parser.add_argument(
        "--from-json", type=Path, help="print the tables (and plot) of a run saved with --json"
    )
    args = parser.parse_args()
    topologies = args.topologies.split(",")
    if args.from_json:
        results = _load(args.from_json)
    else:
        results = _run_all(settings(topologies, args.rounds, args.choco_rounds), args)
    for topology in topologies:
        _table(results, topology)
    if args.json and not args.from_json:
        payload = [
            {**asdict(s), "label": s.label(), "traces": [asdict(t) for t in traces]}
            for s, traces in results.items()
        ]
        args.json.write_text(json.dumps(payload))
    if args.plot:
        _plot(results, topologies, args.plot)


if __name__ == "__main__":
    main()
