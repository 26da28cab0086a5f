"""The request and the result of one remediation: what the CLI and the controller hand the
engine, and what they report back (Events, `--json`, exit codes)."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field, fields
from typing import TYPE_CHECKING

from agent.core import plan as p
from agent.core.errors import InputError, RuntimeRestartError
from agent.core.hostport import HostPort
from agent.core.options import (
    DEFAULT_OPTIONS,
    HOSTS_TOML_MODES,
    RESTARTS,
    SCOPES,
    InstallOptions,
)
from agent.core.pull_verdict import PullVerdict

if TYPE_CHECKING:  # the X.509 stack loads with the first install, not with the idle daemon
    from agent.core.trust import Analysis, CertInfo

# auto: the runtime judges when an image is known and it answers, else a TLS handshake
VERIFY_MODES = ("auto", "runtime", "tls")


@dataclass(frozen=True)
class InstallRequest:
    """One install: where, which anchor (fetched, pinned or given), and how.

    "How" is the `InstallOptions` value the policy (or the CLI) yields: pass it whole as
    `options=`; its settings are kept as this request's own fields of the same names (so
    the engine reads `req.scope` and `dataclasses.replace(req, dry_run=True)` works), and
    `install_options` gives the value back."""

    endpoint: HostPort
    registry: HostPort | None = None  # the image's registry (certs.d dir); default: endpoint
    scope: str = DEFAULT_OPTIONS.scope
    restart: str = DEFAULT_OPTIONS.restart
    pins: tuple[str, ...] = ()
    ca_pem: bytes | None = None  # --ca-file or policy caPEM: trust this, fetch only to verify
    source: str = "fetched"  # "fetched" | "ca-file" | "policy" | "interception"
    dry_run: bool = DEFAULT_OPTIONS.dry_run
    allow_docker_restart_without_live_restore: bool = (
        DEFAULT_OPTIONS.allow_docker_restart_without_live_restore
    )
    sni: str | None = None
    proxy: str | None = None
    timeout: float = 10.0
    image: str | None = None  # the image whose pull failed: the runtime pulls it to verify
    verify: str = "auto"
    hosts_toml: str = DEFAULT_OPTIONS.hosts_toml  # a foreign containerd hosts.toml
    # a chain fetched moments ago (the first-trust preview): analyzed instead of a new fetch
    chain: tuple[CertInfo, ...] | None = field(default=None, repr=False)
    # rotation without a gap: the previous anchor's PEM, written beside the new one in the
    # same file until the new one is verified (agent.cluster.firsttrust then drops it)
    overlap: bytes | None = None
    # how the chain was fetched (the runtime's proxy, agent.node.interception), for Events
    route: str = ""
    # the install settings as one value: when given, they are the request's settings
    options: InitVar[InstallOptions | None] = None

    def __post_init__(self, options: InstallOptions | None) -> None:
        if options is not None:
            for name in _OPTION_FIELDS:
                object.__setattr__(self, name, getattr(options, name))  # frozen: set once here
        else:
            self.install_options  # noqa: B018 - validates the settings given one by one
        if self.verify not in VERIFY_MODES:
            modes = ", ".join(VERIFY_MODES)
            raise InputError(f"verify must be one of {modes}, not {self.verify!r}")
        if self.verify == "runtime" and not self.image:
            raise InputError(
                "verify runtime needs the image to pull (--image REF)", kind="bad-input"
            )

    @property
    def install_options(self) -> InstallOptions:
        """The request's install settings as one value (validated when built)."""
        return InstallOptions(**{name: getattr(self, name) for name in _OPTION_FIELDS})


_OPTION_FIELDS = tuple(f.name for f in fields(InstallOptions))


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
    # which check proved it: "runtime" (the runtime pulled), "tls" (a handshake trusting
    # only our file), "none" (declarative caPEM, nothing reachable needed) or "" (no change)
    verification: str = ""
    verdict: PullVerdict | None = None  # the runtime's answer, when it was asked
    scope_reason: str = ""  # why this scope (e.g. why registry scope was not available)

    @property
    def verified_by(self) -> str:
        """Which check proved the trust, in words (empty when nothing was checked)."""
        if self.verification == "runtime" and self.verdict is not None:
            return f"verified: {self.verdict.describe()}"
        if self.verification == "tls":
            text = "verified by a TLS handshake trusting only the new CA"
            if self.verdict is not None:
                text += f" (no runtime verdict: {self.verdict.describe()})"
            return text
        if self.verification == "none":
            return "declared by the policy; not checked against the registry"
        return ""

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


__all__ = [
    "HOSTS_TOML_MODES",
    "RESTARTS",
    "SCOPES",
    "VERIFY_MODES",
    "InstallOptions",
    "InstallRequest",
    "Result",
]
