"""Hosts on one machine: Linux network namespaces on a bridge, each with its own address.

`Network(["superlink", "client-0", ...], log_dir)` is a context manager that makes a bridge
and one namespace per host, joined to the bridge by a veth pair, with an address of its own
and an /etc/hosts that names every host (so `superlink:9092` resolves as in a compose
network). Inside, `start` runs long-lived programs as tracked child processes
(`ip netns exec NS ...`), `run` runs short commands, and `shape` slows a host's link with
`tc` (rate, delay, loss). On leaving the block, however it is left, every process is stopped
by PID, and the namespaces, veths, bridge and hosts files are removed.

Names carry a random suffix, so runs in parallel never collide; the bridge has no address,
so nothing of the machine's own network changes. Needs root and `ip` (iproute2); call
`unavailable_reason()` first and skip with its answer. Tests and bench programs (with the
repository root on sys.path) import it as `tests.netns`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cli.processes import Child, ProcessGroup

DEFAULT_SUBNET = "10.231.0.0/24"
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` mounts /etc/netns/NS/hosts on /etc/hosts
IFNAME_MAX = 15  # Linux interface names: at most 15 characters
COMMAND_TIMEOUT_SECONDS = 30.0

log = logging.getLogger(__name__)


class NetnsError(RuntimeError):
    """A namespace, link or qdisc could not be made; the message has `ip`'s or `tc`'s words."""


@dataclass(frozen=True)
class Host:
    """One namespace: its host name, namespace name, address and bridge-side interface."""

    name: str
    namespace: str
    address: str
    veth: str


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no `ip`, refused); None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"fqprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (delay and loss; rate alone works without)."""
    if unavailable_reason() is not None or shutil.which("tc") is None:
        return False
    probe = f"fqprobe{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    try:
        added = subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem"],
            capture_output=True,
        )
        return added.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)


class Network:
    """A bridge and one namespace per host name; see the module docstring."""

    def __init__(self, hosts: Sequence[str], log_dir: Path, subnet: str = DEFAULT_SUBNET) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError(f"hosts must be distinct and at least one; got {list(hosts)}")
        addresses = list(ipaddress.ip_network(subnet).hosts())
        if len(hosts) > len(addresses) - 1:
            raise ValueError(f"{len(hosts)} hosts do not fit in {subnet}")
        self.suffix = secrets.token_hex(3)
        self.bridge = f"fqbr{self.suffix}"
        self.prefix_len = ipaddress.ip_network(subnet).prefixlen
        self.hosts = {
            name: Host(
                name=name,
                namespace=f"fq{self.suffix}-{name}",
                # .1 stays free, as a gateway would have it.
                address=str(addresses[i + 1]),
                veth=f"fqv{self.suffix}{i}",
            )
            for i, name in enumerate(hosts)
        }
        if any(len(h.veth) > IFNAME_MAX for h in self.hosts.values()):
            raise ValueError(f"too many hosts for interface names: {len(hosts)}")
        self.log_dir = log_dir
        self.group = ProcessGroup()
        self._made_bridge = False
        self._made: list[Host] = []

    # -- building and tearing down ----------------------------------------------------------

    def __enter__(self) -> Network:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _ip("link", "set", self.bridge, "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h.address} {h.name}\n" for h in self.hosts.values()
        )
        for host in self.hosts.values():
            _ip("netns", "add", host.namespace)
            self._made.append(host)
            etc = NETNS_ETC / host.namespace
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            peer = ["peer", "name", "eth0", "netns", host.namespace]
            _ip("link", "add", host.veth, "type", "veth", *peer)
            _ip("link", "set", host.veth, "master", self.bridge, "up")
            inside = ["-n", host.namespace]
            _ip(*inside, "addr", "add", f"{host.address}/{self.prefix_len}", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            _ip(*inside, "link", "set", "lo", "up")

    def close(self) -> None:
        """Stop every process, then remove namespaces, veths, bridge and hosts files.

        Every step runs even when an earlier one fails; failures are logged.
        """
        with contextlib.suppress(Exception):
            self.group.stop_all()
        for host in reversed(self._made):
            # Anything still inside a namespace of ours was started from here: stop it by PID.
            for pid in _namespace_pids(host.namespace):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            # Deleting a namespace frees its veth only once the kernel lets the namespace go;
            # deleting the pair first leaves nothing behind.
            _quiet_ip("link", "del", host.veth)
            _quiet_ip("netns", "del", host.namespace)
            shutil.rmtree(NETNS_ETC / host.namespace, ignore_errors=True)
        self._made.clear()
        if self._made_bridge:
            _quiet_ip("link", "del", self.bridge)
            self._made_bridge = False

    # -- running programs -------------------------------------------------------------------

    def host(self, name: str) -> Host:
        """The host called `name`."""
        return self.hosts[name]

    def start(
        self,
        host: str,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start `argv` inside `host`'s namespace; its output goes to `log_dir/NAME.log`.

        The child is stopped by PID when the network closes (or earlier by the caller).
        """
        namespace = self.hosts[host].namespace
        return self.group.start(
            name,
            ["ip", "netns", "exec", namespace, *argv],
            self.log_dir / f"{name}.log",
            env=env,
            cwd=cwd,
        )

    def run(
        self,
        host: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside `host`'s namespace; killed after `timeout` seconds."""
        namespace = self.hosts[host].namespace
        try:
            return subprocess.run(
                ["ip", "netns", "exec", namespace, *argv],
                capture_output=True,
                text=True,
                env=None if env is None else dict(env),
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, -1, str(exc.stdout), "timed out")

    def wait_until(
        self,
        host: str,
        argv: Sequence[str],
        timeout: float,
        interval: float = 1.0,
        env: Mapping[str, str] | None = None,
        watch: Sequence[Child] = (),
    ) -> None:
        """Run `argv` in `host` every `interval` seconds until it exits 0.

        Raises TimeoutError after `timeout` seconds, and ChildProcessError as soon as a child
        in `watch` exits (with its last log lines).
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for child in watch:
                if child.process.poll() is not None:
                    raise ChildProcessError(
                        f"{child.name} exited with code {child.process.returncode}:\n"
                        f"{child.log_tail(30)}"
                    )
            last = self.run(host, argv, env=env, timeout=max(interval, 5.0))
            if last.returncode == 0:
                return
            time.sleep(interval)
        said = "" if last is None else (last.stdout + last.stderr).strip()[-500:]
        raise TimeoutError(f"{list(argv)} did not succeed in {host} within {timeout:.0f} s: {said}")

    # -- shaping links ----------------------------------------------------------------------

    def shape(
        self,
        host: str,
        *,
        rate_mbit: float | None = None,
        delay_ms: float | None = None,
        loss_pct: float | None = None,
    ) -> None:
        """Shape `host`'s link both ways: `rate_mbit` Mbit/s, `delay_ms` ms each way, loss %.

        Uses `tc qdisc ... netem` on the host's eth0 (its uplink) and on its bridge-side veth
        (its downlink). A kernel without netem can still limit the rate (token bucket), but
        not delay or drop: that raises NetemUnavailable.
        """
        if rate_mbit is None and delay_ms is None and loss_pct is None:
            raise ValueError("shape needs rate_mbit, delay_ms or loss_pct")
        target = self.hosts[host]
        for inside, device in ((True, "eth0"), (False, target.veth)):
            prefix = ["ip", "netns", "exec", target.namespace] if inside else []
            netem = ["netem"]
            if delay_ms is not None:
                netem += ["delay", f"{delay_ms}ms"]
            if loss_pct is not None:
                netem += ["loss", f"{loss_pct}%"]
            if rate_mbit is not None:
                netem += ["rate", f"{rate_mbit}mbit"]
            argv = [*prefix, "tc", "qdisc", "replace", "dev", device, "root"]
            done = subprocess.run([*argv, *netem], capture_output=True, text=True)
            if done.returncode == 0:
                continue
            if "unknown" not in done.stderr.lower() or delay_ms is not None or loss_pct is not None:
                raise NetemUnavailable(f"tc netem on {device} of {host}: {done.stderr.strip()}")
            # No netem in this kernel: a token bucket limits the rate alone.
            tbf = ["tbf", "rate", f"{rate_mbit}mbit", "burst", "32kbit", "latency", "400ms"]
            _run(argv + tbf)

    def unshape(self, host: str) -> None:
        """Remove `host`'s shaping (both ways)."""
        target = self.hosts[host]
        inside = ["ip", "netns", "exec", target.namespace]
        subprocess.run([*inside, "tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True)
        subprocess.run(["tc", "qdisc", "del", "dev", target.veth, "root"], capture_output=True)


class NetemUnavailable(NetnsError):
    """The kernel has no netem qdisc: links can be rate-limited but not delayed or lossy."""


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _quiet_ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        log.warning("ip %s: %s", " ".join(args), done.stderr.strip())


def _namespace_pids(namespace: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split() if pid.isdigit()]
