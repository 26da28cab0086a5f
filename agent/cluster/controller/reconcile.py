"""The controller's declarative side: policy sync and the periodic reconcile.

Runs on the worker only. `sync_policy` applies the caPEM and caFrom entries policy.yaml
declares and removes the CAs it no longer allows; `reconcile` also repairs ledger entries
whose files or runtime restart went missing and warns about anchors close to expiry. Both
end by publishing the trusted registries on the Node annotation and in the metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from agent.cluster import oplog
from agent.cluster.controller.interfaces import NORMAL, WARNING
from agent.core.errors import AgentError
from agent.core.hostport import parse_hostport
from agent.core.ledger_entry import LedgerEntry
from agent.core.policy import Policy, Resolved
from agent.node.engine import InstallRequest

if TYPE_CHECKING:
    from agent.cluster.controller.loop import Controller

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")

EXPIRY_WARNING = timedelta(days=30)


class PolicySync:
    """The policy-sync and reconcile part of a `Controller`: installs go through the
    controller's remediation part, so they are reported and published the same way."""

    def __init__(self, ctl: Controller) -> None:
        self._c = ctl

    def sync_policy(self) -> None:
        """Apply declared caPEM entries; remove what the policy no longer allows."""
        c = self._c
        with c._lock:
            opted_in, policy, loaded = c.opted_in, c.policy, c.policy_loaded
            sources = c.ca_sources
        if not opted_in:
            return
        try:
            c.engine.recover()
        except AgentError as exc:
            log.warning("ledger recovery failed: %s", exc)
        # caFrom sources count once the cluster side has listed them; a changed bundle
        # installs over the old anchor (a rotation), a vanished one is removed below.
        for endpoint, pem, pins in policy.declared(sources):
            req = InstallRequest(
                endpoint=endpoint,
                scope=policy.scope,
                restart=policy.restart,
                pins=pins,
                ca_pem=pem,
                source="policy",
                dry_run=policy.dry_run,
                allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
                hosts_toml=policy.hosts_toml,
            )
            c._remediation.install(req, None, endpoint.key)
        if loaded:
            self._remove_delisted(policy, sources)
        self.publish()

    def _remove_delisted(self, policy: Policy, sources: Resolved) -> None:
        c = self._c
        declared = {hp.key: pem for hp, pem, _ in policy.declared(sources)}
        pending = policy.pending(sources)
        for key, entry in sorted(self.entries().items()):
            if entry.endpoint in pending:
                continue  # its source is still being listed: not known to be gone
            reason = _delisted_reason(entry, policy, declared)
            if reason is None:
                continue
            if policy.dry_run:
                c.recorder.node(
                    c.node_name,
                    NORMAL,
                    "CATrustDryRun",
                    f"Dry run: would remove the CA for {key} ({reason})",
                )
                continue
            try:
                result = c.engine.remove(
                    parse_hostport(key),
                    restart=policy.restart,
                    allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
                )
            except AgentError as exc:
                oplog.removed(c.node_name, key, entry.registry, entry.sha256,
                              entry.anchor_subject, entry.scope, reason, error=str(exc))
                c.recorder.node(
                    c.node_name,
                    WARNING,
                    "CATrustFailed",
                    f"Could not remove the CA for {key}: {exc}",
                )
                continue
            oplog.removed(c.node_name, key, entry.registry, entry.sha256,
                          entry.anchor_subject, entry.scope, reason)
            c.recorder.node(
                c.node_name,
                NORMAL,
                "CARemoved",
                f"Removed the CA {entry.anchor_subject} ({entry.sha256}) for {key}: "
                f"{reason}; {result.next_step}",
            )

    def reconcile(self) -> None:
        """Periodic: converge half-done work, re-apply policy, recreate deleted anchors,
        warn about anchors that expire within 30 days."""
        c = self._c
        with c._lock:
            opted_in = c.opted_in
        if not opted_in:
            return
        self.sync_policy()
        now = c.clock()
        for key, entry in sorted(self.entries().items()):
            if entry.state == "installed" and not all(
                c.engine.fs.exists(f) for f in entry.files
            ):
                self.repair(key, entry)
            not_after = _parse_time(entry.not_after)
            if not_after is not None and not_after - now < EXPIRY_WARNING:
                days = (not_after - now).days
                c.recorder.node(
                    c.node_name,
                    WARNING,
                    "CAExpiringSoon",
                    f"The CA {entry.anchor_subject} ({entry.sha256}) trusted for {key} "
                    + (f"expires in {days} days" if days >= 0 else f"expired {-days} days ago")
                    + f" ({entry.not_after}); renew it at the registry",
                )
        self.publish()

    def repair(self, key: str, entry: LedgerEntry) -> None:
        """Put an entry back the way it was installed: a deleted anchor file is re-created,
        an owed runtime restart is done. Declared CAs come from the policy; fetched ones are
        fetched again, pinned to the anchor the ledger recorded."""
        c = self._c
        log.warning("re-applying %s (state on disk or runtime differs from the ledger)", key)
        with c._lock:
            policy, sources = c.policy, c.ca_sources
        declared = {hp.key: pem for hp, pem, _ in policy.declared(sources)}
        pem = declared.get(key) if entry.source == "policy" else None
        req = InstallRequest(
            endpoint=parse_hostport(key),
            registry=parse_hostport(entry.registry),
            scope=entry.scope,
            restart=policy.restart,
            ca_pem=pem,
            source="policy" if pem is not None else "fetched",
            pins=(entry.sha256,) if pem is None else (),
            allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
            hosts_toml=policy.hosts_toml,
        )
        c._remediation.install(req, None, key)

    def entries(self) -> dict[str, LedgerEntry]:
        c = self._c
        try:
            return c.engine.entries()
        except AgentError as exc:
            c.recorder.node(c.node_name, WARNING, "CATrustFailed", f"ledger unreadable: {exc}")
            return {}

    def publish(self) -> None:
        c = self._c
        entries = self.entries()
        installed = sorted(k for k, e in entries.items() if e.state == "installed")
        try:
            c.cluster.set_trusted_registries(c.node_name, installed)
        except Exception as exc:
            log.warning("cannot update the node annotation: %s", exc)
        if c.metrics:
            times = {
                k: t for k, e in entries.items() if (t := _parse_time(e.not_after)) is not None
            }
            c.metrics.set_trusted(times)


def _delisted_reason(
    entry: LedgerEntry, policy: Policy, declared: Mapping[str, bytes]
) -> str | None:
    try:
        endpoint = parse_hostport(entry.endpoint)
        registry = parse_hostport(entry.registry)
    except AgentError:
        return "its ledger key is not a valid host:port"
    if entry.source == "policy" and entry.endpoint not in declared:
        rule = policy.rule_for(endpoint)
        if rule is not None and rule.ca_from is not None:
            return f"its CA source ({rule.ca_from.describe()}) is gone or holds no certificate"
        return "its caPEM entry was removed from policy.yaml"
    if not policy.decide(endpoint).allowed:
        return f"{endpoint.key} is no longer allowed by policy.yaml"
    if registry != endpoint and not policy.decide(registry).allowed:
        return f"the registry {registry.key} is no longer allowed by policy.yaml"
    return None


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
