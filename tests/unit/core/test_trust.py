"""agent.core.trust: which certificate becomes the anchor, and every reason to refuse one.

All certificates are real ones from lab.tls.pki (a private CA like an operator's); nothing
here opens a socket.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.errors import InputError, TrustError
from agent.core.hostport import HostPort
from agent.core.pins import normalize_pin
from agent.core.trust import (
    CertInfo,
    analyze,
    analyze_with_anchor,
    cert_from_der,
    check_anchor_only,
    choose_anchor,
    parse_pem_bundle,
    pem_bundle,
)
from lab.tls.pki import PKI, Issued, expired, make_ca, make_leaf, make_pki, not_yet_valid

NOW = dt.datetime.now(dt.UTC)
REGISTRY = HostPort("registry.test", 5443)


def infos(*items: Issued) -> tuple[CertInfo, ...]:
    return tuple(cert_from_der(i.der) for i in items)


def presented(pki: PKI, *, with_root: bool = False) -> tuple[CertInfo, ...]:
    """What a server configured with this PKI sends: leaf, intermediate (, root)."""
    certs = [pki.leaf] if pki.intermediate is None else [pki.leaf, pki.intermediate]
    if with_root:
        certs.append(pki.root)
    return infos(*certs)


def trust_error(
    kind: str, chain: Sequence[CertInfo], target: HostPort = REGISTRY, pins: Sequence[str] = ()
) -> TrustError:
    """analyze() must refuse `chain` with this kind; returns the error for its message."""
    with pytest.raises(TrustError) as caught:
        analyze(chain, target, now=NOW, pins=pins)
    assert caught.value.kind == kind, caught.value.message
    return caught.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), names=("registry.test", "*.apps.test"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A second, unrelated CA with the same names."""
    return make_pki(tmp_path_factory.mktemp("other"), names=("registry.test",))


# Three unrelated certificates for property tests (hypothesis wants no function fixtures).
_BUNDLE_POOL = (
    cert_from_der(make_ca("Pool A").der),
    cert_from_der(make_ca("Pool B").der),
    cert_from_der(make_leaf(None, names=("pool.test",)).der),
)


# --- CertInfo ------------------------------------------------------------------------


def test_cert_info_describes_the_certificate(pki: PKI) -> None:
    leaf, inter = presented(pki)
    assert leaf.subject == "CN=registry.test,O=ca-trust-agent lab"
    assert leaf.issuer == inter.subject == "CN=Lab Intermediate CA,O=ca-trust-agent lab"
    assert leaf.sha256 == pki.leaf.sha256
    assert leaf.sha256.startswith("sha256:") and len(leaf.sha256) == 7 + 64
    assert leaf.sha256[7:] == leaf.sha256[7:].upper()
    assert leaf.san_dns == ("registry.test", "*.apps.test") and leaf.san_ip == ()
    assert not leaf.is_ca and not leaf.self_signed
    assert inter.is_ca and not inter.self_signed
    assert leaf.not_before.tzinfo is not None and leaf.not_before < NOW < leaf.not_after
    assert int(leaf.serial, 16) == pki.leaf.cert.serial_number
    assert leaf.der == pki.leaf.der
    assert leaf.pem == pki.leaf.pem


def test_root_is_self_signed_and_a_ca(pki: PKI) -> None:
    (root,) = infos(pki.root)
    assert root.self_signed and root.is_ca and root.subject == root.issuer


def test_ip_sans_are_canonical_strings(tmp_path: Path) -> None:
    p = make_pki(tmp_path, names=(), ips=("127.0.0.1", "::0001"))
    assert presented(p)[0].san_ip == ("127.0.0.1", "::1")


def test_same_subject_and_issuer_is_not_self_signed_without_its_own_signature() -> None:
    """A name match alone does not make a root: the signature must verify with its key."""
    impostor_issuer = make_ca("Lab Root CA")  # same name as a real root, different key
    fake = make_ca("Lab Root CA", issuer=impostor_issuer)
    (info,) = infos(fake)
    assert info.subject == info.issuer
    # signed by the impostor's key, so it checks against the impostor, not itself
    assert not info.self_signed


def test_cert_from_der_rejects_garbage() -> None:
    with pytest.raises(TrustError) as caught:
        cert_from_der(b"\x30\x03\x02\x01\x00")
    assert caught.value.kind == "malformed"


# --- PEM parsing ---------------------------------------------------------------------


def test_bundle_is_parsed_in_file_order(pki: PKI) -> None:
    parsed = parse_pem_bundle(pki.leaf.pem + pki.intermediate.pem + pki.root.pem)  # type: ignore[union-attr]
    assert [c.sha256 for c in parsed] == [
        pki.leaf.sha256,
        pki.intermediate.sha256,  # type: ignore[union-attr]
        pki.root.sha256,
    ]


def test_duplicates_in_a_bundle_are_dropped(pki: PKI) -> None:
    parsed = parse_pem_bundle(pki.root.pem + pki.leaf.pem + pki.root.pem)
    assert [c.sha256 for c in parsed] == [pki.root.sha256, pki.leaf.sha256]


def test_private_key_block_is_rejected_never_skipped(pki: PKI) -> None:
    with pytest.raises(TrustError) as caught:
        parse_pem_bundle(pki.root.pem + pki.leaf.key_pem)
    assert caught.value.kind == "malformed"
    assert "PRIVATE KEY" in caught.value.message


def test_any_non_certificate_block_is_rejected(pki: PKI) -> None:
    csr = b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(TrustError, match="CERTIFICATE REQUEST") as caught:
        parse_pem_bundle(pki.root.pem + csr)
    assert caught.value.kind == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is not a certificate\n",
        b"\x00\x01\x02\xff" * 50,
        b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMIIB\n",
    ],
    ids=["empty", "text", "binary", "bad-base64", "not-der", "truncated"],
)
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(TrustError) as caught:
        parse_pem_bundle(data)
    assert caught.value.kind == "malformed"


def test_more_certificates_than_the_limit_are_refused(pki: PKI) -> None:
    with pytest.raises(TrustError, match="more than the 2") as caught:
        parse_pem_bundle(pki.leaf.pem + pki.root.pem + pki.root.pem, max_certs=2)
    assert caught.value.kind == "malformed"


def test_text_around_blocks_is_ignored_like_openssl(pki: PKI) -> None:
    data = b"# my registry CA\nsubject=CN=Lab Root CA\n" + pki.root.pem + b"\n\n"
    assert parse_pem_bundle(data)[0].sha256 == pki.root.sha256


def test_crlf_pem_is_accepted(pki: PKI) -> None:
    assert parse_pem_bundle(pki.root.pem.replace(b"\n", b"\r\n"))[0].sha256 == pki.root.sha256


def test_a_single_der_certificate_is_accepted(pki: PKI) -> None:
    assert parse_pem_bundle(pki.root.der)[0].sha256 == pki.root.sha256


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_trust_error(data: bytes) -> None:
    try:
        parse_pem_bundle(data)
    except TrustError as exc:
        assert exc.kind == "malformed"


# cryptography warns (rightly) about the negative serial numbers some corruptions produce
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_corrupted_pem_only_ever_raises_trust_error(position: int, byte: int) -> None:
    """One byte changed anywhere in a valid PEM: parsed or refused, never a crash."""
    pem = bytearray(_BUNDLE_POOL[0].pem)
    pem[position % len(pem)] = byte
    try:
        parse_pem_bundle(bytes(pem))
    except TrustError as exc:
        assert exc.kind == "malformed"


# --- deterministic bundles -----------------------------------------------------------


def test_pem_bundle_is_deterministic_whatever_the_order_and_duplicates(pki: PKI) -> None:
    leaf, inter, root = presented(pki, with_root=True)
    one = pem_bundle([root, inter])
    two = pem_bundle([inter, root, inter, root])
    assert one == two
    assert one.endswith(b"-----\n") and not one.endswith(b"\n\n") and b"\r" not in one
    expected_order = sorted([root.sha256, inter.sha256])
    assert [c.sha256 for c in parse_pem_bundle(one)] == expected_order
    assert pem_bundle([leaf]) == leaf.pem


@settings(max_examples=50, deadline=None)
@given(picks=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=8))
def test_pem_bundle_depends_only_on_the_set_of_certificates(picks: list[int]) -> None:
    """Any order, any duplication: the same set gives the same bytes."""
    pool = _BUNDLE_POOL
    chosen = [pool[i] for i in picks]
    assert pem_bundle(chosen) == pem_bundle(
        sorted({c.sha256: c for c in chosen}.values(), key=lambda c: c.subject)
    )


def test_pem_bundle_round_trips_exact_der(pki: PKI) -> None:
    chain = presented(pki, with_root=True)
    again = parse_pem_bundle(pem_bundle(chain))
    assert {c.der for c in again} == {c.der for c in chain}


# --- pins ----------------------------------------------------------------------------

HEX = "3F1A" * 16


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{HEX}",
        f"SHA256:{HEX.lower()}",
        HEX,
        ":".join(HEX[i : i + 2] for i in range(0, 64, 2)),
        f"  sha256:{HEX}\n",
    ],
    ids=["canonical", "lower", "bare", "openssl-colons", "whitespace"],
)
def test_pins_are_normalized(text: str) -> None:
    assert normalize_pin(text) == f"sha256:{HEX}"


@pytest.mark.parametrize("text", ["", "sha256:", "sha1:" + HEX, HEX[:-2], HEX + "00", "Z" * 64])
def test_bad_pins_are_input_errors(text: str) -> None:
    with pytest.raises(InputError):
        normalize_pin(text)


# --- anchor choice -------------------------------------------------------------------


def test_chain_without_root_anchors_at_the_topmost_ca(pki: PKI) -> None:
    chain = presented(pki)
    result = analyze(chain, REGISTRY, now=NOW)
    assert result.anchor == chain[1]
    assert (result.anchor_index, result.reason) == (1, "topmost CA")
    assert result.chain == chain and result.target == REGISTRY


def test_server_sending_its_root_anchors_at_the_root(pki: PKI) -> None:
    chain = presented(pki, with_root=True)
    result = analyze(chain, REGISTRY, now=NOW)
    assert result.anchor.sha256 == pki.root.sha256
    assert (result.anchor_index, result.reason) == (2, "root sent")


def test_out_of_order_chain_still_anchors_and_verifies(pki: PKI) -> None:
    leaf, inter, root = presented(pki, with_root=True)
    result = analyze((leaf, root, inter), REGISTRY, now=NOW)
    assert result.anchor == root and result.anchor_index == 1


def test_leaf_directly_under_a_root_that_was_sent(tmp_path: Path) -> None:
    p = make_pki(tmp_path, intermediate=False)
    result = analyze(infos(p.leaf, p.root), REGISTRY, now=NOW)
    assert result.reason == "root sent"


@pytest.mark.parametrize("leaf_is_ca", [False, True], ids=["plain", "openssl-req-x509-style"])
def test_self_signed_leaf_is_its_own_anchor(tmp_path: Path, leaf_is_ca: bool) -> None:
    p = make_pki(tmp_path, self_signed_leaf=True, leaf_is_ca=leaf_is_ca)
    chain = infos(p.leaf)
    result = analyze(chain, REGISTRY, now=NOW)
    assert (result.anchor, result.anchor_index, result.reason) == (chain[0], 0, "self-signed leaf")


def test_lone_leaf_from_a_ca_is_refused(pki: PKI) -> None:
    err = trust_error("leaf-not-self-signed", infos(pki.leaf))
    assert "Lab Intermediate CA" in err.message and "--ca-file" in err.message


def test_empty_chain_is_malformed() -> None:
    trust_error("malformed", ())


def test_choose_anchor_does_not_validate(pki: PKI) -> None:
    """Choosing is structural; validation is analyze's job."""
    chain = presented(pki, with_root=True)
    assert choose_anchor(chain)[1:] == (2, "root sent")


# --- names ---------------------------------------------------------------------------


def test_wrong_host_name_is_a_hostname_mismatch_naming_both(pki: PKI) -> None:
    err = trust_error("hostname-mismatch", presented(pki), HostPort("other.test"))
    assert err.message == (
        "certificate for other.test is valid for registry.test, *.apps.test, not other.test"
    )


def test_wildcard_covers_exactly_one_label(pki: PKI) -> None:
    analyze(presented(pki), HostPort("shop.apps.test"), now=NOW)
    trust_error("hostname-mismatch", presented(pki), HostPort("a.b.apps.test"))
    trust_error("hostname-mismatch", presented(pki), HostPort("apps.test"))


def test_ip_target_matches_ip_san_only(tmp_path: Path) -> None:
    p = make_pki(tmp_path, names=("registry.test",), ips=("127.0.0.1", "::1"))
    analyze(presented(p), HostPort("127.0.0.1", 5443), now=NOW)
    analyze(presented(p), HostPort("::1", 5443), now=NOW)
    err = trust_error("hostname-mismatch", presented(p), HostPort("127.0.0.2", 5443))
    assert "127.0.0.1" in err.message


def test_ip_target_is_not_matched_by_a_dns_san_spelling_the_ip(tmp_path: Path) -> None:
    p = make_pki(tmp_path, names=("127.0.0.1",))
    trust_error("hostname-mismatch", presented(p), HostPort("127.0.0.1"))


def test_leaf_without_san_is_refused_even_if_the_cn_matches(tmp_path: Path) -> None:
    p = make_pki(tmp_path, san=False)
    err = trust_error("no-san", presented(p))
    assert "subjectAltName" in err.message and "registry.test" in err.message


# --- validity ------------------------------------------------------------------------


def test_expired_anchor_is_named(tmp_path: Path) -> None:
    p = make_pki(tmp_path, root_window=expired())
    err = trust_error("expired", presented(p, with_root=True))
    assert "anchor CN=Lab Root CA" in err.message and "expired on" in err.message


def test_expired_intermediate_anchor(tmp_path: Path) -> None:
    p = make_pki(tmp_path, intermediate_window=expired())
    err = trust_error("expired", presented(p))
    assert "Lab Intermediate CA" in err.message


def test_expired_intermediate_below_the_root(tmp_path: Path) -> None:
    p = make_pki(tmp_path, intermediate_window=expired())
    err = trust_error("expired", presented(p, with_root=True))
    assert "intermediate CN=Lab Intermediate CA" in err.message


def test_expired_leaf(tmp_path: Path) -> None:
    p = make_pki(tmp_path, leaf_window=expired())
    err = trust_error("expired", presented(p))
    assert "server certificate CN=registry.test" in err.message


def test_not_yet_valid_leaf_mentions_clocks(tmp_path: Path) -> None:
    p = make_pki(tmp_path, leaf_window=not_yet_valid())
    err = trust_error("not-yet-valid", presented(p))
    assert "clock" in err.message


def test_not_yet_valid_root(tmp_path: Path) -> None:
    p = make_pki(tmp_path, root_window=not_yet_valid())
    trust_error("not-yet-valid", presented(p, with_root=True))


def test_naive_now_is_taken_as_utc(pki: PKI) -> None:
    analyze(presented(pki), REGISTRY, now=NOW.replace(tzinfo=None))


def test_validity_is_judged_at_the_given_time(pki: PKI) -> None:
    with pytest.raises(TrustError) as caught:
        analyze(presented(pki), REGISTRY, now=NOW + dt.timedelta(days=400))
    assert caught.value.kind == "expired"


# --- CA flags and links ---------------------------------------------------------------


def test_intermediate_without_ca_flag_below_a_sent_root(tmp_path: Path) -> None:
    p = make_pki(tmp_path, intermediate_is_ca=False)
    err = trust_error("not-a-ca", presented(p, with_root=True))
    assert "Lab Intermediate CA,O=ca-trust-agent lab issued CN=registry.test" in err.message


def test_intermediate_without_ca_flag_and_no_root(tmp_path: Path) -> None:
    p = make_pki(tmp_path, intermediate_is_ca=False)
    err = trust_error("not-a-ca", presented(p))
    assert "Lab Intermediate CA" in err.message


def test_self_signed_top_without_ca_flag_is_not_an_anchor(pki: PKI) -> None:
    not_ca_root = make_leaf(None, names=("root.test",))  # self-signed, CA:FALSE
    chain = (*presented(pki), *infos(not_ca_root))
    err = trust_error("not-a-ca", chain)
    assert "root.test" in err.message


def test_chain_that_does_not_link(pki: PKI, other: PKI) -> None:
    chain = infos(pki.leaf, other.intermediate)  # type: ignore[arg-type]
    err = trust_error("chain-does-not-link", chain)
    assert "issued by CN=Lab Intermediate CA" in err.message


def test_root_from_another_pki_does_not_link(pki: PKI, other: PKI) -> None:
    chain = infos(pki.leaf, pki.intermediate, other.root)  # type: ignore[arg-type]
    trust_error("chain-does-not-link", chain)


def test_rsa_chain_verifies(tmp_path: Path) -> None:
    p = make_pki(tmp_path, key_type="rsa")
    assert analyze(presented(p, with_root=True), REGISTRY, now=NOW).reason == "root sent"


def _hand_made_leaf(root: Issued, *extensions: x509.ExtensionType) -> Issued:
    """A leaf with exactly these extensions, for shapes lab.tls.pki does not produce."""
    key = make_leaf(None).key
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "hand-made")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return Issued(builder.sign(root.key, hashes.SHA256()), key)


def test_leaf_with_client_auth_only_is_invalid() -> None:
    """What the verifier refuses beyond our named checks still refuses, as "invalid"."""
    root = make_ca("Client Root")
    leaf = _hand_made_leaf(
        root,
        x509.SubjectAlternativeName([x509.DNSName("registry.test")]),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
    )
    err = trust_error("invalid", infos(leaf, root))
    assert "does not verify to CN=Client Root" in err.message


def test_leaf_without_aki_is_accepted_like_go_does() -> None:
    """Older private CAs omit the authority key identifier; Go does not require it."""
    root = make_ca("Old Root")
    leaf = _hand_made_leaf(root, x509.SubjectAlternativeName([x509.DNSName("registry.test")]))
    assert analyze(infos(leaf, root), REGISTRY, now=NOW).reason == "root sent"


# --- pins ----------------------------------------------------------------------------


def test_pin_matching_the_anchor_passes(pki: PKI) -> None:
    pin = pki.intermediate.sha256.lower()  # type: ignore[union-attr]
    assert analyze(presented(pki), REGISTRY, now=NOW, pins=[pin]).reason == "topmost CA"


def test_pin_on_the_leaf_does_not_match_the_anchor(pki: PKI) -> None:
    err = trust_error("pin-mismatch", presented(pki), pins=[pki.leaf.sha256])
    assert pki.intermediate.sha256 in err.message  # type: ignore[union-attr]


def test_any_one_of_several_pins_is_enough(pki: PKI, other: PKI) -> None:
    pins = [other.root.sha256, pki.root.sha256]
    analyze(presented(pki, with_root=True), REGISTRY, now=NOW, pins=pins)


def test_a_malformed_pin_is_an_input_error(pki: PKI) -> None:
    with pytest.raises(InputError):
        analyze(presented(pki), REGISTRY, now=NOW, pins=["sha256:nope"])


# --- operator-provided anchors ----------------------------------------------------------


def test_provided_root_anchors_a_chain_without_root(pki: PKI) -> None:
    (root,) = infos(pki.root)
    result = analyze_with_anchor(presented(pki), root, REGISTRY, now=NOW)
    assert (result.anchor, result.anchor_index, result.reason) == (root, None, "provided")


def test_provided_intermediate_is_a_partial_chain_anchor(pki: PKI) -> None:
    (inter,) = infos(pki.intermediate)  # type: ignore[arg-type]
    analyze_with_anchor(infos(pki.leaf), inter, REGISTRY, now=NOW)


def test_provided_anchor_from_another_ca_does_not_link(pki: PKI, other: PKI) -> None:
    (root,) = infos(other.root)
    with pytest.raises(TrustError) as caught:
        analyze_with_anchor(presented(pki), root, REGISTRY, now=NOW)
    assert caught.value.kind == "chain-does-not-link"


def test_provided_anchor_must_be_a_ca(pki: PKI) -> None:
    stray = infos(make_leaf(None, names=("x.test",)))[0]
    with pytest.raises(TrustError) as caught:
        analyze_with_anchor(presented(pki), stray, REGISTRY, now=NOW)
    assert caught.value.kind == "not-a-ca"


def test_provided_anchor_is_pinned_too(pki: PKI, other: PKI) -> None:
    (root,) = infos(pki.root)
    with pytest.raises(TrustError) as caught:
        analyze_with_anchor(presented(pki), root, REGISTRY, now=NOW, pins=[other.root.sha256])
    assert caught.value.kind == "pin-mismatch"


# --- declarative anchors (policy caPEM) ----------------------------------------------


def test_declared_ca_that_is_valid_passes(pki: PKI) -> None:
    check_anchor_only(infos(pki.root)[0], now=NOW, pins=[pki.root.sha256])


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: make_ca("Old CA", window=expired()), "expired"),
        (lambda: make_ca("Future CA", window=not_yet_valid()), "not-yet-valid"),
        (lambda: make_leaf(None), "not-a-ca"),
    ],
    ids=["expired", "not-yet-valid", "not-a-ca"],
)
def test_declared_ca_refusals(make: object, kind: str) -> None:
    issued = make()  # type: ignore[operator]
    with pytest.raises(TrustError) as caught:
        check_anchor_only(infos(issued)[0], now=NOW)
    assert caught.value.kind == kind


def test_declared_ca_with_a_wrong_pin(pki: PKI, other: PKI) -> None:
    with pytest.raises(TrustError) as caught:
        check_anchor_only(infos(pki.root)[0], now=NOW, pins=[other.root.sha256])
    assert caught.value.kind == "pin-mismatch"


def test_pem_of_cert_info_is_standard_base64_lines(pki: PKI) -> None:
    pem = infos(pki.root)[0].pem
    body = pem.split(b"\n")[1:-2]
    assert all(len(line) <= 64 for line in body)
    assert base64.b64decode(b"".join(body)) == pki.root.der
