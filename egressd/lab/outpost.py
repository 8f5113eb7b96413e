"""The outpost: the server outside the cluster that only answers the egress IPs.

Like the walkthrough's ``egressgw-whatismyip`` container, with what the drills
need on top. Standard library only (asyncio)::

    python -m egressd.lab.outpost --allowed 172.18.0.42,172.18.0.43 \\
        --listen 0.0.0.0:8000 --udp 0.0.0.0:9000 --log FILE

* **HTTP** on ``--listen``: any request is answered ``200`` with
  ``{"ip": "<source>", "allowed": true}`` when the client's source address is
  in ``--allowed``, ``403`` with ``"allowed": false`` otherwise. HTTP/1.1
  keep-alive is honoured, so a drill can tell a connection that survived a
  failover from one that broke.
* **UDP probes** on ``--udp``: a datagram is ASCII ``"<prober> <seq> <sent>"``
  (:func:`encode_probe`). The outpost records it and answers the same bytes
  followed by ``" <source>"`` (:func:`decode_echo`), so the prober counts round
  trips and learns which address the outpost saw without reading the log.
  Datagrams that do not parse are recorded (``prober`` null) and echoed too.
* **The log** (``--log``, JSON lines): one ``start`` record, then one record
  per HTTP request (``kind: "http"``: ``src``, ``port``, ``method``, ``path``,
  ``status``) and per datagram (``kind: "udp"``: ``src``, ``port``,
  ``prober``, ``seq``, ``sent``, ``seen``). ``t`` is CLOCK_MONOTONIC seconds, the
  same clock in every process of the machine (compare it with the probers'
  ``sent``): for a datagram, the kernel's receive timestamp, so that the
  outpost's own scheduling delays (``seen`` is when it read the datagram) are
  no holes in the traffic; ``wall`` is Unix time. Lines are buffered and written at least
  every :data:`FLUSH_INTERVAL` (an outpost that keeps up with thousands of
  datagrams per second cannot afford a write per datagram); SIGTERM and
  SIGINT flush and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.05
"""Seconds between writes of the buffered log (the promise is at most 0.1 s)."""

MAX_HEADER_LINES = 100
IDLE_TIMEOUT = 60.0
"""Seconds a keep-alive connection may stay silent before the outpost closes it."""


def monotonic() -> float:
    """CLOCK_MONOTONIC: comparable across processes of one machine (not across machines)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# --- probe datagrams ----------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    prober: str
    seq: int
    sent: float
    """The prober's CLOCK_MONOTONIC send time."""


def encode_probe(prober: str, seq: int, sent: float) -> bytes:
    """A probe datagram; ``prober`` must not contain whitespace."""
    if not prober or any(c.isspace() for c in prober):
        raise ValueError(f"prober id must be a non-empty word, got {prober!r}")
    return f"{prober} {seq} {sent:.6f}".encode()


def decode_probe(data: bytes) -> Probe | None:
    """The probe in a datagram, or None when it is not one."""
    parts = data.split()
    if len(parts) < 3:
        return None
    try:
        return Probe(parts[0].decode(), int(parts[1]), float(parts[2]))
    except (UnicodeDecodeError, ValueError):
        return None


def decode_echo(data: bytes) -> tuple[Probe | None, str]:
    """The outpost's answer to a probe: (the probe, the source address the outpost saw)."""
    head, _, source = data.rpartition(b" ")
    return decode_probe(head), source.decode(errors="replace")


# --- log ----------------------------------------------------------------------------------


class JsonLines:
    """Buffered JSON-lines writer; :meth:`flush` writes the buffer (the caller schedules it)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._pending: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        self._pending.append(json.dumps(record, separators=(",", ":")))

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        self._stream.write("\n".join(lines) + "\n")
        self._stream.flush()


# --- server -------------------------------------------------------------------------------


def _peer(transport_peer: Any) -> tuple[str, int]:
    host, port = str(transport_peer[0]), int(transport_peer[1])
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, port


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESTAMP_SPACE = socket.CMSG_SPACE(16)


def kernel_receive_time(ancdata: Sequence[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive timestamp of a datagram (``SO_TIMESTAMPNS``, CLOCK_REALTIME) moved to
    CLOCK_MONOTONIC; None when the ancillary data has none."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            offset = monotonic() - time.clock_gettime(time.CLOCK_REALTIME)
            return float(sec + nsec / 1e9 + offset)
    return None


class _ProbePort:
    """The probe port: a non-blocking UDP socket read on the loop with ``recvmsg``, so that a
    record's ``t`` is when the kernel received the datagram, not when the loop got round to it
    (a busy or descheduled outpost would otherwise show its own delays as holes in the traffic)."""

    def __init__(self, outpost: Outpost, sock: socket.socket) -> None:
        self._outpost = outpost
        self.sock = sock

    def readable(self) -> None:
        while True:
            try:
                data, ancdata, _, addr = self.sock.recvmsg(2048, _TIMESTAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # an ICMP error for an earlier echo (the prober is gone): nothing to do; the
                # loop calls again while datagrams wait
                log.debug("udp error: %s", exc)
                return
            seen = monotonic()
            t = kernel_receive_time(ancdata)
            src, port = _peer(addr)
            probe = decode_probe(data)
            self._outpost.record(
                {
                    "t": seen if t is None else t,
                    "seen": seen,
                    "wall": time.time(),
                    "kind": "udp",
                    "src": src,
                    "port": port,
                    "prober": probe.prober if probe else None,
                    "seq": probe.seq if probe else None,
                    "sent": probe.sent if probe else None,
                }
            )
            with contextlib.suppress(OSError):  # a full socket buffer drops the echo, as the network may
                self.sock.sendto(data + b" " + src.encode(), addr)


class Outpost:
    """The outpost server on the running loop. ``async with Outpost(...) as o:``."""

    def __init__(
        self,
        allowed: Iterable[str],
        *,
        listen: str | None = "0.0.0.0:8000",
        udp: str | None = "0.0.0.0:9000",
        log_stream: IO[str] | None = None,
    ) -> None:
        self.allowed = frozenset(ipaddress.ip_address(a) for a in allowed)
        self._listen = listen
        self._udp = udp
        self._log = JsonLines(log_stream) if log_stream is not None else None
        self._server: asyncio.Server | None = None
        self._udp_port: _ProbePort | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.http_address: tuple[str, int] | None = None
        self.udp_address: tuple[str, int] | None = None

    def is_allowed(self, source: str) -> bool:
        try:
            return ipaddress.ip_address(source) in self.allowed
        except ValueError:
            return False

    def record(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.add(entry)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listen is not None:
            host, port = parse_listen(self._listen)
            self._server = await asyncio.start_server(self._serve_connection, host, port, reuse_address=True)
            self.http_address = _peer(self._server.sockets[0].getsockname())
        if self._udp is not None:
            host, port = parse_listen(self._udp)
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            self._udp_port = _ProbePort(self, sock)
            loop.add_reader(sock.fileno(), self._udp_port.readable)
            self.udp_address = _peer(sock.getsockname())
        self.record(
            {
                "t": monotonic(),
                "wall": time.time(),
                "kind": "start",
                "http": self.http_address and f"{self.http_address[0]}:{self.http_address[1]}",
                "udp": self.udp_address and f"{self.udp_address[0]}:{self.udp_address[1]}",
                "allowed": sorted(str(a) for a in self.allowed),
            }
        )
        if self._log is not None:
            self._log.flush()
            self._flusher = asyncio.create_task(self._flush_forever(), name="outpost-log-flush")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._udp_port is not None:
            asyncio.get_running_loop().remove_reader(self._udp_port.sock.fileno())
            self._udp_port.sock.close()
            self._udp_port = None
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._log is not None:
            self._log.flush()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _flush_forever(self) -> None:
        assert self._log is not None
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self._log.flush()
            except OSError as exc:  # a full disk must not stop the outpost answering
                log.warning("cannot write the log: %s", exc)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        src, port = _peer(writer.get_extra_info("peername"))
        try:
            while await self._serve_request(reader, writer, src, port):
                pass
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, src: str, port: int
    ) -> bool:
        """Answer one request; False when the connection is to be closed."""
        line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
        if not line:
            return False
        t = monotonic()
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._respond(writer, 400, {"error": "bad request line"}, keep_alive=False)
            return False
        method, path, version = parts
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            header = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or "0")
        if length:
            await reader.readexactly(length)
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        allowed = self.is_allowed(src)
        status = 200 if allowed else 403
        self.record(
            {
                "t": t,
                "wall": time.time(),
                "kind": "http",
                "src": src,
                "port": port,
                "method": method,
                "path": path,
                "status": status,
            }
        )
        await self._respond(writer, status, {"ip": src, "allowed": allowed}, keep_alive=keep_alive)
        return keep_alive

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any], *, keep_alive: bool) -> None:
        reason = {200: "OK", 400: "Bad Request", 403: "Forbidden"}[status]
        payload = (json.dumps(body) + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m egressd.lab.outpost",
        description="Lab outpost: answers 200 to allowed source addresses, 403 to others; echoes UDP probes.",
    )
    p.add_argument("--allowed", default="", help="comma-separated source addresses that get 200")
    p.add_argument("--listen", default="0.0.0.0:8000", help="HTTP HOST:PORT ('none' to disable)")
    p.add_argument("--udp", default="0.0.0.0:9000", help="UDP probe HOST:PORT ('none' to disable)")
    p.add_argument("--log", default="-", help="JSON-lines log file ('-': standard output)")
    return p


async def _serve(args: argparse.Namespace, stream: IO[str]) -> None:
    allowed = [a.strip() for a in args.allowed.split(",") if a.strip()]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Outpost(
        allowed,
        listen=None if args.listen == "none" else args.listen,
        udp=None if args.udp == "none" else args.udp,
        log_stream=stream,
    ):
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        if args.log == "-":
            asyncio.run(_serve(args, sys.stdout))
        else:
            with Path(args.log).open("a", encoding="utf-8") as stream:
                asyncio.run(_serve(args, stream))
    except (OSError, ValueError) as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
