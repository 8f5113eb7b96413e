"""Operator operations on the leases: handoff and drain.

A handoff asks the owner of an egress IP to move it: the successor is written
into the lease's ``egressd.io/preferred-holder`` annotation; the owner
withdraws, then releases the lease to that node, which takes it at once
(:func:`egressd.core.election.decide`, step 3g). A drain does that for every
IP a node holds, each to its next preferred candidate. Waiting for the move
reads the lease until it names the successor.

Every lease call is bounded by the operation's deadline, within which the
lease store retries an unavailable API; nothing here retries a failed call.
A lost race is no failure (the owner renews meanwhile): the lease is read
again and the request written on the newer version, until the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from egressd.core.election import spread_rank
from egressd.core.errors import ApiError, EgressdError, LostRace
from egressd.core.lease import LeaseRecord, lease_name
from egressd.core.model import EgressGroup, IPAddress
from egressd.ports import Clock, LeaseStore

T = TypeVar("T")

POLL_INTERVAL = 0.02
"""Seconds between reads of a lease while waiting for a move: the successor
takes a lease handed to it at once, so a move is seen within this of landing."""


class OperationError(EgressdError):
    """An operator command could not do what was asked."""


@dataclass(frozen=True)
class Move:
    """One egress IP to move to the candidate ``to``."""

    ip: IPAddress
    to: str


def _group_of(groups: Sequence[EgressGroup], ip: IPAddress) -> EgressGroup:
    for group in groups:
        if ip in group.egress_ips:
            return group
    raise OperationError(f"{ip} is not an egress IP of this config")


def handoff_moves(groups: Sequence[EgressGroup], ip: IPAddress, to: str) -> list[Move]:
    """The move of ``ip`` to ``to``, which must be a candidate of its group."""
    group = _group_of(groups, ip)
    if group.candidates and to not in group.candidates:
        raise OperationError(f"--to {to}: not a candidate of group {group.name} ({', '.join(group.candidates)})")
    return [Move(ip, to)]


async def drain_moves(
    store: LeaseStore, clock: Clock, groups: Sequence[EgressGroup], node: str, *, deadline: float
) -> list[Move]:
    """Every IP ``node`` holds, to its next preferred candidate."""
    records = {r.egress_ip: r for r in await _lease_call(store.list_leases(deadline=deadline))}
    moves = []
    for group in groups:
        for ip in group.egress_ips:
            record = records.get(str(ip))
            if record is None or record.holder != node:
                continue
            ranking = spread_rank(str(ip), [str(x) for x in group.egress_ips], group.candidates)
            others = [c for c in ranking if c != node]
            if not others:
                raise OperationError(f"{ip}: no other candidate in group {group.name} to drain to")
            moves.append(Move(ip, others[0]))
    return moves


async def request_move(store: LeaseStore, clock: Clock, move: Move, *, deadline: float) -> LeaseRecord:
    """Write the handoff request into the lease of ``move.ip``; returns the
    lease as written (or as read, when ``move.to`` holds it already)."""
    name = lease_name(str(move.ip))
    while True:
        record = await _lease_call(store.get(name, deadline=deadline))
        if record is None:
            raise OperationError(f"{move.ip}: no lease yet (is any gateway running?)")
        if record.holder == move.to:
            return record
        try:
            return await _lease_call(store.update(replace(record, preferred_holder=move.to), deadline=deadline))
        except LostRace:
            if clock.monotonic() >= deadline:
                raise OperationError(
                    f"{move.ip}: could not write the handoff request (the lease kept changing)"
                ) from None


async def wait_for_move(store: LeaseStore, clock: Clock, move: Move, *, deadline: float) -> float:
    """Seconds until the lease of ``move.ip`` names ``move.to``; raises when
    the deadline comes first."""
    started = clock.monotonic()
    name = lease_name(str(move.ip))
    while clock.monotonic() < deadline:
        record = await _lease_call(store.get(name, deadline=deadline))
        if record is not None and record.holder == move.to:
            return clock.monotonic() - started
        await clock.sleep(POLL_INTERVAL)
    raise OperationError(
        f"{move.ip}: {move.to} did not take it over within {deadline - started:.0f}s (is its daemon running?)"
    )


async def wait_for_moves(store: LeaseStore, clock: Clock, moves: Sequence[Move], *, deadline: float) -> list[float]:
    """:func:`wait_for_move` for every move at once; the seconds each took."""
    return list(await asyncio.gather(*(wait_for_move(store, clock, m, deadline=deadline) for m in moves)))


async def _lease_call(call: Awaitable[T]) -> T:
    """``call``, its failure (not a lost race) said as an operation error."""
    try:
        return await call
    except LostRace:
        raise
    except ApiError as exc:
        raise OperationError(f"lease API: {exc}") from exc
