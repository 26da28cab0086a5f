"""The Helm chart installs what `kubectl apply -k manifests/` installs, and refuses what the
agent would refuse.

Both install paths are kept by hand and compared here object by object: the chart rendered
by the real helm (scripts/fetch-helm) against manifests/ rendered by the real `kubectl
kustomize`, with the default values and with each optional piece (recyclePods, the
ClusterTrustBundle right) against its kustomize component. Only `managed-by` may differ
(kustomize vs Helm), and the policy is compared as the agent reads it (the kustomize copy
carries comments). Schema validation of every rendered object is scripts/validate-manifests.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.errors import PolicyError
from agent.core.policy import parse_policy

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ca-trust-agent"
HELM = ROOT / ".lab-cache" / "helm-v4.1.4" / "helm"
KUBECTL = Path(sys.executable).parent / "kubectl"
NS = "ca-trust-agent"
Obj = dict[str, Any]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail("helm is missing: scripts/bootstrap fetches it (scripts/fetch-helm)")
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=60
    )


def chart(*values: str, files: tuple[Path, ...] = ()) -> list[Obj]:
    sets = [a for v in values for a in ("--set-json", v)]
    extra = [a for f in files for a in ("-f", str(f))]
    out = helm("template", "ca-trust-agent", str(CHART), "-n", NS, *sets, *extra)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kustomize(tmp_path: Path, *components: str) -> list[Obj]:
    """manifests/, plus components through an overlay as the README tells operators."""
    target = ROOT / "manifests"
    if components:
        target = tmp_path / "overlay"
        target.mkdir()
        (target / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    # kustomize wants relative paths between directories
                    "resources": [os.path.relpath(ROOT / "manifests", target)],
                    "components": [
                        os.path.relpath(ROOT / "manifests/components" / c, target)
                        for c in components
                    ],
                }
            )
        )
    out = subprocess.run(
        [str(KUBECTL), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def normalized(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    """By (kind, name); managed-by dropped, the policy parsed as the agent parses it."""
    out = {}
    for original in objects:
        obj = copy.deepcopy(original)
        for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata")):
            if meta and "labels" in meta:
                meta["labels"].pop("app.kubernetes.io/managed-by", None)
        if obj["kind"] == "ConfigMap":
            obj["data"]["policy.yaml"] = parse_policy(obj["data"]["policy.yaml"])
        out[(obj["kind"], obj["metadata"]["name"])] = obj
    return out


def test_the_chart_installs_the_same_objects_as_kustomize(tmp_path: Path) -> None:
    helm_objects = normalized(chart('namespace={"create":true}'))
    kustomize_objects = normalized(kustomize(tmp_path))
    assert sorted(helm_objects) == sorted(kustomize_objects)
    for key, expected in kustomize_objects.items():
        assert helm_objects[key] == expected, f"{key} differs between the chart and manifests/"


def test_by_default_helm_leaves_the_namespace_to_the_operator(tmp_path: Path) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in chart()}
    assert kinds == {
        (o["kind"], o["metadata"]["name"]) for o in kustomize(tmp_path) if o["kind"] != "Namespace"
    }


def test_the_managed_by_label_says_who_applied_it(tmp_path: Path) -> None:
    helm_ds = next(o for o in chart() if o["kind"] == "DaemonSet")
    kustomize_ds = next(o for o in kustomize(tmp_path) if o["kind"] == "DaemonSet")
    assert helm_ds["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert kustomize_ds["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize"


def cluster_role(objects: list[Obj]) -> Obj:
    return next(o for o in objects if o["kind"] == "ClusterRole")


def test_recycle_pods_turns_on_the_policy_key_and_the_eviction_right(tmp_path: Path) -> None:
    objects = chart(files=(CHART / "ci/recycle-pods-values.yaml",))
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    assert parse_policy(config["data"]["policy.yaml"]).recycle_pods is True
    assert (
        cluster_role(objects)["rules"] == cluster_role(kustomize(tmp_path, "recycle-pods"))["rules"]
    )


def test_a_cluster_trust_bundle_source_adds_exactly_the_component_s_right(tmp_path: Path) -> None:
    objects = chart(files=(CHART / "ci/ca-sources-values.yaml",))
    expected = cluster_role(kustomize(tmp_path, "cluster-trust-bundles"))["rules"]
    assert cluster_role(objects)["rules"] == expected
    assert {
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["clustertrustbundles"],
        "verbs": ["list", "watch"],
    } in expected


def test_a_config_map_source_needs_no_new_right(tmp_path: Path) -> None:
    source = {"host": "harbor.corp:443", "caFrom": {"configMap": {"name": "ca", "key": "ca.crt"}}}
    objects = chart("policy.registries=" + json.dumps([source]))
    assert cluster_role(objects)["rules"] == cluster_role(kustomize(tmp_path))["rules"]


@pytest.mark.parametrize(
    "values", sorted((CHART / "ci").glob("*-values.yaml")), ids=lambda p: p.name
)
def test_every_documented_combination_renders_a_policy_the_agent_accepts(values: Path) -> None:
    config = next(o for o in chart(files=(values,)) if o["kind"] == "ConfigMap")
    wanted = yaml.safe_load(values.read_text()).get("policy", {})
    policy = parse_policy(config["data"]["policy.yaml"])
    assert len(policy.registries) == len(wanted.get("registries", []))


def test_the_values_port_moves_every_place_that_names_it() -> None:
    objects = chart(files=(CHART / "ci/scheduling-values.yaml",))
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 19402
    assert container["args"][-2:] == ["--metrics-address", "0.0.0.0:19402"]
    service = next(o for o in objects if o["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 19402
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "19402"
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.corp.example:3128"} in container["env"]
    assert "tolerations" not in ds["spec"]["template"]["spec"]
    assert "priorityClassName" not in ds["spec"]["template"]["spec"]


def test_the_prometheus_rule_carries_the_tested_alert_file() -> None:
    objects = chart(files=(CHART / "ci/monitoring-values.yaml",))
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files/alerts.yaml").read_text())
    assert {o["kind"] for o in objects} >= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


# --- what the schema refuses, the agent refuses too ----------------------------------------

REFUSED = {
    "unknown scope": {"scope": "everywhere"},
    "zero restarts": {"maxConcurrentRestarts": 0},
    "a string for a boolean": {"dryRun": "yes"},
    "a typo in a top-level key": {"dryrun": True},
    "a typo in an entry": {"registries": [{"host": "r.corp", "pin": ["sha256:00"]}]},
    "an empty pin list": {"registries": [{"host": "r.corp", "pins": []}]},
    "a pin that is no fingerprint": {"registries": [{"host": "r.corp", "pins": ["md5:ab"]}]},
    "an entry without host": {"registries": [{"pins": ["sha256:" + "AB" * 32]}]},
    "caPEM without a certificate": {"registries": [{"host": "r.corp", "caPEM": "hello"}]},
    "caPEM and caFrom at once": {
        "registries": [
            {
                "host": "r.corp",
                "caPEM": "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n",
                "caFrom": {"configMap": {"name": "ca", "key": "ca.crt"}},
            }
        ]
    },
    "an empty caFrom": {"registries": [{"host": "r.corp", "caFrom": {}}]},
    "two sources in one caFrom": {
        "registries": [
            {
                "host": "r.corp",
                "caFrom": {
                    "configMap": {"name": "ca", "key": "ca.crt"},
                    "clusterTrustBundle": {"name": "ca"},
                },
            }
        ]
    },
    "a config map source without key": {
        "registries": [{"host": "r.corp", "caFrom": {"configMap": {"name": "ca"}}}]
    },
    "a bundle by name and by labels": {
        "registries": [
            {
                "host": "r.corp",
                "caFrom": {
                    "clusterTrustBundle": {
                        "name": "ca",
                        "labelSelector": {"matchLabels": {"a": "b"}},
                    }
                },
            }
        ]
    },
    "a selector that selects everything": {
        "registries": [
            {
                "host": "r.corp",
                "caFrom": {"clusterTrustBundle": {"labelSelector": {"matchLabels": {}}}},
            }
        ]
    },
}


@pytest.mark.parametrize("policy", REFUSED.values(), ids=REFUSED.keys())
def test_the_schema_refuses_what_the_agent_refuses(policy: Obj, tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        parse_policy(yaml.safe_dump(policy))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"policy": policy}))
    out = helm("template", "x", str(CHART), "-n", NS, "-f", str(values))
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr


def test_a_value_the_chart_does_not_know_is_refused() -> None:
    out = helm("template", "x", str(CHART), "--set", "imag.tag=1")
    assert out.returncode != 0 and "imag" in out.stderr


def test_helm_lint_strict_passes_for_every_documented_combination() -> None:
    for values in [None, *sorted((CHART / "ci").glob("*-values.yaml"))]:
        extra = ["-f", str(values)] if values else []
        out = helm("lint", "--strict", str(CHART), *extra)
        assert out.returncode == 0, (values, out.stdout, out.stderr)


def test_the_documented_values_table_is_generated_from_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/chart-values-table")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() in (ROOT / "docs" / "install.md").read_text(), (
        "docs/install.md's values table is stale: run scripts/chart-values-table --write"
    )
