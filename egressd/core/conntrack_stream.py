"""The conntrack stream between an egress IP's holder and its candidates:
what the holder sends (:class:`Outbox`) and what a candidate keeps
(:class:`Replica`). Pure: times are given, datagrams are values
(:class:`egressd.core.mesh_messages.CtBatch`); the runtime sends and receives.

**Holder.** Every change of a flow egressd SNATs (the kernel's new, update
and destroy events of entries with egressd's mark) is noted per egress IP;
the latest change of a flow wins. Every ``batchInterval`` the changes of
each IP are packed (:func:`egressd.core.conntrack_entries.encode_batch`)
into datagrams to each other candidate of the IP. A **full resync** of an IP
to a peer is every entry of the IP from a dump, in datagrams flagged
``CT_START`` (first) and ``CT_END`` (last). Datagrams of one stream (this
process, the peer, the IP) are numbered from 1.

**Candidate.** Keeps the entries per (sender, IP), and:

1. refuses every record of a sender that is no candidate of the IP
   (``not-candidate``) and the entries of an IP the sender does not hold a
   claim on (``not-owned``, :func:`~egressd.core.conntrack_entries.sort_out`);
2. refuses a datagram whose number is not above the last one taken from the
   sender's process (``replayed``); a gap in the numbers, a new process of
   the sender, or a resync whose start was lost asks the holder for a full
   resync (:attr:`Taken.resync`), and the holder's resync replaces what was
   kept: what it does not repeat is gone at its end;
3. keeps at most ``max_per_peer`` entries per sender (all IPs together);
   beyond it a new flow is refused (``over-limit``), an update of a kept
   one is taken;
4. when a sender holds an IP, forgets what other senders sent for it (an
   earlier holder's flows are the new holder's now, and it streams them).

At takeover the new holder installs :meth:`Replica.entries_for` the IP, most
recently updated first, with their timeouts less the time they were kept.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from egressd.core.conntrack_entries import Entry, EntryRejected, Record, Removal, decode_batch, encode_batch, sort_out
from egressd.core.mesh_messages import CT_END, CT_START, CtBatch, ct_payload_limit

# --- the holder's side --------------------------------------------------------------------------


class Outbox:
    """The changes of the flows this node SNATs, per egress IP, until sent;
    and the numbering of each stream."""

    def __init__(self, node: str, incarnation: str) -> None:
        self.node = node
        self.incarnation = incarnation
        self._pending: dict[str, dict[Removal, Record]] = {}
        self._ip_of: dict[Removal, str] = {}
        """The egress IP of each flow seen (a destroy event names the flow only)."""
        self._seq: dict[tuple[str, str], int] = {}

    def change(self, record: Record) -> str | None:
        """Note a flow's new state (an entry) or its end (a removal); the
        egress IP it concerns (None: a flow never seen, nothing to send)."""
        if isinstance(record, Entry):
            ip = str(record.egress_ip)
            self._ip_of[record.key] = ip
        else:
            found = self._ip_of.pop(record, None)
            if found is None:
                return None
            ip = found
        self._pending.setdefault(ip, {})[record.key if isinstance(record, Entry) else record] = record
        return ip

    def known(self, entries: Iterable[Entry]) -> None:
        """Learn the egress IP of flows from a dump (their destroy events then find it)."""
        for entry in entries:
            self._ip_of[entry.key] = str(entry.egress_ip)

    def pending(self) -> list[str]:
        """The egress IPs with changes not sent yet."""
        return [ip for ip, changes in self._pending.items() if changes]

    def take(self, ip: str) -> list[Record]:
        """The changes of ``ip`` not sent yet, oldest first; they count as sent."""
        return list(self._pending.pop(ip, {}).values())

    def forget(self, ip: str) -> None:
        """``ip`` is no longer held here: its changes go nowhere."""
        self._pending.pop(ip, None)
        for key in [k for k, i in self._ip_of.items() if i == ip]:
            del self._ip_of[key]

    def restart(self, peer: str, ip: str) -> None:
        """Number the stream to ``peer`` for ``ip`` from 1 again (never needed
        for safety: a receiver takes only numbers above the last one)."""
        self._seq.pop((peer, ip), None)

    def datagrams(self, peer: str, ip: str, records: Sequence[Record], *, resync: bool = False) -> list[CtBatch]:
        """``records`` of ``ip`` for ``peer``, in numbered datagrams; with
        ``resync`` they are all of the IP's entries (flagged start and end;
        an IP without flows gives one empty datagram)."""
        limit = ct_payload_limit(self.node, self.incarnation, ip)
        payloads = encode_batch(records, limit) if records else []
        if resync and not payloads:
            payloads = [b""]
        out = []
        for i, payload in enumerate(payloads):
            flags = (CT_START if resync and i == 0 else 0) | (CT_END if resync and i == len(payloads) - 1 else 0)
            seq = self._seq.get((peer, ip), 0) + 1
            self._seq[(peer, ip)] = seq
            out.append(CtBatch(self.node, self.incarnation, ip, seq, flags, payload))
        return out


# --- the candidate's side -----------------------------------------------------------------------


@dataclass
class _Stream:
    incarnation: str
    last_seq: int | None = None
    synced: bool = False
    """A full resync of this process was taken whole."""
    resync: set[Removal] | None = None
    """Flows repeated by the resync under way (None: none under way)."""
    entries: dict[Removal, tuple[Entry, float]] = field(default_factory=dict)
    last_at: float = 0.0
    """When the last datagram of the stream was taken."""


@dataclass(frozen=True)
class Taken:
    """What one datagram did."""

    taken: int = 0
    """Records applied (entries kept or updated, removals)."""
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Records (or, for ``replayed`` and ``malformed``, datagrams) refused, by reason."""
    resync: bool = False
    """Ask the sender for a full resync of the IP."""
    detail: str = ""


class Replica:
    """The entries the holders of egress IPs sent this node."""

    def __init__(self, max_per_peer: int) -> None:
        if max_per_peer < 1:
            raise ValueError(f"max_per_peer must be at least 1, got {max_per_peer}")
        self.max_per_peer = max_per_peer
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._count: collections.Counter[str] = collections.Counter()

    def take(self, batch: CtBatch, now: float, *, candidate: bool, holds: bool) -> Taken:
        """Apply one datagram from ``batch.sender`` (the sender's process is
        checked by the caller). ``candidate``: the sender is a candidate of
        the IP with us; ``holds``: the sender holds the IP's claim (the view)."""
        # 1. the payload, whole or not at all
        try:
            records = decode_batch(batch.payload) if batch.payload else []
        except EntryRejected as exc:
            return Taken(refused=collections.Counter({"malformed": 1}), resync=True, detail=str(exc))
        if not candidate:
            return Taken(refused=collections.Counter({"not-candidate": max(1, len(records))}),
                         detail=f"{batch.sender} is no candidate of {batch.ip}")  # fmt: skip
        # 2. the stream and its numbering
        stream = self._stream(batch.sender, batch.ip, batch.incarnation)
        if stream.last_seq is not None and batch.seq <= stream.last_seq:
            return Taken(refused=collections.Counter({"replayed": 1}),
                         detail=f"seq {batch.seq} <= {stream.last_seq} from {batch.sender}")  # fmt: skip
        gap = stream.last_seq is not None and batch.seq != stream.last_seq + 1 and not batch.flags & CT_START
        stream.last_seq = batch.seq
        stream.last_at = now
        if batch.flags & CT_START:
            stream.resync = set()
        elif gap:
            stream.resync = None  # a resync with a hole (if one was under way): the next one replaces it
            stream.synced = False  # something is missing until a whole resync came
        # 3. the records
        taken, refused = sort_out(records, lambda ip: holds and str(ip) == batch.ip)
        counts = collections.Counter(exc.reason for _, exc in refused)
        if counts["not-owned"] and not holds:
            stream.synced = False  # our view may be behind the claims: asked again once quiet
        applied = self._apply(batch.sender, stream, taken, now, counts)
        # 4. the end of a resync: what it did not repeat is gone
        ask = self._end(batch, stream) if batch.flags & CT_END else gap
        if holds:
            self._forget_others(batch.sender, batch.ip)
        return Taken(taken=applied, refused=counts, resync=ask or not (stream.synced or stream.resync is not None))

    def _apply(
        self, sender: str, stream: _Stream, records: Iterable[Record], now: float, refused: collections.Counter[str]
    ) -> int:
        applied = 0
        for record in records:
            if isinstance(record, Removal):
                if stream.entries.pop(record, None) is not None:
                    self._count[sender] -= 1
                applied += 1
                continue
            if stream.entries.pop(record.key, None) is None:
                if self._count[sender] >= self.max_per_peer:
                    refused["over-limit"] += 1
                    continue
                self._count[sender] += 1
            stream.entries[record.key] = (record, now)  # at the end: the dict is in update order
            if stream.resync is not None:
                stream.resync.add(record.key)
            applied += 1
        return applied

    def _end(self, batch: CtBatch, stream: _Stream) -> bool:
        """The last datagram of a resync; whether to ask for another (its start was lost)."""
        if stream.resync is None:
            return True
        for key in [k for k in stream.entries if k not in stream.resync]:
            del stream.entries[key]
            self._count[batch.sender] -= 1
        stream.resync = None
        stream.synced = True
        return False

    def _stream(self, sender: str, ip: str, incarnation: str) -> _Stream:
        stream = self._streams.get((sender, ip))
        if stream is None or stream.incarnation != incarnation:
            # a new process of the sender: keep what it had sent until its resync replaces it
            old = stream.entries if stream is not None else {}
            stream = _Stream(incarnation, entries=old)
            self._streams[(sender, ip)] = stream
        return stream

    def _forget_others(self, sender: str, ip: str) -> None:
        for key in [k for k in self._streams if k[1] == ip and k[0] != sender]:
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        stream = self._streams.pop(key)
        self._count[key[0]] -= len(stream.entries)

    def unsynced(self, now: float, quiet: float) -> list[tuple[str, str]]:
        """(sender, IP) of the streams without a whole resync that have had no
        datagram for ``quiet`` seconds: their holder is asked again."""
        return [key for key, s in self._streams.items() if not s.synced and now - s.last_at >= quiet]

    def kept(self, ip: str) -> list[tuple[Entry, float]]:
        """The entries kept for ``ip`` (from whichever sender held it) with
        the time each was last updated, most recently updated first. Cheap
        (the takeover path): a stream's entries are kept in update order,
        and :func:`aged` adjusts their timeouts chunk by chunk."""
        streams = [s for (_, i), s in self._streams.items() if i == ip]
        if len(streams) == 1:
            return list(reversed(streams[0].entries.values()))
        held = [h for s in streams for h in s.entries.values()]
        held.sort(key=lambda h: h[1], reverse=True)
        return held

    def entries_for(self, ip: str, now: float) -> list[Entry]:
        """:meth:`kept`, :func:`aged`."""
        return aged(self.kept(ip), now)

    def forget(self, ip: str) -> None:
        """Forget what was kept for ``ip`` (installed at a takeover: this
        node's own stream carries those flows from now on)."""
        for key in [k for k in self._streams if k[1] == ip]:
            self._drop(key)

    def held(self) -> dict[str, int]:
        """Entries kept, per sender."""
        return {sender: n for sender, n in self._count.items() if n}

    def held_for(self, ip: str) -> int:
        return sum(len(s.entries) for (_, i), s in self._streams.items() if i == ip)


def aged(held: Iterable[tuple[Entry, float]], now: float) -> list[Entry]:
    """Kept entries with their timeouts less the whole seconds they were
    kept (a flow's entry times out on the holder as well); those that would
    have expired are left out."""
    out = []
    for entry, at in held:
        left = entry.timeout - int(now - at)
        if left >= 1:
            out.append(entry if left == entry.timeout else replace(entry, timeout=left))
    return out
