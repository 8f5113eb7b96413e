"""egressd's own exception tree.

Library errors (kubernetes, pyroute2, nft) are caught in the adapters and
re-raised as one of these, chained with ``raise ... from exc`` so the original
stays in the traceback::

    EgressdError
    ├── ConfigError            bad settings; carries every problem found
    ├── IllegalTransition      the member state machine was asked for a move it forbids
    ├── LeaseError             anything the lease store could not do
    │   ├── LostRace           409: someone wrote the lease first (not a failure)
    │   ├── LeaseNotFound      404
    │   ├── LeaseExpired       410: a watch resourceVersion is too old; resync
    │   ├── ApiTimeout         the call did not finish within its deadline
    │   ├── ApiUnavailable     connection refused/reset, 5xx, 429 (with the Retry-After asked for)
    │   └── MalformedLease     a lease written by someone else that we cannot read
    └── DataPlaneError         the kernel refused an address, rule or frame
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class EgressdError(Exception):
    """Base of every error egressd raises on purpose."""


MESSAGE_MAX = 400
"""Longest problem message, in characters; longer ones are cut (a 100 kB bad
value must not be echoed whole into a terminal, a log line or a status)."""

FIELD_MAX = 400
"""Longest field path (a key can be a bad value too). The longest valid one, a
label key of 317 characters below a policy's selector, fits."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located by a dotted field path. Both are
    clipped (:data:`MESSAGE_MAX`, :data:`FIELD_MAX`) where they are made, so
    no message built from a value can grow with it."""

    field: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", clip(self.field, FIELD_MAX))
        object.__setattr__(self, "message", clip(self.message, MESSAGE_MAX))

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(EgressdError):
    """Settings failed validation; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem], source: str = "config") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


class IllegalTransition(EgressdError):
    """The state machine was asked for a transition its table does not allow."""


class LeaseError(EgressdError):
    """The lease store could not complete a call."""


class LostRace(LeaseError):
    """Another writer changed the lease first (HTTP 409). Expected under contention."""


class LeaseNotFound(LeaseError):
    """The lease does not exist (HTTP 404)."""


class LeaseExpired(LeaseError):
    """A watch or list asked for a resourceVersion the server no longer has (HTTP 410)."""


class ApiTimeout(LeaseError):
    """The call did not complete within its deadline; its outcome is unknown."""


class ApiUnavailable(LeaseError):
    """The API server could not be reached or answered with a server error
    (or 429); ``retry_after`` is the wait it asked for (``Retry-After``), in
    seconds, if it did."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MalformedLease(LeaseError):
    """A lease object that does not have the shape egressd needs."""


class DataPlaneError(EgressdError):
    """The kernel refused an address, nftables transaction, route or frame."""
