"""deploy/docker-compose.yml read as a list of programs, and run as compose would run them.

`load_services` reads the compose file (YAML anchors and merge keys resolved, `${VAR}`,
`${VAR:-default}` and `${VAR:?message}` interpolated as compose does). `ComposeHosts` runs
the services without a container engine: each in its own network namespace named after the
service (tests/netns.py), or, with `network_mode: service:X`, in X's, with the service's own
command, environment and healthcheck. Paths inside a container become host paths: a bind
mount's target its source, a named volume's target a directory per volume, /app the
repository (or the image's copy of it, `copy_image_app`), and any other absolute path a
directory of the service's own, so no two services share what their containers would not.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cli.processes import Child
from tests.netns import Network

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
IMAGE_APP_DIR = "/app"  # where the Dockerfile copies the repository
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


class MissingVariable(ValueError):
    """A `${VAR:?message}` variable is unset or empty; the message is compose's."""


@dataclass(frozen=True)
class Service:
    """One compose service as a program: argv, environment, mounts, health and order."""

    name: str
    command: list[str]
    environment: dict[str, str | None]
    volumes: list[tuple[str, str]]  # (source, container path); source: ./path or a volume
    healthcheck: list[str] | None  # the CMD argv
    health_interval: float
    health_retries: int
    depends_on: dict[str, str]  # service -> condition
    restart: str
    # The service whose network namespace this one shares (`network_mode: service:X`); None
    # for a network of its own.
    network_of: str | None = None
    init: bool = False  # an init process as PID 1 (`init: true`) reaps orphans, forwards signals


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with compose's `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$$` replaced."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        given = env.get(name)
        empty = given is None or (given == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and empty:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and empty:
            return arg
        return given or ""

    return _VARIABLE.sub(value, text)


def load_services(env: Mapping[str, str], path: Path = COMPOSE_FILE) -> dict[str, Service]:
    """The services of the compose file at `path`, interpolated with `env`."""
    document = yaml.safe_load(path.read_text())
    services = {}
    for name, spec in document["services"].items():
        spec = _interpolated(spec, env)
        health = spec.get("healthcheck") or {}
        test = health.get("test")
        services[name] = Service(
            name=name,
            command=[str(part) for part in spec["command"]],
            environment=_environment(spec.get("environment") or {}),
            volumes=[_volume(item) for item in spec.get("volumes") or []],
            healthcheck=[str(p) for p in test[1:]] if test and test[0] == "CMD" else None,
            health_interval=_seconds(health.get("interval", "5s")),
            health_retries=int(health.get("retries", 3)),
            depends_on={
                other: (cond or {}).get("condition", "service_started")
                for other, cond in (spec.get("depends_on") or {}).items()
            },
            restart=str(spec.get("restart", "no")),
            network_of=_network_of(name, spec.get("network_mode")),
            init=spec.get("init") is True,
        )
    _check_shared_networks(services)
    return services


def network_hosts(services: Mapping[str, Service]) -> list[str]:
    """The services that have a network namespace of their own (the others share one)."""
    return [name for name, service in services.items() if service.network_of is None]


def example_env(token: str) -> dict[str, str]:
    """deploy/.env.example's settings, with the ingest token `token` filled in."""
    env = {}
    for line in (DEPLOY_DIR / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            env[key.strip()] = value.strip()
    return {**env, "FEDQ_MONITOR_INGEST_TOKEN": token}


def image_environment(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The `ENV` settings of the Dockerfile (KEY=VALUE form, continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                found[key] = value
    return found


def copy_image_app(target: Path, repo: Path = REPO_ROOT) -> Path:
    """Copy `repo` to `target` as the Dockerfile copies it to /app, less what .dockerignore says.

    `flwr run /app` reads every file under the app's directory before it filters them, and
    a checkout's .venv, which the image does not have, holds some 50,000.
    """
    lines = (repo / ".dockerignore").read_text().splitlines()
    patterns = [p for line in lines if (p := _dockerignore_pattern(line.strip())) is not None]

    def ignored(directory: str, names: list[str]) -> set[str]:
        where = Path(directory).relative_to(repo)
        paths = {name: (where / name).as_posix() for name in names}
        return {name for name, path in paths.items() if any(p.fullmatch(path) for p in patterns)}

    shutil.copytree(repo, target, ignore=ignored, symlinks=True)
    return target


def _dockerignore_pattern(line: str) -> re.Pattern[str] | None:
    """A .dockerignore line as a regex on paths relative to the context; None for no pattern.

    Docker's rules: `*` and `?` stay within one path segment, `**` spans any number, and a
    pattern is anchored at the context's root. Exceptions (`!`) and classes (`[...]`) are
    not supported here.
    """
    if not line or line.startswith("#"):
        return None
    if line.startswith("!") or "[" in line:
        raise ValueError(f".dockerignore pattern {line!r} is not supported here")
    parts, rest = [], line.strip("/")
    while rest:
        if rest.startswith("**/"):
            parts.append("(?:.*/)?")
            rest = rest[3:]
        elif rest.startswith("**"):
            parts.append(".*")
            rest = rest[2:]
        else:
            parts.append({"*": "[^/]*", "?": "[^/]"}.get(rest[0], re.escape(rest[0])))
            rest = rest[1:]
    return re.compile("".join(parts))


def _interpolated(value: object, env: Mapping[str, str]) -> object:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [_interpolated(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolated(v, env) for k, v in value.items()}
    return value


def _environment(spec: dict | list) -> dict[str, str | None]:
    if isinstance(spec, dict):
        return {k: None if v is None else str(v) for k, v in spec.items()}
    pairs = (item.partition("=") for item in spec)
    return {key: (value if sep else None) for key, sep, value in pairs}


def _check_shared_networks(services: Mapping[str, Service]) -> None:
    """Every `network_mode: service:X` names a service X with a network of its own."""
    for service in services.values():
        if service.network_of is None:
            continue
        owner = services.get(service.network_of)
        if owner is None or owner.network_of is not None:
            raise ValueError(
                f"{service.name}: network_mode names {service.network_of!r}, "
                "which is not a service with a network of its own"
            )


def _network_of(service: str, mode: str | None) -> str | None:
    """X of `network_mode: service:X`; None without network_mode. Other modes are refused."""
    if mode is None:
        return None
    kind, _, other = str(mode).partition(":")
    if kind != "service" or not other:
        raise ValueError(f"{service}: network_mode {mode!r} is not supported here; only service:X")
    return other


def _volume(item: str) -> tuple[str, str]:
    source, target, *_ = item.split(":")
    return source, target


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", str(text))
    if match is None:
        raise ValueError(f"duration {text!r} is not like 5s")
    number, unit = float(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


# ---------------------------------------------------------------- running them as hosts


@dataclass
class ComposeHosts:
    """Runs compose services in the namespaces of `network` (one per `network_hosts` name)."""

    network: Network
    services: dict[str, Service]
    work_dir: Path  # the host side of every container path
    env: Mapping[str, str]  # what the shell passes on (`environment: [VAR]` entries)
    app_dir: Path = REPO_ROOT  # the image's /app (see copy_image_app)
    # A bind mount's ./path (or a directory above it) -> where it is on this machine; others
    # are taken from deploy/ itself.
    sources: dict[str, Path] = field(default_factory=dict)
    children: dict[str, Child] = field(default_factory=dict)

    def host_path(self, service: str, container_path: str) -> Path:
        """Where `container_path` of `service`'s container lives on this machine."""
        mounts = sorted(self.services[service].volumes, key=lambda m: -len(m[1]))
        for source, target in mounts:
            if container_path == target or container_path.startswith(target + "/"):
                rest = container_path[len(target) :].lstrip("/")
                return self._source(source) / rest if rest else self._source(source)
        if container_path == IMAGE_APP_DIR or container_path.startswith(IMAGE_APP_DIR + "/"):
            return self.app_dir / container_path[len(IMAGE_APP_DIR) :].lstrip("/")
        return self.work_dir / "fs" / service / container_path.lstrip("/")

    def argv(self, service: str, command: Sequence[str]) -> list[str]:
        """`command` with the program from this environment and container paths mapped."""
        program, *args = command
        scripts = Path(sys.executable).parent
        program = sys.executable if program == "python" else str(scripts / program)
        return [program, *(self._mapped(service, arg) for arg in args)]

    def environment(self, service: str) -> dict[str, str]:
        """The service's environment: the image's, then the compose file's, paths mapped."""
        scripts = str(Path(sys.executable).parent)
        env = {"PATH": f"{scripts}:/usr/bin:/bin:/usr/sbin:/sbin", **image_environment()}
        for key, value in self.services[service].environment.items():
            if value is None:
                if key in self.env:
                    env[key] = self.env[key]
            else:
                env[key] = value
        env = {k: v if k == "PATH" else self._mapped(service, v) for k, v in env.items()}
        for directory in ("HOME", "FLWR_HOME"):
            if directory in env:
                Path(env[directory]).mkdir(parents=True, exist_ok=True)
        return env

    def network_host(self, service: str) -> str:
        """The namespace `service` runs in: its own, or the one of the service it shares."""
        return self.services[service].network_of or service

    def start(self, service: str) -> Child:
        """Start `service`'s command in its namespace."""
        spec = self.services[service]
        self._place_mounts(service)
        child = self.network.start(
            self.network_host(service),
            service,
            self.argv(service, spec.command),
            env=self.environment(service),
            cwd=self.host_path(service, "/app"),
        )
        self.children[service] = child
        return child

    def wait_healthy(self, service: str) -> None:
        """Run the service's healthcheck until it passes (compose's interval and retries)."""
        spec = self.services[service]
        if spec.healthcheck is None:
            raise ValueError(f"{service} has no healthcheck")
        self.network.wait_until(
            self.network_host(service),
            self.argv(service, spec.healthcheck),
            timeout=spec.health_interval * spec.health_retries + 30.0,
            interval=min(spec.health_interval, 1.0),
            env=self.environment(service),
            watch=[self.children[service]],
        )

    def wait_exit(self, service: str, timeout: float) -> int:
        """Wait for a one-shot service to end; its exit code."""
        child = self.children[service]
        deadline = time.monotonic() + timeout
        while child.process.poll() is None:
            for name, other in self.children.items():
                long_lived = self.services[name].restart != "no"
                if long_lived and other.process.poll() is not None:
                    raise ChildProcessError(f"{name} died:\n{other.log_tail(30)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} still runs after {timeout:.0f} s")
            time.sleep(0.5)
        return int(child.process.returncode)

    def up(self, services: Sequence[str], one_shot_timeout: float) -> None:
        """Start `services` in order, each once its depends_on conditions hold, as compose."""
        for service in services:
            for other, condition in self.services[service].depends_on.items():
                if condition == "service_healthy":
                    self.wait_healthy(other)
                elif condition == "service_completed_successfully":
                    code = self.wait_exit(other, one_shot_timeout)
                    if code != 0:
                        log = self.children[other].log_tail(30)
                        raise ChildProcessError(f"{other} exited with {code}:\n{log}")
            self.start(service)

    def _place_mounts(self, service: str) -> None:
        """Link each mount into the service's own directory tree, where its container has it.

        A file mounted into a directory of the container (config.toml into FLWR_HOME) is then
        found by a program that is handed the directory.
        """
        for source, target in self.services[service].volumes:
            place = self.work_dir / "fs" / service / target.lstrip("/")
            if not place.is_symlink():
                place.parent.mkdir(parents=True, exist_ok=True)
                place.symlink_to(self._source(source))

    def _source(self, source: str) -> Path:
        if source.startswith("./"):
            for given in sorted(self.sources, key=len, reverse=True):
                if source == given or source.startswith(given + "/"):
                    return self.sources[given] / source[len(given) :].lstrip("/")
            return DEPLOY_DIR / source[2:]
        volume = self.work_dir / "volumes" / source
        volume.mkdir(parents=True, exist_ok=True)
        return volume

    def _mapped(self, service: str, arg: str) -> str:
        """An argument with a container path (`/x`, or `--flag=/x`) as its host path."""
        flag, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if not value.startswith("/"):
            return arg
        return f"{flag}{sep}{self.host_path(service, value)}"
