"""The ``.status`` egressd writes on an ``EgressGatewayPolicy``.

:func:`policy_status` renders it from the policy's outcome
(:class:`~egressd.core.resolution.PolicyOutcome`) and the leases of its egress
IPs, deterministically, so every node computes the same object and writes only
when it differs from the stored one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from egressd.core.lease import LeaseRecord, format_microtime
from egressd.core.model import IPAddress
from egressd.core.policy import Policy
from egressd.core.resolution import NO_CANDIDATE, READY, PolicyOutcome, name_list

# Condition reasons (CamelCase, as in Kubernetes conditions), beside the outcome's.
NOT_OWNED = "NotOwned"
OVERLAPPING_SELECTION = "OverlappingSelection"
AS_EXPECTED = "AsExpected"


_Condition = tuple[str, str, str]
"""A condition's (status, reason, message)."""


def policy_status(
    policy: Policy | None,
    outcome: PolicyOutcome,
    leases: Mapping[IPAddress, LeaseRecord | None],
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """The ``.status`` egressd writes for a policy.

    ``leases`` holds the lease of each egress IP (None or missing: no lease
    yet); its ``transition_reason`` says why the holder last changed.
    ``previous`` is the stored status: a condition whose status did not change
    keeps its ``lastTransitionTime``, so the same inputs give the same object
    and a node writes only when something changed. ``now`` is the
    RFC 3339 time stamped on conditions that did change. Only served policies
    list their egress IPs.
    """
    generation = policy.generation if policy is not None else outcome.generation
    entries: list[dict[str, Any]] = []
    owners: list[str] = []
    unowned: list[str] = []
    if policy is not None and outcome.served:
        for ip in policy.egress_ips:
            entry = _egress_ip_entry(ip, leases.get(ip))
            entries.append(entry)
            if entry["node"]:
                owners.append(f"{ip} on {entry['node']}")
            else:
                unowned.append(str(ip))
    not_owned = f"no node owns {name_list(unowned)}" if unowned else ""
    conditions = {
        "Ready": _ready(outcome, owners, not_owned),
        "Degraded": _degraded(outcome, not_owned),
    }
    return {
        "observedGeneration": generation,
        "selectedPods": outcome.selected_pods,
        "egressIPs": entries,
        "conditions": _stamped(conditions, previous, now, generation),
    }


def _egress_ip_entry(ip: IPAddress, record: LeaseRecord | None) -> dict[str, Any]:
    """One item of ``status.egressIPs``: the holder of the IP's lease ("" when
    none), its epoch, and since when and why it holds it."""
    holder = record.holder if record is not None and record.holder else ""
    entry: dict[str, Any] = {
        "egressIP": str(ip),
        "node": holder,
        "epoch": record.transitions if record is not None else 0,
    }
    if record is not None and record.acquire_time is not None:
        entry["lastTransitionTime"] = format_microtime(record.acquire_time)
    entry["reason"] = (record.transition_reason if record is not None else None) or ""
    return entry


def _ready(outcome: PolicyOutcome, owners: Sequence[str], not_owned: str) -> _Condition:
    """Ready: served, and every egress IP has an owner (``not_owned`` names
    the IPs without one, "" when there are none)."""
    if not outcome.served:
        return ("False", outcome.reason, outcome.message)
    if outcome.reason == NO_CANDIDATE:
        return ("False", NO_CANDIDATE, outcome.message)
    if not_owned:
        return ("False", NOT_OWNED, not_owned)
    return ("True", READY, f"every egress IP has an owner: {name_list(owners)}")


def _degraded(outcome: PolicyOutcome, not_owned: str) -> _Condition:
    """Degraded: served, but something keeps it from serving everything it could."""
    if not outcome.served:
        return ("False", AS_EXPECTED, "not served (see condition Ready)")
    reasons: list[str] = []
    if outcome.reason == NO_CANDIDATE:
        reasons.append(NO_CANDIDATE)
    if not_owned:
        reasons.append(NOT_OWNED)
    if outcome.dropped_pods:
        reasons.append(OVERLAPPING_SELECTION)
    if not reasons:
        return ("False", AS_EXPECTED, outcome.message)
    parts = [outcome.message] if reasons != [NOT_OWNED] else []
    return ("True", reasons[0], "; ".join([*parts, not_owned] if not_owned else parts))


def _stamped(
    conditions: Mapping[str, _Condition], previous: Mapping[str, Any] | None, now: str, generation: int
) -> list[dict[str, Any]]:
    """The conditions as written: one whose status did not change keeps the
    ``lastTransitionTime`` of the stored status ``previous``; others get ``now``."""
    stored = (previous or {}).get("conditions")  # written by anyone: read defensively
    before = {
        c["type"]: c
        for c in (stored if isinstance(stored, list) else ())
        if isinstance(c, Mapping) and isinstance(c.get("type"), str)
    }
    written = []
    for kind, (status, reason, message) in conditions.items():
        old = before.get(kind)
        since = now
        if old is not None and old.get("status") == status and isinstance(old.get("lastTransitionTime"), str):
            since = old["lastTransitionTime"]
        written.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return written
