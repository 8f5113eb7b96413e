"""SNAT in egressd's own nftables tables, through the ``nft`` command.

Every change is one ``nft -f -`` transaction rendered by :mod:`egressd.core.nft`
(atomic: all or nothing); only egressd's tables are ever named. The ``nft``
command is run as an asyncio subprocess, so the event loop never blocks.

``netns``: when given, commands run through ``ip netns exec NETNS nft ...``
(tests and tools drive a namespace from the root process); the daemon itself
normally runs inside the namespace it manages and leaves it None.

``stage`` remembers what it staged: when only the groups' sources change, it
applies the element changes to the source sets in one small transaction
instead of rewriting the table (see :mod:`egressd.core.nft`), and runs nothing
when nothing changed. The fence's list of egress IPs is re-staged only when the
egress IPs change. :meth:`NftablesSnat.active` compares the kernel with what
the adapter wrote; if they differ (someone flushed the table), the next
``stage`` rewrites the table whatever changed.

Optional sub-second fence (``fence_ttl``): see :mod:`egressd.core.nft`. When it
is enabled, ``activate`` arms the fence of the IP for ``fence_ttl`` and the
runtime MUST call :meth:`NftablesSnat.refresh_fence` after every successful
renew (together with the address refresh), or the node stops serving the IP
after ``fence_ttl``. When it is disabled (the default) no fence table exists.
With libnftables, the refresh is written as an nfnetlink batch of its own
(:func:`encode_fence_refresh`: the element operations ``nft`` would send for
``nft.render_fence_refresh``, one transaction), in the libnftables thread so
that it stays ordered with the other transactions: ``nft`` reads the ruleset
before every transaction, and for element commands that means the elements
of every interval set, one request per set, which with a source set per
egress IP costs more than the refresh itself (docs/kernel-fences.md, "What a
re-arm costs"). The batch is kept while the IPs stay the same. ``activate``
and ``deactivate`` write their fence elements the same way
(:func:`encode_fence_remove`), so that their ``nft`` transaction holds rule
commands only: the element is armed after the rule (in between, the fence
drops what the rule NATs) and disarmed before the rule goes.

Drift checks: :meth:`NftablesSnat.active` lists the table only when the
ruleset's generation moved by a transaction that was not the adapter's since
a listing showed what the adapter wrote (:class:`_LibNftables`).

``mark``: egressd's bits of the conntrack mark, set by every SNAT rule (the
conntrack stream follows those flows). ``guard``: the connection guard's
table is staged with the SNAT table; :meth:`NftablesSnat.arm_guard` guards an
IP for a grace period after a takeover, :meth:`NftablesSnat.guard_drops`
reads how many packets it dropped (see :mod:`egressd.core.nft`).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import socket
import struct
import time
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from egressd.adapters import netlink
from egressd.core import nft
from egressd.core.assignment import source_owners
from egressd.core.errors import DataPlaneError
from egressd.core.model import EgressGroup, IPAddress, IPNetwork

log = logging.getLogger(__name__)


# -- fence elements over nfnetlink ---------------------------------------------

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFT_MSG_NEWSETELEM, _NFT_MSG_DELSETELEM = 12, 14
_NFT_MSG_NEWGEN, _NFT_MSG_GETGEN = 15, 16
_NFTA_GEN_ID = 1
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_CREATE = 0x01, 0x04, 0x400
_NLMSG_ERROR = 2
_NLA_F_NESTED = 0x8000
_NFTA_SET_ELEM_LIST_TABLE, _NFTA_SET_ELEM_LIST_SET, _NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
_NFTA_LIST_ELEM = 1
_NFTA_SET_ELEM_KEY, _NFTA_SET_ELEM_TIMEOUT, _NFTA_SET_ELEM_EXPIRATION = 1, 4, 5
_NFTA_DATA_VALUE = 1
_NFPROTO = {"inet": 1, "arp": 3}
_HEADER = netlink.HEADER
_ELEMENTS_PER_MESSAGE = 1000
"""A message's element list is one attribute, whose length is 16 bits: 1,000
IPv6 elements with timeout and expiry take about 56 KB."""
_ACK_TIMEOUT = 2.0
_GENERATION_SEQ = 1 << 30
"""Sequence numbers of generation reads start here, far above any batch's
(a batch numbers its messages from 1)."""


_nla = netlink.attr


def _message(kind: int, flags: int, seq: int, *, family: int, payload: bytes, res_id: int = 0) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload  # nfgenmsg, version 0
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def fence_key(ip: IPAddress) -> bytes:
    """The ``NFTA_SET_ELEM_KEY`` attribute of ``ip``'s fence elements."""
    return _nla(_NFTA_SET_ELEM_KEY | _NLA_F_NESTED, _nla(_NFTA_DATA_VALUE, ip.packed))


def encode_fence_refresh(
    ips: Sequence[IPAddress], ttl_ms: int, *, update: bool, seq: int, keys: dict[IPAddress, bytes] | None = None
) -> tuple[bytes, int]:
    """The nfnetlink batch that does what ``nft.render_fence_refresh(ips,
    ttl_ms, update=update)`` does, as one transaction, with sequence numbers
    from ``seq``; and how many of its messages ask for an acknowledgement.
    Elements carry ``timeout`` (and with ``update`` ``expiration``) in
    milliseconds, big-endian, as nft sends them. ``keys``: the encoded key
    of each IP (:func:`fence_key`), filled as IPs come (a gateway re-arms the
    same IPs four times a second)."""
    timeout = _nla(_NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", ttl_ms))
    if update:
        timeout += _nla(_NFTA_SET_ELEM_EXPIRATION, struct.pack(">Q", ttl_ms))
    steps = [(_NFT_MSG_NEWSETELEM, True)] if update else [(_NFT_MSG_NEWSETELEM, True), (_NFT_MSG_DELSETELEM, False)]
    if not update:
        steps.append((_NFT_MSG_NEWSETELEM, True))
    return _encode_fence_steps(ips, timeout, steps, seq, {} if keys is None else keys)


def encode_fence_remove(ips: Sequence[IPAddress], *, seq: int) -> tuple[bytes, int]:
    """The nfnetlink batch that does what ``nft.render_fence_remove(ips)``
    does (an ``add`` with a one-second timeout, so that the ``delete`` finds
    the element, then the ``delete``), as one transaction."""
    timeout = _nla(_NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", 1000))
    return _encode_fence_steps(ips, timeout, [(_NFT_MSG_NEWSETELEM, True), (_NFT_MSG_DELSETELEM, False)], seq, {})


def _encode_fence_steps(
    ips: Sequence[IPAddress],
    timeout: bytes,
    steps: Sequence[tuple[int, bool]],
    seq: int,
    keys: dict[IPAddress, bytes],
) -> tuple[bytes, int]:
    """One batch: per fence set, each step (a message type, and whether its
    elements carry ``timeout``) naming all the IPs of the set."""
    per_set: dict[tuple[str, str, str], list[bytes]] = {}
    for ip in sorted(set(ips), key=lambda ip: (ip.version, int(ip))):
        key = keys.get(ip)
        if key is None:
            key = keys[ip] = fence_key(ip)
        for fence_set in nft.fence_sets(ip):
            per_set.setdefault(fence_set, []).append(key)
    messages: list[bytes] = []

    def elements(kind: int, flags: int, where: tuple[str, str, str], items: list[bytes]) -> None:
        family, table, name = where
        head = _nla(_NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + _nla(
            _NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0"
        )
        for start in range(0, len(items), _ELEMENTS_PER_MESSAGE):
            chunk = b"".join(items[start : start + _ELEMENTS_PER_MESSAGE])
            payload = head + _nla(_NFTA_SET_ELEM_LIST_ELEMENTS | _NLA_F_NESTED, chunk)
            kind_full = (_NFNL_SUBSYS_NFTABLES << 8) | kind
            messages.append(
                _message(kind_full, flags, seq + 1 + len(messages), family=_NFPROTO[family], payload=payload)
            )

    flags = {
        _NFT_MSG_NEWSETELEM: _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_ACK,
        _NFT_MSG_DELSETELEM: _NLM_F_REQUEST | _NLM_F_ACK,
    }
    for where, set_keys in per_set.items():
        armed = [_nla(_NFTA_LIST_ELEM | _NLA_F_NESTED, k + timeout) for k in set_keys]
        bare = [_nla(_NFTA_LIST_ELEM | _NLA_F_NESTED, k) for k in set_keys] if not all(t for _, t in steps) else []
        for kind, timed in steps:
            elements(kind, flags[kind], where, armed if timed else bare)

    def control(kind: int, at: int) -> bytes:
        return _message(kind, _NLM_F_REQUEST, at, family=socket.AF_UNSPEC, payload=b"", res_id=_NFNL_SUBSYS_NFTABLES)

    begin, end = control(_NFNL_MSG_BATCH_BEGIN, seq), control(_NFNL_MSG_BATCH_END, seq + 1 + len(messages))
    return begin + b"".join(messages) + end, len(messages)


def read_errors(data: bytes) -> list[int]:
    """The errno of each acknowledgement in a read from the socket (0: done)."""
    return [error for _seq, error in netlink.read_acks(data)]


def encode_get_generation(seq: int) -> bytes:
    """``NFT_MSG_GETGEN``: ask for the ruleset's generation, which the
    kernel advances by one with every committed nftables transaction of the
    namespace (any table, anyone's)."""
    kind = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN
    return _message(kind, _NLM_F_REQUEST, seq, family=socket.AF_UNSPEC, payload=b"")


def read_generation(data: bytes, seq: int) -> tuple[bool, int | None]:
    """The answer to :func:`encode_get_generation` with sequence number
    ``seq`` in a read from the socket: (whether it is there, the generation;
    None when the kernel answered with an error or without the attribute).
    Messages of other sequence numbers are skipped."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, found_seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break  # malformed or cut: never loop on it, never read past it
        if found_seq == seq and kind == _NLMSG_ERROR:
            return True, None
        if found_seq == seq and kind == (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_NEWGEN:
            at, end = offset + _HEADER.size + 4, offset + length  # after nfgenmsg
            while at + 4 <= end:
                size, attr = struct.unpack_from("=HH", data, at)
                if size < 4 or at + size > end:
                    break
                if attr & 0x3FFF == _NFTA_GEN_ID and size == 8:
                    return True, int.from_bytes(data[at + 4 : at + 8], "big")
                at += (size + 3) & ~3
            return True, None
        offset += (length + 3) & ~3
    return False, None


class _LibNftables:
    """One libnftables context, used from one thread, for the transactions.

    Each ``nft`` process blocks 4-30 ms in ``close()`` of its netlink socket
    after its commit (the kernel waits for an RCU grace period before the
    transaction's cleanup), on the takeover and withdrawal paths alike. A
    context that keeps its socket open never pays that: a transaction takes
    about 0.3 ms (chaos/bench_takeover.py). The thread enters ``netns`` once,
    so the context's socket lives there.

    **Generations.** Every transaction here (libnftables' or a batch of our
    own) is bracketed by two reads of the ruleset's generation
    (:func:`encode_get_generation`). :attr:`clean` is a generation at which
    the kernel's nftables held exactly what the adapter wrote: the adapter
    sets it after a listing that showed so (:meth:`mark_clean`), and a
    transaction here carries it forward when the generation moved by its own
    commit only (one when it committed, none when it failed); any other
    move (someone else's transaction) clears it. While the generation read
    now equals :attr:`clean`, nothing changed behind the adapter's back, and
    its drift check needs no listing."""

    def __init__(self, netns: str | None) -> None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        self._lib = lib
        self._netns = netns
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-nft")
        self._ctx: Any = self._pool.submit(self._new).result()
        self.clean: int | None = None
        """Only read and written in the thread (see the class docstring)."""
        self._seq = _GENERATION_SEQ
        self._sock: socket.socket | None = None
        """The thread's nfnetlink socket for batches of our own and generation
        reads, kept open: closing a socket after a transaction that removed
        rules waits for the kernel's deferred cleanup of that transaction (an
        RCU grace period, about 12 ms here), which per activation cost more
        than the activation."""

    def _new(self) -> Any:
        if self._netns is not None:
            from pyroute2.netns import setns  # noqa: PLC0415 — only tests and labs drive another namespace

            setns(self._netns)
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return ctx

    def _run_blocking(self, script: str) -> tuple[int, str]:
        before = self._generation_blocking()
        rc = int(self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()))
        self._carry(before, self._generation_blocking(), committed=rc == 0)
        err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, err.decode(errors="replace")

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
            try:
                sock.bind((0, 0))
                sock.settimeout(_ACK_TIMEOUT)
            except OSError:
                sock.close()
                raise
            self._sock = sock
            weakref.finalize(self, sock.close)  # closed with the context's owner, not left to the collector
        return self._sock

    def _drop(self) -> None:
        """Close the socket after a failure: no late answer reaches the next user."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _generation_blocking(self) -> int | None:
        """The ruleset's generation now; None if it cannot be read. Reading up
        to its answer also skips whatever a batch left unread before it."""
        self._seq = self._seq + 1 if self._seq < 0x7FFFFFFF else _GENERATION_SEQ
        seq = self._seq
        try:
            sock = self._socket()
            sock.send(encode_get_generation(seq))
            while True:
                answered, generation = read_generation(sock.recv(65536), seq)
                if answered:
                    return generation
        except OSError:
            self._drop()
            return None

    def _carry(self, before: int | None, after: int | None, *, committed: bool) -> None:
        expected = None if before is None else (before + committed) & 0xFFFFFFFF
        keep = self.clean is not None and before == self.clean and after is not None and after == expected
        self.clean = after if keep else None

    async def generation(self) -> int | None:
        """The ruleset's generation now, read in order with the transactions."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._generation_blocking)

    async def mark_clean(self, generation: int) -> None:
        """A listing read at ``generation`` showed what the adapter wrote: make
        it :attr:`clean`, unless the generation moved since."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._mark_clean_blocking, generation)

    def _mark_clean_blocking(self, generation: int) -> None:
        if self._generation_blocking() == generation:
            self.clean = generation

    async def unchanged(self) -> bool:
        """Whether the ruleset is still at :attr:`clean` (False when unknown)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._unchanged_blocking)

    def _unchanged_blocking(self) -> bool:
        return self.clean is not None and self._generation_blocking() == self.clean

    async def run(self, script: str) -> tuple[int, str]:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run_blocking, script)

    async def send_batch(self, batch: bytes, acks: int) -> list[int]:
        """Write an nfnetlink batch on a socket of this thread (in ``netns``,
        ordered with the transactions) and read ``acks`` answers; their errnos."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._send_batch_blocking, batch, acks)

    def _send_batch_blocking(self, batch: bytes, acks: int) -> list[int]:
        # the batch's sequence numbers are its own (small, from 1): a read of the
        # generation before it has read whatever an earlier batch left, and a
        # socket that failed is closed, so no late answer is taken for this one's
        before = self._generation_blocking()
        errors: list[int] = []
        try:
            sock = self._socket()
            sock.send(batch)
            while len(errors) < acks:
                errors += read_errors(sock.recv(65536))
        except OSError:
            self._drop()
            self.clean = None  # committed or not: unknown
            raise
        self._carry(before, self._generation_blocking(), committed=not any(errors))
        return errors


def _open_libnftables(netns: str | None) -> _LibNftables | None:
    try:
        return _LibNftables(netns)
    except OSError as exc:
        log.info("libnftables not usable (%s); running the nft command per transaction", exc)
        return None


class NftablesSnat:
    """:class:`egressd.ports.Snat` over nftables transactions (libnftables in
    process when available, else one ``nft -f -`` per transaction)."""

    def __init__(
        self,
        *,
        netns: str | None = None,
        fence_ttl: float | None = None,
        nft_binary: str = "nft",
        timeout: float = 10.0,
        library: bool = True,
        mark: nft.CtMark | None = None,
        guard: bool = False,
    ) -> None:
        """``fence_ttl``: seconds of the optional sub-second fence (e.g. 0.8), None
        disables it. ``timeout``: upper bound of one ``nft`` run (a 10,000
        element stage takes well under a second). ``mark``: the conntrack
        mark the SNAT rules set (None: none). ``guard``: stage the connection
        guard's table."""
        if fence_ttl is not None and fence_ttl < 0.001:
            raise ValueError(f"fence_ttl must be at least 1 ms, got {fence_ttl}")
        self._netns = netns
        self._fence_ms = None if fence_ttl is None else round(fence_ttl * 1000)
        self._nft = nft_binary
        self._timeout = timeout
        self._groups: dict[str, EgressGroup] = {}
        self._staged: tuple[EgressGroup, ...] | None = None
        """The groups as the kernel's table holds them now; None: unknown (rewrite)."""
        self._sets: dict[str, dict[str, tuple[str, ...]]] = {}
        """The elements of the staged groups' source sets, by group name."""
        self._owners: dict[str, dict[IPNetwork, IPAddress]] = {}
        """The egress IP of each staged source, by group name (hashing thousands
        of sources costs more than the transaction that adds one)."""
        self._fenced: frozenset[IPAddress] | None = None
        self._fence_update: bool | None = None
        """Whether this kernel re-arms a fence element on ``add`` with ``expires``
        (``nft.render_fence_probe``); None: not probed yet."""
        """The egress IPs the fence tables list now; None: unknown (re-stage)."""
        self._owned: dict[IPAddress, str] = {}
        self._primed: set[IPAddress] = set()
        """IPs of ``_owned`` whose rule :meth:`prime` added, fence not armed yet."""
        self._activations: dict[IPAddress, tuple[str, asyncio.Future[None]]] = {}
        """Activations waiting for the lock, each with its group and the future it waits on."""
        self._fence_keys: dict[IPAddress, bytes] = {}
        """The encoded key of each IP's fence elements (bounded by the egress IPs ever armed)."""
        self._fence_batch: tuple[tuple[IPAddress, ...], int, bool, bytes, int] | None = None
        """The last re-arm's IPs, milliseconds, form, batch and acknowledgements:
        at rest a gateway re-arms the same IPs after every renew, so the batch
        is encoded again only when they change."""
        self._changes = 0
        """Count of transactions applied, to tell a stale read-back from drift."""
        self._loaded = False
        self._lock = asyncio.Lock()
        self._lib = _open_libnftables(netns) if library else None
        self._mark = mark
        self._guard = guard
        self._guard_staged = False

    # -- the port ---------------------------------------------------------

    async def stage(self, groups: Sequence[EgressGroup]) -> None:
        """Bring the SNAT table to ``groups`` (sets of every group, SNAT rules of
        the IPs owned now) in one transaction, and the fence's list of egress IPs.

        1. Nothing changed since the last stage: nothing to run.
        2. Only sources changed: add and delete set elements (no rule, chain or
           conntrack entry is touched); if that fails, go on with 3.
        3. Otherwise: rewrite the whole table, keeping the rules of owned IPs.
        """
        groups = tuple(groups)
        async with self._lock:
            await self._load()
            ips = frozenset(ip for g in groups for ip in g.egress_ips)
            fence = "" if self._fence_ms is None or ips == self._fenced else nft.render_fence_stage(ips)
            staged = self._staged
            if staged is not None and nft.same_layout(staged, groups) and await self._apply_delta(groups, ips, fence):
                return
            by_name = {g.name: g for g in groups}
            owned = {ip: g for ip, g in self._owned.items() if g in by_name and ip in by_name[g].egress_ips}
            for ip in set(self._owned) - set(owned):
                log.info("SNAT to %s dropped from the table: no longer an egress IP of group %s", ip, self._owned[ip])
            started = time.monotonic()
            try:
                owners = {g.name: source_owners(g) for g in groups}
                sets = {g.name: nft.group_source_sets(g, owners[g.name]) for g in groups}
                script = nft.render_table(groups, owned, sets=sets, mark=self._mark) + fence + self._guard_stage()
            except ValueError as exc:  # a group name nftables cannot carry
                raise DataPlaneError(f"nft stage: {exc}") from exc
            await self._run(script, what="stage")
            self._changes += 1
            self._guard_staged = self._guard_staged or self._guard
            self._remember(groups, sets, owners, owned, ips if fence else self._fenced)
            if self._fence_ms is not None and self._fence_update is None:
                # known before any takeover needs it (a first fence arm would probe on its path)
                self._fence_update = await self._probe_fence_update()
            log.info(
                "staged SNAT table for %d group(s), %d active egress IP(s) in %.3fs",
                len(groups),
                len(owned),
                time.monotonic() - started,
            )

    async def _apply_delta(self, groups: tuple[EgressGroup, ...], ips: frozenset[IPAddress], fence: str) -> bool:
        """Steps 1 and 2 of :meth:`stage`; False when the table must be rewritten."""
        assert self._staged is not None
        started = time.monotonic()
        before = {g.name: g for g in self._staged}
        sets, owners = dict(self._sets), dict(self._owners)
        deltas: list[nft.SetDelta] = []
        for g in groups:
            if g.source_cidrs != before[g.name].source_cidrs:
                owners[g.name] = source_owners(g, self._owners[g.name])  # same IPs: reuse
                sets[g.name] = nft.group_source_sets(g, owners[g.name])
                deltas += nft.diff_source_sets(self._sets[g.name], sets[g.name])
        script = nft.render_set_deltas(deltas) + fence
        if not script:
            self._remember(groups, sets, owners, self._owned, self._fenced)
            log.debug("stage: SNAT table already up to date")
            return True
        try:
            await self._run(script, what="stage sources")
        except DataPlaneError as exc:
            log.warning("source update failed, rewriting the SNAT table instead: %s", exc)
            self._staged = None
            return False
        self._changes += 1
        self._remember(groups, sets, owners, self._owned, ips if fence else self._fenced)
        log.debug(
            "stage: %d element(s) added and %d deleted in %d source set(s) in %.3fs%s",
            sum(len(d.added) for d in deltas),
            sum(len(d.deleted) for d in deltas),
            len(deltas),
            time.monotonic() - started,
            ", fence list re-staged" if fence else "",
        )
        return True

    async def activate(self, ip: IPAddress, group: str) -> None:
        """Add the SNAT rule of ``ip`` and arm its fence; for an IP
        :meth:`prime` d, whose rule is in place, arm its fence only.

        Activations asked for while the table is busy are written together
        when it comes free: one transaction for their rules and one batch
        for their fence elements. A gateway taking hundreds of IPs at once
        (at start, after a peer's loss) would otherwise rewrite a group chain
        once per IP, each time one rule longer; and the second IP of a
        handoff would wait for the first's own batch."""
        waiting = self._activations.get(ip)
        if waiting is not None and waiting[0] == group:
            ticket = waiting[1]  # asked twice before its turn: once is enough
        else:
            ticket = asyncio.get_running_loop().create_future()
            self._activations[ip] = (group, ticket)
        try:
            async with self._lock:
                if not ticket.done():
                    await self._activate_pending()
                if not ticket.done():  # replaced by an activation for another group meanwhile
                    ticket.set_exception(DataPlaneError(f"activate {ip}: superseded for another group"))
        finally:
            if self._activations.get(ip, (group, None))[1] is ticket:
                del self._activations[ip]  # cancelled before its turn: nothing was written for it
            if ticket.done() and not ticket.cancelled():
                ticket.exception()  # retrieved, also when this waiter was cancelled
        ticket.result()

    async def _activate_pending(self) -> None:
        """Activate every IP waiting (see :meth:`activate`; the lock is held).
        A transaction of several IPs' rules that fails is tried again IP by
        IP, so that one IP's failure is its own."""
        batch, self._activations = self._activations, {}
        try:
            await self._load()
            ready: list[tuple[IPAddress, str, asyncio.Future[None]]] = []
            for ip, (group, ticket) in batch.items():
                try:
                    self._check(ip, group, "snat")
                except DataPlaneError as exc:
                    ticket.set_exception(exc)
                    continue
                ready.append((ip, group, ticket))
            fence = self._fence_ms is not None
            rules = [(ip, g) for ip, g, _ in ready if not (fence and ip in self._primed and self._owned.get(ip) == g)]
            failed = await self._write_rules(rules)
            arm = [(ip, g) for ip, g, _t in ready if ip not in failed]
            try:
                await self._arm(arm, primed={ip for ip, _g in arm} - {ip for ip, _g in rules})
            except DataPlaneError as exc:
                failed.update((ip, exc) for ip, _g in arm)
            for ip, _group, ticket in ready:
                if ip in failed:
                    ticket.set_exception(failed[ip])
                else:
                    ticket.set_result(None)
        except BaseException as exc:  # cancelled, or a bug: nobody waits for nothing
            for _group, ticket in batch.values():
                if not ticket.done():
                    ticket.set_exception(DataPlaneError(f"SNAT activation interrupted: {exc!r}"))
            raise

    async def _write_rules(self, rules: Sequence[tuple[IPAddress, str]]) -> dict[IPAddress, DataPlaneError]:
        """:meth:`_add_rules` for all of ``rules``, or IP by IP if that fails; the IPs that failed, and why."""
        if not rules:
            return {}
        try:
            await self._add_rules(rules)
        except DataPlaneError as exc:
            if len(rules) == 1:
                return {rules[0][0]: exc}
        else:
            return {}
        failed: dict[IPAddress, DataPlaneError] = {}
        for one in rules:
            try:
                await self._add_rules([one])
            except DataPlaneError as exc:
                failed[one[0]] = exc
        return failed

    async def _add_rules(self, rules: Sequence[tuple[IPAddress, str]]) -> None:
        """Write the group chains with the rules of ``rules`` added (one
        transaction; without libnftables, their fence elements in it too)."""
        owned = dict(self._owned)
        owned.update(rules)
        script = "".join(self._chain_script(g, v, owned) for g, v in sorted({(g, ip.version) for ip, g in rules}))
        if self._fence_ms is not None and self._lib is None:
            update = self._fence_update is True
            script += nft.render_fence_refresh([ip for ip, _g in rules], self._fence_ms, update=update)
        what = f"activate {rules[0][0]}" if len(rules) == 1 else f"activate {len(rules)} egress IPs"
        await self._run(script, what=what)
        self._owned = owned
        self._changes += 1

    async def _arm(self, armed: Sequence[tuple[IPAddress, str]], primed: set[IPAddress]) -> None:
        """After their rules: arm the fence elements of ``armed`` (those of
        ``primed`` had their rule from :meth:`prime`), and say so."""
        if not armed:
            return
        ips = [ip for ip, _g in armed]
        if self._fence_ms is not None:
            update = self._fence_update is True
            what = f"arm {ips[0]}" if len(ips) == 1 else f"arm {len(ips)} egress IPs"
            if self._lib is not None:
                # after the rules, on their own: until an element is armed the fence
                # drops what its rule NATs (fails closed), and a batch of our own
                # skips nft's read of every interval set's elements
                await self._send_fence(*encode_fence_refresh(ips, self._fence_ms, update=update, seq=1), what)
            elif primed:
                await self._run(
                    nft.render_fence_refresh(sorted(primed, key=str), self._fence_ms, update=update), what=what
                )
        for ip, group in armed:
            self._primed.discard(ip)
            log.info("SNAT to %s active for group %s%s", ip, group, " (primed; fence armed)" if ip in primed else "")

    async def prime(self, ip: IPAddress, group: str) -> bool:
        """Add the SNAT rule of ``ip`` without arming its fence (see the port)."""
        if self._fence_ms is None:
            return False
        async with self._lock:
            await self._load()
            self._check(ip, group, "snat prime")
            if self._owned.get(ip) == group:
                return ip in self._primed  # active already: nothing to prepare
            owned = dict(self._owned)
            owned[ip] = group
            await self._run(self._chain_script(group, ip.version, owned), what=f"prime {ip}")
            self._owned = owned
            self._primed.add(ip)
            self._changes += 1
            log.info("SNAT to %s primed for group %s (its fence not armed: fails closed)", ip, group)
            return True

    def _check(self, ip: IPAddress, group: str, what: str) -> None:
        if group not in self._groups:
            raise DataPlaneError(f"{what} {ip}: group {group!r} is not staged")
        if ip not in self._groups[group].egress_ips:
            raise DataPlaneError(f"{what} {ip}: not an egress IP of group {group!r} as staged")

    async def deactivate(self, ip: IPAddress) -> None:
        """Remove the SNAT rule of ``ip`` (and disarm its fence); no error if absent."""
        async with self._lock:
            await self._load()
            group = self._owned.get(ip)
            script = ""
            owned = dict(self._owned)
            if group is not None:
                del owned[ip]
                script += self._chain_script(group, ip.version, owned)
            script, failed = await self._disarm([ip], script)
            if script:
                await self._run(script, what=f"deactivate {ip}")
                self._owned = owned
                self._primed.discard(ip)
                self._changes += 1
                log.info("SNAT to %s removed (group %s)", ip, group)
            if failed is not None:
                raise failed

    async def deactivate_all(self, ips: Iterable[IPAddress]) -> None:
        """Remove the SNAT rules of ``ips`` (and disarm their fences) in one
        transaction: each group chain they leave is written once."""
        ips = list(dict.fromkeys(ips))
        if not ips:
            return
        async with self._lock:
            await self._load()
            owned = {ip: g for ip, g in self._owned.items() if ip not in ips}
            chains = sorted({(self._owned[ip], ip.version) for ip in ips if ip in self._owned})
            script = "".join(self._chain_script(group, version, owned) for group, version in chains)
            script, failed = await self._disarm(ips, script)
            if script:
                await self._run(script, what=f"deactivate {len(ips)} egress IP(s)")
                gone = {ip: self._owned[ip] for ip in ips if ip in self._owned}
                self._owned = owned
                self._primed.difference_update(ips)
                self._changes += 1
                for ip, group in gone.items():
                    log.info("SNAT to %s removed (group %s)", ip, group)
            if failed is not None:
                raise failed

    async def active(self) -> set[IPAddress]:
        """Egress IPs with a SNAT rule in the kernel now (read back, not remembered).

        If the kernel does not hold what this adapter wrote (the table is gone,
        or its SNAT rules differ), the next :meth:`stage` rewrites the table.

        With libnftables, the table is listed only when the ruleset's
        generation moved by someone else's transaction since a listing showed
        what the adapter wrote (:class:`_LibNftables`): listing a table of a
        thousand source sets and parsing its JSON every drift-repair pass was
        the largest cost of a gateway at rest after the re-arm."""
        lib = self._lib
        if lib is not None:
            async with self._lock:  # no transaction of ours half-way: ``_owned`` is what the kernel holds
                if await lib.unchanged():
                    return set(self._owned)
        changes = self._changes
        before = await lib.generation() if lib is not None else None
        listing = await self._list()
        found = nft.parse_active(listing)
        drifted = not listing or found != self._owned
        if drifted and self._staged is not None and changes == self._changes:
            log.info("the SNAT table differs from what was staged; the next stage rewrites it")
            self._staged = None
        elif not drifted and lib is not None and before is not None:
            async with self._lock:
                if changes == self._changes and found == self._owned:
                    await lib.mark_clean(before)  # if the generation is still the listing's
        return set(found)

    # -- beyond the port --------------------------------------------------

    async def arm_guard(self, ips: Iterable[IPAddress], grace: float) -> None:
        """Drop packets to ``ips`` that match no conntrack entry for ``grace``
        seconds from now (no-op without the guard)."""
        ips = list(ips)
        if not self._guard or not ips:
            return
        script = nft.render_guard_arm(ips, max(1, round(grace * 1000)))
        if not self._guard_staged:
            script = nft.render_guard_stage() + script
        await self._run(script, what="guard arm")
        self._guard_staged = True

    async def guard_drops(self) -> int:
        """Packets the guard dropped so far (0 without the guard or its table)."""
        if not self._guard:
            return 0
        out = await self._exec(
            ["-j", "list", "chain", nft.FAMILY, nft.GUARD_TABLE, nft.GUARD_CHAIN], what="list guard", missing_ok=True
        )
        try:
            return nft.parse_counted_drops(json.loads(out)) if out else 0
        except json.JSONDecodeError as exc:
            raise DataPlaneError(f"nft list guard: unreadable JSON: {exc}") from exc

    async def refresh_fence(self, ips: Iterable[IPAddress], ttl: float | None = None) -> None:
        """Re-arm the sub-second fence of ``ips`` for ``ttl`` (at most
        ``fence_ttl``; None: ``fence_ttl``) from now.

        Call after every extension of the serving right; no-op when the fence
        is disabled or ``ttl`` is under a millisecond (under a peer right the
        fence must end before the promise it rests on: nothing to arm then)."""
        ips = list(ips)
        if self._fence_ms is None or not ips:
            return
        ms = self._fence_ms if ttl is None else min(self._fence_ms, int(ttl * 1000))
        if ms < 1:
            return
        if self._fence_update is None:
            self._fence_update = await self._probe_fence_update()
        update = self._fence_update is True
        if self._lib is None:
            await self._run(nft.render_fence_refresh(ips, ms, update=update), what="fence refresh")
            return
        # nft would first read the ruleset (every interval set's elements: with a
        # source set per egress IP, more than the refresh itself); the elements'
        # messages need none of it
        key = (tuple(ips), ms, update)
        memo = self._fence_batch
        if memo is None or memo[:3] != key:
            # seq 1: batches number their messages from 1 (see _send_batch_blocking)
            batch, acks = encode_fence_refresh(ips, ms, update=update, seq=1, keys=self._fence_keys)
            memo = self._fence_batch = (*key, batch, acks)
        await self._send_fence(memo[3], memo[4], "fence refresh")

    async def _send_fence(self, batch: bytes, acks: int, what: str) -> None:
        """Write a fence batch of our own (libnftables' thread, in order with
        its transactions); DataPlaneError naming ``what`` if it fails."""
        assert self._lib is not None
        try:
            errors = [e for e in await self._lib.send_batch(batch, acks) if e]
        except OSError as exc:
            raise DataPlaneError(f"nft {what} failed: {exc}") from exc
        if errors:
            raise DataPlaneError(f"nft {what} failed: {os.strerror(errors[0])}")

    async def _disarm(self, ips: Sequence[IPAddress], script: str) -> tuple[str, DataPlaneError | None]:
        """Disarm the fence of ``ips`` (no-op without the fence) before
        ``script`` removes their rules; the script to run then, and the
        error of a failed disarm, for the caller to raise once the rules are
        removed all the same. With libnftables the disarm is a batch of our
        own, first: nft would read every interval set's elements for it.
        Without, it is appended to ``script`` (one transaction)."""
        if self._fence_ms is None:
            return script, None
        if self._lib is None:
            return script + nft.render_fence_remove(ips), None
        try:
            await self._send_fence(*encode_fence_remove(ips, seq=1), f"disarm {len(ips)} egress IP(s)")
        except DataPlaneError as exc:
            return script, exc
        return script, None

    async def _probe_fence_update(self) -> bool:
        """Whether the kernel re-arms a fence element on ``add`` with
        ``expires`` (then a refresh is one ``add`` per set instead of
        add/delete/add); False when the probe fails in any way."""
        try:
            await self._run(nft.render_fence_probe(0), what="fence probe")
            await self._run(nft.render_fence_probe(1), what="fence probe")
            out = await self._exec(
                ["-j", "list", "set", nft.FAMILY, nft.FENCE_TABLE, nft.PROBE_SET], what="fence probe"
            )
            updated = nft.probe_updated(json.loads(out))
            await self._run(nft.render_fence_probe(2), what="fence probe")
        except (DataPlaneError, json.JSONDecodeError) as exc:
            log.info("fence refresh: the kernel's element update could not be probed (%s); using add/delete/add", exc)
            return False
        log.info(
            "fence refresh: %s",
            "one add with expires (the kernel updates elements)"
            if updated
            else "add/delete/add (the kernel does not update an element on add)",
        )
        return updated

    async def fence(self) -> dict[IPAddress, float]:
        """Armed fence elements and their remaining seconds (nft 1.0 prints
        whole seconds, rounded down; a timed-out element is not listed);
        empty when the fence is disabled or its table does not exist."""
        if self._fence_ms is None:
            return {}
        result: dict[IPAddress, float] = {}
        for name in ("owned4", "owned6"):
            out = await self._exec(
                ["-j", "list", "set", nft.FAMILY, nft.FENCE_TABLE, name], what="list fence", missing_ok=True
            )
            try:
                result.update(nft.parse_fence(json.loads(out)) if out else {})
            except json.JSONDecodeError as exc:
                raise DataPlaneError(f"nft list fence: unreadable JSON: {exc}") from exc
        return result

    async def clear(self) -> None:
        """Delete egressd's tables (SNAT and fence); for shutdown and ``egressd cleanup``."""
        async with self._lock:
            await self._run(nft.render_delete(fence=True), what="clear")
            self._owned = {}
            self._primed.clear()
            self._groups = {}
            self._staged = None
            self._sets = {}
            self._owners = {}
            self._fenced = None
            self._guard_staged = False
            self._changes += 1
            self._loaded = True
            log.info("removed egressd nftables tables")

    # -- internals --------------------------------------------------------

    def _remember(
        self,
        groups: tuple[EgressGroup, ...],
        sets: dict[str, dict[str, tuple[str, ...]]],
        owners: dict[str, dict[IPNetwork, IPAddress]],
        owned: dict[IPAddress, str],
        fenced: frozenset[IPAddress] | None,
    ) -> None:
        self._groups = {g.name: g for g in groups}
        self._staged = groups
        self._sets = sets
        self._owners = owners
        self._owned = owned
        self._primed &= set(owned)
        self._fenced = fenced

    def _chain_script(self, group: str, version: int, owned: dict[IPAddress, str]) -> str:
        return nft.render_group_chain(group, version, [ip for ip, g in owned.items() if g == group], self._mark)

    def _guard_stage(self) -> str:
        """The guard's table once (a rewrite of its chain would reset its counter)."""
        return nft.render_guard_stage() if self._guard and not self._guard_staged else ""

    async def _load(self) -> None:
        """Learn the active SNAT rules once, so a restarted daemon keeps them."""
        if self._loaded:
            return
        listing = await self._list()
        self._owned = nft.parse_active(listing)
        self._loaded = True
        if self._owned:
            log.info("found active SNAT in the kernel: %s", ", ".join(map(str, sorted(self._owned, key=str))))

    async def _list(self) -> dict[str, Any]:
        """``nft -j -t list table`` (terse: without set elements); {} if absent."""
        out = await self._exec(["-j", "-t", "list", "table", nft.FAMILY, nft.TABLE], what="list", missing_ok=True)
        if not out:
            return {}
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError as exc:
            raise DataPlaneError(f"nft list: unreadable JSON: {exc}") from exc
        return parsed if isinstance(parsed, dict) else {}

    async def _run(self, script: str, *, what: str) -> None:
        if self._lib is None:
            await self._exec(["-f", "-"], what=what, stdin=script)
            return
        rc, err = await self._lib.run(script)
        if rc != 0:
            raise DataPlaneError(f"nft {what} failed: {err.strip()[:2000]}")

    async def _exec(self, args: list[str], *, what: str, stdin: str | None = None, missing_ok: bool = False) -> str:
        argv = [self._nft, *args]
        if self._netns is not None:
            argv = ["ip", "netns", "exec", self._netns, *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise DataPlaneError(f"nft {what}: cannot run {argv[0]}: {exc}") from exc
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as nft finishes, and a member being shut
            # down would then carry on renewing
            async with asyncio.timeout(self._timeout):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise DataPlaneError(f"nft {what}: no answer within {self._timeout:g}s") from exc
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip()
            if missing_ok and "No such file or directory" in text:
                return ""
            raise DataPlaneError(f"nft {what} failed (exit {proc.returncode}): {text[:2000]}")
        return out.decode()
