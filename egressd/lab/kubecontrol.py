"""A real Kubernetes control plane: etcd and kube-apiserver, for the tests and the lab.

``scripts/build-kube`` builds kube-apiserver, kubectl and etcd from their Go
modules at the releases of ``scripts/kube-versions`` into
``.cache/kube/k8s-<release>-etcd-<release>/`` (``EGRESSD_KUBE_BIN`` names
another directory). This module runs them the way a cluster does, small:

* a certificate authority made with ``openssl`` for the run: a serving
  certificate for kube-apiserver (its addresses and ``localhost``), one for
  etcd, the client certificates kube-apiserver shows etcd and an admin shows
  kube-apiserver (``O=system:masters``), and the ServiceAccount signing key;
* etcd on one address with TLS and client-certificate authentication, its
  data in a directory of the run;
* kube-apiserver with TLS, ``--authorization-mode=Node,RBAC`` and
  ServiceAccount token issuance, so that a component can be run with exactly
  the token its ServiceAccount gets (:meth:`KubeApi.token`), never as admin.

There is no controller manager, scheduler or kubelet. What that changes for a
client: ServiceAccounts named ``default`` are not made in new namespaces (so
the ``ServiceAccount`` admission plugin, which refuses Pods without one, is
off); a Pod bound to a node stays Terminating once deleted (no kubelet
confirms it), and a namespace deleted stays Terminating (no namespace
controller empties it).

:class:`ControlPlane` runs the two servers as child processes (the tests);
the lab runs the same command lines under its supervisor in a namespace
(:func:`etcd_argv`, :func:`apiserver_argv`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
VERSIONS_FILE = REPO / "scripts" / "kube-versions"
#: The range Services get addresses from; kube-apiserver takes its first for ``kubernetes``.
SERVICE_CIDR = "10.96.0.0/16"
#: The issuer of ServiceAccount tokens, as a cluster made by kubeadm names it.
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(Exception):
    """The control plane cannot be built, started or reached; the message says what to do."""


def versions() -> dict[str, str]:
    """The releases of ``scripts/kube-versions``: ``{"KUBERNETES": "v1.37.2", "ETCD": "v3.6.16"}``."""
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class KubeBinaries:
    """The three programs, built by ``scripts/build-kube``."""

    apiserver: Path
    etcd: Path
    kubectl: Path

    @staticmethod
    def directory() -> Path:
        given = os.environ.get("EGRESSD_KUBE_BIN")
        if given:
            return Path(given)
        v = versions()
        return REPO / ".cache" / "kube" / f"k8s-{v['KUBERNETES']}-etcd-{v['ETCD']}"

    @classmethod
    def find(cls) -> KubeBinaries:
        """The built programs, or :class:`ControlPlaneError` saying how to build them."""
        where = cls.directory()
        found = cls(where / "kube-apiserver", where / "etcd", where / "kubectl")
        missing = [p.name for p in (found.apiserver, found.etcd, found.kubectl) if not os.access(p, os.X_OK)]
        if missing:
            raise ControlPlaneError(
                f"{', '.join(missing)} not built in {where}; run 'bash scripts/build-kube' "
                "(the first build takes 10-15 minutes)"
            )
        return found


# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """The files of a run's certificate authority, all in one directory."""

    dir: Path

    def __getattr__(self, name: str) -> Path:  # ca_crt, admin_key, ... -> dir/ca.crt, dir/admin.key
        stem, _, ext = name.rpartition("_")
        if ext not in {"crt", "key", "pub"}:
            raise AttributeError(name)
        return self.dir / f"{stem.replace('_', '-')}.{ext}"


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {done.stderr.strip()[-400:]}")


def _certificate(pki: Pki, name: str, subject: str, *, usage: str, sans: Sequence[str] = ()) -> None:
    ext = pki.dir / f"{name}.ext"
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=pki.dir)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki.dir)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "365", "-extfile", ext.name, "-out", f"{name}.crt", cwd=pki.dir,
    )  # fmt: skip


def make_pki(directory: Path, addresses: Sequence[str]) -> Pki:
    """A new certificate authority in ``directory`` and the certificates of one
    control plane serving on ``addresses`` (IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=egressd-test-ca", "-days", "365",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.crt", cwd=directory,
    )  # fmt: skip
    ips = sorted({"127.0.0.1", *addresses})
    server_sans = [f"IP:{ip}" for ip in ips] + [
        "IP:10.96.0.1",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
    ]
    _certificate(pki, "apiserver", "/CN=kube-apiserver", usage="serverAuth", sans=server_sans)
    _certificate(pki, "etcd", "/CN=etcd", usage="serverAuth,clientAuth", sans=[f"IP:{ip}" for ip in ips])
    _certificate(pki, "apiserver-etcd-client", "/CN=kube-apiserver-etcd-client", usage="clientAuth")
    _certificate(pki, "admin", "/O=system:masters/CN=kubernetes-admin", usage="clientAuth")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=directory)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return pki


# --- command lines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one control plane listens and keeps its files."""

    address: str
    api_port: int
    etcd_port: int
    etcd_peer_port: int
    state: Path

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.api_port}"

    @property
    def pki(self) -> Pki:
        return Pki(self.state / "pki")

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"

    def etcd_url(self, port: int, scheme: str = "https") -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{scheme}://{host}:{port}"


def etcd_argv(bins: KubeBinaries, layout: Layout) -> list[str]:
    """etcd with TLS and client certificates on ``layout.address``; no fsync (test data only)."""
    pki = layout.pki
    client = layout.etcd_url(layout.etcd_port)
    peer = layout.etcd_url(layout.etcd_peer_port, "http")
    return [
        str(bins.etcd),
        "--name=egressd",
        f"--data-dir={layout.state / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=egressd={peer}",
        f"--cert-file={pki.etcd_crt}",
        f"--key-file={pki.etcd_key}",
        f"--trusted-ca-file={pki.ca_crt}",
        "--client-cert-auth",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_argv(bins: KubeBinaries, layout: Layout) -> list[str]:
    """kube-apiserver with TLS, Node and RBAC authorization and ServiceAccount tokens."""
    pki = layout.pki
    return [
        str(bins.apiserver),
        f"--etcd-servers={layout.etcd_url(layout.etcd_port)}",
        f"--etcd-cafile={pki.ca_crt}",
        f"--etcd-certfile={pki.apiserver_etcd_client_crt}",
        f"--etcd-keyfile={pki.apiserver_etcd_client_key}",
        f"--bind-address={layout.address}",
        f"--advertise-address={layout.address}",
        f"--secure-port={layout.api_port}",
        f"--cert-dir={layout.state / 'apiserver-certs'}",
        f"--tls-cert-file={pki.apiserver_crt}",
        f"--tls-private-key-file={pki.apiserver_key}",
        f"--client-ca-file={pki.ca_crt}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # no controller manager makes the ServiceAccount "default" of a namespace (see above)
        "--disable-admission-plugins=ServiceAccount",
        # a loopback or lab address is not one Endpoints may hold; nothing reads them here
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=1",
    ]


def kubeconfig(
    url: str,
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    user: str = "admin",
) -> dict[str, Any]:
    """A kubeconfig for one user: a client certificate or a bearer token."""
    creds: dict[str, Any] = {}
    if cert is not None and key is not None:
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    if token is not None:
        creds["token"] = token
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "egressd", "cluster": {"server": url, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": user, "context": {"cluster": "egressd", "user": user}}],
        "current-context": user,
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


# --- a small admin client -----------------------------------------------------------------------


class KubeApi:
    """Requests to kube-apiserver as admin (client certificate) or with a bearer token."""

    def __init__(
        self, url: str, ca: Path, *, cert: Path | None = None, key: Path | None = None, token: str | None = None
    ) -> None:
        self.url = url
        host, _, port = url.removeprefix("https://").rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._context = ssl.create_default_context(cafile=str(ca))
        if cert is not None and key is not None:
            self._context.load_cert_chain(str(cert), str(key))
        self._token = token

    def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", timeout: float = 10.0
    ) -> tuple[int, Any]:
        """One request: (status, decoded JSON, or the text when it is not JSON)."""
        conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
        try:
            headers = {"Accept": "application/json"}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            payload = None
            if body is not None:
                payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
                headers["Content-Type"] = content_type
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def wait_ready(self, timeout: float, *, alive: Any = None) -> None:
        """Until ``/readyz`` answers 200 and the ``default`` namespace exists;
        ``alive()`` returning a message (a server died) stops the wait."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if alive is not None and (dead := alive()):
                raise ControlPlaneError(dead)
            try:
                status, body = self.request("GET", "/readyz", timeout=2.0)
                if status == 200:
                    status, body = self.request("GET", "/api/v1/namespaces/default", timeout=2.0)
                    if status == 200:
                        return
                last = f"{status}: {str(body)[-300:]}"
            except (OSError, http.client.HTTPException) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready in {timeout:.0f} s: {last}")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object (field manager ``egressd-tests``)."""
        status, body = self.request(
            "PATCH", object_path(obj) + "?fieldManager=egressd-tests&force=true", obj,
            content_type="application/apply-patch+yaml",
        )  # fmt: skip
        if status not in (200, 201):
            raise ControlPlaneError(f"apply {obj.get('kind')} {obj['metadata'].get('name')}: {status} {body}")
        result: dict[str, Any] = body
        return result

    def delete_namespace(self, name: str, *, timeout: float = 30.0) -> None:
        """Delete a namespace and what is in it, doing what the namespace
        controller (absent here) does: delete every namespaced collection the
        server lists in discovery (Pods at once, no grace), then finalize the
        emptied namespace so that it goes. A namespace that is not there is fine."""
        status, body = self.request("DELETE", f"/api/v1/namespaces/{name}")
        if status == 404:
            return
        if status not in (200, 202):
            raise ControlPlaneError(f"delete namespace {name}: {status} {body}")
        for collection in self._namespaced_collections():
            self.request("DELETE", f"{collection.format(ns=name)}?gracePeriodSeconds=0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, ns = self.request("GET", f"/api/v1/namespaces/{name}")
            if status == 404:
                return
            if status == 200 and ns.get("spec", {}).get("finalizers"):
                ns["spec"]["finalizers"] = []
                self.request("PUT", f"/api/v1/namespaces/{name}/finalize", ns)
            time.sleep(0.1)
        raise ControlPlaneError(f"namespace {name} still there after {timeout:.0f} s")

    def _namespaced_collections(self) -> list[str]:
        """Paths (with ``{ns}``) of every namespaced resource that can be deleted as a collection."""
        versions = ["/api/v1"]
        status, groups = self.request("GET", "/apis")
        if status == 200:
            versions += [f"/apis/{g['preferredVersion']['groupVersion']}" for g in groups.get("groups", [])]
        out = []
        for version in versions:
            status, listing = self.request("GET", version)
            if status != 200:
                continue
            for r in listing.get("resources", []):
                if r.get("namespaced") and "/" not in r["name"] and "deletecollection" in r.get("verbs", []):
                    out.append(f"{version}/namespaces/{{ns}}/{r['name']}")
        return out

    def token(self, namespace: str, serviceaccount: str, *, seconds: int = 3600) -> str:
        """A token for ``namespace/serviceaccount`` from the TokenRequest API."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{serviceaccount}/token"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        status, body = self.request("POST", path, request)
        if status != 201:
            raise ControlPlaneError(f"no token for {namespace}/{serviceaccount}: {status} {body}")
        token: str = body["status"]["token"]
        return token


#: Where the built-in kinds egressd's manifests hold live: kind -> (group version, plural, namespaced).
_PATHS: dict[str, tuple[str, str, bool]] = {
    "Namespace": ("api/v1", "namespaces", False),
    "ServiceAccount": ("api/v1", "serviceaccounts", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "Secret": ("api/v1", "secrets", True),
    "Node": ("api/v1", "nodes", False),
    "Pod": ("api/v1", "pods", True),
    "ClusterRole": ("apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "DaemonSet": ("apis/apps/v1", "daemonsets", True),
    "Lease": ("apis/coordination.k8s.io/v1", "leases", True),
    "EgressGatewayPolicy": ("apis/egressd.io/v1alpha1", "egressgatewaypolicies", False),
}


def object_path(obj: dict[str, Any]) -> str:
    """The URL path of one object of a kind in :data:`_PATHS`."""
    kind = obj.get("kind", "")
    if kind not in _PATHS:
        raise ControlPlaneError(f"no path known for kind {kind!r}")
    prefix, plural, namespaced = _PATHS[kind]
    meta = obj["metadata"]
    ns = f"/namespaces/{meta.get('namespace', 'default')}" if namespaced else ""
    return f"/{prefix}{ns}/{plural}/{meta['name']}"


# --- running it -------------------------------------------------------------------------------


def free_port(address: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


class ControlPlane:
    """etcd and kube-apiserver as child processes on one address (loopback by default).

    ``with ControlPlane(state_dir) as cp:`` starts both, waits until
    kube-apiserver is ready, and stops them (and removes nothing but what it
    made: the state directory stays for the logs)."""

    def __init__(
        self,
        state: Path,
        *,
        address: str = "127.0.0.1",
        binaries: KubeBinaries | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        self.binaries = binaries or KubeBinaries.find()
        self.layout = Layout(address, free_port(address), free_port(address), free_port(address), state)
        self.ready_timeout = ready_timeout
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.admin: KubeApi | None = None

    @property
    def url(self) -> str:
        return self.layout.url

    @property
    def ca_file(self) -> Path:
        return self.layout.pki.ca_crt

    @property
    def admin_kubeconfig(self) -> Path:
        return self.layout.admin_kubeconfig

    def log_file(self, name: str) -> Path:
        return self.layout.state / f"{name}.log"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        state = self.layout.state
        state.mkdir(parents=True, exist_ok=True)
        pki = make_pki(self.layout.pki.dir, [self.layout.address])
        write_kubeconfig(self.admin_kubeconfig, kubeconfig(self.url, pki.ca_crt, cert=pki.admin_crt, key=pki.admin_key))
        try:
            self._spawn("etcd", etcd_argv(self.binaries, self.layout))
            self._spawn("kube-apiserver", apiserver_argv(self.binaries, self.layout))
            self.admin = KubeApi(self.url, pki.ca_crt, cert=pki.admin_crt, key=pki.admin_key)
            self.admin.wait_ready(self.ready_timeout, alive=self._died)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> None:
        with self.log_file(name).open("ab") as log:
            self._procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    def _died(self) -> str | None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                tail = self.log_file(name).read_text(errors="replace")[-1500:]
                return f"{name} exited with {proc.returncode}; the end of {self.log_file(name)}:\n{tail}"
        return None

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd (resumed first if paused); idempotent."""
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def pid(self, name: str) -> int:
        return self._procs[name].pid

    def pause(self) -> None:
        """Freeze kube-apiserver (SIGSTOP): connections are accepted by the kernel and never answered."""
        os.kill(self.pid("kube-apiserver"), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid("kube-apiserver"), signal.SIGCONT)

    def kubectl(
        self, *args: str, kubeconfig_file: Path | None = None, input_text: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (admin unless another kubeconfig is given); the result, not checked."""
        config = kubeconfig_file or self.admin_kubeconfig
        return subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={config}", *args],
            input=input_text, capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip

    def api(self) -> KubeApi:
        assert self.admin is not None, "the control plane is not started"
        return self.admin

    @contextlib.contextmanager
    def as_token(self, namespace: str, serviceaccount: str) -> Iterator[tuple[KubeApi, Path]]:
        """A client and a kubeconfig that act with ``namespace/serviceaccount``'s token."""
        token = self.api().token(namespace, serviceaccount)
        path = self.layout.state / f"{namespace}-{serviceaccount}.kubeconfig"
        write_kubeconfig(path, kubeconfig(self.url, self.ca_file, token=token, user=serviceaccount))
        try:
            yield KubeApi(self.url, self.ca_file, token=token), path
        finally:
            path.unlink(missing_ok=True)
