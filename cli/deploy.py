"""`fedq deploy`: certificates, SuperNode keys and their registration for a multi-host federation.

deploy/make-certs.sh and deploy/make-keys.sh call the first two; the compose file's `register`
service calls the third against the running SuperLink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.demo import executable
from cli.federation_security import register_supernodes
from cli.security import (
    CA_KEY,
    CERT_DAYS,
    certificate_hosts,
    make_certificates,
    make_node_keys,
    public_keys,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Certificates and SuperNode keys of a secured federation (TLS + node authentication).",
)
console = Console(soft_wrap=True)


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Directory for ca.crt, ca.key, superlink.*")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="A DNS name or IP address clients dial the SuperLink at (repeatable); "
            "localhost and 127.0.0.1 are always included."
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the certificates in days.")] = CERT_DAYS,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Make a CA and the SuperLink's TLS certificate, signed by it."""
    files = make_certificates(out, host or [], days=days, force=force)
    console.print(f"CA certificate: {files.ca_cert} (give it to every SuperNode and flwr)")
    console.print(f"CA private key: {out / CA_KEY} (keep it; no service needs it)")
    console.print(f"SuperLink certificate: {files.cert}, key {files.key}")
    console.print(f"valid for: {', '.join(certificate_hosts(files.cert))}")


@app.command()
def keys(
    names: Annotated[list[str], typer.Argument(help="SuperNode names, e.g. client-0 client-1")],
    out: Annotated[Path, typer.Option(help="Directory for private/NAME.key, public/NAME.pub")],
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Make one authentication key pair per SuperNode (P-384, OpenSSH format)."""
    for key in make_node_keys(out, names, force=force):
        console.print(f"{key.name}: private {key.private_key}, public {key.public_key}")


@app.command()
def register(
    keys: Annotated[
        list[Path], typer.Argument(help="Public key files, or directories of *.pub files.")
    ],
    superlink: Annotated[
        str | None,
        typer.Option(help="The flwr connection in $FLWR_HOME/config.toml; default: its default."),
    ] = None,
) -> None:
    """Register SuperNode public keys with the SuperLink (`flwr supernode register`).

    Keys the SuperLink already knows are left as they are, so this can run at every start.
    """
    found = public_keys(keys)
    for key, node_id in register_supernodes(executable("flwr"), found, superlink).items():
        state = "already registered" if node_id is None else f"registered as node {node_id}"
        console.print(f"{key.name}: {state}")
