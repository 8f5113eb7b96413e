"""A graceful handoff by transfer (virtual clock): the leaving owner offers
its claim over the mesh, the successor accepts, and the owner writes the
claim naming the successor's process; the successor serves on that write
without one of its own. Without an accept in time the owner releases as
before; a transfer seen too late is written again by the successor; an
accept nobody waits for is dropped."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address

from egressd.adapters.recording import RecordingDataPlane
from egressd.core import transfer
from egressd.core.lease import LeaseRecord
from egressd.core.mesh_messages import Accept, Offer, Wake, encode
from egressd.core.model import EgressGroup
from tests.fakes import FakeLeaseStore
from tests.runtime.support import (
    ADDRESSES,
    KEY,
    PORT,
    TIMING,
    CutStore,
    MeshNode,
    assert_no_two_owners,
    owners,
    settle,
    stop_all,
)
from tests.runtime.test_wake import IP, NAME, LaggingStore, LossyNetwork, _handoff, _pair
from tests.virtual_time import until

OTHER_IP = ip_address("172.18.0.43")


def _claim_writes(writes: list[tuple[str, object]], since: int) -> list[tuple[str, str | None, str | None]]:
    return [(verb, r.holder, r.transition_reason) for verb, r in writes[since:] if r.name == NAME]  # type: ignore[attr-defined]


async def _transfer_pair() -> tuple[LossyNetwork, list[MeshNode], list[LaggingStore], object]:
    net = LossyNetwork()
    net.drop_offers = False
    nodes, stores, shared = await _pair(net)
    return net, nodes, stores, shared


async def test_the_successor_serves_on_the_owners_transfer_without_a_write_of_its_own() -> None:
    _net, nodes, stores, shared = await _transfer_pair()
    try:
        since = len(shared.writes)  # type: ignore[attr-defined]
        owner, successor, took = await _handoff(nodes, stores, lag=0.0)
        assert took < 0.05, f"the successor served {took * 1000:.1f} ms after the stop"
        # one claim write in the handoff: the owner's, naming the successor's process
        assert _claim_writes(shared.writes, since) == [  # type: ignore[attr-defined]
            ("update", successor.name, f"transferred-from-{owner.name}")
        ]
        claim = shared.leases[NAME]  # type: ignore[attr-defined]
        assert (claim.holder, claim.incarnation) == (successor.name, successor.daemon.incarnation)
        assert claim.holder_address == ADDRESSES[successor.name]
        assert owner.daemon.mesh.transfers.taken == 1  # type: ignore[union-attr]
        assert successor.daemon.mesh.transfers.accepted == 1  # type: ignore[union-attr]
        assert successor.daemon.members[IP].last_decision.reason == "transferred"  # type: ignore[union-attr]
        assert owners(nodes, IP) == [successor.name]
        # the successor is a holder like any other: it keeps the IP
        await asyncio.sleep(3 * TIMING.lease_duration)
        assert owners(nodes, IP) == [successor.name]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_a_successor_whose_watch_lags_is_woken_and_serves_on_the_transfer() -> None:
    _net, nodes, stores, shared = await _transfer_pair()
    try:
        since = len(shared.writes)  # type: ignore[attr-defined]
        _, successor, took = await _handoff(nodes, stores, lag=0.4)
        assert took < 0.05, f"the successor served {took * 1000:.1f} ms after the stop"
        assert successor.daemon.mesh.wakes.read == 1  # type: ignore[union-attr]
        assert [w[1] for w in _claim_writes(shared.writes, since)] == [successor.name]  # type: ignore[attr-defined]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_without_an_accept_in_time_the_owner_releases_and_the_successor_writes() -> None:
    net, nodes, stores, shared = await _transfer_pair()
    try:
        net.drop_offers = True  # the successor never hears of the offer
        since = len(shared.writes)  # type: ignore[attr-defined]
        _owner, successor, took = await _handoff(nodes, stores, lag=0.0)
        assert transfer.ACCEPT_WAIT <= took < transfer.ACCEPT_WAIT + 0.05
        writes = _claim_writes(shared.writes, since)  # type: ignore[attr-defined]
        assert [(verb, holder) for verb, holder, _ in writes] == [("update", None), ("update", successor.name)]
        assert owners(nodes, IP) == [successor.name]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_a_transfer_seen_after_the_renew_deadline_is_written_again_by_the_successor() -> None:
    """Serving on the owner's write is safe only soon after the accept (no
    standby can have timed the successor out yet); later, the successor's
    own conditional write settles any race, as for any claim naming it."""
    net, nodes, stores, shared = await _transfer_pair()
    try:
        owner = next(n for n in nodes if n.serves(IP))
        successor = next(n for n in nodes if n is not owner)
        store = stores[nodes.index(successor)]
        net.drop_wakes = True  # no word from the owner
        store.lag = TIMING.renew_deadline + 0.2  # the transfer reaches its view late
        store.read_delay = TIMING.renew_deadline + 0.2  # and so does the read a wake starts
        since = len(shared.writes)  # type: ignore[attr-defined]
        await owner.stop()
        await until(lambda: successor.serves(IP), 4 * TIMING.lease_duration)
        writes = _claim_writes(shared.writes, since)  # type: ignore[attr-defined]
        assert [(verb, holder) for verb, holder, _ in writes] == [("update", successor.name)] * 2
        assert successor.daemon.members[IP].last_decision.reason == "reacquire-own-lease"  # type: ignore[union-attr]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_accepts_nobody_waits_for_are_dropped_and_give_nothing() -> None:
    net, nodes, _stores, _shared = await _transfer_pair()
    try:
        owner = next(n for n in nodes if n.serves(IP))
        standby = next(n for n in nodes if n is not owner)
        mesh = owner.daemon.mesh
        assert mesh is not None
        inc = standby.daemon.incarnation
        nonce = "0123456789abcdef" * 2
        for datagram in (
            encode(Accept(standby.name, inc, owner.name, str(IP), 1, nonce), KEY),  # no offer waits
            encode(Accept(standby.name, inc, "gw-c", str(IP), 1, nonce), KEY),  # misdirected
        ):
            net.inject(datagram, (ADDRESSES[standby.name], PORT), ADDRESSES[owner.name])
        await asyncio.sleep(TIMING.retry_period)
        assert (mesh.rejected["stale"], mesh.rejected["misdirected"]) == (1, 1)
        assert mesh.transfers.taken == 0
        assert owners(nodes, IP) == [owner.name]
    finally:
        await stop_all(nodes)


async def test_a_standby_held_off_refuses_the_offer_and_the_owner_releases() -> None:
    _net, nodes, _stores, shared = await _transfer_pair()
    try:
        owner = next(n for n in nodes if n.serves(IP))
        successor = next(n for n in nodes if n is not owner)
        successor.daemon.members[IP]._hold(0.3, "dataplane-failed")
        await owner.stop()
        assert successor.daemon.mesh.rejected["hold-off"] == 1  # type: ignore[union-attr]
        assert successor.daemon.mesh.transfers.accepted == 0  # type: ignore[union-attr]
        assert shared.leases[NAME].holder is None  # type: ignore[attr-defined]
        await until(lambda: successor.serves(IP), 4 * TIMING.lease_duration)
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


class RecordedWrites(CutStore):
    """Claim writes recorded among a node's data-plane operations, once they landed."""

    plane: RecordingDataPlane | None = None

    async def update(self, record: LeaseRecord, *, deadline: float) -> LeaseRecord:
        written = await super().update(record, deadline=deadline)
        if self.plane is not None and not record.name.startswith("egressd-node-"):
            self.plane._record("claim-write", ip=record.egress_ip)
        return written


async def test_a_stopping_owner_withdraws_all_its_ips_before_it_hands_any_over() -> None:
    """One withdrawal of every owned IP (SNAT of all in one transaction), then
    the claims: the last IP's traffic stops as early as the first's."""
    two_ips = EgressGroup(
        name="outpost",
        egress_ips=(IP, OTHER_IP),
        interface="net0",
        candidates=("gw-a", "gw-b"),
        source_cidrs=(),
        destination_cidrs=(),
    )
    shared, net = FakeLeaseStore(), LossyNetwork()
    net.drop_offers = False
    stores = [RecordedWrites(shared), RecordedWrites(shared)]
    nodes = [MeshNode("gw-a", stores[0], net, two_ips), MeshNode("gw-b", stores[1], net, two_ips)]
    for node, store in zip(nodes, stores, strict=True):
        store.plane = node.plane
    try:
        owner, successor = nodes
        await settle([owner], (IP, OTHER_IP))  # alone: it takes both
        await settle([successor], ())
        await asyncio.sleep(4 * TIMING.retry_period)  # the successor's node lease renewed, promises given
        assert owner.serves(IP) and owner.serves(OTHER_IP)
        mark = len(owner.plane.ops)
        await owner.stop()
        ops = [o for o in owner.plane.ops[mark:] if o["op"] in ("release", "snat-off-together", "claim-write")]
        names = [o["op"] for o in ops]
        first_write = names.index("claim-write")
        assert names[:first_write] == ["release", "release", "snat-off-together"], names
        assert sorted(ops[2]["ips"]) == sorted(map(str, (IP, OTHER_IP)))  # one nftables transaction for both
        await until(lambda: successor.serves(IP) and successor.serves(OTHER_IP), 4 * TIMING.lease_duration)
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        for s in stores:
            s.up.set()
        await stop_all(nodes)


def _ops(node: MeshNode, *kinds: str) -> list[tuple[str, float]]:
    return [(op["op"], op["t"]) for op in node.plane.ops if op["op"] in kinds and op.get("ip") == str(IP)]


async def test_the_successor_primes_snat_on_its_accept_and_its_activation_only_completes_it() -> None:
    _net, nodes, stores, _shared = await _transfer_pair()
    try:
        owner, successor, _took = await _handoff(nodes, stores, lag=0.0)
        primed = _ops(successor, "snat-prime")
        withdrawn = _ops(owner, "release")
        assert primed and withdrawn and primed[-1][1] < withdrawn[-1][1]  # before the owner's withdrawal
        assert _ops(successor, "snat-on")[-1][1] > withdrawn[-1][1]  # serving after it
        assert not successor.plane.primed and successor.serves(IP)
        # the window ends: what is served stays
        await asyncio.sleep(TIMING.renew_deadline + 0.05)
        assert successor.serves(IP) and [op for op, _ in _ops(successor, "snat-off")] == []
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_snat_primed_for_a_transfer_that_never_comes_is_taken_back_and_drift_repair_waits() -> None:
    net, nodes, _stores, shared = await _transfer_pair()
    try:
        owner = next(n for n in nodes if n.serves(IP))
        standby = next(n for n in nodes if n is not owner)
        epoch = shared.leases[NAME].transitions  # type: ignore[attr-defined]
        offer = Offer(owner.name, owner.daemon.incarnation, 10**6, str(IP), epoch, "0123456789abcdef" * 2, standby.name)
        net.inject(encode(offer, KEY), (ADDRESSES[owner.name], PORT), ADDRESSES[standby.name])  # no transfer follows
        await until(lambda: IP in standby.plane.primed, 0.05)
        assert not standby.serves(IP)
        assert await standby.daemon.repair_drift() == []  # primed, not stale: left alone
        assert IP in standby.plane.primed
        await asyncio.sleep(TIMING.renew_deadline)
        assert not standby.plane.primed and IP not in await standby.plane.active()
        assert [op for op, _ in _ops(standby, "snat-prime", "snat-off", "snat-on")] == ["snat-prime", "snat-off"]
        assert owners(nodes, IP) == [owner.name]
    finally:
        await stop_all(nodes)


async def test_the_successor_serves_on_the_owners_wake_while_its_watch_and_reads_lag() -> None:
    _net, nodes, stores, shared = await _transfer_pair()
    try:
        loop = asyncio.get_running_loop()
        owner = next(n for n in nodes if n.serves(IP))
        successor = next(n for n in nodes if n is not owner)
        store = stores[nodes.index(successor)]
        store.lag = store.read_delay = TIMING.renew_deadline / 2  # the API's copy comes late either way
        since = len(shared.writes)  # type: ignore[attr-defined]
        stopped = loop.time()
        await owner.stop()
        await until(lambda: successor.serves(IP), TIMING.renew_deadline)
        assert loop.time() - stopped < 0.05
        assert store.reads.count(NAME) == 0  # served on the owner's word, nothing read
        assert successor.daemon.members[IP].last_decision.reason == "transferred"  # type: ignore[union-attr]
        assert [w[1] for w in _claim_writes(shared.writes, since)] == [successor.name]  # type: ignore[attr-defined]
        entry = successor.daemon.view.get(NAME)
        written = shared.leases[NAME]  # type: ignore[attr-defined]
        assert entry.provisional and entry.record is not None
        assert (entry.record.holder, entry.record.incarnation, entry.record.transitions) == (
            written.holder,
            written.incarnation,
            written.transitions,
        )
        assert entry.resource_version == written.resource_version
        # the watch's copy of the same version replaces the reconstruction
        await until(lambda: not successor.daemon.view.get(NAME).provisional, TIMING.renew_deadline)
        assert successor.daemon.view.get(NAME).record == written
        assert owners(nodes, IP) == [successor.name]
        assert_no_two_owners(n.plane for n in nodes)
    finally:
        await stop_all(nodes)


async def test_a_wake_that_is_not_the_accepted_transfer_makes_the_successor_read() -> None:
    net, nodes, stores, shared = await _transfer_pair()
    try:
        owner = next(n for n in nodes if n.serves(IP))
        standby = next(n for n in nodes if n is not owner)
        member = standby.daemon.members[IP]
        epoch = shared.leases[NAME].transitions  # type: ignore[attr-defined]
        offer = Offer(owner.name, owner.daemon.incarnation, 10**6, str(IP), epoch, "0123456789abcdef" * 2, standby.name)
        net.inject(encode(offer, KEY), (ADDRESSES[owner.name], PORT), ADDRESSES[standby.name])
        await until(lambda: member._accepted is not None, 0.05)
        store = stores[nodes.index(standby)]
        for n, wake in enumerate(
            (
                Wake(owner.name, "another-process", 10**6 + 1, str(IP), epoch + 1, "999", standby.name),
                Wake(owner.name, owner.daemon.incarnation, 10**6 + 2, str(IP), epoch + 2, "999", standby.name),
            )
        ):
            net.inject(encode(wake, KEY), (ADDRESSES[owner.name], PORT), ADDRESSES[standby.name])
            await until(lambda n=n: store.reads.count(NAME) == n + 1, 0.1)  # type: ignore[misc]
        assert not standby.daemon.view.get(NAME).provisional
        assert owners(nodes, IP) == [owner.name]
    finally:
        await stop_all(nodes)
