"""The mesh's datagrams: heartbeats and promises between gateway candidates,
each authenticated with HMAC-SHA256 under the cluster key.

Layout of one datagram (at most :data:`MAX_DATAGRAM` bytes)::

    b"EGM1" | body (compact JSON, UTF-8) | HMAC-SHA256(key, b"EGM1" + body)  (32 bytes)

The tag is checked (in constant time) before the body is parsed, so bytes
from anyone without the key are never read beyond their length. A heartbeat
names its sender, the sender's process (``incarnation``), a sequence number
that grows with every heartbeat of that process, and a random ``nonce``; a
promise answers one heartbeat and echoes its nonce, so a recorded promise
cannot be replayed to a later heartbeat (the holder counts a promise from the
send time of the heartbeat whose nonce it carries, and forgets nonces it no
longer waits for). :class:`ReplayGuard` drops a heartbeat whose sequence is
not newer than the last one taken from the same process.

Pure: no sockets, no clock; the caller gives times and random nonces.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeGuard

from egressd.core.lease import EPOCH_MODULUS

MAGIC = b"EGM1"
TAG_SIZE = 32
MAX_DATAGRAM = 1200
"""Bytes: a datagram fits one packet on any path (IPv6's minimum MTU is 1280)."""
MIN_KEY = 32
"""Bytes: the shortest cluster key accepted (HMAC-SHA256's block of security)."""
MAX_NAME = 253
NONCE_HEX = 32
MAX_SEQ = 2**63 - 1
MAX_PROMISE_MS = 300_000
MAX_TOKEN = 64
"""Characters of an incarnation token, or of a resourceVersion in a wake
(opaque to clients; etcd's are decimal revisions): printable ASCII."""

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_HEX = re.compile(rf"^[0-9a-f]{{{NONCE_HEX}}}$")


class MeshRejected(Exception):
    """A datagram that is not taken, with the reason (a metric label: short, fixed)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Heartbeat:
    sender: str
    incarnation: str
    seq: int
    nonce: str
    api_ok: bool
    """Whether the sender's last API call succeeded (for the operators' view)."""


@dataclass(frozen=True)
class Promise:
    sender: str
    incarnation: str
    to: str
    nonce: str
    """The nonce of the heartbeat this answers."""
    duration_ms: int
    """How long the sender keeps the promise, from when it answered."""


@dataclass(frozen=True)
class Wake:
    sender: str
    incarnation: str
    seq: int
    """From the sender's heartbeat sequence: grows with every datagram of the process."""
    ip: str
    """The egress IP whose claim was released (canonical text form)."""
    epoch: int
    """The released claim's epoch (``leaseTransitions``)."""
    resource_version: str
    """The released claim's resourceVersion, as the release write's answer gave it."""
    to: str
    """The successor the claim was released to."""


@dataclass(frozen=True)
class Offer:
    """An owner about to leave an IP offers its claim to a successor: if the
    successor accepts, the owner writes the claim naming it (a **transfer**)
    instead of writing it free, and the successor serves on that write
    without one of its own (:mod:`egressd.core.transfer`)."""

    sender: str
    incarnation: str
    seq: int
    """From the sender's heartbeat sequence: grows with every datagram of the process."""
    ip: str
    """The egress IP whose claim is offered (canonical text form)."""
    epoch: int
    """The offered claim's epoch (``leaseTransitions``) as the owner holds it."""
    nonce: str
    """Random: the accept echoes it, so a recorded accept answers nothing later."""
    to: str
    """The successor offered the claim."""


@dataclass(frozen=True)
class Accept:
    """The successor's answer to an :class:`Offer`: it takes the claim if it is
    written to this process (``incarnation``) soon."""

    sender: str
    incarnation: str
    """The accepting process: the transfer names it, so a restarted process never serves on it."""
    to: str
    ip: str
    epoch: int
    """The offered epoch, echoed."""
    nonce: str
    """The offer's nonce, echoed."""


@dataclass(frozen=True)
class Listen:
    """A node that steers traffic to gateway candidates asks one of them for
    news of the IPs it starts serving (:class:`Serving`), for a while
    (:data:`egressd.core.news.LISTEN_KEEP` leases); sent again before that ends.
    The news goes to the datagram's source address."""

    sender: str
    incarnation: str
    seq: int
    """Grows with every datagram of the process (a recorded listen is refused)."""


@dataclass(frozen=True)
class Serving:
    """A gateway tells its listeners that it serves these IPs now, each on its
    claim at the epoch given: the steering nodes route to it at once, before
    their watch brings the claim (:mod:`egressd.core.news`)."""

    sender: str
    incarnation: str
    seq: int
    """From the sender's heartbeat sequence: grows with every datagram of the process."""
    claims: tuple[tuple[str, int], ...]
    """(egress IP in canonical text form, epoch of the claim naming the sender),
    1 to :data:`MAX_SERVING_CLAIMS`, no IP twice."""


MAX_SERVING_CLAIMS = 12
"""IPs in one :class:`Serving` datagram: twelve of the longest (IPv6, largest
epoch) with the longest names still fit :data:`MAX_DATAGRAM`."""


Message: TypeAlias = "Heartbeat | Promise | Wake | Offer | Accept | Listen | Serving | CtBatch"


def check_key(key: bytes) -> bytes:
    """The key, or ValueError naming what is wrong with it."""
    if len(key) < MIN_KEY:
        raise ValueError(f"the mesh key must be at least {MIN_KEY} bytes, got {len(key)}")
    return key


def encode(message: Message, key: bytes) -> bytes:
    if isinstance(message, CtBatch):
        return encode_ct(message, key)
    if isinstance(message, Heartbeat):
        body = {"k": "hb", "from": message.sender, "inc": message.incarnation, "seq": message.seq,
                "nonce": message.nonce, "api": message.api_ok}  # fmt: skip
    elif isinstance(message, Promise):
        body = {"k": "promise", "from": message.sender, "inc": message.incarnation, "to": message.to,
                "nonce": message.nonce, "ms": message.duration_ms}  # fmt: skip
    elif isinstance(message, Offer):
        body = {"k": "offer", "from": message.sender, "inc": message.incarnation, "seq": message.seq,
                "ip": message.ip, "epoch": message.epoch, "nonce": message.nonce,
                "to": message.to}  # fmt: skip
    elif isinstance(message, Accept):
        body = {"k": "accept", "from": message.sender, "inc": message.incarnation, "to": message.to,
                "ip": message.ip, "epoch": message.epoch, "nonce": message.nonce}  # fmt: skip
    elif isinstance(message, Listen):
        body = {"k": "listen", "from": message.sender, "inc": message.incarnation, "seq": message.seq}
    elif isinstance(message, Serving):
        if not 0 < len(message.claims) <= MAX_SERVING_CLAIMS:
            raise ValueError(f"a serving datagram carries 1 to {MAX_SERVING_CLAIMS} claims, not {len(message.claims)}")
        body = {"k": "serving", "from": message.sender, "inc": message.incarnation, "seq": message.seq,
                "ips": [[ip, epoch] for ip, epoch in message.claims]}  # fmt: skip
    else:
        body = {"k": "wake", "from": message.sender, "inc": message.incarnation, "seq": message.seq,
                "ip": message.ip, "epoch": message.epoch, "rv": message.resource_version,
                "to": message.to}  # fmt: skip
    raw = MAGIC + json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    datagram = raw + hmac.new(key, raw, hashlib.sha256).digest()
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f"a mesh datagram of {len(datagram)} bytes is larger than {MAX_DATAGRAM}")
    return datagram


def decode(datagram: bytes, key: bytes) -> Message:
    """The message in ``datagram``, or :class:`MeshRejected`: ``size``,
    ``unsigned`` (no magic), ``bad-signature``, ``malformed``."""
    if not len(MAGIC) + TAG_SIZE < len(datagram) <= MAX_DATAGRAM:
        raise MeshRejected("size", f"{len(datagram)} bytes")
    if datagram.startswith(CT_MAGIC):
        return decode_ct(datagram, key)
    if not datagram.startswith(MAGIC):
        raise MeshRejected("unsigned", "no mesh header")
    raw, tag = datagram[:-TAG_SIZE], datagram[-TAG_SIZE:]
    if not hmac.compare_digest(hmac.new(key, raw, hashlib.sha256).digest(), tag):
        raise MeshRejected("bad-signature")
    try:
        body = json.loads(raw[len(MAGIC) :].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MeshRejected("malformed", f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MeshRejected("malformed", "not an object")
    return _message(body)


def _message(body: dict[str, object]) -> Message:
    kind = body.get("k")
    parse = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parse is None:
        raise MeshRejected("malformed", f"k: unknown kind {str(kind)[:20]!r}")
    return parse(body)


def _heartbeat(body: dict[str, object]) -> Heartbeat:
    _keys(body, {"k", "from", "inc", "seq", "nonce", "api"})
    seq = _int(body, "seq", MAX_SEQ)
    api = body["api"]
    if not isinstance(api, bool):
        raise MeshRejected("malformed", "api: must be true or false")
    return Heartbeat(_name(body, "from"), _token(body, "inc"), seq, _nonce(body), api)


def _wake(body: dict[str, object]) -> Wake:
    _keys(body, {"k", "from", "inc", "seq", "ip", "epoch", "rv", "to"})
    seq = _int(body, "seq", MAX_SEQ)
    epoch = _int(body, "epoch", EPOCH_MODULUS - 1)
    return Wake(_name(body, "from"), _token(body, "inc"), seq, _ip(body), epoch, _token(body, "rv"), _name(body, "to"))


def _offer(body: dict[str, object]) -> Offer:
    _keys(body, {"k", "from", "inc", "seq", "ip", "epoch", "nonce", "to"})
    seq = _int(body, "seq", MAX_SEQ)
    epoch = _int(body, "epoch", EPOCH_MODULUS - 1)
    return Offer(_name(body, "from"), _token(body, "inc"), seq, _ip(body), epoch, _nonce(body), _name(body, "to"))


def _accept(body: dict[str, object]) -> Accept:
    _keys(body, {"k", "from", "inc", "to", "ip", "epoch", "nonce"})
    epoch = _int(body, "epoch", EPOCH_MODULUS - 1)
    return Accept(_name(body, "from"), _token(body, "inc"), _name(body, "to"), _ip(body), epoch, _nonce(body))


def _listen(body: dict[str, object]) -> Listen:
    _keys(body, {"k", "from", "inc", "seq"})
    return Listen(_name(body, "from"), _token(body, "inc"), _int(body, "seq", MAX_SEQ))


def _serving(body: dict[str, object]) -> Serving:
    _keys(body, {"k", "from", "inc", "seq", "ips"})
    seq = _int(body, "seq", MAX_SEQ)
    return Serving(_name(body, "from"), _token(body, "inc"), seq, _claims(body))


def _promise(body: dict[str, object]) -> Promise:
    _keys(body, {"k", "from", "inc", "to", "nonce", "ms"})
    ms = body["ms"]
    if isinstance(ms, bool) or not isinstance(ms, int) or not 0 < ms <= MAX_PROMISE_MS:
        raise MeshRejected("malformed", f"ms: must be 1 to {MAX_PROMISE_MS}")
    return Promise(_name(body, "from"), _token(body, "inc"), _name(body, "to"), _nonce(body), ms)


_PARSERS: dict[str, Callable[[dict[str, object]], Message]] = {
    "hb": _heartbeat,
    "wake": _wake,
    "offer": _offer,
    "accept": _accept,
    "listen": _listen,
    "serving": _serving,
    "promise": _promise,
}


def _keys(body: dict[str, object], expected: set[str]) -> None:
    if set(body) != expected:
        extra = sorted(set(body) - expected)
        missing = sorted(expected - set(body))
        raise MeshRejected("malformed", f"fields: missing {missing}, unknown {[e[:20] for e in extra]}")


def _int(body: dict[str, object], key: str, most: int) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise MeshRejected("malformed", f"{key}: must be 0 to {most}")
    return value


def _ip(body: dict[str, object], key: str = "ip") -> str:
    """An IP address in its canonical form (the form claims are named by)."""
    value = body[key]
    if not isinstance(value, str) or len(value) > 45:
        raise MeshRejected("malformed", f"{key}: not an IP address")
    try:
        canonical = str(ipaddress.ip_address(value))
    except ValueError:
        raise MeshRejected("malformed", f"{key}: not an IP address") from None
    if canonical != value:
        raise MeshRejected("malformed", f"{key}: not in canonical form")
    return value


def _claims(body: dict[str, object]) -> tuple[tuple[str, int], ...]:
    """The ``ips`` of a serving datagram: 1 to MAX_SERVING_CLAIMS pairs
    [IP in canonical form, epoch], no IP twice."""
    value = body["ips"]
    if not isinstance(value, list) or not 0 < len(value) <= MAX_SERVING_CLAIMS:
        raise MeshRejected("malformed", f"ips: must be a list of 1 to {MAX_SERVING_CLAIMS} [ip, epoch] pairs")
    claims: dict[str, int] = {}
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise MeshRejected("malformed", f"ips[{i}]: must be an [ip, epoch] pair")
        ip = _ip({f"ips[{i}]": pair[0]}, f"ips[{i}]")
        epoch = _int({f"ips[{i}].epoch": pair[1]}, f"ips[{i}].epoch", EPOCH_MODULUS - 1)
        if ip in claims:
            raise MeshRejected("malformed", f"ips[{i}]: {ip} is named twice")
        claims[ip] = epoch
    return tuple(claims.items())


def _name(body: dict[str, object], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or not _NAME.match(value):
        raise MeshRejected("malformed", f"{key}: not a node name")
    return value


def fits_token(value: object) -> TypeGuard[str]:
    """Whether ``value`` can travel as an incarnation or a resourceVersion."""
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN and value.isascii() and value.isprintable()


def _token(body: dict[str, object], key: str) -> str:
    value = body[key]
    if not fits_token(value):
        raise MeshRejected("malformed", f"{key}: must be 1 to {MAX_TOKEN} printable ASCII characters")
    return value


def _nonce(body: dict[str, object]) -> str:
    value = body["nonce"]
    if not isinstance(value, str) or not _HEX.match(value):
        raise MeshRejected("malformed", f"nonce: must be {NONCE_HEX} lowercase hex digits")
    return value


class ReplayGuard:
    """Takes each heartbeat (or each wake: one guard per kind) of a process
    once and in order: a datagram whose sequence is not above the last one
    taken from the same sender and incarnation is ``replayed``. A new
    incarnation of a sender starts afresh (its process restarted) and retires
    the one before: a datagram of a retired incarnation is
    ``retired-incarnation``, so that recordings of two processes of one node
    cannot be played in turn, each taken as new. The guard remembers at most
    ``size`` senders and, per sender, the last ``retired`` incarnations."""

    def __init__(self, size: int = 1024, retired: int = 64) -> None:
        self._last: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._retired: dict[str, OrderedDict[str, None]] = {}
        self._size = size
        self._keep_retired = retired

    def admit(self, hb: Heartbeat | Wake | Offer | Listen | Serving) -> None:
        last = self._last.get(hb.sender)
        retired = self._retired.get(hb.sender)
        if retired is not None and hb.incarnation in retired:
            raise MeshRejected("retired-incarnation", f"{hb.sender} incarnation {hb.incarnation} was succeeded")
        if last is not None and last[0] == hb.incarnation and hb.seq <= last[1]:
            raise MeshRejected("replayed", f"{hb.sender} seq {hb.seq} <= {last[1]}")
        if last is not None and last[0] != hb.incarnation:
            retired = self._retired.setdefault(hb.sender, OrderedDict())
            retired[last[0]] = None
            while len(retired) > self._keep_retired:
                retired.popitem(last=False)
        self._last[hb.sender] = (hb.incarnation, hb.seq)
        self._last.move_to_end(hb.sender)
        while len(self._last) > self._size:
            gone, _ = self._last.popitem(last=False)
            self._retired.pop(gone, None)


class Outstanding:
    """The heartbeats we sent and still take promises for: nonce -> send
    time. A promise is taken only for a nonce held here, once, and only from
    the peer the heartbeat went to; nonces older than ``keep`` seconds are
    forgotten (a promise that late would be worth nothing anyway)."""

    def __init__(self, keep: float) -> None:
        self._sent: dict[tuple[str, str], float] = {}
        self._keep = keep

    def sent(self, peer: str, nonce: str, at: float) -> None:
        self._sent[(peer, nonce)] = at
        self.expire(at)

    def expire(self, now: float) -> None:
        for k in [k for k, at in self._sent.items() if now - at > self._keep]:
            del self._sent[k]

    def answer(self, promise: Promise, me: str) -> float:
        """The send time of the heartbeat ``promise`` answers (which it is then
        counted from), or :class:`MeshRejected` ``stale`` or ``misdirected``."""
        if promise.to != me:
            raise MeshRejected("misdirected", f"promise to {promise.to}")
        at = self._sent.pop((promise.sender, promise.nonce), None)
        if at is None:
            raise MeshRejected("stale", f"no heartbeat to {promise.sender} waits for this nonce")
        return at


# --- the conntrack stream -------------------------------------------------------------------
#
# Conntrack entries travel in binary datagrams of their own (JSON would not
# leave room for a useful batch), signed the same way:
#
#     b"EGC1" | flags (u8) | seq (u64) | ip length (u8) | ip (4 or 16)
#             | sender length (u8) | sender | incarnation length (u8) | incarnation
#             | payload (egressd.core.conntrack_entries, possibly empty) | HMAC-SHA256 (32)
#
# ``seq`` numbers the datagrams of one stream (sender process, receiver, IP)
# from 1, so a receiver sees a lost datagram as a gap and asks for a resync.

CT_MAGIC = b"EGC1"
CT_START = 0x01
"""The first datagram of a full resync: what the receiver holds for this
sender and IP and does not get again before ``CT_END`` is gone."""
CT_END = 0x02
"""The last datagram of a full resync (may be the first as well)."""
CT_REQUEST = 0x04
"""A candidate asks the IP's holder for a full resync (no payload)."""
_CT_FLAGS = CT_START | CT_END | CT_REQUEST
_CT_HEAD = struct.Struct("!BQ")


@dataclass(frozen=True)
class CtBatch:
    """Conntrack entries of one egress IP, from its holder to a candidate
    (or, with ``CT_REQUEST``, a candidate's request for a resync)."""

    sender: str
    incarnation: str
    ip: str
    seq: int
    flags: int
    payload: bytes = b""


def ct_header_size(sender: str, incarnation: str, ip: str) -> int:
    """Bytes a :class:`CtBatch` of these fields takes besides its payload."""
    packed = ipaddress.ip_address(ip).packed
    return len(CT_MAGIC) + _CT_HEAD.size + 3 + len(packed) + len(sender.encode()) + len(incarnation.encode())


def ct_payload_limit(sender: str, incarnation: str, ip: str) -> int:
    """The largest payload a :class:`CtBatch` of these fields can carry."""
    return MAX_DATAGRAM - TAG_SIZE - ct_header_size(sender, incarnation, ip)


def encode_ct(batch: CtBatch, key: bytes) -> bytes:
    if batch.flags & ~_CT_FLAGS or not 0 < batch.seq <= MAX_SEQ:
        raise ValueError(f"a conntrack batch with flags {batch.flags:#x} and seq {batch.seq} cannot be sent")
    sender, incarnation = batch.sender.encode(), batch.incarnation.encode()
    packed = ipaddress.ip_address(batch.ip).packed
    raw = b"".join(
        [
            CT_MAGIC,
            _CT_HEAD.pack(batch.flags, batch.seq),
            bytes([len(packed)]),
            packed,
            bytes([len(sender)]),
            sender,
            bytes([len(incarnation)]),
            incarnation,
            batch.payload,
        ]
    )
    datagram = raw + hmac.new(key, raw, hashlib.sha256).digest()
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f"a conntrack datagram of {len(datagram)} bytes is larger than {MAX_DATAGRAM}")
    return datagram


def decode_ct(datagram: bytes, key: bytes) -> CtBatch:
    """The batch in ``datagram`` (size checked by :func:`decode`), or
    :class:`MeshRejected` ``bad-signature`` or ``malformed``. The payload is
    not read here (:func:`egressd.core.conntrack_entries.decode_batch`)."""
    raw, tag = datagram[:-TAG_SIZE], datagram[-TAG_SIZE:]
    if not hmac.compare_digest(hmac.new(key, raw, hashlib.sha256).digest(), tag):
        raise MeshRejected("bad-signature")
    at = len(CT_MAGIC)

    def take(n: int, what: str) -> bytes:
        nonlocal at
        if at + n > len(raw):
            raise MeshRejected("malformed", f"conntrack batch ends before its {what}")
        out = raw[at : at + n]
        at += n
        return out

    flags, seq = _CT_HEAD.unpack(take(_CT_HEAD.size, "header"))
    if flags & ~_CT_FLAGS:
        raise MeshRejected("malformed", f"flags: unknown bits {flags:#x}")
    if not 0 < seq <= MAX_SEQ:
        raise MeshRejected("malformed", f"seq: must be 1 to {MAX_SEQ}")
    size = take(1, "ip length")[0]
    if size not in (4, 16):
        raise MeshRejected("malformed", f"ip: {size} bytes is neither IPv4 nor IPv6")
    ip = str(ipaddress.ip_address(take(size, "ip")))
    sender = take(take(1, "sender length")[0], "sender").decode("ascii", errors="replace")
    incarnation = take(take(1, "incarnation length")[0], "incarnation").decode("ascii", errors="replace")
    body: dict[str, object] = {"from": sender, "inc": incarnation}
    name, token = _name(body, "from"), _token(body, "inc")
    payload = raw[at:]
    if flags & CT_REQUEST and (payload or flags & (CT_START | CT_END)):
        raise MeshRejected("malformed", "a resync request carries nothing else")
    return CtBatch(name, token, ip, seq, flags, payload)
