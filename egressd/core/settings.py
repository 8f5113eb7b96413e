"""Settings of one egressd node, and their validation.

The config file is YAML (loaded elsewhere); this module turns the loaded
mapping into frozen dataclasses or raises :class:`ConfigError` listing *every*
problem, each located by its dotted field path (``groups[0].egressIPs[1]``).

Keys are camelCase, like Kubernetes objects, and the group keys are the field
names of the ``EgressGatewayPolicy`` CRD (``egressIPs``, ``interface``,
``destinationCIDRs``, ``excludedCIDRs``) plus ``sourceCIDRs`` for the static
mode, so one vocabulary serves both.

Durations are seconds (a number) or a string with a unit: ``"250ms"``,
``"2.5s"``, ``"1m"``.

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

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from egressd.core.addressing import (
    canonical,
    egress_ip_problem,
    interface_name_problem,
    node_address_problem,
    subnet_edge_problem,
)
from egressd.core.errors import ConfigError, Problem
from egressd.core.mqtt_settings import MqttSettings, parse_mqtt

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


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
    kernel's granularity). The owner refreshes it after every successful renew;
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

        def within(name: str, value: object, low: float, high: float, why: str = "") -> bool:
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(Problem(f"{path}.{name}", f"must be a number of seconds, got {value!r}"))
                return False
            if not low <= value <= high:
                problems.append(Problem(f"{path}.{name}", f"must be {low:g} to {high:g} s{why}, got {value:g}"))
                return False
            return True

        within(
            "leaseDuration", self.lease_duration, 0.001, DURATION_MAX, " (a standby waits this long after a failure)"
        )
        within("renewDeadline", self.renew_deadline, RENEW_DEADLINE_MIN, DURATION_MAX, " (a renew must fit inside)")
        retry_ok = within(
            "retryPeriod", self.retry_period, RETRY_PERIOD_MIN, DURATION_MAX, " (each attempt is an API request)"
        )
        within("apiTimeout", self.api_timeout, API_TIMEOUT_MIN, DURATION_MAX, " (one API round trip must fit inside)")
        for name, value in (
            ("safetyMargin", self.safety_margin),
            ("nonPreferredDelay", self.non_preferred_delay),
            ("handoffGrace", self.handoff_grace),
        ):
            within(name, value, 0, DURATION_MAX)
        fence_on = isinstance(self.fence_ttl, int | float) and self.fence_ttl != 0
        if within("fenceTtl", self.fence_ttl, 0, DURATION_MAX, " (0 turns the nftables fence off)") and fence_on:
            self._check_fence(problems, path, retry_ok=retry_ok)
        within(
            "fenceSlack",
            self.fence_slack,
            FENCE_SLACK_MIN if fence_on else 0,
            DURATION_MAX,
            " (with the nftables fence on: the kernel drops a timed-out element up to 6 ms late)" if fence_on else "",
        )
        within(
            "kernelSlack",
            self.kernel_slack,
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
            problems.append(Problem(f"{path}.addressLifetime", f"must be whole seconds, got {lifetime!r}"))
        elif not 1 <= lifetime <= ADDRESS_LIFETIME_MAX:
            problems.append(
                Problem(
                    f"{path}.addressLifetime",
                    f"must be 1 to {ADDRESS_LIFETIME_MAX} whole seconds (the kernel's valid_lft is 32 bits and "
                    f"{ADDRESS_LIFETIME_MAX + 1} means forever), got {lifetime}",
                )
            )
        elif isinstance(self.renew_deadline, int | float) and not lifetime > self.renew_deadline:
            problems.append(
                Problem(
                    f"{path}.addressLifetime",
                    f"must be longer than renewDeadline ({lifetime} <= {self.renew_deadline:g}): the owner refreshes "
                    f"the address only after a successful renew, so a shorter lifetime lapses while it still serves",
                )
            )

    def _check_fence(self, problems: list[Problem], path: str, *, retry_ok: bool) -> None:
        ms = self.fence_ttl * 1000
        if self.fence_ttl < FENCE_TTL_MIN:
            problems.append(
                Problem(
                    f"{path}.fenceTtl",
                    f"must be 0 (off) or at least 1 ms (nftables timeouts are whole milliseconds), "
                    f"got {self.fence_ttl:g}",
                )
            )
        elif abs(ms - round(ms)) > 1e-6:
            problems.append(
                Problem(
                    f"{path}.fenceTtl", f"must be whole milliseconds (nftables timeouts are), got {self.fence_ttl:g}"
                )
            )
        elif retry_ok and self.fence_ttl < self.retry_period:
            problems.append(
                Problem(
                    f"{path}.fenceTtl",
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
                    f"{path}.leaseDuration",
                    f"(T1) leaseDuration > renewDeadline + kernel fence + safetyMargin fails: "
                    f"{self.lease_duration:g} <= {self.renew_deadline:g} + ({terms}) + {self.safety_margin:g} "
                    f"= {bound:g}; a standby could take the IP while the old owner still serves it",
                )
            )
        if not self.renew_deadline > 1.2 * self.retry_period:
            problems.append(
                Problem(
                    f"{path}.renewDeadline",
                    f"(T2) renewDeadline > 1.2 * retryPeriod fails: {self.renew_deadline:g} <= "
                    f"{1.2 * self.retry_period:g}; the owner would step down without a retry",
                )
            )
        if not self.api_timeout < self.renew_deadline:
            problems.append(
                Problem(
                    f"{path}.apiTimeout",
                    f"(T3) apiTimeout < renewDeadline fails: {self.api_timeout:g} >= {self.renew_deadline:g}; "
                    f"one stuck call could outlive the deadline it serves",
                )
            )
        return problems


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


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError naming the problem."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


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


# --- parsing -----------------------------------------------------------------


class _Reader:
    """Collects problems while reading a nested mapping."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def mapping(self, value: Any, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                hint = _closest(str(key), allowed)
                self.problem(f"{path}.{key}" if path else str(key), "unknown key" + hint)
        return value

    def string(self, value: Any, path: str, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.problem(path, "is required")
            return None
        if not isinstance(value, str) or not value:
            self.problem(path, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def duration(self, value: Any, path: str, default: float) -> float:
        """Seconds from a number or a string with a unit; always finite (a
        value out of range is a problem and gives ``default``)."""
        if value is None:
            return default
        seconds: float | None = None
        if isinstance(value, bool):
            self.problem(path, f"must be a duration, got {value!r}")
            return default
        if isinstance(value, int | float):
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(2) or "s"]
        if seconds is None:
            self.problem(path, f"must be seconds or a string like '250ms', '2.5s', got {value!r}")
            return default
        if not math.isfinite(seconds):
            self.problem(path, f"must be finite, got {value!r}")
            return default
        return seconds

    def clean(self, path: str) -> bool:
        """Whether no problem was found at ``path`` or below it."""
        return not any(p.field == path or p.field.startswith((f"{path}.", f"{path}[")) for p in self.problems)

    def interface(self, value: Any, path: str, *, required: bool) -> str:
        """An interface name the kernel and nftables accept (``""`` if absent or bad)."""
        name = self.string(value, path, required=required) or ""
        if name and (why := interface_name_problem(name)) is not None:
            self.problem(path, f"is not a valid interface name ({why}): {name!r}")
            return ""
        return name

    def ip(self, value: Any, path: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(str(value)) if isinstance(value, str) else _bad_type(value)
        except ValueError:
            self.problem(path, f"is not an IP address: {value!r}")
            return None

    def cidr(self, value: Any, path: str) -> IPNetwork | None:
        if not isinstance(value, str):
            self.problem(path, f"must be a CIDR string, got {value!r}")
            return None
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.ip_network(value, strict=False)
                self.problem(path, f"{value} has host bits set; did you mean {fixed}?")
            else:
                self.problem(path, f"is not a CIDR: {value!r}")
            return None

    def items(self, value: Any, path: str, *, required: bool = False) -> list[tuple[str, Any]]:
        if value is None:
            if required:
                self.problem(path, "is required (a non-empty list)")
            return []
        if not isinstance(value, list):
            self.problem(path, f"must be a list, got {type(value).__name__}")
            return []
        if required and not value:
            self.problem(path, "must not be empty")
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _bad_type(value: Any) -> IPAddress:
    raise ValueError(f"not a string: {value!r}")


def _closest(key: str, allowed: Sequence[str]) -> str:
    lowered = key.lower().replace("_", "")
    for candidate in allowed:
        if candidate.lower() == lowered:
            return f" (did you mean {candidate!r}?)"
    return f" (known keys: {', '.join(allowed)})"


_TOP_KEYS = ("node", "mode", "kubernetes", "timing", "groups", "metrics", "mqtt")
_NODE_KEYS = ("name", "address")
_KUBE_KEYS = ("namespace", "access", "kubeconfig", "url", "tokenFile", "caFile", "excludeCordoned")
_TIMING_KEYS = (
    "leaseDuration",
    "renewDeadline",
    "retryPeriod",
    "addressLifetime",
    "kernelSlack",
    "fenceTtl",
    "fenceSlack",
    "safetyMargin",
    "apiTimeout",
    "nonPreferredDelay",
    "handoffGrace",
)
_GROUP_KEYS = (
    "name",
    "egressIPs",
    "interface",
    "candidates",
    "nodeSelector",
    "sourceCIDRs",
    "destinationCIDRs",
    "excludedCIDRs",
)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


ENV_DEPTH_MAX = 64
"""Deepest nesting :func:`expand_env` walks (egressd's schema needs 6); below
it a value is left as it is and reported, so no input can exhaust the stack."""


def expand_env(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[Problem]]:
    """Replace ``${NAME}`` in every string of a loaded config by ``env[NAME]``.

    For a DaemonSet, one config serves every node: ``node: {name: ${NODE_NAME},
    address: ${NODE_IP}}`` with both set from the downward API. A reference to
    a variable that is not set is a problem naming the field; ``$${`` is not
    special (write no literal ``${`` in a config). Nesting deeper than
    :data:`ENV_DEPTH_MAX` is a problem too."""
    problems: list[Problem] = []

    def walk(value: Any, where: str, depth: int) -> Any:
        if isinstance(value, str):

            def sub(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in env:
                    problems.append(Problem(where or "config", f"environment variable {name} is not set"))
                    return match.group(0)
                return env[name]

            return _ENV_REF.sub(sub, value)
        if isinstance(value, Mapping | list) and depth >= ENV_DEPTH_MAX:
            problems.append(Problem(where or "config", f"nested deeper than {ENV_DEPTH_MAX} levels"))
            return value
        if isinstance(value, Mapping):
            return {k: walk(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return value

    return walk(data, path, 0), problems


def parse_settings(data: Any, source: str = "config") -> Settings:
    """Build :class:`Settings` from a loaded YAML document, or raise
    :class:`ConfigError` listing every problem."""
    r = _Reader()
    top = r.mapping(data, "", _TOP_KEYS)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(r.problems, source)

    node = _parse_node(r, top.get("node"))
    mode = top.get("mode", "static")
    if mode not in ("static", "kubernetes"):
        r.problem("mode", f"must be static or kubernetes, got {mode!r}")
        mode = "static"
    elif mode == "kubernetes":
        if top.get("groups"):
            r.problem("groups", "must be absent in mode kubernetes: the groups come from EgressGatewayPolicy objects")
        if node is not None and node.address is None:
            r.problem("node.address", "is required in mode kubernetes: any node may become a gateway candidate")
    kube = _parse_kube(r, top.get("kubernetes"))
    timing = _parse_timing(r, top.get("timing"))
    groups, egress_paths = _parse_groups(r, top.get("groups"))
    metrics = _parse_metrics(r, top.get("metrics"))
    mqtt, mqtt_problems = parse_mqtt(top.get("mqtt"))
    r.problems.extend(mqtt_problems)
    _check_groups(r, groups, egress_paths, node)
    if r.problems:
        raise ConfigError(r.problems, source)
    assert node is not None
    return Settings(node=node, mode=mode, kubernetes=kube, timing=timing, groups=groups, metrics=metrics, mqtt=mqtt)


def _parse_metrics(r: _Reader, value: Any) -> MetricsSettings:
    m = r.mapping(value, "metrics", ("listen",))
    if "listen" not in m:
        return MetricsSettings()
    listen = m["listen"]
    if listen is None or listen == "":
        return MetricsSettings(listen=None)
    if not isinstance(listen, str):
        r.problem("metrics.listen", f"must be HOST:PORT or empty, got {listen!r}")
        return MetricsSettings()
    try:
        return MetricsSettings(listen=parse_listen(listen))
    except ValueError as exc:
        r.problem("metrics.listen", str(exc))
        return MetricsSettings()


def _parse_node(r: _Reader, value: Any) -> NodeSettings | None:
    if value is None:
        r.problem("node", "is required (node.name at least)")
        return None
    m = r.mapping(value, "node", _NODE_KEYS)
    name = r.string(m.get("name"), "node.name", required=True)
    if name is not None and not _DNS_SUBDOMAIN.match(name):
        r.problem("node.name", f"must be a DNS subdomain name like a Kubernetes node name, got {name!r}")
    address = r.ip(m["address"], "node.address") if m.get("address") is not None else None
    if address is not None and (why := node_address_problem(address)) is not None:
        r.problem("node.address", why)
        address = None
    return NodeSettings(name=name or "", address=address)


def _parse_kube(r: _Reader, value: Any) -> KubeSettings:
    m = r.mapping(value, "kubernetes", _KUBE_KEYS)
    namespace = r.string(m.get("namespace"), "kubernetes.namespace") or "egressd"
    if not _DNS_LABEL.match(namespace):
        r.problem("kubernetes.namespace", f"must be a DNS label, got {namespace!r}")
    kubeconfig = r.string(m.get("kubeconfig"), "kubernetes.kubeconfig")
    url = r.string(m.get("url"), "kubernetes.url")
    default_access = "url" if url else "kubeconfig" if kubeconfig else "in-cluster"
    access = m.get("access", default_access)
    if access not in ("in-cluster", "kubeconfig", "url"):
        r.problem("kubernetes.access", f"must be one of in-cluster, kubeconfig, url; got {access!r}")
        access = default_access
    if access == "kubeconfig" and kubeconfig is None:
        r.problem("kubernetes.kubeconfig", "is required when access is kubeconfig")
    if access == "url":
        if url is None:
            r.problem("kubernetes.url", "is required when access is url")
        elif not re.match(r"^https?://[^/\s]+", url):
            r.problem("kubernetes.url", f"must be an http:// or https:// URL, got {url!r}")
    if access != "kubeconfig" and kubeconfig is not None:
        r.problem("kubernetes.kubeconfig", f"is set but access is {access}")
    if access != "url" and url is not None:
        r.problem("kubernetes.url", f"is set but access is {access}")
    exclude_cordoned = m.get("excludeCordoned", False)
    if not isinstance(exclude_cordoned, bool):
        r.problem("kubernetes.excludeCordoned", f"must be true or false, got {exclude_cordoned!r}")
        exclude_cordoned = False
    return KubeSettings(
        namespace=namespace,
        access=access,
        kubeconfig=kubeconfig,
        url=url,
        token_file=r.string(m.get("tokenFile"), "kubernetes.tokenFile"),
        ca_file=r.string(m.get("caFile"), "kubernetes.caFile"),
        exclude_cordoned=exclude_cordoned,
    )


def _parse_timing(r: _Reader, value: Any) -> Timing:
    m = r.mapping(value, "timing", _TIMING_KEYS)
    d = Timing()
    lifetime_raw = m.get("addressLifetime")
    lifetime = d.address_lifetime
    if lifetime_raw is not None:
        seconds = r.duration(lifetime_raw, "timing.addressLifetime", float(d.address_lifetime))
        if seconds != int(seconds):
            r.problem("timing.addressLifetime", f"must be whole seconds (kernel granularity), got {seconds:g}")
        lifetime = int(seconds)
    lease = r.duration(m.get("leaseDuration"), "timing.leaseDuration", d.lease_duration)
    try:
        timing = Timing(
            lease_duration=lease,
            renew_deadline=r.duration(m.get("renewDeadline"), "timing.renewDeadline", d.renew_deadline),
            retry_period=r.duration(m.get("retryPeriod"), "timing.retryPeriod", d.retry_period),
            address_lifetime=lifetime,
            kernel_slack=r.duration(m.get("kernelSlack"), "timing.kernelSlack", d.kernel_slack),
            fence_ttl=r.duration(m.get("fenceTtl"), "timing.fenceTtl", d.fence_ttl),
            fence_slack=r.duration(m.get("fenceSlack"), "timing.fenceSlack", d.fence_slack),
            safety_margin=r.duration(m.get("safetyMargin"), "timing.safetyMargin", d.safety_margin),
            api_timeout=r.duration(m.get("apiTimeout"), "timing.apiTimeout", d.api_timeout),
            non_preferred_delay=r.duration(
                m.get("nonPreferredDelay"), "timing.nonPreferredDelay", d.non_preferred_delay
            ),
            handoff_grace=r.duration(m.get("handoffGrace"), "timing.handoffGrace", lease),
        )
    except ConfigError as exc:  # out of a field's bounds: the inequalities would mean nothing
        r.problems.extend(exc.problems)
        return d
    r.problems.extend(timing.check())
    return timing


def _parse_groups(r: _Reader, value: Any) -> tuple[tuple[EgressGroup, ...], list[list[tuple[str, IPAddress]]]]:
    """The groups, and for each the egress IPs that parsed with their field paths."""
    groups: list[EgressGroup] = []
    egress_paths: list[list[tuple[str, IPAddress]]] = []
    for path, item in r.items(value, "groups"):
        m = r.mapping(item, path, _GROUP_KEYS)
        name = r.string(m.get("name"), f"{path}.name", required=True) or ""
        if name and not _DNS_LABEL.match(name):
            r.problem(f"{path}.name", f"must be a DNS label (lower case, digits, '-'), got {name!r}")
        parsed = [
            (p, ip)
            for p, v in r.items(m.get("egressIPs"), f"{path}.egressIPs", required=True)
            if (ip := r.ip(v, p)) is not None
        ]
        egress_paths.append(parsed)
        ips = tuple(ip for _, ip in parsed)
        interface = r.interface(m.get("interface"), f"{path}.interface", required=True)
        candidates: list[str] = []
        for p, v in r.items(m.get("candidates"), f"{path}.candidates"):
            c = r.string(v, p)
            if c is not None:
                if c in candidates:
                    r.problem(p, f"{c!r} is listed twice")
                candidates.append(c)
        selector = _parse_selector(r, m.get("nodeSelector"), f"{path}.nodeSelector")
        if bool(candidates) == bool(selector):
            r.problem(path, "needs exactly one of candidates (node names) or nodeSelector (labels)")
        groups.append(
            EgressGroup(
                name=name,
                egress_ips=ips,
                interface=interface,
                candidates=tuple(candidates),
                node_selector=selector,
                source_cidrs=_cidrs(r, m.get("sourceCIDRs"), f"{path}.sourceCIDRs", required=True),
                destination_cidrs=_cidrs(r, m.get("destinationCIDRs"), f"{path}.destinationCIDRs", required=True),
                excluded_cidrs=_cidrs(r, m.get("excludedCIDRs"), f"{path}.excludedCIDRs"),
            )
        )
    return tuple(groups), egress_paths


def _parse_selector(r: _Reader, value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    reported = len(r.problems)
    m = r.mapping(value, path, ("matchLabels",))
    raw = m.get("matchLabels")
    labels = r.mapping(raw, f"{path}.matchLabels", list(raw) if isinstance(raw, Mapping) else ())
    out: dict[str, str] = {}
    for key, val in labels.items():
        p = f"{path}.matchLabels.{key}"
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            r.problem(p, "is not a valid label key")
        elif not isinstance(val, str) or not _LABEL_VALUE.match(val):
            r.problem(p, f"must be a label value string (quote 'true'), got {val!r}")
        else:
            out[key] = val
    if not out and len(r.problems) == reported:
        r.problem(path, "matchLabels must not be empty")
    return out


def _cidrs(r: _Reader, value: Any, path: str, *, required: bool = False) -> tuple[IPNetwork, ...]:
    return tuple(net for p, v in r.items(value, path, required=required) if (net := r.cidr(v, p)) is not None)


def _check_groups(
    r: _Reader,
    groups: Sequence[EgressGroup],
    egress_paths: Sequence[Sequence[tuple[str, IPAddress]]],
    node: NodeSettings | None,
) -> None:
    """Rules that relate fields to each other, run on whatever parsed (a field
    that did not parse is already a problem and is left out here), so one run
    reports every problem."""
    seen_ips: dict[IPAddress, str] = {}
    seen_names: dict[str, int] = {}
    address_reported = any(p.field == "node.address" for p in r.problems)
    for gi, g in enumerate(groups):
        path = f"groups[{gi}]"
        if g.name and g.name in seen_names:
            r.problem(f"{path}.name", f"{g.name!r} is already the name of groups[{seen_names[g.name]}]")
        seen_names.setdefault(g.name, gi)
        _check_networks(r, path, g)
        for where, ip in egress_paths[gi]:
            _check_egress_ip(r, where, ip=ip, seen=seen_ips, node=node, group=g)
        if node is not None and node.name in g.candidates and node.address is None and not address_reported:
            r.problem("node.address", f"is required on a gateway candidate (this node is a candidate of {path})")
            address_reported = True
    for gi, a in enumerate(groups):
        for gj in range(gi + 1, len(groups)):
            b = groups[gj]
            if _any_overlap(a.source_cidrs, b.source_cidrs) and _any_overlap(a.destination_cidrs, b.destination_cidrs):
                r.problem(
                    f"groups[{gj}].destinationCIDRs",
                    f"overlaps groups[{gi}] ({a.name}) for overlapping sourceCIDRs: the same flow would "
                    f"have two egress groups",
                )


def _check_egress_ip(
    r: _Reader,
    where: str,
    *,
    ip: IPAddress,
    seen: dict[IPAddress, str],
    node: NodeSettings | None,
    group: EgressGroup,
) -> None:
    key = canonical(ip)
    if key in seen:
        twin = "" if key == ip else f" (the IPv4-mapped form of {key})"
        r.problem(where, f"{ip}{twin} is listed twice (also at {seen[key]})")
    else:
        seen[key] = where
    if (why := egress_ip_problem(ip)) is not None:
        r.problem(where, why)
    if node is not None and node.address is not None and canonical(node.address) == key:
        r.problem(where, f"{ip} is this node's own address (node.address); an egress IP must float, a node's must not")
    for i, net in enumerate(group.source_cidrs):
        if net.version == key.version and key in net:
            r.problem(where, f"{ip} is inside sourceCIDRs[{i}] {net}, the addresses of the pods it would serve")
    if (why := subnet_edge_problem(key, (*group.destination_cidrs, *group.excluded_cidrs))) is not None:
        r.problem(where, f"{why}; it cannot be an egress IP")


def _check_networks(r: _Reader, path: str, g: EgressGroup) -> None:
    """Rules between a group's address lists, each run only when the lists it
    relates parsed without a problem (a dropped item would shift the indices
    and its absence would make the rule guess)."""
    clean = {
        name: r.clean(f"{path}.{name}") for name in ("egressIPs", "sourceCIDRs", "destinationCIDRs", "excludedCIDRs")
    }
    families = {ip.version for ip in g.egress_ips} if clean["egressIPs"] else set()
    for name, nets in (("sourceCIDRs", g.source_cidrs), ("destinationCIDRs", g.destination_cidrs)):
        for i, net in enumerate(nets if clean[name] else ()):
            if families and net.version not in families:
                r.problem(f"{path}.{name}[{i}]", f"IPv{net.version} but the group's egress IPs are not")
    if not clean["destinationCIDRs"]:
        return
    for i, a in enumerate(g.destination_cidrs):
        for j in range(i + 1, len(g.destination_cidrs)):
            b = g.destination_cidrs[j]
            if a.version == b.version and a.overlaps(b):
                r.problem(f"{path}.destinationCIDRs[{j}]", f"{b} overlaps destinationCIDRs[{i}] {a}")
    if not clean["excludedCIDRs"]:
        return
    for i, ex in enumerate(g.excluded_cidrs):
        if not any(ex.version == d.version and ex.subnet_of(d) for d in g.destination_cidrs):  # type: ignore[arg-type]
            r.problem(f"{path}.excludedCIDRs[{i}]", f"{ex} is not inside any of destinationCIDRs")
    for i, d in enumerate(g.destination_cidrs):
        for j, ex in enumerate(g.excluded_cidrs):
            if d.version == ex.version and d.subnet_of(ex):  # type: ignore[arg-type]
                r.problem(
                    f"{path}.destinationCIDRs[{i}]",
                    f"{d} is entirely excluded by excludedCIDRs[{j}] {ex}: nothing would be steered",
                )


def _any_overlap(a: Sequence[IPNetwork], b: Sequence[IPNetwork]) -> bool:
    return any(x.version == y.version and x.overlaps(y) for x in a for y in b)
