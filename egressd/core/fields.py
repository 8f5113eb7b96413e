"""Field validators shared by the parsers of the config file
(:mod:`egressd.core.config`), of ``EgressGatewayPolicy`` objects
(:mod:`egressd.core.policy`) and of label selectors (:mod:`egressd.core.selector`).

A :class:`Reader` walks a loaded mapping and collects every problem with its
dotted field path (``groups[0].egressIPs[1]``) instead of stopping at the
first; :func:`check_networks` holds the rules between a group's address lists,
so a static group and a policy with the same fields are equally valid.

Durations are seconds (a number) or a string with a unit: ``"250ms"``,
``"2.5s"``, ``"1m"``.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence
from typing import Any

from egressd.core.addressing import interface_name_problem
from egressd.core.errors import Problem
from egressd.core.model import EgressGroup, IPAddress, IPNetwork
from egressd.core.scalars import closest, seconds


class Reader:
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
                hint = closest(str(key), allowed)
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
        if isinstance(value, bool):
            self.problem(path, f"must be a duration, got {value!r}")
            return default
        spelled = seconds(value)
        if spelled is None:
            self.problem(path, f"must be seconds or a string like '250ms', '2.5s', got {value!r}")
            return default
        if not math.isfinite(spelled):
            self.problem(path, f"must be finite, got {value!r}")
            return default
        return spelled

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


def cidrs(r: Reader, value: Any, path: str, *, required: bool = False) -> tuple[IPNetwork, ...]:
    return tuple(net for p, v in r.items(value, path, required=required) if (net := r.cidr(v, p)) is not None)


def check_networks(r: Reader, path: str, g: EgressGroup) -> None:
    """Rules between a group's address lists, each run only when the lists it
    relates parsed without a problem (a dropped item would shift the indices
    and its absence would make the rule guess)."""
    clean = {
        name: r.clean(f"{path}.{name}") for name in ("egressIPs", "sourceCIDRs", "destinationCIDRs", "excludedCIDRs")
    }
    if clean["egressIPs"]:
        _check_families(r, path, g, clean)
    if not clean["destinationCIDRs"]:
        return
    _check_destination_overlaps(r, path, g.destination_cidrs)
    if clean["excludedCIDRs"]:
        _check_exclusions(r, path, g.destination_cidrs, g.excluded_cidrs)


def _check_families(r: Reader, path: str, g: EgressGroup, clean: Mapping[str, bool]) -> None:
    """Every source and destination network is of a family of the egress IPs."""
    families = {ip.version for ip in g.egress_ips}
    for name, nets in (("sourceCIDRs", g.source_cidrs), ("destinationCIDRs", g.destination_cidrs)):
        for i, net in enumerate(nets if clean[name] else ()):
            if families and net.version not in families:
                r.problem(f"{path}.{name}[{i}]", f"IPv{net.version} but the group's egress IPs are not")


def _check_destination_overlaps(r: Reader, path: str, destinations: Sequence[IPNetwork]) -> None:
    """No two destination networks overlap (the later one is reported)."""
    for i, a in enumerate(destinations):
        for j in range(i + 1, len(destinations)):
            b = destinations[j]
            if a.version == b.version and a.overlaps(b):
                r.problem(f"{path}.destinationCIDRs[{j}]", f"{b} overlaps destinationCIDRs[{i}] {a}")


def _check_exclusions(r: Reader, path: str, destinations: Sequence[IPNetwork], excluded: Sequence[IPNetwork]) -> None:
    """Each excluded network is inside a destination, and no destination is
    excluded entirely."""
    for i, ex in enumerate(excluded):
        if not any(ex.version == d.version and ex.subnet_of(d) for d in destinations):  # type: ignore[arg-type]
            r.problem(f"{path}.excludedCIDRs[{i}]", f"{ex} is not inside any of destinationCIDRs")
    for i, d in enumerate(destinations):
        for j, ex in enumerate(excluded):
            if d.version == ex.version and d.subnet_of(ex):  # type: ignore[arg-type]
                r.problem(
                    f"{path}.destinationCIDRs[{i}]",
                    f"{d} is entirely excluded by excludedCIDRs[{j}] {ex}: nothing would be steered",
                )
