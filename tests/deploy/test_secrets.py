"""No secret is committed in deploy/, none reaches the image, and the scripts make good ones."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from cli.security import certificate_hosts
from tests.deploy.services import DEPLOY_DIR, REPO_ROOT

PRIVATE_MARKERS = ("PRIVATE KEY-----", "BEGIN OPENSSH PRIVATE")
GENERATED = ("deploy/certs/ca.key", "deploy/keys/private/client-0.key", "deploy/.env")


def _deploy_files() -> list[Path]:
    """Every file of deploy/ that git would commit (tracked, or new and not ignored)."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell what would be committed")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "deploy"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO_ROOT / name for name in listed if (REPO_ROOT / name).is_file()]


def test_no_private_key_certificate_or_token_would_be_committed() -> None:
    files = _deploy_files()
    assert DEPLOY_DIR / "docker-compose.yml" in files
    for path in files:
        assert path.suffix not in (".key", ".pem", ".crt", ".pub"), path
        assert path.name != ".env", path
        text = path.read_text(errors="replace")
        assert not any(marker in text for marker in PRIVATE_MARKERS), path
    example = (DEPLOY_DIR / ".env.example").read_text().splitlines()
    tokens = [line for line in example if "TOKEN=" in line and not line.startswith("#")]
    assert tokens == ["FEDQ_MONITOR_INGEST_TOKEN="], "tokens in .env.example must stay empty"


def test_made_secrets_are_ignored_by_git_and_kept_out_of_the_image() -> None:
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *GENERATED],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.stdout.split() == list(GENERATED)
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for entry in ("deploy/certs", "deploy/keys", "deploy/.env"):
        assert entry in ignored, f".dockerignore must keep {entry} out of the image"


def test_the_scripts_make_keys_and_certificates_flower_accepts(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FEDQ": str(Path(sys.executable).parent / "fedq"),
        "FEDQ_CERTS_DIR": str(tmp_path / "certs"),
        "FEDQ_KEYS_DIR": str(tmp_path / "keys"),
    }
    run = {"env": env, "capture_output": True, "text": True, "timeout": 120}
    made = subprocess.run([str(DEPLOY_DIR / "make-certs.sh"), "fl.example.org", "10.0.0.5"], **run)
    assert made.returncode == 0, made.stderr
    hosts = certificate_hosts(tmp_path / "certs" / "superlink.crt")
    assert hosts == ["superlink", "fl.example.org", "localhost", "10.0.0.5", "127.0.0.1"]
    made = subprocess.run([str(DEPLOY_DIR / "make-keys.sh")], **run)
    assert made.returncode == 0, made.stderr
    for name in ("client-0", "client-1", "client-2"):
        private = tmp_path / "keys" / "private" / f"{name}.key"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        # As flower-supernode loads --auth-supernode-private-key, and `flwr supernode
        # register` the public key.
        loaded = load_ssh_private_key(private.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        assert try_load_public_key(tmp_path / "keys" / "public" / f"{name}.pub")
    for key in ("ca.key", "superlink.key"):
        assert stat.S_IMODE((tmp_path / "certs" / key).stat().st_mode) == 0o600
    again = subprocess.run([str(DEPLOY_DIR / "make-keys.sh")], **run)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
