"""The remediation of a registry covered by the policy's interception CA.

The operator's declaration is the trust decision: no first-trust record, no confirmations.
What this node checks is that the chain the runtime is shown, fetched through the
runtime's own proxy, ends at the declared CA (agent.core.interception); then that CA is
installed for the image's registry like a declared CA, with the runtime's pull as the
verdict. A chain that ends elsewhere is refused with what was presented
(`InterceptedChainRefused`), and nothing is installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from agent.cluster.controller.interfaces import Installer, Metrics, PodRef, Recorder
from agent.core.errors import AgentError, TrustError
from agent.core.flights import Flights
from agent.core.policy import Policy, Resolved
from agent.core.reasons import Reason
from agent.core.remediation import InstallRequest
from agent.node.engine import Engine
from agent.node.interception import ChainFetcher, fetch_through, runtime_route

log = logging.getLogger("agent.cluster.controller")


class InterceptionStep:
    """Check the chain against the declared proxy CA, then install it through `installer`."""

    def __init__(
        self,
        *,
        node_name: str,
        engine: Engine,
        recorder: Recorder,
        flights: Flights,
        metrics: Metrics | None = None,
        fetch: ChainFetcher | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._node_name = node_name
        self._engine = engine
        self._recorder = recorder
        self._flights = flights
        self._metrics = metrics
        self._fetch = fetch or fetch_through
        self._env = env
        self._clock = clock

    def remediate(
        self,
        installer: Installer,
        req: InstallRequest,
        pod: PodRef | None,
        key: str,
        policy: Policy,
        sources: Resolved,
    ) -> None:
        """`req` names the failing endpoint, its registry, the image and the settings."""
        from agent.core.interception import match_declared  # the X.509 stack: on first use
        from agent.core.trust import parse_pem_bundle

        interception = policy.interception
        assert interception is not None
        bundle = interception.bundle(sources)
        declared = parse_pem_bundle(bundle) if bundle else ()
        if not declared and not interception.spki:
            self._failed(
                pod,
                key,
                f"Could not check {req.endpoint.key} against the interception CA: "
                f"{interception.describe()} holds no certificate (yet); nothing was installed",
            )
            return
        route = runtime_route(
            self._engine.fs, self._engine.runtimes, req.endpoint, self._environment()
        )
        proxy = route.choice.proxy
        try:
            chain = tuple(self._fetch(req.endpoint, proxy, req.timeout))
            analysis = match_declared(
                chain, req.endpoint, declared=declared, spki=interception.spki, now=self._clock()
            )
        except TrustError as exc:
            self._refused(pod, key, f"{exc} (fetched as {route.describe()})")
            return
        except AgentError as exc:
            self._failed(
                pod,
                key,
                f"Could not fetch the chain of {req.endpoint.key} as {route.describe()} "
                f"({exc.kind}): {exc}; nothing was installed",
            )
            return
        installer.install(
            replace(
                req,
                ca_pem=analysis.anchor.pem,
                source="interception",
                proxy=proxy or "",  # "": direct, never the agent's own proxy by default
                chain=chain,
                route=route.describe(),
                # for the runtime only: the OS store (every client on the node) only when
                # the policy asks for system scope, never as auto's fallback
                scope="system" if req.scope == "system" else "registry",
            ),
            pod,
            key,
        )

    def _environment(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def _refused(self, pod: PodRef | None, key: str, message: str) -> None:
        log.warning("interception: %s", message)
        self._report(pod, Reason.INTERCEPTED_CHAIN_REFUSED, message)
        self._flights.failed(key)
        if self._metrics:
            self._metrics.record_remediation("interception-refused", 0.0)

    def _failed(self, pod: PodRef | None, key: str, message: str) -> None:
        delay = self._flights.failed(key)
        self._report(pod, Reason.CA_TRUST_FAILED, f"{message}; next attempt in {delay:.0f}s")
        if self._metrics:
            self._metrics.record_remediation("failed", 0.0)

    def _report(self, pod: PodRef | None, reason: Reason, message: str) -> None:
        self._recorder.node(self._node_name, reason.type, reason, message)
        if pod is not None:
            self._recorder.pod(pod.namespace, pod.name, pod.uid, reason.type, reason, message)



def standing_requests(policy: Policy, sources: Resolved, engine: Engine) -> list[InstallRequest]:
    """The proxy CA placed before any pull fails: `certs.d/_default/` and each existing
    covered per-registry directory (agent.node.interception.standing_targets), declared
    (no fetch), registry scope only. Several declared certificates (a rotation): the first,
    by fingerprint; the others reach a registry through its own failure."""
    from agent.core.trust import parse_pem_bundle
    from agent.node.interception import standing_targets

    interception = policy.interception
    bundle = interception.bundle(sources) if interception is not None else None
    if interception is None or not bundle:
        return []
    anchor = parse_pem_bundle(bundle)[0]
    targets = standing_targets(
        engine.fs,
        engine.runtimes,
        policy.intercepted,
        everything=interception.covers_everything,
        managed=frozenset(engine.entries()),
    )
    options = replace(policy.install_options, scope="registry")
    return [
        InstallRequest(
            endpoint=target, options=options, ca_pem=anchor.pem, source="interception"
        )
        for target in targets
    ]
