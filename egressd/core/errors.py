"""egressd's own exception tree.

Library errors (kubernetes, pyroute2, nft) are caught in the adapters and
re-raised as one of these, chained with ``raise ... from exc`` so the original
stays in the traceback::

    EgressdError
    ├── ConfigError            bad settings; carries every problem found
    ├── IllegalTransition      the member state machine was asked for a move it forbids
    ├── ApiError               a call to the Kubernetes API did not do what was asked
    │   ├── ApiUnavailable     connection refused/reset, 5xx, 429 (with the Retry-After asked for)
    │   ├── ApiTimeout         no answer within the call's deadline; its outcome is unknown
    │   ├── LostRace           409: someone wrote first (a stale resourceVersion, or the
    │   │                      object exists already); expected under contention
    │   ├── NotFound           404: the object, or its collection (a CRD not installed)
    │   ├── ResourceExpired    410: a list or watch asked for a resourceVersion the server
    │   │                      no longer has; list again
    │   ├── Unauthorized       401: the credentials were refused
    │   ├── Forbidden          403: RBAC does not allow the call
    │   ├── Rejected           any other 4xx: the request as sent was refused
    │   └── MalformedLease     the API holds a Lease, written by someone else, that egressd
    │                          cannot read
    └── DataPlaneError         the kernel refused an address, rule or frame

An answer of the API server is named for what it said, not for the object
the call was about: a missing Lease, Node or CRD is each a ``NotFound``.
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


class ApiError(EgressdError):
    """A call to the Kubernetes API did not do what was asked."""


class ApiUnavailable(ApiError):
    """The API server could not be reached or answered with a server error
    (or 429); ``retry_after`` is the wait it asked for (``Retry-After``), in
    seconds, if it did."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ApiTimeout(ApiError):
    """The call did not complete within its deadline; its outcome is unknown."""


class LostRace(ApiError):
    """Another writer changed the object first, or created it first (HTTP 409).
    Expected under contention."""


class NotFound(ApiError):
    """The object, or the collection asked for, does not exist (HTTP 404): a
    Lease deleted, a policy gone, a CRD not installed."""


class ResourceExpired(ApiError):
    """A watch or list asked for a resourceVersion the server no longer has (HTTP 410)."""


class Unauthorized(ApiError):
    """The API server refused the credentials (HTTP 401)."""


class Forbidden(ApiError):
    """The credentials are not allowed the call (HTTP 403): RBAC."""


class Rejected(ApiError):
    """The request as sent was refused: an HTTP 4xx without a class of its own
    (400, 422, ...), or a write egressd will not send (one without the
    resourceVersion it must be conditional on)."""


class MalformedLease(ApiError):
    """A lease object that does not have the shape egressd needs."""


class DataPlaneError(EgressdError):
    """The kernel refused an address, nftables transaction, route or frame."""
