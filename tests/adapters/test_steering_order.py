"""The steering adapter on a gateway's leaving: every new owner's routes are
written before any read-back, when several IPs move at once."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from egressd.adapters.steering import SETTLE_DELAY, PolicySteering
from egressd.core.model import EgressGroup
from egressd.core.steering import Plan

IPS = tuple(ipaddress.ip_address(f"172.18.0.{n}") for n in (42, 43, 44))
GROUPS = tuple(
    EgressGroup(
        name=f"g{n}",
        egress_ips=(ip,),
        interface="net0",
        candidates=("gw-a", "gw-b"),
        source_cidrs=(ipaddress.ip_network(f"10.98.{n}.0/24"),),
        destination_cidrs=(ipaddress.ip_network("10.99.0.0/24"),),
    )
    for n, ip in enumerate(IPS)
)
VIA = ipaddress.ip_address("172.18.0.5")


def recorded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The adapter's route writes ("switch <ip>") and read-backs ("read <slot>"),
    in order, instead of the kernel's."""
    steps: list[str] = []

    def apply(self: PolicySteering, ops: Any, ctx: str) -> None:
        if ops:
            steps.append("switch " + ctx.split()[4])

    def read(self: PolicySteering, slot: int | None, version: int | None = None) -> Plan:
        steps.append(f"read {slot}")
        return Plan()

    monkeypatch.setattr(PolicySteering, "_apply", apply)
    monkeypatch.setattr(PolicySteering, "_replace_routes", apply)
    monkeypatch.setattr(PolicySteering, "_read", read)
    monkeypatch.setattr(PolicySteering, "_slot_map", lambda self: self.__dict__.setdefault("_test_slots", {}))
    return steps


async def test_routes_of_ips_moving_together_are_all_switched_before_any_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = recorded(monkeypatch)
    steering = PolicySteering()
    try:
        await asyncio.gather(*(steering.route(g, g.egress_ips[0], VIA) for g in GROUPS))
        first_read = next(i for i, step in enumerate(steps) if step.startswith("read"))
        assert sorted(steps[:first_read]) == sorted(f"switch {ip}" for ip in IPS), steps
        assert sum(step.startswith("read") for step in steps) == len(IPS)
    finally:
        await steering.close()


async def test_an_ip_whose_new_owner_arrives_moments_later_is_switched_before_the_first_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = recorded(monkeypatch)
    steering = PolicySteering()
    try:
        first = asyncio.create_task(steering.route(GROUPS[0], IPS[0], VIA))
        await asyncio.sleep(SETTLE_DELAY / 4)  # the next claim's news, moments after the first
        await asyncio.gather(first, steering.route(GROUPS[1], IPS[1], VIA))
        assert steps[:2] == [f"switch {IPS[0]}", f"switch {IPS[1]}"], steps
    finally:
        await steering.close()
