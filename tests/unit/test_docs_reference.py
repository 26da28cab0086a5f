"""The operator's reference pages say what the code does: every policy key with its default
and allowed values, every metric, every alert, every command, flag and exit code; and the
examples an operator copies (the policy snippets, the README's kustomize overlay) are
accepted by the agent as written.

Each list is read from the code (the policy reader and model, `agent.metrics.Metrics`, the
alert rule file, the CLI parser, the error classes), so a new key, metric, alert, flag or
exit code fails here until the page names it, and a page naming one that is gone fails too.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from agent.cli_args import build_parser
from agent.core import errors
from agent.core.policy import (
    APPROVALS,
    DEFAULT_POLICY,
    HOSTS_TOML_MODES,
    RESTARTS,
    SCOPES,
    parse_policy,
)
from agent.core.policy.registries import _RULE_KEYS
from agent.core.policy.schema import _TOP_KEYS
from agent.metrics import NAMESPACE, Metrics
from lab.tls.pki import make_ca

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
KUBECTL = Path(sys.executable).parent / "kubectl"


def page(name: str) -> str:
    return (DOCS / name).read_text()


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table under `## heading`: first cell (unquoted) -> cells."""
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def ticked(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


# --- policy ---------------------------------------------------------------------------------

CHOICES = {
    "scope": SCOPES,
    "restart": RESTARTS,
    "approval": APPROVALS,
    "hostsToml": HOSTS_TOML_MODES,
}


def test_policy_md_lists_every_setting_with_its_default_and_allowed_values() -> None:
    rows = table_rows(page("policy.md"), "Settings")
    rows.pop("key")
    assert set(rows) == set(_TOP_KEYS)
    defaults = DEFAULT_POLICY.summary()
    for key, (_, _, default, allowed, _) in rows.items():
        wanted = defaults[key]
        shown = yaml.safe_load(default.strip("`"))
        assert shown == wanted, f"{key}: documented default {default}, the agent's {wanted!r}"
        if key in CHOICES:
            assert ticked(allowed) == set(CHOICES[key]), key


def test_policy_md_lists_every_registry_entry_key() -> None:
    rows = table_rows(page("policy.md"), "`registries` entries")
    rows.pop("key")
    assert set(rows) == set(_RULE_KEYS)


@cache
def a_ca_pem() -> str:
    return make_ca("Docs Example CA").pem.decode()


def with_real_pem(text: str) -> str:
    """An example's `MIIB...` placeholder replaced by a real CA, at the same indentation."""

    def real(match: re.Match[str]) -> str:
        indent = match.group(1)
        return "".join(f"{indent}{line}\n" for line in a_ca_pem().splitlines())

    pattern = r"( +)-----BEGIN CERTIFICATE-----\n +MIIB\.\.\.\n +-----END CERTIFICATE-----\n"
    return re.sub(pattern, real, text)


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def as_policy(block: str) -> str:
    """A policy.yaml example as is; a Helm values example (`policy:`) as the chart renders it."""
    document = yaml.safe_load(block)
    if isinstance(document, dict) and set(document) == {"policy"}:
        return yaml.safe_dump(document["policy"])
    return block


def test_every_policy_example_in_the_docs_is_accepted_by_the_agent() -> None:
    blocks = yaml_blocks(page("policy.md"))
    readme = (ROOT / "README.md").read_text()
    blocks += [b for b in yaml_blocks(readme) if "registries:" in b and "kind:" not in b]
    assert len(blocks) >= 6
    for block in blocks:
        policy = parse_policy(with_real_pem(as_policy(block)))
        assert policy.registries or policy.interception, block


def test_the_readme_overlay_renders_the_image_the_components_and_the_policy(
    tmp_path: Path,
) -> None:
    readme = (ROOT / "README.md").read_text()
    (overlay,) = [b for b in yaml_blocks(readme) if "kind: Kustomization" in b]
    target = tmp_path / "my-overlay"
    target.mkdir()
    # the README's overlay sits next to a checkout named ca-trust-agent
    (tmp_path / "ca-trust-agent").symlink_to(ROOT)
    (target / "kustomization.yaml").write_text(overlay)
    out = subprocess.run(
        [str(KUBECTL), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    objects = [d for d in yaml.safe_load_all(out.stdout) if d]
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    policy = parse_policy(config["data"]["policy.yaml"])
    assert policy.recycle_pods and policy.registries
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.corp.example/ca-trust-agent:0.1.0"
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert any("pods/eviction" in r["resources"] for r in role["rules"])


# --- metrics and alerts ---------------------------------------------------------------------


def exported_metrics() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        if family.name.startswith(NAMESPACE + "_"):
            suffix = "_total" if family.type == "counter" else ""
            names.add(family.name + suffix)
    return names


def test_metrics_md_lists_every_metric_the_agent_exports() -> None:
    rows = table_rows(page("metrics.md"), "Metrics")
    rows.pop("metric")
    assert set(rows) == exported_metrics()


def test_metrics_md_lists_every_alert_with_its_severity() -> None:
    rules = yaml.safe_load((ROOT / "charts/ca-trust-agent/files/alerts.yaml").read_text())
    alerts = {
        rule["alert"]: rule["labels"]["severity"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    rows = table_rows(page("metrics.md"), "Alerts")
    rows.pop("alert")
    assert {name: cells[1] for name, cells in rows.items()} == alerts


# --- the CLI --------------------------------------------------------------------------------


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: dict[str, argparse.ArgumentParser] = dict(sub.choices)
    found[""] = parser
    return found


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option not in ("-h", "--help")
    }


def test_cli_md_names_every_command_and_flag() -> None:
    text = page("cli.md")
    for command, parser in commands().items():
        if command:
            assert f"ca-trust-agent {command}" in text, command
        for option in options(parser):
            assert f"`{option}" in text or f" {option}" in text, (command, option)


def exit_codes() -> set[int]:
    classes: list[Any] = [errors.AgentError]
    codes = {0}
    while classes:
        cls = classes.pop()
        codes.add(cls.exit_code)
        classes += cls.__subclasses__()
    return codes


def test_cli_md_lists_every_exit_code() -> None:
    rows = table_rows(page("cli.md"), "Exit codes")
    rows.pop("code")
    assert exit_codes() <= {int(code) for code in rows}


# --- links ----------------------------------------------------------------------------------


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for source in pages:
        text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, fragment = target.partition("#")
            path = (source.parent / file).resolve() if file else source
            assert path.is_relative_to(ROOT), f"{source.name}: {target} leaves the repository"
            assert path.exists(), f"{source.name}: {target} does not exist"
            if fragment:
                assert fragment in anchors(path), f"{source.name}: no heading for {target}"
