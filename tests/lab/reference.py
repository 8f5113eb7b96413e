"""What the lab tests share: the reference scenario's names, a lab brought up
and down around a module, waiting for the lab to get somewhere, and reading
the outpost's log."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from egressd.lab.netlab import Lab

OUTPOST = "http://172.18.0.7:8000/"
EGRESS = ("172.18.0.42", "172.18.0.43")
GATEWAYS = ("kind-worker3", "kind-worker4")


def running(lab: Lab) -> Iterator[Lab]:
    """``lab`` up, with an owner for each egress IP, and down again afterwards (also on failure)."""
    try:
        lab.up()
        wait(lambda: all(holders(lab).values()), 20, "owners for both egress IPs")
        yield lab
    finally:
        lab.down()


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def holders(lab: Lab) -> dict[str, str | None]:
    """The holder of each egress IP's lease, as the API server has it."""
    status, body = lab.api("GET", "/apis/coordination.k8s.io/v1/namespaces/egressd/leases")
    if status != 200:
        return dict.fromkeys(EGRESS)
    found = {
        i["metadata"]["annotations"].get("egressd.io/egress-ip"): i["spec"].get("holderIdentity") for i in body["items"]
    }
    return {ip: found.get(ip) for ip in EGRESS}


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of an outpost log (a half-written last line is skipped)."""
    records: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
    return records
