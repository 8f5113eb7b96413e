"""A server-first TCP connection across a move of the egress IP from gateway A
to gateway B (issue 14): the server sends a line every 20 ms, the pod only
reads, and the IP moves while the stream runs.

* without the flow's conntrack entry on B, the server's next segment meets no
  entry on B, is delivered to B's own stack and answered with a reset;
* with the entry dumped from A and installed on B before the move, the
  connection survives; the pod's longest silence is printed;
* with a guard on B that drops inbound packets to the egress IP matching no
  entry, a missing entry costs retransmissions, not the connection: installed
  late, the flow resumes at the server's next retransmission; never
  installed, the flow stalls while the guard is up and is reset at the first
  retransmission after it is lifted.

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egressd.adapters.conntrack import KernelConntrack
from tests.kernel.two_gateways import GUARD, MARK, MASK, TwoGateways

pytestmark = [pytest.mark.integration, pytest.mark.kernel]

BEFORE = 1.0
"""Seconds the stream runs through A before the move."""
AFTER = 2.0
"""Seconds it runs on after the move."""
LATE = 0.5
"""Seconds after the move at which the late entry is installed."""


@pytest.fixture
def gws() -> Iterator[TwoGateways]:
    gws = TwoGateways()
    try:
        yield gws.build()
    finally:
        gws.close()


async def replicate(gws: TwoGateways, *, liberal: bool = True) -> float:
    """Dump A's marked entries and install them on B; the seconds the install took."""
    source = KernelConntrack(mark=MARK, mask=MASK, netns=gws.gwa)
    target = KernelConntrack(mark=MARK, mask=MASK, netns=gws.gwb, liberal=liberal)
    try:
        entries = await source.dump()
        assert len(entries) == 1, entries
        start = time.monotonic()
        assert await target.install(entries) == []
        return time.monotonic() - start
    finally:
        await source.close()
        await target.close()


def report(case: str, server: dict[str, Any], client: dict[str, Any], moved: float) -> None:
    print(
        f"\n[{case}] move {moved * 1000:.0f} ms; server sent {server['sent']} lines, error {server['error']}, "
        f"unacknowledged at the end {server['unacked']} bytes; "
        f"pod read {client['lines']} lines, longest silence {client['max_gap_ms']} ms"
    )


def is_reset(error: str | None) -> bool:
    return error is not None and ("ConnectionResetError" in error or "BrokenPipeError" in error)


async def test_without_the_entry_the_server_is_reset(gws: TwoGateways) -> None:
    stream = gws.stream(BEFORE + AFTER)
    await asyncio.sleep(BEFORE)
    moved = gws.move()
    server, client = stream.results()
    report("no entry", server, client, moved)
    assert is_reset(server["error"]), server
    assert client["lines"] < server["sent"]


@pytest.mark.parametrize("liberal", [True, False], ids=["liberal", "window-tracked"])
async def test_with_the_entry_installed_before_the_move_the_connection_survives(
    gws: TwoGateways, liberal: bool
) -> None:
    stream = gws.stream(BEFORE + AFTER)
    await asyncio.sleep(BEFORE)
    took = await replicate(gws, liberal=liberal)
    moved = gws.move()
    server, client = stream.results()
    report(
        f"entry installed, {'liberal' if liberal else 'window-tracked'}; install {took * 1000:.1f} ms",
        server,
        client,
        moved,
    )
    assert server["error"] is None, server
    assert client["error"] is None, client
    assert client["lines"] == server["sent"]  # every line arrived
    assert server["unacked"] == 0  # and the pod's acknowledgements left B translated
    assert client["max_gap_ms"] < 1000


async def test_with_the_guard_a_late_entry_costs_a_retransmission_not_the_connection(gws: TwoGateways) -> None:
    gws.nft(gws.gwb, GUARD)
    stream = gws.stream(BEFORE + AFTER)
    await asyncio.sleep(BEFORE)
    moved = gws.move()
    await asyncio.sleep(LATE)
    await replicate(gws)
    server, client = stream.results()
    report(f"guard, entry installed {LATE * 1000:.0f} ms late", server, client, moved)
    print(gws.exec(gws.gwb, "nft", "list", "table", "inet", "egct_guard"))
    assert server["error"] is None, server
    assert client["lines"] == server["sent"]
    assert server["unacked"] == 0
    assert client["max_gap_ms"] >= LATE * 1000  # nothing got through before the entry


async def test_with_the_guard_and_no_entry_the_flow_stalls_until_the_guard_is_lifted(gws: TwoGateways) -> None:
    gws.nft(gws.gwb, GUARD)
    stream = gws.stream(BEFORE + AFTER)
    await asyncio.sleep(BEFORE)
    moved = gws.move()
    await asyncio.sleep(AFTER / 2)
    assert stream.server.poll() is None  # still sending, not reset
    gws.exec(gws.gwb, "nft", "delete", "table", "inet", "egct_guard")  # the grace period ends
    server, client = stream.results()
    report(f"guard for {AFTER / 2:.1f} s, no entry", server, client, moved)
    assert is_reset(server["error"]), server
