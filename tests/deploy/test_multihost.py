"""The compose file's services on separate hosts: TLS, SuperNode authentication, a finished run.

No container engine runs here, so each service of deploy/docker-compose.yml runs in a network
namespace of its own (its own address, `superlink` and `monitor` resolving as in a compose
network), or in its SuperNode's (each fedq-superexec, `network_mode: service:supernode-N`),
with the compose file's command, environment and healthcheck, the certificates and keys made
by deploy's own scripts, in compose's order (tests/deploy/services.py). The ClientApps run in
the superexecs (two warm, and one Flower's own, as `FEDQ_SUPEREXEC=flower-superexec` makes
it); a SuperNode with an unregistered key, and one with no key, are refused.
Then, as a team changes its app and runs it again on the deployment that stays up, a second
`flwr run` submits an edited app (another FAB) with another strategy and codec.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from cli.processes import find_marked_processes
from fedq.run_directory import read_rounds
from tests.deploy.services import (
    DEPLOY_DIR,
    ComposeHosts,
    Service,
    copy_image_app,
    example_env,
    load_services,
    network_hosts,
)
from tests.netns import Network, unavailable_reason

ROUNDS = 2
CLIENTS = ("client-0", "client-1", "client-2")
# Compose's start order; each superexec-N right after the SuperNode whose network it shares.
ORDER = (
    *("superlink", "register", "monitor"),
    *("supernode-0", "superexec-0", "supernode-1", "superexec-1", "supernode-2", "superexec-2"),
    "submit",
)
RUN_TIMEOUT_SECONDS = 480.0
STOCK_SUPEREXEC = "superexec-2"
REFUSED_TIMEOUT_SECONDS = 90.0

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.timeout(900)]


def make_secrets(tmp_path: Path) -> None:
    """Certificates and keys by deploy/make-certs.sh and deploy/make-keys.sh, under tmp_path."""
    env = {
        **os.environ,
        "FEDQ": str(Path(sys.executable).parent / "fedq"),
        "FEDQ_CERTS_DIR": str(tmp_path / "certs"),
        "FEDQ_KEYS_DIR": str(tmp_path / "keys"),
    }
    for argv in (["make-certs.sh"], ["make-keys.sh"]):
        subprocess.run([str(DEPLOY_DIR / argv[0])], env=env, check=True, capture_output=True)
    # A key the SuperLink never hears of.
    rogue = {**env, "FEDQ_KEYS_DIR": str(tmp_path / "rogue-keys")}
    subprocess.run([str(DEPLOY_DIR / "make-keys.sh"), "rogue"], env=rogue, check=True)


def write_configs(compose: ComposeHosts, tmp_path: Path) -> None:
    """deploy/'s flwr connection and run config with container paths mapped; fewer rounds."""
    compose.sources.update(
        {
            "./certs": tmp_path / "certs",
            "./keys": tmp_path / "keys",
            "./rogue": tmp_path / "rogue-keys",
            "./flwr-config.toml": tmp_path / "flwr-config.toml",
            "./run-config.toml": tmp_path / "run-config.toml",
        }
    )
    connection = tomllib.loads((DEPLOY_DIR / "flwr-config.toml").read_text())
    for entry in connection["superlink"].values():
        if isinstance(entry, dict) and "root-certificates" in entry:
            entry["root-certificates"] = str(
                compose.host_path("register", entry["root-certificates"])
            )
    (tmp_path / "flwr-config.toml").write_text(tomli_w.dumps(connection))
    run_config = tomllib.loads((DEPLOY_DIR / "run-config.toml").read_text())
    # The ServerApp runs in the SuperLink's container: output-dir is a path there.
    run_config["output-dir"] = str(compose.host_path("superlink", run_config["output-dir"]))
    run_config.update({"num-server-rounds": ROUNDS, "local-steps": 5})
    (tmp_path / "run-config.toml").write_text(tomli_w.dumps(run_config))


def refused_supernodes(services: dict[str, Service]) -> dict[str, Service]:
    """supernode-0 with a key the SuperLink does not know, and with no key at all."""
    model = services["supernode-0"]
    key_mount = [v for v in model.volumes if v[1].endswith(".key")]
    assert len(key_mount) == 1, model.volumes
    others = [v for v in model.volumes if v not in key_mount]
    rogue = [*others, ("./rogue/private/rogue.key", key_mount[0][1])]
    keyless = [c for c in model.command if not c.startswith("--auth-supernode-private-key")]
    assert len(keyless) == len(model.command) - 1
    return {
        "rogue": dataclasses.replace(
            model, name="rogue", volumes=rogue, depends_on={}, restart="no"
        ),
        "keyless": dataclasses.replace(
            model, name="keyless", command=keyless, depends_on={}, restart="no"
        ),
    }


def get_json(network: Network, host: str, url: str) -> object:
    """GET `url` from inside `host` (the monitor is reachable only on the bridge)."""
    code = (
        "import urllib.request, sys; "
        f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    done = network.run(host, [sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def installed_apps(compose: ComposeHosts, service: str) -> list[Path]:
    """The Flower apps `service` installed to run them (under its FLWR_HOME's apps/)."""
    flwr_home = compose.services[service].environment["FLWR_HOME"]
    assert flwr_home is not None, service
    return sorted(compose.host_path(service, flwr_home).glob("apps/*"))


def second_submit(compose: ComposeHosts, tmp_path: Path) -> str:
    """`submit` again, after an edit to the app (so another FAB) and with another run config:
    FedAvg with int4 updates and error feedback (each client's residual in its Context)."""
    client_app = compose.app_dir / "client" / "client_app.py"
    client_app.write_text(client_app.read_text() + "\n# edited for a second run\n")
    run_config = tomllib.loads((tmp_path / "run-config.toml").read_text())
    run_config.update({"strategy": "fedavg", "compress": "int4+ef"})
    (tmp_path / "run-config-2.toml").write_text(tomli_w.dumps(run_config))
    compose.sources["./run-config.toml"] = tmp_path / "run-config-2.toml"
    name = "submit-2"
    compose.services[name] = dataclasses.replace(
        compose.services["submit"], name=name, depends_on={}, network_of="submit"
    )
    compose.start(name)
    return name


def wait_exit(compose: ComposeHosts, name: str, timeout: float) -> int:
    process = compose.children[name].process
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} was not refused within {timeout:.0f} s") from None


def test_compose_services_run_a_secured_federation_on_separate_hosts(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs Linux network namespaces: {reason}")
    make_secrets(tmp_path)
    env = example_env(secrets.token_urlsafe(24))
    services = load_services(env)
    assert set(ORDER) == set(services), "a service was added: run it here too"
    services.update(refused_supernodes(services))
    # The last SuperNode's ClientApps run in Flower's own SuperExec (what the compose file's
    # FEDQ_SUPEREXEC=flower-superexec gives): stock and warm executors in one federation.
    stock = load_services({**env, "FEDQ_SUPEREXEC": "flower-superexec"})[STOCK_SUPEREXEC]
    assert stock.command[0] == "flower-superexec"
    services[STOCK_SUPEREXEC] = stock
    with Network(network_hosts(services), tmp_path / "logs") as network:
        marker = network.group.marker
        app_dir = copy_image_app(tmp_path / "image-app")
        compose = ComposeHosts(network, services, tmp_path, env, app_dir=app_dir)
        write_configs(compose, tmp_path)
        started = time.monotonic()
        compose.up(ORDER, one_shot_timeout=120.0)
        compose.up(["rogue", "keyless"], one_shot_timeout=0.0)

        # Unregistered SuperNodes are refused: they exit, and the SuperLink says why.
        for name in ("rogue", "keyless"):
            code = wait_exit(compose, name, REFUSED_TIMEOUT_SECONDS)
            assert code != 0, compose.children[name].log_tail()
        rogue_log = compose.children["rogue"].log_path.read_text()
        assert "Failed to activate SuperNode" in rogue_log
        keyless_log = compose.children["keyless"].log_path.read_text()
        assert "All SuperNodes must be registered" in keyless_log
        superlink_log = compose.children["superlink"].log_path.read_text()
        assert "No SuperNode found with the given public key" in superlink_log
        assert "SuperNode authentication is disabled" not in superlink_log
        assert "Uvicorn running on https://" in superlink_log  # the Control API serves TLS

        # The run finishes over TLS with the three registered SuperNodes.
        code = compose.wait_exit("submit", RUN_TIMEOUT_SECONDS)
        assert code == 0, compose.children["submit"].log_tail(40)
        wall = time.monotonic() - started
        runs = compose.host_path("superlink", "/data/superlink/runs")
        (run_dir,) = runs.glob("*-fedau-run*")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds"] == ROUNDS

        # The ClientApps ran in the superexecs, each of which installed the run's app; no
        # SuperNode started a ClientApp (or Flower's own SuperExec) itself.
        for i in range(len(CLIENTS)):
            assert installed_apps(compose, f"superexec-{i}"), f"superexec-{i} ran no ClientApp"
            assert not installed_apps(compose, f"supernode-{i}")
            # Flower's own SuperExec starts a flwr-clientapp process per message; ours forks.
            log = compose.children[f"superexec-{i}"].log_path.read_text()
            stock_processes = "Start `flwr-clientapp` process" in log
            assert stock_processes == (f"superexec-{i}" == STOCK_SUPEREXEC), log[-2000:]

        # The monitor saw the run, by its run directory's name, and every client by name.
        deadline = time.monotonic() + 30
        while True:
            (run,) = get_json(network, "submit", "http://monitor:8050/api/runs")
            if run["status"] == "finished" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert (run["status"], run["name"], run["rounds_done"]) == ("finished", run_dir.name, 2)
        clients = get_json(
            network, "submit", f"http://monitor:8050/api/runs/{run['run_id']}/clients"
        )
        assert sorted(c["client_id"] for c in clients) == list(CLIENTS)
        print(f"multi-host run: {ROUNDS} rounds in {wall:.0f} s from the first start")

        # A second run of an edited app on the same long-lived services finishes too: each
        # superexec installs the new FAB beside the first and runs its ClientApps warm.
        first_apps = {i: installed_apps(compose, f"superexec-{i}") for i in range(len(CLIENTS))}
        submit = second_submit(compose, tmp_path)
        code = compose.wait_exit(submit, RUN_TIMEOUT_SECONDS)
        assert code == 0, compose.children[submit].log_tail(40)
        (second_dir,) = runs.glob("*-fedavg-run*")
        second = json.loads((second_dir / "summary.json").read_text())
        assert second["rounds"] == ROUNDS
        records = read_rounds(second_dir / "rounds.jsonl")
        assert [r["round"] for r in records] == list(range(ROUNDS + 1))
        for record in records[1:]:  # every round's updates came as int4 codes
            assert 0 < record["payload_bytes_up"] < record["fp32_bytes_up"] / 4, record
        for i, apps in first_apps.items():
            now = installed_apps(compose, f"superexec-{i}")
            assert len(now) == len(apps) + 1 and set(apps) < set(now), (apps, now)
            log = compose.children[f"superexec-{i}"].log_path.read_text()
            assert "Traceback" not in log, log[-3000:]
        deadline = time.monotonic() + 30
        while True:
            runs_seen = get_json(network, "submit", "http://monitor:8050/api/runs")
            statuses = sorted((r["name"], r["status"]) for r in runs_seen)
            if all(status == "finished" for _, status in statuses) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert statuses == sorted([(run_dir.name, "finished"), (second_dir.name, "finished")])
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network.suffix not in leftovers
    assert find_marked_processes(marker) == []
