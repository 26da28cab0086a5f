"""The chart's `policy` values follow the agent: the same keys, the same allowed values, and
for each key the chart accepts what the agent accepts and refuses what the agent refuses.

values.schema.json is written by hand (a schema generated from the parser would lose its
descriptions, which are the chart's documentation). So this test reads the agent's own
lists (the keys its strict reader knows, the allowed values and bounds of its model) and
compares them with the schema in both directions, at every level of policy.yaml: the top
level, a `registries` entry, `caFrom` and its two sources. Then it asks both sides about
the same values: the agent through `parse_policy`, the chart through the real helm
(`helm template` validates values against the schema), so a rule the schema words
differently from the parser shows up as a disagreement.

The refused examples are the ones a JSON schema can express (types, choices, bounds, shapes,
patterns). What only a parser can tell, a glob's labels or a PEM that does not parse, the
agent still refuses when it reads the rendered policy (`PolicyInvalid`).
"""

from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.errors import PolicyError
from agent.core.policy import (
    APPROVALS,
    HOSTS_TOML_MODES,
    MAX_CA_PEM_BYTES,
    MAX_PINS,
    MAX_REGISTRIES,
    RESTARTS,
    SCOPES,
    parse_policy,
)
from agent.core.policy.interception import _KEYS as _INTERCEPTION_KEYS
from agent.core.policy.model import MAX_CONFIRMATIONS

# The keys the agent's strict reader accepts (anything else is an "unknown key" error).
# They are private to the reader; this test is the one place outside it that needs them.
from agent.core.policy.registries import _RULE_KEYS
from agent.core.policy.schema import _TOP_KEYS
from agent.core.policy.sources import _CM_KEYS, _CTB_KEYS, _FROM_KEYS
from lab.tls.pki import make_ca

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ca-trust-agent"
HELM = ROOT / ".lab-cache" / "helm-v4.1.4" / "helm"
SCHEMA_REFUSED = "values don't meet the specifications of the schema"
Obj = dict[str, Any]


def schema() -> Obj:
    loaded: Obj = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def policy_schema() -> Obj:
    found: Obj = schema()["properties"]["policy"]
    return found


def registry_schema() -> Obj:
    found: Obj = schema()["definitions"]["registry"]
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail("helm is missing: scripts/bootstrap fetches it (scripts/fetch-helm)")
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False, timeout=60
    )


# --- the same keys and the same allowed values, in both directions -------------------------

# each level of policy.yaml: where the chart's schema describes it, and the agent's keys
CAFROM = ("definitions", "registry", "properties", "caFrom")
LEVELS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "top level": (("properties", "policy"), _TOP_KEYS),
    "registries[] entry": (("definitions", "registry"), _RULE_KEYS),
    "caFrom": (CAFROM, _FROM_KEYS),
    "caFrom.configMap": ((*CAFROM, "properties", "configMap"), _CM_KEYS),
    "caFrom.clusterTrustBundle": ((*CAFROM, "properties", "clusterTrustBundle"), _CTB_KEYS),
    "interception": (("definitions", "interception"), _INTERCEPTION_KEYS),
}


@pytest.mark.parametrize("level", LEVELS, ids=LEVELS)
def test_the_chart_knows_exactly_the_keys_the_agent_knows(level: str) -> None:
    where, agent_keys = LEVELS[level]
    part = schema()
    for name in where:
        part = part[name]
    chart_keys = set(part["properties"])
    assert chart_keys - set(agent_keys) == set(), (
        f"{level}: the chart allows keys the agent refuses"
    )
    assert set(agent_keys) - chart_keys == set(), f"{level}: the agent accepts keys the chart lacks"
    # and any other key is refused, as the agent refuses it
    assert part["additionalProperties"] is False


def test_the_chart_allows_exactly_the_agent_s_values_for_each_choice() -> None:
    top = policy_schema()["properties"]
    entry = registry_schema()["properties"]
    choices = {
        "scope": (top["scope"], SCOPES),
        "restart": (top["restart"], RESTARTS),
        "approval": (top["approval"], APPROVALS),
        "hostsToml": (top["hostsToml"], HOSTS_TOML_MODES),
        "registries[].approval": (entry["approval"], APPROVALS),
    }
    for key, (spec, allowed) in choices.items():
        assert sorted(spec["enum"]) == sorted(allowed), key


def test_the_chart_s_bounds_are_the_agent_s_bounds() -> None:
    top = policy_schema()["properties"]
    entry = registry_schema()["properties"]
    assert top["confirmations"]["maximum"] == MAX_CONFIRMATIONS
    assert entry["confirmations"]["maximum"] == MAX_CONFIRMATIONS
    assert top["registries"]["maxItems"] == MAX_REGISTRIES
    assert entry["pins"]["maxItems"] == MAX_PINS
    assert entry["caPEM"]["maxLength"] == MAX_CA_PEM_BYTES


# --- the same verdict on the same values, key by key ----------------------------------------


@cache
def a_ca_pem() -> str:
    return make_ca("Chart Schema Test CA").pem.decode()


PIN = "sha256:" + "AB" * 32


def entry(**fields: Any) -> Obj:
    return {"registries": [{"host": "registry.corp.example:5000", **fields}]}


def ca_from(source: Obj) -> Obj:
    return entry(caFrom=source)


# For every key at every level: values the agent accepts, then values it refuses.
def proxy_ca(**fields: Any) -> Obj:
    return {"interception": fields}


ACCEPTED: dict[str, list[Obj]] = {
    "interception": [
        proxy_ca(caPEM="<a CA>"),
        proxy_ca(caFrom={"configMap": {"name": "proxy-ca", "key": "ca.crt"}}, hosts=["*"]),
        proxy_ca(spki=[PIN], hosts=["docker.io", "*.docker.io"], **{"except": ["10.0.0.7:5000"]}),
        proxy_ca(caFrom={"clusterTrustBundle": {"name": "zscaler-root"}}),
    ],
    "scope": [{"scope": v} for v in SCOPES],
    "restart": [{"restart": v} for v in RESTARTS],
    "maxConcurrentRestarts": [{"maxConcurrentRestarts": 1}, {"maxConcurrentRestarts": 7}],
    "allowDockerRestartWithoutLiveRestore": [
        {"allowDockerRestartWithoutLiveRestore": v} for v in (True, False)
    ],
    "dryRun": [{"dryRun": v} for v in (True, False)],
    "recyclePods": [{"recyclePods": v} for v in (True, False)],
    "confirmations": [{"confirmations": 1}, {"confirmations": MAX_CONFIRMATIONS}],
    "approval": [{"approval": v} for v in APPROVALS],
    "hostsToml": [{"hostsToml": v} for v in HOSTS_TOML_MODES],
    "registries": [
        {"registries": []},
        {"registries": [{"host": "registry.corp.example:5000"}, {"host": "*.corp.example"}]},
    ],
    "registries[].host": [
        entry(),
        {"registries": [{"host": "10.0.0.7:5000"}]},
        {"registries": [{"host": "[fd00::1]:5000"}]},
        {"registries": [{"host": "*.corp.example:443"}]},
    ],
    "registries[].pins": [
        entry(pins=[PIN]),
        entry(pins=[PIN.replace("AB", "cd")]),
        entry(pins=["AB" * 32]),  # bare hex
        entry(pins=["SHA256:" + ":".join(["ab"] * 32)]),  # as openssl prints it
    ],
    "registries[].confirmations": [entry(confirmations=3)],
    "registries[].approval": [entry(approval=v) for v in APPROVALS],
    "registries[].caPEM": [entry(caPEM="<a CA>")],
    "registries[].caFrom": [
        ca_from({"configMap": {"name": "corp-ca", "key": "ca.crt"}}),
        ca_from({"clusterTrustBundle": {"name": "corp-registry-ca"}}),
        ca_from(
            {
                "clusterTrustBundle": {
                    "signerName": "corp.example/registry-ca",
                    "labelSelector": {"matchLabels": {"trust.corp.example/registry": "true"}},
                }
            }
        ),
        ca_from({"clusterTrustBundle": {"labelSelector": {"matchLabels": {"registry-ca": ""}}}}),
    ],
}

REFUSED: dict[str, list[Obj]] = {
    "interception": [
        {"interception": "zscaler"},
        proxy_ca(hosts=["*"]),  # no CA named
        proxy_ca(caPEM="<a CA>", spki=[PIN]),  # two
        proxy_ca(caPEM="hello"),
        proxy_ca(spki=[]),
        proxy_ca(spki=["md5:ab"]),
        proxy_ca(caPEM="<a CA>", hosts=[]),
        proxy_ca(caPEM="<a CA>", hosts="*"),
        proxy_ca(caPEM="<a CA>", **{"except": ["registry.corp.example/team"]}),
        proxy_ca(caPEM="<a CA>", only=["docker.io"]),
    ],
    "scope": [{"scope": "everywhere"}, {"scope": ""}],
    "restart": [{"restart": "always"}],
    "maxConcurrentRestarts": [
        {"maxConcurrentRestarts": 0},
        {"maxConcurrentRestarts": 1.5},
        {"maxConcurrentRestarts": "2"},
        {"maxConcurrentRestarts": True},
    ],
    "allowDockerRestartWithoutLiveRestore": [{"allowDockerRestartWithoutLiveRestore": "yes"}],
    "dryRun": [{"dryRun": "true"}, {"dryRun": 1}],
    "recyclePods": [{"recyclePods": "on"}],
    "confirmations": [
        {"confirmations": 0},
        {"confirmations": MAX_CONFIRMATIONS + 1},
        {"confirmations": "3"},
    ],
    "approval": [{"approval": "maybe"}],
    "hostsToml": [{"hostsToml": "overwrite"}, {"hostsToml": True}],
    "registries": [{"registries": "registry.corp.example"}, {"registries": [{}]}],
    "registries[].host": [
        {"registries": [{"host": ""}]},
        {"registries": [{"host": 5000}]},
        {"registries": [{"host": "registry.corp.example/team"}]},
    ],
    "registries[].pins": [
        entry(pins=[]),
        entry(pins=["md5:ab"]),
        entry(pins=PIN),
        entry(pins=[PIN[:-1]]),
        entry(pins=[PIN + "0"]),
    ],
    "registries[].confirmations": [entry(confirmations=0), entry(confirmations="2")],
    "registries[].approval": [entry(approval="always")],
    "registries[].caPEM": [entry(caPEM="hello"), entry(caPEM="<a CA>", caFrom={})],
    "registries[].caFrom": [
        ca_from({}),
        ca_from({"secret": {"name": "corp-ca", "key": "ca.crt"}}),
        ca_from({"configMap": {"name": "corp-ca"}}),
        ca_from({"configMap": {"name": "corp-ca", "key": "ca.crt", "namespace": "x"}}),
        ca_from({"configMap": {"name": "Corp_CA", "key": "ca.crt"}}),
        ca_from({"clusterTrustBundle": {"name": "a", "labelSelector": {"matchLabels": {}}}}),
        ca_from({"clusterTrustBundle": {"labelSelector": {"matchLabels": {}}}}),
        ca_from({"clusterTrustBundle": {"signerName": "corp.example/ca"}}),
        ca_from({"clusterTrustBundle": {"name": "a", "signer": "corp.example/ca"}}),
        ca_from({"clusterTrustBundle": {"labelSelector": {"matchLabels": {"a b": "c"}}}}),
        ca_from({"clusterTrustBundle": {"labelSelector": {"matchLabels": {"a": "-c"}}}}),
    ],
}


def with_pem(policy: Obj) -> Obj:
    """The placeholder "<a CA>" replaced by a real CA certificate's PEM."""
    text = json.dumps(policy).replace('"<a CA>"', json.dumps(a_ca_pem()))
    loaded: Obj = json.loads(text)
    return loaded


def agent_accepts(policy: Obj) -> bool:
    try:
        parse_policy(yaml.safe_dump(policy))
    except PolicyError:
        return False
    return True


def chart_accepts(policy: Obj, tmp_path: Path) -> bool:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"policy": policy}))
    out = helm("template", "x", str(CHART), "-n", "ca-trust-agent", "-f", str(values))
    if out.returncode != 0:
        assert SCHEMA_REFUSED in out.stderr, out.stderr  # refused by the schema, not broken
    return out.returncode == 0


def test_every_key_the_agent_knows_has_accepted_and_refused_examples() -> None:
    keys = set(_TOP_KEYS) | {f"registries[].{k}" for k in _RULE_KEYS}
    assert set(ACCEPTED) == keys
    assert set(REFUSED) == keys


def cases(table: dict[str, list[Obj]]) -> list[Any]:
    return [
        pytest.param(key, policy, id=f"{key}-{number}")
        for key, policies in table.items()
        for number, policy in enumerate(policies)
    ]


@pytest.mark.parametrize(("key", "policy"), cases(ACCEPTED))
def test_what_the_agent_accepts_the_chart_accepts(key: str, policy: Obj, tmp_path: Path) -> None:
    policy = with_pem(policy)
    assert agent_accepts(policy), f"{key}: the example is meant to be valid: {policy}"
    assert chart_accepts(policy, tmp_path), f"{key}: the chart refuses what the agent accepts"


@pytest.mark.parametrize(("key", "policy"), cases(REFUSED))
def test_what_the_agent_refuses_the_chart_refuses(key: str, policy: Obj, tmp_path: Path) -> None:
    policy = with_pem(policy)
    assert not agent_accepts(policy), f"{key}: the example is meant to be invalid: {policy}"
    assert not chart_accepts(policy, tmp_path), f"{key}: the chart accepts what the agent refuses"


# --- the command the issue reported refused ------------------------------------------------


def test_helm_set_hosts_toml_append_renders_a_policy_the_agent_reads_as_append() -> None:
    out = helm(
        "template", "ca-trust-agent", str(CHART), "-n", "ca-trust-agent",
        "--set", "policy.hostsToml=append",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "ConfigMap")
    assert parse_policy(config["data"]["policy.yaml"]).hosts_toml == "append"
