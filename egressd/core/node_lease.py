"""The node lease: one ``coordination.k8s.io/v1`` Lease per gateway candidate,
``egressd-node-<node>`` in egressd's namespace, renewed by that node's daemon
every ``retryPeriod``. It is the gateway's liveness in the API: a standby
times a holder's claims from the changes of the holder's node lease, so the
cost of liveness is one write per gateway, whatever the number of egress IPs
(DESIGN.md, "Moving parts").

Node leases are not claims. They carry the label ``egressd.io/lease-kind=node``
and a name no claim can have (claims are ``egressd-`` and a dotted or hex IP;
``node`` is neither), and are told apart by the name: :func:`is_node_lease`.
Claims written before node leases existed carry no kind label and still read
as claims.

Besides the standard fields (``holderIdentity`` = the node's name,
``renewTime``, ``leaseDurationSeconds``) the lease keeps annotations:

* ``egressd.io/incarnation`` — the random token of the renewing process;
* ``egressd.io/holder-address`` — the node's address (the mesh's peers);
* ``egressd.io/lease-duration-ms`` — the node's lease duration in milliseconds;
* ``egressd.io/peers`` — the node's published peer set: the other candidates
  of the groups this node is a candidate of, sorted, comma-separated;
* ``egressd.io/heartbeat-seq`` — the sequence number of the last mesh
  datagram the renewing process had sent when it stamped this renew (decimal;
  absent without the mesh, and from earlier versions). A standby that took a
  datagram of that process with a larger sequence knows the renew was stamped
  before it (``rights.stamped_by``).

:func:`node_record_from_object` reads any object defensively: a
:class:`NodeLeaseRecord` or :class:`MalformedLease` naming the field.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from egressd.core import lease as claims
from egressd.core.errors import MalformedLease
from egressd.core.mesh_messages import MAX_SEQ

NODE_PREFIX = "egressd-node-"
LABEL_KIND = "egressd.io/lease-kind"
KIND_NODE = "node"
ANN_PEERS = "egressd.io/peers"
ANN_HEARTBEAT_SEQ = "egressd.io/heartbeat-seq"

_MAX_PEERS = 1000
"""The most peers a node lease may publish (a cluster's gateway candidates)."""


def node_lease_name(node: str) -> str:
    """The node lease of ``node``: ``egressd-node-<node>`` (node names are DNS
    subdomains, valid in a Lease name as they are)."""
    return NODE_PREFIX + node


def is_node_lease(name: str) -> bool:
    """Whether the Lease called ``name`` is a node lease (not a claim)."""
    return name.startswith(NODE_PREFIX)


@dataclass(frozen=True)
class NodeLeaseRecord:
    """What egressd needs of one node lease, already validated."""

    name: str
    node: str
    """``spec.holderIdentity``: the node whose liveness this is."""
    incarnation: str
    """The token of the process that last renewed it."""
    lease_duration: float
    """Seconds: how long a standby waits after the last change it saw."""
    resource_version: str
    address: str | None = None
    peers: tuple[str, ...] = ()
    """The published peer set, sorted."""
    renew_time: datetime | None = None
    """Informational only: nobody compares another node's clock with its own."""
    heartbeat_seq: int | None = None
    """The sequence of the last mesh datagram the renewing process had sent
    when it stamped this renew (None: no mesh, or an earlier version)."""


def node_record_from_object(obj: Mapping[str, Any]) -> NodeLeaseRecord:
    """Validate a node lease object (a JSON mapping). Whatever ``obj`` holds,
    this returns a record or raises :class:`MalformedLease` whose message
    starts with the lease name (when there is one) and names the field."""
    if not isinstance(obj, Mapping):
        raise MalformedLease(f"object: must be an object, got {type(obj).__name__}")
    meta = claims.as_mapping(obj.get("metadata"), "metadata")
    spec = claims.as_mapping(obj.get("spec"), "spec")
    annotations = claims.as_mapping(meta.get("annotations"), "metadata.annotations")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedLease("metadata.name: missing")
    if len(name) > 253:
        raise MalformedLease(f"metadata.name: longer than 253 characters ({len(name)})")
    if not is_node_lease(name):
        raise MalformedLease(f"{name}: metadata.name: a node lease is named {NODE_PREFIX}<node>")
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        raise MalformedLease(f"{name}: metadata.resourceVersion: missing")
    holder = spec.get("holderIdentity")
    if not isinstance(holder, str) or not holder:
        raise MalformedLease(f"{name}: spec.holderIdentity: must be the node's name, got {claims.show_value(holder)}")
    if node_lease_name(holder) != name:
        raise MalformedLease(
            f"{name}: spec.holderIdentity: {claims.show_value(holder)} is not the node the lease is named for"
        )
    incarnation = claims.annotation(name, annotations, claims.ANN_INCARNATION)
    if not incarnation:
        raise MalformedLease(f"{name}: metadata.annotations[{claims.ANN_INCARNATION}]: missing")
    address = claims.annotation(name, annotations, claims.ANN_HOLDER_ADDRESS) or None
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise MalformedLease(
                f"{name}: metadata.annotations[{claims.ANN_HOLDER_ADDRESS}]: not an IP: {claims.show_value(address)}"
            ) from None
    return NodeLeaseRecord(
        name=name,
        node=holder,
        incarnation=incarnation,
        lease_duration=claims.duration_field(name, spec, annotations, held=True),
        resource_version=rv,
        address=address,
        peers=_peers(name, annotations),
        renew_time=claims.time_field(name, spec, "renewTime"),
        heartbeat_seq=_heartbeat_seq(name, annotations),
    )


def node_object_from_record(record: NodeLeaseRecord, namespace: str) -> dict[str, Any]:
    """The Lease object to PUT/POST for ``record`` (resourceVersion included
    unless empty, which means create)."""
    annotations = {
        claims.ANN_INCARNATION: record.incarnation,
        claims.ANN_DURATION_MS: str(round(record.lease_duration * 1000)),
        ANN_PEERS: ",".join(sorted(record.peers)),
    }
    if record.address:
        annotations[claims.ANN_HOLDER_ADDRESS] = record.address
    if record.heartbeat_seq is not None:
        annotations[ANN_HEARTBEAT_SEQ] = str(record.heartbeat_seq)
    metadata: dict[str, Any] = {
        "name": record.name,
        "namespace": namespace,
        "labels": {claims.MANAGED_BY[0]: claims.MANAGED_BY[1], LABEL_KIND: KIND_NODE},
        "annotations": annotations,
    }
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    spec: dict[str, Any] = {
        "holderIdentity": record.node,
        "leaseDurationSeconds": max(1, math.ceil(record.lease_duration)),
    }
    if record.renew_time is not None:
        spec["renewTime"] = claims.format_microtime(record.renew_time)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def _peers(name: str, annotations: Mapping[str, Any]) -> tuple[str, ...]:
    text = claims.annotation(name, annotations, ANN_PEERS)
    if not text:
        return ()
    field = f"metadata.annotations[{ANN_PEERS}]"
    peers = text.split(",")
    if len(peers) > _MAX_PEERS:
        raise MalformedLease(f"{name}: {field}: more than {_MAX_PEERS} peers ({len(peers)})")
    for peer in peers:
        if not peer or len(peer) > 253 or peer != peer.strip():
            raise MalformedLease(f"{name}: {field}: not a node name: {claims.show_value(peer)}")
    return tuple(sorted(set(peers)))


def _heartbeat_seq(name: str, annotations: Mapping[str, Any]) -> int | None:
    text = claims.annotation(name, annotations, ANN_HEARTBEAT_SEQ)
    if text is None:
        return None
    # digits only, no sign, no leading zero: one text per number, as written
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0") or len(text) > 19:
        raise MalformedLease(
            f"{name}: metadata.annotations[{ANN_HEARTBEAT_SEQ}]: not a sequence number: {claims.show_value(text)}"
        )
    seq = int(text)
    if seq > MAX_SEQ:
        raise MalformedLease(f"{name}: metadata.annotations[{ANN_HEARTBEAT_SEQ}]: {seq} is above {MAX_SEQ}")
    return seq
