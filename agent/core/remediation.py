"""The request and the result of one remediation: what the CLI and the controller hand the
engine, and what they report back (Events, `--json`, exit codes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.core import plan as p
from agent.core.errors import InputError, RuntimeRestartError
from agent.core.hostport import HostPort

if TYPE_CHECKING:  # the X.509 stack loads with the first install, not with the idle daemon
    from agent.core.trust import Analysis, CertInfo

SCOPES = ("auto", "registry", "system")
RESTARTS = ("auto", "never")

@dataclass(frozen=True)
class InstallRequest:
    endpoint: HostPort
    registry: HostPort | None = None  # the image's registry (certs.d dir); default: endpoint
    scope: str = "auto"
    restart: str = "auto"
    pins: tuple[str, ...] = ()
    ca_pem: bytes | None = None  # --ca-file or policy caPEM: trust this, fetch only to verify
    source: str = "fetched"  # "fetched" | "ca-file" | "policy"
    dry_run: bool = False
    allow_docker_restart_without_live_restore: bool = False
    sni: str | None = None
    proxy: str | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise InputError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        if self.restart not in RESTARTS:
            raise InputError(f"restart must be auto or never, not {self.restart!r}")


@dataclass(frozen=True)
class Result:
    """What happened, in the terms an operator and an Event message need."""

    endpoint: HostPort
    registry: HostPort
    status: str  # "installed" | "unchanged" | "dry-run" | "removed" | "absent"
    scope: str
    stores: tuple[str, ...]
    anchor: CertInfo | None
    analysis: Analysis | None
    actions: tuple[p.Action, ...]
    restarted: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()  # runtimes that must restart before it takes effect
    restart_error: RuntimeRestartError | None = None
    verified: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def next_step(self) -> str:
        """What happens next, as the last clause of an Event message or CLI line."""
        if self.status == "dry-run":
            return "dry run: nothing was changed"
        if self.restart_error is not None:
            return f"runtime not restarted: {self.restart_error}"
        if self.restart_required:
            return (
                "takes effect after "
                + " and ".join(self.restart_required)
                + " restart (restart: never)"
            )
        return self._effect()

    def _effect(self) -> str:
        restarted = "restarted " + ", ".join(self.restarted) + "; " if self.restarted else ""
        if self.status == "removed":
            if restarted:
                return restarted + "the CA is no longer trusted"
            return "the CA is no longer trusted for pulls from this registry"
        if restarted:
            return restarted + "pulls use the new trust now"
        if self.scope == "registry":
            return "pulls from this registry use it now, no restart needed"
        return "no restart needed"
