"""Every Event reason the agent emits, once: its name (the external contract, DESIGN.md),
its type, and when it is emitted. Adding an Event reason is adding one row here.

A `Reason` is a `str` equal to its name, so it goes wherever an Event reason string does
(`recorder.node(node, r.type, r, message)`) and compares equal to the literal in tests,
alerts and `kubectl get events --field-selector reason=...`.
"""

from __future__ import annotations

from enum import StrEnum

NORMAL = "Normal"
WARNING = "Warning"


class Reason(StrEnum):
    # name = "EventReason", type, when it is emitted
    UNTRUSTED_REGISTRY_DETECTED = (
        "UntrustedRegistryDetected", WARNING,
        "a pull failed on TLS trust at a registry; says what the policy makes of it",
    )
    REGISTRY_NOT_ALLOWED = (
        "RegistryNotAllowed", WARNING,
        "the failing registry (or the image's registry) is not allowed by policy.yaml",
    )
    CA_TRUSTED = (
        "CATrusted", NORMAL,
        "a CA was installed and verified for a registry (also told to pods left to kubelet)",
    )
    CA_TRUST_FAILED = (
        "CATrustFailed", WARNING,
        "an install, removal, record update or agent step failed; nothing unverified stays",
    )
    CA_TRUST_DRY_RUN = (
        "CATrustDryRun", NORMAL, "dryRun: what would have been trusted or removed",
    )
    CONTAINER_RUNTIME_RESTARTED = (
        "ContainerRuntimeRestarted", NORMAL,
        "the runtime was restarted to reload the system trust store and answers again",
    )
    CONTAINER_RUNTIME_RESTART_DEFERRED = (
        "ContainerRuntimeRestartDeferred", NORMAL,
        "a runtime restart waits for one of the cluster-wide restart slots",
    )
    CONTAINER_RUNTIME_RESTART_REFUSED = (
        "ContainerRuntimeRestartRefused", WARNING,
        "the CA is installed but the runtime was not (or could not be) restarted",
    )
    CA_REMOVED = (
        "CARemoved", NORMAL, "a CA the policy no longer allows or declares was removed",
    )
    CA_EXPIRING_SOON = (
        "CAExpiringSoon", WARNING, "a trusted anchor expires within 30 days (or has expired)",
    )
    POLICY_INVALID = (
        "PolicyInvalid", WARNING,
        "policy.yaml is invalid, missing or deleted; the last good policy stays in force",
    )
    POD_RECYCLED = (
        "PodRecycled", NORMAL,
        "recyclePods evicted a pod stuck in back-off (Warning in a summary with failures)",
    )
    CA_TRUST_CONFLICT = (
        "CATrustConflict", WARNING,
        "this node was shown an anchor other than the one the cluster's trust record holds",
    )
    CA_TRUST_PENDING = (
        "CATrustPending", NORMAL,
        "a fetched anchor waits for more nodes to confirm it (policy confirmations)",
    )
    CA_TRUST_PENDING_APPROVAL = (
        "CATrustPendingApproval", NORMAL,
        "a fetched anchor waits for an operator's approval (policy approval: required)",
    )
    REGISTRY_CERTIFICATE_INVALID = (
        "RegistryCertificateInvalid", WARNING,
        "a registry's certificate has a defect no CA can fix (expired, other names, ...); "
        "says what and who can fix it; nothing installed",
    )
    INTERCEPTED_CHAIN_REFUSED = (
        "InterceptedChainRefused", WARNING,
        "a registry covered by policy interception presented a chain that does not end at "
        "the declared proxy CA; says what was presented; nothing installed",
    )
    CA_ROTATED = (
        "CARotated", NORMAL,
        "a new anchor was verified and the previous one, kept beside it, was removed",
    )

    type: str  # the Event type it is emitted with: Normal or Warning
    when: str  # one line: when the agent emits it

    def __new__(cls, name: str, type_: str, when: str) -> Reason:
        member = str.__new__(cls, name)
        member._value_ = name
        member.type = type_
        member.when = when
        return member


__all__ = ["NORMAL", "WARNING", "Reason"]
