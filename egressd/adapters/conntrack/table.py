"""The conntrack entries of the flows egressd SNATs, over ctnetlink.

* **Which flows.** The SNAT rule sets a conntrack mark (``ct mark set ct mark
  and ~mask or mark``), so egressd's flows are those whose ``mark & mask ==
  mark``. Dumps are filtered by the kernel (``CTA_MARK``/``CTA_MARK_MASK``);
  events cannot be (ctnetlink multicasts every event), so they are filtered
  here. Only TCP and UDP entries with ``IPS_SRC_NAT`` are reported.
* **Two sockets.** Requests (dump, install, delete) go over one netlink socket
  owned by a single-thread executor: a netlink request blocks (a dump of
  10,000 entries takes tens of milliseconds), and one thread keeps them
  ordered. Events arrive on a second socket bound to the conntrack groups
  (new, update, destroy), read without blocking on the event loop.
* **Batches.** :meth:`install` and :meth:`delete` send up to ``chunk``
  requests in one ``send`` and read one acknowledgement per request
  (``NETLINK_CAP_ACK``: acknowledgements do not echo the request), so each
  entry gets its own error and one bad entry does not stop the rest.
* **Lost events.** When the event socket's buffer overflows the kernel drops
  events and the next read fails with ``ENOBUFS``: :meth:`events` yields an
  ``overflow`` event and goes on; the consumer reads the table again.
* ``netns``: when given, both sockets are opened in that named namespace (the
  tests and the benchmark); the daemon runs in its own and leaves it None.

The messages are built and read by :mod:`egressd.adapters.conntrack.ctnetlink`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import select
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_CREATE
from pyroute2.netlink.nfnetlink import (
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
)

from egressd.adapters.conntrack import ctnetlink
from egressd.core.conntrack_entries import Entry, Removal
from egressd.core.errors import DataPlaneError
from egressd.ports import ConntrackEvent, ConntrackFailure

log = logging.getLogger(__name__)

T = TypeVar("T")

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

BUFFER = 4 << 20
"""Bytes of socket buffer each way: a chunk of requests must fit the send
buffer (the kernel refuses a larger ``send`` with ``EMSGSIZE``), and a burst
of events the receive buffer (else they are lost: ``overflow``)."""
CHUNK = 512
"""Requests per ``send``: about 120 kB of IPv4 TCP creates, well inside the buffer."""
ACK_TIMEOUT = 5.0
"""Seconds to wait for the kernel's answers to one chunk; the kernel answers
in microseconds, so running out means acknowledgements were lost."""
READ = 1 << 18


def _groups() -> int:
    return sum(1 << (g - 1) for g in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY))


def _reason(code: int) -> str:
    if code == errno.EEXIST:
        return "exists"
    if code == errno.ENOENT:
        return "absent"
    return errno.errorcode.get(code, f"errno-{code}").lower()


def _open(netns: str | None, groups: int = 0) -> socket.socket:
    try:
        if netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        else:
            sock = pyroute2_netns.create_socket(
                netns=netns, family=socket.AF_NETLINK, socket_type=socket.SOCK_RAW, proto=NETLINK_NETFILTER
            )
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, groups))
    except OSError as exc:
        raise DataPlaneError(f"cannot open ctnetlink (netns {netns or 'own'}): {exc}") from exc
    return sock


class KernelConntrack:
    """:class:`egressd.ports.Conntrack` over ctnetlink.

    ``mark``/``mask``: egressd's flows are those with ``ct mark & mask == mark``.
    ``liberal``: installed TCP entries get ``IP_CT_TCP_FLAG_BE_LIBERAL`` in
    both directions. The new owner's kernel has seen none of the flow's
    segments, so its window tracking starts from the first one it sees; a
    liberal entry never declares a segment out of window (an invalid segment
    is not translated, and the server would get a reset from the egress IP).
    """

    def __init__(
        self, *, mark: int, mask: int = 0xFFFFFFFF, netns: str | None = None, liberal: bool = True, chunk: int = CHUNK
    ) -> None:
        if mark & ~mask:
            raise ValueError(f"mark {mark:#x} has bits outside its mask {mask:#x}")
        if not 1 <= chunk <= 4096:
            raise ValueError(f"chunk must be 1-4096 requests, got {chunk}")
        self._mark, self._mask = mark, mask
        self._netns = netns
        self._liberal = liberal
        self._chunk = chunk
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-ctnetlink")
        self._sock: socket.socket | None = None
        self._event_sock: socket.socket | None = None
        """The socket :meth:`events` reads, while it runs."""
        self._seq = 0
        self._buf = bytearray(READ)

    # -- the port ---------------------------------------------------------

    async def dump(self) -> list[Entry]:
        return await self._call(self._dump)

    async def install(self, entries: Sequence[Entry]) -> list[ConntrackFailure]:
        liberal = self._liberal
        failures = await self._call(
            self._batch, list(entries), lambda e, seq: ctnetlink.create_request(e, seq, liberal=liberal)
        )
        if failures:
            reasons = sorted({f.reason for f in failures})
            log.warning("installed %d conntrack entries, %d refused (%s)", len(entries) - len(failures), len(failures),
                        ", ".join(reasons))  # fmt: skip
        else:
            log.debug("installed %d conntrack entries", len(entries))
        return failures

    async def delete(self, flows: Sequence[Removal]) -> list[ConntrackFailure]:
        return await self._call(self._batch, list(flows), ctnetlink.delete_request)

    async def events(self) -> AsyncIterator[ConntrackEvent]:
        """Events with egressd's mark until cancelled (the socket is closed then)."""
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(self._executor, _open, self._netns, _groups())
        sock.setblocking(False)
        self._event_sock = sock
        try:
            while True:
                try:
                    data = await loop.sock_recv(sock, READ)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise DataPlaneError(f"conntrack events: {exc}") from exc
                    log.warning("conntrack events were lost (socket buffer full); the table must be read again")
                    yield ConntrackEvent("overflow")
                    continue
                for event in self._events(data):
                    yield event
        finally:
            self._event_sock = None
            sock.close()

    def events_pending(self) -> bool:
        """Whether the events socket holds messages not read yet."""
        sock = self._event_sock
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    async def close(self) -> None:
        await self._call(self._close)
        self._executor.shutdown(wait=True)

    # -- internals (run in the executor thread, except _events) -----------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _ours(self, mark: int) -> bool:
        return mark & self._mask == self._mark

    def _events(self, data: bytes) -> Iterator[ConntrackEvent]:
        for message in ctnetlink.messages(data):
            try:
                record, mark = ctnetlink.parse(message)
            except ctnetlink.Malformed as exc:
                log.warning("conntrack event not understood: %s", exc)
                continue
            if record is None or not self._ours(mark):
                continue
            if isinstance(record, Removal):
                yield ConntrackEvent("destroy", record)
            else:
                yield ConntrackEvent("new" if message.flags & NLM_F_CREATE else "update", record)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = _open(self._netns)
            self._sock.settimeout(ACK_TIMEOUT)
        return self._sock

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            n = sock.recv_into(self._buf)
        except OSError as exc:
            self._close()  # answers may still be queued on it: a fresh socket starts clean
            raise DataPlaneError(f"ctnetlink read failed: {exc}") from exc
        return bytes(self._buf[:n])

    def _read(self, sock: socket.socket) -> Iterator[ctnetlink.NetlinkMessage]:
        return ctnetlink.messages(self._recv(sock))

    def _dump(self) -> list[Entry]:
        sock = self._socket()
        seq = self._next_seq()
        try:
            sock.send(ctnetlink.dump_request(seq, self._mark, self._mask))
        except OSError as exc:
            raise DataPlaneError(f"ctnetlink dump request failed: {exc}") from exc
        found: list[Entry] = []
        while True:
            for message in self._read(sock):
                if message.seq != seq:
                    continue
                if message.done:
                    return found
                if message.error:
                    raise DataPlaneError(f"conntrack dump failed: {errno.errorcode.get(message.error, message.error)}")
                try:
                    record, mark = ctnetlink.parse(message)
                except ctnetlink.Malformed as exc:
                    log.warning("conntrack entry not understood, left out of the dump: %s", exc)
                    continue
                if isinstance(record, Entry) and self._ours(mark):
                    found.append(record)

    def _batch(
        self, records: Sequence[Entry] | Sequence[Removal], build: Callable[[Any, int], bytes]
    ) -> list[ConntrackFailure]:
        sock = self._socket()
        failures: list[ConntrackFailure] = []
        for start in range(0, len(records), self._chunk):
            waiting: dict[int, Entry | Removal] = {}
            parts = []
            for record in records[start : start + self._chunk]:
                seq = self._next_seq()
                waiting[seq] = record
                parts.append(build(record, seq))
            try:
                sock.send(b"".join(parts))
            except OSError as exc:
                raise DataPlaneError(f"ctnetlink send of {len(parts)} requests failed: {exc}") from exc
            while waiting:
                for seq, code in ctnetlink.acks(self._recv(sock)):
                    if seq not in waiting:
                        continue  # an answer to an earlier call that gave up
                    record = waiting.pop(seq)
                    if code:
                        failures.append(ConntrackFailure(record, code, _reason(code)))
        return failures
