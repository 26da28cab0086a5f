"""agent.core.diagnosis: the x509 failures a CA cannot fix, said in one sentence.

The wordings are the real ones: every block of tests/fixtures/pull-errors.txt whose expect
line names a `diagnosis=` was captured from containerd 1.6.20 or 2.1.9 pulling through the
CRI from a lab registry with that defect (tests/e2e/test_pull_error_wordings_e2e.py). The
missing intermediate is invisible in the wording: the chain decides it.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from agent.core.detect import PullFailure, parse_pull_error
from agent.core.diagnosis import (
    KINDS,
    NODE_OPERATOR,
    OPERATOR_OR_OWNER,
    REGISTRY_OWNER,
    Diagnosis,
    diagnose,
)
from agent.core.hostport import HostPort
from agent.core.trust import CertInfo, cert_from_der
from lab.tls.pki import Issued, defective_chain, expired, make_leaf, make_pki

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "pull-errors.txt"


def diagnosed_blocks() -> list[tuple[str, str]]:
    """(expected diagnosis, message) for each fixture block that names one."""
    cases = []
    for block in FIXTURE.read_text(encoding="utf-8").split("\n---\n"):
        expect = re.search(r"^# expect:.* diagnosis=(\S+)", block, re.MULTILINE)
        if expect is None:
            continue
        body = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
        cases.append((expect.group(1), body.strip()))
    return cases


CAPTURED = diagnosed_blocks()


def failure_of(message: str) -> PullFailure:
    failure = parse_pull_error(message)
    assert failure is not None
    return failure


def infos(*items: Issued) -> tuple[CertInfo, ...]:
    return tuple(cert_from_der(i.der) for i in items)


def test_every_defect_was_captured_on_both_containerd_versions() -> None:
    kinds = [kind for kind, _ in CAPTURED]
    defects = {
        "expired", "not-yet-valid", "name-mismatch", "legacy-cn", "no-ip-san",
        "incompatible-usage", "conflicting-ca", "none",
    }  # fmt: skip
    assert {k: kinds.count(k) for k in defects} == dict.fromkeys(defects, 2)


@pytest.mark.parametrize(
    ("kind", "message"), CAPTURED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CAPTURED)]
)
def test_a_captured_wording_is_diagnosed_as_its_defect(kind: str, message: str) -> None:
    diagnosis = diagnose(failure_of(message))
    if kind == "none":
        assert diagnosis is None  # the plain unknown-authority wording: a CA may fix it
        return
    assert diagnosis is not None
    assert diagnosis.kind == kind
    assert diagnosis.host is not None and diagnosis.host.port == 443
    assert "cannot fix this" in diagnosis.summary or kind == "conflicting-ca"


def captured(kind: str) -> str:
    return next(message for k, message in CAPTURED if k == kind)


def test_an_expired_certificate_names_its_end_date_and_the_owner() -> None:
    message = captured("expired")
    end = re.search(r"is after (\d{4}-\d\d-\d\d)", message).group(1)  # type: ignore[union-attr]
    diagnosis = diagnose(failure_of(message))
    assert diagnosis == Diagnosis(
        "expired",
        HostPort("expired.test", 443),
        f"the certificate of expired.test:443 expired on {end}; trusting a CA cannot fix "
        "this: the registry's owner must renew it",
        REGISTRY_OWNER,
    )


def test_a_not_yet_valid_certificate_points_at_the_clock_too() -> None:
    diagnosis = diagnose(failure_of(captured("not-yet-valid")))
    assert diagnosis is not None and diagnosis.fixed_by == NODE_OPERATOR
    assert "valid only from" in diagnosis.summary and "clock" in diagnosis.summary


def test_a_name_mismatch_says_which_names_the_certificate_has() -> None:
    diagnosis = diagnose(failure_of(captured("name-mismatch")))
    assert diagnosis is not None
    assert "is valid for a.example, b.example, not name-mismatch.test" in diagnosis.summary


def test_an_ip_registry_without_an_ip_san_names_the_address() -> None:
    diagnosis = diagnose(failure_of(captured("no-ip-san")))
    assert diagnosis is not None and diagnosis.host == HostPort("198.18.99.99", 443)
    assert "by the IP address 198.18.99.99" in diagnosis.summary


def test_a_conflicting_ca_names_the_impostor_and_the_node_operator() -> None:
    diagnosis = diagnose(failure_of(captured("conflicting-ca")))
    assert diagnosis is not None and diagnosis.fixed_by == NODE_OPERATOR
    assert "'Lab Root CA'" in diagnosis.summary
    assert "x509: ECDSA verification failure" in diagnosis.summary


def test_a_missing_intermediate_is_seen_on_the_chain_and_trusting_it_would_fix_it(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path, names=("missing-intermediate.test",))
    chain = infos(*defective_chain(pki, "missing-intermediate.test", "missing-intermediate"))
    diagnosis = diagnose(failure_of(captured("none")), chain)
    assert diagnosis is not None
    assert diagnosis.kind == "missing-intermediate"
    assert diagnosis.ca_would_fix and diagnosis.fixed_by == OPERATOR_OR_OWNER
    assert "CN=Lab Intermediate CA" in diagnosis.summary


def test_a_complete_chain_or_a_self_signed_leaf_is_no_missing_intermediate(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path, names=("r.test",))
    failure = failure_of(captured("none"))
    assert diagnose(failure, infos(pki.leaf, pki.intermediate)) is None  # type: ignore[arg-type]
    assert diagnose(failure, infos(make_leaf(None, names=("r.test",)))) is None


def test_a_proxy_leaf_issued_by_the_declared_interception_ca_is_not_a_defect(
    tmp_path: Path,
) -> None:
    """A TLS-inspecting proxy sends its re-signed leaf alone: with its CA declared, that
    is the expected shape, not a missing intermediate."""
    pki = make_pki(tmp_path, names=("ghcr.io",), intermediate=False)
    failure = failure_of(captured("none"))
    assert diagnose(failure, infos(pki.leaf), declared=infos(pki.root)) is None
    assert diagnose(failure, infos(pki.leaf)) is not None


def test_validity_from_the_chain_when_the_message_has_no_times(tmp_path: Path) -> None:
    leaf = make_leaf(make_pki(tmp_path).intermediate, window=expired())
    failure = PullFailure(
        kind="expired",
        failing=HostPort("r.test"),
        image=None,
        registry=None,
        message='Get "https://r.test/v2/": x509: certificate has expired or is not yet valid',
    )
    now = dt.datetime.now(dt.UTC)
    diagnosis = diagnose(failure, infos(leaf), now=now)
    assert diagnosis is not None and diagnosis.kind == "expired"
    assert f"expired on {leaf.cert.not_valid_after_utc.date().isoformat()}" in diagnosis.summary


def test_a_plain_unknown_authority_without_a_chain_is_for_a_ca_to_fix() -> None:
    assert diagnose(failure_of(captured("none"))) is None


def test_the_kinds_are_closed() -> None:
    assert "missing-intermediate" in KINDS
    with pytest.raises(ValueError, match="unknown diagnosis kind"):
        Diagnosis("x509", None, "", REGISTRY_OWNER)


def test_the_macos_standards_wording_is_its_own_kind() -> None:
    """Go on macOS defers to the platform verifier; not seen on Linux nodes, but quoted in
    reports from developer machines pulling through a runtime there."""
    failure = failure_of(
        'Get "https://registry.test/v2/": tls: failed to verify certificate: '
        "x509: “registry.test” certificate is not standards compliant"
    )
    diagnosis = diagnose(failure)
    assert diagnosis is not None and diagnosis.kind == "not-standards-compliant"
    assert diagnosis.fixed_by == REGISTRY_OWNER
