"""The compose harness (tests/deploy/services.py): shared networks, and /app as the image has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.services import copy_image_app, load_services, network_hosts

SERVICE = "    command: [sleep, '1']\n"


def _compose_file(tmp_path: Path, services: dict[str, str]) -> Path:
    """A compose file of `services` (name -> extra YAML lines), each a `sleep` command."""
    body = "".join(f"  {name}:\n{SERVICE}{extra}" for name, extra in services.items())
    path = tmp_path / "compose.yml"
    path.write_text(f"services:\n{body}")
    return path


def test_a_service_may_share_the_network_of_another(tmp_path: Path) -> None:
    path = _compose_file(tmp_path, {"node": "", "sidecar": '    network_mode: "service:node"\n'})
    services = load_services({}, path)
    assert (services["node"].network_of, services["sidecar"].network_of) == (None, "node")
    assert network_hosts(services) == ["node"]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("host", "only service:X"),
        ("service:nowhere", "not a service with a network of its own"),
        ("service:sidecar", "not a service with a network of its own"),  # no chains
    ],
)
def test_other_network_modes_are_refused(tmp_path: Path, mode: str, message: str) -> None:
    services = {
        "node": "",
        "sidecar": '    network_mode: "service:node"\n',
        "other": f'    network_mode: "{mode}"\n',
    }
    with pytest.raises(ValueError, match=message):
        load_services({}, _compose_file(tmp_path, services))


def test_the_image_app_leaves_out_what_dockerignore_names(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    ignore = [".venv", "**/__pycache__", "*.egg-info", "deploy/keys", "**/*.key", "# comment"]
    files = [
        ".venv/bin/python",
        "fedq/__pycache__/x.pyc",
        "__pycache__/y.pyc",
        "fedq.egg-info/PKG-INFO",
        "deploy/keys/private/client-0.key",
        "deploy/certs/ca.key",
        "fedq/core.py",
        "fedq/sub/fedq.egg-info",  # `*.egg-info` is anchored at the root
        "deploy/keys.md",
        "pyproject.toml",
    ]
    for name in files:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name)
    (repo / ".dockerignore").write_text("\n".join(ignore) + "\n")
    app = copy_image_app(tmp_path / "app", repo)
    kept = sorted(p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file())
    expected = [".dockerignore", "deploy/keys.md", "fedq/core.py", "fedq/sub/fedq.egg-info"]
    assert kept == [*expected, "pyproject.toml"]
