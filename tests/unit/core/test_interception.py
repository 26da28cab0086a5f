"""policy.yaml `interception` (a TLS-inspecting proxy's CA) and the check that a covered
registry's chain ends at that CA (agent.core.interception)."""

from __future__ import annotations

import textwrap

import pytest

from agent.core.errors import PolicyError, TrustError
from agent.core.hostport import parse_hostport
from agent.core.interception import NOT_INTERCEPTED, match_declared, spki_sha256
from agent.core.policy import CASource, parse_policy
from agent.core.trust import CertInfo, cert_from_der, parse_pem_bundle
from lab.tls.pki import Issued, make_ca, make_leaf, utcnow

PROXY = make_ca("Corp Inspecting Proxy CA")
OTHER = make_ca("Someone Else CA")


def info(*issued: Issued) -> tuple[CertInfo, ...]:
    return tuple(cert_from_der(i.der) for i in issued)


def policy(text: str) -> str:
    return textwrap.dedent(text)


def indented(pem: bytes) -> str:
    return textwrap.indent(pem.decode(), "    ")


def test_the_proxy_ca_covers_every_registry_but_the_excepted_ones() -> None:
    p = parse_policy(
        "interception:\n  caPEM: |\n"
        + indented(PROXY.pem)
        + "  except: [registry.corp.example:5000, '*.internal.example']\n"
    )
    assert p.interception is not None
    assert p.intercepted(parse_hostport("registry-1.docker.io"))
    assert p.intercepted(parse_hostport("ghcr.io"))
    assert p.intercepted(parse_hostport("registry.corp.example:443"))  # another port: covered
    assert not p.intercepted(parse_hostport("registry.corp.example:5000"))
    assert not p.intercepted(parse_hostport("harbor.internal.example"))
    assert parse_pem_bundle(p.interception.bundle() or b"")[0].sha256 == PROXY.sha256
    assert p.summary()["interception"] == {
        "ca": "caPEM",
        "hosts": ["*"],
        "except": ["registry.corp.example:5000", "*.internal.example"],
    }


def test_hosts_narrow_the_coverage_and_a_registry_with_its_own_declared_ca_is_not_covered() -> (
    None
):
    p = parse_policy(
        policy(
            """\
            interception:
              caFrom: {configMap: {name: proxy-ca, key: ca.crt}}
              hosts: [docker.io, '*.docker.io', ghcr.io]
            """
        )
        + "registries:\n  - host: ghcr.io\n    caPEM: |\n"
        + textwrap.indent(OTHER.pem.decode(), "      ")
    )
    assert p.intercepted(parse_hostport("docker.io"))
    assert p.intercepted(parse_hostport("registry-1.docker.io"))
    assert not p.intercepted(parse_hostport("quay.io"))
    assert not p.intercepted(parse_hostport("ghcr.io"))  # its own caPEM is more precise
    source = CASource("configMap", name="proxy-ca", key="ca.crt")
    assert p.sources() == (source,)  # the cluster side lists the proxy's source too
    assert p.interception is not None and p.interception.bundle({}) is None  # not listed yet
    assert p.interception.bundle({source: PROXY.pem.decode()}) == PROXY.pem


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("interception: zscaler", "interception: must be a mapping"),
        ("interception: {hosts: ['*']}", "exactly one of caPEM, caFrom and spki"),
        ("interception: {spki: [md5:ab]}", "interception.spki[0]: not a sha256 fingerprint"),
        ("interception: {spki: []}", "interception.spki: must be a list of 1 to"),
        ("interception: {caPEM: hello}", "interception.caPEM: must be PEM text"),
        (
            "interception: {spki: ['sha256:" + "AB" * 32 + "'], except: ['a.example/team']}",
            "interception.except[0]:",
        ),
        ("interception: {spki: ['sha256:" + "AB" * 32 + "'], host: ['*']}", "did you mean"),
    ],
)
def test_a_wrong_interception_is_refused_with_where_and_what(text: str, problem: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    assert problem in str(err.value)


def test_a_lone_proxy_leaf_ends_at_the_declared_ca() -> None:
    target = parse_hostport("registry-1.docker.io")
    leaf = make_leaf(PROXY, names=("registry-1.docker.io",))
    analysis = match_declared(info(leaf), target, declared=info(PROXY), now=utcnow())
    assert analysis.anchor.sha256 == PROXY.sha256


def test_a_chain_from_another_ca_is_refused_naming_what_was_presented() -> None:
    target = parse_hostport("ghcr.io")
    leaf = make_leaf(OTHER, names=("ghcr.io",))
    with pytest.raises(TrustError) as err:
        match_declared(info(leaf), target, declared=info(PROXY), now=utcnow())
    assert err.value.kind == NOT_INTERCEPTED
    assert "CN=ghcr.io,O=ca-trust-agent lab issued by CN=Someone Else CA" in str(err.value)
    assert "Corp Inspecting Proxy CA" in str(err.value)


def test_a_proxy_leaf_for_another_name_is_refused_for_that_reason() -> None:
    leaf = make_leaf(PROXY, names=("quay.io",))
    with pytest.raises(TrustError) as err:
        match_declared(info(leaf), parse_hostport("ghcr.io"), declared=info(PROXY), now=utcnow())
    assert err.value.kind == "hostname-mismatch"


def test_an_spki_declaration_matches_the_ca_the_proxy_sends_also_when_re_issued() -> None:
    target = parse_hostport("quay.io")
    intermediate = make_ca("Proxy Issuing CA", issuer=PROXY)
    leaf = make_leaf(intermediate, names=("quay.io",))
    pin = spki_sha256(info(intermediate)[0])
    chain = info(leaf, intermediate)
    assert match_declared(chain, target, spki={pin}, now=utcnow()).anchor.sha256 == (
        intermediate.sha256
    )
    with pytest.raises(TrustError) as err:  # the leaf alone: the pin has nothing to match
        match_declared(chain[:1], target, spki={pin}, now=utcnow())
    assert "declare its CA as caPEM or caFrom" in str(err.value)
