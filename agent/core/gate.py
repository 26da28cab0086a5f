"""Pure: should this pull failure be remediated on this node, and what do we tell people?

The gate sits between `detect` and the engine. It never touches the network or the node:
it looks at the failure, whether the node opted in, and the policy, and returns a verdict
whose `reason` is one of the Event reasons fixed in DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.core.detect import PullFailure
from agent.core.hostport import HostPort
from agent.core.policy import Policy
from agent.core.reasons import Reason

if TYPE_CHECKING:  # the X.509 stack loads with the first failure it is needed for
    from agent.core.diagnosis import Diagnosis

REMEDIATE = "remediate"
DENY = "deny"
REPORT = "report"
IGNORE = "ignore"


@dataclass(frozen=True)
class Verdict:
    action: str  # remediate | deny | report | ignore
    event_reason: Reason | None  # Event reason to emit first (None: say nothing)
    message: str
    endpoint: HostPort | None = None
    registry: HostPort | None = None
    pins: tuple[str, ...] = ()
    dry_run: bool = False
    # REMEDIATE: the failing host is covered by the policy's interception CA, which alone
    # decides (no fetch-based first trust); REPORT: what a CA cannot fix, diagnosed
    interception: bool = False
    diagnosis: Diagnosis | None = None


def gate(failure: PullFailure, *, opted_in: bool, policy: Policy) -> Verdict:
    """Decide. Order matters: opt-in first (an idle node says nothing), then what can never
    be fixed by trusting a CA (diagnosed when the message says what it is), then the
    declared interception CA for the hosts it covers, then the default-deny registry
    policy."""
    if not opted_in:
        return Verdict(IGNORE, None, "node has not opted in")
    endpoint = failure.failing
    registry = failure.registry or endpoint
    image = f" pulling {failure.image}" if failure.image else ""
    if failure.kind != "unknown-authority" or endpoint is None or failure.conflicting_ca:
        return _report(failure, endpoint, registry, image)
    if policy.intercepted(endpoint) and (registry is None or policy.intercepted(registry)):
        return _intercepted(failure, endpoint, registry, image, policy)
    denied = _denied(policy, endpoint, registry)
    if denied is not None:
        return denied
    return Verdict(
        REMEDIATE,
        Reason.UNTRUSTED_REGISTRY_DETECTED,
        f"x509: certificate signed by unknown authority at {endpoint.key}{image}; "
        f"{'dry run: will show' if policy.dry_run else 'fetching the chain to install'} its CA "
        f"(policy scope {policy.scope})",
        endpoint,
        registry,
        policy.decide(endpoint).pins,
        policy.dry_run,
    )


def _intercepted(
    failure: PullFailure, endpoint: HostPort, registry: HostPort | None, image: str, policy: Policy
) -> Verdict:
    assert policy.interception is not None
    return Verdict(
        REMEDIATE,
        Reason.UNTRUSTED_REGISTRY_DETECTED,
        f"x509: certificate signed by unknown authority at {endpoint.key}{image}; it is covered "
        f"by the declared interception CA ({policy.interception.describe()}): "
        f"{'dry run: will check' if policy.dry_run else 'checking'} that the chain the "
        "runtime is shown ends at it",
        endpoint,
        registry,
        (),
        policy.dry_run,
        interception=True,
    )


def _report(
    failure: PullFailure, endpoint: HostPort | None, registry: HostPort | None, image: str
) -> Verdict:
    """A TLS failure that trusting a CA cannot fix: say what it is, install nothing."""
    from agent.core.diagnosis import diagnose  # loads the X.509 stack: only for such failures

    where = f"{endpoint.key}" if endpoint else "an unknown host"
    diagnosis = diagnose(failure)
    if diagnosis is not None:
        about = registry.key if registry is not None else where
        return Verdict(
            REPORT,
            Reason.REGISTRY_CERTIFICATE_INVALID,
            f"{'P' + image[2:] if image else 'A pull'} from registry {about} failed: "
            f"{diagnosis.summary}; nothing was installed",
            endpoint,
            registry,
            diagnosis=diagnosis,
        )
    if failure.kind == "hostname-mismatch":
        why = (
            f"TLS failure at {where}{image}: the certificate is not valid for this host name; "
            "trusting a CA cannot fix that, so nothing is installed"
        )
    elif failure.kind == "conflicting-ca" or failure.conflicting_ca:
        why = (
            f"x509 unknown authority at {where}{image}, but a different CA with the issuer's "
            "name is already trusted on this node (rotated CA or interception); not remediated, "
            "check the node's trust store"
        )
    else:
        why = (
            f"x509 failure ({failure.kind}) at {where}{image}; "
            "not a case ca-trust-agent remediates"
        )
    return Verdict(REPORT, Reason.UNTRUSTED_REGISTRY_DETECTED, why, endpoint, registry)


def _denied(policy: Policy, endpoint: HostPort, registry: HostPort | None) -> Verdict | None:
    """Default deny: both the failing host and the image's registry must be allowed."""
    decision = policy.decide(endpoint)
    if not decision.allowed:
        return Verdict(DENY, Reason.REGISTRY_NOT_ALLOWED, decision.reason, endpoint, registry)
    if registry is not None and registry != endpoint:
        reg_decision = policy.decide(registry)
        if not reg_decision.allowed:
            return Verdict(
                DENY,
                Reason.REGISTRY_NOT_ALLOWED,
                f"{endpoint.key} is allowed, but the image's registry {registry.key} is not: "
                + reg_decision.reason,
                endpoint,
                registry,
            )
    return None
