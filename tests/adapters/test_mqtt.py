"""The MQTT event sink against a real mosquitto (the Debian package), started
per test on a free loopback port with its own config; never the system broker.

What matters most is at the end: with no broker, or a broker that accepts
TCP and never answers, ``emit()`` stays a few microseconds, the queue stays
bounded, drops are counted, the event loop keeps running and ``close()``
keeps its timeout, so a failover is never delayed by MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from egressd.adapters.mqtt import MqttEvents
from egressd.core.mqtt_settings import MqttSettings, MqttTls
from egressd.core.ownership_events import OwnershipEvent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto package"),
]

IP = "172.18.0.42"
KINDS = ("acquired", "renew-failed", "stepped-down", "released", "lost", "fenced", "conflict", "drift")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    port: int
    process: subprocess.Popen[bytes]
    config: Path
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_broker(tmp: Path, *, port: int | None = None, extra: str = "") -> Broker:
    port = port or free_port()
    config = tmp / f"mosquitto-{port}.conf"
    # user root: mosquitto started as root otherwise drops to the mosquitto user,
    # who cannot read the password file in pytest's private temporary directory
    config.write_text(f"listener {port} 127.0.0.1\n{extra or 'allow_anonymous true'}\npersistence false\nuser root\n")
    log = tmp / f"mosquitto-{port}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT)
    broker = Broker(port, process, config, log)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                broker.stop()
                raise RuntimeError(f"mosquitto did not start: {log.read_text()}") from None
            time.sleep(0.02)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Broker]:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "egressd", "s3cret"], check=True)
    b = start_broker(tmp_path, extra=f"allow_anonymous false\npassword_file {passwords}")
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Seen:
    topic: str
    body: Any
    retain: bool


@dataclass
class Watcher:
    """A real subscriber: everything published below ``egressd/`` after it subscribed."""

    seen: list[Seen] = field(default_factory=list)

    def on(self, topic: str) -> list[Seen]:
        return [m for m in self.seen if m.topic == topic]

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        await until(cond, timeout)


@contextlib.asynccontextmanager
async def watching(port: int, topic: str = "egressd/#") -> AsyncIterator[Watcher]:
    watcher = Watcher()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"watcher-{time.monotonic_ns()}") as client:
        await client.subscribe(topic, qos=1)

        async def read() -> None:
            async for m in client.messages:
                payload = m.payload
                body = json.loads(payload) if isinstance(payload, bytes) and payload else None
                watcher.seen.append(Seen(str(m.topic), body, m.retain))

        reader = asyncio.create_task(read())
        try:
            yield watcher
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def retained(port: int, topic: str, wait: float = 0.3) -> Any:
    """The body of the message the broker retains on ``topic`` (None if none)."""
    async with watching(port, topic) as w:
        await asyncio.sleep(wait)
    found = [m for m in w.seen if m.retain]
    return found[-1].body if found else None


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)


def settings(port: int, **kw: Any) -> MqttSettings:
    base = MqttSettings(host="127.0.0.1", port=port, cluster="lab", keepalive=5, timeout=2.0)
    return replace(base, **kw)


def event(kind: str, epoch: int = 3, node: str = "node-a", ip: str = IP, reason: str = "expired") -> OwnershipEvent:
    return OwnershipEvent(kind=kind, egress_ip=ip, node=node, epoch=epoch, reason=reason, at=12.5)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(s: MqttSettings, node: str = "node-a") -> AsyncIterator[MqttEvents]:
    sink = MqttEvents(s, node)
    sink.start()
    try:
        yield sink
    finally:
        await sink.close(2.0)


# --- what the broker holds --------------------------------------------------------------


async def test_acquired_retains_the_owner_and_released_clears_it(broker: Broker) -> None:
    sink = MqttEvents(settings(broker.port), "node-a")
    sink.emit(event("acquired", epoch=7))  # before start: kept until connected
    sink.start()
    try:
        await until(lambda: sink.published >= 3)  # online, IP state, event
        owner = await retained(broker.port, f"egressd/lab/ip/{IP}")
        assert owner["ip"] == IP
        assert owner["owner"] == "node-a"
        assert owner["epoch"] == 7
        assert owner["reason"] == "expired"
        assert owner["since"].endswith("Z")

        sink.emit(event("released", epoch=7, reason="shutdown"))
        await until(lambda: sink.published >= 5)
        cleared = await retained(broker.port, f"egressd/lab/ip/{IP}")
        assert cleared["owner"] is None
        assert cleared["epoch"] == 7
        assert cleared["reason"] == "shutdown"
    finally:
        await sink.close(2.0)


async def test_every_event_kind_goes_to_the_stream_in_order(broker: Broker) -> None:
    async with watching(broker.port) as w, running(settings(broker.port)) as sink:
        for i, kind in enumerate(KINDS):
            sink.emit(event(kind, epoch=i))
        await w.until(lambda: len(w.on("egressd/lab/events")) == len(KINDS))
    stream = w.on("egressd/lab/events")
    assert [m.body["kind"] for m in stream] == list(KINDS)
    assert not any(m.retain for m in stream)
    first = stream[0].body
    assert first["ip"] == IP
    assert first["node"] == "node-a"
    assert first["epoch"] == 0
    assert first["reason"] == "expired"
    assert first["at"] == 12.5
    assert first["time"].endswith("Z")
    assert sink.dropped == 0


async def test_only_ownership_changes_move_the_retained_state(broker: Broker) -> None:
    async with running(settings(broker.port)) as sink:
        sink.emit(event("acquired", epoch=4))
        sink.emit(event("renew-failed", epoch=4))
        sink.emit(event("drift", epoch=4))
        sink.emit(event("conflict", epoch=4))
        await until(lambda: sink.published >= 6)
        assert (await retained(broker.port, f"egressd/lab/ip/{IP}"))["owner"] == "node-a"


async def test_online_on_connect_offline_on_close(broker: Broker) -> None:
    topic = "egressd/lab/node/node-a"
    sink = MqttEvents(settings(broker.port), "node-a")
    sink.start()
    await until(lambda: sink.connected)
    await until(lambda: sink.published >= 1)
    online = await retained(broker.port, topic)
    assert online["online"] is True
    assert online["node"] == "node-a"
    started = time.monotonic()
    await sink.close(2.0)
    assert time.monotonic() - started < 1.0
    offline = await retained(broker.port, topic)
    assert offline["online"] is False
    assert "since" in offline  # published by the node, not the will


async def test_last_will_when_the_node_dies(broker: Broker, tmp_path: Path) -> None:
    script = tmp_path / "publisher.py"
    script.write_text(
        "import asyncio\n"
        "from egressd.adapters.mqtt import MqttEvents\n"
        "from egressd.core.mqtt_settings import MqttSettings\n"
        "async def main() -> None:\n"
        f"    sink = MqttEvents(MqttSettings(host='127.0.0.1', port={broker.port}, cluster='lab'), 'node-b')\n"
        "    sink.start()\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    topic = "egressd/lab/node/node-b"
    process = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).parents[2])
    try:
        async with watching(broker.port, topic) as w:
            await w.until(lambda: any(m.body["online"] for m in w.seen), timeout=10)
            process.send_signal(signal.SIGKILL)
            await w.until(lambda: not w.seen[-1].body["online"], timeout=5)
        will = w.seen[-1].body
        assert will == {"node": "node-b", "online": False}  # the will: no time, the node could not say
        assert (await retained(broker.port, topic)) == will
    finally:
        process.kill()
        process.wait()


async def test_a_forced_close_leaves_the_last_will(broker: Broker) -> None:
    """close() that cannot finish (here: no time at all) drops the connection
    without DISCONNECT, so the broker still says offline."""
    topic = "egressd/lab/node/node-a"
    sink = MqttEvents(settings(broker.port), "node-a")
    sink.start()
    await until(lambda: sink.published >= 1)
    async with watching(broker.port, topic) as w:
        await sink.close(0.0)
        await w.until(lambda: bool(w.seen) and w.seen[-1].body["online"] is False)
    assert w.seen[-1].body == {"node": "node-a", "online": False}


# --- two nodes: the epoch rules ---------------------------------------------------------------


async def test_a_late_clear_does_not_erase_the_new_owner(broker: Broker) -> None:
    topic = f"egressd/lab/ip/{IP}"
    async with running(settings(broker.port), "node-b") as b, running(settings(broker.port), "node-a") as a:
        await until(lambda: a.connected and b.connected)
        b.emit(event("acquired", epoch=5, node="node-b"))
        await until(lambda: b.published >= 2)
        await asyncio.sleep(0.1)  # node-a's subscription hears node-b's claim
        a.emit(event("lost", epoch=4, reason="lost-lease"))
        await until(lambda: a.published >= 2)  # online + the event; the clear is skipped
        assert a.skipped == 1
        assert (await retained(broker.port, topic))["owner"] == "node-b"


async def test_the_owner_restores_its_claim_over_an_older_clear(broker: Broker) -> None:
    topic = f"egressd/lab/ip/{IP}"
    async with running(settings(broker.port)) as sink:
        sink.emit(event("acquired", epoch=9))
        await until(lambda: sink.published >= 3)
        stale = {"ip": IP, "owner": None, "epoch": 8, "since": "2024-01-01T00:00:00.000Z", "reason": "lost-lease"}
        async with aiomqtt.Client("127.0.0.1", broker.port) as other:
            await other.publish(topic, json.dumps(stale), qos=1, retain=True)
        await until(lambda: sink.published >= 4)
        await asyncio.sleep(0.05)
        assert (await retained(broker.port, topic))["owner"] == "node-a"


# --- reconnects and credentials -------------------------------------------------------------------


async def test_reconnects_after_a_broker_restart_and_sends_what_waited(broker: Broker, tmp_path: Path) -> None:
    sink = MqttEvents(settings(broker.port), "node-a")
    sink.start()
    restarted: Broker | None = None
    try:
        await until(lambda: sink.connected)
        broker.stop()
        await until(lambda: not sink.connected)
        sink.emit(event("acquired", epoch=2))  # while the broker is away
        restarted = start_broker(tmp_path, port=broker.port)
        await until(lambda: sink.connected, timeout=10)
        await until(lambda: sink.published >= 4)  # online, online again, IP state, event
        assert (await retained(broker.port, f"egressd/lab/ip/{IP}"))["owner"] == "node-a"
        assert (await retained(broker.port, "egressd/lab/node/node-a"))["online"] is True
    finally:
        await sink.close(2.0)
        if restarted is not None:
            restarted.stop()


async def test_username_and_password_from_a_file(auth_broker: Broker, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("s3cret\n")
    async with running(settings(auth_broker.port, username="egressd", password_file=str(good))) as sink:
        await until(lambda: sink.connected)
        await until(lambda: sink.published >= 1)


async def test_a_wrong_password_is_refused(
    auth_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad"
    bad.write_text("wrong-password-text\n")
    sink = MqttEvents(settings(auth_broker.port, username="egressd", password_file=str(bad)), "node-a")
    sink.start()
    await asyncio.sleep(0.5)
    assert not sink.connected
    assert sink.published == 0
    assert "cannot connect" in caplog.text
    assert "wrong-password-text" not in caplog.text
    started = time.monotonic()
    await sink.close(1.0)
    assert time.monotonic() - started < 1.0


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Broker, Path]]:
    """A broker with a certificate for 127.0.0.1 signed by a throwaway CA; yields the CA file."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")  # fmt: skip
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
    extra = (
        f"allow_anonymous true\ncafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.key'}"
    )
    b = start_broker(tmp_path, extra=extra)
    try:
        yield b, tmp_path / "ca.pem"
    finally:
        b.stop()


async def test_tls_with_a_ca_file(tls_broker: tuple[Broker, Path]) -> None:
    broker, ca = tls_broker
    async with running(settings(broker.port, tls=MqttTls(ca_file=str(ca)))) as sink:
        await until(lambda: sink.connected)
        await until(lambda: sink.published >= 1)


# paho-mqtt 2.x does not close its TLS socket when the handshake fails
# (client.py, _ssl_wrap_socket); the socket is closed when collected, with a
# ResourceWarning. Collected here, so the warning is this test's and nothing else's.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning")
async def test_tls_refuses_a_broker_it_cannot_verify(tls_broker: tuple[Broker, Path]) -> None:
    broker, _ = tls_broker
    sink = MqttEvents(settings(broker.port, tls=MqttTls()), "node-a")  # system CAs: the test CA is unknown
    sink.start()
    await asyncio.sleep(0.5)
    assert not sink.connected
    await sink.close(1.0)
    gc.collect()
    insecure = MqttTls(insecure_skip_verify=True)
    async with running(settings(broker.port, tls=insecure)) as lax:
        await until(lambda: lax.connected)


# --- failover is never delayed ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """The longest gap between two 5 ms ticks of the event loop, while inside."""
    worst = [0.0]

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            worst[0] = max(worst[0], now - last)
            last = now

    task = asyncio.create_task(tick())
    try:
        yield worst
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def flood(sink: MqttEvents, n: int = 10_000) -> float:
    """Emit ``n`` events over a few IPs, as fast as possible; the seconds it took."""
    events = [event(KINDS[i % len(KINDS)], epoch=i, ip=f"10.0.{i % 4}.1") for i in range(n)]
    started = time.perf_counter()
    for e in events:
        sink.emit(e)
    return time.perf_counter() - started


async def assert_unaffected(sink: MqttEvents) -> None:
    async with loop_lag() as lag:
        await asyncio.sleep(0.3)  # the publisher is trying to connect meanwhile
        took = await flood(sink)
        assert took < 0.1, f"10,000 emits took {took * 1000:.1f} ms"
        assert sink.queued == 100
        assert sink.dropped == 10_000 - 100
        await asyncio.sleep(0.7)
        started = time.monotonic()
        await sink.close(0.5)
        closed = time.monotonic() - started
    assert closed < 0.75, f"close(0.5) took {closed:.2f}s"
    # a connect that blocked the loop would stall it for the whole connect timeout (0.3 s and more)
    assert lag[0] < 0.2, f"the event loop stalled {lag[0] * 1000:.0f} ms"
    assert not sink.connected
    assert sink.published == 0
    assert sink.coalesced > 0  # the retained state is kept per IP, latest only


async def test_no_broker_never_delays_emit_or_close() -> None:
    port = free_port()  # nothing listens: connection refused
    sink = MqttEvents(settings(port, queue_size=100), "node-a")
    sink.start()
    await assert_unaffected(sink)


async def test_a_stalling_broker_never_delays_emit_or_close() -> None:
    """A listener that accepts TCP and never reads nor answers (a hung broker)."""
    accepted: list[asyncio.StreamWriter] = []

    async def hang(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = MqttEvents(settings(port, queue_size=100, timeout=0.3), "node-a")
        sink.start()
        await assert_unaffected(sink)
        assert accepted, "the client never reached the listener"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_close_while_stalled_mid_connect_keeps_its_timeout() -> None:
    """Cancelled while waiting for a CONNACK that never comes: close() keeps
    its timeout and the half-open connection is closed, not leaked."""
    accepted: list[bool] = []
    closed: list[bytes] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(True)
        closed.append(await reader.read())  # never answers; returns at the client's FIN
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sink = MqttEvents(settings(port, timeout=30.0), "node-a")  # the connect alone would wait 30 s
        sink.start()
        await until(lambda: bool(accepted))
        started = time.monotonic()
        await sink.close(0.3)
        assert time.monotonic() - started < 0.4
        await until(lambda: bool(closed), timeout=2)
        assert closed[0].startswith(b"\x10")  # it did send its CONNECT
    finally:
        server.close()
        await server.wait_closed()
