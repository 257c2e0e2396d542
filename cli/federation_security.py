"""How a federation's processes are started and admitted: plaintext, or TLS with SuperNode keys.

`Plaintext` is `--insecure` everywhere. `Secured` gives Flower 1.39's flags for TLS and SuperNode
authentication (cli/security.py makes the files) and registers the SuperNodes' public keys with
`flwr supernode register`, which `register_supernodes` runs. `fedq demo` starts its processes
with one of the two; `fedq deploy register` registers a directory of keys.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cli.security import Certificates, NodeKey, make_certificates, make_node_keys
from fedq.errors import FedqError

REGISTER_TIMEOUT_SECONDS = 120.0
ALREADY_REGISTERED = "Public key already in use"


class RegistrationFailed(FedqError):
    """`flwr supernode register` refused a public key; the message says why."""


def register_supernodes(
    flwr: str,
    keys: Sequence[Path],
    superlink: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[Path, int | None]:
    """Register each public key with the SuperLink of connection `superlink`; return node ids.

    Runs one `flwr supernode register KEY [SUPERLINK] --format json` per key, all at once
    (each takes a couple of seconds to start); the connection comes from
    `$FLWR_HOME/config.toml` of `env` (its default one if `superlink` is None). A key the
    SuperLink already knows (its state is kept in a database) maps to None, so registering
    again is harmless.
    """
    environment = dict(os.environ if env is None else env)
    connection = [] if superlink is None else [superlink]
    running = {
        key: subprocess.Popen(
            [flwr, "supernode", "register", str(key), *connection, "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=environment,
        )
        for key in keys
    }
    try:
        outputs = {
            key: (process.communicate(timeout=REGISTER_TIMEOUT_SECONDS)[0], process.returncode)
            for key, process in running.items()
        }
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return {key: _registered_node_id(key, output, code) for key, (output, code) in outputs.items()}


def _registered_node_id(key: Path, output: str, returncode: int) -> int | None:
    """The node id in `flwr supernode register --format json`'s reply; None if known."""
    start = output.find("{")
    reply = None
    if start >= 0:
        try:
            reply = json.loads(output[start:])
        except json.JSONDecodeError:
            reply = None
    if isinstance(reply, dict):
        if reply.get("success") and "node-id" in reply:
            return int(reply["node-id"])
        if ALREADY_REGISTERED in str(reply.get("error-message", "")):
            return None
    tail = " ".join(output.split())[-400:]
    raise RegistrationFailed(f"registering {key} failed (exit code {returncode}): {tail}")


class FederationSecurity(Protocol):
    """The flags and connection of a federation, plaintext or secured (`fedq demo`)."""

    def superlink_args(self) -> list[str]:
        """`flower-superlink` flags."""
        ...

    def supernode_args(self, name: str) -> list[str]:
        """`flower-supernode` flags of the SuperNode of client `name`."""
        ...

    def connection(self, address: str) -> dict[str, str | bool]:
        """The `flwr` connection (`[superlink.NAME]` of config.toml) to `address`."""
        ...

    def register(self, flwr: str, superlink: str, env: Mapping[str, str]) -> None:
        """Make the SuperLink of connection `superlink` accept the SuperNodes."""
        ...


class Plaintext:
    """No TLS, no SuperNode authentication: `--insecure` everywhere."""

    def superlink_args(self) -> list[str]:
        """`--insecure`."""
        return ["--insecure"]

    def supernode_args(self, name: str) -> list[str]:
        """`--insecure`."""
        return ["--insecure"]

    def connection(self, address: str) -> dict[str, str | bool]:
        """A plaintext connection."""
        return {"address": address, "insecure": True}

    def register(self, flwr: str, superlink: str, env: Mapping[str, str]) -> None:
        """Nothing: without authentication every SuperNode registers itself."""


@dataclass(frozen=True)
class Secured:
    """TLS with `certs` and SuperNode authentication with one key pair per client."""

    certs: Certificates
    keys: dict[str, NodeKey]

    @classmethod
    def create(cls, directory: Path, clients: Sequence[str]) -> Secured:
        """Make a CA, a SuperLink certificate for this machine and a key pair per client."""
        certs = make_certificates(directory / "certs")
        keys = make_node_keys(directory / "keys", clients)
        return cls(certs, {key.name: key for key in keys})

    def superlink_args(self) -> list[str]:
        """TLS with the certificates, and only registered SuperNodes admitted."""
        return [
            "--ssl-ca-certfile",
            str(self.certs.ca_cert),
            "--ssl-certfile",
            str(self.certs.cert),
            "--ssl-keyfile",
            str(self.certs.key),
            "--enable-supernode-auth",
        ]

    def supernode_args(self, name: str) -> list[str]:
        """Verify the SuperLink with the CA; sign requests with client `name`'s key."""
        key = self.keys[name]
        return [
            "--root-certificates",
            str(self.certs.ca_cert),
            "--auth-supernode-private-key",
            str(key.private_key),
        ]

    def connection(self, address: str) -> dict[str, str | bool]:
        """A connection that verifies the SuperLink's certificate with the CA."""
        return {"address": address, "root-certificates": str(self.certs.ca_cert)}

    def register(self, flwr: str, superlink: str, env: Mapping[str, str]) -> None:
        """Register every client's public key."""
        register_supernodes(flwr, [k.public_key for k in self.keys.values()], superlink, env)
