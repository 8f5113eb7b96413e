"""The reference scenario end to end in the Kubernetes mode: the lab API server
holds the EgressGatewayPolicy CRD, the walkthrough's policy and the pods'
Pod objects; the daemons select pods by label, with the kernel data plane.

xwing and ywing (org=alliance) reach the outpost through an egress IP;
tiefighter does not until it is labelled org=alliance, and stops again when
the label goes; the policy's status names the owners; a gateway that loses
its egress-gw label hands its IPs to the other one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from egressd.lab.netlab import Lab, egressd_command
from tests.lab.reference import EGRESS, GATEWAYS, OUTPOST, holders, running, wait

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from running(Lab(f"egk{secrets.token_hex(2)}-", tmp_path_factory.mktemp("lab-state"), mode="kubernetes"))


def source_seen(lab: Lab, pod: str) -> str | None:
    """The source address the outpost saw for ``pod``'s request (None: no answer)."""
    try:
        _, raw = lab.http(pod, OUTPOST, timeout=2)
    except OSError:
        return None
    return str(json.loads(raw).get("ip"))


def test_selected_pods_leave_through_an_egress_ip(lab: Lab) -> None:
    for pod in ("xwing", "ywing"):

        def through_egress(pod: str = pod) -> bool:
            return source_seen(lab, pod) in EGRESS

        assert wait(through_egress, 10, f"{pod} through an egress IP")
    assert source_seen(lab, "tiefighter") == "10.244.1.3"


def test_labelling_a_pod_starts_and_stops_its_steering(lab: Lab) -> None:
    lab.label_pod("tiefighter", {"org": "alliance"})
    wait(lambda: source_seen(lab, "tiefighter") in EGRESS, 5, "tiefighter through an egress IP after labelling")
    lab.label_pod("tiefighter", {"org": "empire"})
    wait(lambda: source_seen(lab, "tiefighter") == "10.244.1.3", 5, "tiefighter back on its own address")


def test_policy_status_names_the_owners(lab: Lab) -> None:
    def ready() -> dict[str, Any] | None:
        status = lab.policy("outpost").get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        # xwing and ywing (tiefighter may still count for a moment after the previous test)
        return status if conditions.get("Ready") == "True" and status.get("selectedPods") == 2 else None

    status = wait(ready, 10, "the policy to be Ready with its two pods")
    owners = holders(lab)
    assert {e["egressIP"]: e["node"] for e in status["egressIPs"]} == owners
    epochs = {r.egress_ip: r.transitions for r in lab.leases()}
    assert {e["egressIP"]: e["epoch"] for e in status["egressIPs"]} == epochs
    assert all(e["reason"] and e["lastTransitionTime"].endswith("Z") for e in status["egressIPs"])


def test_a_gateway_losing_its_label_hands_off(lab: Lab) -> None:
    owner = holders(lab)[EGRESS[0]]
    assert owner in GATEWAYS
    other = next(g for g in GATEWAYS if g != owner)
    path = f"/api/v1/nodes/{owner}"
    patch = {"metadata": {"labels": {"egress-gw": None}}}
    status, body = lab.api("PATCH", path, patch, content_type="application/merge-patch+json")
    assert status == 200, body
    try:
        wait(lambda: set(holders(lab).values()) == {other}, 10, f"{other} to hold both IPs")
        wait(lambda: lab.carriers(EGRESS[0]) == [other], 5, f"{EGRESS[0]} on {other} alone")
        assert wait(lambda: source_seen(lab, "xwing") in EGRESS, 5, "xwing through the remaining gateway")

        def reasons() -> set[tuple[str, str]]:
            status, events = lab.api("GET", "/api/v1/namespaces/default/events")
            assert status == 200
            return {(e["involvedObject"]["name"], e["reason"]) for e in events["items"]}

        # the Events are posted beside the handoff, not before it: the IP can move first
        wanted = {(owner, "EgressIPReleased"), (other, "EgressIPAcquired")}
        assert wait(lambda: wanted <= reasons(), 5, "the release and the acquisition as Events"), reasons()
    finally:
        lab.api(
            "PATCH", path, {"metadata": {"labels": {"egress-gw": "true"}}}, content_type="application/merge-patch+json"
        )


def test_status_and_handoff_read_the_policies(lab: Lab) -> None:
    owner = holders(lab)[EGRESS[1]]
    assert owner in GATEWAYS
    other = next(g for g in GATEWAYS if g != owner)
    config = str(lab.config_file(owner))
    out = lab.exec(
        owner,
        [*egressd_command(), "status", "--config", config, "--json", "--no-kernel"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["egressIP"]: row for row in json.loads(out.stdout)["leases"]}
    assert set(rows) == set(EGRESS) and rows[EGRESS[1]]["group"] == "outpost"
    assert rows[EGRESS[1]]["role"] == "owner"
    lab.exec(owner, [*egressd_command(), "handoff", EGRESS[1], "--to", other, "--config", config], check=True)
    assert holders(lab)[EGRESS[1]] == other
