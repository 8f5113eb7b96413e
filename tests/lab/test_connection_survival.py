"""Established connections survive a failover, in the lab with the kernel data
plane and the mesh on (issue 14's failing case): a TCP server in the outpost
sends a line every 20 ms, xwing only reads. Before the conntrack stream, the
server's next segment after a move met no entry on the new owner and was
answered with a reset; now the new owner installs the entries before its
first gratuitous ARP.

Each case moves the egress IP xwing leaves with, 2 s into a 6 s stream:
SIGTERM of its holder (a graceful handoff) and SIGKILL with the holder held
down (a failover after ``leaseDuration``). The connection must end without
an error on either side, every line must arrive, and the source port the
server saw must be the one the pod used. ``pytest -s`` prints the longest
silence (docs/conntrack.md, section 8, has the figures).
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egressd.lab.netlab import Lab
from tests.lab.reference import holders, running, wait

pytestmark = pytest.mark.kernel

OUTPOST = "172.18.0.7"
SECONDS = 6.0

SERVER = """
import json, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, peer = s.accept()
started, n, error = time.monotonic(), 0, None
try:
    while time.monotonic() - started < float(sys.argv[3]):
        n += 1
        c.sendall(f"{n}\\n".encode())
        time.sleep(0.02)
except OSError as exc:
    error = repr(exc)
c.close()
print(json.dumps({"peer": list(peer), "sent": n, "error": error}), flush=True)
"""

CLIENT = """
import json, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.settimeout(float(sys.argv[3]) + 5)
local = c.getsockname()
started = last = time.monotonic()
lines, longest, error = 0, 0.0, None
try:
    while True:
        data = c.recv(4096)
        if not data:
            break
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        lines += data.count(b"\\n")
except OSError as exc:
    error = repr(exc)
print(json.dumps({"local": list(local), "lines": lines, "longest": longest, "error": error}), flush=True)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running(Lab(f"egcr-{secrets.token_hex(2)}-", tmp_path_factory.mktemp("lab-state"), dataplane="kernel"))


def stream(lab: Lab, port: int, fault: Any, seconds: float = SECONDS) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the stream on ``port``, ``fault()`` 2 s into it; the server's and the client's reports."""
    server = lab.popen("outpost", [sys.executable, "-c", SERVER, OUTPOST, str(port), str(seconds)],
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "ready"
    client = lab.popen("xwing", [sys.executable, "-c", CLIENT, OUTPOST, str(port), str(seconds)],
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(min(2.0, seconds / 2))
    fault()
    out, _ = server.communicate(timeout=seconds + 15)
    got, _ = client.communicate(timeout=seconds + 15)
    return json.loads(out.splitlines()[-1]), json.loads(got.splitlines()[-1])


def egress_of_xwing(lab: Lab, port: int) -> tuple[str, str]:
    """The egress IP xwing leaves with (once steering sends it through a gateway) and its holder."""

    def natted() -> str | None:
        server, _ = stream(lab, port, lambda: None, seconds=0.2)
        return str(server["peer"][0]) if server["peer"][0] in holders(lab) else None

    ip: str = wait(natted, 20, "xwing leaving through an egress IP")
    holder: str = wait(lambda: holders(lab).get(ip), 20, f"a holder for {ip}")
    return ip, holder


@pytest.mark.parametrize("fault", ["graceful", "kill"])
def test_a_server_first_connection_survives(lab: Lab, fault: str) -> None:
    port = 9300 + secrets.randbelow(500)
    ip, holder = egress_of_xwing(lab, port)

    def move() -> None:
        if fault == "graceful":
            lab.kill(holder, signal.SIGTERM, restart=True)
        else:
            lab.kill(holder, signal.SIGKILL, restart=False)

    try:
        server, client = stream(lab, port + 1, move)
    finally:
        lab.release(holder)
    print(f"\n{fault}: {ip} from {holder} to {holders(lab).get(ip)}; longest silence {client['longest'] * 1000:.0f} ms")
    assert holders(lab).get(ip) not in (None, holder) or fault == "graceful"
    assert server["error"] is None, server
    assert client["error"] is None, client
    assert client["lines"] == server["sent"]
    assert server["peer"][1] == client["local"][1]  # the source port the pod used
