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
maps any input to a :class:`LeaseRecord` or raises :class:`MalformedLease`
naming the offending field, never another exception. What a lease may claim is
bounded: a lease duration above :data:`MAX_LEASE_DURATION`, or a
``leaseTransitions`` outside the API's int32 range, is malformed, and a
malformed lease is never acted on (see ``runtime/view.py``).

**The epoch wraps.** ``spec.leaseTransitions`` (the ownership epoch) is an
int32 the API server keeps at 0 or more, so it lives in ``0 .. 2**31 - 1``.
The holder change after 2147483647 writes 0 (:func:`next_epoch`), so the IP
can still be taken over (one more would be refused by the server). Epochs are
compared as serial numbers (RFC 1982) with :func:`epoch_order`: ``b`` is newer
than ``a`` when it is less than half the range (2**30 changes) ahead of it,
so 0 after a wrap is newer than 2147483647. Nothing in the election compares
epochs (takeovers are fenced by the optimistic ``resourceVersion`` write and
the incarnation token); the MQTT sink's retained-state rules do, through
:func:`epoch_order`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from egressd.core.errors import MalformedLease
from egressd.core.model import DURATION_MAX

MANAGED_BY = ("app.kubernetes.io/managed-by", "egressd")
ANN_EGRESS_IP = "egressd.io/egress-ip"
ANN_HOLDER_ADDRESS = "egressd.io/holder-address"
ANN_INCARNATION = "egressd.io/incarnation"
ANN_DURATION_MS = "egressd.io/lease-duration-ms"
ANN_PREFERRED_HOLDER = "egressd.io/preferred-holder"
TRANSITION_REASON = "egressd.io/transition-reason"
"""Annotation: why the holder last changed (shown in policy status)."""
LABEL_SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"

MAX_LEASE_DURATION = int(DURATION_MAX)
"""Seconds: the longest lease duration a lease may claim (annotation or
``leaseDurationSeconds``); a longer one makes the lease malformed. A standby
waits one lease duration, from its own observation, before it takes an IP
over; without a bound a holder (or anyone who can write Leases) could claim
years and keep every standby waiting for good. egressd's failover is measured
in seconds (default 2.5 s) and leader-election leases elsewhere in Kubernetes
are 15 to 60 s, so five minutes leaves ample room. ``timing.leaseDuration``
is bounded by the same constant (the settings' upper bound), so egressd's own
leases always stay readable by its peers."""

EPOCH_MODULUS = 2**31
"""``spec.leaseTransitions`` is an int32 the API keeps at 0 or more: epochs
are ``0 .. EPOCH_MODULUS - 1`` and wrap to 0 (:func:`next_epoch`)."""

_MAX_NAME = 253
"""The longest object name the API accepts; every error quotes the name."""

_MAX_SHOWN = 40
"""Characters of a bad value quoted in an error: a 400-digit annotation is
named, not echoed whole into every log line."""


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
    """Parse an RFC 3339 Time or MicroTime as the API server writes them.
    Raises ValueError for anything else, including a time that leaves the
    years 1 to 9999 once its offset is applied."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"no time zone in {show_value(text)}")
    return _utc(parsed)


def _utc(when: datetime) -> datetime:
    try:
        return when.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{when.isoformat()} is outside the years 1 to 9999 in UTC") from None


def next_epoch(epoch: int) -> int:
    """The epoch a new holder writes: ``epoch + 1``, wrapping from
    2147483647 (int32 max, the largest the API accepts) to 0."""
    return (epoch + 1) % EPOCH_MODULUS


def epoch_order(a: int, b: int) -> int:
    """Compare epochs as serial numbers modulo :data:`EPOCH_MODULUS`
    (RFC 1982): 1 if ``a`` is newer than ``b``, -1 if older, 0 if equal.
    ``a`` is newer when it is ahead of ``b`` by less than half the range, so
    the order survives the wrap (0 is newer than 2147483647). Exactly half
    the range apart counts as older; epochs compared in practice are a few
    holder changes apart."""
    distance = (a - b) % EPOCH_MODULUS
    if distance == 0:
        return 0
    return 1 if distance < EPOCH_MODULUS // 2 else -1


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
    """``spec.leaseTransitions``: holder changes so far, the ownership epoch;
    ``0 .. 2**31 - 1``, wrapping to 0 (:func:`next_epoch`, :func:`epoch_order`)."""
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
    """Validate a Lease object (a JSON mapping) into a :class:`LeaseRecord`.

    Whatever ``obj`` holds, this returns a record or raises
    :class:`MalformedLease` whose message starts with the lease name (when
    there is one) and names the field and the problem."""
    obj = as_mapping(obj, "object")
    meta = as_mapping(obj.get("metadata"), "metadata")
    spec = as_mapping(obj.get("spec"), "spec")
    annotations = as_mapping(meta.get("annotations"), "metadata.annotations")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedLease("metadata.name: missing")
    if len(name) > _MAX_NAME:
        raise MalformedLease(f"metadata.name: longer than {_MAX_NAME} characters ({len(name)})")
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        raise MalformedLease(f"{name}: metadata.resourceVersion: missing")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise MalformedLease(f"{name}: spec.holderIdentity: must be a string, got {show_value(holder)}")
    preferred = annotation(name, annotations, ANN_PREFERRED_HOLDER)
    if preferred is None:
        preferred = spec.get("preferredHolder")
        if preferred is not None and not isinstance(preferred, str):
            raise MalformedLease(f"{name}: spec.preferredHolder: must be a string, got {show_value(preferred)}")
    return LeaseRecord(
        name=name,
        egress_ip=_egress_ip(name, annotations),
        holder=holder or None,
        lease_duration=duration_field(name, spec, annotations, held=bool(holder)),
        transitions=_transitions(name, spec),
        resource_version=rv,
        acquire_time=time_field(name, spec, "acquireTime"),
        renew_time=time_field(name, spec, "renewTime"),
        preferred_holder=preferred or None,
        holder_address=annotation(name, annotations, ANN_HOLDER_ADDRESS) or None,
        incarnation=annotation(name, annotations, ANN_INCARNATION) or None,
        transition_reason=annotation(name, annotations, TRANSITION_REASON) or None,
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
    (the epoch) goes up when the holder changes, as in client-go, and wraps
    from int32 max to 0 (:func:`next_epoch`). A requested
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
        transitions=next_epoch(base.transitions) if changed_holder else base.transitions,
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


def as_mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedLease(f"{field}: must be an object, got {type(value).__name__}")
    return value


def show_value(value: Any) -> str:
    """A bad value, quoted for an error message: strings and numbers cut to
    :data:`_MAX_SHOWN` characters (a huge value is named, not echoed whole into
    every log line), anything else by its type."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if abs(value) >= 10**_MAX_SHOWN:  # repr() itself refuses integers beyond 4300 digits
            return f"an integer of {value.bit_length()} bits"
        return repr(value)
    if isinstance(value, str):
        if len(value) <= _MAX_SHOWN:
            return repr(value)
        return f"{value[:_MAX_SHOWN]!r}... ({len(value)} characters)"
    return f"a {type(value).__name__}"


def annotation(name: str, annotations: Mapping[str, Any], key: str) -> str | None:
    """An annotation's value: None when absent, else a string (the API keeps
    annotations as strings; anything else is malformed)."""
    value = annotations.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedLease(f"{name}: metadata.annotations[{key}]: must be a string, got {show_value(value)}")
    return value


def _egress_ip(name: str, annotations: Mapping[str, Any]) -> str:
    ip = annotation(name, annotations, ANN_EGRESS_IP)
    if ip is None:
        raise MalformedLease(f"{name}: metadata.annotations[{ANN_EGRESS_IP}]: missing")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise MalformedLease(f"{name}: metadata.annotations[{ANN_EGRESS_IP}]: not an IP: {show_value(ip)}") from None


def _transitions(name: str, spec: Mapping[str, Any]) -> int:
    transitions = spec.get("leaseTransitions")
    if transitions is None:
        return 0
    if not isinstance(transitions, int) or isinstance(transitions, bool) or not 0 <= transitions < EPOCH_MODULUS:
        raise MalformedLease(
            f"{name}: spec.leaseTransitions: must be a non-negative integer of at most {EPOCH_MODULUS - 1} "
            f"(int32), got {show_value(transitions)}"
        )
    return transitions


def time_field(name: str, spec: Mapping[str, Any], key: str) -> datetime | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise MalformedLease(f"{name}: spec.{key}: a time without a time zone: {show_value(value)}")
        try:
            return _utc(value)
        except ValueError as exc:
            raise MalformedLease(f"{name}: spec.{key}: {exc}") from None
    if not isinstance(value, str):
        raise MalformedLease(f"{name}: spec.{key}: must be a MicroTime string, got {show_value(value)}")
    try:
        return parse_time(value)
    except ValueError:
        raise MalformedLease(f"{name}: spec.{key}: not a MicroTime: {show_value(value)}") from None


_MS = re.compile(r"[+-]?[0-9]+")


def duration_field(name: str, spec: Mapping[str, Any], annotations: Mapping[str, Any], *, held: bool) -> float:
    ms = annotation(name, annotations, ANN_DURATION_MS)
    if ms is not None:
        field = f"metadata.annotations[{ANN_DURATION_MS}]"
        text = ms.strip()
        if not _MS.fullmatch(text):  # ASCII digits only: int() would take "1_000" or Arabic-Indic digits
            raise MalformedLease(f"{name}: {field}: not an integer: {show_value(ms)}")
        if text.startswith("-") or not text.strip("+-0"):
            raise MalformedLease(f"{name}: {field}: must be positive, got {show_value(ms)}")
        digits = text.lstrip("+").lstrip("0")
        if len(digits) > len(str(MAX_LEASE_DURATION * 1000)) or int(digits) > MAX_LEASE_DURATION * 1000:
            raise MalformedLease(
                f"{name}: {field}: must be at most {MAX_LEASE_DURATION * 1000} ms, got {show_value(ms)}"
            )
        return int(digits) / 1000
    seconds = spec.get("leaseDurationSeconds")
    if seconds is None:
        if held:
            raise MalformedLease(f"{name}: spec.leaseDurationSeconds: missing on a held lease")
        return 0.0
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
        raise MalformedLease(
            f"{name}: spec.leaseDurationSeconds: must be a positive integer, got {show_value(seconds)}"
        )
    if seconds > MAX_LEASE_DURATION:
        raise MalformedLease(
            f"{name}: spec.leaseDurationSeconds: must be at most {MAX_LEASE_DURATION}, got {show_value(seconds)}"
        )
    return float(seconds)
