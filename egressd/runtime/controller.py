"""The Kubernetes mode: policies, pods and nodes in; groups, status and Events out.

Every node runs this beside its daemon:

* **watch** EgressGatewayPolicies, Nodes, Namespaces and Pods (a
  :class:`~egressd.ports.ClusterSource`) into a :class:`~egressd.core.cluster_index.Cluster`;
* **resolve** it (:func:`egressd.core.resolution.resolve`) after every relevant
  change, debounced, and hand the daemon the groups of every valid policy —
  selected pods as sources, nodes matching the nodeSelector as candidates — and
  the groups this node steers (its own selected pods only). A policy naming an
  interface this node lacks is not served by this node, and said so;
* **status**: write each policy's ``.status`` (owner, epoch and last transition
  of each egress IP from the leases; Ready and Degraded conditions) when what
  is stored differs from what the leases say. Every candidate of the policy
  computes the same status from the same leases, so whoever writes first wins
  and the others find nothing to change; a 409 only means someone else wrote;
* **Events**: ownership events of this node's members become Kubernetes
  Events on the policy and the node (with the objects' uids, without which
  ``kubectl describe`` does not show them), rate-limited per object and
  reason; a policy turning invalid or conflicting becomes one Warning on the
  policy per cluster (see :func:`~egressd.core.kube_events.shared_event_name`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from egressd.core.addressing import on_link_problem
from egressd.core.cluster_index import Cluster
from egressd.core.errors import ApiError, LostRace, NotFound
from egressd.core.kube_events import (
    OWNERSHIP_REASONS,
    EventLimiter,
    Involved,
    node_ref,
    ownership_message,
    policy_ref,
    render_event,
    shared_event_name,
)
from egressd.core.kube_objects import RESOURCES
from egressd.core.lease import lease_name
from egressd.core.model import EgressGroup, Settings
from egressd.core.ownership_events import OwnershipEvent
from egressd.core.policy_status import policy_status
from egressd.core.resolution import PolicyOutcome, Resolution, resolve
from egressd.ports import Clock, ClusterEvent, ClusterSource
from egressd.runtime.daemon import Daemon
from egressd.runtime.supervisor import wait_event

log = logging.getLogger(__name__)


class Controller:
    def __init__(
        self,
        settings: Settings,
        source: ClusterSource,
        daemon: Daemon,
        *,
        clock: Clock,
        debounce: float = 0.02,
        status_debounce: float = 0.1,
        limiter: EventLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.me = settings.node.name
        self.source = source
        self.daemon = daemon
        self.clock = clock
        self.debounce = debounce
        self.status_debounce = status_debounce
        self.cluster = Cluster()
        self.resolution: Resolution | None = None
        self.synced: set[str] = set()
        self.unservable: dict[str, str] = {}
        """Policy name -> why this node cannot serve it (its interface is missing here)."""
        self._dirty = asyncio.Event()
        self._status_dirty = asyncio.Event()
        self._limiter = limiter or EventLimiter()
        self._reported: dict[str, str] = {}
        """Policy name -> the problem last reported in an Event (reported once per change)."""
        self._conflicts: dict[str, tuple[str, float]] = {}
        """Policy name -> (resourceVersion, monotonic time) of its last status write that lost a race."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._uids: dict[tuple[str, str], str] = {}
        """(resource, name) -> metadata.uid of every policy (valid or not) and
        of this node: the involvedObject.uid of the Events about them."""
        self.resolved = asyncio.Event()
        """Set after the first resolution was handed to the daemon."""

    # --- wiring -------------------------------------------------------------

    def attach(self) -> None:
        """Run as tasks of the daemon and receive its ownership events."""
        self.daemon.add_task("cluster-watch", self.watch)
        self.daemon.add_task("resolve", self.resolve_forever)
        self.daemon.add_task("policy-status", self.status_forever)
        self.daemon.ready_checks.append(self.readiness_problems)
        self.daemon.status_parts["policies"] = self.policies_report

    def policies_report(self) -> dict[str, Any]:
        """What became of each policy, as this node sees it (``egressd status``, /status)."""
        if self.resolution is None:
            return {}
        return {
            name: {
                "reason": outcome.reason,
                "message": outcome.message,
                "selectedPods": outcome.selected_pods,
                "candidates": list(outcome.candidates),
                "notServedHere": self.unservable.get(name) or None,
            }
            for name, outcome in sorted(self.resolution.outcomes.items())
        }

    def selected_pods(self) -> dict[str, float]:
        """Policy -> pods it serves (a metric)."""
        outcomes = self.resolution.outcomes if self.resolution else {}
        return {name: float(o.selected_pods) for name, o in outcomes.items()}

    def served(self) -> dict[str, float]:
        """Policy -> 1 if served (valid and not in conflict), else 0 (a metric)."""
        outcomes = self.resolution.outcomes if self.resolution else {}
        return {name: 1.0 if o.served else 0.0 for name, o in outcomes.items()}

    def synced_all(self) -> bool:
        return self.synced.issuperset(RESOURCES)

    def readiness_problems(self) -> list[str]:
        missing = [r for r in RESOURCES if r not in self.synced]
        return [f"not yet listed: {', '.join(missing)}"] if missing else []

    # --- watch ---------------------------------------------------------------

    async def watch(self) -> None:
        async for event in self.source.watch():
            self.observe(event)

    def observe(self, event: ClusterEvent) -> None:
        """Apply one watch event to the index; wake the resolver if it mattered."""
        self._note_uids(event)
        if event.type == "RELISTED":
            changed = self.cluster.replace(event.resource, list(event.objects))
            if event.resource not in self.synced:
                log.info("listed %d %s", len(event.objects), event.resource)
            self.synced.add(event.resource)
        else:
            assert event.object is not None
            changed = self.cluster.apply(event.resource, event.type, event.object)
            if event.resource == "policies" and event.type == "DELETED":
                name = str((event.object.get("metadata") or {}).get("name") or "")
                self._reported.pop(name, None)
                self._conflicts.pop(name, None)
        if event.resource == "policies":
            self._status_dirty.set()  # a status written elsewhere may differ from the leases
        if changed:
            self._dirty.set()

    def _note_uids(self, event: ClusterEvent) -> None:
        if event.resource not in ("policies", "nodes"):
            return
        if event.type == "RELISTED":
            for key in [k for k in self._uids if k[0] == event.resource]:
                del self._uids[key]
        for obj in event.objects if event.type == "RELISTED" else (event.object or {},):
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            name, uid = meta.get("name"), meta.get("uid")
            if not isinstance(name, str) or (event.resource == "nodes" and name != self.me):
                continue
            if event.type == "DELETED" or not isinstance(uid, str) or not uid:
                self._uids.pop((event.resource, name), None)
            else:
                self._uids[(event.resource, name)] = uid

    # --- resolve ---------------------------------------------------------------

    async def resolve_forever(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce)  # let a burst of watch events land first
            self._dirty.clear()
            if not self.synced_all():
                continue
            await self.resolve_once()

    async def resolve_once(self) -> None:
        """Resolve the cluster and hand the result to the daemon."""
        started = self.clock.monotonic()
        resolution = resolve(self.cluster, exclude_cordoned=self.settings.kubernetes.exclude_cordoned)
        groups = list(resolution.groups)
        for i, group in enumerate(groups):
            if self.me in group.candidates:
                why = await self._unservable(group)
                if why:
                    groups[i] = replace(group, candidates=tuple(c for c in group.candidates if c != self.me))
        candidate_of = {g.name for g in resolution.groups if self.me in g.candidates}
        steering = tuple(g for g in resolution.local_groups(self.me) if g.name not in candidate_of)
        self._log_changes(self.resolution, resolution)
        self.resolution = resolution
        await self.daemon.apply(groups, steering)
        self.resolved.set()
        self._report_outcomes(resolution)
        self._status_dirty.set()
        log.debug(
            "resolved %d polic(ies), %d group(s) in %.1f ms",
            len(resolution.outcomes),
            len(groups),
            (self.clock.monotonic() - started) * 1000,
        )

    async def _unservable(self, group: EgressGroup) -> str:
        """Why this node cannot serve ``group`` (empty if it can): its
        interface is missing, or one of its egress IPs is an address this node
        already has there, or the network or broadcast address of its subnet
        (announcing it would steal it from its owner)."""
        reason, why = await self._interface_problem(group)
        if why and self.unservable.get(group.name) != why:
            log.error("policy %s: %s; this node will not serve its egress IPs", group.name, why)
            self._event(policy_ref(group.name, self._uid(group.name)), "Warning", reason, why)
            self._event(self._node(), "Warning", reason, f"policy {group.name}: {why}")
        if why:
            self.unservable[group.name] = why
        elif self.unservable.pop(group.name, None):
            log.info("policy %s: interface %s can serve its egress IPs now", group.name, group.interface)
        return why

    async def _interface_problem(self, group: EgressGroup) -> tuple[str, str]:
        """(Event reason, why) for :meth:`_unservable`; ("", "") if none. A
        failed lookup does not stop the resolution: the node then serves, as
        it would have before the lookup."""
        addresses = self.daemon.dataplane.addresses
        try:
            if not await addresses.has_interface(group.interface):
                return "InterfaceMissing", f"interface {group.interface} does not exist on node {self.me}"
            on_link = await addresses.interface_addresses(group.interface)
        except Exception as exc:  # a failed lookup must not stop the resolution
            log.error("policy %s: cannot look up interface %s: %s", group.name, group.interface, exc)
            return "", ""
        for ip in group.egress_ips:
            why = on_link_problem(ip, group.interface, on_link)
            if why is not None:
                return "EgressIPOnLink", f"{why} (node {self.me})"
        return "", ""

    def _log_changes(self, before: Resolution | None, after: Resolution) -> None:
        old = {g.name: g for g in before.groups} if before else {}
        for group in after.groups:
            prev = old.pop(group.name, None)
            if prev == group:
                continue
            outcome = after.outcomes.get(group.name)
            log.info(
                "policy %s: %d source(s), candidates %s, egress IPs %s%s",
                group.name,
                len(group.source_cidrs),
                ",".join(group.candidates) or "none",
                ",".join(map(str, group.egress_ips)),
                f" ({outcome.reason})" if outcome and outcome.reason != "Ready" else "",
            )
        for name in old:
            log.info("policy %s: no longer served (deleted, invalid or in conflict)", name)

    def _report_outcomes(self, resolution: Resolution) -> None:
        for name, outcome in resolution.outcomes.items():
            problem = "" if outcome.served else f"{outcome.reason}: {outcome.message}"
            if self._reported.get(name, "") == problem:
                continue
            self._reported[name] = problem
            if not problem:
                continue
            log.error("policy %s is not served: %s", name, problem)
            if self._writer(outcome):
                # every node sees the same problem at once: one Event, by name
                self._event(
                    policy_ref(name, self._uid(name)),
                    "Warning",
                    outcome.reason,
                    outcome.message,
                    shared_generation=outcome.generation,
                )

    # --- status ------------------------------------------------------------------

    async def status_forever(self) -> None:
        self.daemon.view.listener(self._status_dirty)  # a lease change can change a status too
        while True:
            await self._status_dirty.wait()
            await asyncio.sleep(self.status_debounce)
            self._status_dirty.clear()
            if self.resolution is None:
                continue
            if await self.write_statuses():
                await wait_event(self._status_dirty, 1.0)  # back off a little after failures
                self._status_dirty.set()

    async def write_statuses(self) -> bool:
        """Write every policy status that differs from the leases; whether a
        write failed or lost a race (then the caller waits for news)."""
        resolution = self.resolution
        if resolution is None:
            return False
        failed = False
        for name, outcome in sorted(resolution.outcomes.items()):
            if not self._writer(outcome) or name not in self.cluster.resource_versions:
                continue
            policy = self.cluster.policies.get(name)
            records = (
                {ip: self.daemon.view.get(lease_name(str(ip))).record for ip in policy.egress_ips} if policy else {}
            )
            rv, stored = self.cluster.resource_versions[name], self.cluster.statuses[name]
            conflict = self._conflicts.get(name)
            if conflict is not None and conflict[0] == rv and self.clock.monotonic() - conflict[1] < 1.0:
                continue  # lost a race with this version just now: wait for the newer one
            now = self.clock.wall().strftime("%Y-%m-%dT%H:%M:%SZ")
            status = policy_status(policy, outcome, records, stored, now)
            if dict(status) == dict(stored):
                continue
            try:
                written = await self.source.write_policy_status(name, status, rv, deadline=self.clock.monotonic() + 2.0)
            except LostRace:
                # the policy changed meanwhile: its watch event brings the new
                # version; until then (or for a second) this version is not
                # written again, so a storm of 409s is not answered with a
                # write per lease renew
                log.debug("policy %s: status changed meanwhile; comparing again when the change arrives", name)
                self._conflicts[name] = (rv, self.clock.monotonic())
                failed = True
            except NotFound:
                pass  # deleted meanwhile: its DELETED event is on the way
            except ApiError as exc:
                log.warning("policy %s: could not write status: %s", name, exc)
                failed = True
            else:
                self._conflicts.pop(name, None)
                self.cluster.apply("policies", "MODIFIED", written)  # the new resourceVersion, before the watch
                log.debug("policy %s: status written", name)
        return failed

    def _writer(self, outcome: PolicyOutcome) -> bool:
        """Whether this node keeps the status of the policy: its candidates do;
        when there are none (no node matches, or the policy is invalid), every node."""
        return not outcome.candidates or self.me in outcome.candidates

    # --- Events --------------------------------------------------------------------

    def emit(self, event: OwnershipEvent) -> None:
        """:class:`~egressd.ports.EventSink`: an ownership event of this node's
        members as Events on its policy and on this node."""
        type_, reason, _ = OWNERSHIP_REASONS.get(event.kind, ("", "", ""))
        if not reason:
            return
        message = ownership_message(
            event.kind,
            egress_ip=event.egress_ip,
            node=event.node,
            epoch=event.epoch,
            reason=event.reason,
            detail=event.detail,
        )
        policy = self._policy_of(event.egress_ip)
        if policy:
            self._event(policy_ref(policy, self._uid(policy)), type_, reason, message)
        self._event(self._node(), type_, reason, message)

    def _policy_of(self, egress_ip: str) -> str:
        for group in self.daemon.groups:
            if any(str(ip) == egress_ip for ip in group.egress_ips):
                return group.name
        return ""

    def _uid(self, policy: str) -> str:
        return self._uids.get(("policies", policy), "")

    def _node(self) -> Involved:
        """This node as an Event's involvedObject: with its Node's uid, or,
        while that is not known, with its name as the uid. ``kubectl describe
        node`` asks for the Events of either (the kubelet's carry the name);
        an Event with no uid at all it never shows."""
        return node_ref(self.me, self._uids.get(("nodes", self.me)) or self.me)

    def _event(
        self, involved: Involved, type_: str, reason: str, message: str, *, shared_generation: int | None = None
    ) -> None:
        """Create an Event; ``shared_generation`` (the object's generation)
        makes it one Event per cluster: every node names it alike."""
        allowed, held = self._limiter.allow((involved.kind, involved.name, reason), self.clock.monotonic())
        if not allowed:
            log.debug("event %s on %s/%s held back (rate limit)", reason, involved.kind, involved.name)
            return
        name = ""
        if shared_generation is not None:
            name = shared_event_name(involved, reason=reason, message=message, generation=shared_generation)
        elif held:
            message = f"{message} ({held} similar event(s) held back)"
        body = render_event(
            involved, type_=type_, reason=reason, message=message, node=self.me, now=self.clock.wall(), name=name
        )
        task = asyncio.get_running_loop().create_task(self._send(body), name=f"event:{reason}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, body: Mapping[str, Any]) -> None:
        try:
            await self.source.create_event(body, deadline=self.clock.monotonic() + 2.0)
        except LostRace:
            # 409 AlreadyExists: another node recorded this shared Event first
            log.debug("event %s: already recorded by another node", (body.get("metadata") or {}).get("name"))
        except ApiError as exc:
            log.warning("could not record event %s: %s", body.get("reason"), exc)
