"""Ownership events to an MQTT broker (aiomqtt), without ever delaying failover.

:class:`MqttEvents` is an :class:`egressd.ports.EventSink`. ``emit()`` is
synchronous and only puts the event in memory; a publisher task does all the
network work. What it publishes (topics and payloads in
:mod:`egressd.core.mqtt_messages`, docs/mqtt.md):

* the retained owner of each egress IP, changed by this node's own claims and
  clears, with the epoch rules of :func:`~egressd.core.mqtt_messages.clear_decision`
  and :func:`~egressd.core.mqtt_messages.defend_decision`;
* every event on the stream topic;
* this node's retained online status: online on every connect, offline on
  a clean shutdown, and offline as the last will, which the broker publishes
  when the connection dies without a clean shutdown.

Never blocking the data path (house style 10):

* ``emit()`` costs a few microseconds and never waits. Stream events go to a
  bounded ``asyncio.Queue``; when it is full the **oldest** event is dropped
  and counted in ``dropped``: after an outage the recent events describe the
  present, the old ones are history the log has too. The retained state is
  kept apart, one latest state per IP (``coalesced`` counts the superseded
  ones), so dropping events never loses who owns an IP.
* Connecting, publishing and acknowledgements are bounded by the
  ``timeout`` setting; a broker that is absent, refuses, or accepts TCP and
  then says nothing costs the publisher a reconnect with backoff (capped at
  :data:`BACKOFF_CAP` seconds), never the caller.
* ``close(timeout)`` lets the publisher flush and publish offline within the
  timeout, then cancels it and drops the connection without a DISCONNECT, so
  the broker publishes the last will (offline) instead.

Two private attributes of aiomqtt's client are used, in :func:`_paho` only:
aiomqtt cannot abandon a connection attempt (a cancelled or timed-out
connect leaves the socket open), nor drop a connection without a DISCONNECT
(which would suppress the last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from egressd.core.mqtt_messages import (
    RETAINED_KINDS,
    IpState,
    Outgoing,
    Topics,
    clear_decision,
    defend_decision,
    ip_state,
    node_status,
    parse_ip_state,
    render_event,
    render_ip_state,
)
from egressd.core.mqtt_settings import MqttSettings
from egressd.core.ownership_events import OwnershipEvent

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
"""Seconds before the first reconnect: a broker restart is usually over quickly."""

BACKOFF_CAP = 5.0
"""Longest wait between connection attempts: a returning broker hears from
every node within a few seconds, while a long outage costs one attempt per
node every few seconds."""

_Item = tuple[OwnershipEvent, float]
"""An event and the wall time (seconds since the epoch) at which it was emitted."""


class MqttEvents:
    """Publishes ownership events of ``node`` to the broker of ``settings``.

    Call ``emit()`` from the event loop's thread (as the daemon does). Start
    the publisher with :meth:`start`, stop it with :meth:`close`.

    Counters, for metrics: ``published`` (messages the broker acknowledged,
    status messages included), ``dropped`` (stream events lost: queue full,
    or a publish that failed), ``coalesced`` (retained IP states superseded
    before they were sent), ``skipped`` (clears not sent because another
    node owns the IP at a newer epoch); ``connected`` is the connection state.
    """

    def __init__(self, settings: MqttSettings, node: str, *, wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.node = node
        self.topics = Topics(settings.topic_prefix, settings.cluster)
        self.published = 0
        self.dropped = 0
        self.coalesced = 0
        self.skipped = 0
        self.connected = False
        self.was_connected = False
        """Whether the last session got as far as the broker's CONNACK."""
        self._wall = wall
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=settings.queue_size)
        self._pending: dict[str, _Item] = {}
        """Latest retained state to publish per IP (claim or clear), not yet sent."""
        self._mine: dict[str, _Item] = {}
        """IPs whose last published state is this node's claim."""
        self._seen: dict[str, IpState | None] = {}
        """Last retained state read back from the broker per IP (IpState or None)."""
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- the data path side ---------------------------------------------------------

    def emit(self, event: OwnershipEvent) -> None:
        """Queue ``event``; never blocks, never raises for a full queue."""
        item = (event, self._wall())
        if event.kind in RETAINED_KINDS:
            ip = event.egress_ip
            if ip in self._pending:
                self.coalesced += 1
                self._pending[ip] = item
            elif len(self._pending) < self.settings.queue_size:
                self._pending[ip] = item
            else:  # more distinct IPs than the queue holds: not a configuration egressd accepts
                self.dropped += 1
        queue = self._queue
        if queue.full():
            queue.get_nowait()
            self.dropped += 1
        queue.put_nowait(item)
        self._wake.set()

    @property
    def queued(self) -> int:
        """Stream events waiting to be published."""
        return self._queue.qsize()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the publisher task (connects in the background)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-publisher")

    async def close(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 (a budget the method splits itself)
        """Flush, publish offline and disconnect if that is done within
        ``timeout`` seconds; otherwise give up: cancel the publisher and drop
        the connection (the broker then publishes the last will). Returns
        within ``timeout`` (plus scheduling delays)."""
        self._stop.set()
        self._wake.set()
        task = self._task
        if task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # leave a little of the timeout for the cancellation, which only closes a socket;
        # with no time at all, not even one turn of the loop for the publisher to start flushing
        if timeout > 0:
            await asyncio.wait({task}, timeout=max(0.0, timeout - min(0.1, timeout / 10)))
        if not task.done():
            log.warning("mqtt: could not flush and disconnect within %gs; dropping the connection", timeout)
            task.cancel()
            await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.error("mqtt: the publisher failed: %r", exc)

    # --- the publisher -------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        failing = False
        while not self._stop.is_set():
            try:
                await self._session()
            except Exception as exc:  # every failure means: reconnect (or stop, when closing)
                self.connected = False
                if self.was_connected:
                    attempt = 0
                if not failing or self.was_connected:
                    log.warning(
                        "mqtt: %s %s:%d: %s; retrying",
                        "lost the connection to" if self.was_connected else "cannot connect to",
                        self.settings.host,
                        self.settings.port,
                        _describe(exc),
                    )
                else:
                    log.debug("mqtt: still cannot connect: %s", _describe(exc))
                failing = True
            else:
                return  # closed cleanly
            delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not crypto)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # not wait_for: it can swallow a cancellation on 3.11
                    await self._stop.wait()

    async def _session(self) -> None:
        self.was_connected = False
        client = await self._client()
        graceful = False
        try:
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await client.__aenter__()
            except BaseException:
                # aiomqtt runs the blocking part of connect in a thread that a
                # cancellation cannot stop; reap whatever socket it opens later
                asyncio.get_running_loop().call_later(self.settings.timeout + 1.0, _abort, client)
                raise
            self.was_connected = self.connected = True
            log.info("mqtt: connected to %s:%d as %s", self.settings.host, self.settings.port, client.identifier)
            now = datetime.fromtimestamp(self._wall(), UTC)
            await self._publish(client, node_status(self.topics, self.node, online=True, wall=now))
            # no_local: the broker does not echo this node's own messages back
            await client.subscribe(self.topics.ips, options=SubscribeOptions(qos=self.settings.qos, noLocal=True))
            for ip, item in self._mine.items():  # the broker may have lost them (restart without persistence)
                self._pending.setdefault(ip, item)
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(self._read(client), name="mqtt-reader")
                await self._write(client)
                reader.cancel()
            self.connected = False
            async with asyncio.timeout(self.settings.timeout):
                await client.__aexit__(None, None, None)
            graceful = True
        finally:
            self.connected = False
            if not graceful:
                _abort(client)

    async def _client(self) -> aiomqtt.Client:
        s = self.settings
        password = None
        if s.password_file is not None:
            text = await asyncio.to_thread(Path(s.password_file).read_text)
            password = text.rstrip("\r\n")
        tls_params = None
        if s.tls is not None:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=s.tls.ca_file,
                certfile=s.tls.cert_file,
                keyfile=s.tls.key_file,
                cert_reqs=ssl.CERT_NONE if s.tls.insecure_skip_verify else ssl.CERT_REQUIRED,
            )
        will = node_status(self.topics, self.node, online=False)
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.effective_client_id(self.node),
            username=s.username,
            password=password,
            will=aiomqtt.Will(will.topic, will.payload, qos=s.qos, retain=True),
            keepalive=s.keepalive,
            timeout=s.timeout,
            tls_params=tls_params,
            tls_insecure=s.tls.insecure_skip_verify if s.tls is not None else None,
            protocol=aiomqtt.ProtocolVersion.V5,
            max_queued_incoming_messages=s.queue_size,
            # events are small and latency matters more than segments: no Nagle
            # delay (which would hold a publish behind an unacknowledged PUBACK)
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            logger=log.getChild("client"),
        )
        # bound the blocking TCP connect that aiomqtt runs in a thread
        _paho(client).connect_timeout = s.timeout
        return client

    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            await self._flush(client)
            if self._stop.is_set():
                now = datetime.fromtimestamp(self._wall(), UTC)
                await self._publish(client, node_status(self.topics, self.node, online=False, wall=now))
                return
            await self._wake.wait()

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Publish what is pending: retained IP states first (the present), then the stream."""
        while self._pending or not self._queue.empty():
            if self._pending:
                ip = next(iter(self._pending))
                item = self._pending.pop(ip)
                try:
                    await self._publish_state(client, item)
                except BaseException:
                    self._pending.setdefault(ip, item)  # unless a newer state arrived meanwhile
                    raise
                continue
            event, at = self._queue.get_nowait()
            try:
                await self._publish(client, render_event(self.topics, event, self.node, _utc(at)))
            except BaseException:
                self.dropped += 1
                raise

    async def _publish_state(self, client: aiomqtt.Client, item: _Item) -> None:
        event, at = item
        state = ip_state(event, self.node, _utc(at))
        if state is None:
            return
        if state.owner is None:
            self._mine.pop(state.ip, None)
            why = clear_decision(state, self._seen.get(state.ip), self.node)
            if why:
                self.skipped += 1
                log.debug("mqtt: not clearing %s (epoch %d): %s", state.ip, state.epoch, why)
                return
        else:
            self._mine[state.ip] = item
        await self._publish(client, render_ip_state(self.topics, state))
        self._seen[state.ip] = state  # what the broker retains now (no echo: the subscription is no_local)

    async def _publish(self, client: aiomqtt.Client, message: Outgoing) -> None:
        await client.publish(message.topic, message.payload, qos=self.settings.qos, retain=message.retain)
        self.published += 1

    async def _read(self, client: aiomqtt.Client) -> None:
        """Follow the retained IP states (other nodes' and our own) for the two epoch rules.
        Ends with an MqttError when the connection is lost, which ends the session."""
        async for message in client.messages:
            ip = self.topics.ip_of(str(message.topic))
            if ip is None:
                continue
            payload = message.payload
            seen = parse_ip_state(payload) if isinstance(payload, bytes | bytearray) and payload else None
            self._seen[ip] = seen
            mine = self._mine.get(ip)
            if mine is None or ip in self._pending:
                continue
            state = ip_state(mine[0], self.node, _utc(mine[1]))
            if state is not None and (why := defend_decision(state, seen, self.node)):
                log.info("mqtt: publishing the claim of %s (epoch %d) again: %s", ip, state.epoch, why)
                self._pending[ip] = mine
                self._wake.set()


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _paho(client: aiomqtt.Client) -> Any:
    """The paho-mqtt client inside aiomqtt's (see the module docstring)."""
    return client._client


def _abort(client: aiomqtt.Client) -> None:
    """Close the connection without a DISCONNECT (the broker then publishes the
    last will); idempotent, and harmless on a client that never connected."""
    with contextlib.suppress(Exception):
        _paho(client)._sock_close()
    # the connection's end is known; mark aiomqtt's record of it as read, or
    # asyncio logs "exception was never retrieved" when it is collected
    disconnected = client._disconnected
    if disconnected.done() and not disconnected.cancelled():
        disconnected.exception()


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
