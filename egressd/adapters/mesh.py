"""The mesh's UDP socket: signed datagrams to and from the other gateway candidates.

One socket per daemon, bound to the node's address and the mesh port. What
arrives is checked by :func:`egressd.core.mesh_messages.decode` before
anything else looks at it (size, signature, then fields); what fails is
dropped and counted by reason (:attr:`MeshSocket.rejected`), and logged at
most once per reason and sender address per :data:`REPORT_INTERVAL`, so a
flood costs a counter increment per datagram, not a log line. Accepted
messages go into a bounded queue; when the reader falls behind, the oldest
are dropped and counted (``overflow``): heartbeats and promises are
periodic, a newer one supersedes an older one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time

from egressd.core.mesh_messages import MeshRejected, Message, check_key, decode, encode
from egressd.ports import MeshReceived

log = logging.getLogger(__name__)

REPORT_INTERVAL = 60.0
"""Seconds between two log lines about the same reason and sender."""
QUEUE_SIZE = 1024
RECEIVE_BUFFER = 4 << 20
"""Bytes of the socket's receive buffer: a conntrack resync of 10,000 flows
is about 390 kB, arriving faster than a busy daemon reads it; the default
(about 200 kB) overflowed and the resync had to be sent again."""
SO_RCVBUFFORCE = 33


def _receive_buffer(sock: socket.socket | None) -> None:
    """Raise the receive buffer (past ``rmem_max`` with CAP_NET_ADMIN, which
    the daemon has; else as far as ``rmem_max`` allows)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError as exc:
            log.debug("mesh socket: receive buffer left as it is: %s", exc)


Received = MeshReceived
"""One accepted message (the port's :class:`~egressd.ports.MeshReceived`)."""


class MeshSocket:
    """Sends and receives mesh messages on one UDP socket."""

    def __init__(self, key: bytes) -> None:
        self._key = check_key(key)
        self._transport: asyncio.DatagramTransport | None = None
        self._queue: collections.deque[Received] = collections.deque(maxlen=QUEUE_SIZE)
        self._ready = asyncio.Event()
        self.rejected: collections.Counter[str] = collections.Counter()
        """Datagrams dropped, by reason (``size``, ``unsigned``, ``bad-signature``,
        ``malformed``, ``overflow``, and what the caller adds: ``replayed``,
        ``stale``, ``misdirected``)."""
        self.sent = 0
        self.received = 0
        self._reported: dict[tuple[str, str], float] = {}

    async def open(self, host: str, port: int) -> tuple[str, int]:
        """Bind; the address and port bound (port 0 takes a free one)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port), family=family
        )
        self._transport = transport
        _receive_buffer(transport.get_extra_info("socket"))
        bound: tuple[str, int] = transport.get_extra_info("sockname")[:2]
        log.info("mesh listening on %s:%d", *bound)
        return bound

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self, message: Message, peer: tuple[str, int]) -> None:
        """Sign and send; a send that fails (no route, buffer full) is a lost
        datagram, which the protocol tolerates: logged at debug level."""
        if self._transport is None:
            raise RuntimeError("the mesh socket is not open")
        try:
            self._transport.sendto(encode(message, self._key), peer)
            self.sent += 1
        except OSError as exc:
            log.debug("mesh send to %s:%d failed: %s", peer[0], peer[1], exc)

    def reject(self, reason: str, sender: tuple[str, int], detail: str = "") -> None:
        """Count (and now and then log) a dropped datagram."""
        self.rejected[reason] += 1
        key = (reason, sender[0])
        now = time.monotonic()
        if now - self._reported.get(key, -REPORT_INTERVAL) >= REPORT_INTERVAL:
            self._reported[key] = now
            log.warning(
                "mesh datagram from %s dropped (%s)%s; %d dropped for this reason so far",
                sender[0], reason, f": {detail}" if detail else "", self.rejected[reason],
            )  # fmt: skip

    async def receive(self) -> Received:
        """The next accepted message (waits for one)."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def feed(self, data: bytes, sender: tuple[str, int]) -> None:
        """One datagram as it arrived from ``sender`` (what the socket calls)."""
        try:
            message = decode(data, self._key)
        except MeshRejected as exc:
            self.reject(exc.reason, sender, str(exc))
            return
        if len(self._queue) == QUEUE_SIZE:
            self.rejected["overflow"] += 1
        self._queue.append(Received(message, sender[:2], time.monotonic()))
        self.received += 1
        self._ready.set()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: MeshSocket) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner.feed(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("mesh socket error: %s", exc)
