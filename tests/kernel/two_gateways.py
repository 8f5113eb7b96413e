"""Two gateways for one egress IP, in network namespaces, for the conntrack tests:
the pod's traffic leaves through gateway A or B, SNATed to the egress IP by a
rule like egressd's that also sets egressd's conntrack mark::

    pod 10.98.0.10 -- lan (bridge) -- lan0 gwa 10.98.0.2 / gwb 10.98.0.3
                                      net0 gwa 10.99.0.2 / gwb 10.99.0.3 (+ 10.99.0.42 on the owner)
                                        -- wan (bridge) -- srv 10.99.0.100

:meth:`TwoGateways.move` moves the egress IP from A to B as a takeover does:
the address leaves A and is added on B, the server's neighbour entry is
pointed at B (what B's gratuitous ARP does), and the pod's route goes
through B (what steering does). Names start with ``egct-``; everything is
removed by :meth:`TwoGateways.close`, whatever happened.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from egressd.lab.netns import Namespaces, link_mac, run_cmd

POD = "10.98.0.10"
SERVER = "10.99.0.100"
EGRESS = "10.99.0.42"
PORT = 7000
MARK = 0x00E90000
MASK = 0x00FF0000

SET_MARK = f"ct mark set ct mark and {~MASK & 0xFFFFFFFF:#x} or {MARK:#x}"
"""egressd's bits of the conntrack mark, set and the others kept."""

SNAT = f"""
table inet egct {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {POD} ip daddr 10.99.0.0/24 {SET_MARK} snat ip to {EGRESS}
  }}
}}
"""

GUARD = f"""
table inet egct_guard {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    ip daddr {EGRESS} ct state new,invalid counter drop
  }}
}}
"""
"""Inbound packets to the egress IP that match no conntrack entry are dropped
(a segment of a flow the kernel does not know is ``new`` to conntrack, or
``invalid``), never delivered to the local stack, which would answer a reset."""

SERVER_SCRIPT = """
import array, fcntl, json, socket, sys, termios, time
def unacked(conn):
    out = array.array("i", [0])
    fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, out)
    return out[0]
duration = float(sys.argv[1])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[2])))
listener.listen()
print("ready", flush=True)
conn, peer = listener.accept()
end, sent, error = time.monotonic() + duration, 0, None
try:
    while time.monotonic() < end:
        conn.sendall(b"line %d\\n" % sent)
        sent += 1
        time.sleep(0.02)
except OSError as exc:
    error = f"{type(exc).__name__}: {exc}"
left = unacked(conn) if error is None else -1
for _ in range(50):
    if left <= 0:
        break
    time.sleep(0.02)
    left = unacked(conn)
print(json.dumps({"peer": list(peer), "sent": sent, "error": error, "unacked": left}), flush=True)
"""
"""Sends a line every 20 ms for ``duration`` seconds on the one connection it
accepts; reports the bytes the pod has not acknowledged at the end (after up to
1 s more), which shows that the pod's packets reach it translated."""

CLIENT_SCRIPT = """
import json, socket, sys, time
duration = float(sys.argv[1])
conn = socket.create_connection((sys.argv[2], int(sys.argv[3])))
print("connected", conn.getsockname()[1], flush=True)
conn.settimeout(0.1)
end, last, gap, got, error, closed = time.monotonic() + duration, None, 0.0, 0, None, False
while time.monotonic() < end:
    try:
        data = conn.recv(4096)
    except TimeoutError:
        continue
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
        break
    if not data:
        closed = True
        break
    now = time.monotonic()
    if last is not None:
        gap = max(gap, now - last)
    last, got = now, got + data.count(b"\\n")
print(json.dumps({"lines": got, "max_gap_ms": round(gap * 1000, 1), "error": error, "closed": closed}), flush=True)
"""
"""Only reads; reports the lines read, the longest silence between two reads,
and whether the server closed the connection (it does when its time is up)."""


@dataclass
class Stream:
    """A server-first TCP connection: the server sends, the pod only reads."""

    server: subprocess.Popen[str]
    client: subprocess.Popen[str]
    source_port: int

    def results(self, timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """(server's, client's) reports once both ended."""
        out = []
        for proc in (self.server, self.client):
            stdout, _ = proc.communicate(timeout=timeout)
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out[0], out[1]

    def kill(self) -> None:
        for proc in (self.server, self.client):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@dataclass
class TwoGateways:
    net: Namespaces = field(default_factory=lambda: Namespaces(f"egct-{secrets.token_hex(3)}-"))
    pod: str = ""
    gwa: str = ""
    gwb: str = ""
    srv: str = ""
    streams: list[Stream] = field(default_factory=list)

    def build(self) -> TwoGateways:
        lan, wan = self.net.switch("lan"), self.net.switch("wan")
        self.pod = self.net.attach("pod", lan, [f"{POD}/24"], "eth0")
        self.gwa, self.gwb = (
            self.net.attach("gwa", wan, ["10.99.0.2/24"]),
            self.net.attach("gwb", wan, ["10.99.0.3/24"]),
        )
        for gw, last in ((self.gwa, 2), (self.gwb, 3)):
            self.net.plug(gw, "lan0", lan, f"p-{gw[-3:]}l")
            self.net.address(gw, "lan0", f"10.98.0.{last}/24")
            self.exec(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.nft(gw, SNAT)
        self.srv = self.net.attach("srv", wan, [f"{SERVER}/24"])
        self.net.ip(self.pod, "route", "add", "default", "via", "10.98.0.2")
        self.net.ip(self.gwa, "addr", "add", f"{EGRESS}/32", "dev", "net0")
        return self

    def exec(self, ns: str, *argv: str, input_text: str | None = None) -> str:
        return run_cmd(["ip", "netns", "exec", ns, *argv], input_text=input_text)

    def nft(self, ns: str, ruleset: str) -> None:
        self.exec(ns, "nft", "-f", "-", input_text=ruleset)

    def conntrack_list(self, ns: str) -> str:
        """``conntrack -L`` of ``ns`` (the conntrack tool, for people reading a failure)."""
        return run_cmd(["ip", "netns", "exec", ns, "conntrack", "-L"], check=False)

    def stream(self, duration: float, port: int = PORT) -> Stream:
        """Start a server-first connection from the pod to the server, through the owner."""
        py = [sys.executable, "-c"]
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.srv, *py, SERVER_SCRIPT, str(duration), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.Popen(
            ["ip", "netns", "exec", self.pod, *py, CLIENT_SCRIPT, str(duration), SERVER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        word, source_port = client.stdout.readline().split()
        assert word == "connected"
        stream = Stream(server, client, int(source_port))
        self.streams.append(stream)
        return stream

    def move(self) -> float:
        """Move the egress IP from A to B; the seconds it took."""
        start = time.monotonic()
        self.net.ip(self.gwa, "addr", "del", f"{EGRESS}/32", "dev", "net0")
        self.net.ip(self.gwb, "addr", "add", f"{EGRESS}/32", "dev", "net0")
        mac = link_mac(self.gwb, "net0")
        self.net.ip(self.srv, "neigh", "replace", EGRESS, "lladdr", mac, "dev", "net0", "nud", "reachable")
        self.net.ip(self.pod, "route", "replace", "default", "via", "10.98.0.3")
        return time.monotonic() - start

    def close(self) -> None:
        for stream in self.streams:
            stream.kill()
        self.net.close()
