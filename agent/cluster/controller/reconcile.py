"""The controller's declarative side: policy sync and the periodic reconcile.

Runs on the worker only. `sync_policy` applies the caPEM and caFrom entries policy.yaml
declares and removes the CAs it no longer allows; `reconcile` also repairs ledger entries
whose files or runtime restart went missing and warns about anchors close to expiry. Its
installs go through the `Installer` it is given (the remediation's last step), so they are
reported the same way; both end by publishing the trusted registries."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from agent.cluster import oplog
from agent.cluster.controller.intercept import standing_requests
from agent.cluster.controller.interfaces import Installer, Recorder
from agent.cluster.controller.publish import Publisher, parse_time
from agent.cluster.controller.state import ControllerState
from agent.core.errors import AgentError
from agent.core.hostport import parse_hostport
from agent.core.ledger_entry import LedgerEntry
from agent.core.policy import Policy, Resolved
from agent.core.reasons import Reason
from agent.node.engine import Engine, InstallRequest

# the name the controller has always logged under: log pipelines filter on it
log = logging.getLogger("agent.cluster.controller")

EXPIRY_WARNING = timedelta(days=30)


class PolicySync:
    """The policy-sync and reconcile step, with what it acts through given at construction."""

    def __init__(
        self,
        state: ControllerState,
        *,
        node_name: str,
        engine: Engine,
        recorder: Recorder,
        installer: Installer,
        publisher: Publisher,
    ) -> None:
        self._state = state
        self._node_name = node_name
        self._engine = engine
        self._recorder = recorder
        self._installer = installer
        self._publisher = publisher

    def sync_policy(self) -> None:
        """Apply declared caPEM entries; remove what the policy no longer allows."""
        snap = self._state.snapshot()
        if not snap.opted_in:
            return
        policy, sources = snap.policy, snap.ca_sources
        try:
            self._engine.recover()
        except AgentError as exc:
            log.warning("ledger recovery failed: %s", exc)
        # caFrom sources count once the cluster side has listed them; a changed bundle
        # installs over the old anchor (a rotation), a vanished one is removed below.
        for endpoint, pem, pins in policy.declared(sources):
            req = InstallRequest(
                endpoint=endpoint,
                options=policy.install_options,
                pins=pins,
                ca_pem=pem,
                source="policy",
            )
            self._installer.install(req, None, endpoint.key)
        if snap.policy_loaded:
            # a proxy's CA where containerd reads it before any pull fails (_default, and
            # the covered registries that have a directory of their own)
            for req in standing_requests(policy, sources, self._engine):
                self._installer.install(req, None, req.endpoint.key)
            self._remove_delisted(policy, sources)
        self._publisher.publish()

    def _remove_delisted(self, policy: Policy, sources: Resolved) -> None:
        declared = {hp.key: pem for hp, pem, _ in policy.declared(sources)}
        pending = policy.pending(sources)
        proxy_ca = _interception_shas(policy, sources)
        for key, entry in sorted(self._publisher.entries().items()):
            if entry.endpoint in pending:
                continue  # its source is still being listed: not known to be gone
            if entry.source == "interception":
                reason = _interception_reason(entry, policy, sources, proxy_ca)
            else:
                reason = _delisted_reason(entry, policy, declared)
            if reason is None:
                continue
            if policy.dry_run:
                self._event(
                    Reason.CA_TRUST_DRY_RUN, f"Dry run: would remove the CA for {key} ({reason})"
                )
                continue
            try:
                result = self._engine.remove(
                    parse_hostport(key),
                    restart=policy.restart,
                    allow_docker_restart_without_live_restore=policy.allow_docker_restart_without_live_restore,
                )
            except AgentError as exc:
                oplog.removed(self._node_name, key, entry.registry, entry.sha256,
                              entry.anchor_subject, entry.scope, reason, error=str(exc))
                self._event(Reason.CA_TRUST_FAILED, f"Could not remove the CA for {key}: {exc}")
                continue
            oplog.removed(self._node_name, key, entry.registry, entry.sha256,
                          entry.anchor_subject, entry.scope, reason)
            self._event(
                Reason.CA_REMOVED,
                f"Removed the CA {entry.anchor_subject} ({entry.sha256}) for {key}: "
                f"{reason}; {result.next_step}",
            )

    def reconcile(self, now: datetime) -> None:
        """Periodic: converge half-done work, re-apply policy, recreate deleted anchors,
        warn about anchors that expire within 30 days of `now`."""
        if not self._state.opted_in:
            return
        self.sync_policy()
        for key, entry in sorted(self._publisher.entries().items()):
            if entry.state == "installed" and not all(
                self._engine.fs.exists(f) for f in entry.files
            ):
                self.repair(key, entry)
            not_after = parse_time(entry.not_after)
            if not_after is not None and not_after - now < EXPIRY_WARNING:
                days = (not_after - now).days
                self._event(
                    Reason.CA_EXPIRING_SOON,
                    f"The CA {entry.anchor_subject} ({entry.sha256}) trusted for {key} "
                    + (f"expires in {days} days" if days >= 0 else f"expired {-days} days ago")
                    + f" ({entry.not_after}); renew it at the registry",
                )
        self._publisher.publish()

    def repair(self, key: str, entry: LedgerEntry) -> None:
        """Put an entry back the way it was installed: a deleted anchor file is re-created,
        an owed runtime restart is done. Declared CAs come from the policy; fetched ones are
        fetched again, pinned to the anchor the ledger recorded."""
        log.warning("re-applying %s (state on disk or runtime differs from the ledger)", key)
        snap = self._state.snapshot()
        policy = snap.policy
        declared = {hp.key: pem for hp, pem, _ in policy.declared(snap.ca_sources)}
        pem = declared.get(key) if entry.source == "policy" else None
        if entry.source == "interception":
            self._repair_interception(key, entry)
            return
        # as installed: the ledger's scope, never a dry run; the rest from the policy now
        options = replace(policy.install_options, scope=entry.scope, dry_run=False)
        req = InstallRequest(
            endpoint=parse_hostport(key),
            registry=parse_hostport(entry.registry),
            options=options,
            ca_pem=pem,
            source="policy" if pem is not None else "fetched",
            pins=(entry.sha256,) if pem is None else (),
        )
        self._installer.install(req, None, key)

    def _repair_interception(self, key: str, entry: LedgerEntry) -> None:
        """The declared proxy CA again, for the same registry, fetched and verified the way
        the runtime connects (its proxy)."""
        from agent.core.trust import parse_pem_bundle
        from agent.node.interception import runtime_route

        snap = self._state.snapshot()
        interception = snap.policy.interception
        bundle = interception.bundle(snap.ca_sources) if interception else None
        anchor = next(
            (c for c in parse_pem_bundle(bundle or b"") if c.sha256 == entry.sha256), None
        )
        if anchor is None:
            return  # no longer declared: the policy sync removes it
        endpoint = parse_hostport(key)
        route = runtime_route(self._engine.fs, self._engine.runtimes, endpoint, os.environ)
        options = replace(snap.policy.install_options, scope=entry.scope, dry_run=False)
        req = InstallRequest(
            endpoint=endpoint,
            registry=parse_hostport(entry.registry),
            options=options,
            ca_pem=anchor.pem,
            source="interception",
            proxy=route.choice.proxy or "",
            route=route.describe(),
        )
        self._installer.install(req, None, key)

    def repair_entry(self, key: str) -> None:
        """An owed step of one ledger entry (a runtime restart retried after a back-off)."""
        entry = self._publisher.entries().get(key)
        if entry is not None:
            self.repair(key, entry)

    def _event(self, reason: Reason, message: str) -> None:
        self._recorder.node(self._node_name, reason.type, reason, message)


def _interception_shas(policy: Policy, sources: Resolved) -> frozenset[str] | None:
    """The declared proxy CA certificates' fingerprints; None when they cannot be told
    (an `spki` declaration, or a caFrom source not listed yet): nothing removed for that."""
    interception = policy.interception
    if interception is None or interception.spki:
        return None
    if interception.ca_from is not None and interception.ca_from not in sources:
        return None
    bundle = interception.bundle(sources)
    if not bundle:
        return frozenset()
    from agent.core.trust import parse_pem_bundle

    return frozenset(c.sha256 for c in parse_pem_bundle(bundle))


def _interception_reason(
    entry: LedgerEntry, policy: Policy, sources: Resolved, shas: frozenset[str] | None
) -> str | None:
    """Why an installed proxy CA must go, or None to keep it."""
    if policy.interception is None:
        return "policy.yaml no longer declares an interception CA"
    try:
        endpoint = parse_hostport(entry.endpoint)
        registry = parse_hostport(entry.registry)
    except AgentError:
        return "its ledger key is not a valid host:port"
    # certs.d/_default: only while the CA covers every registry
    if endpoint.host == "_default" and not policy.interception.covers_everything:
        return "policy.yaml interception no longer covers every registry (hosts or except)"
    for hp in (endpoint, registry):
        if not policy.intercepted(hp):
            return f"{hp.key} is no longer covered by policy.yaml interception"
    if shas is not None and entry.sha256 not in shas:
        return f"the declared interception CA ({policy.interception.describe()}) changed"
    return None


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
