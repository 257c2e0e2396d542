"""cli/security.py and cli/federation_security.py: certificates, keys, flags, registration."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cli.federation_security import Plaintext, RegistrationFailed, Secured, _registered_node_id
from cli.security import Certificates, make_certificates, make_node_keys, public_keys
from fedq.errors import ConfigError

FEDQ = str(Path(sys.executable).parent / "fedq")


def _handshake(certs: Certificates, server_name: str) -> None:
    """A TLS handshake with the SuperLink's pair, the client verifying it with the CA."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.cert, certs.key)
    client = ssl.create_default_context(cafile=str(certs.ca_cert))
    left, right = socket.socketpair()

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client's refusal is what the test looks at

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=server_name) as tls:
            tls.sendall(b"x")
    finally:
        right.close()
        thread.join(10)


def test_the_certificate_is_trusted_for_its_hosts_only(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, ["superlink", "10.1.2.3"])
    for name in ("superlink", "localhost", "127.0.0.1", "10.1.2.3"):
        _handshake(certs, name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, "elsewhere.example.org")


def test_files_are_not_replaced_without_force(tmp_path: Path) -> None:
    first = make_certificates(tmp_path, [])
    with pytest.raises(ConfigError, match=r"ca\.crt exists; pass --force"):
        make_certificates(tmp_path, [])
    before = first.ca_cert.read_bytes()
    make_certificates(tmp_path, [], force=True)
    assert first.ca_cert.read_bytes() != before


@pytest.mark.parametrize(
    ("hosts", "names", "message"),
    [
        (["bad host"], None, "host 'bad host' is not allowed"),
        (None, ["client/0"], "SuperNode name 'client/0' is not allowed"),
        (None, ["a", "a"], "SuperNode names must be distinct"),
        (None, [], "no SuperNode names given"),
    ],
)
def test_bad_names_are_refused_with_the_value(tmp_path, hosts, names, message) -> None:
    with pytest.raises(ConfigError, match=message):
        if hosts is not None:
            make_certificates(tmp_path, hosts)
        else:
            make_node_keys(tmp_path, names)
    assert not any(tmp_path.iterdir()), "nothing is written on bad input"


def test_flags_of_a_secured_and_a_plaintext_federation(tmp_path: Path) -> None:
    secured = Secured.create(tmp_path, ["client-0", "client-1"])
    args = secured.superlink_args()
    assert "--enable-supernode-auth" in args and "--insecure" not in args
    node = secured.supernode_args("client-1")
    assert node[node.index("--auth-supernode-private-key") + 1].endswith("private/client-1.key")
    assert secured.connection("127.0.0.1:8000")["root-certificates"].endswith("ca.crt")
    plain = Plaintext()
    assert plain.superlink_args() == plain.supernode_args("client-0") == ["--insecure"]
    assert plain.connection("h:1") == {"address": "h:1", "insecure": True}
    keys = public_keys([tmp_path / "keys" / "public"])
    assert [k.name for k in keys] == ["client-0.pub", "client-1.pub"]


def test_registration_replies_are_read(tmp_path: Path) -> None:
    key = tmp_path / "client-0.pub"
    ok = "Using SuperLink: x\n" + json.dumps({"success": True, "node-id": 2**64 - 5}, indent=2)
    assert _registered_node_id(key, ok, 0) == 2**64 - 5
    known = json.dumps({"success": False, "error-message": "[code: 23] Public key already in use."})
    assert _registered_node_id(key, known, 0) is None
    refused = json.dumps({"success": False, "error-message": "Connection refused"})
    with pytest.raises(RegistrationFailed, match=r"registering .*client-0\.pub failed"):
        _registered_node_id(key, refused, 1)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["deploy", "keys", "client/0", "--out", "{tmp}"], "SuperNode name 'client/0'"),
        (["deploy", "certs", "--out", "{tmp}", "--host", "a b"], "host 'a b' is not allowed"),
        (["deploy", "register", "{tmp}/none"], "is neither a file nor a directory"),
        (["demo", "--tls", "--engine", "simulation", "--output-dir", "{tmp}"], "--tls needs"),
    ],
)
def test_the_cli_answers_bad_input_in_one_line(tmp_path: Path, args, expected) -> None:
    argv = [FEDQ, *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fedq: error: ") and expected in line
    assert not any(tmp_path.iterdir())
