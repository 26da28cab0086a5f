"""How an install is done, as one value: what the policy (or the CLI's flags) says about
scope, restart, hosts.toml, Docker restarts and dry runs, carried by the `InstallRequest`
to the engine unchanged. The allowed values of each setting are defined here, once."""

from __future__ import annotations

from dataclasses import dataclass

from agent.core.errors import InputError

# The order is the one every refusal lists them in ("must be one of registry, system, auto").
SCOPES = ("registry", "system", "auto")
RESTARTS = ("auto", "never")
HOSTS_TOML_MODES = ("refuse", "append")


@dataclass(frozen=True)
class InstallOptions:
    """One field per install setting of policy.yaml, under the same name as its `Policy`
    field (`Policy.install_options` copies them by name, so a new one is one field here)."""

    scope: str = "auto"
    restart: str = "auto"
    dry_run: bool = False
    allow_docker_restart_without_live_restore: bool = False
    # a foreign containerd hosts.toml: refuse, or append our CA
    hosts_toml: str = "refuse"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise InputError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        if self.restart not in RESTARTS:
            raise InputError(f"restart must be auto or never, not {self.restart!r}")
        if self.hosts_toml not in HOSTS_TOML_MODES:
            raise InputError(f"hosts-toml must be refuse or append, not {self.hosts_toml!r}")


DEFAULT_OPTIONS = InstallOptions()

__all__ = ["DEFAULT_OPTIONS", "HOSTS_TOML_MODES", "RESTARTS", "SCOPES", "InstallOptions"]
