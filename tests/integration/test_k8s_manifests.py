"""The Kubernetes manifests (deploy/k8s/): each overlay and the example client rendered by kustomize
(``kubectl kustomize``: Debian 12's kubernetes-client 1.20 or a newer kubectl; else a standalone
``kustomize build``), every rendered object validated against the Kubernetes OpenAPI schemas of
Kubernetes ``K8S_VERSION`` with kubernetes-validate (strict: unknown fields are errors), and what a
cluster admin relies on checked: the device plugin's resource name and mounts, oriond's host
namespaces, the client Pod's request, the labeller's RBAC, the controller's store per mode, the
scheduler extender's configuration. No cluster is needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (comes with the kubernetes package of the k8s/test extra)")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
IMAGES = ROOT / "deploy" / "images"
K8S_VERSION = "1.30.0"
"""the Kubernetes version whose schemas the objects are validated against"""
RESOURCE = "virtaitech.com/gpu"
NS = "orion"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
TARGETS = ["overlays/shm-single-host", "overlays/tcp-pool", "example-client"]


def _renderer() -> list[str] | None:
    kubectl = os.environ.get("ORION_KUBECTL") or shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    return None


@pytest.fixture(scope="module")
def render() -> Any:
    cmd = _renderer()
    if cmd is None:
        pytest.skip("no kustomize renderer: install Debian's kubernetes-client (apt-get install kubernetes-client, "
                    "as scripts/install-test-deps.sh does) or a kubectl/kustomize binary on PATH")
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(target: str) -> list[dict[str, Any]]:
        if target not in cache:
            r = subprocess.run([*cmd, str(K8S / target)], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"{' '.join(cmd)} {target}: {r.stderr}"
            # kubectl 1.20 leaves an empty document where a resource was deleted ($patch: delete)
            cache[target] = [d for d in yaml.safe_load_all(r.stdout) if d]
        return cache[target]

    return _render


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} rendered, expected 1 ({[o['kind'] for o in objs]})"
    return hits[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod_spec(obj)
    hits = [c for c in spec.get("containers", []) + spec.get("initContainers", []) if c["name"] == name]
    assert len(hits) == 1, f"{obj['metadata']['name']}: container {name}"
    return hits[0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def host_mounts(obj: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """container mount path -> host path, for the container's hostPath volumes"""
    vols = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
    return {m["mountPath"]: vols[m["name"]]["hostPath"]["path"]
            for m in c.get("volumeMounts", []) if "hostPath" in vols[m["name"]]}


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Pod")]


# -- rendering and schema validation ----------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_the_kubernetes_schemas(render: Any, target: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    objs = render(target)
    assert objs
    for o in objs:
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as e:  # say which object, not only the schema path
            pytest.fail(f"{target}: {o['kind']}/{o['metadata']['name']} is not valid Kubernetes {K8S_VERSION}: "
                        f"{e.message} at {'/'.join(map(str, e.path))}")
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"].get("namespace") == NS, f"{o['kind']}/{o['metadata']['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_images_are_ours_at_this_version_or_pinned(render: Any, target: str) -> None:
    built = {p.name.removesuffix(".Dockerfile") for p in IMAGES.glob("*.Dockerfile")}
    for o in workloads(render(target)):
        spec = pod_spec(o)
        for c in spec["containers"] + spec.get("initContainers", []):
            name, _, tag = c["image"].rpartition(":")
            assert name and tag, f"{o['metadata']['name']}/{c['name']}: {c['image']} has no tag"
            if name.startswith("orion-virt/"):
                assert tag == VERSION, c["image"]
                assert name.removeprefix("orion-virt/") in built, f"{c['image']}: no deploy/images Dockerfile"
            else:
                assert name == "registry.k8s.io/etcd", c["image"]


@pytest.mark.parametrize("target", TARGETS[:2])
def test_service_accounts_exist(render: Any, target: str) -> None:
    objs = render(target)
    accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    for o in workloads(objs):
        assert pod_spec(o).get("serviceAccountName", "default") in accounts, o["metadata"]["name"]


# -- what the admin relies on -----------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS[:2])
def test_device_plugin(render: Any, target: str) -> None:
    ds = find(render(target), "DaemonSet", "orion-device-plugin")
    c = container(ds, "device-plugin")
    args = c["args"]
    assert args[args.index("--resource") + 1] == RESOURCE
    assert args[args.index("--plugin-dir") + 1] == "/var/lib/kubelet/device-plugins"
    mounts = host_mounts(ds, c)
    for path in ("/var/lib/kubelet/device-plugins", "/dev/shm", "/usr/lib/orion", "/var/lib/orion", "/etc/orion"):
        assert mounts.get(path) == path, f"{path} is not the host's: {mounts}"
    assert pod_spec(ds)["hostIPC"] and pod_spec(ds)["hostPID"]
    # the init container writes only the host's /usr/lib/orion (not its ld.so.conf or libcuda)
    init = container(ds, "install-client")
    assert init["command"][:1] == ["install-client"] and "--root" in init["command"]
    assert set(host_mounts(ds, init).values()) == {"/usr/lib/orion"}


@pytest.mark.parametrize("target", TARGETS[:2])
def test_oriond_is_privileged_on_the_hosts_namespaces(render: Any, target: str) -> None:
    ds = find(render(target), "DaemonSet", "oriond")
    spec = pod_spec(ds)
    assert spec["hostIPC"] is True and spec["hostNetwork"] is True and spec["hostPID"] is True
    assert spec["runtimeClassName"] == "nvidia"
    c = container(ds, "oriond")
    assert c["securityContext"]["privileged"] is True
    mounts = host_mounts(ds, c)
    assert mounts["/dev/shm"] == "/dev/shm"
    assert mounts["/var/lib/kubelet/device-plugins"] == "/var/lib/kubelet/device-plugins"
    e = env(c)
    assert {"BIND_ADDR", "PORT", "VGPU", "ORION_CONTROLLER"} <= set(e)
    assert e["PORT"] == "9960"
    assert e["ORION_SERVER_CONF"].startswith("/run/orion/")  # not the host's /etc/orion
    # oriond and the device plugin ask the same controller
    plugin = env(container(find(render(target), "DaemonSet", "orion-device-plugin"), "device-plugin"))
    assert plugin["ORION_CONTROLLER"] == e["ORION_CONTROLLER"]


def test_client_pod(render: Any) -> None:
    pod = find(render("example-client"), "Pod", "orion-device-query")
    assert pod["spec"]["hostIPC"] is True  # else shared memory falls back to TCP (the seeds' note)
    c = container(pod, "device-query")
    assert c["resources"]["limits"] == {RESOURCE: 1}
    assert "deviceQuery" in " ".join(c["command"])
    assert (ROOT / "examples" / "deviceQuery.py").is_file()
    assert env(c)["ORION_GMEM"] == "4096"


@pytest.mark.parametrize("target", TARGETS[:2])
def test_labeller_may_get_and_patch_nodes_only(render: Any, target: str) -> None:
    objs = render(target)
    role = find(objs, "ClusterRole", "orion-node-labeller")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    binding = find(objs, "ClusterRoleBinding", "orion-node-labeller")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "orion-node-labeller"}
    ds = find(objs, "DaemonSet", "orion-node-labeller")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod_spec(ds)["serviceAccountName"],
                                    "namespace": NS}]
    c = container(ds, "labeller")
    assert c["command"] == ["orion-node-labeller"]
    assert env(c)["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert pod_spec(ds)["hostNetwork"] is True  # the node's interfaces
    # nothing else in the manifests may touch the API server
    for o in objs:
        if o["kind"] in ("ClusterRole", "Role"):
            assert o["metadata"]["name"] == "orion-node-labeller"
    extender_sa = find(objs, "ServiceAccount", "orion-scheduler-extender")
    assert extender_sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", TARGETS[:2])
def test_controller_service_portal_and_metrics(render: Any, target: str) -> None:
    objs = render(target)
    svc = find(objs, "Service", "orion-controller")
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(9123, "http")]
    assert svc["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    ctl = find(objs, "Deployment", "orion-controller")
    assert ctl["spec"]["replicas"] == 1 and ctl["spec"]["strategy"]["type"] == "Recreate"
    assert svc["spec"]["selector"].items() <= ctl["spec"]["template"]["metadata"]["labels"].items()
    c = container(ctl, "controller")
    assert c["args"][0] == "start" and c["ports"] == [{"name": "http", "containerPort": 9123}]
    kv = c["args"][c["args"].index("--kv") + 1]
    if "shm" in target:  # the seeds' one-host mode: on the node, embedded SQLite in the host's /var/lib/orion
        assert kv == "sqlite:////var/lib/orion/controller.db"
        assert pod_spec(ctl)["hostNetwork"] is True  # oriond's ORION_CONTROLLER=127.0.0.1:9123
        assert pod_spec(ctl)["nodeSelector"] == pod_spec(find(objs, "DaemonSet", "oriond"))["nodeSelector"]
        assert host_mounts(ctl, c) == {"/var/lib/orion": "/var/lib/orion", "/etc/orion": "/etc/orion"}
        # client containers are not on the host network: they get the node's address
        plugin = container(find(objs, "DaemonSet", "orion-device-plugin"), "device-plugin")
        assert plugin["args"][plugin["args"].index("--client-controller") + 1] == "$(NODE_IP):9123"
        assert env(plugin)["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    else:  # the pool: etcd
        assert kv == "http://orion-etcd:2379"
        etcd = find(objs, "Service", "orion-etcd")
        assert 2379 in [p["port"] for p in etcd["spec"]["ports"]]
        find(objs, "StatefulSet", "orion-etcd")
        vols = {v["name"]: v for v in pod_spec(ctl)["volumes"]}
        assert vols["keys"] == {"name": "keys", "secret": {"secretName": "orion-keys", "defaultMode": 0o400}}


def test_tcp_pool_oriond_binds_the_nodes_data_plane_address(render: Any) -> None:
    ds = find(render("overlays/tcp-pool"), "DaemonSet", "oriond")
    e = env(container(ds, "oriond"))
    assert e["BIND_NET"] == "eth0"  # the interface the labeller's ORION_BIND_ADDR comes from
    labeller = env(container(find(render("overlays/tcp-pool"), "DaemonSet", "orion-node-labeller"), "labeller"))
    assert labeller["ORION_BIND_NET"] == e["BIND_NET"]
    assert e["ORION_CONTROLLER"] == "orion-controller.orion.svc.cluster.local:9123"
    init = container(ds, "install-keys")
    assert host_mounts(ds, init) == {"/etc/orion": "/etc/orion"}


@pytest.mark.parametrize("target", TARGETS[:2])
def test_scheduler_extender_configuration(render: Any, target: str) -> None:
    objs = render(target)
    cm = find(objs, "ConfigMap", "orion-scheduler-config")
    conf = yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"])
    assert conf["apiVersion"] == "kubescheduler.config.k8s.io/v1" and conf["kind"] == "KubeSchedulerConfiguration"
    assert "orion-scheduler" in [p["schedulerName"] for p in conf["profiles"]]  # the seeds' schedulerName
    (ext,) = conf["extenders"]
    svc = find(objs, "Service", "orion-scheduler-extender")
    port = svc["spec"]["ports"][0]["port"]
    assert ext["urlPrefix"] == f"http://orion-scheduler-extender.{NS}.svc.cluster.local:{port}/"
    assert (ext["filterVerb"], ext["prioritizeVerb"], ext["nodeCacheCapable"]) == ("filter", "prioritize", False)
    assert ext["managedResources"] == [{"name": RESOURCE, "ignoredByScheduler": False}]
    dep = find(objs, "Deployment", "orion-scheduler-extender")
    c = container(dep, "extender")
    assert c["command"] == ["orion-scheduler-extender"]
    assert c["args"][c["args"].index("--port") + 1] == str(port)
    assert c["args"][c["args"].index("--resource") + 1] == RESOURCE
    assert env(c)["ORION_CONTROLLER"] == "orion-controller:9123"
