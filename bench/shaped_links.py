"""Benchmark: time to a target accuracy on slow links, fedq against plain Flower.

Each SuperNode runs in a network namespace of its own (tests/netns.py), its link to the
SuperLink's namespace rate-limited both ways with `tc` (1 Mbit/s, then 10 Mbit/s); with warm
ClientApps its `fedq-superexec` shares the SuperNode's namespace, as in the compose file.
Flower's real processes train a ~1 M-parameter MLP on the embedded digits, and the benchmark
watches the run directory: the wall time from `flwr run` to the first round whose central
test accuracy reaches the target, and that round's number. A run stops there (or at the
round cap) and every process and namespace is removed, on failure too.

Systems (the first is the baseline):

* `flower`: plain Flower — stock FedAvg, fp32 both ways, Flower's own process handling (a
  fresh `flwr-clientapp` per message, its 1 s task poll and 3 s reply pull), as
  `fedq demo --stock-flower`;
* `fedq-int4`: FedAvg, `compress = "int4+ans"`, warm ClientApps;
* `fedq-topk`: FedAvg, `compress = "topk:0.05+int4+ans+ef"`;
* `fedau-int4`: FedAU, `compress = "int4+ans"`;
* `fedq-int4-tensor` (not by default): FedAvg with one int4 scale per tensor both ways,
  `compress = downlink = "int4:block=0+ans+ef"` (docs/bytes-to-accuracy.md);
* `lodadac` (not by default): LoDAdaC with `compress = "topk:0.3+int4"` (its best codec in
  docs/lodadac.md).

The fedq systems send the change of the global model with `--downlink` (default
`int4+ans+ef`: int4, entropy-coded, error feedback on the server; strategies/downlink.py),
except a system that names its own (`fedq-int4-tensor`).

The kernel here has no netem qdisc, so `tc` limits the rate alone (a token bucket) and the
50 ms each way come from a relay in each SuperNode's namespace (bench/delay_relay.py)
that holds every byte back 50 ms; `--delay-ms 0` runs without it, and then the table
estimates what the delay would add.

    python bench/shaped_links.py                       # 1 and 10 Mbit/s, 4 clients (root)
    python bench/shaped_links.py --rates 1 --systems flower,fedq-int4 --max-rounds 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import plots  # noqa: E402

from cli.demo import (  # noqa: E402
    FLOWER_REPLY_POLL_SECONDS,
    SERVERAPP_PROGRAM,
    TASK_POLL_ENV,
    TASK_POLL_SECONDS,
    executable,
    stage_app,
)
from cli.processes import command_line, find_marked_processes  # noqa: E402
from fedq.run_directory import FAILURE_FILE, ROUNDS_FILE, SUMMARY_FILE, read_rounds  # noqa: E402
from tests.netns import Network, unavailable_reason  # noqa: E402

SUPERLINK = "superlink"
FLEET_PORT = 9092
CONTROL_PORT = 9093
RUNTIME_PORT = 9094  # each SuperNode's runtime API, inside its own namespace
RELAY_PORT = 9192  # the delay relay, inside each SuperNode's namespace
CONNECTION = "shaped-links"
BASELINE = "flower"
GOAL_RATIO = 4.0  # at least this many times sooner than plain Flower, at GOAL_RATE_MBIT
GOAL_RATE_MBIT = 1.0
ONE_WAY_DELAY_MS = 50.0  # the link; not emulated here (no netem)
STARTUP_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.2
WIDE_MODEL = "python:wide_mlp:wide_mlp"
WIDE_PARAMETERS = 1_126_410
ROUND_TRIPS_PER_ROUND = 6  # a client's exchanges with the SuperLink per round (estimate)
MSS_BYTES = 1448
INITIAL_WINDOW = 10  # segments


@dataclass(frozen=True)
class System:
    """One way of running the federation: its run config and whether Flower's own process
    handling (`stock`) or fedq's warm ClientApps run the clients."""

    name: str
    label: str
    config: dict[str, Any]
    stock: bool = False
    compressed_downlink: bool = True


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System(
            BASELINE,
            "plain Flower: FedAvg fp32 both ways, stock processes",
            {"strategy": "fedavg", "compress": "none", "downlink": "fp32"},
            stock=True,
            compressed_downlink=False,
        ),
        System("fedq-int4", "fedq FedAvg int4+ans", {"strategy": "fedavg", "compress": "int4+ans"}),
        System(
            "fedq-topk",
            "fedq FedAvg topk:0.05+int4+ans+ef",
            {"strategy": "fedavg", "compress": "topk:0.05+int4+ans+ef"},
        ),
        System("fedau-int4", "fedq FedAU int4+ans", {"strategy": "fedau", "compress": "int4+ans"}),
        System(  # one int4 scale per tensor both ways: its own downlink, not --downlink
            "fedq-int4-tensor",
            "fedq FedAvg int4:block=0+ans+ef both ways",
            {
                "strategy": "fedavg",
                "compress": "int4:block=0+ans+ef",
                "downlink": "int4:block=0+ans+ef",
            },
        ),
        System(
            "lodadac",
            "fedq LoDAdaC topk:0.3+int4",
            {"strategy": "lodadac", "compress": "topk:0.3+int4"},
            compressed_downlink=False,  # it relays the clients' own messages
        ),
    )
}
DEFAULT_SYSTEMS = ("flower", "fedq-int4", "fedq-topk", "fedau-int4")


@dataclass
class Outcome:
    """What one run did: per round its accuracy, when the benchmark saw it and the bytes."""

    system: str
    rate_mbit: float
    target: float
    clients: int
    delay_ms: float = 0.0  # one-way delay added by the relay, ms (0: none)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    reached_round: int | None = None
    reached_seconds: float | None = None  # from `flwr run` to the round's record, seconds
    startup_seconds: float = 0.0  # namespaces, SuperLink and SuperNodes up, seconds
    error: str | None = None
    # The namespaces' name suffix and the processes' marker (cli/processes.py), so that a
    # caller can check that nothing of the run is left.
    netns_suffix: str = ""
    process_marker: str = ""
    retried_after: str | None = None  # the error of a first try that failed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(self.__dict__)


def run_config(
    system: System, *, clients: int, max_rounds: int, model: str, downlink: str, output: Path
) -> dict[str, Any]:
    """The run config of `system` (run-config keys), every other key the app's default."""
    config: dict[str, Any] = {
        "num-server-rounds": max_rounds,
        "model": model,
        "min-clients": clients,
        "round-timeout": 900.0,
        "output-dir": str(output),
        **system.config,
    }
    if system.compressed_downlink:
        config.setdefault("downlink", downlink)
    if system.stock:
        config["reply-poll-interval"] = FLOWER_REPLY_POLL_SECONDS
    return config


def flower_env(flwr_home: Path, stock: bool) -> dict[str, str]:
    """Environment of every Flower process: this venv's scripts first, a private FLWR_HOME,
    no telemetry or update check, bench/ importable (the model), fast polls unless stock."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    python_path = [str(BENCH), str(ROOT), inherited.get("PYTHONPATH", "")]
    env = {
        **inherited,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), inherited.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in python_path if p),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    if not stock:
        env[TASK_POLL_ENV] = str(TASK_POLL_SECONDS)
    return env


def _listening(port: int) -> list[str]:
    """A command that exits 0 once something in the namespace listens on TCP `port`."""
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2).close()"
    return [sys.executable, "-c", code]


def _connected(port: int, count: int) -> list[str]:
    """A command that exits 0 once `count` TCP connections to local `port` are established."""
    script = (
        f"n=$(ss -Htn state established '( sport = :{port} )' | wc -l); test \"$n\" -ge {count}"
    )
    return ["sh", "-c", script]


def run_system(
    system: System,
    *,
    clients: int,
    rate_mbit: float,
    target: float,
    max_rounds: int,
    model: str,
    downlink: str,
    workdir: Path,
    timeout_seconds: float,
    delay_ms: float = 0.0,
) -> Outcome:
    """Run `system` on `clients` shaped links of `rate_mbit` Mbit/s each way until the global
    model's test accuracy reaches `target` (a fraction) or `max_rounds` rounds have run.
    With `delay_ms` > 0 each SuperNode reaches the SuperLink through a relay in its own
    namespace (bench/delay_relay.py) that delays every byte by `delay_ms` ms each way.

    Every process and namespace is removed before this returns or raises. A failed run is
    returned with `error` set.
    """
    outcome = Outcome(system.name, rate_mbit, target, clients, delay_ms)
    started = time.monotonic()
    flwr_home = workdir / "flwr-home"
    flwr_home.mkdir(parents=True)
    env = flower_env(flwr_home, system.stock)
    connection = {"address": f"127.0.0.1:{CONTROL_PORT}", "insecure": True}
    superlink_config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (flwr_home / "config.toml").write_text(tomli_w.dumps(superlink_config))
    config = run_config(
        system,
        clients=clients,
        max_rounds=max_rounds,
        model=model,
        downlink=downlink,
        output=workdir / "runs",
    )
    config_path = workdir / "run-config.toml"
    config_path.write_text(tomli_w.dumps(config))
    app = stage_app(ROOT, workdir / "app")
    names = [f"client-{i}" for i in range(clients)]
    with Network([SUPERLINK, *names], workdir / "logs") as network:
        outcome.netns_suffix, outcome.process_marker = network.suffix, network.group.marker
        for name in names:
            network.shape(name, rate_mbit=rate_mbit)
        superlink = network.start(
            SUPERLINK,
            "superlink",
            [
                executable("flower-superlink"),
                "--insecure",
                "--fleet-api-address",
                f"0.0.0.0:{FLEET_PORT}",
                "--host",
                "127.0.0.1",
                "--port",
                str(CONTROL_PORT),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
        )
        for port in (CONTROL_PORT, FLEET_PORT):
            network.wait_until(
                SUPERLINK, _listening(port), STARTUP_TIMEOUT_SECONDS, 0.5, watch=[superlink]
            )
        watched = [superlink]
        for i, name in enumerate(names):
            fleet = f"{SUPERLINK}:{FLEET_PORT}"
            if delay_ms > 0:
                relay = [sys.executable, str(BENCH / "delay_relay.py")]
                relay += ["--listen", f"127.0.0.1:{RELAY_PORT}", "--target", fleet]
                relay += ["--delay-ms", str(delay_ms)]
                watched.append(network.start(name, f"relay-{i}", relay, env=env))
                network.wait_until(
                    name, _listening(RELAY_PORT), STARTUP_TIMEOUT_SECONDS, 0.3, watch=watched
                )
                fleet = f"127.0.0.1:{RELAY_PORT}"
            argv = [
                executable("flower-supernode"),
                "--insecure",
                "--superlink",
                fleet,
                "--port",
                str(RUNTIME_PORT),
                "--node-config",
                f"partition-id={i} num-partitions={clients} client-id='{name}'",
            ]
            if not system.stock:
                argv += ["--isolation", "process"]
            watched.append(network.start(name, f"supernode-{i}", argv, env=env))
            if not system.stock:
                superexec = [
                    executable("fedq-superexec"),
                    "--insecure",
                    "--runtime-api-address",
                    f"127.0.0.1:{RUNTIME_PORT}",
                ]
                trace = {**env, "FEDQ_TRACE": str(workdir / f"trace-{name}.jsonl")}
                watched.append(network.start(name, f"superexec-{i}", superexec, env=trace))
        # Ready: every SuperNode holds its connection to the SuperLink, every warm
        # superexec has imported its libraries.
        network.wait_until(
            SUPERLINK,
            _connected(FLEET_PORT, clients),
            STARTUP_TIMEOUT_SECONDS,
            0.5,
            watch=watched,
        )
        if not system.stock:
            _wait_superexecs(workdir, names, watched)
        outcome.startup_seconds = round(time.monotonic() - started, 3)
        submit_argv = [executable("flwr"), "run", str(app), CONNECTION, "--stream"]
        submit_argv += ["--run-config", str(config_path)]
        submitted = time.monotonic()
        network.start(SUPERLINK, "flwr-run", submit_argv, env=env)
        _follow(outcome, workdir / "runs", submitted, timeout_seconds, watched)
    return outcome


def _serverapp(marker: str) -> int | None:
    """PID of the run's ServerApp process (started by the SuperLink), once it runs."""
    for pid in find_marked_processes(marker):
        if any(Path(arg).name == SERVERAPP_PROGRAM for arg in command_line(pid)[:2]):
            return pid
    return None


def _wait_superexecs(workdir: Path, names: list[str], watched: list[Any]) -> None:
    """Wait until each client's fedq-superexec has traced `superexec-ready`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    for name in names:
        path = workdir / f"trace-{name}.jsonl"
        while not (path.exists() and "superexec-ready" in path.read_text()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fedq-superexec of {name} did not get ready")
            for child in watched:
                if child.process.poll() is not None:
                    raise ChildProcessError(f"{child.name} exited:\n{child.log_tail(30)}")
            time.sleep(0.2)


def _follow(
    outcome: Outcome, runs: Path, submitted: float, timeout_seconds: float, watched: list[Any]
) -> None:
    """Read the run directory's rounds as they come until the target, the end or a failure."""
    run_dir: Path | None = None
    serverapp: int | None = None
    seen = 0
    while True:
        now = time.monotonic() - submitted
        if now > timeout_seconds:
            outcome.error = f"no end within {timeout_seconds:.0f} s"
            return
        for child in watched:
            if child.process.poll() is not None:
                outcome.error = f"{child.name} exited:\n{child.log_tail(20)}"
                return
        if serverapp is None:
            serverapp = _serverapp(outcome.process_marker)
        elif not command_line(serverapp):  # gone, or a zombie: it ended without a word
            time.sleep(2.0)  # it may have written its summary or failure just before
            if run_dir is None or not (
                (run_dir / SUMMARY_FILE).exists() or (run_dir / FAILURE_FILE).exists()
            ):
                outcome.error = "the ServerApp process ended without a summary or a failure"
                return
        if run_dir is None:
            found = sorted(p for p in runs.glob("*-run*") if p.is_dir()) if runs.exists() else []
            run_dir = found[-1] if found else None
        if run_dir is not None:
            records = read_rounds(run_dir / ROUNDS_FILE)
            for record in records[seen:]:
                outcome.rounds.append(_round_row(record, now))
                accuracy = record.get("accuracy")
                if accuracy is not None and accuracy >= outcome.target:
                    outcome.reached_round = int(record["round"])
                    outcome.reached_seconds = round(now, 3)
                    return
            seen = len(records)
            if (run_dir / FAILURE_FILE).exists():
                outcome.error = (run_dir / FAILURE_FILE).read_text()
                return
            if (run_dir / SUMMARY_FILE).exists():
                return  # the round cap, target not reached
        time.sleep(POLL_SECONDS)


def _round_row(record: dict[str, Any], seen_seconds: float) -> dict[str, Any]:
    """The figures of one rounds.jsonl record the report uses."""
    return {
        "round": record["round"],
        "accuracy": record.get("accuracy"),
        "seconds": round(seen_seconds, 3),
        "server_elapsed_seconds": record.get("elapsed_seconds"),
        "cum_bytes_up": record.get("cum_bytes_up"),
        "cum_bytes_down": record.get("cum_bytes_down"),
    }


# --- report -----------------------------------------------------------------------------------


def ratio_to_baseline(outcomes: list[Outcome], outcome: Outcome) -> float | None:
    """How many times sooner `outcome` reached the target than the baseline at its rate."""
    base = next(
        (o for o in outcomes if o.system == BASELINE and o.rate_mbit == outcome.rate_mbit), None
    )
    if base is None or base.reached_seconds is None or outcome.reached_seconds is None:
        return None
    return base.reached_seconds / outcome.reached_seconds


def delay_estimate(outcome: Outcome, one_way_ms: float) -> float | None:
    """Seconds a `one_way_ms` delay each way would add to the time to target, estimated.

    Per round a client makes about ROUND_TRIPS_PER_ROUND request/response exchanges with
    the SuperLink on its critical path (pull the message, pull its objects, push the
    reply and its objects, confirm), each one round trip; after an idle pause TCP restarts
    slow start, which costs log2(bandwidth-delay product / 10 segments) more round trips
    each way. Flower's 3 s pull interval does not change with delay.
    """
    if outcome.reached_round is None or outcome.delay_ms > 0:
        return None
    rtt = 2 * one_way_ms / 1000
    bdp_segments = outcome.rate_mbit * 1e6 / 8 * rtt / MSS_BYTES
    slow_start = max(0.0, math.log2(max(1.0, bdp_segments / INITIAL_WINDOW)))
    return round(outcome.reached_round * (ROUND_TRIPS_PER_ROUND + 2 * slow_start) * rtt, 1)


def verdict(ratio: float | None, rate_mbit: float) -> str:
    """`met` / `MISSED` against the goal at the goal's rate; `-` at other rates."""
    if rate_mbit != GOAL_RATE_MBIT:
        return "-"
    return "met" if ratio is not None and ratio >= GOAL_RATIO else "MISSED"


def table(outcomes: list[Outcome]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| link | system | rounds to target | seconds to target | sooner than plain Flower "
        f"| goal >= {GOAL_RATIO:g}x at {GOAL_RATE_MBIT:g} Mbit/s | MB down + up per client "
        f"| +{ONE_WAY_DELAY_MS:g} ms each way (est.) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        # The last column: what the delay would add where it was not emulated.
    ]
    for o in outcomes:
        ratio = ratio_to_baseline(outcomes, o)
        reached = o.reached_seconds is not None
        last = o.rounds[-1] if o.rounds else {}
        clients = max(1, o.clients)
        megabytes = ((last.get("cum_bytes_down") or 0) + (last.get("cum_bytes_up") or 0)) / 1e6
        extra = delay_estimate(o, ONE_WAY_DELAY_MS)
        label = SYSTEMS[o.system].label
        lines.append(
            f"| {o.rate_mbit:g} Mbit/s{f' + {o.delay_ms:g} ms' if o.delay_ms else ''} | {label} "
            f"| {o.reached_round if reached else 'not reached'} "
            f"| {f'{o.reached_seconds:.1f}' if reached else 'not reached'} "
            f"| {'-' if ratio is None else f'{ratio:.2f}x'} "
            f"| {'baseline' if o.system == BASELINE else verdict(ratio, o.rate_mbit)} "
            f"| {megabytes / clients:.2f} "
            f"| {'emulated' if o.delay_ms else ('-' if extra is None else f'+{extra:g} s')} |"
        )
    return "\n".join(lines)


def plot(outcomes: list[Outcome], target: float, path: Path) -> None:
    """Accuracy against wall time per system, one panel per link rate, as a PNG."""
    plt = plots.pyplot()
    rates = sorted({o.rate_mbit for o in outcomes})
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.2), squeeze=False)
    for axis, rate in zip(axes[0], rates, strict=True):
        for o in (o for o in outcomes if o.rate_mbit == rate):
            points = [(r["seconds"], r["accuracy"]) for r in o.rounds if r["accuracy"] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=SYSTEMS[o.system].label)
        axis.axhline(target, color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"{rate:g} Mbit/s per client link")
        axis.set_xlabel("wall time from flwr run (s)")
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    plots.save(fig, path)


def commit() -> str:
    """The checkout's commit, with `+dirty` when tracked files have changed."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU, cores, memory, torch and Python (bench/bench_formats.py's line)."""
    from bench.bench_formats import _machine

    return _machine()


def main(argv: list[str] | None = None) -> int:
    """Run every system at every rate, interleaved; print, and write JSON and a plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="1,10", help="link rates, Mbit/s, comma-separated")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.90, help="test accuracy, 0..1")
    parser.add_argument("--max-rounds", type=int, default=12)
    parser.add_argument("--model", default=WIDE_MODEL)
    parser.add_argument("--downlink", default="int4+ans+ef", help="the fedq systems' downlink")
    parser.add_argument(
        "--delay-ms", type=float, default=ONE_WAY_DELAY_MS, help="one-way delay, ms; 0: none"
    )
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--name", default="shaped_links", help="file stem of JSON and PNG")
    args = parser.parse_args(argv)
    # Ctrl-C and SIGTERM unwind through the harness, which removes what it made (a shell
    # starts a background job with SIGINT ignored, so both are set here).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    reason = unavailable_reason()
    if reason is not None:
        print(f"shaped_links needs Linux network namespaces: {reason}", file=sys.stderr)
        return 2
    systems = [SYSTEMS[name] for name in args.systems.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    header = {
        "command": "python bench/shaped_links.py " + " ".join(argv or sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "clients": args.clients,
        "model": args.model,
        "target": args.target,
        "max_rounds": args.max_rounds,
        "downlink": args.downlink,
        "delay_ms": args.delay_ms,
        "shaping": "rate: tc tbf on both ends of each client's veth (no sch_netem here); "
        "delay: bench/delay_relay.py in each SuperNode's namespace",
    }
    print(json.dumps(header, indent=2), flush=True)
    outcomes: list[Outcome] = []
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for rate in rates:
        for system in systems:
            outcome = _run_once(system, rate, args)
            if outcome.error is not None:
                # One more try: on a shared machine a run can die of causes outside it
                # (the first failure is kept in the results).
                print(f"  {system.name} failed, trying once more: {outcome.error}", flush=True)
                first_error = outcome.error
                outcome = _run_once(system, rate, args)
                outcome.retried_after = first_error
            outcomes.append(outcome)
            shown = (
                "not reached"
                if outcome.reached_seconds is None
                else (f"{outcome.reached_seconds:.1f} s, round {outcome.reached_round}")
            )
            accuracies = [r["accuracy"] for r in outcome.rounds]
            print(
                f"[{time.monotonic() - started:.0f} s] {rate:g} Mbit/s {system.name}: {shown}; "
                f"accuracies {accuracies}" + (f"; ERROR {outcome.error}" if outcome.error else ""),
                flush=True,
            )
            _write(args, header, outcomes)
    print()
    print(table(outcomes))
    for o in outcomes:
        if o.system != BASELINE and o.rate_mbit == GOAL_RATE_MBIT:
            ratio = ratio_to_baseline(outcomes, o)
            shown = "n/a" if ratio is None else f"{ratio:.2f}x"
            print(
                f"{o.system} at {o.rate_mbit:g} Mbit/s: {shown} sooner than plain Flower; "
                f"goal >= {GOAL_RATIO:g}x: {verdict(ratio, o.rate_mbit)}"
            )
    print(f"\n{time.monotonic() - started:.0f} s in all; results in {args.out}")
    return 0


def _run_once(system: System, rate: float, args: argparse.Namespace) -> Outcome:
    """One run of `system` at `rate` Mbit/s with the command line's sizes."""
    with tempfile.TemporaryDirectory(prefix="fedq-shaped-") as workdir:
        try:
            return run_system(
                system,
                clients=args.clients,
                rate_mbit=rate,
                target=args.target,
                max_rounds=args.max_rounds,
                model=args.model,
                downlink=args.downlink,
                workdir=Path(workdir),
                timeout_seconds=args.timeout,
                delay_ms=args.delay_ms,
            )
        except (OSError, RuntimeError, TimeoutError) as exc:
            return Outcome(
                system.name, rate, args.target, args.clients, args.delay_ms, error=str(exc)
            )


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _write(args: argparse.Namespace, header: dict[str, Any], outcomes: list[Outcome]) -> None:
    """Write the JSON results and the plot so far (after every run: a crash keeps them)."""
    results = {
        **header,
        "results": [
            {**o.to_dict(), "ratio_to_plain_flower": ratio_to_baseline(outcomes, o)}
            for o in outcomes
        ],
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(outcomes, args.target, args.out / f"{args.name}.png")


if __name__ == "__main__":
    sys.exit(main())
