"""One handle on an API server, embedded or real, for the conformance tests.

A conformance test states what a kube-apiserver does and runs unchanged
against both servers (``tests/apiserver/test_conformance.py``); it sees a
:class:`Server`: a request function, a namespace of its own, an official
client configured for the server, and a list of cluster-wide objects to
remove at the end. ``server.kind`` is ``"embedded"`` or ``"kube"``: a test
branches on it only where the servers differ on purpose, and each such
difference is listed in ``docs/apiserver-differences.md``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from kubernetes.client import ApiClient, Configuration

from egressd.apiserver.server import LabApiServer
from egressd.lab.kubecontrol import ControlPlane

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """One answer: status, body (decoded JSON, else the text), headers (lower-case names)."""

    status: int
    body: Any
    headers: Mapping[str, str]
    text: str

    def json(self) -> dict[str, Any]:
        assert isinstance(self.body, dict), f"{self.status}: {self.text[:300]}"
        return self.body


@dataclass
class Server:
    """An API server under test: embedded (plain HTTP) or kube-apiserver (TLS, admin certificate)."""

    kind: str
    url: str
    context: ssl.SSLContext | None = None
    cert: tuple[str, str, str] | None = None  # (ca, cert, key) for the official client
    namespace: str = ""
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    cleanups: list[str] = field(default_factory=list)
    lab: LabApiServer | None = None  # the embedded server, for what only it can do (compact)

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"

    @property
    def kube(self) -> bool:
        return self.kind == "kube"

    def name(self, stem: str) -> str:
        """A name of this test's own for a cluster-wide object (Nodes, CRDs)."""
        return f"{stem}-{self.suffix}"

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        if self.context is not None:
            return http.client.HTTPSConnection(host, port, timeout=timeout, context=self.context)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = JSON,
                accept: str = JSON, query: Mapping[str, str] | None = None,
                timeout: float = 15.0) -> Reply:
        """One request; ``body`` is JSON-encoded unless it is already str or bytes."""
        if query:
            path = f"{path}?{urlencode(query)}"
        conn = self._connect(timeout)
        try:
            headers = {"Accept": accept}
            payload: str | bytes | None = None
            if body is not None:
                payload = body if isinstance(body, (str, bytes)) else json.dumps(body)
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
            if "warning" in answer_headers:
                answer_headers["warning"] = ", ".join(response.headers.get_all("Warning") or [])
        finally:
            conn.close()
        text = raw.decode(errors="replace")
        decoded: Any = text
        if text.lstrip().startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                decoded = json.loads(text)
        return Reply(response.status, decoded, answer_headers, text)

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> dict[str, Any]:
        """A request that must succeed (2xx); its JSON body."""
        reply = self.request(method, path, body, **kwargs)
        assert 200 <= reply.status < 300, f"{method} {path}: {reply.status} {reply.text[:500]}"
        return reply.json()

    def watch(self, path: str, **query: str) -> list[dict[str, Any]]:
        """The events of a watch that ends by itself (give ``timeoutSeconds``)."""
        assert "timeoutSeconds" in query, "a watch in a test must end by itself"
        reply = self.request("GET", path, query={"watch": "1", **query},
                             timeout=float(query["timeoutSeconds"]) + 15)
        assert reply.status == 200, f"watch {path}: {reply.status} {reply.text[:300]}"
        return [json.loads(line) for line in reply.text.splitlines() if line.strip()]

    @contextlib.contextmanager
    def watching(self, path: str, **query: str) -> Iterator[Callable[[], list[dict[str, Any]]]]:
        """A watch that is open (both servers send the headers when it starts)
        for the body of the ``with``; the function it gives reads the events
        until the watch ends (give ``timeoutSeconds``)."""
        assert "timeoutSeconds" in query, "a watch in a test must end by itself"
        conn = self._connect(float(query["timeoutSeconds"]) + 15)
        try:
            conn.request("GET", f"{path}?{urlencode({'watch': '1', **query})}", headers={"Accept": JSON})
            response = conn.getresponse()
            assert response.status == 200, f"watch {path}: {response.status} {response.read()[:300]!r}"

            def events() -> list[dict[str, Any]]:
                return [json.loads(line) for line in response.read().splitlines() if line.strip()]

            yield events
        finally:
            conn.close()

    def eventually(self, what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Poll ``check`` until it returns something true (a real server settles
        CRDs and discovery asynchronously); its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}")
            time.sleep(0.05)

    def remove_later(self, path: str) -> None:
        """Delete this cluster-wide object at the end of the test, also when it fails."""
        self.cleanups.append(path)

    def client(self) -> ApiClient:
        """The official kubernetes client, configured for this server."""
        config = Configuration(host=self.url)
        if self.cert is not None:
            config.ssl_ca_cert, config.cert_file, config.key_file = self.cert
        return ApiClient(config)


def embedded(server: LabApiServer) -> Server:
    return Server("embedded", server.url, lab=server)


def kube(control_plane: ControlPlane) -> Server:
    pki = control_plane.layout.pki
    context = ssl.create_default_context(cafile=str(pki.ca_crt))
    context.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
    return Server("kube", control_plane.url, context, (str(pki.ca_crt), str(pki.admin_crt), str(pki.admin_key)))


#: What the tests make in their namespace, emptied before the namespace is deleted.
NAMESPACED_COLLECTIONS = (
    "/api/v1/namespaces/{ns}/pods",
    "/api/v1/namespaces/{ns}/events",
    "/apis/events.k8s.io/v1/namespaces/{ns}/events",
    "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
)


@contextlib.contextmanager
def session(server: Server) -> Iterator[Server]:
    """A namespace of the test's own for its time; then the cluster-wide
    objects it listed are deleted, the namespace emptied and deleted (on the
    real server it stays Terminating: no namespace controller; emptied, it
    leaves nothing behind that other tests' cluster-wide lists would see)."""
    server.namespace = f"conf-{server.suffix}"
    server.ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": server.namespace}})
    try:
        yield server
    finally:
        for path in reversed(server.cleanups):
            server.request("DELETE", path, query={"gracePeriodSeconds": "0"})
        for collection in NAMESPACED_COLLECTIONS:
            server.request("DELETE", collection.format(ns=server.namespace), query={"gracePeriodSeconds": "0"})
        server.request("DELETE", f"/api/v1/namespaces/{server.namespace}")
