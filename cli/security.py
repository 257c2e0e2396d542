"""TLS certificates and SuperNode keys for a secured federation, as Flower 1.39 takes them.

Flower 1.39 secures a federation in two layers:

- TLS: `flower-superlink --ssl-ca-certfile CA --ssl-certfile CERT --ssl-keyfile KEY` serves
  the Fleet API (gRPC), the Control API and the Runtime API (HTTP) with one certificate;
  `flower-supernode --root-certificates CA` and `flwr` (`root-certificates` in the
  connection of `$FLWR_HOME/config.toml`) verify it. The certificate must name every host
  a client dials, 127.0.0.1 included: the SuperLink's own ServerApp runtime dials it.
- SuperNode authentication: `flower-superlink --enable-supernode-auth` (TLS required)
  accepts only SuperNodes whose public key was registered with `flwr supernode register
  KEY.pub CONNECTION` over the Control API; each SuperNode signs its requests with
  `--auth-supernode-private-key KEY`. Keys are NIST elliptic-curve keys in OpenSSH format
  (what `ssh-keygen -t ecdsa -b 384` writes). An unregistered SuperNode is refused.

This module makes those files with `cryptography` (no openssl or ssh-keygen needed);
cli/federation_security.py turns them into the processes' flags and registers the keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedq.errors import ConfigError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SUPERLINK_CERT = "superlink.crt"
SUPERLINK_KEY = "superlink.key"
# Every SuperLink certificate names these: the SuperLink's ServerApp runtime dials
# 127.0.0.1 (Flower replaces a bind-all --host with it) and local tools dial localhost.
LOCAL_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
CERT_DAYS = 825
# P-384: the curve of Flower's own examples (`ssh-keygen -t ecdsa -b 384`).
CURVE = ec.SECP384R1
# A key directory holds private/NAME.key (stays with its SuperNode) and public/NAME.pub
# (goes to whoever registers SuperNodes with the SuperLink).
PRIVATE_DIR = "private"
PUBLIC_DIR = "public"
PUBLIC_SUFFIX = ".pub"


@dataclass(frozen=True)
class Certificates:
    """The SuperLink's TLS files (PEM): the CA certificate and the SuperLink's own pair."""

    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> Certificates:
        """The files at their standard names in `directory` (they may not exist yet)."""
        return cls(directory / CA_CERT, directory / SUPERLINK_CERT, directory / SUPERLINK_KEY)


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format), named after its client."""

    name: str
    private_key: Path
    public_key: Path

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> NodeKey:
        """The pair of `name` at its standard paths under `directory`."""
        return cls(
            name,
            directory / PRIVATE_DIR / f"{name}.key",
            directory / PUBLIC_DIR / f"{name}{PUBLIC_SUFFIX}",
        )


def make_certificates(
    out_dir: Path, hosts: Sequence[str] = (), days: int = CERT_DAYS, force: bool = False
) -> Certificates:
    """Make a CA (`ca.crt`, `ca.key`) and a SuperLink certificate it signs.

    The SuperLink certificate is valid for `hosts` (DNS names or IP addresses: the compose
    service name, a public address) plus localhost and 127.0.0.1, for `days` days. Private
    keys are readable by their owner only. Refuses to replace existing files unless `force`.
    """
    if days < 1:
        raise ConfigError(f"days={days} must be >= 1")
    names = list(dict.fromkeys([*hosts, *LOCAL_HOSTS]))
    for name in names:
        _check_host(name)
    files = Certificates.in_dir(out_dir)
    _refuse_overwrite([files.ca_cert, out_dir / CA_KEY, files.cert, files.key], force)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedq federation CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(CURVE())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _builder(subject, ca_name, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(out_dir / CA_KEY, _pem_private(ca_key))
    _write_private(files.key, _pem_private(key))
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def certificate_hosts(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses in a certificate's subject alternative names."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*san.get_values_for_type(x509.DNSName), *ips]


def make_node_keys(out_dir: Path, names: Sequence[str], force: bool = False) -> list[NodeKey]:
    """Make one P-384 key pair per SuperNode name: `private/NAME.key`, `public/NAME.pub`.

    Names are file stems of letters, digits, `-`, `_` and `.`. Private keys are readable by
    their owner only. Refuses to replace existing files unless `force`.
    """
    if not names:
        raise ConfigError("no SuperNode names given; name at least one, e.g. client-0")
    if len(set(names)) != len(names):
        raise ConfigError(f"SuperNode names must be distinct; got {', '.join(names)}")
    for name in names:
        if not name or name[0] == "." or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError(
                f"SuperNode name {name!r} is not allowed; allowed: letters, digits, - _ ."
            )
    keys = [NodeKey.in_dir(out_dir, name) for name in names]
    _refuse_overwrite([p for k in keys for p in (k.private_key, k.public_key)], force)
    (out_dir / PRIVATE_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
    (out_dir / PUBLIC_DIR).mkdir(parents=True, exist_ok=True)
    for node in keys:
        private = ec.generate_private_key(CURVE())
        openssh = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _write_private(node.private_key, openssh)
        public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        node.public_key.write_bytes(public + f" {node.name}\n".encode())
    return keys


def public_keys(paths: Sequence[Path]) -> list[Path]:
    """The public key files among `paths`: files as given, directories' `*.pub` sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob(f"*{PUBLIC_SUFFIX}"))
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"public key path {str(path)!r} is neither a file nor a directory")
    if not found:
        shown = ", ".join(str(p) for p in paths)
        raise ConfigError(f"no public keys (*{PUBLIC_SUFFIX}) in {shown}; make them first")
    return found


# ---------------------------------------------------------------- certificate details


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # An hour of slack for hosts whose clocks run a little behind.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _check_host(name: str) -> None:
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    labels = name.split(".")
    if not all(label and all(c.isalnum() or c == "-" for c in label) for label in labels):
        raise ConfigError(
            f"host {name!r} is not allowed; allowed: an IP address or a DNS name "
            "(letters, digits, - and . between labels)"
        )


def _san(names: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists; pass --force to replace it")
