"""KernelAddresses against a real kernel, in a namespace of the test's own."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator

import pytest

from egressd.adapters.addresses import KernelAddresses
from egressd.core.errors import DataPlaneError
from tests.kernel.netns import Host, Lab, sh

pytestmark = pytest.mark.kernel

IP = ipaddress.ip_address("10.99.0.42")
IP6 = ipaddress.ip_address("fd99::42")

#: Upper bound of the kernel's lateness in removing an expired address, with
#: room above the worst case measured by chaos/measure_expiry_slack.py.
EXPIRY_SLACK = 1.3


@pytest.fixture
def gw(lab: Lab) -> Host:
    return lab.attach("gw", ["10.99.0.2/24"])


@pytest.fixture
async def addrs(gw: Host) -> AsyncIterator[KernelAddresses]:
    a = KernelAddresses(netns=gw.ns)
    try:
        yield a
    finally:
        await a.close()


def addr_lines(host: Host) -> str:
    return sh("ip", "-n", host.ns, "addr", "show", "dev", host.ifname)


def lifetimes(host: Host) -> dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str], int]:
    """Remaining ``valid_lft`` (seconds, as the kernel reports it) of the addresses egressd labelled."""
    (link,) = json.loads(sh("ip", "-j", "-n", host.ns, "addr", "show", "dev", host.ifname))
    return {
        (ipaddress.ip_address(a["local"]), host.ifname): int(a["valid_life_time"])
        for a in link["addr_info"]
        if a.get("label", "").endswith(":egd")
    }


async def test_claim_sets_lifetime_and_refresh_resets_it(gw: Host, addrs: KernelAddresses) -> None:
    await addrs.claim(IP, gw.ifname, 5)
    assert lifetimes(gw) == {(IP, gw.ifname): 5}
    assert "10.99.0.42/32" in addr_lines(gw)
    assert f"{gw.ifname}:egd" in addr_lines(gw)
    await asyncio.sleep(1.1)
    assert lifetimes(gw)[(IP, gw.ifname)] < 5
    await addrs.claim(IP, gw.ifname, 5)
    assert lifetimes(gw) == {(IP, gw.ifname): 5}
    await addrs.claim(IP, gw.ifname, 3)
    assert lifetimes(gw) == {(IP, gw.ifname): 3}


async def test_refresh_resets_the_lifetimes_of_many_addresses_at_once(gw: Host, addrs: KernelAddresses) -> None:
    many = [ipaddress.ip_address("10.99.1.0") + i for i in range(600)]  # more than one batch
    await addrs.claim(many[0], gw.ifname, 9)
    await addrs.refresh([(ip, gw.ifname) for ip in [*many, IP6]], 5)
    found = lifetimes(gw)
    assert {ip for ip, _ in found} == set(many) and set(found.values()) == {5}  # added or refreshed
    assert (IP6, gw.ifname) in await addrs.owned()
    await addrs.refresh([(ip, gw.ifname) for ip in many[:10]], 3)
    assert sorted(lifetimes(gw).values()) == [3] * 10 + [5] * 590


async def test_a_refresh_that_fails_for_some_addresses_refreshes_the_others(gw: Host, addrs: KernelAddresses) -> None:
    await addrs.claim(IP, gw.ifname, 9)
    with pytest.raises(DataPlaneError, match=r"refresh of 1 of 2 address\(es\) failed: .*no-such-link"):
        await addrs.refresh([(IP6, "no-such-link"), (IP, gw.ifname)], 4)
    assert lifetimes(gw) == {(IP, gw.ifname): 4}


async def test_a_refresh_with_the_messages_kept_resets_the_lifetimes_again(gw: Host, addrs: KernelAddresses) -> None:
    many = [ipaddress.ip_address("10.99.1.0") + i for i in range(300)]
    await addrs.refresh([(ip, gw.ifname) for ip in many], 5)
    await asyncio.sleep(1.1)
    assert set(lifetimes(gw).values()) == {4}
    await addrs.refresh([(ip, gw.ifname) for ip in many], 5)  # the same messages, sent again
    assert set(lifetimes(gw).values()) == {5} and len(lifetimes(gw)) == 300


async def test_a_failure_the_kernel_reports_mid_batch_is_named_and_the_others_refreshed(
    lab: Lab, gw: Host, addrs: KernelAddresses
) -> None:
    other = lab.ns("other")
    lab.wire(gw.ns, "d0", other, "d1")
    sh("ip", "netns", "exec", gw.ns, "sysctl", "-qw", "net.ipv6.conf.d0.disable_ipv6=1")
    before = [ipaddress.ip_address("10.99.1.0") + i for i in range(100)]
    after = [ipaddress.ip_address("10.99.2.0") + i for i in range(100)]
    batch = [(ip, gw.ifname) for ip in before] + [(IP6, "d0")] + [(ip, gw.ifname) for ip in after]
    with pytest.raises(DataPlaneError, match=r"refresh of 1 of 201 address\(es\) failed: fd99::42: Permission denied$"):
        await addrs.refresh(batch, 7)
    found = lifetimes(gw)
    assert set(found) == {(ip, gw.ifname) for ip in before + after} and set(found.values()) == {7}
    with pytest.raises(DataPlaneError, match="fd99::42: Permission denied"):  # and again from the kept messages
        await addrs.refresh(batch, 7)


async def test_a_refresh_follows_an_interface_that_was_replaced(lab: Lab, gw: Host, addrs: KernelAddresses) -> None:
    other = lab.ns("other")
    lab.wire(gw.ns, "d0", other, "d1")
    await addrs.refresh([(IP, "d0")], 6)
    sh("ip", "-n", gw.ns, "link", "del", "d0")
    with pytest.raises(DataPlaneError, match="interface d0 does not exist"):
        await addrs.refresh([(IP, "d0")], 6)
    lab.wire(gw.ns, "d0", other, "d1")  # the same name, a new index
    await addrs.refresh([(IP, "d0")], 6)
    assert await addrs.owned() == {(IP, "d0")}


async def test_interface_addresses_are_the_nodes_own_with_their_prefix(gw: Host, addrs: KernelAddresses) -> None:
    await addrs.claim(IP, gw.ifname, 5)  # egressd's own address is left out
    found = await addrs.interface_addresses(gw.ifname)
    assert ipaddress.ip_interface("10.99.0.2/24") in found
    assert not any(a.ip == IP for a in found)
    assert await addrs.interface_addresses("no-such-link") == []


async def test_ipv6_claim_is_marked_and_released(gw: Host, addrs: KernelAddresses) -> None:
    await addrs.claim(IP6, gw.ifname, 4)
    assert await addrs.owned() == {(IP6, gw.ifname)}
    lines = addr_lines(gw)
    assert "fd99::42/128" in lines
    assert "tentative" not in lines.split("fd99::42/128")[1].splitlines()[0]
    await addrs.release(IP6, gw.ifname)
    assert await addrs.owned() == set()


async def test_address_expires_when_not_refreshed(gw: Host, addrs: KernelAddresses) -> None:
    await addrs.claim(IP, gw.ifname, 1)
    started = time.monotonic()
    while (IP, gw.ifname) in await addrs.owned():
        assert time.monotonic() - started < 1.0 + EXPIRY_SLACK, "address outlived lifetime + slack"
        await asyncio.sleep(0.02)
    assert time.monotonic() - started >= 0.9
    assert "10.99.0.42" not in addr_lines(gw)


async def test_owned_ignores_foreign_addresses_and_release_is_idempotent(gw: Host, addrs: KernelAddresses) -> None:
    sh("ip", "-n", gw.ns, "addr", "add", "10.99.0.77/32", "dev", gw.ifname, "valid_lft", "30", "preferred_lft", "30")
    await addrs.claim(IP, gw.ifname, 10)
    assert await addrs.owned() == {(IP, gw.ifname)}
    await addrs.release(IP, gw.ifname)
    await addrs.release(IP, gw.ifname)
    await addrs.release(IP, "nosuchif")
    assert await addrs.owned() == set()
    assert "10.99.0.77/32" in addr_lines(gw)


async def test_a_new_adapter_recognises_and_flushes_existing_addresses(gw: Host, addrs: KernelAddresses) -> None:
    await addrs.claim(IP, gw.ifname, 10)
    await addrs.claim(IP6, gw.ifname, 10)
    restarted = KernelAddresses(netns=gw.ns)
    try:
        assert await restarted.owned() == {(IP, gw.ifname), (IP6, gw.ifname)}
        assert await restarted.flush_all() == {(IP, gw.ifname), (IP6, gw.ifname)}
        assert await restarted.owned() == set()
    finally:
        await restarted.close()
    assert "10.99.0.2/24" in addr_lines(gw)


async def test_unknown_interface_is_a_data_plane_error(addrs: KernelAddresses) -> None:
    with pytest.raises(DataPlaneError, match="nosuchif"):
        await addrs.claim(IP, "nosuchif", 5)


async def test_a_refresh_of_the_same_addresses_sends_the_batches_it_encoded_before(
    lab: Lab, gw: Host, addrs: KernelAddresses, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = 0
    encode = addrs._encode

    def counted(*args: object) -> object:
        nonlocal encoded
        encoded += 1
        return encode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(addrs, "_encode", counted)
    ips = [(ipaddress.ip_address("10.99.1.0") + i, gw.ifname) for i in range(300)]
    await addrs.refresh(ips, 7)
    sh("ip", "-n", gw.ns, "addr", "del", f"{ips[5][0]}/32", "dev", gw.ifname)
    await addrs.refresh(list(ips), 7)  # a new list of the same addresses
    assert encoded == 1
    assert set(lifetimes(gw)) == set(ips)  # the batch sent again adds what went missing
    await addrs.refresh(ips, 9)
    assert encoded == 2 and set(lifetimes(gw).values()) == {9}
    await addrs.refresh(ips[1:], 9)
    assert encoded == 3
    other = lab.ns("other")
    lab.wire(gw.ns, "d0", other, "d1")
    await addrs.refresh([(IP, "d0")], 6)
    sh("ip", "-n", gw.ns, "link", "del", "d0")
    lab.wire(gw.ns, "d0", other, "d1")  # the same name, a new index
    await addrs.refresh([(IP, "d0")], 6)
    assert encoded == 5 and (IP, "d0") in await addrs.owned()
