"""The recording data plane's journal is a record, not the data path."""

from __future__ import annotations

import json
import logging
from ipaddress import ip_address
from pathlib import Path

import pytest

from egressd.adapters.recording import RecordingDataPlane

IP = ip_address("172.18.0.42")


async def test_a_full_disk_does_not_stop_the_data_plane(caplog: pytest.LogCaptureFixture) -> None:
    plane = RecordingDataPlane("gw-a", Path("/dev/full"))  # every write fails with ENOSPC
    with caplog.at_level(logging.WARNING, logger="egressd.adapters.recording"):
        await plane.claim(IP, "net0", 30)
        await plane.activate(IP, "outpost")
        await plane.start(IP, "net0")
    assert IP in plane.snat and IP in plane.announcing
    assert [op["op"] for op in plane.ops] == ["claim", "snat-on", "announce"]
    assert plane.journal_errors == 3
    errors = [r for r in caplog.records if "journal: cannot write" in r.getMessage()]
    assert len(errors) == 1, "logged once, then counted"
    plane.close()


async def test_the_journal_says_when_it_is_writable_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal"
    plane = RecordingDataPlane("gw-a", path)
    await plane.claim(IP, "net0", 30)
    good = plane._journal
    with Path("/dev/full").open("ab", buffering=0) as full:
        plane._journal = full  # the disk fills up
        await plane.activate(IP, "outpost")
    plane._journal = good
    with caplog.at_level(logging.WARNING, logger="egressd.adapters.recording"):
        await plane.start(IP, "net0")
    plane.close()
    assert [json.loads(line)["op"] for line in path.read_text().splitlines()] == ["claim", "announce"]
    assert plane.journal_errors == 1
    assert "journal: writable again after 1 lost line(s)" in caplog.text
