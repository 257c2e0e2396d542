"""`fedq demo`: a federation on this machine, one run submitted with `flwr run`.

Everything is Flower's own. On the Deployment Engine: `flower-superlink` (Fleet API over
gRPC) and one `flower-supernode` per client. On the Simulation Engine: `flower-superlink
--simulation`, whose virtual SuperNodes run in-process. The demo only picks free ports,
writes the connection into a private FLWR_HOME, watches the run directory for progress and
stops every process it started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cli.federation_security import FederationSecurity, Plaintext, Secured
from cli.processes import (
    Child,
    ProcessGroup,
    command_line,
    find_marked_processes,
    free_port,
    wait_for_port,
)
from fedq import trace
from fedq.errors import ConfigError, FedqError
from fedq.nodeconfig import AVAILABILITY, CLIENT_ID, DATA, NUM_PARTITIONS, PARTITION_ID
from fedq.run_directory import (
    FAILURE_FILE,
    ROUNDS_FILE,
    SUMMARY_FILE,
    RunDirectory,
    read_rounds,
)
from fedq.runconfig import RunConfig

HOST = "127.0.0.1"
CONNECTION = "fedq-demo"
ENGINES: tuple[str, ...] = ("deployment", "simulation")
STARTUP_TIMEOUT_SECONDS = 60.0
# Time the ServerApp has to write its summary after `flwr run --stream` returns.
SUMMARY_GRACE_SECONDS = 15.0
# The ServerApp's process, which the SuperLink starts for the run.
SERVERAPP_PROGRAM = "flwr-serverapp"
APP_DIR = Path(__file__).resolve().parents[1]
MONITOR_TOKEN_ENV = "FEDQ_MONITOR_INGEST_TOKEN"
# Seconds between a SuperExec's looks for new tasks (Flower's default: 1 s).
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
TASK_POLL_SECONDS = 0.05
# The SuperLink's own SuperExec only starts the run's ServerApp: a slower look costs at most
# this once per run, where a look every 50 ms is 20 HTTP requests a second to the SuperLink.
SERVERAPP_TASK_POLL_SECONDS = 0.5
# The pull interval of Flower's own ServerApp grid, for `stock_flower` runs.
FLOWER_REPLY_POLL_SECONDS = 3.0
SUPERNODE_PREFIX = "supernode-"
# What the demo started, for `fedq resume` (cli/resume.py): in the demo directory.
PLAN_FILE = "demo.json"
_PLAN_FIELDS = ("clients", "engine", "availability", "data", "tls", "stock_flower")


class DemoFailed(FedqError):
    """The federated run did not complete; the message says why."""


@dataclass
class DemoPlan:
    """What to start: `clients` SuperNodes training under `config`, files under `demo_dir`."""

    config: RunConfig
    clients: int
    demo_dir: Path
    timeout_seconds: float = 3600.0
    engine: str = "deployment"
    app_dir: Path = APP_DIR
    extra_env: dict[str, str] = field(default_factory=dict)
    # "start": a monitor of the demo's own; "": none; "HOST:PORT": an existing monitor's
    # telemetry ingest (its token in $FEDQ_MONITOR_INGEST_TOKEN).
    monitor: str = "start"
    # client index -> availability spec (fedq/availability.py); absent: the run's
    availability: dict[int, str] = field(default_factory=dict)
    # client index -> its own data source (fedq/datasources.py); absent: a digits partition
    data: dict[int, str] = field(default_factory=dict)
    # True: Flower's own process handling (a fresh `flwr-clientapp` process per message,
    # its 1 s task poll and 3 s reply pull), to compare with; False: warm ClientApps.
    stock_flower: bool = False
    # True: TLS and SuperNode authentication (cli/security.py), files under demo_dir/security
    tls: bool = False
    # A run directory to continue (its config must carry resume-from; cli/resume.py)
    resume: Path | None = None

    def client_name(self, index: int) -> str:
        """The client id of SuperNode `index` (its node-config `client-id`, its key's name)."""
        return f"client-{index}"

    def node_config(self, index: int) -> str:
        """The `--node-config` of SuperNode `index`: partition, name, availability, data."""
        parts = [f"{PARTITION_ID}={index}", f"{NUM_PARTITIONS}={self.clients}"]
        parts.append(f"{CLIENT_ID}='{self.client_name(index)}'")
        if index in self.availability:
            parts.append(f"{AVAILABILITY}='{self.availability[index]}'")
        if index in self.data:
            parts.append(f"{DATA}='{self.data[index]}'")
        return " ".join(parts)


@dataclass
class DemoProgress:
    """What the demo has seen of the run so far (from the run directory)."""

    dashboard_url: str | None = None
    run_dir: Path | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know, in order


ProgressCallback = Callable[[DemoProgress], None]


def executable(name: str) -> str:
    """Path of a console script of this Python environment (falls back to PATH)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DemoFailed(f"{name} is not installed; install fedq with its dependencies")
    return found


def run_demo(plan: DemoPlan, on_progress: ProgressCallback) -> dict[str, Any]:
    """Run the federation to completion; return the summary (see README, `fedq demo`).

    Raises `DemoFailed` if any Flower process fails or the run ends without a summary.
    Every process started here is stopped before this function returns or raises.
    """
    if plan.engine not in ENGINES:
        raise ConfigError(f"engine={plan.engine!r} is not known; allowed: {', '.join(ENGINES)}")
    if (plan.availability or plan.data) and plan.engine == "simulation":
        raise ConfigError(
            "--availability and --data need the deployment engine (per-SuperNode settings)"
        )
    if plan.tls and plan.engine == "simulation":
        raise ConfigError("--tls needs the deployment engine (the simulation has no SuperNodes)")
    if not (plan.app_dir / "pyproject.toml").exists():
        raise DemoFailed(f"no Flower app at {plan.app_dir}; install fedq with `pip install -e .`")
    plan.demo_dir.mkdir(parents=True, exist_ok=False)
    _write_plan(plan)
    started = time.monotonic()
    with ProcessGroup() as group:
        env = _flower_env(plan)
        progress = DemoProgress(run_dir=plan.resume)
        config, token = _connect_monitor(group, plan, env, progress, on_progress)
        if plan.stock_flower:
            config = config.replace(reply_poll_interval=FLOWER_REPLY_POLL_SECONDS)
        trace.mark("demo-start")
        core = _start_federation(group, plan, env, _security(plan), token)
        trace.mark("federation-up")
        argv = [
            executable("flwr"),
            "run",
            str(stage_app(plan.app_dir, plan.demo_dir / "app")),
            CONNECTION,
            "--stream",
            "--run-config",
            str(_write_run_config(plan.demo_dir, config)),
        ]
        if plan.engine == "simulation":
            argv += ["--federation-config", f"num-supernodes={plan.clients}"]
        submit = group.start("flwr-run", argv, plan.demo_dir / "logs" / "flwr-run.log", env=env)
        trace.mark("run-submitted")
        _write_pids(plan.demo_dir, group)
        _watch(plan, submit, core, progress, on_progress, started, group.marker)
    summary = _final_summary(progress)
    summary.update(clients=plan.clients, demo_wall_seconds=round(time.monotonic() - started, 3))
    if progress.dashboard_url:
        summary["dashboard_url"] = progress.dashboard_url
    (Path(summary["run_dir"]) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_plan(plan: DemoPlan) -> None:
    """Record in the demo directory what the demo starts (demo.json, for `fedq resume`)."""
    payload = {name: getattr(plan, name) for name in _PLAN_FIELDS}
    (plan.demo_dir / PLAN_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def stage_app(app_dir: Path, target: Path) -> Path:
    """Copy the app's pyproject.toml and the packages its FAB takes to `target`; return it.

    `flwr run` builds the FAB by reading every file under the app's directory before it
    filters them, and a checkout holds a virtual environment of ~50,000 files: about 8 s
    of the demo's start, against well under one from a directory of just the app. The
    packages are the first path segments of `[tool.flwr.app] fab-include`.
    """
    project = tomllib.loads((app_dir / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["flwr"]["app"].get("fab-include", [])
    packages = sorted({pattern.strip("/").split("/")[0] for pattern in patterns})
    if not packages or any(not (app_dir / p).is_dir() for p in packages):
        return app_dir  # no package list to copy: let `flwr run` read the directory itself
    target.mkdir(parents=True)
    shutil.copy2(app_dir / "pyproject.toml", target / "pyproject.toml")
    for package in packages:
        shutil.copytree(
            app_dir / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def _flower_env(plan: DemoPlan) -> dict[str, str]:
    """Environment for Flower's processes: a private FLWR_HOME holding the connection."""
    flwr_home = plan.demo_dir / "flwr-home"
    flwr_home.mkdir()
    # Flower's processes start others by name (flower-superexec, flwr-serverapp,
    # flwr-clientapp): this environment's scripts must come first on PATH, activated or not.
    scripts = str(Path(sys.executable).parent)
    path = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    # No update check and no telemetry: both reach for the internet from every Flower
    # process (and telemetry holds each ClientApp process back at exit).
    # The monitor's ingest token goes to the SuperLink alone (`_start_federation`).
    inherited = {k: v for k, v in os.environ.items() if k != MONITOR_TOKEN_ENV}
    env = {
        **inherited,
        "PATH": path,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    if not plan.stock_flower:
        env[TASK_POLL_ENV] = str(TASK_POLL_SECONDS)
    return {**env, **plan.extra_env}


def _security(plan: DemoPlan) -> FederationSecurity:
    """Plaintext, or with --tls a fresh CA, SuperLink certificate and key per client."""
    if not plan.tls:
        return Plaintext()
    names = [plan.client_name(i) for i in range(plan.clients)]
    return Secured.create(plan.demo_dir / "security", names)


def _start_federation(
    group: ProcessGroup,
    plan: DemoPlan,
    env: dict[str, str],
    security: FederationSecurity,
    ingest_token: str | None,
) -> list[Child]:
    """Start the SuperLink, wait until it listens, then one SuperNode per client.

    The dependencies are this environment's, so the SuperLink installs none at run time.
    Only the SuperLink gets the monitor's `ingest_token`: it hands its environment to the
    ServerApp, the one process that reports. SuperNodes and ClientApps never see it.
    """
    fleet_port, control_port = free_port(HOST), free_port(HOST)
    logs = plan.demo_dir / "logs"
    argv = [
        executable("flower-superlink"),
        *security.superlink_args(),
        "--fleet-api-address",
        f"{HOST}:{fleet_port}",
        "--host",
        HOST,
        "--port",
        str(control_port),
        "--disable-runtime-dependency-installation",
    ]
    if plan.engine == "simulation":
        argv.append("--simulation")
    superlink_env = {**env, MONITOR_TOKEN_ENV: ingest_token} if ingest_token else env
    if not plan.stock_flower:
        superlink_env = {**superlink_env, TASK_POLL_ENV: str(SERVERAPP_TASK_POLL_SECONDS)}
    superlink = group.start("superlink", argv, logs / "superlink.log", env=superlink_env)
    _wait_listening(superlink, control_port)
    connection = security.connection(f"{HOST}:{control_port}")
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    (Path(env["FLWR_HOME"]) / "config.toml").write_text(tomli_w.dumps(config))
    if plan.engine == "simulation":
        return [superlink]  # its virtual SuperNodes run inside the simulation runtime
    _wait_listening(superlink, fleet_port)
    security.register(executable("flwr"), CONNECTION, env)
    runtime_ports = [free_port(HOST) for _ in range(plan.clients)]
    nodes = []
    for i, runtime_port in enumerate(runtime_ports):
        argv = [
            executable("flower-supernode"),
            *security.supernode_args(plan.client_name(i)),
            "--superlink",
            f"{HOST}:{fleet_port}",
            "--port",
            str(runtime_port),
            "--node-config",
            plan.node_config(i),
        ]
        if not plan.stock_flower:
            argv += ["--isolation", "process"]
        name = f"{SUPERNODE_PREFIX}{i}"
        nodes.append(group.start(name, argv, logs / f"{name}.log", env=env))
    if not plan.stock_flower:
        nodes.append(_start_superexec(group, runtime_ports, env, logs))
    return [superlink, *nodes]


def _start_superexec(
    group: ProcessGroup, runtime_ports: list[int], env: dict[str, str], logs: Path
) -> Child:
    """One `fedq-superexec` for every SuperNode: warm ClientApps, imported once."""
    addresses = ",".join(f"{HOST}:{port}" for port in runtime_ports)
    argv = [executable("fedq-superexec"), "--insecure", "--runtime-api-address", addresses]
    return group.start("superexec", argv, logs / "superexec.log", env=env)


def _wait_listening(child: Child, port: int) -> None:
    try:
        wait_for_port(HOST, port, STARTUP_TIMEOUT_SECONDS, child.process)
    except (ChildProcessError, TimeoutError) as exc:
        raise DemoFailed(f"{child.name} did not start ({exc}):\n{child.log_tail()}") from exc


def _write_run_config(demo_dir: Path, config: RunConfig) -> Path:
    """The run config as a TOML file for `flwr run --run-config` (no quoting pitfalls)."""
    path = demo_dir / "run-config.toml"
    path.write_text(tomli_w.dumps(config.to_mapping()))
    return path


def _connect_monitor(
    group: ProcessGroup,
    plan: DemoPlan,
    env: dict[str, str],
    progress: DemoProgress,
    on_progress: ProgressCallback,
) -> tuple[RunConfig, str | None]:
    """Start the demo's monitor (or use the given one); return the run config pointing at
    it and the ingest token (a fresh one, or $FEDQ_MONITOR_INGEST_TOKEN for a given one).

    The ingest token travels in the environment of the SuperLink, which passes it on to the
    ServerApp, never in the run config (which Flower stores and shows).
    """
    if not plan.monitor:
        return plan.config, None
    if plan.monitor != "start":
        return plan.config.replace(monitor=plan.monitor), os.environ.get(MONITOR_TOKEN_ENV)
    http_port, grpc_port = free_port(HOST), free_port(HOST)
    token = secrets.token_urlsafe(24)
    monitor = group.start(
        "monitor",
        [
            sys.executable,
            "-m",
            "monitor",
            "--host",
            HOST,
            "--port",
            str(http_port),
            "--grpc-host",
            HOST,
            "--grpc-port",
            str(grpc_port),
            "--db",
            str(plan.demo_dir / "monitor.sqlite"),
        ],
        plan.demo_dir / "logs" / "monitor.log",
        env={**env, MONITOR_TOKEN_ENV: token},
    )
    _wait_listening(monitor, http_port)
    _wait_listening(monitor, grpc_port)
    progress.dashboard_url = f"http://{HOST}:{http_port}/"
    on_progress(progress)
    return plan.config.replace(monitor=f"{HOST}:{grpc_port}"), token


def _write_pids(demo_dir: Path, group: ProcessGroup) -> None:
    """Record what was started (name, PID, marker) so tests and users can check cleanup."""
    pids = [{"name": c.name, "pid": c.process.pid} for c in group.children]
    payload = {"marker": group.marker, "processes": pids}
    (demo_dir / "processes.json").write_text(json.dumps(payload, indent=2) + "\n")


def _watch(
    plan: DemoPlan,
    submit: Child,
    core: list[Child],
    progress: DemoProgress,
    on_progress: ProgressCallback,
    started: float,
    marker: str,
) -> None:
    """Poll the run directory until `flwr run` returns; fail if a Flower process dies.

    A SuperNode is the exception: a client dying is what a federation must survive, so the
    run goes on without it (the ServerApp records its failure) and the user is told. The
    ServerApp's process dying without a summary or failure ends the watch at once (Flower
    itself notices only after about a minute and a half).
    """
    runs_root = Path(plan.config.output_dir)

    def refresh() -> None:
        _refresh(progress, runs_root, on_progress)

    lost: set[str] = set()
    serverapp: int | None = None
    while submit.process.poll() is None:
        _check_core(core, lost, progress, on_progress)
        if time.monotonic() - started > plan.timeout_seconds:
            raise DemoFailed(f"the run did not finish within {plan.timeout_seconds:.0f} s")
        refresh()
        if serverapp is None:
            serverapp = _find_serverapp(marker)
        elif not command_line(serverapp) and not _finished_after_grace(progress, refresh):
            # The ServerApp died without a word: a dead SuperLink (which takes its
            # ServerApp with it) says so; otherwise `_final_summary` does.
            _check_core(core, lost, progress, on_progress)
            return
        time.sleep(0.5)
    # `flwr run` ended. A dead SuperLink (or superexec) explains whatever came after it.
    _check_core(core, lost, progress, on_progress)
    finished = _finished_after_grace(progress, refresh)
    _check_core(core, lost, progress, on_progress)
    if submit.process.returncode != 0 and not finished and serverapp is None:
        raise DemoFailed(f"`flwr run` failed:\n{submit.log_tail()}")


def _check_core(
    core: list[Child], lost: set[str], progress: DemoProgress, on_progress: ProgressCallback
) -> None:
    """Fail if a Flower process other than a SuperNode exited; note a SuperNode's exit."""
    for child in core:
        if child.process.poll() is None or child.name in lost:
            continue
        if not child.name.startswith(SUPERNODE_PREFIX):
            raise DemoFailed(
                f"{child.name} exited with code {child.process.returncode}:\n{child.log_tail()}"
            )
        lost.add(child.name)
        progress.notes.append(
            f"{child.name} exited with code {child.process.returncode}; "
            "the run goes on with the other clients"
        )
        on_progress(progress)


def _find_serverapp(marker: str) -> int | None:
    """PID of the run's ServerApp process, once the SuperLink has started it."""
    for pid in find_marked_processes(marker):
        if any(Path(arg).name == SERVERAPP_PROGRAM for arg in command_line(pid)[:2]):
            return pid
    return None


def _finished_after_grace(progress: DemoProgress, refresh: Callable[[], None]) -> bool:
    """Whether the run directory has, or gets within the grace period, its summary or
    failure."""
    deadline = time.monotonic() + SUMMARY_GRACE_SECONDS
    while not _finished(progress) and time.monotonic() < deadline:
        time.sleep(0.5)
        refresh()
    refresh()
    return _finished(progress)


def _refresh(progress: DemoProgress, runs_root: Path, on_progress: ProgressCallback) -> None:
    if progress.run_dir is None:
        found = sorted(p for p in runs_root.glob("*-run*") if p.is_dir())
        if not found:
            return
        progress.run_dir = found[-1]
    rounds = read_rounds(progress.run_dir / ROUNDS_FILE)
    if len(rounds) != len(progress.rounds):
        progress.rounds = rounds
        on_progress(progress)


def _finished(progress: DemoProgress) -> bool:
    if progress.run_dir is None:
        return False
    return any((progress.run_dir / name).exists() for name in (SUMMARY_FILE, FAILURE_FILE))


def _final_summary(progress: DemoProgress) -> dict[str, Any]:
    if progress.run_dir is None:
        raise DemoFailed("the ServerApp never created its run directory; see the logs")
    failure = progress.run_dir / FAILURE_FILE
    if failure.exists():
        reason = json.loads(failure.read_text())["reason"]
        raise DemoFailed(f"the ServerApp failed: {reason} (run directory {progress.run_dir})")
    summary_path = progress.run_dir / SUMMARY_FILE
    if not summary_path.exists():
        done = progress.rounds[-1]["round"] if progress.rounds else 0
        reason = (
            f"the ServerApp stopped after round {done} without a summary or an error "
            "(killed, or its process crashed); the run directory keeps the last complete "
            f"round: continue it with `fedq resume {progress.run_dir}`"
        )
        RunDirectory(progress.run_dir).write_failure(reason)
        raise DemoFailed(reason)
    return json.loads(summary_path.read_text())
