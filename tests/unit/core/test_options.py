"""agent.core.options: the policy's install settings reach the engine as one value, and
their allowed values are defined once."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from agent.core import options, policy, remediation
from agent.core.errors import InputError
from agent.core.hostport import HostPort
from agent.core.options import InstallOptions
from agent.core.policy import parse_policy
from agent.core.remediation import InstallRequest

EVERY_SETTING = (
    "scope: system\nrestart: never\ndryRun: true\nhostsToml: append\n"
    "allowDockerRestartWithoutLiveRestore: true\n"
)
ALL_SET = InstallOptions(
    scope="system",
    restart="never",
    dry_run=True,
    allow_docker_restart_without_live_restore=True,
    hosts_toml="append",
)


def test_the_policy_yields_every_install_setting_as_one_value() -> None:
    assert parse_policy(EVERY_SETTING).install_options == ALL_SET
    assert parse_policy("").install_options == InstallOptions()


def test_the_request_carries_the_value_whole_and_gives_it_back() -> None:
    req = InstallRequest(endpoint=HostPort("registry.test", 5443), options=ALL_SET)
    assert req.install_options == ALL_SET
    assert (req.scope, req.restart, req.dry_run, req.hosts_toml) == (
        "system", "never", True, "append"
    )
    # one setting changed on the way (the first-trust preview is a dry run)
    assert replace(req, dry_run=False).install_options == replace(ALL_SET, dry_run=False)


def test_every_install_setting_is_a_policy_setting_of_the_same_name() -> None:
    names = {f.name for f in fields(policy.Policy)}
    assert {f.name for f in fields(InstallOptions)} <= names


def test_the_allowed_values_are_defined_once() -> None:
    assert policy.SCOPES is options.SCOPES is remediation.SCOPES
    assert policy.RESTARTS is options.RESTARTS is remediation.RESTARTS
    assert policy.HOSTS_TOML_MODES is options.HOSTS_TOML_MODES is remediation.HOSTS_TOML_MODES


def test_a_value_outside_the_allowed_ones_is_refused_however_it_is_given() -> None:
    with pytest.raises(InputError, match="scope must be one of registry, system, auto"):
        InstallOptions(scope="cluster")
    with pytest.raises(InputError, match="hosts-toml must be refuse or append"):
        InstallRequest(endpoint=HostPort("registry.test", 443), hosts_toml="merge")
