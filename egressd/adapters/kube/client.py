"""Calls to the Kubernetes API over the official ``kubernetes`` client: the
ApiClient for the configured access mode, one raw request through its
transport, a blocking call decoded from raw JSON, and the translation of the
client's exceptions into egressd's own (see :mod:`egressd.core.errors`):
409 → LostRace, 404 → NotFound, 410 → ResourceExpired, timeouts →
ApiTimeout, refused / reset / 429 / 5xx → ApiUnavailable (with the
``Retry-After`` asked for), 401 → Unauthorized, 403 → Forbidden, another 4xx
→ Rejected, each chained to the library's exception.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from egressd.core.backoff import retry_after
from egressd.core.errors import (
    ApiError,
    ApiTimeout,
    ApiUnavailable,
    EgressdError,
    Forbidden,
    LostRace,
    NotFound,
    Rejected,
    ResourceExpired,
    Unauthorized,
)
from egressd.core.model import KubeSettings


def api_client(settings: KubeSettings, *, pool_size: int = 8) -> k8s.ApiClient:
    """An ApiClient for the configured access mode, with urllib3 retries off
    (retries are ours) and a connection pool as large as our thread pool."""
    cfg = k8s.Configuration()
    try:
        if settings.access == "in-cluster":
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        elif settings.access == "kubeconfig":
            k8s_config.load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            assert settings.url is not None
            cfg.host = settings.url.rstrip("/")
            if settings.token_file:
                with open(settings.token_file, encoding="utf-8") as fh:  # noqa: PTH123
                    cfg.api_key = {"authorization": "Bearer " + fh.read().strip()}
            if settings.ca_file:
                cfg.ssl_ca_cert = settings.ca_file
    except (k8s_config.ConfigException, OSError) as exc:
        raise EgressdError(f"kubernetes.{settings.access}: cannot load API access: {exc}") from exc
    cfg.retries = False
    cfg.connection_pool_maxsize = pool_size
    return k8s.ApiClient(cfg)


def raw_request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    timeout: Any,
    *,
    query: Sequence[tuple[str, Any]] = (),
    body: Any = None,
) -> Any:
    """One request through the client's transport (auth, TLS, pool) with an
    exact JSON body; the response unread (a watch streams it)."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    params = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    return api.call_api(*params, _request_timeout=timeout)


def blocking_json(fn: Callable[[float], Any], timeout: float) -> dict[str, Any]:
    """Call the client with ``_request_timeout`` and decode its raw response."""
    started = time.monotonic()
    try:
        resp = fn(timeout)
        data = resp.data
    except ApiException as exc:
        raise translate(exc, "call") from exc
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise ApiTimeout(f"no answer within {timeout:.3f}s") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if time.monotonic() - started >= timeout:
            raise ApiTimeout(f"no answer within {timeout:.3f}s ({exc})") from exc
        raise ApiUnavailable(f"API server unreachable: {exc}") from exc
    status = getattr(resp, "status", 200)
    if status >= 400:
        error = ApiException(status=status, reason=getattr(resp, "reason", ""))
        error.body = data
        error.headers = getattr(resp, "headers", None)
        raise translate(error, "call")
    try:
        decoded = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ApiUnavailable(f"API server sent something that is not JSON: {data[:80]!r}") from exc
    if not isinstance(decoded, dict):
        raise ApiUnavailable("API server sent JSON that is not an object")
    return decoded


def translate(exc: ApiException, verb: str) -> ApiError:
    status = exc.status or 0
    message = _status_message(exc)
    if status == 409:
        return LostRace(f"{verb}: {message}")
    if status == 404:
        return NotFound(f"{verb}: {message}")
    if status == 410:
        return ResourceExpired(f"{verb}: {message}")
    if status == 429 or status >= 500 or status == 0:
        return ApiUnavailable(f"{verb}: HTTP {status}: {message}", retry_after=_retry_after(exc))
    if status == 401:
        return Unauthorized(f"{verb}: HTTP {status}: {message}")
    if status == 403:
        return Forbidden(f"{verb}: HTTP {status}: {message}")
    if 400 <= status < 500:
        return Rejected(f"{verb}: HTTP {status}: {message}")
    return ApiError(f"{verb}: HTTP {status}: {message}")


def _retry_after(exc: ApiException) -> float | None:
    """The wait a 429/5xx asks for: the ``Retry-After`` header, else the
    Status's ``details.retryAfterSeconds`` (a real server sends both)."""
    headers = getattr(exc, "headers", None)
    header = headers.get("Retry-After") if headers is not None and hasattr(headers, "get") else None
    if header is not None:
        seconds = retry_after(str(header), datetime.now(UTC))
        if seconds is not None:
            return seconds
    body = exc.body
    if isinstance(body, bytes | str):
        try:
            status = json.loads(body)
        except (ValueError, RecursionError):
            return None
        details = status.get("details") if isinstance(status, dict) else None
        seconds_field = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        if isinstance(seconds_field, int) and not isinstance(seconds_field, bool) and seconds_field > 0:
            return float(min(seconds_field, 10**9))
    return None


def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes | str):
        try:
            status = json.loads(body)
            if isinstance(status, dict) and status.get("message"):
                return str(status["message"])
        except ValueError:
            pass
    return str(exc.reason or "")
