"""The demo: a narrated walk through the reference scenario and a failover, on a lab of its own."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from egressd.lab.demo import demo
from egressd.lab.netlab import Lab, lab_processes
from egressd.lab.netns import netns_list


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["static", "kubernetes"])
def test_demo_runs_end_to_end_and_removes_its_lab(tmp_path: Path, mode: str) -> None:
    prefix = f"egm{secrets.token_hex(2)}-"
    lines: list[str] = []
    try:
        code = demo(prefix, tmp_path / "state", out=lines.append, mode=mode)
    finally:
        Lab(prefix, tmp_path / "state").down()
    text = "\n".join(lines)
    assert code == 0, text
    assert '"allowed": true' in text
    assert "403" in text and "10.244.1.3" in text
    assert "the traffic moved from" in text
    assert "UNEXPECTED" not in text
    if mode == "kubernetes":
        assert "tiefighter is selected now" in text and "policy status: 172.18.0.42 on kind-worker" in text
    assert not any(ns.startswith(prefix) for ns in netns_list())
    assert lab_processes(prefix) == []
