"""The real control plane the kube_apiserver tests run on: what it is built
from, and that it is the secured server a cluster runs (TLS only, client
certificates, Node,RBAC, ServiceAccount tokens)."""

from __future__ import annotations

import http.client
import re
import ssl
from pathlib import Path

import pytest

from egressd.lab.kubecontrol import (
    ControlPlane,
    ControlPlaneError,
    KubeApi,
    KubeBinaries,
    Layout,
    Pki,
    apiserver_argv,
    object_path,
    versions,
)


def test_the_versions_file_names_both_releases() -> None:
    v = versions()
    assert re.fullmatch(r"v1\.\d+\.\d+", v["KUBERNETES"])
    assert re.fullmatch(r"v3\.\d+\.\d+", v["ETCD"])


def test_missing_programs_say_how_to_build_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESSD_KUBE_BIN", str(tmp_path))
    with pytest.raises(ControlPlaneError, match=r"kube-apiserver, etcd, kubectl not built in .*scripts/build-kube"):
        KubeBinaries.find()


def test_pki_files_are_named_after_their_attribute(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    assert pki.apiserver_etcd_client_key == tmp_path / "apiserver-etcd-client.key"
    assert pki.sa_pub == tmp_path / "sa.pub"
    with pytest.raises(AttributeError):
        _ = pki.nothing


def test_the_apiserver_runs_with_rbac_and_token_issuance(tmp_path: Path) -> None:
    bins = KubeBinaries(tmp_path / "a", tmp_path / "e", tmp_path / "k")
    argv = apiserver_argv(bins, Layout("10.0.0.2", 6443, 2379, 2380, tmp_path))
    assert "--authorization-mode=Node,RBAC" in argv
    assert "--bind-address=10.0.0.2" in argv
    assert any(a.startswith("--service-account-signing-key-file=") for a in argv)
    assert not any(a.startswith(("--insecure", "--anonymous-auth=true", "--token-auth-file")) for a in argv)


def test_object_paths() -> None:
    assert object_path({"kind": "Lease", "metadata": {"name": "a", "namespace": "n"}}) == (
        "/apis/coordination.k8s.io/v1/namespaces/n/leases/a"
    )
    assert object_path({"kind": "Node", "metadata": {"name": "w"}}) == "/api/v1/nodes/w"
    with pytest.raises(ControlPlaneError, match="Widget"):
        object_path({"kind": "Widget", "metadata": {"name": "w"}})


@pytest.mark.kube_apiserver
def test_it_reports_the_release_it_was_built_from(kube_control_plane: ControlPlane) -> None:
    status, body = kube_control_plane.api().request("GET", "/version")
    assert status == 200
    assert body["gitVersion"] == versions()["KUBERNETES"]
    done = kube_control_plane.kubectl("version", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert versions()["KUBERNETES"] in done.stdout


@pytest.mark.kube_apiserver
def test_it_speaks_only_tls_and_knows_nobody_without_credentials(kube_control_plane: ControlPlane) -> None:
    layout = kube_control_plane.layout
    plain = http.client.HTTPConnection(layout.address, layout.api_port, timeout=5)
    try:
        plain.request("GET", "/api/v1/nodes")
        assert plain.getresponse().status == 400  # Go's answer to plain HTTP on a TLS port
    finally:
        plain.close()
    anonymous = KubeApi(kube_control_plane.url, kube_control_plane.ca_file)
    status, _ = anonymous.request("GET", "/api/v1/nodes")
    assert status in (401, 403)
    untrusted = KubeApi(kube_control_plane.url, Path(ssl.get_default_verify_paths().cafile or "/nonexistent"))
    with pytest.raises(ssl.SSLError):
        untrusted.request("GET", "/version")


@pytest.mark.kube_apiserver
def test_a_serviceaccount_token_gets_only_what_rbac_grants(kube_control_plane: ControlPlane) -> None:
    api = kube_control_plane.api()
    ns = "kubecontrol-rbac"
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": ns}})
    api.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "leases", "namespace": ns},
        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list"]}],
    })  # fmt: skip
    api.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "leases", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    })  # fmt: skip
    with kube_control_plane.as_token(ns, "reader") as (reader, kubeconfig):
        status, body = reader.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases")
        assert status == 200, body
        status, body = reader.request("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases")
        assert status == 403
        assert f"system:serviceaccount:{ns}:reader" in body["message"]
        done = kube_control_plane.kubectl("auth", "whoami", "-o", "name", kubeconfig_file=kubeconfig)
        assert done.returncode == 0, done.stderr


@pytest.mark.kube_apiserver
def test_a_paused_apiserver_accepts_connections_and_answers_none(kube_control_plane: ControlPlane) -> None:
    api = kube_control_plane.api()
    kube_control_plane.pause()
    try:
        with pytest.raises(TimeoutError):
            api.request("GET", "/version", timeout=0.5)
    finally:
        kube_control_plane.resume()
    assert api.request("GET", "/version")[0] == 200


@pytest.mark.kube_apiserver
def test_a_namespace_goes_with_what_is_in_it_though_no_controller_runs(kube_control_plane: ControlPlane) -> None:
    api = kube_control_plane.api()
    ns = "kubecontrol-gone"
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns},
               "spec": {"nodeName": "somewhere", "containers": [{"name": "c", "image": "x"}]}})  # fmt: skip
    api.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": ns}})
    api.delete_namespace(ns)
    assert api.request("GET", f"/api/v1/namespaces/{ns}")[0] == 404
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})  # and it can be made again
    assert api.request("GET", f"/api/v1/namespaces/{ns}/pods/p")[0] == 404
    api.delete_namespace(ns)
