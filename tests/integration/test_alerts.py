"""The alert rules (charts/ca-trust-agent/files/alerts.yaml): checked and unit-tested with
promtool, built on metrics the agent really exports, and evaluated by a real Prometheus
(Debian's `prometheus` package) that scrapes a running `ca-trust-agent run`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.metrics import Metrics
from lab.fakes.apiserver import FakeApiServer, write_kubeconfig
from lab.fakes.doubles import node as node_object
from lab.fakes.doubles import policy as policy_configmap
from lab.fakes.doubles import wait_until
from lab.fakes.hostroot import node_root
from lab.procs import clean_env, free_port
from lab.tls import pki

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "ca-trust-agent" / "files"
RULES = FILES / "alerts.yaml"
NODE = "node-a"
NS = "ca-trust-agent"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, check=False, cwd=FILES, timeout=120
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rule_file() -> None:
    out = promtool("check", "rules", RULES.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout


def test_the_alert_unit_tests_pass() -> None:
    out = promtool("test", "rules", "alerts_test.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    tests = yaml.safe_load((FILES / "alerts_test.yaml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alerts()} == firing


def test_every_metric_an_alert_uses_is_exported_by_the_agent() -> None:
    exported = {"up"}  # Prometheus' own, per target
    for family in Metrics().registry.collect():
        exported.add(family.name)
        if family.type == "counter":
            exported.add(family.name + "_total")
    for rule in alerts():
        used = set(re.findall(r"\b(ca_trust_agent_\w+|up)\b(?=\s*[{\[=<>)-]|\s*$)", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']} uses {sorted(used - exported)}"


# --- a real Prometheus, a real agent ---------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our http URLs
        return str(response.read().decode())


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[int]:
    """`ca-trust-agent run` on an opted-in node whose policy declares a CA that expires in
    ten days; yields its metrics port."""
    expiring = pki.make_ca("Expiring Registry Root", window=pki.valid(days=10))
    policy = yaml.safe_dump(
        {"registries": [{"host": "harbor.test:443", "caPEM": expiring.pem.decode()}]}
    )
    root = node_root(tmp_path / "host")
    port = free_port()
    with FakeApiServer() as api:
        api.put_object(node_object(NODE))
        api.put_object(policy_configmap(policy))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "run",
                "--host-root",
                str(root),
                "--runner",
                "direct",
                "--namespace",
                NS,
                "--metrics-address",
                f"127.0.0.1:{port}",
                "--kubeconfig",
                str(write_kubeconfig(tmp_path / "kubeconfig", api.url)),
            ],
            env={**clean_env({"NODE_NAME": NODE, "PYTHONPATH": str(ROOT)})},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: "ca_trust_agent_ca_not_after_timestamp_seconds{" in _metrics(port),
                timeout=30,
            )
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def _metrics(port: int) -> str:
    try:
        return _get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return ""


@pytest.fixture
def prometheus(tmp_path: Path, agent: int) -> Iterator[str]:
    # The shipped rules, with CATrustAnchorExpiringSoon's `for: 1h` cut to 0s so it fires
    # within the test; the `for` itself is covered by the promtool unit test.
    groups = yaml.safe_load(RULES.read_text())
    for rule in groups["groups"][0]["rules"]:
        if rule["alert"] == "CATrustAnchorExpiringSoon":
            rule["for"] = "0s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yaml")],
        "scrape_configs": [
            {"job_name": "ca-trust-agent", "static_configs": [{"targets": [f"127.0.0.1:{agent}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _firing(base: str) -> list[dict[str, Any]]:
    try:
        body = json.loads(_get(f"{base}/api/v1/alerts"))
    except OSError:
        return []
    return [a for a in body["data"]["alerts"] if a["state"] == "firing"]


def test_a_real_prometheus_scraping_the_agent_fires_the_expiry_alert(prometheus: str) -> None:
    deadline = time.monotonic() + 60
    firing: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not firing:
        firing = _firing(prometheus)
        time.sleep(0.5)
    assert [a["labels"]["alertname"] for a in firing] == ["CATrustAnchorExpiringSoon"]
    labels = firing[0]["labels"]
    assert labels["endpoint"] == "harbor.test:443"
    assert labels["job"] == "ca-trust-agent"
    assert labels["severity"] == "warning"
    assert re.search(r"expires in (9d 23h|10d)", firing[0]["annotations"]["description"])
    query = json.loads(_get(f"{prometheus}/api/v1/query?query=ca_trust_agent_node_opted_in"))
    assert [r["value"][1] for r in query["data"]["result"]] == ["1"]
    ready = json.loads(_get(f"{prometheus}/api/v1/query?query=ca_trust_agent_ready"))
    assert [r["value"][1] for r in ready["data"]["result"]] == ["1"]
