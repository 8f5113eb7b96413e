"""Network namespaces for kernel tests: a switch namespace with a bridge, host
namespaces attached to it by veth pairs, and a finalizer that removes all of it,
built with the one namespace builder, :mod:`egressd.lab.netns`.

Every name is unique per run (``egt-<hex>-<role>``); nothing ever appears in
the root namespace, not even for a moment.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from egressd.lab.netns import Namespaces, link_mac


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

    net: Namespaces = field(default_factory=lambda: Namespaces(f"egt-{secrets.token_hex(3)}-"))
    switch: str = ""

    def ns(self, role: str) -> str:
        """Create an empty namespace with loopback up."""
        return self.net.add(role)

    def make_switch(self) -> str:
        self.switch = self.net.switch("sw")
        return self.switch

    def attach(self, role: str, addresses: Sequence[str] = (), ifname: str = "net0") -> Host:
        """A new namespace with ``ifname`` on the switch, carrying ``addresses``."""
        if not self.switch:
            self.make_switch()
        ns = self.net.attach(role, self.switch, addresses, ifname)
        return Host(ns=ns, ifname=ifname, mac=link_mac(ns, ifname))

    def wire(self, a: str, a_if: str, b: str, b_if: str) -> None:
        """A point-to-point veth between two of the lab's namespaces."""
        self.net.wire(a, a_if, b, b_if)

    def close(self) -> None:
        self.net.close()


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


@dataclass
class GatewayNet:
    """A client behind one gateway, and a server on the gateway's node network."""

    gw: str
    cl: str
    srv: str


@contextlib.contextmanager
def gateway_topology(lab: Lab, *, egress: str, clients: Sequence[str], servers: Sequence[str]) -> Iterator[GatewayNet]:
    """``cl`` (``clients``, 10.98.0.0/24) -- lan0 ``gw`` net0 (10.99.0.2 and
    ``egress``) -- switch -- ``srv`` (``servers``, 10.99.0.0/24), the gateway
    forwarding and an echo server running in ``srv`` until the block ends."""
    gw = lab.attach("gw", ["10.99.0.2/24", f"{egress}/32"])
    srv = lab.attach("srv", [f"{a}/24" for a in servers])
    cl = lab.ns("cl")
    lab.wire(gw.ns, "lan0", cl, "eth0")
    sh("ip", "-n", gw.ns, "addr", "add", "10.98.0.1/24", "dev", "lan0")
    for a in clients:
        sh("ip", "-n", cl, "addr", "add", f"{a}/24", "dev", "eth0")
    sh("ip", "-n", cl, "route", "add", "default", "via", "10.98.0.1")
    sh("ip", "-n", srv.ns, "route", "add", "10.98.0.0/24", "via", "10.99.0.2")
    ns_exec(gw.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    server = start_echo_server(srv.ns)
    try:
        yield GatewayNet(gw=gw.ns, cl=cl, srv=srv.ns)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
