"""agent.core.reasons: every Event reason of the external contract (DESIGN.md), once, with
the type it is emitted with and a one-line "when"."""

from __future__ import annotations

from agent.core.reasons import NORMAL, WARNING, Reason

# DESIGN.md's list, as an operator's alert or `kubectl get events` filter relies on it
CONTRACT = {
    "UntrustedRegistryDetected": WARNING,
    "RegistryNotAllowed": WARNING,
    "CATrusted": NORMAL,
    "CATrustFailed": WARNING,
    "CATrustDryRun": NORMAL,
    "ContainerRuntimeRestarted": NORMAL,
    "ContainerRuntimeRestartDeferred": NORMAL,
    "ContainerRuntimeRestartRefused": WARNING,
    "CARemoved": NORMAL,
    "CAExpiringSoon": WARNING,
    "PolicyInvalid": WARNING,
    "PodRecycled": NORMAL,
    "CATrustConflict": WARNING,
    "CATrustPending": NORMAL,
    "CATrustPendingApproval": NORMAL,
    "CARotated": NORMAL,
    # issue 19: what a CA cannot fix, and a proxy's CA that does not match what was shown
    "RegistryCertificateInvalid": WARNING,
    "InterceptedChainRefused": WARNING,
}


def test_the_reasons_are_exactly_the_contract_s_with_their_types() -> None:
    assert {str(r): r.type for r in Reason} == CONTRACT


def test_a_reason_is_the_string_an_event_carries() -> None:
    assert Reason.CA_TRUSTED == "CATrusted"
    assert f"{Reason.POLICY_INVALID}" == "PolicyInvalid"
    assert Reason("CARotated") is Reason.CA_ROTATED


def test_every_reason_says_when_it_is_emitted_in_one_line() -> None:
    for reason in Reason:
        assert reason.when and "\n" not in reason.when, reason
