"""Benchmark: what one round's aggregation costs the server, fedq against Flower's FedAvg.

For N replies of a P-parameter model, the time of one `aggregate_train` call:

* `flower`: Flower's stock FedAvg on N fp32 ArrayRecords (what a plain Flower server does);
* `fedq fedavg fp32`: the same FedAvg behind fedq's `Link` (every reply checked first);
* `fedq fedavg int4`, `fedq fedavg topk:0.01+int8`: the Link checking N compressed updates
  and computing FedAvg's weighted mean on them, adding each straight from its codes;
* `fedq fedau int4`: FedAU behind the Link on the same int4 updates.

The replies are built beforehand (not timed); each case runs in a fresh process, so its
memory is its own: the process's peak resident MiB (replies included) and how many MiB
the calls added above what the replies already held (Linux's peak counter, reset before
the calls). Medians of 5 calls with min and max, each size's Flower baseline first.

    python bench/aggregation_cost.py                         # 10/50/200 clients, 0.1/1 M
    python bench/aggregation_cost.py --clients 10 --params 10  # one size, in millions
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = ("flower", "fedq fedavg fp32", "fedq fedavg int4", "fedq fedavg topk:0.01+int8")
CASES += ("fedq fedau int4",)
REPEATS = 5
# Skip a size whose fp32 replies would not fit this share of the machine's memory.
MEMORY_SHARE = 0.5


def _replies(case: str, clients: int, params: int):
    """(strategy to time, its replies): built as a server would receive them."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from fedq import wire
    from quant import Codec
    from strategies.fedau import FedAU
    from strategies.link import Link
    from tests.flower_messages import NodesGrid, message, reply

    rng = np.random.default_rng(0)
    rows = max(1, params // 1000)
    shapes = {"w": (rows, params // rows), "b": (params - rows * (params // rows),)}
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    sampling = {"min_available_nodes": 1, "min_train_nodes": 1, "fraction_evaluate": 0.0}
    parts = case.split(" ")  # "flower", or "fedq STRATEGY CODEC"
    codec_spec = parts[2] if len(parts) == 3 else "fp32"
    algorithm = FedAU(mode="all", **sampling) if "fedau" in case else FedAvg(**sampling)
    codec = None if case == "flower" or codec_spec == "fp32" else Codec.from_spec(codec_spec)
    strategy = algorithm if case == "flower" else Link(algorithm, uplink=codec)
    nodes = list(range(10, 10 + clients))
    arrays = ArrayRecord({k: Array(v) for k, v in base.items()})
    list(strategy.configure_train(1, arrays, ConfigRecord(), NodesGrid(nodes)))
    replies = []
    for node in nodes:
        delta = {
            k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()
        }
        content = RecordDict(
            {
                wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 100, wire.TRAIN_LOSS: 1.0}),
                wire.CLIENT: ConfigRecord({wire.CLIENT_ID: f"c{node}"}),
            }
        )
        if codec is None:
            content[wire.ARRAYS] = ArrayRecord({k: Array(base[k] + d) for k, d in delta.items()})
        else:
            content[wire.UPDATE] = ConfigRecord({wire.PAYLOAD: codec.encode(list(delta.values()))})
        replies.append(reply(message(RecordDict(), dst=node), content))
    return strategy, replies


def _measure(case: str, clients: int, params: int, threads: int) -> dict[str, float]:
    """In this process: median/min/max seconds of one aggregate_train call; the process's
    peak MiB, and how far the calls took it above the memory the replies already held."""
    import copy

    import torch
    from flwr.supercore.task_identity import TaskIdentity

    if threads:
        torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (7, 1, 1)
    strategy, replies = _replies(case, clients, params)
    held = _reset_peak()
    times = []
    for _ in range(REPEATS):
        batch = [copy.copy(r) for r in replies]  # the Link rewrites what it hands on
        for original, copied in zip(replies, batch, strict=True):
            copied.content = copy.copy(original.content)
        started = time.perf_counter()
        strategy.aggregate_train(1, batch)
        times.append(time.perf_counter() - started)
        del batch
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "extra_mib": _status_mib("VmHWM") - held,
    }


def _reset_peak() -> float:
    """Reset the process's peak resident memory (Linux) and return the resident MiB now."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    """A memory figure of /proc/self/status (kB there), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _fits(clients: int, params: int) -> bool:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # The fp32 replies (the largest case), and a few model-sized arrays beside them.
    return (clients + 4) * params * 4 < MEMORY_SHARE * total


def main() -> None:
    """Run every case and size in its own process; print one table per size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,50,200")
    parser.add_argument("--params", default="0.1,1", help="millions of parameters")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's own)"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.case:
        sizes = int(args.clients), int(float(args.params))
        print(json.dumps(_measure(args.case, *sizes, args.torch_threads)))
        return
    threads = args.torch_threads or "default"
    print(
        f"{os.cpu_count()} cores, torch threads {threads}, load average "
        f"{os.getloadavg()[0]:.1f}; median (min-max) of {REPEATS} calls, ratio to Flower; "
        "+MiB the calls took above the replies held, of the process's peak RSS"
    )
    ratios: dict[str, list[tuple[float, int, float]]] = {}  # case -> (ratio, clients, M)
    for millions in (float(p) for p in args.params.split(",")):
        params = int(millions * 1_000_000)
        print(f"\n## {millions:g} M parameters\n")
        print("| clients | " + " | ".join(CASES) + " |")
        print("| --- |" + " --- |" * len(CASES))
        for clients in (int(c) for c in args.clients.split(",")):
            if not _fits(clients, params):
                print(f"| {clients} | " + " | ".join(["skipped (memory)"] * len(CASES)) + " |")
                continue
            cells, flower = [], None
            for case in CASES:
                argv = [sys.executable, __file__, "--case", case]
                argv += ["--clients", str(clients), "--params", str(params)]
                argv += ["--torch-threads", str(args.torch_threads)]
                out = json.loads(
                    subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                )
                flower = out["median"] if case == "flower" else flower
                ratio = ""
                if flower and case != "flower":
                    ratios.setdefault(case, []).append((out["median"] / flower, clients, millions))
                    ratio = f", {ratios[case][-1][0]:.2f}x"
                cells.append(
                    f"{out['median'] * 1e3:.0f} ms ({out['min'] * 1e3:.0f}-{out['max'] * 1e3:.0f}"
                    f"{ratio}), +{out['extra_mib']:.0f} of {out['peak_mib']:.0f} MiB"
                )
            print(f"| {clients} | " + " | ".join(cells) + " |", flush=True)
    print("\nGoal (docs/benchmarks.md): <= 1.0x Flower's time.\n")
    for case, measured in ratios.items():
        met = [m for m in measured if m[0] <= 1.0]
        worst = max(measured)
        print(
            f"- {case}: <= 1.0x Flower's time in {len(met)} of {len(measured)} cases: "
            f"{'met' if len(met) == len(measured) else 'MISSED'} (worst {worst[0]:.2f}x, "
            f"{worst[1]} clients x {worst[2]:g} M parameters)"
        )


if __name__ == "__main__":
    main()
