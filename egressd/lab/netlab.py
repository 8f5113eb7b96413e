"""The reference scenario in network namespaces on one machine, and the API drills use.

``egressd lab up`` builds :data:`egressd.lab.scenario.REFERENCE` out of network
namespaces, all named ``{prefix}{host}`` (prefix ``egl-`` by default)::

    {prefix}switch              bridge "kind" (the walkthrough's docker network, 172.18.0.0/16)
    {prefix}kind-control-plane  eth0 172.18.0.2, the lab API server on :6443 (or etcd and
                                kube-apiserver: ``apiserver="kube"``), egressd
    {prefix}kind-worker         eth0 172.18.0.3, egressd; pods xwing, tiefighter behind lxc-*
    {prefix}kind-worker2        eth0 172.18.0.4, egressd; pod ywing
    {prefix}kind-worker3/4      eth0 172.18.0.5/.6 and net0 (no address), egressd (gateways)
    {prefix}outpost             eth0 172.18.0.7, the outpost server (:8000 http, :9000 udp)
    {prefix}xwing ...           eth0 10.244.1.2/32, default via the node

Nothing is ever created in the root namespace: every veth pair is created from
inside one lab namespace with its peer directly in another. Interface names
carry no prefix (they only exist inside the lab's namespaces); the switch's
ports are ``<node short>-eth0``/``-net0``.

Routing is that of a flat routed node network (kindnet): every node and the
outpost route each other node's pod CIDR via that node's eth0 address; pods
reach their node over a point-to-point veth (the node side carries the pod
CIDR's .1 as a /32, as the CNI ptp plugin does). There is no masquerading, so
a pod that egressd does not steer reaches the outpost with its pod address
and is refused (the walkthrough's "tiefighter" answer).

Kernel settings of the nodes, and why:

* ``ip_forward=1``: nodes route their pods' traffic, gateways forward steered
  traffic from other nodes.
* ``arp_ignore=1``: answer ARP only for an address configured on the interface
  the request came in on. A gateway has two ports on one bridge, so every ARP
  broadcast reaches both; with the default (0) both eth0 and net0 would answer
  for 172.18.0.5 *and* for the egress IP ("ARP flux"), and the outpost could
  send the egress IP's replies to eth0's MAC. With 1, only net0 answers for the
  egress IP and only eth0 for the node address.
* ``arp_announce=2``: ARP requests sent on an interface use a source address
  of that interface's subnet, never the egress IP, so neighbours do not learn
  a MAC for the egress IP from a request sent on eth0.
* ``rp_filter=2`` (loose): replies to SNATed traffic arrive for the egress IP
  on net0, while the route back to their source leaves by eth0; strict reverse
  path filtering (1, the default of many distributions, and inherited by new
  namespaces from the root namespace) would drop them.
* ``send_redirects=0``/``accept_redirects=0``: a worker sends steered traffic
  to a gateway on the same subnet, which forwards it out of the interface it
  came in on; an ICMP redirect ("reach the outpost directly") would otherwise
  teach the worker a route around the gateway.

Processes run under :mod:`egressd.lab.supervisor` (``Restart=always``) in the
namespaces: the lab API server, the outpost, and ``egressd run`` on every node
with a generated static config. With ``apiserver="kube"`` the API server is
kube-apiserver with etcd (:mod:`egressd.lab.kubecontrol`), a certificate
authority of the lab's own in ``state/kube/``, and the daemons act with
tokens of the ``egressd`` ServiceAccount and deploy/rbac.yaml's rights. The
lab's state (prefix, namespaces, processes) is in ``state.json`` in the state
directory; the supervisor keeps ``pids.json``
beside it. ``down`` works without any of it: it finds the lab's namespaces by
their names and its processes by the ``EGRESSD_LAB=<prefix>`` environment
variable every lab process carries, and by the namespaces they are in.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from egressd.core.config import parse_settings
from egressd.core.errors import MalformedLease
from egressd.core.lease import LeaseRecord, record_from_object
from egressd.core.model import Timing
from egressd.core.node_lease import is_node_lease
from egressd.core.rights import MeshTiming
from egressd.core.scalars import seconds
from egressd.lab.kubecontrol import (
    ControlPlaneError,
    KubeBinaries,
    Layout,
    apiserver_argv,
    etcd_argv,
    kubeconfig,
    make_pki,
    object_path,
    write_kubeconfig,
)
from egressd.lab.netns import (
    LabError,
    Namespaces,
    kill_all,
    netns_list,
    pid_alive,
    proc_state,
    remove,
    run_cmd,
)
from egressd.lab.scenario import API_PORT, BRIDGE, EGRESSD_NAMESPACE, REFERENCE, NodeSpec, Scenario
from egressd.lab.supervisor import ENV_LAB, ProcessSpec, StateDir, write_json_atomic

DEFAULT_PREFIX = "egl-"
DEFAULT_STATE_DIR = "/run/egressd-lab"
SWITCH = "switch"
"""Host name of the switch namespace (``{prefix}switch``)."""

SEEDED_GATE = "seeded"

MODES = ("static", "kubernetes")
APISERVERS = ("embedded", "kube")
"""``embedded``: egressd's own API server (``egressd apiserver``), up in a second. ``kube``:
kube-apiserver and etcd built by ``scripts/build-kube`` (:mod:`egressd.lab.kubecontrol`), with
TLS, Node and RBAC authorization; the daemons act with their ServiceAccount's token."""
POLICY_PATH = "/apis/egressd.io/v1alpha1/egressgatewaypolicies"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
CRD_FILE = DEPLOY_DIR / "crd.yaml"
RBAC_FILE = DEPLOY_DIR / "rbac.yaml"
SERVICE_ACCOUNT = (EGRESSD_NAMESPACE, "egressd")
"""The DaemonSet's ServiceAccount (deploy/rbac.yaml), whose token the daemons use with kube-apiserver."""
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
KUBE_READY_TIMEOUT = 120.0
"""Seconds kube-apiserver gets to become ready (5-8 s on two cores, more on a loaded machine;
the daemons' own start-up keeps the ``up`` timeout)."""
TOKEN_SECONDS = 7 * 24 * 3600
"""Lifetime of the daemons' tokens: longer than a lab lives (the daemons read them once)."""
FIELD_MANAGER = "egressd-lab"


def policy_crd() -> dict[str, Any]:
    """The EgressGatewayPolicy CRD of deploy/crd.yaml (the lab runs from the source tree)."""
    try:
        crd = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabError(f"the Kubernetes mode of the lab needs {CRD_FILE} from the source tree: {exc}") from exc
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise LabError(f"{CRD_FILE} is not a CustomResourceDefinition")
    return crd


"""Gate file: the daemons start once the API server holds the scenario's objects."""


def rbac_objects() -> list[dict[str, Any]]:
    """The ServiceAccount, Roles and bindings of deploy/rbac.yaml, as the DaemonSet gets them."""
    try:
        docs = list(yaml.safe_load_all(RBAC_FILE.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"the lab on kube-apiserver needs {RBAC_FILE} from the source tree: {exc}") from exc
    return [d for d in docs if isinstance(d, dict)]


PARTITION_TABLE = "lab_partition"
"""The nftables table of :meth:`Lab.block_api` (egressd never touches tables it does not own)."""

PEER_TABLE = "lab_peers"
"""The nftables table of :meth:`Lab.block_peers`."""

NODE_SYSCTLS: Mapping[str, str] = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.default.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
    "net.ipv4.conf.default.arp_announce": "2",
    "net.ipv4.conf.all.rp_filter": "2",
    "net.ipv4.conf.default.rp_filter": "2",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
}
"""Set before the node's interfaces exist, so that they inherit ``default`` (see the module doc)."""

HOST_SYSCTLS: Mapping[str, str] = {
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}
"""The outpost and the pods: one interface each; only undo what the root namespace may pass on."""


# --- sockets inside a namespace -----------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc  # noqa: PLW0603 - loaded once, on first use
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def _in_netns(ns: str) -> Iterator[None]:
    """Switch the calling *thread* into namespace ``ns`` and back. Do not await inside."""
    with Path("/proc/thread-self/ns/net").open("rb") as own, Path(f"/run/netns/{ns}").open("rb") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(own.fileno())


def netns_socket(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in namespace ``ns`` (a socket keeps the namespace it was created in),
    usable from this process: drills probe from a pod without starting a process."""
    try:
        with _in_netns(ns):
            return socket.socket(family, kind)
    except OSError as exc:
        raise LabError(f"cannot open a socket in namespace {ns}: {exc}") from exc


class _NetnsConnection(http.client.HTTPConnection):
    def __init__(self, ns: str, host: str, port: int | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        sock = netns_socket(self._ns)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _NetnsTlsConnection(http.client.HTTPSConnection):
    def __init__(self, ns: str, host: str, port: int | None, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ns = ns
        self._tls = context

    def connect(self) -> None:
        sock = netns_socket(self._ns)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def netns_http(
    ns: str,
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    content_type: str = "application/json",
    timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """One HTTP request from inside namespace ``ns``: (status, body). ``body`` is sent as JSON
    (bytes as they are). An ``https://`` URL needs ``tls``: the CA to trust and,
    for the lab's kube-apiserver, the admin client certificate (:meth:`Lab.api`)."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        if tls is None:
            raise LabError(f"{url}: an https request needs a TLS context")
        conn = _NetnsTlsConnection(ns, parts.hostname or "", parts.port, timeout, tls)
    else:
        conn = _NetnsConnection(ns, parts.hostname or "", parts.port, timeout)
    try:
        payload = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Accept": "application/json"} if payload else {}
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- processes ----------------------------------------------------------------------------


def egressd_command() -> list[str]:
    """How to run the ``egressd`` command of this installation."""
    script = Path(sys.executable).with_name("egressd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "egressd.cli.main"]


def daemon_command(config: Path, *, dataplane: str = "kernel", journal: Path | None = None) -> list[str]:
    """The command line of egressd on a lab node, as it runs in production (one place to change it)."""
    argv = [*egressd_command(), "run", "--config", str(config), "--dataplane", dataplane]
    if dataplane == "record" and journal is not None:
        argv += ["--journal", str(journal)]
    return argv


def lab_processes(prefix: str) -> list[int]:
    """Pids of the processes tagged ``EGRESSD_LAB=<prefix>`` (the supervisor and what it started)."""
    tag = f"{ENV_LAB}={prefix}".encode()
    me = os.getpid()
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if tag in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


# --- the lab ------------------------------------------------------------------------------


class Lab:
    """One lab: its namespaces, its processes and the handles drills use.

    ``Lab(prefix, state_dir).up()`` builds it; :meth:`Lab.attach` opens the lab
    an earlier ``up`` left in a state directory. Host names are the scenario's:
    node names, ``outpost``, pod names, and ``switch``.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        state_dir: str | Path = DEFAULT_STATE_DIR,
        *,
        scenario: Scenario = REFERENCE,
        dataplane: str = "kernel",
        log_level: str = "info",
        mode: str = "static",
        apiserver: str = "embedded",
        timing: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise LabError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if apiserver not in APISERVERS:
            raise LabError(f"apiserver must be one of {', '.join(APISERVERS)}, got {apiserver!r}")
        self.prefix = prefix
        self.state = StateDir(state_dir)
        if timing:
            scenario = dataclasses.replace(scenario, timing=dict(timing))
        self.scenario = scenario
        """With ``timing``: the scenario's, with that ``timing:`` section (camelCase keys, checked by
        :func:`egressd.lab.timing.resolve_timing`) in every daemon's config."""
        self.dataplane = dataplane
        self.log_level = log_level
        self.mode = mode
        """``static``: the daemons' configs carry the groups. ``kubernetes``: the
        lab API server holds the EgressGatewayPolicy CRD and the policy, and
        the daemons select pods by their labels (``egressd lab label``)."""
        self.apiserver = apiserver
        """``embedded`` (the default) or ``kube`` (see :data:`APISERVERS`)."""
        self._tls: ssl.SSLContext | None = None

    @classmethod
    def attach(cls, state_dir: str | Path = DEFAULT_STATE_DIR) -> Lab:
        """The lab described by ``state_dir/state.json``."""
        state = StateDir(state_dir)
        data = state.read_json(state.state_file)
        if data is None:
            raise LabError(f"no lab state in {state.state_file} (is the lab up?)")
        return cls(
            str(data["prefix"]),
            state_dir,
            dataplane=str(data.get("dataplane", "kernel")),
            log_level=str(data.get("logLevel", "info")),
            mode=str(data.get("mode", "static")),
            apiserver=str(data.get("apiserver", "embedded")),
            timing=data.get("timing") if isinstance(data.get("timing"), dict) else None,
        )

    # --- names ------------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        """The namespace of a node, pod, ``outpost`` or ``switch``."""
        if host != SWITCH and host not in self.scenario.host_names():
            raise LabError(f"no host {host!r} in the lab (known: {', '.join(self.scenario.host_names())}, switch)")
        return f"{self.prefix}{host}"

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, in creation order."""
        return [self.netns(SWITCH), *(self.netns(h) for h in self.scenario.host_names())]

    @property
    def outpost_log(self) -> Path:
        """The outpost's JSON-lines record of requests and probes."""
        return self.state.logs / "outpost.jsonl"

    def config_file(self, node: str) -> Path:
        return self.state.config_dir / f"{node}.yaml"

    @property
    def mesh_key_file(self) -> Path:
        """The gateways' mesh key (what a Secret mounted into the DaemonSet holds)."""
        return self.state.config_dir / "mesh.key"

    @property
    def kube_dir(self) -> Path:
        """With kube-apiserver: its PKI, etcd's data, the kubeconfigs (removed by ``down``)."""
        return self.state.path / "kube"

    @property
    def kube_layout(self) -> Layout:
        """Where the lab's etcd and kube-apiserver listen (the control plane's address) and keep their files."""
        return Layout(self.scenario.api_address, API_PORT, ETCD_PORT, ETCD_PEER_PORT, self.kube_dir)

    @property
    def api_url(self) -> str:
        """The API server's URL as the nodes reach it."""
        return self.kube_layout.url if self.apiserver == "kube" else self.scenario.api_url

    @property
    def admin_kubeconfig(self) -> Path:
        """With kube-apiserver: a kubeconfig acting as admin (usable in the control plane's namespace)."""
        return self.kube_layout.admin_kubeconfig

    def kubeconfig_file(self, node: str) -> Path:
        """With kube-apiserver: the kubeconfig of the daemon of ``node`` (the ServiceAccount's token)."""
        return self.kube_dir / f"{node}.kubeconfig"

    def journal_file(self, node: str) -> Path:
        """With ``dataplane="record"``: the daemon's journal of data-plane operations."""
        return self.state.logs / f"{node}.journal.jsonl"

    # --- up -------------------------------------------------------------------------------

    def up(self, timeout: float = 30.0) -> None:
        """Build the topology, start the supervisor and wait until the API server is seeded
        and every process has started. On failure everything is removed again."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        self._check_free()
        try:
            self._prepare_state_dir()
            self._write_state("building")
            self._build()
            if self.apiserver == "kube":
                self._make_pki()
            self._write_configs()
            self._write_state("starting")
            self._start_supervisor(timeout=10.0)
            deadline = time.monotonic() + timeout
            if self.apiserver == "kube":
                self._wait_api(time.monotonic() + max(timeout, KUBE_READY_TIMEOUT))
                deadline = time.monotonic() + timeout  # the daemons get as long as with the embedded server
            else:
                self._wait_api(deadline)
            self.seed()
            if self.apiserver == "kube":
                self._daemon_kubeconfigs()
            self.state.gate(SEEDED_GATE).touch()
            self._wait_started(deadline)
            self._write_state("up")
        except BaseException:
            with contextlib.suppress(Exception):
                self.down()
            raise

    def _check_free(self) -> None:
        if self.apiserver == "kube":
            try:
                KubeBinaries.find()
            except ControlPlaneError as exc:
                raise LabError(f"--apiserver kube: {exc}") from exc
            if shutil.which("openssl") is None:
                raise LabError("--apiserver kube needs openssl (the lab's certificates)")
        data = self.state.read_json(self.state.state_file)
        if data is not None:
            raise LabError(
                f"{self.state.state_file} describes a lab (prefix {data.get('prefix')!r}); "
                f"run 'egressd lab down --state-dir {self.state.path}' first"
            )
        existing = sorted(set(self.namespaces) & netns_list())
        if existing:
            raise LabError(f"namespaces of prefix {self.prefix!r} exist already: {', '.join(existing)}")

    def _prepare_state_dir(self) -> None:
        for d in (self.state.path, self.state.logs, self.state.hold_dir, self.state.config_dir):
            d.mkdir(parents=True, exist_ok=True)
        for stale in (self.state.pids_file, self.state.supervisor_pid_file, self.state.gate(SEEDED_GATE)):
            stale.unlink(missing_ok=True)
        for hold in self.state.hold_dir.iterdir():
            hold.unlink()
        shutil.rmtree(self.kube_dir, ignore_errors=True)  # a control plane of an earlier lab
        self._tls = None

    def _write_state(self, phase: str) -> None:
        write_json_atomic(
            self.state.state_file,
            {
                "prefix": self.prefix,
                "phase": phase,
                "dataplane": self.dataplane,
                "logLevel": self.log_level,
                "mode": self.mode,
                "apiserver": self.apiserver,
                "timing": dict(self.scenario.timing),
                "supervisor": self.supervisor_pid(),
                "namespaces": self.namespaces,
                "processes": [p.to_json() for p in self.process_specs()],
            },
        )

    def process_specs(self) -> list[ProcessSpec]:
        """What the supervisor runs: the API server (with kube-apiserver: and etcd), the outpost,
        egressd on every node. The daemons stop first, etcd last."""
        sc = self.scenario
        out = sc.outpost
        specs = self._apiserver_specs()
        specs += [
            ProcessSpec(
                "outpost",
                (
                    *self._nsexec(out.name),
                    sys.executable,
                    "-m",
                    "egressd.lab.outpost",
                    "--allowed",
                    ",".join(out.allowed),
                    "--listen",
                    f"0.0.0.0:{out.http_port}",
                    "--udp",
                    f"0.0.0.0:{out.udp_port}",
                    "--log",
                    str(self.outpost_log),
                ),
            ),
        ]
        for node in sc.nodes:
            argv = daemon_command(
                self.config_file(node.name), dataplane=self.dataplane, journal=self.journal_file(node.name)
            )
            argv += ["--log-level", self.log_level]
            specs.append(
                ProcessSpec(node.name, (*self._nsexec(node.name), *argv), after=SEEDED_GATE, tier=1, stop_timeout=5.0)
            )
        return specs

    def _apiserver_specs(self) -> list[ProcessSpec]:
        ns = self._nsexec(self.scenario.api_node)
        if self.apiserver == "embedded":
            listen = f"{self.scenario.api_address}:{API_PORT}"
            return [ProcessSpec("apiserver", (*ns, *egressd_command(), "apiserver", "--listen", listen))]
        try:
            binaries = KubeBinaries.find()
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from exc
        layout = self.kube_layout
        return [
            ProcessSpec("etcd", (*ns, *etcd_argv(binaries, layout)), tier=-1, stop_timeout=10.0),
            ProcessSpec("apiserver", (*ns, *apiserver_argv(binaries, layout)), stop_timeout=10.0),
        ]

    def _nsexec(self, host: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns(host))

    # --- kube-apiserver -----------------------------------------------------------------------

    def _make_pki(self) -> None:
        """A certificate authority of this lab, and the admin's kubeconfig."""
        layout = self.kube_layout
        try:
            pki = make_pki(layout.pki.dir, [layout.address])
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from exc
        write_kubeconfig(
            layout.admin_kubeconfig, kubeconfig(layout.url, pki.ca_crt, cert=pki.admin_crt, key=pki.admin_key)
        )

    def _tls_context(self) -> ssl.SSLContext:
        """Trust the lab's CA and show the admin certificate (loaded once per lab)."""
        if self._tls is None:
            pki = self.kube_layout.pki
            try:
                context = ssl.create_default_context(cafile=str(pki.ca_crt))
                context.load_cert_chain(str(pki.admin_crt), str(pki.admin_key))
            except (OSError, ssl.SSLError) as exc:
                raise LabError(f"no admin credentials of the lab's kube-apiserver in {pki.dir}: {exc}") from exc
            self._tls = context
        return self._tls

    def _daemon_kubeconfigs(self) -> None:
        """A kubeconfig per node with a token of the DaemonSet's ServiceAccount (TokenRequest), as
        a DaemonSet's pods get one each: the daemons never act as admin."""
        namespace, name = SERVICE_ACCOUNT
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_SECONDS},
        }
        ca = self.kube_layout.pki.ca_crt
        for node in self.scenario.nodes:
            status, body = self.api("POST", path, request, timeout=10.0)
            if status != 201 or not isinstance(body, dict):
                raise LabError(f"no token for the ServiceAccount {namespace}/{name}: {status} {body}")
            token = str(body["status"]["token"])
            write_kubeconfig(
                self.kubeconfig_file(node.name), kubeconfig(self.api_url, ca, token=token, user=f"egressd-{node.name}")
            )

    # --- topology ---------------------------------------------------------------------------

    def _ip(self, host: str, *args: str) -> None:
        run_cmd(["ip", "-n", self.netns(host), *args])

    def _sysctl(self, host: str, values: Mapping[str, str]) -> None:
        run_cmd(
            ["ip", "netns", "exec", self.netns(host), "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]
        )

    def _build(self) -> None:
        sc = self.scenario
        net = Namespaces(self.prefix)
        for host in (SWITCH, *sc.host_names()):
            net.add(host)
        for node in sc.nodes:
            self._sysctl(node.name, NODE_SYSCTLS)
        for host in (sc.outpost.name, *(p.name for p in sc.pods)):
            self._sysctl(host, HOST_SYSCTLS)
        switch = self.netns(SWITCH)
        net.bridge(switch, BRIDGE, "stp_state", "0", "forward_delay", "0")
        hosts: list[tuple[str, str, str, bool]] = [(n.name, n.short, n.address, n.gateway) for n in sc.nodes]
        hosts.append((sc.outpost.name, sc.outpost.short, sc.outpost.address, False))
        prefixlen = 16
        for host, short, address, gateway in hosts:
            net.plug(self.netns(host), "eth0", switch, f"{short}-eth0", BRIDGE)
            net.address(self.netns(host), "eth0", f"{address}/{prefixlen}")
            if gateway:
                net.plug(self.netns(host), "net0", switch, f"{short}-net0", BRIDGE)
        for node in sc.nodes:
            self._pods(net, node)
        for host, _, _, _ in hosts:
            for other in sc.nodes:
                if other.name != host:
                    self._ip(host, "route", "add", other.pod_cidr, "via", other.address, "dev", "eth0")

    def _pods(self, net: Namespaces, node: NodeSpec) -> None:
        gateway = node.pod_gateway
        for pod in self.scenario.pods_of(node.name):
            host_if = pod.host_ifname
            net.wire(self.netns(node.name), host_if, self.netns(pod.name), "eth0")
            self._ip(node.name, "addr", "add", f"{gateway}/32", "dev", host_if)
            self._ip(node.name, "route", "add", f"{pod.ip}/32", "dev", host_if, "scope", "link", "src", gateway)
            self._ip(pod.name, "addr", "add", f"{pod.ip}/32", "dev", "eth0")
            self._ip(pod.name, "route", "add", "default", "via", gateway, "dev", "eth0", "onlink")

    def daemon_config(self, node: str) -> dict[str, Any]:
        """The config of the daemon of ``node``: the scenario's, with the kubeconfig of the
        node's ServiceAccount token when the lab runs kube-apiserver."""
        config = self.scenario.daemon_config(node, self.mode)
        config["mesh"] = self._mesh_section()
        if self.apiserver == "kube":
            config["kubernetes"] = {
                "namespace": EGRESSD_NAMESPACE,
                "access": "kubeconfig",
                "kubeconfig": str(self.kubeconfig_file(node)),
            }
        return config

    def _mesh_section(self) -> dict[str, Any]:
        """The gateways' mesh: the lab's key, and promises no longer than the
        lease duration of a fast profile (inequality M1)."""
        section: dict[str, Any] = {"keyFile": str(self.mesh_key_file)}
        lease = seconds(self.scenario.timing.get("leaseDuration", Timing().lease_duration))
        if lease is not None and lease < MeshTiming().promise_duration:
            section["promiseDuration"] = lease
        return section

    def _write_configs(self) -> None:
        # one cluster key for every gateway's mesh, readable by root alone
        fd = os.open(self.mesh_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        for node in self.scenario.nodes:
            config = self.daemon_config(node.name)
            parse_settings(config, source=f"lab config of {node.name}")  # fail here, not in 5 daemons
            text = f"# egressd on lab node {node.name} (generated by 'egressd lab up')\n"
            text += yaml.safe_dump(config, sort_keys=False)
            self.config_file(node.name).write_text(text, encoding="utf-8")

    # --- processes --------------------------------------------------------------------------

    def _start_supervisor(self, *, timeout: float) -> None:
        env = {**os.environ, ENV_LAB: self.prefix, "PYTHONUNBUFFERED": "1"}
        with self.state.log_file("supervisor").open("ab") as out:
            # setsid --fork: the supervisor is nobody's child here and outlives this process.
            subprocess.run(
                [
                    "setsid",
                    "--fork",
                    sys.executable,
                    "-m",
                    "egressd.lab.supervisor",
                    "--state-dir",
                    str(self.state.path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd="/",
                check=True,
                timeout=10,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.supervisor_pid()
            if pid is not None:
                return
            time.sleep(0.02)
        raise LabError(f"the supervisor did not start; see {self.state.log_file('supervisor')}")

    def supervisor_pid(self) -> int | None:
        try:
            pid = int(self.state.supervisor_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _wait_api(self, deadline: float) -> None:
        """Until the API server answers; kube-apiserver: until it is ready (``/readyz``) and has
        made the namespace ``default`` (its own start-up is done then)."""
        kube = self.apiserver == "kube"
        checks = ("/readyz", "/api/v1/namespaces/default") if kube else ("/healthz",)
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                for path in checks:
                    status, body = self.api("GET", path, timeout=2.0 if kube else 0.5)
                    if status != 200:
                        last = f"{path}: status {status} {str(body)[-200:]}"
                        break
                else:
                    return
            except (OSError, LabError, http.client.HTTPException) as exc:
                last = str(exc) or type(exc).__name__
            time.sleep(0.2 if kube else 0.05)
        logs = ", ".join(str(self.state.log_file(n)) for n in (("apiserver", "etcd") if kube else ("apiserver",)))
        raise LabError(f"the lab API server did not answer ({last}); see {logs}")

    def _wait_started(self, deadline: float) -> None:
        names = [p.name for p in self.process_specs()]
        while time.monotonic() < deadline:
            missing = [n for n in names if self.pid(n) is None]
            if not missing and self._outpost_ready():
                return
            time.sleep(0.05)
        raise LabError(f"not started in time: {', '.join(missing) or 'outpost'}; logs in {self.state.logs}")

    def _outpost_ready(self) -> bool:
        try:
            with self.outpost_log.open(encoding="utf-8") as f:
                return any('"kind":"start"' in line for line in f)
        except OSError:
            return False

    def processes(self) -> dict[str, dict[str, Any]]:
        """The supervisor's view: name -> pid (None while down), starts, lastExit."""
        data = self.state.read_json(self.state.pids_file) or {}
        procs = data.get("processes", {})
        return procs if isinstance(procs, dict) else {}

    def pid(self, name: str) -> int | None:
        """The pid of a running lab process (a node name for its daemon, ``apiserver``, ``outpost``)."""
        pid = self.processes().get(name, {}).get("pid")
        return pid if isinstance(pid, int) and pid_alive(pid) else None

    def wait_pid(self, name: str, *, other_than: int | None = None, timeout: float = 10.0) -> int:
        """Wait until ``name`` runs (with a pid other than ``other_than``: restarted); its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None and pid != other_than:
                return pid
            time.sleep(0.02)
        raise LabError(f"{name} did not (re)start within {timeout} s")

    def kill(self, node: str, sig: int = signal.SIGKILL, *, restart: bool = True) -> int:
        """Send ``sig`` to the daemon of ``node`` (or to ``apiserver``/``outpost``); the pid signalled.

        ``restart=False`` holds the process first, so the supervisor leaves it down
        once it exits (:meth:`release` lets it start again); ``restart=True``
        releases a hold first, so it is started again :data:`RESTART_SEC` after it exits."""
        pid = self.pid(node)
        if pid is None:
            raise LabError(f"{node}: not running")
        if restart:
            self.release(node)
        else:
            self.hold(node)
        os.kill(pid, sig)
        return pid

    def hold(self, node: str) -> None:
        """Do not restart the process of ``node`` when it exits (and do not start it while down)."""
        self.state.hold_dir.mkdir(parents=True, exist_ok=True)
        self.state.hold_file(node).touch()

    def release(self, node: str) -> None:
        """Undo :meth:`hold`: a process that is down starts again within 50 ms."""
        self.state.hold_file(node).unlink(missing_ok=True)

    def is_held(self, node: str) -> bool:
        return self.state.hold_file(node).exists()

    # --- handles for drills ------------------------------------------------------------------

    def exec(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the namespace of ``host``; ``kwargs`` go to :func:`subprocess.run`."""
        check = bool(kwargs.pop("check", False))
        return subprocess.run([*self._nsexec(host), *argv], check=check, **kwargs)

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the namespace of ``host`` (a prober...). It carries the lab's tag,
        so ``down`` ends it if the caller does not."""
        env = dict(kwargs.pop("env", None) or os.environ)
        env[ENV_LAB] = self.prefix
        return subprocess.Popen([*self._nsexec(host), *argv], env=env, **kwargs)

    def socket(self, host: str, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket in the namespace of ``host``, for probing from this process."""
        return netns_socket(self.netns(host), family, kind)

    def http(
        self, host: str, url: str, *, method: str = "GET", body: Any = None, timeout: float = 2.0
    ) -> tuple[int, bytes]:
        """One HTTP request from the namespace of ``host``."""
        return netns_http(self.netns(host), url, method=method, body=body, timeout=timeout)

    def api(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", timeout: float = 2.0
    ) -> tuple[int, Any]:
        """A request to the lab API server (from the control plane's namespace): (status, decoded JSON).
        With kube-apiserver: over TLS, as admin (client certificate)."""
        status, raw = netns_http(
            self.netns(self.scenario.api_node),
            self.api_url + path,
            method=method,
            body=body,
            content_type=content_type,
            timeout=timeout,
            tls=self._tls_context() if self.apiserver == "kube" else None,
        )
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def link(self, node: str, up: bool) -> None:
        """Pull (``up=False``) or plug back the cables of ``node``: its ports on the switch go
        down, so it loses carrier and cannot reach anyone, while its own addresses and routes stay."""
        for port in self._ports(node):
            self._ip(SWITCH, "link", "set", port, "up" if up else "down")

    def _ports(self, host: str) -> list[str]:
        if host == self.scenario.outpost.name:
            return [f"{self.scenario.outpost.short}-eth0"]
        node = self.scenario.node(host)
        return [f"{node.short}-eth0", *([f"{node.short}-net0"] if node.gateway else [])]

    def block_api(self, node: str, blocked: bool) -> None:
        """Partition ``node`` from the API server (both directions dropped, nothing else)."""
        ns = self.netns(node)
        if not blocked:
            run_cmd(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", PARTITION_TABLE], check=False)
            return
        api = self.scenario.api_address
        rules = f"""
table inet {PARTITION_TABLE}
delete table inet {PARTITION_TABLE}
table inet {PARTITION_TABLE} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        ip daddr {api} tcp dport {API_PORT} drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {api} tcp sport {API_PORT} drop
    }}
}}
"""
        run_cmd(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=rules)

    def peers(self, node: str) -> list[str]:
        """The other gateway candidates of ``node`` (every gateway of the scenario but ``node``)."""
        return [g.name for g in self.scenario.gateways if g.name != node]

    def block_peers(self, node: str, blocked: bool, peers: Sequence[str] | None = None) -> None:
        """Partition ``node`` from its peers (default :meth:`peers`): every packet between its node
        address and theirs dropped in both directions, in ``node``'s namespace. The API server, the
        outpost, the workers and the pods are still reached, and ARP (not IP) is untouched."""
        ns = self.netns(node)
        if not blocked:
            run_cmd(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", PEER_TABLE], check=False)
            return
        others = [self.scenario.node(p).address for p in (self.peers(node) if peers is None else peers)]
        if not others:
            raise LabError(f"{node} has no peers to be cut off from")
        addresses = ", ".join(others)
        rules = f"""
table inet {PEER_TABLE}
delete table inet {PEER_TABLE}
table inet {PEER_TABLE} {{
    chain output {{
        type filter hook output priority 0; policy accept;
        ip daddr {{ {addresses} }} drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        ip saddr {{ {addresses} }} drop
    }}
}}
"""
        run_cmd(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=rules)

    def partition_gateways(self, partitioned: bool) -> None:
        """Every gateway cut off from every other (:meth:`block_peers` on each), or joined again."""
        for g in self.scenario.gateways:
            self.block_peers(g.name, blocked=partitioned)

    def isolate(self, node: str, isolated: bool) -> None:
        """``node`` cut off from the API server and its peers, its data path intact (pods and other
        nodes reach it, it reaches the outpost)."""
        if isolated:
            self.block_api(node, blocked=True)
            self.block_peers(node, blocked=True)
        else:
            self.block_peers(node, blocked=False)
            self.block_api(node, blocked=False)

    def api_pause(self, paused: bool) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) the API server: an API outage for every node.
        Connections are accepted by the kernel but nothing is answered."""
        pid = self.pid("apiserver")
        if pid is None:
            raise LabError("the API server is not running")
        os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)

    # --- API objects ------------------------------------------------------------------------

    def seed(self) -> None:
        """Create the egressd namespace, the Node and the Pod objects (existing ones
        are kept); in Kubernetes mode also the policy CRD and the policy. With
        kube-apiserver also the ServiceAccount and RBAC of deploy/rbac.yaml."""
        sc = self.scenario
        for namespace in (EGRESSD_NAMESPACE, "default"):
            self._create(
                "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            )
        if self.apiserver == "kube":
            for obj in rbac_objects():
                self._apply(obj)
        if self.mode == "kubernetes":
            crd = policy_crd()
            self._create(CRD_PATH, crd)
            if self.apiserver == "kube":
                self._wait_established(str(crd["metadata"]["name"]), timeout=30.0)
            for group in sc.groups:
                self._create(POLICY_PATH, sc.policy_object(group.name))
        for node in sc.nodes:
            self._create("/api/v1/nodes", sc.node_object(node.name))
        for pod in sc.pods:
            base = f"/api/v1/namespaces/{pod.namespace}/pods"
            self._create(base, sc.pod_object(pod.name))
            status, body = self.api(
                "PATCH",
                f"{base}/{pod.name}/status",
                {"status": sc.pod_status(pod.name)},
                content_type="application/merge-patch+json",
            )
            if status != 200:
                raise LabError(f"status of pod {pod.name}: {status} {body}")

    def label_pod(self, pod: str, labels: Mapping[str, str | None]) -> dict[str, str]:
        """Set (or, for None, remove) labels of a pod's Pod object, as ``kubectl
        label`` does; returns the labels it has now."""
        spec = self.scenario.pod(pod)
        path = f"/api/v1/namespaces/{spec.namespace}/pods/{spec.name}"
        status, body = self.api(
            "PATCH", path, {"metadata": {"labels": dict(labels)}}, content_type="application/merge-patch+json"
        )
        if status != 200 or not isinstance(body, dict):
            raise LabError(f"labelling pod {pod}: {status} {body}")
        return dict((body.get("metadata") or {}).get("labels") or {})

    def policy(self, name: str) -> dict[str, Any]:
        """An EgressGatewayPolicy as the API server holds it (status included)."""
        status, body = self.api("GET", f"{POLICY_PATH}/{name}")
        if status != 200 or not isinstance(body, dict):
            raise LabError(f"reading policy {name}: {status} {body}")
        return body

    def _create(self, path: str, obj: Mapping[str, Any]) -> None:
        status, body = self.api("POST", path, obj, timeout=10.0 if self.apiserver == "kube" else 2.0)
        if status not in (200, 201, 409):
            raise LabError(f"POST {path} ({obj['metadata']['name']}): {status} {body}")

    def _apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply (kube-apiserver), as ``kubectl apply --server-side`` would."""
        try:
            path = object_path(dict(obj))
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from exc
        status, body = self.api(
            "PATCH",
            f"{path}?fieldManager={FIELD_MANAGER}&force=true",
            obj,
            content_type="application/apply-patch+yaml",
            timeout=10.0,
        )
        if status not in (200, 201):
            raise LabError(f"apply {obj.get('kind')} {obj['metadata']['name']}: {status} {body}")

    def _wait_established(self, crd: str, *, timeout: float) -> None:
        """Until kube-apiserver serves the custom resource (condition ``Established``)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            status, body = self.api("GET", f"{CRD_PATH}/{crd}", timeout=5.0)
            conditions = (body.get("status") or {}).get("conditions") or [] if isinstance(body, dict) else []
            if status == 200 and any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                return
            last = conditions or f"{status} {body}"
            time.sleep(0.1)
        raise LabError(f"the CRD {crd} is not Established after {timeout:g} s: {last}")

    def leases(self, *, timeout: float = 1.0) -> list[LeaseRecord]:
        """egressd's leases, as the API server holds them."""
        status, body = self.api(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{EGRESSD_NAMESPACE}/leases", timeout=timeout
        )
        if status != 200 or not isinstance(body, dict):
            raise LabError(f"listing leases: {status} {body}")
        records = []
        for item in body.get("items") or []:
            meta = item.get("metadata") if isinstance(item, dict) else None
            if isinstance(meta, dict) and is_node_lease(str(meta.get("name", ""))):
                continue  # a gateway's liveness, not a claim
            with contextlib.suppress(MalformedLease):
                records.append(record_from_object(item))
        return records

    def carriers(self, ip: str) -> list[str]:
        """The gateways that have ``ip`` on an interface right now (more than one is the failure drills look for)."""
        found = []
        for node in self.scenario.gateways:
            out = run_cmd(["ip", "-n", self.netns(node.name), "-o", "-4", "addr", "show", "to", ip], check=False)
            if out.strip():
                found.append(node.name)
        return found

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Nodes (namespace, daemon pid and state) and the owner of each egress IP."""
        present = netns_list()
        procs = self.processes()
        sup = self.supervisor_pid()

        def proc(name: str) -> dict[str, Any]:
            info = procs.get(name, {})
            pid = self.pid(name)
            if pid is not None:
                state = "frozen" if proc_state(pid) == "T" else "running"
            elif self.is_held(name):
                state = "held"
            else:
                state = "down"
            return {"pid": pid, "state": state, "held": self.is_held(name), "starts": info.get("starts", 0)}

        nodes = []
        for node in self.scenario.nodes:
            role = "control-plane" if node.control_plane else "gateway" if node.gateway else "worker"
            nodes.append(
                {"name": node.name, "role": role, "address": node.address, "netns": self.netns(node.name) in present}
                | proc(node.name)
            )
        ips: list[dict[str, Any]] = []
        api_error = None
        records: dict[str, LeaseRecord] = {}
        if self.netns(self.scenario.api_node) in present:
            try:
                records = {r.egress_ip: r for r in self.leases()}
            except (OSError, LabError, http.client.HTTPException) as exc:
                api_error = str(exc) or type(exc).__name__
        else:
            api_error = "no control-plane namespace"
        for ip in self.scenario.egress_ips:
            rec = records.get(ip)
            ips.append(
                {
                    "ip": ip,
                    "holder": (rec.holder or None) if rec else None,
                    "epoch": rec.transitions if rec else None,
                    "holderAddress": rec.holder_address if rec else None,
                    "on": self.carriers(ip) if present else [],
                }
            )
        return {
            "prefix": self.prefix,
            "stateDir": str(self.state.path),
            "supervisor": sup,
            "namespaces": {ns: ns in present for ns in self.namespaces},
            "nodes": nodes,
            "apiserver": self.apiserver,
            "processes": {name: proc(name) for name in self._lab_process_names()},
            "egressIPs": ips,
            "apiError": api_error,
        }

    def _lab_process_names(self) -> tuple[str, ...]:
        return ("apiserver", "etcd", "outpost") if self.apiserver == "kube" else ("apiserver", "outpost")

    # --- down -------------------------------------------------------------------------------

    def down(self, *, grace: float = 10.0) -> list[str]:
        """Remove the lab: processes, namespaces, state (the logs stay). Idempotent, and works
        without a state file (a crashed ``up``): namespaces are found by name, processes by
        their tag and by the namespaces they are in. What was removed, for the user."""
        removed: list[str] = []
        sup = self.supervisor_pid()
        if sup is not None and sup in lab_processes(self.prefix):
            # The orderly way first: daemons stop before the API server and free their leases,
            # so thaw whatever a drill froze (the API server above all), plug cables back in
            # and lift partitions.
            for pid in lab_processes(self.prefix):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            for node in self.scenario.nodes:
                with contextlib.suppress(LabError):
                    self.link(node.name, up=True)
                    self.block_api(node.name, blocked=False)
                    self.block_peers(node.name, blocked=False)
            os.kill(sup, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and pid_alive(sup):
                time.sleep(0.05)
            removed.append(f"supervisor {sup}")
        # Whatever is left: the supervisor first, so that it restarts nothing.
        tagged = sorted(lab_processes(self.prefix), key=lambda p: p != sup)
        removed += [f"process {p}" for p in kill_all(tagged)]
        removed += remove(self.namespaces)
        for f in (
            self.state.state_file,
            self.state.pids_file,
            self.state.supervisor_pid_file,
            self.state.gate(SEEDED_GATE),
        ):
            f.unlink(missing_ok=True)
        for d in (self.state.hold_dir, self.state.config_dir):
            shutil.rmtree(d, ignore_errors=True)
        if self.kube_dir.exists():  # kube-apiserver's PKI, etcd's data, the daemons' tokens
            shutil.rmtree(self.kube_dir, ignore_errors=True)
            removed.append(f"control plane state {self.kube_dir}")
        return removed
