"""Benchmark: FedAU with 100 and 1,000 clients on Flower's Simulation Engine.

Each size is one `fedq demo --engine simulation` (the MLP on digits, IID partitions, FedAU,
sampled participation: `fraction-train` of the clients asked each round, each of them
available with the `availability` model), run to completion as a child process. Printed per
size: wall time per round (round 1 apart: it includes starting Ray and the first ClientApp's
imports), and the strategy's state in checkpoint.pt, serialized as the checkpoint
serializes it (torch.save) and divided by the clients the state holds:

- FedAU's own state, with and without its table of client ids, and the id table alone;
- the Link's node -> client map beside it (the rest of the checkpoint's strategy part);
- bytes of rounds.jsonl per round (one entry per client asked).

Then FedAU alone, driven through the Link in this process with 1,000 and 10,000 clients
that all become known, against the dict-per-client state it replaced (format 1), and one
pass of Flower's simulation feeder over 100, 1,000 and 3,000 virtual nodes. Goals
(issue 14, §4): 1,000 clients run on this machine; at most 64 bytes of FedAU state per
client. Every process a demo starts is stopped by the demo itself (SIGTERM on a timeout).

    python bench/scale.py                    # 100 and 1,000 clients, 4 rounds: ~10 min on 2 cores
    python bench/scale.py --clients 100 --rounds 2   # quick look
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.common.constant import (
    HEARTBEAT_INTERVAL_INF,
    NOOP_ACCOUNT_NAME,
    NOOP_FLWR_AID,
    SUPERLINK_NODE_ID,
)
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.federation.noop_federation_manager import NOOP_FEDERATION_ID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedq import wire  # noqa: E402
from server.telemetry.reports import round_report  # noqa: E402
from strategies.fedau import FedAU  # noqa: E402
from strategies.link import Link  # noqa: E402
from tests.flower_messages import NodesGrid, message, reply  # noqa: E402

STATE_GOAL_BYTES = 64  # FedAU's state per client
# Seconds a demo waits for a round's replies: 1,000 clients' round 1 starts Ray first.
ROUND_TIMEOUT_SECONDS = 900
STOP_GRACE_SECONDS = 60  # after SIGTERM, for the demo to stop its Flower processes


def checkpoint_bytes(state: Any) -> int:
    """Bytes of `state` serialized as checkpoint.pt serializes the strategy's (torch.save)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def fedau_state_figures(link_state: dict[str, Any]) -> dict[str, float]:
    """Byte counts of a Link-wrapped FedAU's state (checkpoint.pt's `strategy` part).

    Returns: clients (the number the state holds), strategy_bytes (the whole part),
    fedau_bytes (FedAU's own), fedau_without_ids_bytes (the same with an empty id table),
    id_table_bytes (the ids as stored: one JSON string), id_bytes (the ids' UTF-8 bytes
    alone), node_map_bytes (the Link's node -> client map: what is not FedAU's) and
    empty_fedau_bytes (FedAU's state with no client: the container, paid once).
    """
    fedau = link_state["strategy"]
    estimator = fedau["estimator"]
    ids = json.loads(estimator["ids"])
    whole = checkpoint_bytes(link_state)
    own = checkpoint_bytes(fedau)
    return {
        "clients": len(ids),
        "strategy_bytes": whole,
        "fedau_bytes": own,
        "fedau_without_ids_bytes": checkpoint_bytes(
            {**fedau, "estimator": {**estimator, "ids": ""}}
        ),
        "id_table_bytes": len(estimator["ids"].encode()),
        "id_bytes": sum(len(client.encode()) for client in ids),
        "node_map_bytes": whole - own,
        "empty_fedau_bytes": checkpoint_bytes(FedAU(mode=fedau["mode"]).state()),
    }


def format_1_bytes(fedau: FedAU) -> int:
    """Bytes the same FedAU state took in format 1 (before this benchmark): a dict client ->
    (gap, interval mean, interval count) and the sorted list of known clients."""
    old = {
        "mode": fedau.mode,
        "estimator": {
            client: (history.gap, history.interval_mean, history.interval_count)
            for client, history in sorted(fedau.estimator.clients.items())
        },
        "known": sorted(fedau.known),
    }
    return checkpoint_bytes(old)


def _reply(node: int, took_part: bool, model: ArrayRecord) -> Any:
    """A fedq client's reply: its model when it took part, else that it sat the round out."""
    record = ConfigRecord({wire.CLIENT_ID: str(node), wire.PARTICIPATED: took_part})
    content = RecordDict({wire.CLIENT: record})
    if took_part:
        content[wire.ARRAYS] = model
        content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: 2, wire.TRAIN_LOSS: 1.0})
    return reply(message(RecordDict(), dst=node), content)


def in_process_state(clients: int, rounds: int = 3) -> dict[str, float]:
    """FedAU through the Link with `clients` synthetic clients, all asked every round and
    each taking part with probability 0.1; node ids as large as Flower's simulation's
    (19 digits), which are also the client ids. Returns `fedau_state_figures` plus
    format_1_bytes and seconds_per_round (the server's reading and aggregation alone)."""
    # Messages made by a strategy carry the ServerApp process's task identity.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (1, 1, 1)
    rng = np.random.default_rng(0)
    nodes = [int(n) for n in rng.integers(10**18, 2**63 - 1, clients, dtype=np.int64)]
    fedau = FedAU(mode="fedau", min_available_nodes=1, min_train_nodes=1)
    link = Link(fedau)
    model = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    seconds = []
    for server_round in range(1, rounds + 1):
        takes_part = rng.random(clients) < 0.1
        replies = [_reply(n, bool(t), model) for n, t in zip(nodes, takes_part, strict=True)]
        started = time.perf_counter()
        list(link.configure_train(server_round, model, ConfigRecord(), NodesGrid(nodes)))
        new, _ = link.aggregate_train(server_round, replies)
        seconds.append(time.perf_counter() - started)
        model = new if new is not None else model
    figures = fedau_state_figures(link.state())
    figures["format_1_bytes"] = format_1_bytes(fedau)
    figures["seconds_per_round"] = statistics.median(seconds)
    return figures


def flower_feeder_pass_seconds(nodes: int, messages: int) -> float:
    """Seconds of one pass of Flower 1.39's simulation feeder over `nodes` virtual nodes
    while `messages` of them hold a delivered message (the steady state during a round).

    The feeder (`add_messages_to_queue`, flwr/server/superlink/fleet/vce/vce_api.py) asks
    the in-memory LinkState for each node's next message every 0.1 s; each ask walks every
    stored message. Built as the simulation builds its state (`_register_nodes`).
    """
    state = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    ).state()
    run_id = state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, "serverapp")
    node_ids = []
    for _ in range(nodes):
        node_id = state.create_node(
            NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, secrets.token_bytes(32), HEARTBEAT_INTERVAL_INF
        )
        state.acknowledge_node_heartbeat(node_id, HEARTBEAT_INTERVAL_INF)
        node_ids.append(node_id)
    for i, node_id in enumerate(node_ids[:messages]):
        metadata = Metadata(
            run_id=run_id,
            message_id=f"m{i}",
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=node_id,
            reply_to_message_id="",
            group_id="1",
            created_at=time.time(),
            ttl=3600.0,
            message_type="train",
        )
        state.message_ins_store[metadata.message_id] = Message(RecordDict(), metadata=metadata)
    for node_id in node_ids:  # the first pass delivers the messages
        state.get_message_ins(node_id=node_id, limit=1)
    started = time.perf_counter()
    for node_id in node_ids:
        state.get_message_ins(node_id=node_id, limit=1)
    return time.perf_counter() - started


def run_demo(clients: int, args: argparse.Namespace, workdir: Path, budget: float) -> dict:
    """One `fedq demo --engine simulation`; its figures, or why it did not finish."""
    demo_dir = workdir / f"clients-{clients}"
    demo_dir.mkdir()
    argv = [
        str(Path(sys.executable).parent / "fedq"),
        "demo",
        "--engine",
        "simulation",
        "--clients",
        str(clients),
        "--rounds",
        str(args.rounds),
        "--strategy",
        "fedau",
        "--partitioner",
        "iid",
        "--no-monitor",
        "--set",
        f"fraction-train={args.fraction_train}",
        "--set",
        f"availability={args.availability}",
        "--set",
        f"round-timeout={ROUND_TIMEOUT_SECONDS}",
        "--output-dir",
        str(demo_dir),
        "--summary",
        str(demo_dir / "summary.json"),
    ]
    started = time.monotonic()
    log = (workdir / f"clients-{clients}.log").open("w")
    child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"  {clients} clients: demo pid {child.pid}, log {log.name}", file=sys.stderr)
    finished = True
    try:
        child.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        finished = False
        child.send_signal(signal.SIGTERM)  # the demo stops its Flower processes, then exits
        try:
            child.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    finally:
        log.close()
    result = {"clients": clients, "finished": finished and child.returncode == 0}
    result["demo_seconds"] = time.monotonic() - started
    rounds_files = sorted(demo_dir.glob("demo-*/*/rounds.jsonl"))
    if not rounds_files:
        result["error"] = f"no rounds.jsonl (exit code {child.returncode})"
        return result
    lines = rounds_files[-1].read_text().splitlines()
    records = [json.loads(line) for line in lines]
    elapsed = [r["elapsed_seconds"] for r in records]
    walls = [b - a for a, b in itertools.pairwise(elapsed)]
    result["rounds_done"] = len(records) - 1
    result["first_round_seconds"] = walls[0] if walls else None
    result["later_round_seconds"] = walls[1:]
    result["participants"] = [len(r["participants"]) for r in records[1:]]
    result["asked"] = [len(r["clients"]) for r in records[1:]]
    result["rounds_jsonl_bytes"] = [len(line) + 1 for line in lines[1:]]
    result["report_bytes"] = [round_report("run", r).ByteSize() for r in records[1:]]
    result["known"] = [len((r.get("strategy") or {}).get("nodes") or {}) for r in records[1:]]
    checkpoint = rounds_files[-1].parent / "checkpoint.pt"
    if checkpoint.exists():
        result["state"] = fedau_state_figures(
            torch.load(checkpoint, weights_only=False)["strategy"]
        )
    return result


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def _per_client(figures: dict[str, float], key: str) -> str:
    return f"{figures[key] / figures['clients']:.1f}" if figures["clients"] else "-"


def _seconds_per_call(demo: dict) -> str:
    """Median seconds of a round after the first, per client asked (one ClientApp call)."""
    walls, asked = demo["later_round_seconds"], demo["asked"][1:]
    if not walls or not min(asked):
        return "-"
    return f"{statistics.median(w / a for w, a in zip(walls, asked, strict=True)):.2f}"


def _beyond_empty(figures: dict[str, float], key: str) -> str:
    """Bytes per client beyond the state of no client (the container, paid once)."""
    if not figures["clients"]:
        return "-"
    return f"{(figures[key] - figures['empty_fedau_bytes']) / figures['clients']:.1f}"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


STATE_COLUMNS = (
    "| clients in state | FedAU B/client | beyond the empty state | the same without ids "
    "| ids themselves | Link node map |"
)


def _state_cells(figures: dict[str, float]) -> str:
    return (
        f"| {figures['clients']} | {_per_client(figures, 'fedau_bytes')} "
        f"| {_beyond_empty(figures, 'fedau_bytes')} "
        f"| {_beyond_empty(figures, 'fedau_without_ids_bytes')} "
        f"| {_per_client(figures, 'id_bytes')} | {_per_client(figures, 'node_map_bytes')} |"
    )


def print_report(
    demos: list[dict],
    local: list[dict[str, float]],
    feeder: list[tuple[int, int, float]],
    args: argparse.Namespace,
) -> None:
    """The figures as markdown tables (bytes per client unless said), then the goals."""
    print(
        f"\nFedAU on Flower's Simulation Engine: fraction-train {args.fraction_train}, "
        f"availability {args.availability}, {args.rounds} rounds, MLP on digits (IID)\n"
    )
    print(
        "| clients | rounds done | round 1 (s) | later rounds, median (s) | s per client asked "
        "| updates of clients asked, median | clients known, last round "
        "| rounds.jsonl B, last round | monitor report B, last round " + STATE_COLUMNS
    )
    print("| " + " | ".join(["---"] * 15) + " |")
    for demo in demos:
        state = demo.get("state")
        if state is None:
            print(f"| {demo['clients']} | {demo.get('error', 'no checkpoint')} |")
            continue
        print(
            f"| {demo['clients']} | {demo['rounds_done']}"
            f"{'' if demo['finished'] else ' (stopped)'} | {demo['first_round_seconds']:.1f} "
            f"| {_median(demo['later_round_seconds'])} | {_seconds_per_call(demo)} "
            f"| {_median(demo['participants'])} of {_median(demo['asked'])} "
            f"| {demo['known'][-1]} | {demo['rounds_jsonl_bytes'][-1]} "
            f"| {demo['report_bytes'][-1]} " + _state_cells(state)
        )
    print(
        "\nFedAU alone through the Link in this process: every client asked each round, "
        "each taking part with p = 0.1, 19-digit ids (as the simulation's node ids):\n"
    )
    print(STATE_COLUMNS + " format 1 (before) | server s/round |")
    print("| " + " | ".join(["---"] * 8) + " |")
    for figures in local:
        print(
            _state_cells(figures) + f" {_per_client(figures, 'format_1_bytes')} "
            f"| {figures['seconds_per_round']:.2f} |"
        )
    print(
        "\nFlower's simulation feeder, one pass over the virtual nodes with a tenth of them "
        "holding a delivered message (it runs every 0.1 s while a round is out):\n"
    )
    print("| virtual nodes | messages stored | seconds per pass |")
    print("| --- | --- | --- |")
    for nodes, messages, seconds in feeder:
        print(f"| {nodes} | {messages} | {seconds:.3f} |")
    empty = (local or [d["state"] for d in demos if d.get("state")] or [{}])[0]
    if empty:
        print(f"\nFedAU's state of no client: {empty['empty_fedau_bytes']} B (torch.save's zip).")
    thousand = [d for d in demos if d["clients"] >= 1000]
    ran = bool(thousand) and all(
        d.get("finished") and d.get("rounds_done") == args.rounds and min(d["participants"]) > 0
        for d in thousand
    )
    states = [d["state"] for d in demos if d.get("state")] + local
    large = [s for s in states if s["clients"] >= 1000]
    print("\nGoals:")
    if thousand:
        print(f"- 1,000 clients run on this machine, every round aggregated: {_verdict(ran)}")
    else:
        print("- 1,000 clients run on this machine: not measured (not in --clients)")
    if large:
        worst = max(s["fedau_bytes"] / s["clients"] for s in large)
        print(
            f"- FedAU state <= {STATE_GOAL_BYTES} B per client (ids included, whole file "
            f"divided, states of >= 1,000 clients): worst {worst:.1f} B: "
            f"{_verdict(worst <= STATE_GOAL_BYTES)}"
        )
    else:
        print(f"- FedAU state <= {STATE_GOAL_BYTES} B per client: no state of 1,000 clients")


def machine() -> str:
    """CPU model, cores and memory of this machine, in one line."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB"


def main() -> None:
    """Parse the arguments, run the demos within the budget, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,1000", help="comma-separated sizes")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fraction-train", type=float, default=0.1)
    parser.add_argument("--availability", default="bernoulli:0.5")
    parser.add_argument(
        "--in-process", default="1000,10000", help="comma-separated sizes for FedAU alone"
    )
    parser.add_argument(
        "--budget-seconds", type=float, default=840.0, help="for all demos together"
    )
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    print(f"machine: {machine()}; commit {commit}", file=sys.stderr)
    deadline = time.monotonic() + args.budget_seconds
    demos = []
    workdir = Path(tempfile.mkdtemp(prefix="fedq-scale-"))  # kept: the demos' logs
    for clients in [int(c) for c in args.clients.split(",")]:
        budget = deadline - time.monotonic()
        if budget < 30:
            demos.append({"clients": clients, "error": "no time left in --budget-seconds"})
            continue
        demos.append(run_demo(clients, args, workdir, budget))
        print(f"  {clients} clients: {demos[-1]['demo_seconds']:.0f} s", file=sys.stderr)
    local = [in_process_state(int(n)) for n in args.in_process.split(",")]
    print(f"machine: {machine()}; commit {commit}")
    feeder = [(n, n // 10, flower_feeder_pass_seconds(n, n // 10)) for n in (100, 1000, 3000)]
    print_report(demos, local, feeder, args)


if __name__ == "__main__":
    main()
