"""Lab Kubernetes API server: a LAB AND TEST server, never a production store.

An in-memory aiohttp implementation of the subset of the Kubernetes API that
egressd uses, faithful enough that the official ``kubernetes`` client cannot
tell it from a kube-apiserver: Leases, Nodes, Pods, Namespaces, Events (core
and events.k8s.io), CustomResourceDefinitions and the custom resources they
define; list/get/create/update/patch/delete/deletecollection/watch; label and
field selectors; one global resourceVersion; 409/410/422 with the real Status
bodies; MicroTime wire format; bookmarks; pagination; discovery; the
OpenAPI v3 documents kubectl needs (:mod:`egressd.apiserver.published`). Custom
resources are pruned and validated against their CRD's openAPIV3Schema on
create, update, patch and status writes, with the real server's 422 bodies
and ``?fieldValidation=Strict|Warn|Ignore`` (:mod:`egressd.apiserver.openapi`).
Nothing is persisted, there is no authentication, no admission, no CEL
validation rules, no server-side apply and no managedFields.

Entry points (the CLI's ``egressd apiserver --listen HOST:PORT`` calls ``run``)::

    run(listen: str, settings: LabSettings | None = None) -> None
        Serve on "HOST:PORT" (or "[V6]:PORT") until SIGINT/SIGTERM. Blocking.

    server = LabApiServer(LabSettings(...))
    url = await server.start(host="127.0.0.1", port=0)   # port 0: any free port
    await server.stop()
    # or, for tests that use the blocking official client:
    url = server.start_in_thread(); ...; server.stop_in_thread()

Test plumbing (callable from any thread): ``pause()`` / ``resume()`` (requests
are accepted but not answered; open watches stall), ``fail_with(code)`` /
``clear_fault()`` (every request answers that Status), ``compact()`` (forget
the watch history, so older resourceVersions answer 410).

Namespaces: creating a namespaced object in a namespace that does not exist is
404 NotFound as on a real server. ``LabSettings.create_default_namespace``
(default on) creates ``default`` at start; ``auto_create_namespaces`` (default
off) creates any missing namespace on first use, to keep tests short.

Faithfulness notes: a MicroTime (``spec.renewTime``) must have exactly six
fractional digits and a zone, as Go's RFC3339Micro parser demands; a client
that sends ``datetime.isoformat()`` output gets 400 whenever microseconds are
zero. Strategic merge patch is applied as a JSON merge patch. Core and
events.k8s.io Events are stored separately (no cross-version conversion).
A deleted Namespace is removed at once, with its contents. Every difference
from kube-apiserver found by tests/apiserver/test_conformance.py, which runs
against both, is listed with its reason in docs/apiserver-differences.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import yaml
from aiohttp import web
from multidict import MultiMapping

from egressd.apiserver import errors as apierrors
from egressd.apiserver import published
from egressd.apiserver.errors import ApiError, FieldError, JsonObject, bad_request, go_quote
from egressd.apiserver.kinds import ResourceKind
from egressd.apiserver.selectors import Selection, parse_field_selector, parse_label_selector
from egressd.apiserver.store import JSON_PATCH, Store, Watcher, WriteOptions, iter_kinds

logger = logging.getLogger(__name__)

#: The release whose answers the embedded server follows (checked by tests/apiserver/test_conformance.py).
KUBE_VERSION = ("1", "37", "v1.37.0+egressd-lab")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
#: The values of the ``fieldValidation`` query parameter ("" is Warn), sorted as the real server lists them.
FIELD_VALIDATIONS = ("", "Ignore", "Strict", "Warn")


@dataclass(frozen=True)
class LabSettings:
    """How the lab API server behaves; defaults suit a long-running lab."""

    #: Create the ``default`` namespace at start, as every cluster has it.
    create_default_namespace: bool = True
    #: Create a missing namespace on first use instead of answering 404 (tests).
    auto_create_namespaces: bool = False
    #: Writes kept for watch resume and exact lists; older RVs answer 410.
    history_size: int = 1000
    #: Events a watcher may lag behind before it is closed as too slow.
    watch_queue_size: int = 1000
    #: Seconds between BOOKMARK events on watches that ask for them (real: ~60 s).
    bookmark_interval: float = 60.0
    #: Longest watch, seconds, when the client sets no ``timeoutSeconds`` (real: 1800).
    max_watch_seconds: float = 1800.0


@dataclass(frozen=True)
class _Target:
    """What a resource URL names."""

    kind: ResourceKind
    version: str
    namespace: str | None
    name: str | None
    subresource: str
    watch_path: bool  # the deprecated /watch/ prefix


def _json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode() + b"\n",
        status=status,
        content_type="application/json",
    )


def _error_response(error: ApiError) -> web.Response:
    if isinstance(error, apierrors.PathNotFound):
        return web.Response(
            text=apierrors.PAGE_NOT_FOUND,
            status=404,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )
    return _json_response(error.status(), error.code)


def _present(kind: ResourceKind, obj: JsonObject, version: str, *, in_list: bool = False) -> JsonObject:
    """An object as served at ``version``; built-in list items carry no kind/apiVersion."""
    if in_list and not kind.custom:
        return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
    if kind.custom and obj.get("apiVersion") != kind.api_version(version):
        return {**obj, "apiVersion": kind.api_version(version)}
    return obj


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:6443"`` or ``"[::1]:6443"`` to (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class LabApiServer:
    """The lab API server; one instance serves one in-memory cluster."""

    def __init__(self, settings: LabSettings | None = None) -> None:
        self.settings = settings or LabSettings()
        self.store = Store(
            history_size=self.settings.history_size,
            watch_queue_size=self.settings.watch_queue_size,
            auto_create_default_namespace=self.settings.create_default_namespace,
            auto_create_namespaces=self.settings.auto_create_namespaces,
        )
        self._runner: web.AppRunner | None = None
        self._url = ""
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._fault: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` once started."""
        if not self._url:
            raise RuntimeError("the lab API server is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port); returns the URL."""
        app = web.Application(middlewares=[self._middleware], client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._loop = asyncio.get_running_loop()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        bound = server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self._url = f"http://{shown}:{bound[1]}"
        logger.info("lab apiserver listening url=%s", self._url)
        return self._url

    async def stop(self) -> None:
        """Close watches, stop listening, drop connections. Idempotent."""
        self._unpaused.set()
        self.store.close_watchers("server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            logger.info("lab apiserver stopped url=%s", self._url)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Run the server on its own event loop in a daemon thread; returns the URL."""
        loop = asyncio.new_event_loop()
        started: asyncio.Future[str] = loop.create_future()

        def main() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                try:
                    started.set_result(await self.start(host, port))
                except Exception as exc:
                    started.set_exception(exc)

            booting = loop.create_task(boot())
            loop.run_forever()
            booting.cancel()
            loop.close()

        ready = threading.Event()
        started.add_done_callback(lambda _: ready.set())
        self._thread = threading.Thread(target=main, name="lab-apiserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the lab API server did not start within 10 s")
        return started.result()

    def stop_in_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None

    # ------------------------------------------------------------------ test plumbing

    def _on_loop(self, action: Any) -> None:
        loop = self._loop
        if loop is None or not loop.is_running():
            action()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            action()
        else:
            asyncio.run_coroutine_threadsafe(_call(action), loop).result(10)

    def pause(self) -> None:
        """Accept connections but answer nothing (an API outage) until :meth:`resume`."""
        self._on_loop(self._unpaused.clear)
        logger.info("lab apiserver paused")

    def resume(self) -> None:
        self._on_loop(self._unpaused.set)
        logger.info("lab apiserver resumed")

    def fail_with(self, code: int) -> None:
        """Answer every request with a Status of this HTTP code (429, 500, 503, 504)."""
        self._fault = code
        logger.info("lab apiserver failing requests code=%d", code)

    def clear_fault(self) -> None:
        self._fault = None

    def compact(self) -> None:
        """Forget the watch history: watches from older resourceVersions get 410."""
        self._on_loop(self.store.compact)

    # ------------------------------------------------------------------ HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        await self._unpaused.wait()
        if self._fault is not None:
            return _error_response(apierrors.injected(self._fault))
        try:
            response = await handler(request)
        except ApiError as error:
            logger.debug(
                "request failed method=%s path=%s code=%d reason=%s",
                request.method,
                request.path,
                error.code,
                error.reason,
            )
            return _error_response(error)
        assert isinstance(response, web.StreamResponse)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok", content_type="text/plain")
        if path == "/version":
            return _json_response(self._version())
        if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
            return self._openapi(path.removeprefix("/openapi/v3").lstrip("/"))
        segments = [s for s in path.split("/") if s]
        if not segments or segments[0] not in ("api", "apis"):
            raise apierrors.path_not_found()
        if segments[0] == "api":
            if len(segments) == 1:
                return _json_response(self._api_versions(request))
            group, version, rest = "", segments[1], segments[2:]
            if version != "v1":  # the core API's own handler answers below /api/, as a Status
                raise apierrors.resource_not_found()
        else:
            if len(segments) == 1:
                return _json_response(self._group_list())
            if len(segments) == 2:
                return _json_response(self._group(segments[1]))
            group, version, rest = segments[1], segments[2], segments[3:]
        if not rest:
            if request.method != "GET":
                raise apierrors.method_not_allowed()
            return _json_response(self._resource_list(group, version))
        target = self._target(group, version, rest)
        return await self._serve(request, target)

    def _target(self, group: str, version: str, rest: list[str]) -> _Target:
        watch_path = rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise apierrors.resource_not_found()
        kind = self.store.resolve(group, version, rest[0])
        if kind is None and not any(not k.custom for k in iter_kinds(self.store.kinds(), group, version)):
            # no built-in API serves this group version: a custom resource
            # without its CRD (deleted, or never installed), or no API at all
            raise apierrors.path_not_found()
        if kind is None or (namespace is not None and not kind.namespaced):
            raise apierrors.resource_not_found()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else ""
        if name is not None and kind.namespaced and namespace is None:
            raise apierrors.resource_not_found()
        if subresource and (subresource != "status" or not kind.status_subresource or watch_path):
            raise apierrors.resource_not_found()
        return _Target(kind, version, namespace, name, subresource, watch_path)

    async def _serve(self, request: web.Request, t: _Target) -> web.StreamResponse:
        method, query = request.method, request.query
        if t.watch_path or (method == "GET" and query.get("watch", "") in _TRUE):
            if method != "GET":
                raise apierrors.method_not_allowed()
            return await self._watch(request, t)
        if t.name is None:
            return await self._serve_collection(request, t)
        return await self._serve_object(request, t, t.name)

    async def _serve_collection(self, request: web.Request, t: _Target) -> web.StreamResponse:
        """GET (list), POST (create) or DELETE (deletecollection) on a collection."""
        store, method, query = self.store, request.method, request.query
        if method == "GET":
            return self._list(request, t)
        if method == "POST" and (t.namespace is not None or not t.kind.namespaced):
            options = _write_options(query, "CreateOptions")
            body = await _read_body(request)
            new = store.create(t.kind, t.namespace, body, t.version, options)
            return _warned(_json_response(_present(t.kind, new, t.version), 201), options)
        if method == "DELETE":
            deleted = store.delete_collection(t.kind, t.namespace, _selection(query, t.kind))
            return _json_response(self._list_body(t, deleted, store.resource_version))
        raise apierrors.method_not_allowed()

    async def _serve_object(self, request: web.Request, t: _Target, name: str) -> web.StreamResponse:
        """GET, PUT, PATCH or DELETE on one object (all but DELETE also on its status)."""
        store, method, query = self.store, request.method, request.query
        if method == "GET":
            return _json_response(_present(t.kind, store.get(t.kind, t.namespace, name), t.version))
        if method == "PUT":
            options = _write_options(query, "UpdateOptions")
            body = await _read_body(request)
            obj, created = store.update(
                t.kind, t.namespace, name, body, version=t.version, subresource=t.subresource, options=options
            )
            return _warned(_json_response(_present(t.kind, obj, t.version), 201 if created else 200), options)
        if method == "PATCH":
            options = _write_options(query, "PatchOptions")
            body = await _read_body(request)
            content_type = request.content_type
            obj = store.patch(
                t.kind,
                t.namespace,
                name,
                body,
                content_type=content_type,
                version=t.version,
                subresource=t.subresource,
                options=options,
            )
            return _warned(_json_response(_present(t.kind, obj, t.version)), options)
        if method == "DELETE" and not t.subresource:
            raw = await request.read()
            delete_options = await _read_body(request) if raw.strip() else None
            if delete_options is not None and not isinstance(delete_options, Mapping):
                raise bad_request("DeleteOptions must be an object")
            dry_run = _dry_run(query, "DeleteOptions") or (delete_options or {}).get("dryRun") == ["All"]
            answer = store.delete(t.kind, t.namespace, name, delete_options, dry_run=dry_run)
            if answer.get("kind") != "Status":
                answer = _present(t.kind, answer, t.version)
            return _json_response(answer)
        raise apierrors.method_not_allowed()

    def _list_body(
        self, t: _Target, items: list[JsonObject], rv: int, token: str | None = None, remaining: int | None = None
    ) -> JsonObject:
        metadata: JsonObject = {"resourceVersion": str(rv)}
        if token:
            metadata["continue"] = token
        if remaining is not None:
            metadata["remainingItemCount"] = remaining
        return {
            "kind": f"{t.kind.kind}List",
            "apiVersion": t.kind.api_version(t.version),
            "metadata": metadata,
            "items": [_present(t.kind, obj, t.version, in_list=True) for obj in items],
        }

    def _list(self, request: web.Request, t: _Target) -> web.Response:
        query = request.query
        selection = _selection(query, t.kind)
        limit = _int_param(query, "limit")
        result = self.store.list_objects(
            t.kind,
            t.namespace,
            selection,
            limit=limit,
            continue_token=query.get("continue", ""),
            resource_version=query.get("resourceVersion", ""),
            resource_version_match=query.get("resourceVersionMatch", ""),
        )
        remaining = result.remaining if not selection.labels.requirements and not selection.fields.terms else None
        return _json_response(
            self._list_body(t, result.items, result.resource_version, result.continue_token, remaining)
        )

    async def _watch(self, request: web.Request, t: _Target) -> web.StreamResponse:
        query = request.query
        selection = _selection(query, t.kind)
        if t.name is not None:
            selection = Selection(
                selection.labels, parse_field_selector(f"metadata.name={t.name}", t.kind.selectable_fields)
            )
        bookmarks = query.get("allowWatchBookmarks", "") in _TRUE
        timeout = float(_int_param(query, "timeoutSeconds")) or self.settings.max_watch_seconds
        watcher = self.store.watch(t.kind, t.namespace, selection, query.get("resourceVersion", ""))
        response = web.StreamResponse(headers={"Cache-Control": "no-cache, private"})
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        logger.debug(
            "watch opened resource=%s namespace=%s rv=%s",
            apierrors.qualified(*t.kind.key),
            t.namespace or "*",
            query.get("resourceVersion", ""),
        )
        try:
            await response.prepare(request)
            await self._pump(response, watcher, t, bookmarks, timeout)
            await response.write_eof()
        except ConnectionError:
            logger.debug("watch client went away resource=%s", apierrors.qualified(*t.kind.key))
        finally:
            self.store.unwatch(watcher)
            if watcher.overflowed:
                logger.warning("watch closed: client too slow resource=%s", apierrors.qualified(*t.kind.key))
        return response

    async def _pump(
        self, response: web.StreamResponse, watcher: Watcher, t: _Target, bookmarks: bool, duration: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        interval = self.settings.bookmark_interval
        next_bookmark = loop.time() + interval
        while (now := loop.time()) < deadline:
            wait = deadline - now
            if bookmarks:
                wait = max(0.0, min(wait, next_bookmark - now))
            event = await watcher.next(wait)
            await self._unpaused.wait()
            if event is None:
                if watcher.closed:
                    return
                if bookmarks and loop.time() >= next_bookmark:
                    next_bookmark = loop.time() + interval
                    event = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": t.kind.kind,
                            "apiVersion": t.kind.api_version(t.version),
                            "metadata": {"resourceVersion": str(self.store.resource_version)},
                        },
                    }
                else:
                    continue
            elif event["type"] != "ERROR":
                event = {"type": event["type"], "object": _present(t.kind, event["object"], t.version)}
            await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    # ------------------------------------------------------------------ discovery

    def _openapi_documents(self) -> dict[str, JsonObject]:
        kinds = self.store.kinds()
        versions = sorted({(k.group, v) for k in kinds for v in k.versions})
        return {
            published.group_version_path(group, version): published.document(
                iter_kinds(kinds, group, version), group, version, KUBE_VERSION[2]
            )
            for group, version in versions
        }

    def _openapi(self, group_version: str) -> web.Response:
        """``/openapi/v3`` (the index) or one group version's document (see :mod:`egressd.apiserver.published`)."""
        documents = self._openapi_documents()
        if not group_version:
            return _json_response(published.index(documents))
        if group_version not in documents:
            raise apierrors.path_not_found()
        return _json_response(documents[group_version])

    def _version(self) -> JsonObject:
        major, minor, git = KUBE_VERSION
        return {
            "major": major,
            "minor": minor,
            "gitVersion": git,
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "n/a",
            "compiler": "egressd-lab",
            "platform": "linux/amd64",
        }

    def _api_versions(self, request: web.Request) -> JsonObject:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}],
        }

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for kind in self.store.kinds():
            if kind.group:
                versions = groups.setdefault(kind.group, [])
                versions.extend(v for v in kind.versions if v not in versions)
        return groups

    def _group(self, name: str) -> JsonObject:
        versions = self._groups().get(name)
        if versions is None:
            raise apierrors.path_not_found()
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": name,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _group_list(self) -> JsonObject:
        groups = [self._group(name) for name in sorted(self._groups())]
        for group in groups:
            del group["kind"], group["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> JsonObject:
        kinds = iter_kinds(self.store.kinds(), group, version)
        if not kinds:
            raise apierrors.path_not_found()
        resources: list[JsonObject] = []
        for kind in kinds:
            entry: JsonObject = {
                "name": kind.plural,
                "singularName": kind.singular,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": _ALL_VERBS,
            }
            if kind.short_names:
                entry["shortNames"] = list(kind.short_names)
            resources.append(entry)
            if kind.status_subresource:
                resources.append(
                    {
                        "name": f"{kind.plural}/status",
                        "singularName": "",
                        "namespaced": kind.namespaced,
                        "kind": kind.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }


async def _call(action: Any) -> None:
    action()


def _selection(query: Mapping[str, str], kind: ResourceKind) -> Selection:
    return Selection(
        parse_label_selector(query.get("labelSelector")),
        parse_field_selector(query.get("fieldSelector"), kind.selectable_fields, converted=kind.field_label_conversion),
    )


def _dry_run(query: MultiMapping[str], kind: str) -> bool:
    """``dryRun=All``: validate and answer, store nothing; any other value is 422."""
    values = query.getall("dryRun", [])
    if any(v != "All" for v in values):
        shown = "[" + ", ".join(go_quote(v) for v in values) + "]"
        problem = FieldError("dryRun", 'supported values: "All"', shown, "FieldValueNotSupported")
        raise apierrors.invalid("meta.k8s.io", kind, "", [problem])
    return bool(values)


def _write_options(query: MultiMapping[str], kind: str) -> WriteOptions:
    """The ``fieldValidation`` and ``dryRun`` of a write; an unknown value is 422,
    as the real server's validation of Create/Update/PatchOptions answers."""
    dry_run = _dry_run(query, kind)
    mode = query.get("fieldValidation", "")
    if mode not in FIELD_VALIDATIONS:
        supported = ", ".join(go_quote(v) for v in FIELD_VALIDATIONS)
        problem = FieldError(
            "fieldValidation", f"supported values: {supported}", go_quote(mode), "FieldValueNotSupported"
        )
        raise apierrors.invalid("meta.k8s.io", kind, "", [problem])
    return WriteOptions(field_validation=mode, dry_run=dry_run)


def _warned(response: web.Response, options: WriteOptions) -> web.Response:
    """``Warning: 299 - "..."`` headers, as the real server sends for dropped unknown fields."""
    for text in options.warnings:
        response.headers.add("Warning", f"299 - {go_quote(text)}")
    return response


def _int_param(query: Mapping[str, str], name: str) -> int:
    """An integer query parameter (0 when unset); not a number is 400 with Go's
    parse error, a negative one counts as unset, as on the real server."""
    raw = query.get(name, "")
    if not raw:
        return 0
    digits = raw.removeprefix("-").removeprefix("+")
    if not (digits.isascii() and digits.isdigit()):
        raise bad_request(f"strconv.ParseInt: parsing {go_quote(raw)}: invalid syntax")
    return max(int(raw), 0)


async def _read_body(request: web.Request) -> Any:
    raw = await request.read()
    if request.content_type in ("application/yaml", "application/apply-patch+yaml"):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise bad_request(f"yaml: {exc}") from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        if request.content_type == JSON_PATCH or request.method == "PATCH":
            raise bad_request(f"error decoding patch: {exc}") from exc
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc


async def serve(listen: str, settings: LabSettings | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve on ``listen`` until ``stop`` is set (or forever)."""
    host, port = parse_listen(listen)
    server = LabApiServer(settings)
    await server.start(host, port)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()


def run(listen: str, settings: LabSettings | None = None) -> None:
    """Blocking entry point for ``egressd apiserver --listen HOST:PORT``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(listen, settings, stop)

    asyncio.run(main())
