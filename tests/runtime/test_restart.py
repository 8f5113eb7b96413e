"""A restarted daemon keeps its predecessor's addresses before anything slow
(runtime.restart.keep_addresses), where the serving rules allow it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from ipaddress import ip_address

import pytest

from egressd.adapters.recording import RecordingDataPlane
from egressd.core.errors import DataPlaneError
from egressd.core.model import IPAddress, Timing
from egressd.runtime.restart import keep_addresses

FENCED, EXPIRED = ip_address("10.99.0.42"), ip_address("10.99.0.43")


def left_behind() -> RecordingDataPlane:
    """A kernel as a killed process leaves it: two egressd addresses, the
    fence element of one still armed."""
    plane = RecordingDataPlane("gw-a")
    plane.addresses = {(FENCED, "net0"): float("inf"), (EXPIRED, "net0"): float("inf")}
    plane.fenced = {FENCED: 0.0}  # nft prints whole seconds: an element under a second left shows 0
    return plane


async def test_only_the_address_whose_fence_element_is_armed_is_re_armed(caplog: pytest.LogCaptureFixture) -> None:
    plane = left_behind()
    with caplog.at_level(logging.INFO, logger="egressd.runtime.restart"):
        kept = await keep_addresses(plane, plane, Timing())
    assert kept == [(FENCED, "net0")]
    assert [(op["op"], op.get("ips"), op.get("lifetime")) for op in plane.ops] == [("refresh", ["10.99.0.42"], 2)]
    assert "ip=10.99.0.43 start: address on net0 left as it is until adoption (fence-expired)" in caplog.text
    assert "ip=10.99.0.42 start: re-armed the address lifetime on net0 to 2 s" in caplog.text


async def test_nothing_is_added_and_no_fence_is_touched() -> None:
    plane = RecordingDataPlane("gw-a")
    plane.fenced = {FENCED: 1.0}  # an element without an address: the adoption adds it, not the start
    assert await keep_addresses(plane, plane, Timing()) == []
    assert plane.ops == []


async def test_without_the_nftables_fence_no_address_is_kept() -> None:
    plane = left_behind()
    timing = Timing(fence_ttl=0, kernel_slack=1.2, lease_duration=3.5)
    assert await keep_addresses(plane, plane, timing) == []
    assert plane.ops == []


class Unreadable(RecordingDataPlane):
    async def fence(self) -> dict[IPAddress, float]:
        raise DataPlaneError("nft list fence: no answer within 5s")


class Unwritable(RecordingDataPlane):
    async def refresh(self, addresses: Sequence[tuple[IPAddress, str]], lifetime: int) -> None:
        raise DataPlaneError("refresh of 1 of 1 address(es) failed")


@pytest.mark.parametrize("plane", [Unreadable("gw-a"), Unwritable("gw-a")])
async def test_a_kernel_that_fails_keeps_nothing_and_the_start_goes_on(
    plane: RecordingDataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    plane.addresses = {(FENCED, "net0"): float("inf")}
    plane.fenced = {FENCED: 1.0}
    with caplog.at_level(logging.WARNING, logger="egressd.runtime.restart"):
        assert await keep_addresses(plane, plane, Timing()) == []
    assert "start:" in caplog.text
