"""The lease record egressd reads and writes, and its mapping to a
``coordination.k8s.io/v1`` Lease object.

One Lease per egress IP, in egressd's namespace, named from the IP, labelled
``app.kubernetes.io/managed-by=egressd``. Besides the standard fields egressd
keeps three annotations:

* ``egressd.io/egress-ip`` — the IP the lease elects (the name is derived, this is exact);
* ``egressd.io/holder-address`` — the holder node's address, for steering;
* ``egressd.io/incarnation`` — a random token of the holder *process*, so a
  second daemon claiming the same node name is recognised (identity clash);
* ``egressd.io/lease-duration-ms`` — the holder's lease duration in
  milliseconds (``leaseDurationSeconds`` is whole seconds; egressd's are not);
* ``egressd.io/preferred-holder`` — a requested successor (planned handoff).
  ``spec.preferredHolder`` would be the natural place, but API servers drop it
  unless ``spec.strategy`` is set and the CoordinatedLeaderElection feature
  gate is on, so egressd reads it (when present) but writes the annotation.

Objects written by others are read defensively: :func:`record_from_object`
raises :class:`MalformedLease` naming the offending field.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from egressd.core.errors import MalformedLease

MANAGED_BY = ("app.kubernetes.io/managed-by", "egressd")
ANN_EGRESS_IP = "egressd.io/egress-ip"
ANN_HOLDER_ADDRESS = "egressd.io/holder-address"
ANN_INCARNATION = "egressd.io/incarnation"
ANN_DURATION_MS = "egressd.io/lease-duration-ms"
ANN_PREFERRED_HOLDER = "egressd.io/preferred-holder"
TRANSITION_REASON = "egressd.io/transition-reason"
"""Annotation: why the holder last changed (shown in policy status)."""
LABEL_SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"


def lease_name(ip: str) -> str:
    """The Lease name for an egress IP: ``egressd-172-18-0-42`` or, for IPv6,
    the exploded address with ``-`` (``egressd-fd00-0000-...``)."""
    addr = ipaddress.ip_address(ip)
    text = addr.exploded if addr.version == 6 else str(addr)
    return "egressd-" + text.replace(".", "-").replace(":", "-")


def format_microtime(when: datetime) -> str:
    """Kubernetes MicroTime: UTC, six fractional digits, ``Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 Time or MicroTime as the API server writes them."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"no time zone in {text!r}")
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class LeaseRecord:
    """What egressd needs of one Lease, already validated."""

    name: str
    egress_ip: str
    holder: str | None
    """``spec.holderIdentity``; None or empty when the lease is free."""
    lease_duration: float
    """Seconds, from the ms annotation if present, else ``leaseDurationSeconds``."""
    transitions: int
    """``spec.leaseTransitions``: holder changes so far, the ownership epoch."""
    resource_version: str
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    """Written by the holder. Informational only: standbys never compare it with
    their own clock (clocks differ); they time expiry from their own observation."""
    preferred_holder: str | None = None
    """A requested successor (planned handoff): the ``egressd.io/preferred-holder``
    annotation, or ``spec.preferredHolder``."""
    holder_address: str | None = None
    incarnation: str | None = None
    transition_reason: str | None = None
    """Why the holder last changed (the ``egressd.io/transition-reason``
    annotation): the new holder's reason for taking it (``free``, ``expired``,
    ``handoff``...) or ``released``; shown in the policies' status."""

    @property
    def free(self) -> bool:
        return not self.holder


def record_from_object(obj: Mapping[str, Any]) -> LeaseRecord:
    """Validate a Lease object (a JSON mapping) into a :class:`LeaseRecord`."""
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedLease("metadata.name: missing")
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        raise MalformedLease(f"{name}: metadata.resourceVersion: missing")
    ip = annotations.get(ANN_EGRESS_IP)
    if not isinstance(ip, str):
        raise MalformedLease(f"{name}: metadata.annotations[{ANN_EGRESS_IP}]: missing")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise MalformedLease(f"{name}: metadata.annotations[{ANN_EGRESS_IP}]: not an IP: {ip!r}") from None
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise MalformedLease(f"{name}: spec.holderIdentity: must be a string, got {holder!r}")
    transitions = spec.get("leaseTransitions", 0)
    if transitions is None:
        transitions = 0
    if not isinstance(transitions, int) or isinstance(transitions, bool) or transitions < 0:
        raise MalformedLease(f"{name}: spec.leaseTransitions: must be a non-negative integer, got {transitions!r}")
    duration = _duration(name, spec, annotations, held=bool(holder))
    preferred = annotations.get(ANN_PREFERRED_HOLDER, spec.get("preferredHolder"))
    if preferred is not None and not isinstance(preferred, str):
        raise MalformedLease(f"{name}: preferred holder: must be a string, got {preferred!r}")
    return LeaseRecord(
        name=name,
        egress_ip=ip,
        holder=holder or None,
        lease_duration=duration,
        transitions=transitions,
        resource_version=rv,
        acquire_time=_time(name, spec, "acquireTime"),
        renew_time=_time(name, spec, "renewTime"),
        preferred_holder=preferred or None,
        holder_address=_opt_str(annotations.get(ANN_HOLDER_ADDRESS)),
        incarnation=_opt_str(annotations.get(ANN_INCARNATION)),
        transition_reason=_opt_str(annotations.get(TRANSITION_REASON)),
    )


def object_from_record(record: LeaseRecord, namespace: str) -> dict[str, Any]:
    """The Lease object to PUT/POST for ``record`` (resourceVersion included
    unless empty, which means create)."""
    annotations = {ANN_EGRESS_IP: record.egress_ip}
    if record.lease_duration > 0:  # a free lease read without any duration keeps none
        annotations[ANN_DURATION_MS] = str(round(record.lease_duration * 1000))
    if record.holder_address:
        annotations[ANN_HOLDER_ADDRESS] = record.holder_address
    if record.incarnation:
        annotations[ANN_INCARNATION] = record.incarnation
    if record.preferred_holder:
        annotations[ANN_PREFERRED_HOLDER] = record.preferred_holder
    if record.transition_reason:
        annotations[TRANSITION_REASON] = record.transition_reason
    metadata: dict[str, Any] = {
        "name": record.name,
        "namespace": namespace,
        "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
        "annotations": annotations,
    }
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": max(1, math.ceil(record.lease_duration)),
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time is not None:
        spec["acquireTime"] = format_microtime(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = format_microtime(record.renew_time)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def held_by(
    base: LeaseRecord | None,
    *,
    name: str,
    egress_ip: str,
    holder: str,
    holder_address: str | None,
    incarnation: str,
    lease_duration: float,
    now: datetime,
    reason: str = "",
) -> LeaseRecord:
    """The record to write when ``holder`` acquires or renews (``reason``: why
    it acquires, kept as the transition reason while the tenure lasts). ``leaseTransitions``
    (the epoch) goes up when the holder changes, as in client-go. A requested
    successor (``preferred_holder``) is kept while the holder renews and dropped
    when the holder changes: the request was then either fulfilled or given up
    after the handoff grace."""
    if base is None:
        return LeaseRecord(
            name=name,
            egress_ip=egress_ip,
            holder=holder,
            lease_duration=lease_duration,
            transitions=0,
            resource_version="",
            acquire_time=now,
            renew_time=now,
            holder_address=holder_address,
            incarnation=incarnation,
            transition_reason=reason or None,
        )
    same_tenure = base.holder == holder and base.incarnation == incarnation
    changed_holder = base.holder != holder
    return replace(
        base,
        holder=holder,
        lease_duration=lease_duration,
        transitions=base.transitions + 1 if changed_holder else base.transitions,
        acquire_time=base.acquire_time if same_tenure and base.acquire_time else now,
        renew_time=now,
        holder_address=holder_address,
        incarnation=incarnation,
        preferred_holder=None if changed_holder or base.preferred_holder == holder else base.preferred_holder,
        transition_reason=base.transition_reason if same_tenure else (reason or None),
    )


def released(base: LeaseRecord, *, successor: str | None, now: datetime) -> LeaseRecord:
    """The record to write when the holder lets go: holder cleared, optionally
    naming a successor in ``preferredHolder``."""
    return replace(
        base,
        holder=None,
        holder_address=None,
        incarnation=None,
        renew_time=now,
        acquire_time=None,
        preferred_holder=successor,
        transition_reason="released" if successor is None else f"released-to-{successor}",
    )


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedLease(f"{field}: must be an object, got {type(value).__name__}")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(name: str, spec: Mapping[str, Any], key: str) -> datetime | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise MalformedLease(f"{name}: spec.{key}: must be a MicroTime string, got {value!r}")
    try:
        return parse_time(value)
    except ValueError:
        raise MalformedLease(f"{name}: spec.{key}: not a MicroTime: {value!r}") from None


def _duration(name: str, spec: Mapping[str, Any], annotations: Mapping[str, Any], *, held: bool) -> float:
    ms = annotations.get(ANN_DURATION_MS)
    if ms is not None:
        try:
            value = int(str(ms)) / 1000
        except ValueError:
            raise MalformedLease(f"{name}: metadata.annotations[{ANN_DURATION_MS}]: not an integer: {ms!r}") from None
        if value <= 0:
            raise MalformedLease(f"{name}: metadata.annotations[{ANN_DURATION_MS}]: must be positive, got {ms!r}")
        return value
    seconds = spec.get("leaseDurationSeconds")
    if seconds is None:
        if held:
            raise MalformedLease(f"{name}: spec.leaseDurationSeconds: missing on a held lease")
        return 0.0
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
        raise MalformedLease(f"{name}: spec.leaseDurationSeconds: must be a positive integer, got {seconds!r}")
    return float(seconds)
