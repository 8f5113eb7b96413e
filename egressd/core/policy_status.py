"""The ``.status`` egressd writes on an ``EgressGatewayPolicy``.

:func:`policy_status` renders it from the policy's outcome
(:class:`~egressd.core.resolution.PolicyOutcome`) and the leases of its egress
IPs, deterministically, so every node computes the same object and writes only
when it differs from the stored one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from egressd.core.lease import LeaseRecord, format_microtime
from egressd.core.model import IPAddress
from egressd.core.policy import Policy
from egressd.core.resolution import NO_CANDIDATE, READY, PolicyOutcome, name_list

# Condition reasons (CamelCase, as in Kubernetes conditions), beside the outcome's.
NOT_OWNED = "NotOwned"
OVERLAPPING_SELECTION = "OverlappingSelection"
AS_EXPECTED = "AsExpected"


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
            record = leases.get(ip)
            holder = record.holder if record is not None and record.holder else ""
            entry: dict[str, Any] = {
                "egressIP": str(ip),
                "node": holder,
                "epoch": record.transitions if record is not None else 0,
            }
            if record is not None and record.acquire_time is not None:
                entry["lastTransitionTime"] = format_microtime(record.acquire_time)
            entry["reason"] = (record.transition_reason if record is not None else None) or ""
            entries.append(entry)
            if holder:
                owners.append(f"{ip} on {holder}")
            else:
                unowned.append(str(ip))
    not_owned = f"no node owns {name_list(unowned)}" if unowned else ""

    # Ready: served, and every egress IP has an owner.
    if not outcome.served:
        ready = ("False", outcome.reason, outcome.message)
    elif outcome.reason == NO_CANDIDATE:
        ready = ("False", NO_CANDIDATE, outcome.message)
    elif unowned:
        ready = ("False", NOT_OWNED, not_owned)
    else:
        ready = ("True", READY, f"every egress IP has an owner: {name_list(owners)}")

    # Degraded: served, but something keeps it from serving everything it could.
    degraded_reasons: list[str] = []
    if outcome.served:
        if outcome.reason == NO_CANDIDATE:
            degraded_reasons.append(NO_CANDIDATE)
        if unowned:
            degraded_reasons.append(NOT_OWNED)
        if outcome.dropped_pods:
            degraded_reasons.append(OVERLAPPING_SELECTION)
    if degraded_reasons:
        parts = [outcome.message] if degraded_reasons != [NOT_OWNED] else []
        degraded = ("True", degraded_reasons[0], "; ".join([*parts, not_owned] if unowned else parts))
    elif outcome.served:
        degraded = ("False", AS_EXPECTED, outcome.message)
    else:
        degraded = ("False", AS_EXPECTED, "not served (see condition Ready)")

    stored = (previous or {}).get("conditions")  # written by anyone: read defensively
    before = {
        c["type"]: c
        for c in (stored if isinstance(stored, list) else ())
        if isinstance(c, Mapping) and isinstance(c.get("type"), str)
    }
    conditions = []
    for kind, (status, reason, message) in (("Ready", ready), ("Degraded", degraded)):
        old = before.get(kind)
        since = now
        if old is not None and old.get("status") == status and isinstance(old.get("lastTransitionTime"), str):
            since = old["lastTransitionTime"]
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return {
        "observedGeneration": generation,
        "selectedPods": outcome.selected_pods,
        "egressIPs": entries,
        "conditions": conditions,
    }
