"""The announcer on the takeover path: a takeover never waits for scapy to load."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import Any

import pytest

from egressd.adapters.announcer import ScapyAnnouncer
from egressd.core.errors import DataPlaneError
from egressd.core.model import IPAddress

IP = ipaddress.ip_address("192.0.2.42")


class Sender:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        pass


@pytest.fixture
def slow_open(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, Sender]:
    """Opening an interface blocks (in the announcer's thread) until released,
    as loading scapy does for up to a second."""
    release, sender = threading.Event(), Sender()

    def opened(self: ScapyAnnouncer, name: str) -> tuple[Any, str]:
        if not release.wait(10):
            raise DataPlaneError("never released")
        return sender, "02:00:00:00:00:01"

    monkeypatch.setattr(ScapyAnnouncer, "_open", opened)
    monkeypatch.setattr(ScapyAnnouncer, "_listen", lambda self, iface: asyncio.sleep(0))
    return release, sender


async def test_a_first_takeover_returns_before_the_interface_is_open(slow_open: tuple[threading.Event, Sender]) -> None:
    release, sender = slow_open
    announcer = ScapyAnnouncer()
    try:
        await asyncio.wait_for(announcer.start(IP, "net0"), 5)  # returns though opening still blocks
        assert sender.frames == []
        release.set()
        for _ in range(500):
            if sender.frames:
                break
            await asyncio.sleep(0.01)
        assert len(sender.frames) >= 1  # frame 0, from the task
        await announcer.start(IP, "net0")  # open now: frame 0 before it returns
        assert announcer.sent(IP) >= 2
    finally:
        await announcer.stop(IP)
        await announcer.close()


async def test_stopping_while_the_interface_opens_sends_nothing(slow_open: tuple[threading.Event, Sender]) -> None:
    release, sender = slow_open
    announcer = ScapyAnnouncer()
    try:
        await announcer.start(IP, "net0")
        await announcer.stop(IP)
        release.set()
        await asyncio.sleep(0.1)
        assert sender.frames == []
    finally:
        await announcer.close()


class Listener:
    """An ARP listener that records the thread closing it."""

    def __init__(self) -> None:
        self.closed_by: str | None = None
        self.closed = threading.Event()

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.closed_by = threading.current_thread().name
        self.closed.set()


async def test_the_last_withdrawal_closes_the_arp_listener_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing a bound packet socket waits for an RCU grace period (8-20 ms):
    done on the loop, it held up the withdrawals and releases that follow."""
    sender, listener = Sender(), Listener()
    monkeypatch.setattr(ScapyAnnouncer, "_open", lambda self, name: (sender, "02:00:00:00:00:01"))
    monkeypatch.setattr(ScapyAnnouncer, "_open_listener", lambda self, name: listener)
    monkeypatch.setattr(asyncio.get_running_loop(), "add_reader", lambda *args: None)
    announcer = ScapyAnnouncer(on_conflict=lambda ip, mac: None)
    try:
        await announcer.prepare("net0")
        await announcer.start(IP, "net0")

        def current() -> Any:
            return announcer._interfaces["net0"].listener

        for _ in range(500):
            if current() is not None:
                break
            await asyncio.sleep(0.01)
        assert current() is listener
        await announcer.stop(IP)
        assert current() is None
        assert listener.closed.wait(5)
        assert listener.closed_by is not None and listener.closed_by.startswith("egressd-arp-close")
    finally:
        await announcer.close()


async def test_an_announcement_frame_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sender, built = Sender(), list[IPAddress]()

    def build(self: ScapyAnnouncer, ip: IPAddress, mac: str) -> bytes:
        built.append(ip)
        return b"frame"

    monkeypatch.setattr(ScapyAnnouncer, "_open", lambda self, name: (sender, "02:00:00:00:00:01"))
    monkeypatch.setattr(ScapyAnnouncer, "_listen", lambda self, iface: asyncio.sleep(0))
    monkeypatch.setattr(ScapyAnnouncer, "_build_frame", build)
    announcer = ScapyAnnouncer()
    try:
        await announcer.prepare("net0")
        for _ in range(3):
            await announcer.start(IP, "net0")
            await announcer.stop(IP)
        assert sender.frames == [b"frame"] * 3
        assert built == [IP]
    finally:
        await announcer.close()
