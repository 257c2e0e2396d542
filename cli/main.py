"""The `fedq` command line: one entry point, typer sub-commands."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.bench import BENCHMARKS, list_lines, run_benchmarks
from cli.data import app as data_app
from cli.demo import ENGINES, DemoFailed, DemoPlan, DemoProgress, run_demo
from cli.deploy import app as deploy_app
from cli.resume import resume_plan
from fedq.availability import parse_availability
from fedq.datasources import parse_data_source
from fedq.errors import ConfigError, DataError, FedqError, Interrupted
from fedq.runconfig import ADAPTIVE_LR, SGD_LR, RunConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fedq: federated learning on Flower with quantized training and compressed updates.",
)
app.add_typer(deploy_app, name="deploy")
app.add_typer(data_app, name="data")
console = Console()
_DEFAULTS = RunConfig()
# Clients `fedq demo` starts at most: a SuperNode process each on the Deployment Engine;
# virtual clients on the Simulation Engine.
MAX_DEMO_CLIENTS = {"deployment": 64, "simulation": 10_000}
# Seconds `fedq demo` waits for a round's replies unless --set round-timeout says otherwise.
DEMO_ROUND_TIMEOUT = 60.0


@app.callback()
def _root() -> None:
    """fedq: federated learning on Flower with quantized training and compressed updates."""


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Number of SuperNodes (clients) to start.")] = 4,
    rounds: Annotated[int, typer.Option(help="Server rounds.")] = _DEFAULTS.num_server_rounds,
    strategy: Annotated[str, typer.Option(help="Aggregation strategy.")] = _DEFAULTS.strategy,
    model: Annotated[
        str, typer.Option(help="Model: mlp, cnn, resnet or python:module:factory.")
    ] = _DEFAULTS.model,
    partitioner: Annotated[
        str, typer.Option(help="iid, dirichlet or pathological.")
    ] = _DEFAULTS.partitioner,
    seed: Annotated[int, typer.Option(help="Seed of model init and data.")] = _DEFAULTS.seed,
    quant: Annotated[
        str, typer.Option(help="Quantized training, e.g. 'w=mxfp4_e2m1,a=mxfp8_e4m3'.")
    ] = _DEFAULTS.quant,
    compress: Annotated[
        str,
        typer.Option(
            help="Uplink codec, e.g. int4, mxfp4_e2m1, sign+ef, topk:0.01+int8+ef; "
            "'none' sends whole fp32 models."
        ),
    ] = _DEFAULTS.compress,
    downlink: Annotated[
        str,
        typer.Option(
            help="Global model to the clients: fp32, bf16, fp16 (the whole model), or a "
            "codec spec of its change, e.g. int8+ef, int4+ef, topk:0.05+int8+ef."
        ),
    ] = _DEFAULTS.downlink,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Client learning rate (LoDAdaC: the step size α). Default: {SGD_LR}, "
            f"or {ADAPTIVE_LR} for lodadac with an adaptive optimizer."
        ),
    ] = None,
    run_config: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any run-config key: --set KEY=VALUE (repeatable)."),
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Parent of the demo's directory.")] = Path(
        "runs"
    ),
    summary: Annotated[Path | None, typer.Option(help="Also write the JSON summary here.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Client I trains on its own data: I=SOURCE (repeatable), e.g. "
            "1=csv:site-a.csv, 2=imagefolder:photos/ (see `fedq data check`)."
        ),
    ] = None,
    availability: Annotated[
        list[str] | None,
        typer.Option(
            help="Client availability: SPEC for all clients or I=SPEC for client I "
            "(repeatable), e.g. bernoulli:0.3, markov:0.2:0.3, cyclic:10:0.3, bernoulli:label."
        ),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="Flower engine: deployment (gRPC SuperNodes) or simulation.")
    ] = "deployment",
    monitor: Annotated[
        bool, typer.Option(help="Start a monitor with a live dashboard for this run.")
    ] = True,
    stock_flower: Annotated[
        bool,
        typer.Option(
            help="Flower's own process handling (a fresh ClientApp process per message, "
            "Flower's poll intervals) instead of fedq's warm ClientApps; for comparison."
        ),
    ] = False,
    monitor_address: Annotated[
        str | None,
        typer.Option(
            help="Report to an existing monitor's ingest HOST:PORT instead "
            "(token in $FEDQ_MONITOR_INGEST_TOKEN)."
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            help="Secure the federation as deploy/ does: TLS (a CA and a SuperLink "
            "certificate) and SuperNode authentication (a registered key per client)."
        ),
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run directory from its last complete round, on the "
            "federation it ran on (same as `fedq resume RUN_DIR`; the training options are "
            "the run's own, --set may change num-server-rounds and the timeouts)."
        ),
    ] = None,
) -> None:
    """Start a SuperLink and N SuperNodes here, run a federated training, print the result."""
    if resume is not None:
        _resume(resume, run_config or [], timeout, monitor, monitor_address, summary)
        return
    _check_demo_options(clients, engine, timeout, output_dir, summary, run_config or [])
    demo_dir = output_dir.expanduser().resolve() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    values: dict[str, Any] = {
        "num-server-rounds": rounds,
        "strategy": strategy,
        "model": model,
        "partitioner": partitioner,
        "seed": seed,
        "quant": quant,
        "compress": compress,
        "downlink": downlink,
        **_parse_assignments(run_config or []),
        # The demo owns these two: every client takes part from round 1, files go to demo_dir.
        "min-clients": clients,
        "output-dir": str(demo_dir),
    }
    # A demo-sized wait for replies: a dead client then costs a minute, not ten.
    values.setdefault("round-timeout", DEMO_ROUND_TIMEOUT)
    if lr is not None:
        values["lr"] = lr
    config = RunConfig.from_mapping(values)
    if monitor_address:
        config.replace(monitor=monitor_address)  # refused here, before anything starts
    plan = DemoPlan(
        config=config,
        clients=clients,
        demo_dir=demo_dir,
        timeout_seconds=timeout,
        engine=engine,
        availability=_parse_availability(availability or [], clients),
        data=_parse_data(data or [], clients),
        monitor=monitor_address or ("start" if monitor else ""),
        tls=tls,
        stock_flower=stock_flower,
    )
    console.print(
        f"fedq demo: {clients} clients on the {engine} engine, "
        f"{config.num_server_rounds} rounds, strategy {config.strategy}, "
        f"lr {config.lr:g}, quant {config.quant_spec.describe()}, uplink {config.compress}, "
        f"downlink {config.downlink}"
    )
    console.print(f"files: {demo_dir}")
    _run_and_print(plan, summary)


@app.command("bench")
def bench_command(
    names: Annotated[
        list[str] | None,
        typer.Argument(help=f"Benchmarks to run (default: all): {', '.join(BENCHMARKS)}."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the outputs and summary.json go.")] = Path(
        "docs/benchmarks/fedq-bench"
    ),
    quick: Annotated[
        bool, typer.Option(help="Tiny sizes that only check each program runs (no figures).")
    ] = False,
    list_only: Annotated[bool, typer.Option("--list", help="List the benchmarks.")] = False,
) -> None:
    """Run fedq's benchmarks (from a checkout): every goal with met or MISSED, outputs in OUT."""
    if list_only:
        console.print("\n".join(list_lines()), highlight=False, soft_wrap=True)
        return
    summary = run_benchmarks(names or list(BENCHMARKS), out, quick)
    if any(entry["returncode"] for entry in summary.values()):
        raise typer.Exit(1)


@app.command("resume")
def resume_command(
    run_dir: Annotated[Path, typer.Argument(help="The run directory to continue.")],
    run_config: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Change num-server-rounds, round-timeout, reply-poll-interval, min-clients "
            "or min-replies: --set KEY=VALUE (repeatable).",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600.0,
    monitor: Annotated[
        bool, typer.Option(help="Start a monitor with a live dashboard for this run.")
    ] = True,
    monitor_address: Annotated[
        str | None,
        typer.Option(help="Report to an existing monitor's ingest HOST:PORT instead."),
    ] = None,
    summary: Annotated[Path | None, typer.Option(help="Also write the JSON summary here.")] = None,
) -> None:
    """Finish a `fedq demo` run that stopped: the same federation, from its last round."""
    _resume(run_dir, run_config or [], timeout, monitor, monitor_address, summary)


def _resume(
    run_dir: Path,
    assignments: list[str],
    timeout: float,
    monitor: bool,
    monitor_address: str | None,
    summary: Path | None,
) -> None:
    """Start the run's federation again and let the ServerApp continue `run_dir`."""
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout={timeout!r} must be a positive number of seconds")
    if summary is not None:
        _check_writable_dir(summary.expanduser().resolve().parent, "--summary's directory")
    plan = resume_plan(
        run_dir,
        _parse_assignments(assignments),
        timeout_seconds=timeout,
        monitor=monitor_address or ("start" if monitor else ""),
    )
    console.print(
        f"fedq resume: {plan.resume} on {plan.clients} clients ({plan.engine} engine), "
        f"up to round {plan.config.num_server_rounds}"
    )
    console.print(f"files: {plan.demo_dir}")
    _run_and_print(plan, summary)


def _run_and_print(plan: DemoPlan, summary: Path | None) -> None:
    """Run the demo federation with progress, print the result, write `summary`."""
    try:
        result = _run_with_progress(plan)
    except KeyboardInterrupt:
        # Typer would turn this into a silent exit 130; say what happened instead.
        raise Interrupted("interrupted; every process fedq started has been stopped") from None
    _print_result(result)
    if summary is not None:
        summary.write_text(json.dumps(result, indent=2) + "\n")


@app.command("monitor")
def monitor_command(
    host: Annotated[str | None, typer.Option(help="HTTP host of the API and dashboard.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    grpc_host: Annotated[str | None, typer.Option(help="Telemetry ingest host.")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="Telemetry ingest port.")] = None,
    db: Annotated[Path | None, typer.Option(help="SQLite database file.")] = None,
    dev: Annotated[
        bool, typer.Option(help="Development mode: accept telemetry without a token.")
    ] = False,
) -> None:
    """Run the monitor: telemetry ingest (gRPC), REST API and live dashboard.

    Settings not given here come from FEDQ_MONITOR_* variables; the ingest token only
    from FEDQ_MONITOR_INGEST_TOKEN (required unless --dev).
    """
    from monitor.service import serve
    from monitor.settings import load_settings

    overrides = {
        "host": host,
        "port": port,
        "grpc_host": grpc_host,
        "grpc_port": grpc_port,
        "database": db,
        "dev": dev or None,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    console.print(
        f"fedq monitor: dashboard http://{settings.host}:{settings.port}/, "
        f"telemetry {settings.grpc_host}:{settings.grpc_port}"
    )
    try:
        serve(settings)
    except OSError as exc:
        raise FedqError(str(exc)) from None


def _check_demo_options(
    clients: int,
    engine: str,
    timeout: float,
    output_dir: Path,
    summary: Path | None,
    assignments: list[str],
) -> None:
    """Refuse, before anything starts, what `fedq demo` could only fail on later."""
    limit = MAX_DEMO_CLIENTS.get(engine, 0)
    if engine not in ENGINES:
        raise ConfigError(f"--engine={engine!r} is not known; allowed: {', '.join(ENGINES)}")
    if not 1 <= clients <= limit:
        raise ConfigError(
            f"--clients={clients} is out of range for the {engine} engine; allowed: 1..{limit}"
            + (" (each client is a SuperNode process here)" if engine == "deployment" else "")
        )
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout={timeout!r} must be a positive number of seconds")
    owned = {"min-clients", "output-dir"} & {a.partition("=")[0].strip() for a in assignments}
    if owned:
        raise ConfigError(
            f"--set {sorted(owned)[0]} is set by fedq demo itself (--clients, --output-dir)"
        )
    _check_writable_dir(output_dir, "--output-dir")
    if summary is not None:
        _check_writable_dir(summary.expanduser().resolve().parent, "--summary's directory")


def _check_writable_dir(path: Path, what: str) -> None:
    """`path` is (or can be made) a directory this process may write in."""
    path = path.expanduser().resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise ConfigError(f"{what} {path} is not a directory ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable")
    if what.startswith("--summary") and not path.is_dir():
        raise ConfigError(f"{what} {path} does not exist")


def _parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """Parse `KEY=VALUE` pairs; VALUE is a TOML value, or a bare word taken as a string."""
    parsed: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE")
        try:
            parsed[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            parsed[key.strip()] = raw
    return parsed


def _parse_availability(items: list[str], clients: int) -> dict[int, str]:
    """`SPEC` applies to every client, `I=SPEC` to client I (later items win)."""
    # Validated here, with a nominal label rate: the client computes the real one.
    return _per_client(
        "--availability", items, clients, lambda spec: parse_availability(spec, label_p=1.0)
    )


def _parse_data(items: list[str], clients: int) -> dict[int, str]:
    """`I=SOURCE`: client I trains on its own data (fedq/datasources.py)."""
    chosen = _per_client("--data", items, clients, parse_data_source)
    if any("=" not in item for item in items):
        raise ConfigError("--data takes I=SOURCE (one client's own data), e.g. 1=csv:a.csv")
    return chosen


def _per_client(
    option: str, items: list[str], clients: int, check: Callable[[str], object]
) -> dict[int, str]:
    """`VALUE` for every client or `I=VALUE` for client I, each checked (later items win)."""
    chosen: dict[int, str] = {}
    for item in items:
        index, sep, value = item.partition("=")
        targets = range(clients)
        if sep and index.isdigit():
            if int(index) >= clients:
                raise ConfigError(f"{option} {item!r}: client index must be in 0..{clients - 1}")
            targets = range(int(index), int(index) + 1)
        else:
            value = item
        check(value)
        chosen.update({i: value for i in targets})
    return chosen


def _run_with_progress(plan: DemoPlan) -> dict[str, Any]:
    total = plan.config.num_server_rounds
    if not console.is_terminal:
        shown = [0]

        def report(progress: DemoProgress) -> None:
            if _print_notes(progress, shown, console):
                return
            if progress.rounds:
                console.print(_round_line(progress))
            else:
                console.print(f"dashboard: {progress.dashboard_url}")

        return run_demo(plan, report)
    columns = (
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("rounds", total=total, status="starting Flower…")

        shown = [0]

        def update(progress: DemoProgress) -> None:
            if _print_notes(progress, shown, bar.console):
                return
            if not progress.rounds:
                bar.console.print(f"dashboard: {progress.dashboard_url}")
                return
            last = progress.rounds[-1]
            bar.update(task, completed=last["round"], status=_status(last))

        return run_demo(plan, update)


def _print_notes(progress: DemoProgress, shown: list[int], out: Console) -> bool:
    """Print the notes not shown yet (a one-element list counts them); True if any."""
    new = progress.notes[shown[0] :]
    for note in new:
        out.print(f"[yellow]note:[/yellow] {note}")
    shown[0] = len(progress.notes)
    return bool(new)


def _status(record: dict[str, Any]) -> str:
    status = (
        f"acc {_optional(record['accuracy'], '.3f')}  loss {_optional(record['loss'], '.3f')}  "
        f"up {_mb(record['cum_bytes_up'])}  down {_mb(record['cum_bytes_down'])}"
    )
    if record.get("cum_bytes_up") and record.get("cum_fp32_bytes_up"):
        status += f"  ({record['cum_fp32_bytes_up'] / record['cum_bytes_up']:.1f}x < fp32 up)"
    return status


def _round_line(progress: DemoProgress) -> str:
    last = progress.rounds[-1]
    return f"round {last['round']}: {_status(last)}"


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB"


def _print_result(result: dict[str, Any]) -> None:
    table = Table(title="fedq demo result", show_header=False)
    rows = [
        ("strategy", result["strategy"]),
        ("quantized training", result["quant"]),
        ("uplink codec", result["compress"]),
        ("downlink format", result["downlink"]),
        ("clients", str(result["clients"])),
        ("rounds", str(result["rounds"])),
        ("final accuracy", _optional(result["final_accuracy"], ".4f")),
        ("final loss", _optional(result["final_loss"], ".4f")),
        ("evaluation", result.get("evaluation", "central")),
        ("bytes up (all clients)", f"{result['bytes_up']:,}"),
        ("bytes down (all clients)", f"{result['bytes_down']:,}"),
        ("uplink payload bytes", f"{result['payload_bytes_up']:,}"),
        ("uplink bits per parameter", _optional(result["uplink_bits_per_param"], ".3f")),
        ("uplink vs fp32 FedAvg", _optional(result["uplink_ratio_to_fp32"], ".2f", "x smaller")),
        ("training wall time", f"{result['wall_seconds']:.1f} s"),
        ("demo wall time", f"{result['demo_wall_seconds']:.1f} s"),
        ("run directory", result["run_dir"]),
    ]
    if "dashboard_url" in result:
        rows.append(("monitor database", str(Path(result["run_dir"]).parent / "monitor.sqlite")))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _optional(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _fail(message: str, code: int) -> NoReturn:
    print(f"fedq: error: {message}", file=sys.stderr)
    sys.exit(code)


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM is handled like Ctrl-C, so `with ProcessGroup()` stops the children.
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    # Explicit handlers: a SIGINT disposition inherited as "ignore" (a job started with `&`
    # from a script) would otherwise leave Ctrl-C and `kill -INT` without effect.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(0)  # help was printed
    except click.UsageError as exc:
        _fail(exc.format_message().replace("\n", " "), 2)
    except Interrupted as exc:
        _fail(str(exc), 130)
    except (ConfigError, DataError) as exc:
        _fail(str(exc), 2)
    except DemoFailed as exc:
        _fail(str(exc), 1)
    except FedqError as exc:
        _fail(str(exc), 1)
    except (KeyboardInterrupt, click.Abort):
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)
