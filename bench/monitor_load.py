"""Benchmark: the monitor under load, from a second process on loopback.

Starts `python -m monitor` on free ports over a fresh SQLite file (or uses one already
running: --http-url and --grpc-address), fills it with finished runs, then for --duration
seconds runs two things at once:

* a writer reporting one live run over gRPC, as a ServerApp does: a RoundReport every
  --round-interval seconds naming --clients clients, and every --large-every-th round one
  of the largest allowed size (MAX_NODES_PER_ROUND clients);
* --readers concurrent HTTP readers (httpx, asyncio), each reading the REST endpoints of
  the dashboard in turn, the live run's included, as fast as answers come.

Prints, per endpoint, the requests, the errors (anything but 200) and the latency p50, p99
and max; the same for the writer's reports. A benchmark, not a test: it asserts nothing.

    python bench/monitor_load.py                       # 50 readers for 30 s
    python bench/monitor_load.py --readers 10 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.processes import free_port  # noqa: E402
from proto import telemetry_pb2 as pb  # noqa: E402
from proto import telemetry_pb2_grpc as pb_grpc  # noqa: E402
from proto.telemetry_limits import MAX_NODES_PER_ROUND  # noqa: E402

TOKEN = "bench-token"
LIVE_RUN = "bench-live"
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
# Endpoints each reader reads in turn ({run} is the live run).
ENDPOINTS = (
    "/api/runs",
    "/api/runs/{run}",
    "/api/runs/{run}/rounds",
    "/api/runs/{run}/clients",
    "/metrics",
    "/healthz",
)


@dataclass
class Latencies:
    """Seconds per request by endpoint, and the errors by endpoint."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def parse_args() -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=50, help="concurrent HTTP readers")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=100, help="clients in a live round")
    parser.add_argument("--round-interval", type=float, default=0.5, help="seconds per round")
    parser.add_argument(
        "--large-every", type=int, default=10, help="every n-th round is largest (0: none)"
    )
    parser.add_argument("--history", type=int, default=20, help="finished runs stored first")
    parser.add_argument("--http-url", help="a running monitor's URL (else one is started)")
    parser.add_argument("--grpc-address", help="a running monitor's telemetry HOST:PORT")
    return parser.parse_args()


def start_monitor(workdir: Path) -> tuple[subprocess.Popen, str, str]:
    """`python -m monitor` on free ports over a new database; waits until /healthz is 200."""
    http_port, grpc_port = free_port(), free_port()
    argv = [sys.executable, "-m", "monitor", "--port", str(http_port)]
    argv += ["--grpc-port", str(grpc_port), "--db", str(workdir / "monitor.sqlite")]
    argv += ["--log-level", "WARNING"]
    env = {**os.environ, "FEDQ_MONITOR_INGEST_TOKEN": TOKEN}
    log = (workdir / "monitor.log").open("wb")
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the monitor exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return process, url, f"127.0.0.1:{grpc_port}"
        time.sleep(0.1)
    stop(process)
    raise TimeoutError("the monitor did not become healthy")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the monitor by PID; SIGKILL if it does not end within 10 s."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def round_report(run_id: str, r: int, clients: int) -> pb.RoundReport:
    """Round `r` of a run whose `clients` clients all took part."""
    report = pb.RoundReport(run_id=run_id, round=r, time=time.time(), elapsed_seconds=r * 1.0)
    report.accuracy, report.loss, report.train_loss = min(0.99, 0.1 + r / 100), 1 / (r + 1), 0.5
    nodes = range(10**15, 10**15 + clients)
    report.participants.extend(nodes)
    for node in nodes:
        client = report.clients[node]
        client.bytes_up = client.bytes_down = 40_612
        client.num_examples, client.train_loss = 360, 0.5
        client.client_id = f"client-{node - 10**15}"
        client.figures["fedau_weight"] = 1.0
    report.bytes_up = report.bytes_down = 40_612 * clients
    report.cum_bytes_up = report.cum_bytes_down = 40_612 * clients * (r + 1)
    return report


def fill_history(stub: pb_grpc.TelemetryStub, runs: int, metadata: tuple) -> None:
    """Store `runs` finished runs of 20 rounds of 10 clients each."""
    for n in range(runs):
        run_id = f"bench-history-{n}"
        started = pb.RunStarted(run_id=run_id, time=time.time(), strategy="fedavg", model="mlp")
        stub.StartRun(started, metadata=metadata, timeout=REQUEST_TIMEOUT_S)
        for r in range(20):
            stub.ReportRound(round_report(run_id, r, 10), metadata=metadata, timeout=30)
        done = pb.RunFinished(run_id=run_id, time=time.time(), status=pb.RUN_STATUS_COMPLETED)
        stub.FinishRun(done, metadata=metadata, timeout=REQUEST_TIMEOUT_S)


def write_rounds(
    stub: pb_grpc.TelemetryStub, args: argparse.Namespace, stop_at: float, results: Latencies
) -> None:
    """The live run: a report every round interval until `stop_at` (time.monotonic())."""
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    started = pb.RunStarted(run_id=LIVE_RUN, time=time.time(), strategy="fedau", model="mlp")
    stub.StartRun(started, metadata=metadata, timeout=REQUEST_TIMEOUT_S)
    r = 0
    while time.monotonic() < stop_at:
        large = args.large_every > 0 and r % args.large_every == args.large_every - 1
        clients = MAX_NODES_PER_ROUND if large else args.clients
        name = f"ReportRound ({clients} clients)"
        report = round_report(LIVE_RUN, r, clients)
        began = time.perf_counter()
        try:
            stub.ReportRound(report, metadata=metadata, timeout=REQUEST_TIMEOUT_S)
            results.seconds[name].append(time.perf_counter() - began)
        except grpc.RpcError as exc:
            results.errors[name].append(f"{exc.code().name}: {exc.details()}")
        r += 1
        time.sleep(max(0.0, args.round_interval - (time.perf_counter() - began)))


async def read(url: str, readers: int, stop_at: float, results: Latencies) -> None:
    """`readers` tasks reading the endpoints in turn until `stop_at`."""
    limits = httpx.Limits(max_connections=readers, max_keepalive_connections=readers)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def reader(offset: int) -> None:
            n = offset
            while time.monotonic() < stop_at:
                endpoint = ENDPOINTS[n % len(ENDPOINTS)]
                n += 1
                began = time.perf_counter()
                try:
                    response = await client.get(endpoint.format(run=LIVE_RUN))
                    status = response.status_code
                except httpx.HTTPError as exc:
                    results.errors[endpoint].append(type(exc).__name__)
                    continue
                results.seconds[endpoint].append(time.perf_counter() - began)
                if status != 200:
                    results.errors[endpoint].append(f"HTTP {status}")

        await asyncio.gather(*(reader(i) for i in range(readers)))


def report(title: str, results: Latencies) -> None:
    """Print one line per endpoint: requests, errors, p50, p99 and max in milliseconds."""
    print(f"\n{title}")
    print(
        f"{'endpoint':<34} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for name in sorted(set(results.seconds) | set(results.errors)):
        seconds = sorted(results.seconds.get(name, []))
        errors = results.errors.get(name, [])
        if seconds:
            p50 = statistics.median(seconds) * 1000
            p99 = seconds[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1000
            figures = f"{p50:>8.1f} {p99:>8.1f} {seconds[-1] * 1000:>8.1f}"
        else:
            figures = f"{'-':>8} {'-':>8} {'-':>8}"
        print(f"{name:<34} {len(seconds) + len(errors):>9} {len(errors):>7} {figures}")
        for error in sorted(set(errors))[:3]:
            print(f"    e.g. {error}")


def main() -> int:
    """Run the benchmark; exit code 0 (figures are printed, nothing is asserted)."""
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fedq-monitor-load-") as scratch:
        process = None
        if args.http_url and args.grpc_address:
            url, address = args.http_url, args.grpc_address
        else:
            process, url, address = start_monitor(Path(scratch))
        try:
            with grpc.insecure_channel(address) as channel:
                stub = pb_grpc.TelemetryStub(channel)
                fill_history(stub, args.history, (("authorization", f"Bearer {TOKEN}"),))
                readers, writer = Latencies(), Latencies()
                stop_at = time.monotonic() + args.duration
                thread = threading.Thread(target=write_rounds, args=(stub, args, stop_at, writer))
                thread.start()
                asyncio.run(read(url, args.readers, stop_at, readers))
                thread.join()
        finally:
            if process is not None:
                stop(process)
    large = f", every {args.large_every}th of {MAX_NODES_PER_ROUND}" if args.large_every > 0 else ""
    print(
        f"{args.readers} readers for {args.duration:.0f} s; a round every "
        f"{args.round_interval} s of {args.clients} clients{large}; "
        f"{args.history} finished runs stored"
    )
    report("HTTP reads", readers)
    report("gRPC writes (the live run)", writer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
