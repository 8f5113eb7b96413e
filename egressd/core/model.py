"""Settings of one egressd node: the domain model.

Frozen dataclasses with documented fields (unit, meaning and why the default);
their constructors reject values the runtime cannot honour. The config file is
read into them by :mod:`egressd.core.config`; the field validators that reading
shares with the policy and selector parsers are :mod:`egressd.core.fields`.

The timing defaults aim at a node-loss failover under 3 s. The safety argument
(docs/architecture.md) needs two inequalities, checked here:

* (T1) ``leaseDuration > renewDeadline + kernelFence + safetyMargin``: a
  standby takes over only after the holder's daemon fence *and* its kernel
  fence have both fired, however the holder died. ``kernelFence`` is the
  sub-second nftables fence, ``fenceTtl + fenceSlack``, when it is on (the
  default), else the address lifetime, ``addressLifetime + kernelSlack``.
  The kernel removes an expired IPv4 address up to about a second late (its
  expiry worker runs on whole-second boundaries), so the address fence alone
  needs ``leaseDuration`` above 3.1 s; the nftables fence lets the default
  2.5 s lease keep node-loss failover under 3 s.
* (T2) ``renewDeadline > 1.2 * retryPeriod``: the owner gets at least one
  retry before it must step down, as client-go demands.
* (T3) ``apiTimeout < renewDeadline``: a single API call can never outlive the
  deadline it serves.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from egressd.core.conntrack_settings import ConntrackSettings
from egressd.core.errors import ConfigError, Problem
from egressd.core.mqtt_settings import MqttSettings

if TYPE_CHECKING:  # mesh_settings imports rights, which imports this module
    from egressd.core.mesh_settings import MeshSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


DURATION_MAX = 300.0
"""Upper bound of every duration below, in seconds. A standby waits
``leaseDuration`` after an owner's death before it takes the IP over; past five
minutes that is no longer high availability, and a typo (``1e12``) must not
pass. 300 also fits the Lease's int32 ``leaseDurationSeconds`` many times over."""

ADDRESS_LIFETIME_MAX = 2**32 - 2
"""Largest ``addressLifetime``: the kernel's ``valid_lft`` is an unsigned
32-bit number of seconds and ``2**32 - 1`` means "forever" (no fence at all)."""

RETRY_PERIOD_MIN = 0.01
"""Smallest ``retryPeriod``: each attempt is an API request; more than 100
per second per IP floods the API server, and the event loop's timers are not
that precise."""

API_TIMEOUT_MIN = 0.01
"""Smallest ``apiTimeout``: one API call is a TCP (and TLS) round trip plus the
server's write; below 10 ms every call to a real server would time out."""

RENEW_DEADLINE_MIN = 0.05
"""Smallest ``renewDeadline``: the owner must get a renew through, with a
retry (T2), inside it."""

FENCE_TTL_MIN = 0.001
"""Smallest non-zero ``fenceTtl``: nftables set timeouts are whole milliseconds."""

FENCE_SLACK_MIN = 0.01
"""Smallest ``fenceSlack`` with the nftables fence on: the kernel drops a
timed-out element up to 6 ms late (measured, docs/kernel-fences.md)."""

KERNEL_SLACK_MIN = 1.0
"""Smallest ``kernelSlack`` with the address fence alone: the kernel's address
expiry worker runs on whole-second boundaries, so it removes an expired
address up to about 1 s late (measured 0.95 s, docs/kernel-fences.md)."""


@dataclass(frozen=True)
class Timing:
    """How fast egressd elects, renews and fences. All values in seconds.

    Every field has bounds (below, and in :meth:`bounds`); the constructor
    raises :class:`ConfigError` naming each field out of them, so no code
    path, config or test, can build a Timing the runtime cannot honour. The
    inequalities of the safety argument, (T1) to (T3), are :meth:`check`'s."""

    lease_duration: float = 2.5
    """How long a standby waits, from its own observation of the last lease
    change, before it may take an IP over. Failover after node loss takes about
    this long. 2.5 s is the smallest value that satisfies (T1) for the defaults
    below with room to spare. At most :data:`DURATION_MAX`; at least what (T1)
    needs."""

    renew_deadline: float = 0.8
    """The owner withdraws the IP (daemon fence) when its last successful renew
    is older than this. 0.8 s still allows three renew attempts at the default
    retry period before stepping down, and leaves room in (T1) for a fence that
    outlasts a crashed daemon's restart (see ``fence_ttl``). At least
    :data:`RENEW_DEADLINE_MIN`, at most :data:`DURATION_MAX`."""

    retry_period: float = 0.25
    """Interval between renew attempts, and between acquire attempts of a
    standby that is not woken by a watch event. 0.25 s keeps API load to four
    writes per second per IP. At least :data:`RETRY_PERIOD_MIN`, at most
    :data:`DURATION_MAX`."""

    address_lifetime: int = 1
    """``valid_lft``/``preferred_lft`` of the egress IP, whole seconds (the
    kernel's granularity). The owner refreshes it after every successful renew
    (at the defaults none may be left out: the kernel may remove the address
    20 ms before ``lifetime`` after a refresh, and 1 - 0.02 - renewDeadline is
    less than a retry period; docs/kernel-fences.md, "What a re-arm costs");
    a frozen or crashed daemon loses the address this long after its last
    refresh (kernel fence). 1 s is the kernel's minimum. Longer than
    ``renew_deadline`` (the owner may go that long between refreshes while it
    still serves), at most :data:`ADDRESS_LIFETIME_MAX`."""

    kernel_slack: float = 1.2
    """How late after ``valid_lft`` the kernel really removes an expired
    address. The IPv4 expiry worker is scheduled on whole-second boundaries,
    so the analytical bound is about 1 s; measured here up to 0.95 s over 120
    trials (docs/kernel-fences.md), so 1.2 s leaves room. Used in (T1) when
    the nftables fence is off, and then at least :data:`KERNEL_SLACK_MIN`;
    at most :data:`DURATION_MAX`."""

    fence_ttl: float = 1.5
    """Timeout of the nftables fence element of an owned IP (milliseconds
    precision), re-armed after every successful renew. While it has timed out
    the node sends nothing with the egress IP as source and answers no ARP for
    it. 1.5 s: longer than the renew deadline, so a live daemon's own fence
    acts first, and long enough for a daemon restarted after a crash to adopt
    its IPs and re-arm the fence before it times out (0.7 to 1.2 s from kill
    to adoption in the lab, the fence armed up to a retry period before the
    kill), while (T1) still holds: 0.8 + 1.5 + 0.05 + 0.1 = 2.45 < 2.5.
    0 turns this fence off. Otherwise whole milliseconds, at least
    :data:`FENCE_TTL_MIN` and ``retry_period`` (a shorter fence lapses between
    two renews of a healthy owner), at most :data:`DURATION_MAX`."""

    fence_slack: float = 0.05
    """How late the kernel drops a timed-out nftables set element (measured
    0 to 6 ms, docs/kernel-fences.md), with room to spare. With the fence on,
    at least :data:`FENCE_SLACK_MIN`; at most :data:`DURATION_MAX`."""

    safety_margin: float = 0.1
    """Extra room in (T1) for scheduling delays and clock rate differences.
    0 to :data:`DURATION_MAX`."""

    api_timeout: float = 0.5
    """Timeout of one API call (connect plus response). Below the renew
    deadline (T3), so a timed-out call still leaves time for a retry. At least
    :data:`API_TIMEOUT_MIN`."""

    non_preferred_delay: float = 0.5
    """Extra wait before a candidate that is not the rendezvous-preferred node
    takes a free or expired lease, so the preferred node usually wins and IPs
    spread evenly. Two retry periods: long enough for the preferred node's
    watch event and write, short enough not to matter after node loss.
    0 to :data:`DURATION_MAX`."""

    handoff_grace: float = 2.5
    """How long other candidates leave a lease released to a named successor
    (``egressd handoff IP --to NODE``) for that successor before taking it
    themselves. One lease duration: if the successor is dead, the IP moves as
    after node loss. 0 to :data:`DURATION_MAX`."""

    def __post_init__(self) -> None:
        problems = self.bounds()
        if problems:
            raise ConfigError(problems, "Timing")

    def bounds(self, path: str = "timing") -> list[Problem]:
        """Every field within its own bounds (see the field docs), each
        problem naming the field, the bound and why."""
        problems: list[Problem] = []

        def within(name: str, low: float, high: float, why: str = "") -> bool:
            value: object = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(Problem(_at(path, name), f"must be a number of seconds, got {value!r}"))
                return False
            if not low <= value <= high:
                problems.append(Problem(_at(path, name), f"must be {low:g} to {high:g} s{why}, got {value:g}"))
                return False
            return True

        within("lease_duration", 0.001, DURATION_MAX, " (a standby waits this long after a failure)")
        within("renew_deadline", RENEW_DEADLINE_MIN, DURATION_MAX, " (a renew must fit inside)")
        retry_ok = within("retry_period", RETRY_PERIOD_MIN, DURATION_MAX, " (each attempt is an API request)")
        within("api_timeout", API_TIMEOUT_MIN, DURATION_MAX, " (one API round trip must fit inside)")
        for name in ("safety_margin", "non_preferred_delay", "handoff_grace"):
            within(name, 0, DURATION_MAX)
        fence_on = isinstance(self.fence_ttl, int | float) and self.fence_ttl != 0
        if within("fence_ttl", 0, DURATION_MAX, " (0 turns the nftables fence off)") and fence_on:
            self._check_fence(problems, path, retry_ok=retry_ok)
        within(
            "fence_slack",
            FENCE_SLACK_MIN if fence_on else 0,
            DURATION_MAX,
            " (with the nftables fence on: the kernel drops a timed-out element up to 6 ms late)" if fence_on else "",
        )
        within(
            "kernel_slack",
            0 if fence_on else KERNEL_SLACK_MIN,
            DURATION_MAX,
            ""
            if fence_on
            else " (with the address fence alone: the kernel removes an expired address up to ~1 s late)",
        )
        self._check_lifetime(problems, path)
        return problems

    def _check_lifetime(self, problems: list[Problem], path: str) -> None:
        lifetime = self.address_lifetime
        if isinstance(lifetime, bool) or not isinstance(lifetime, int):
            problems.append(Problem(_at(path, "address_lifetime"), f"must be whole seconds, got {lifetime!r}"))
        elif not 1 <= lifetime <= ADDRESS_LIFETIME_MAX:
            problems.append(
                Problem(
                    _at(path, "address_lifetime"),
                    f"must be 1 to {ADDRESS_LIFETIME_MAX} whole seconds (the kernel's valid_lft is 32 bits and "
                    f"{ADDRESS_LIFETIME_MAX + 1} means forever), got {lifetime}",
                )
            )
        elif isinstance(self.renew_deadline, int | float) and not lifetime > self.renew_deadline:
            problems.append(
                Problem(
                    _at(path, "address_lifetime"),
                    f"must be longer than renewDeadline ({lifetime} <= {self.renew_deadline:g}): the owner refreshes "
                    f"the address only after a successful renew, so a shorter lifetime lapses while it still serves",
                )
            )

    def _check_fence(self, problems: list[Problem], path: str, *, retry_ok: bool) -> None:
        ms = self.fence_ttl * 1000
        if self.fence_ttl < FENCE_TTL_MIN:
            problems.append(
                Problem(
                    _at(path, "fence_ttl"),
                    f"must be 0 (off) or at least 1 ms (nftables timeouts are whole milliseconds), "
                    f"got {self.fence_ttl:g}",
                )
            )
        elif abs(ms - round(ms)) > 1e-6:
            problems.append(
                Problem(
                    _at(path, "fence_ttl"),
                    f"must be whole milliseconds (nftables timeouts are), got {self.fence_ttl:g}",
                )
            )
        elif retry_ok and self.fence_ttl < self.retry_period:
            problems.append(
                Problem(
                    _at(path, "fence_ttl"),
                    f"must be at least retryPeriod ({self.fence_ttl:g} < {self.retry_period:g}): the owner re-arms "
                    f"the fence after each renew, so a shorter one lapses between renews",
                )
            )

    def check(self, path: str = "timing") -> list[Problem]:
        """The bounds of every field, then the inequalities of the safety
        argument, each problem naming which."""
        problems = self.bounds(path)
        if problems:
            return problems
        if self.fence_ttl > 0:
            fence, terms = (
                self.fence_ttl + self.fence_slack,
                f"fenceTtl {self.fence_ttl:g} + fenceSlack {self.fence_slack:g}",
            )
        else:
            fence = self.address_lifetime + self.kernel_slack
            terms = f"addressLifetime {self.address_lifetime} + kernelSlack {self.kernel_slack:g} (fenceTtl is 0)"
        bound = self.renew_deadline + fence + self.safety_margin
        if not self.lease_duration > bound:
            problems.append(
                Problem(
                    _at(path, "lease_duration"),
                    f"(T1) leaseDuration > renewDeadline + kernel fence + safetyMargin fails: "
                    f"{self.lease_duration:g} <= {self.renew_deadline:g} + ({terms}) + {self.safety_margin:g} "
                    f"= {bound:g}; a standby could take the IP while the old owner still serves it",
                )
            )
        if not self.renew_deadline > 1.2 * self.retry_period:
            problems.append(
                Problem(
                    _at(path, "renew_deadline"),
                    f"(T2) renewDeadline > 1.2 * retryPeriod fails: {self.renew_deadline:g} <= "
                    f"{1.2 * self.retry_period:g}; the owner would step down without a retry",
                )
            )
        if not self.api_timeout < self.renew_deadline:
            problems.append(
                Problem(
                    _at(path, "api_timeout"),
                    f"(T3) apiTimeout < renewDeadline fails: {self.api_timeout:g} >= {self.renew_deadline:g}; "
                    f"one stuck call could outlive the deadline it serves",
                )
            )
        return problems


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


TIMING_KEYS: Mapping[str, str] = {f.name: _camel(f.name) for f in dataclasses.fields(Timing)}
"""The config key of each :class:`Timing` field (``lease_duration`` ->
``leaseDuration``), in field order: the one list of the timing keys, for the
parser and for the field paths of every timing problem."""


def _at(path: str, name: str) -> str:
    """Field path of the timing field ``name`` under ``path``."""
    return f"{path}.{TIMING_KEYS[name]}"


@dataclass(frozen=True)
class NodeSettings:
    """Who this daemon is."""

    name: str
    """The node's identity in leases (``holderIdentity``). Must be unique in the
    cluster; two daemons with one name are detected and fenced."""

    address: IPAddress | None = None
    """The node's address on the node network. Written into the leases it holds
    so that steering nodes can route selected traffic to it. Required on
    gateway candidates."""


KubeAccess = Literal["in-cluster", "kubeconfig", "url"]


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the Kubernetes API."""

    namespace: str = "egressd"
    """Namespace of the egressd leases (one per egress IP)."""

    access: KubeAccess = "in-cluster"
    """``in-cluster`` (service account of a DaemonSet pod), ``kubeconfig`` (a
    file, for the systemd unit) or ``url`` (a plain API URL, for the lab)."""

    kubeconfig: str | None = None
    """Path of the kubeconfig file when ``access`` is ``kubeconfig``."""

    url: str | None = None
    """API server URL when ``access`` is ``url``."""

    token_file: str | None = None
    """Bearer token file for ``url`` access (optional)."""

    ca_file: str | None = None
    """CA bundle for ``url`` access over https (optional)."""

    exclude_cordoned: bool = False
    """Kubernetes mode: a cordoned node (``spec.unschedulable``) stops being a
    gateway candidate and hands its egress IPs off, as when it loses the label
    of the policy's nodeSelector. Off by default: cordoning usually precedes a
    drain, and the DaemonSet's own shutdown hands off then."""


@dataclass(frozen=True)
class MetricsSettings:
    """Where ``/metrics``, ``/healthz`` and ``/readyz`` are served."""

    listen: tuple[str, int] | None = ("127.0.0.1", 9464)
    """Host and port; None turns the listener off. Loopback by default (systemd
    unit); the DaemonSet listens on the node address so the kubelet can probe.
    9464 is in the range Prometheus exporters use."""


@dataclass(frozen=True)
class EgressGroup:
    """Pods (by source CIDR in the static mode) whose traffic to the
    destinations leaves through one of the egress IPs."""

    name: str
    egress_ips: tuple[IPAddress, ...]
    """Floating IPs of this group; each has its own lease and owner."""

    interface: str
    """Interface of the gateway nodes that carries the egress IPs."""

    candidates: tuple[str, ...] = ()
    """Gateway nodes allowed to own this group's IPs (or use ``node_selector``)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    """Node labels that make a node a candidate (matchLabels semantics)."""

    source_cidrs: tuple[IPNetwork, ...] = ()
    """Sources whose traffic is steered and SNATed (static mode)."""

    destination_cidrs: tuple[IPNetwork, ...] = ()
    """Destinations reached through the egress IP."""

    excluded_cidrs: tuple[IPNetwork, ...] = ()
    """Destinations inside ``destination_cidrs`` that keep the normal route."""


Mode = Literal["static", "kubernetes"]


@dataclass(frozen=True)
class Settings:
    """Everything one egressd node needs."""

    node: NodeSettings
    mode: Mode = "static"
    """``static``: the egress groups are the ``groups`` of this file (systemd
    mode). ``kubernetes``: they come from ``EgressGatewayPolicy`` objects, the
    pods they select and the nodes their nodeSelector matches, all watched
    (DaemonSet mode); ``groups`` must then be absent."""
    kubernetes: KubeSettings = field(default_factory=KubeSettings)
    timing: Timing = field(default_factory=Timing)
    groups: tuple[EgressGroup, ...] = ()
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    mqtt: MqttSettings | None = None
    """Ownership events to an MQTT broker; None (no ``mqtt`` section) turns them off."""
    mesh: MeshSettings | None = None
    """The gateway mesh (promises, peer rights); None (no ``mesh.keyFile``)
    turns it off: the daemon serves on API rights alone."""
    conntrack: ConntrackSettings = field(default_factory=ConntrackSettings)
    """Connection survival (mark, stream, guard); in effect only while the
    mesh is on (:attr:`replicates`)."""

    @property
    def replicates(self) -> bool:
        """Whether the conntrack entries of the flows this node SNATs are
        marked, streamed to the candidates and guarded at takeover."""
        return self.mesh is not None and self.conntrack.enabled

    def candidate_groups(self) -> tuple[EgressGroup, ...]:
        """Groups for which this node is a named candidate."""
        return tuple(g for g in self.groups if self.node.name in g.candidates)

    def with_selected_candidates(self, selected: Mapping[str, Sequence[str]]) -> Settings:
        """These settings with each ``nodeSelector`` group's candidates set to
        the node names that matched it (``selected``: group name -> nodes).
        Raises ConfigError if this node became a candidate without an address."""
        groups = tuple(
            replace(g, candidates=tuple(sorted(selected.get(g.name, ())))) if g.node_selector else g
            for g in self.groups
        )
        resolved = replace(self, groups=groups)
        if resolved.candidate_groups() and self.node.address is None:
            names = ", ".join(g.name for g in resolved.candidate_groups())
            raise ConfigError([Problem("node.address", f"is required: this node matches the nodeSelector of {names}")])
        return resolved
