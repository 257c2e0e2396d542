"""The namespace harness (tests/netns.py): hosts by name, shaped links, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.processes import find_marked_processes
from tests.netns import NETNS_ETC, Network, netem_available, unavailable_reason

pytestmark = pytest.mark.netns

REASON = unavailable_reason()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"needs network namespaces: {REASON}")

# Accepts one connection on port 9000 and counts the bytes it receives until EOF.
SINK = (
    "import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen(); "
    "c, _ = s.accept(); n = 0\n"
    "while (b := c.recv(65536)): n += len(b)\n"
    "print(n)"
)


def _left(network: Network) -> list[str]:
    """What of `network` still exists: namespaces, links, hosts files."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left = [line for line in (namespaces + links).splitlines() if network.suffix in line]
    return left + [str(p) for p in NETNS_ETC.glob(f"fq{network.suffix}-*")]


@needs_netns
def test_hosts_reach_each_other_by_name_and_everything_is_removed(tmp_path: Path) -> None:
    network = Network(["alpha", "beta"], tmp_path)
    with pytest.raises(RuntimeError, match="the test fails here"), network:
        assert network.host("alpha").address != network.host("beta").address
        sink = network.start("beta", "sink", [sys.executable, "-c", SINK])
        send = "import socket; socket.create_connection(('beta', 9000), 5).sendall(b'x' * 1000)"
        network.wait_until("alpha", [sys.executable, "-c", send], timeout=30, interval=0.3)
        sink.process.wait(10)
        assert sink.log_path.read_text().strip() == "1000"
        # Left running on purpose: the network must stop it, though the block fails.
        network.start("alpha", "sleeper", ["sleep", "300"])
        raise RuntimeError("the test fails here")
    assert _left(network) == []
    assert find_marked_processes(network.group.marker) == []


@needs_netns
def test_a_shaped_link_is_slower(tmp_path: Path) -> None:
    send = (
        "import socket, time; c = socket.create_connection(('beta', 9000), 5); "
        "t = time.monotonic(); c.sendall(b'x' * 500_000); c.close(); print(time.monotonic() - t)"
    )
    with Network(["alpha", "beta"], tmp_path) as network:
        network.shape("alpha", rate_mbit=2)  # 500 kB at 2 Mbit/s: at least 2 s
        network.start("beta", "sink", [sys.executable, "-c", SINK])
        listening = ["grep", "-q", ":2328 00000000:0000 0A", "/proc/net/tcp"]  # port 9000
        network.wait_until("beta", listening, timeout=30, interval=0.2)
        started = time.monotonic()
        done = network.run("alpha", [sys.executable, "-c", send], timeout=60)
        assert done.returncode == 0, done.stderr
        network.group.children[0].process.wait(30)
        assert time.monotonic() - started > 1.5
        if netem_available():
            network.shape("alpha", delay_ms=100)
        else:
            with pytest.raises(RuntimeError, match="netem"):
                network.shape("alpha", delay_ms=100)
