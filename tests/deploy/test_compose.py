"""deploy/docker-compose.yml is valid compose, and every command is one its program accepts.

No container engine runs here. Compose's own tooling (Debian's `docker-compose`, `make
compose`) validates and interpolates the file; each service's command is parsed by the
parser of the program it names (Flower's argparse parsers, which fedq-superexec uses too,
the flwr and fedq click commands, the monitor's argparse), and the values fedq reads from it
(node-config, run config) by fedq's own checks. tests/deploy/test_multihost.py runs the same
commands.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import tomllib
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
import typer.main
import yaml
from flwr.cli.app import app as flwr_app
from flwr.common.config import parse_config_args
from flwr.common.constant import ISOLATION_MODE_PROCESS
from flwr.supercore.cli.flower_superexec import _parse_args as _parse_args_superexec
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from cli.demo import TASK_POLL_ENV, TASK_POLL_SECONDS
from cli.main import app as fedq_app
from cli.superexec import _runtime_addresses
from fedq.availability import parse_availability
from fedq.nodeconfig import NodeSettings
from fedq.runconfig import RunConfig
from monitor.__main__ import parse_args as monitor_args
from tests.deploy.services import (
    COMPOSE_FILE,
    DEPLOY_DIR,
    DOCKERFILE,
    MissingVariable,
    Service,
    example_env,
    image_environment,
    load_services,
)

TOKEN = "test-token"
# What `submit` waits for: its run needs every SuperNode and every ClientApp executor.
FEDERATION_PROGRAMS = ("flower-supernode", "fedq-superexec")
COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="needs Debian's docker-compose (`make compose`, or apt-get install docker-compose)",
)


@pytest.fixture(scope="module")
def services() -> dict[str, Service]:
    """The compose file's services, interpolated with .env.example and a token."""
    return load_services(example_env(TOKEN))


def _compose(*args: str, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(COMPOSE), "--project-directory", str(DEPLOY_DIR), "-f", str(COMPOSE_FILE)]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


@needs_compose
def test_compose_validates_the_file_and_agrees_on_every_command(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((DEPLOY_DIR / ".env.example").read_text() + f"\n{_token_line()}\n")
    done = _compose("config", env_file=env_file)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    ours = load_services(example_env(TOKEN))
    assert set(resolved) == set(ours)
    for name, spec in resolved.items():
        assert [str(part) for part in spec["command"]] == ours[name].command, name
        assert spec["user"] == "1000:1000"
        shared = ours[name].network_of
        assert spec.get("network_mode") == (shared and f"service:{shared}"), name


@needs_compose
def test_required_variables_fail_loudly(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((DEPLOY_DIR / ".env.example").read_text())  # no token filled in
    done = _compose("config", "--quiet", env_file=env_file)
    assert done.returncode != 0
    assert "set FEDQ_MONITOR_INGEST_TOKEN in deploy/.env" in done.stderr
    with pytest.raises(MissingVariable, match="FEDQ_MONITOR_INGEST_TOKEN"):
        load_services(example_env(""))


def _token_line() -> str:
    return f"FEDQ_MONITOR_INGEST_TOKEN={TOKEN}"


def _click_params(group: click.Group, argv: Sequence[str]) -> dict:
    """Parse `argv` with a click command tree the way its program would; its parameters."""
    command: click.Command = group
    name, args = "prog", list(argv)
    while isinstance(command, click.Group):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"no command {args[0]!r}"
        name, command, args = args[0], sub, args[1:]
    return command.make_context(name, args).params


def _argparse(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    # argparse exits on bad arguments; make that a test failure with its message.
    parser.exit_on_error = False
    try:
        return parser.parse_args(list(args))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise AssertionError(f"{parser.prog} refuses {list(args)}: {exc}") from exc


def test_every_command_names_an_installed_program(services: dict[str, Service]) -> None:
    scripts = {entry.name for entry in entry_points(group="console_scripts")}
    for service in services.values():
        program = service.command[0]
        if program == "python":
            assert service.command[1] == "-m", service.name
        else:
            assert program in scripts, f"{service.name}: {program} is not installed"


def test_the_superlink_serves_tls_and_admits_registered_supernodes_only(services) -> None:
    args = _argparse(_parse_args_run_superlink(), services["superlink"].command[1:])
    assert not args.insecure and args.enable_supernode_auth
    assert (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile) == (
        "/certs/ca.crt",
        "/certs/superlink.crt",
        "/certs/superlink.key",
    )
    assert args.database.startswith("/data/superlink/")  # on the state volume
    mounts = dict((t, s) for s, t in services["superlink"].volumes)
    assert mounts["/data/superlink"] == "superlink-state"
    assert "./certs/ca.key" not in mounts.values(), "no service needs the CA's key"


def test_each_supernode_verifies_the_superlink_and_signs_with_its_own_key(services) -> None:
    supernodes = [s for s in services.values() if s.command[0] == "flower-supernode"]
    assert len(supernodes) >= 3
    partitions, keys, availabilities = set(), set(), set()
    for service in supernodes:
        args = _argparse(_parse_args_run_supernode(), service.command[1:])
        assert not args.insecure and args.root_certificates == "/certs/ca.crt"
        assert args.superlink == "superlink:9092"
        mounts = dict((t, s) for s, t in service.volumes)
        keys.add(mounts[args.auth_supernode_private_key])
        settings = NodeSettings.from_node_config(parse_config_args([args.node_config]))
        partitions.add(settings.partition_id)
        assert settings.client_id == service.name.replace("supernode", "client")
        assert settings.availability is not None
        parse_availability(settings.availability, label_p=1.0)
        availabilities.add(settings.availability)
        assert service.depends_on == {"register": "service_completed_successfully"}
        assert args.isolation == ISOLATION_MODE_PROCESS  # its superexec runs the ClientApps
    assert len(partitions) == len(keys) == len(supernodes), "own partition and own key each"
    assert all(key.startswith("./keys/private/") for key in keys)
    assert len(availabilities) == len(supernodes), "own availability model each"


def test_each_supernode_has_a_warm_superexec_on_its_own_loopback(services) -> None:
    supernodes = {n: s for n, s in services.items() if s.command[0] == "flower-supernode"}
    superexecs = [s for s in services.values() if s.command[0] == "fedq-superexec"]
    beside = {s.network_of: s for s in superexecs}  # SuperNode -> the superexec in its network
    assert len(beside) == len(superexecs) and set(beside) == set(supernodes), "one each"
    for name, superexec in beside.items():
        supernode = _argparse(_parse_args_run_supernode(), supernodes[name].command[1:])
        # fedq-superexec takes a list of addresses, then hands Flower's parser one at a time.
        (address,) = _runtime_addresses(superexec.command[1:])
        args = _argparse(_parse_args_superexec(), superexec.command[1:])
        assert args.runtime_api_address == address == f"{supernode.host}:{supernode.port}"
        # Plaintext, so only on the loopback of the network namespace the two share.
        assert ipaddress.ip_address(supernode.host).is_loopback and args.insecure
        assert superexec.depends_on == {name: "service_started"}
        assert superexec.environment[TASK_POLL_ENV] == str(TASK_POLL_SECONDS)
        assert not superexec.volumes, "no certificates or keys: it talks to its SuperNode only"


def test_flower_superexec_replaces_the_warm_one_with_the_same_arguments(services) -> None:
    stock = load_services({**example_env(TOKEN), "FEDQ_SUPEREXEC": "flower-superexec"})
    warm = {n: s for n, s in services.items() if s.command[0] == "fedq-superexec"}
    assert len(warm) == 3
    assert {n for n, s in stock.items() if s.command[0] == "flower-superexec"} == set(warm)
    scripts = {entry.name for entry in entry_points(group="console_scripts")}
    assert "flower-superexec" in scripts
    for name, service in warm.items():
        assert stock[name].command[1:] == service.command[1:]
        _argparse(_parse_args_superexec(), stock[name].command[1:])
    # Nothing else moves.
    assert {n: s for n, s in stock.items() if n not in warm} == {
        n: s for n, s in services.items() if n not in warm
    }


@needs_compose
def test_compose_takes_the_superexec_program_from_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    text = (DEPLOY_DIR / ".env.example").read_text() + f"\n{_token_line()}\n"
    env_file.write_text(text + "FEDQ_SUPEREXEC=flower-superexec\n")
    done = _compose("config", env_file=env_file)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    programs = {n: str(s["command"][0]) for n, s in resolved.items() if "superexec" in n}
    assert programs == {f"superexec-{i}": "flower-superexec" for i in range(3)}


def test_the_one_shot_services_use_flwr_over_tls(services) -> None:
    connection = tomllib.loads((DEPLOY_DIR / "flwr-config.toml").read_text())["superlink"]
    name = connection["default"]
    assert connection[name]["address"] == "superlink:8000"
    assert "insecure" not in connection[name]
    register = _click_params(typer.main.get_command(fedq_app), services["register"].command[1:])
    assert register["superlink"] == name
    submit = _click_params(typer.main.get_command(flwr_app), services["submit"].command[1:])
    assert (submit["app"], submit["superlink"], submit["stream"]) == ("/app", name, True)
    (run_config,) = submit["run_config_overrides"]
    mounts = dict((t, s) for s, t in services["submit"].volumes)
    assert mounts[run_config] == "./run-config.toml"
    federation = [s for s in services.values() if s.command[0] in FEDERATION_PROGRAMS]
    assert {s.name for s in federation} <= set(services["submit"].depends_on)
    for service in ("register", "submit"):
        assert services[service].restart == "no"
        assert dict((t, s) for s, t in services[service].volumes)["/flwr/config.toml"] == (
            "./flwr-config.toml"
        )
        assert services[service].environment["FLWR_HOME"] == "/flwr"


def test_the_run_config_is_a_valid_fedq_run_config() -> None:
    values = tomllib.loads((DEPLOY_DIR / "run-config.toml").read_text())
    config = RunConfig.from_mapping(values)
    assert config.min_clients == 3 and config.monitor == "monitor:8051"


def test_the_monitor_takes_its_tokens_from_the_environment(services) -> None:
    monitor = services["monitor"]
    args = monitor_args(monitor.command[3:])
    assert monitor.command[:3] == ["python", "-m", "monitor"]
    assert (args.host, args.port, args.grpc_port) == ("0.0.0.0", 8050, 8051)
    assert monitor.environment["FEDQ_MONITOR_INGEST_TOKEN"] == TOKEN
    assert monitor.environment["FEDQ_MONITOR_READ_TOKEN"] is None  # passed on only when set
    assert services["superlink"].environment["FEDQ_MONITOR_INGEST_TOKEN"] == TOKEN
    assert dict((t, s) for s, t in monitor.volumes)["/data/monitor"] == "monitor-data"
    # Only the reporting side holds it: the SuperLink hands it to the ServerApp alone.
    holders = {n for n, s in services.items() if "FEDQ_MONITOR_INGEST_TOKEN" in s.environment}
    assert holders == {"superlink", "monitor"}


def test_healthchecks_and_restart_policies(services) -> None:
    for name in ("superlink", "monitor"):
        check = services[name].healthcheck
        assert check is not None and check[:2] == ["python", "-c"], name
        compile(check[2], f"{name} healthcheck", "exec")
    long_lived = [s for s in services.values() if s.name not in ("register", "submit")]
    assert all(s.restart == "unless-stopped" for s in long_lived)


def test_every_service_runs_under_an_init_that_reaps_orphans(services) -> None:
    # Without one, a program runs as PID 1: processes orphaned by its forked tasks or
    # subprocesses stay zombies, and signals it has no handler for are ignored.
    assert all(s.init for s in services.values()), [s.name for s in services.values() if not s.init]


def test_the_image_installs_cpu_torch_first_and_the_project() -> None:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("RUN ")]
    torch = next(i for i, line in enumerate(lines) if "torch==2.13.0" in line)
    project = next(i for i, line in enumerate(lines) if "pip install /app" in line)
    assert torch < project and "download.pytorch.org/whl/cpu" in lines[torch]
    assert DOCKERFILE.read_text().startswith("# ") and "slim" in DOCKERFILE.read_text()
    # As in every process `fedq demo` starts: no update check, no telemetry.
    assert image_environment()["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert image_environment()["FLWR_TELEMETRY_ENABLED"] == "0"
