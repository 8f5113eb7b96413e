"""Network namespaces for kernel tests: a switch namespace with a bridge, host
namespaces attached to it by veth pairs, and a finalizer that removes all of it.

Every name is unique per run (``egt-<hex>-<role>``). Links are created directly
inside the namespaces (``ip -n NS link add ... peer ... netns OTHER``), so
nothing ever appears in the root namespace, not even for a moment. Deleting a
namespace deletes its links and, with them, their veth peers.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field


def sh(*argv: str, check: bool = True, input_text: str | None = None, timeout: float = 20) -> str:
    """Run a command, return stdout; on failure raise with stderr in the message."""
    proc = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ns_exec(ns: str, *argv: str, check: bool = True, input_text: str | None = None, timeout: float = 20) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check, input_text=input_text, timeout=timeout)


@dataclass
class Host:
    """One namespace attached to the switch by ``ifname``."""

    ns: str
    ifname: str
    mac: str = ""


@dataclass
class Lab:
    """A set of namespaces owned by one test; :meth:`close` removes them."""

    prefix: str = field(default_factory=lambda: f"egt-{secrets.token_hex(3)}")
    namespaces: list[str] = field(default_factory=list)
    switch: str = ""

    def ns(self, role: str) -> str:
        """Create an empty namespace with loopback up."""
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def make_switch(self) -> str:
        self.switch = self.ns("sw")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        return self.switch

    def attach(self, role: str, addresses: Sequence[str] = (), ifname: str = "net0") -> Host:
        """A new namespace with ``ifname`` on the switch, carrying ``addresses``."""
        if not self.switch:
            self.make_switch()
        ns = self.ns(role)
        port = f"p-{role}"[:15]
        sh("ip", "-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", port, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", ifname, "up")
        for cidr in addresses:
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)
        return Host(ns=ns, ifname=ifname, mac=link_mac(ns, ifname))

    def wire(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A point-to-point veth between two of the lab's namespaces."""
        sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        sh("ip", "-n", a, "link", "set", a_if, "up")
        sh("ip", "-n", b, "link", "set", b_if, "up")

    def close(self) -> None:
        for name in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                for pid in sh("ip", "netns", "pids", name, check=False).split():
                    with contextlib.suppress(Exception):
                        sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", name, check=False)
        self.namespaces.clear()


def link_mac(ns: str, ifname: str) -> str:
    out = sh("ip", "-n", ns, "-br", "link", "show", "dev", ifname)
    return out.split()[2].lower()


def neigh_mac(ns: str, ifname: str, ip: str) -> str | None:
    """The MAC of ``ip`` in the neighbour cache of ``ns``, or None."""
    out = sh("ip", "-n", ns, "neigh", "show", ip, "dev", ifname)
    parts = out.split()
    if "lladdr" in parts:
        return parts[parts.index("lladdr") + 1].lower()
    return None


ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(peer[0].encode(), peer)
"""

PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.settimeout(float(sys.argv[4]))
s.sendto(b"who am i", (sys.argv[2], int(sys.argv[3])))
try:
    print(s.recvfrom(2048)[0].decode())
except TimeoutError:
    print("timeout")
"""


def start_echo_server(ns: str, port: int = 9000) -> subprocess.Popen[str]:
    """A UDP server in ``ns`` that answers every datagram with the source address it saw."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def probe(ns: str, src: str, dst: str, port: int = 9000, timeout: float = 0.5) -> str:
    """Source address the echo server saw for a datagram from ``src``, or ``timeout``."""
    return ns_exec(ns, sys.executable, "-c", PROBE, src, dst, str(port), str(timeout)).strip()
