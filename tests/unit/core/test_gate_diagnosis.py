"""agent.core.gate: every captured wording a CA cannot fix becomes a RegistryCertificateInvalid
verdict (one sentence, nothing installed); the plain unknown-authority wording does not, and a
host covered by the declared interception CA goes to the interception step.

The wordings are tests/fixtures/pull-errors.txt's, captured from containerd 1.6.20 and 2.1.9.
"""

from __future__ import annotations

import pytest

from agent.core import gate as g
from agent.core.detect import parse_pull_error
from agent.core.policy import parse_policy
from agent.core.reasons import Reason
from tests.unit.core.test_diagnosis import CAPTURED

EVERYTHING_ALLOWED = parse_policy("registries:\n  - host: '*'\n")
PROXY_SPKI = "interception: {spki: ['sha256:" + "AB" * 32 + "']}\n"


@pytest.mark.parametrize(
    ("kind", "message"), CAPTURED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CAPTURED)]
)
def test_a_defect_no_ca_fixes_is_reported_as_registry_certificate_invalid(
    kind: str, message: str
) -> None:
    failure = parse_pull_error(message)
    assert failure is not None
    verdict = g.gate(failure, opted_in=True, policy=EVERYTHING_ALLOWED)
    if kind == "none":  # the plain unknown-authority wording: trusting a CA may fix it
        assert verdict.action == g.REMEDIATE and verdict.diagnosis is None
        return
    assert (verdict.action, verdict.event_reason) == (
        g.REPORT,
        Reason.REGISTRY_CERTIFICATE_INVALID,
    )
    assert verdict.diagnosis is not None and verdict.diagnosis.kind == kind
    assert verdict.message.endswith("; nothing was installed")
    assert f"from registry {failure.registry or failure.failing}" in verdict.message


@pytest.mark.parametrize(
    ("kind", "message"), CAPTURED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CAPTURED)]
)
def test_a_covered_host_goes_to_the_interception_step_only_for_unknown_authority(
    kind: str, message: str
) -> None:
    failure = parse_pull_error(message)
    assert failure is not None
    verdict = g.gate(failure, opted_in=True, policy=parse_policy(PROXY_SPKI))
    if kind == "none":
        assert verdict.action == g.REMEDIATE and verdict.interception
        assert "covered by the declared interception CA (SPKI sha256:ABAB" in verdict.message
    else:
        assert verdict.event_reason == Reason.REGISTRY_CERTIFICATE_INVALID
