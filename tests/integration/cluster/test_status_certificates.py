"""`ca-trust-agent status` lists the registries whose certificate no CA can fix: the
RegistryCertificateInvalid Events the agents wrote on their Nodes (written here by the
real EventRecorder, read back through the real KubeClient from the fake API server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import KubeClient, RetryPolicy
from agent.cluster.events import EventRecorder
from agent.core.reasons import Reason
from agent.status import certificate_problems, render_certificate_problems
from lab.fakes.apiserver import FakeApiServer

EXPIRED = (
    "Pulling expired.test:5443/lab/tiny:v1 from registry expired.test:5443 failed: the "
    "certificate of expired.test:5443 expired on 2026-11-30; trusting a CA cannot fix this: "
    "the registry's owner must renew it; nothing was installed"
)
MISMATCH = (
    "Pulling other.test/app:1 from registry other.test:443 failed: the certificate of "
    "other.test:443 is valid for a.example, not other.test; trusting a CA cannot fix this: the "
    "registry's owner must serve a certificate for that name, or the image must use a name "
    "the certificate has; nothing was installed"
)


@pytest.fixture
def client() -> Iterator[KubeClient]:
    with FakeApiServer() as api:
        config = Configuration()
        config.host = api.url
        c = KubeClient(config, retry=RetryPolicy(attempts=2, initial=0.01, max_wait=0.02))
        yield c
        c.close()


def report(client: KubeClient, node: str, message: str) -> None:
    recorder = EventRecorder(client, host=node)
    reason = Reason.REGISTRY_CERTIFICATE_INVALID
    recorder.node(node, reason.type, reason, message)
    recorder.pod("shop", "web-1", f"uid-{node}", reason.type, reason, message)


def test_status_lists_each_registry_certificate_problem_once_with_its_nodes(
    client: KubeClient,
) -> None:
    report(client, "node-a", EXPIRED)
    report(client, "node-b", EXPIRED)
    report(client, "node-a", MISMATCH)
    rows = certificate_problems(client)
    by_registry = {row["registry"]: row for row in rows}
    assert set(by_registry) == {"expired.test:5443", "other.test:443"}  # Pod copies not counted
    expired = by_registry["expired.test:5443"]
    assert expired["nodes"] == ["node-a", "node-b"] and expired["count"] == 2
    assert expired["problem"].startswith("the certificate of expired.test:5443 expired on")
    text = render_certificate_problems(rows)
    assert "expired.test:5443  x2 on node-a, node-b" in text
    assert "is valid for a.example, not other.test" in text


def test_status_says_so_when_no_agent_reported_one(client: KubeClient) -> None:
    assert certificate_problems(client) == []
    assert render_certificate_problems([]) == "registry certificates a CA cannot fix: none reported"
