"""The policy as values: its settings, its registry rules, the decision for one endpoint,
and the bounds a policy.yaml must stay within.

Which rule decides when several match is explained in the package docstring.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from agent.core.hostport import DEFAULT_PORT, HostPort
from agent.core.options import InstallOptions

MAX_POLICY_BYTES = 1 << 20
# Bounds that keep a document full of YAML aliases from multiplying the work.
MAX_REGISTRIES = 1000
MAX_PINS = 64
MAX_CA_PEM_BYTES = 256 * 1024
MAX_REPORTED_ERRORS = 20

# safe first trust (agent.core.firsttrust): "required" = an operator approves every anchor
APPROVALS = ("none", "required")
MAX_CONFIRMATIONS = 1000


@dataclass(frozen=True)
class CASource:
    """Where a registry's CA is read from in the cluster (`registries[].caFrom`).

    kind "configMap": key `key` of ConfigMap `name` in the agent's namespace (what
    trust-manager writes). kind "clusterTrustBundle": the ClusterTrustBundle `name`, or every
    bundle whose labels include `labels` (and whose signer is `signer_name` when given).
    """

    kind: str  # "configMap" | "clusterTrustBundle"
    name: str = ""
    key: str = ""
    signer_name: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # matchLabels, sorted

    def describe(self) -> str:
        if self.kind == "configMap":
            return f"ConfigMap {self.name} key {self.key}"
        if self.name:
            return f"ClusterTrustBundle {self.name}"
        chosen = ",".join(f"{k}={v}" for k, v in self.labels)
        signer = f" signer {self.signer_name}" if self.signer_name else ""
        return f"ClusterTrustBundles labelled {chosen}{signer}"

    def selects(self, obj: Mapping[str, Any]) -> bool:
        """Does this ClusterTrustBundle object belong to the source?"""
        meta = obj.get("metadata") or {}
        if self.name:
            return bool(meta.get("name") == self.name)
        if self.signer_name and (obj.get("spec") or {}).get("signerName") != self.signer_name:
            return False
        labels = meta.get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels)


# What the cluster side found for each source: the PEM text, or None when the source is
# known to be absent (listed, and no such object or key). A source missing from the
# mapping is not known yet (its first list has not arrived): nothing is removed for it.
Resolved = Mapping[CASource, str | None]


@dataclass(frozen=True)
class RegistryRule:
    """One entry of `registries`: which endpoints it allows and what it requires."""

    pattern: str  # canonical host (lower case, IPs normalised) or a lower-case glob
    port: int | None = None  # None: any port
    pins: tuple[str, ...] = ()  # "sha256:" + 64 upper-case hex digits, sorted, unique
    ca_pem: bytes | None = None  # declarative anchors: deterministic PEM bundle
    index: int = 0  # position in policy.yaml `registries`, for messages
    ca_from: CASource | None = None  # declarative anchors read from the cluster
    confirmations: int | None = None  # None: the policy's global value
    approval: str | None = None  # None: the policy's global value

    @property
    def is_glob(self) -> bool:
        return "*" in self.pattern or "?" in self.pattern

    @property
    def host(self) -> str:
        """The rule as an operator wrote it (canonicalised): `name[:port]` or the glob."""
        name = f"[{self.pattern}]" if ":" in self.pattern else self.pattern
        return name if self.port is None else f"{name}:{self.port}"

    @property
    def source(self) -> str:
        return f"registries[{self.index}]"

    def matches(self, endpoint: HostPort) -> bool:
        if self.port is not None and self.port != endpoint.port:
            return False
        return self.matches_host(endpoint.host)

    def matches_host(self, host: str) -> bool:
        # HostPort hosts are already lower case; patterns are lower-cased when parsed.
        if self.is_glob:
            return fnmatch.fnmatchcase(host.lower(), self.pattern)
        return host.lower() == self.pattern

    def precedence(self) -> tuple[int, int, int, int]:
        """Sort key: the smallest matching rule decides (see the package docstring)."""
        if not self.is_glob:
            return (0 if self.port is not None else 1, 0, 0, self.index)
        return (2, -len(self.pattern), 0 if self.port is not None else 1, self.index)


@dataclass(frozen=True)
class Decision:
    """May the agent trust a CA for this endpoint, and under which pins."""

    allowed: bool
    rule: RegistryRule | None
    pins: tuple[str, ...]
    reason: str  # one operator-facing sentence, used in Events and logs


@dataclass(frozen=True)
class Interception:
    """`interception`: the CA of a TLS-inspecting proxy, declared once, and the registries
    whose connections it re-signs.

    The CA is given as `caPEM`, read from the cluster (`caFrom`), or named by the SHA-256 of
    its SubjectPublicKeyInfo (`spki`, taken from the chain the proxy presents when it sends
    its CA). It is never learned from a fetch alone: every node sees the same proxy, so what
    nodes agree on proves nothing. `hosts` (globs allowed; none given: every registry) minus
    `except` (registries that bypass the proxy) are covered; on a covered host only a chain
    that ends at this CA is trusted, and only for the runtime's registry configuration.
    """

    ca_pem: bytes | None = None
    ca_from: CASource | None = None
    spki: tuple[str, ...] = ()  # "sha256:" + 64 upper-case hex digits, sorted, unique
    hosts: tuple[RegistryRule, ...] = ()  # empty: every registry
    except_: tuple[RegistryRule, ...] = ()

    def covers(self, endpoint: HostPort) -> bool:
        """Does the proxy's CA apply to `endpoint` (hosts, less except)?"""
        if any(rule.matches(endpoint) for rule in self.except_):
            return False
        return not self.hosts or any(rule.matches(endpoint) for rule in self.hosts)

    @property
    def covers_everything(self) -> bool:
        """Every registry, none excepted (`hosts` absent or holding a bare `*`)."""
        every = not self.hosts or any(r.pattern == "*" and r.port is None for r in self.hosts)
        return every and not self.except_

    def bundle(self, resolved: Resolved | None = None) -> bytes | None:
        """The declared CA certificates (caPEM, or the caFrom source once listed); None
        for an `spki` declaration, or a source not found or holding no certificate."""
        if self.ca_pem is not None:
            return self.ca_pem
        if self.ca_from is not None and resolved:
            pem = resolved.get(self.ca_from)
            return _source_bundle(pem, ()) if pem else None
        return None

    def describe(self) -> str:
        """How the operator named the CA, for Events: 'caPEM', 'ConfigMap x key y', ..."""
        if self.ca_from is not None:
            return self.ca_from.describe()
        if self.spki:
            return "SPKI " + ", ".join(self.spki)
        return "caPEM"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ca": self.describe()}
        out["hosts"] = [r.host for r in self.hosts] or ["*"]
        if self.except_:
            out["except"] = [r.host for r in self.except_]
        return out


@dataclass(frozen=True)
class Policy:
    scope: str = "auto"
    restart: str = "auto"
    max_concurrent_restarts: int = 1
    allow_docker_restart_without_live_restore: bool = False
    dry_run: bool = False
    recycle_pods: bool = False  # evict pods stuck in back-off after a fix (agent.cluster.evict)
    # safe first trust for fetched anchors: distinct nodes that must see the same anchor,
    # and whether an operator must approve it first (agent.core.firsttrust)
    confirmations: int = 1
    approval: str = "none"
    # a containerd certs.d/<registry>/hosts.toml someone else manages: "refuse" (report the
    # conflict, write nothing) or "append" (add our CA to its `ca`; remove restores it)
    hosts_toml: str = "refuse"
    registries: tuple[RegistryRule, ...] = field(default=())
    interception: Interception | None = None

    @property
    def install_options(self) -> InstallOptions:
        """How this policy has the engine install: its `InstallOptions` fields, by name."""
        return InstallOptions(**{f.name: getattr(self, f.name) for f in fields(InstallOptions)})

    def rule_for(self, endpoint: HostPort) -> RegistryRule | None:
        matching = [rule for rule in self.registries if rule.matches(endpoint)]
        return min(matching, key=RegistryRule.precedence, default=None)

    def decide(self, endpoint: HostPort) -> Decision:
        rule = self.rule_for(endpoint)
        if rule is not None:
            reason = f"{endpoint.key} is allowed by policy.yaml {rule.source} (host {rule.host!r})"
            if len(rule.pins) == 1:
                reason += "; only an anchor with the pinned fingerprint will be trusted"
            elif rule.pins:
                reason += (
                    f"; only an anchor with one of the {len(rule.pins)} pinned fingerprints "
                    "will be trusted"
                )
            return Decision(True, rule, rule.pins, reason)
        if not self.registries:
            return Decision(
                False,
                None,
                (),
                f"{endpoint.key} is not allowed: policy.yaml lists no registries, so every "
                "registry is denied",
            )
        return Decision(False, None, (), self._not_listed(endpoint))

    def _not_listed(self, endpoint: HostPort) -> str:
        reason = f"{endpoint.key} is not listed in policy.yaml registries"
        other_port = [r for r in self.registries if r.matches_host(endpoint.host)]
        if other_port:
            rule = min(other_port, key=RegistryRule.precedence)
            reason += f" ({rule.source} {rule.host!r} allows port {rule.port} only)"
        return reason

    def declared(
        self, resolved: Resolved | None = None
    ) -> tuple[tuple[HostPort, bytes, tuple[str, ...]], ...]:
        """Registries with `caPEM`, or a `caFrom` source found in `resolved`: trusted on
        every opted-in node without a fetch.

        A declared rule without a port declares the CA for port 443 (the endpoint whose
        certs.d directory is the bare host name). A source's bundle is narrowed to the
        pinned certificates when pins are given (a trust-manager bundle may hold several);
        a source whose PEM holds no usable certificate declares nothing.
        """
        out = []
        for rule in self.registries:
            endpoint = HostPort(rule.pattern, rule.port or DEFAULT_PORT)
            if rule.ca_pem is not None:
                out.append((endpoint, rule.ca_pem, rule.pins))
            elif rule.ca_from is not None and resolved:
                pem = resolved.get(rule.ca_from)
                bundle = _source_bundle(pem, rule.pins) if pem else None
                if bundle:
                    out.append((endpoint, bundle, rule.pins))
        return tuple(out)

    def sources(self) -> tuple[CASource, ...]:
        """Every `caFrom` source, once each, in policy order (the interception CA's last)."""
        found = [r.ca_from for r in self.registries if r.ca_from]
        if self.interception is not None and self.interception.ca_from is not None:
            found.append(self.interception.ca_from)
        return tuple(dict.fromkeys(found))

    def intercepted(self, endpoint: HostPort) -> bool:
        """Is `endpoint` covered by the declared interception CA? A registry whose own CA
        the policy declares (caPEM / caFrom) is not: that declaration is more precise."""
        if self.interception is None or not self.interception.covers(endpoint):
            return False
        rule = self.rule_for(endpoint)
        return rule is None or (rule.ca_pem is None and rule.ca_from is None)

    def pending(self, resolved: Resolved) -> frozenset[str]:
        """Endpoint keys whose `caFrom` source is not known yet: never removed meanwhile."""
        return frozenset(
            HostPort(r.pattern, r.port or DEFAULT_PORT).key
            for r in self.registries
            if r.ca_from is not None and r.ca_from not in resolved
        )

    def summary(self) -> dict[str, Any]:
        """The effective policy in policy.yaml's own words, for the startup log."""
        return {
            "scope": self.scope,
            "restart": self.restart,
            "maxConcurrentRestarts": self.max_concurrent_restarts,
            "allowDockerRestartWithoutLiveRestore": self.allow_docker_restart_without_live_restore,
            "dryRun": self.dry_run,
            "recyclePods": self.recycle_pods,
            "confirmations": self.confirmations,
            "approval": self.approval,
            "hostsToml": self.hosts_toml,
            "registries": [_rule_summary(rule) for rule in self.registries],
            "interception": self.interception.summary() if self.interception else None,
        }


DEFAULT_POLICY = Policy()


def _rule_summary(rule: RegistryRule) -> dict[str, Any]:
    summary: dict[str, Any] = {"host": rule.host}
    if rule.pins:
        summary["pins"] = list(rule.pins)
    if rule.confirmations is not None:
        summary["confirmations"] = rule.confirmations
    if rule.approval is not None:
        summary["approval"] = rule.approval
    if rule.ca_from is not None:
        summary["caFrom"] = rule.ca_from.describe()
    if rule.ca_pem is not None:
        summary["caPEM"] = f"{rule.ca_pem.count(b'-----BEGIN CERTIFICATE-----')} certificate(s)"
    return summary


def _source_bundle(pem: str, pins: tuple[str, ...]) -> bytes | None:
    """The deterministic bundle of a source's certificates (only the pinned ones when pins
    are given); None when it holds none. Loads the X.509 stack: only called for a source
    that has content."""
    from agent.core.errors import AgentError
    from agent.core.trust import parse_pem_bundle, pem_bundle

    try:
        certs = parse_pem_bundle(pem.encode("utf-8"))
    except AgentError:
        return None
    chosen = [c for c in certs if not pins or c.sha256 in pins]
    return pem_bundle(chosen) if chosen else None
