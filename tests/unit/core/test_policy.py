"""agent.core.policy: what policy.yaml may say, what it means, and how it is refused.

Sample files live in tests/fixtures/policies/; small inline documents show one rule each.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import textwrap
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.errors import PolicyError
from agent.core.hostport import HostPort, parse_hostport
from agent.core.policy import (
    DEFAULT_POLICY,
    MAX_PINS,
    MAX_POLICY_BYTES,
    MAX_REGISTRIES,
    Decision,
    Policy,
    RegistryRule,
    parse_policy,
)
from agent.core.trust import parse_pem_bundle, pem_bundle

POLICIES = Path(__file__).resolve().parents[2] / "fixtures" / "policies"
PIN_A = "sha256:" + "3F1A" * 16
PIN_B = "sha256:" + "0B" * 32


def policy(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text))


def error_of(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(textwrap.dedent(text))
    assert caught.value.kind == "invalid"
    return caught.value.message


def fixture(name: str) -> str:
    return (POLICIES / name).read_text(encoding="utf-8")


def make_ca(name: str) -> bytes:
    """A fresh self-signed CA certificate as PEM (policy only parses it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest().upper()


def yaml_block(pem: bytes, indent: int = 6) -> str:
    return textwrap.indent(pem.decode(), " " * indent)


CA_ONE = make_ca("Policy Test Root One")
CA_TWO = make_ca("Policy Test Root Two")


# --- defaults ---------------------------------------------------------------------------


def test_the_default_policy_denies_every_registry() -> None:
    written_out = Policy(
        scope="auto",
        restart="auto",
        max_concurrent_restarts=1,
        allow_docker_restart_without_live_restore=False,
        dry_run=False,
        recycle_pods=False,
        registries=(),
    )
    assert written_out == DEFAULT_POLICY
    decision = DEFAULT_POLICY.decide(HostPort("registry.corp.example", 5000))
    assert decision == Decision(
        allowed=False,
        rule=None,
        pins=(),
        reason="registry.corp.example:5000 is not allowed: policy.yaml lists no registries, "
        "so every registry is denied",
    )


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n", "~\n", "null\n"])
def test_an_empty_document_is_the_default_policy(text: str) -> None:
    assert parse_policy(text) == DEFAULT_POLICY


def test_the_empty_fixture_is_the_default_policy() -> None:
    assert parse_policy(fixture("empty.yaml")) == DEFAULT_POLICY


def test_keys_left_out_keep_their_defaults() -> None:
    parsed = parse_policy(fixture("minimal.yaml"))
    assert parsed == Policy(registries=(RegistryRule("registry.corp.example", 5000),))


def test_registries_with_nothing_under_it_means_deny_all() -> None:
    assert policy("registries:\n") == DEFAULT_POLICY
    assert policy("registries: []\n") == DEFAULT_POLICY


# --- every key --------------------------------------------------------------------------


def test_every_key_of_the_full_fixture() -> None:
    parsed = parse_policy(fixture("full.yaml"))
    harbor_ca = parsed.registries[2].ca_pem
    assert harbor_ca is not None
    harbor_fp = parse_pem_bundle(harbor_ca)[0].sha256
    assert parsed == Policy(
        scope="registry",
        restart="never",
        max_concurrent_restarts=3,
        allow_docker_restart_without_live_restore=True,
        dry_run=True,
        recycle_pods=True,
        registries=(
            RegistryRule("registry.corp.example", 5000, index=0),
            RegistryRule(
                "*.corp.example",
                None,
                pins=(
                    "sha256:05A61DD6E94B221B86A2AAFC4FC5BDD36A39C9531C348D3B4FA32E16348B7F16",
                    harbor_fp,
                ),
                index=1,
            ),
            RegistryRule("harbor.internal", 443, ca_pem=harbor_ca, index=2),
            RegistryRule("harbor.pinned.internal", 8443, (harbor_fp,), harbor_ca, index=3),
        ),
    )


def test_the_design_document_example_parses() -> None:
    parsed = parse_policy(fixture("design-example.yaml"))
    assert parsed.scope == "auto"
    assert [rule.host for rule in parsed.registries] == [
        "registry.corp.example:5000",
        "*.corp.example",
    ]
    assert parsed.registries[1].pins == (PIN_A,)


@pytest.mark.parametrize("value", ["registry", "system", "auto"])
def test_scope_values(value: str) -> None:
    assert policy(f"scope: {value}").scope == value


@pytest.mark.parametrize("value", ["auto", "never"])
def test_restart_values(value: str) -> None:
    assert policy(f"restart: {value}").restart == value


def test_max_concurrent_restarts_takes_any_whole_number_from_1() -> None:
    assert policy("maxConcurrentRestarts: 1").max_concurrent_restarts == 1
    assert policy("maxConcurrentRestarts: 25").max_concurrent_restarts == 25


@pytest.mark.parametrize(
    ("key", "attribute"),
    [
        ("allowDockerRestartWithoutLiveRestore", "allow_docker_restart_without_live_restore"),
        ("dryRun", "dry_run"),
        ("recyclePods", "recycle_pods"),
    ],
)
def test_boolean_keys(key: str, attribute: str) -> None:
    assert getattr(policy(f"{key}: true"), attribute) is True
    assert getattr(policy(f"{key}: false"), attribute) is False


def test_summary_restates_the_effective_policy_for_the_log() -> None:
    assert parse_policy(fixture("full.yaml")).summary() == {
        "scope": "registry",
        "restart": "never",
        "maxConcurrentRestarts": 3,
        "allowDockerRestartWithoutLiveRestore": True,
        "dryRun": True,
        "recyclePods": True,
        "confirmations": 1,
        "approval": "none",
        "hostsToml": "refuse",
        "registries": [
            {"host": "registry.corp.example:5000"},
            {
                "host": "*.corp.example",
                "pins": list(parse_policy(fixture("full.yaml")).registries[1].pins),
            },
            {"host": "harbor.internal:443", "caPEM": "1 certificate(s)"},
            {
                "host": "harbor.pinned.internal:8443",
                "pins": ["sha256:909FBE1CE725B98803AC237D3BDEA50162C90BB071B4C5A2F03B2612FD0F7532"],
                "caPEM": "1 certificate(s)",
            },
        ],
        "interception": None,
    }


# --- value errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scope: cluster", "scope: must be one of registry, system, auto, not 'cluster'"),
        ("scope: Registry", "scope: must be one of registry, system, auto, not 'Registry'"),
        ("scope:", "scope: must be one of registry, system, auto, not nothing"),
        ("scope: [registry]", "scope: must be one of registry, system, auto, not a list"),
        ("restart: always", "restart: must be one of auto, never, not 'always'"),
        ("restart: false", "restart: must be one of auto, never, not False"),
        (
            "maxConcurrentRestarts: 0",
            "maxConcurrentRestarts: must be a whole number of at least 1, not 0",
        ),
        (
            "maxConcurrentRestarts: -2",
            "maxConcurrentRestarts: must be a whole number of at least 1, not -2",
        ),
        (
            "maxConcurrentRestarts: 1.5",
            "maxConcurrentRestarts: must be a whole number of at least 1, not 1.5",
        ),
        (
            "maxConcurrentRestarts: '2'",
            "maxConcurrentRestarts: must be a whole number of at least 1, not '2'",
        ),
        (
            "maxConcurrentRestarts: true",
            "maxConcurrentRestarts: must be a whole number of at least 1, not True",
        ),
        ("dryRun: 'true'", "dryRun: must be true or false, not 'true'"),
        ("dryRun: 1", "dryRun: must be true or false, not 1"),
        ("recyclePods: {}", "recyclePods: must be true or false, not a mapping"),
        (
            "allowDockerRestartWithoutLiveRestore: maybe",
            "allowDockerRestartWithoutLiveRestore: must be true or false, not 'maybe'",
        ),
        (
            "registries: registry.corp",
            "registries: must be a list of {host: ...} entries, not 'registry.corp'",
        ),
        (
            "registries: {host: a.example}",
            "registries: must be a list of {host: ...} entries, not a mapping",
        ),
    ],
)
def test_a_wrong_value_is_named_with_its_key(text: str, message: str) -> None:
    assert error_of(text) == message


def test_yaml_booleans_are_yaml_1_1_words() -> None:
    """PyYAML reads yes/no/on/off as booleans (YAML 1.1), as kubectl users expect."""
    assert policy("dryRun: yes").dry_run is True
    assert policy("dryRun: off").dry_run is False


# --- unknown keys -----------------------------------------------------------------------


def test_an_unknown_top_level_key_is_an_error_with_a_suggestion() -> None:
    assert error_of("dryrun: true") == (
        "dryrun: unknown key (known: scope, restart, maxConcurrentRestarts, "
        "allowDockerRestartWithoutLiveRestore, dryRun, recyclePods, confirmations, approval, "
        "hostsToml, registries, interception); "
        "did you mean 'dryRun'?"
    )


def test_an_unknown_key_without_a_close_match_has_no_suggestion() -> None:
    assert error_of("colour: blue").endswith("registries, interception)")


def test_a_non_string_key_is_unknown() -> None:
    assert error_of("1: x").startswith("1: unknown key")


def test_a_very_long_unknown_key_is_shortened_in_the_message() -> None:
    message = error_of("? " + "k" * 5000 + "\n: 1\n")  # an explicit key may be this long
    assert message.startswith("'" + "k" * 76 + "...: unknown key")
    assert len(message) < 300


def test_a_typo_in_a_registry_entry_does_not_drop_the_pin() -> None:
    assert parse_policy_error(fixture("invalid-typo.yaml")) == (
        "registries[0].pin: unknown key (known: host, pins, caPEM, caFrom, confirmations, "
        "approval); did you mean 'pins'?"
    )


def parse_policy_error(text: str) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return caught.value.message


def test_a_key_given_twice_is_an_error_not_a_silent_override() -> None:
    message = parse_policy_error(fixture("invalid-duplicate-key.yaml"))
    assert message.startswith("policy.yaml is not valid YAML:")
    assert "'dryRun' appears twice" in message
    assert "line 4" in message


def test_a_key_given_twice_inside_a_registry_entry_is_an_error() -> None:
    message = error_of(
        """
        registries:
          - host: a.example
            host: b.example
        """
    )
    assert "'host' appears twice" in message


def test_yaml_merge_keys_still_work() -> None:
    """Anchors and `<<` merges let entries share pins; a merged key is not a duplicate."""
    parsed = policy(
        f"""
        registries:
          - &corp
            host: a.example
            pins: ["{PIN_A}"]
          - <<: *corp
            host: b.example
        """
    )
    assert [(r.pattern, r.pins) for r in parsed.registries] == [
        ("a.example", (PIN_A,)),
        ("b.example", (PIN_A,)),
    ]


# --- not a mapping, not YAML, too big ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("- host: a.example", "a list"),
        ("just a string", "a string"),
        ("42", "a number"),
        ("true", "a boolean"),
    ],
)
def test_a_document_that_is_not_a_mapping_is_refused(text: str, what: str) -> None:
    assert error_of(text) == f"policy.yaml must be a mapping of settings, not {what}"


@pytest.mark.parametrize(
    "text",
    [
        "scope: [unclosed",
        "a: b: c",
        "scope: auto\n---\nscope: system\n",
        "!!python/object:os.system {}",
        "key: !!python/name:os.system",
    ],
)
def test_text_that_is_not_safe_yaml_is_refused(text: str) -> None:
    assert error_of(text).startswith("policy.yaml is not valid YAML: ")


def test_a_document_over_one_mib_is_refused_before_parsing() -> None:
    huge = "# " + "x" * MAX_POLICY_BYTES + "\n"
    assert error_of(huge) == "policy.yaml is larger than 1024 KiB"


def test_the_size_limit_counts_utf8_bytes() -> None:
    huge = "# " + "é" * (MAX_POLICY_BYTES // 2 + 1)
    assert error_of(huge) == "policy.yaml is larger than 1024 KiB"


def test_a_large_document_under_the_limit_parses() -> None:
    hosts = [f"r{n}.corp.example" for n in range(MAX_REGISTRIES)]
    text = "registries:\n" + "".join(f"  - host: {h}\n" for h in hosts)
    assert len(policy(text).registries) == MAX_REGISTRIES


def test_more_registries_than_the_limit_are_refused() -> None:
    text = "registries:\n" + "".join(
        f"  - host: r{n}.corp.example\n" for n in range(MAX_REGISTRIES + 1)
    )
    assert error_of(text) == f"registries: {MAX_REGISTRIES + 1} entries: more than the 1000 allowed"


def test_deeply_nested_yaml_is_refused_not_a_crash() -> None:
    message = error_of("scope: " + "[" * 50000 + "]" * 50000)
    assert message.startswith(("policy.yaml is", "scope: must be one of"))


def test_an_alias_bomb_is_refused_quickly() -> None:
    """Aliases share one object; the limits keep the validation from multiplying it."""
    pins = ", ".join([f'"{PIN_A}"'] * (MAX_PINS + 1))
    text = f"x: &p [{pins}]\nregistries:\n" + "".join(
        f"  - {{host: r{n}.example, pins: *p}}\n" for n in range(900)
    )
    message = error_of(text)
    assert "registries[0].pins: 65 pins: more than the 64 allowed" in message
    assert message.endswith("and 881 more")  # every problem counted, 20 shown


# --- registry hosts and globs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "port"),
    [
        ("registry.corp.example", "registry.corp.example", None),
        ("registry.corp.example:5000", "registry.corp.example", 5000),
        ("Registry.Corp.Example.", "registry.corp.example", None),
        ("registry.corp.example:443", "registry.corp.example", 443),
        ("10.0.0.1", "10.0.0.1", None),
        ("10.0.0.1:5000", "10.0.0.1", 5000),
        ("::1", "::1", None),
        ("[::1]", "::1", None),
        ("[::0001]:5000", "::1", 5000),
        ("*.corp.example", "*.corp.example", None),
        ("*.Corp.Example:5000", "*.corp.example", 5000),
        ("reg-?.corp.example", "reg-?.corp.example", None),
        ("*", "*", None),
    ],
)
def test_registry_hosts_are_canonicalised(host: str, pattern: str, port: int | None) -> None:
    [rule] = policy(f'registries:\n  - host: "{host}"\n').registries
    assert (rule.pattern, rule.port) == (pattern, port)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            '"https://registry.corp.example/v2/"',
            "invalid registry address 'https://registry.corp.example/v2/': give host[:port], "
            "not a URL or path",
        ),
        ('"registry.corp.example:99999"', "port 99999 is out of range 1-65535"),
        (
            '"registry..corp"',
            "invalid host name 'registry..corp': label '' is not letters, digits, '-' or '_'",
        ),
        ('"*.corp.example:http"', "invalid port 'http' in '*.corp.example:http'"),
        ('"*.corp.example:0"', "invalid port '0' in '*.corp.example:0'"),
        (
            '"[*]:5000"',
            "glob '[*]:5000' may only use letters, digits, '.', '-', '_', '*' and '?' "
            "(IPv6 literals and [...] sets are not supported in globs)",
        ),
        ('"*..corp"', "glob '*..corp' does not describe host names (empty or odd labels)"),
        ("5000", "must be a string like registry.corp:5000 or *.corp.example, not 5000"),
        ('""', "must be a string like registry.corp:5000 or *.corp.example, not ''"),
        ("", "must be a string like registry.corp:5000 or *.corp.example, not nothing"),
    ],
)
def test_a_bad_host_is_named_with_its_path(host: str, message: str) -> None:
    assert error_of(f"registries:\n  - host: {host}\n") == f"registries[0].host: {message}"


def test_a_registry_entry_must_be_a_mapping_with_a_host() -> None:
    assert error_of("registries:\n  - registry.corp.example\n") == (
        "registries[0]: must be a mapping like {host: registry.corp:5000}, not "
        "'registry.corp.example'"
    )
    assert error_of(f'registries:\n  - pins: ["{PIN_A}"]\n') == "registries[0]: missing host"


def test_the_same_registry_twice_is_an_error() -> None:
    assert error_of(
        """
        registries:
          - host: registry.corp.example:5000
          - host: REGISTRY.corp.example:5000
        """
    ) == (
        "registries[1].host: 'registry.corp.example:5000' is already listed as "
        "registries[0]; merge the two entries"
    )


def test_the_same_host_with_and_without_a_port_are_two_rules() -> None:
    parsed = policy(
        """
        registries:
          - host: registry.corp.example
          - host: registry.corp.example:5000
        """
    )
    assert len(parsed.registries) == 2


GLOB = RegistryRule("*.corp.example")


@pytest.mark.parametrize(
    "host", ["a.corp.example", "a.b.corp.example", "A.Corp.Example", "registry-1.corp.example"]
)
def test_a_star_glob_matches_any_depth_under_its_suffix(host: str) -> None:
    assert GLOB.matches(parse_hostport(host))


@pytest.mark.parametrize(
    "host",
    [
        "corp.example",
        "evilcorp.example",
        "corp.example.evil",
        "a.corp.example.evil",
        "a.corp-example",
    ],
)
def test_a_star_glob_never_matches_outside_its_suffix(host: str) -> None:
    assert not GLOB.matches(parse_hostport(host))


def test_a_question_mark_matches_exactly_one_character() -> None:
    rule = RegistryRule("reg?.corp.example")
    assert rule.matches(HostPort("reg1.corp.example"))
    assert not rule.matches(HostPort("reg10.corp.example"))
    assert not rule.matches(HostPort("reg.corp.example"))


def test_a_lone_star_allows_every_host_explicitly() -> None:
    parsed = policy('registries:\n  - host: "*"\n')
    assert parsed.decide(HostPort("anything.example", 8443)).allowed
    assert parsed.decide(HostPort("10.1.2.3")).allowed


def test_an_exact_rule_matches_only_its_host() -> None:
    rule = RegistryRule("registry.corp.example")
    assert rule.matches(HostPort("registry.corp.example", 5000))
    assert not rule.matches(HostPort("a.registry.corp.example"))
    assert not rule.matches(HostPort("registry.corp.example.evil"))


# --- ports ------------------------------------------------------------------------------


def test_a_rule_without_a_port_allows_every_port() -> None:
    parsed = policy('registries:\n  - host: "*.corp.example"\n  - host: harbor.internal\n')
    for endpoint in ("a.corp.example:443", "a.corp.example:5000", "harbor.internal:8443"):
        assert parsed.decide(parse_hostport(endpoint)).allowed, endpoint


def test_a_rule_with_a_port_allows_only_that_port() -> None:
    parsed = policy(
        """
        registries:
          - host: registry.corp.example:5000
          - host: "*.corp.example:5443"
        """
    )
    assert parsed.decide(HostPort("registry.corp.example", 5000)).allowed
    assert parsed.decide(HostPort("a.corp.example", 5443)).allowed
    denied = parsed.decide(HostPort("registry.corp.example", 443))
    assert not denied.allowed
    assert denied.reason == (
        "registry.corp.example:443 is not listed in policy.yaml registries "
        "(registries[0] 'registry.corp.example:5000' allows port 5000 only)"
    )


def test_port_443_written_out_is_port_443_only() -> None:
    parsed = policy("registries:\n  - host: harbor.internal:443\n")
    assert parsed.decide(HostPort("harbor.internal", 443)).allowed
    assert not parsed.decide(HostPort("harbor.internal", 8443)).allowed


def test_ipv6_rules_with_and_without_port() -> None:
    parsed = policy('registries:\n  - host: "[::1]:5000"\n  - host: "2001:db8::1"\n')
    assert parsed.decide(HostPort("::1", 5000)).allowed
    assert not parsed.decide(HostPort("::1", 443)).allowed
    assert parsed.decide(HostPort("2001:db8::1", 8443)).allowed


# --- precedence -------------------------------------------------------------------------

PRECEDENCE = f"""
registries:
  - host: "*.example"
    pins: ["{PIN_A}"]
  - host: "*.corp.example"
    pins: ["{PIN_B}"]
  - host: "*.corp.example:5000"
  - host: registry.corp.example
    pins: ["{PIN_A}", "{PIN_B}"]
  - host: registry.corp.example:5000
"""


@pytest.mark.parametrize(
    ("endpoint", "winner"),
    [
        ("registry.corp.example:5000", "registry.corp.example:5000"),  # exact host:port
        ("registry.corp.example:443", "registry.corp.example"),  # exact host, any port
        ("other.corp.example:443", "*.corp.example"),  # longest glob
        ("other.corp.example:5000", "*.corp.example:5000"),  # glob with port at equal length
        ("shop.example:443", "*.example"),  # the only glob that matches
    ],
)
def test_the_most_specific_rule_decides(endpoint: str, winner: str) -> None:
    decision = policy(PRECEDENCE).decide(parse_hostport(endpoint))
    assert decision.allowed
    assert decision.rule is not None
    assert decision.rule.host == winner


def test_only_the_deciding_rules_pins_apply() -> None:
    """Pins never add up across rules: the exact rule here is deliberately unpinned."""
    parsed = policy(PRECEDENCE)
    assert parsed.decide(HostPort("registry.corp.example", 5000)).pins == ()
    assert parsed.decide(HostPort("registry.corp.example")).pins == tuple(sorted((PIN_A, PIN_B)))
    assert parsed.decide(HostPort("other.corp.example")).pins == (PIN_B,)


def test_precedence_does_not_depend_on_file_order() -> None:
    entries = PRECEDENCE.split("\n  - ")[1:]
    reversed_doc = "registries:\n" + "".join(f"  - {e.rstrip()}\n" for e in reversed(entries))
    forward, backward = policy(PRECEDENCE), policy(reversed_doc)
    assert [r.host for r in backward.registries] == [r.host for r in reversed(forward.registries)]
    for endpoint in ("registry.corp.example:5000", "registry.corp.example", "x.corp.example"):
        hp = parse_hostport(endpoint)
        assert forward.decide(hp).rule.host == backward.decide(hp).rule.host  # type: ignore[union-attr]


def test_equal_globs_fall_back_to_file_order() -> None:
    parsed = policy('registries:\n  - host: "a*.example"\n  - host: "*b.example"\n')
    decision = parsed.decide(HostPort("ab.example"))
    assert decision.rule is not None
    assert decision.rule.index == 0


# --- decisions --------------------------------------------------------------------------


def test_an_allowed_endpoint_says_which_rule_allowed_it() -> None:
    parsed = policy(f'registries:\n  - host: "*.corp.example"\n    pins: ["{PIN_A}"]\n')
    decision = parsed.decide(HostPort("registry.corp.example", 5000))
    assert decision == Decision(
        allowed=True,
        rule=parsed.registries[0],
        pins=(PIN_A,),
        reason="registry.corp.example:5000 is allowed by policy.yaml registries[0] "
        "(host '*.corp.example'); only an anchor with the pinned fingerprint will be trusted",
    )


def test_the_reason_counts_several_pins() -> None:
    parsed = policy(f'registries:\n  - host: a.example\n    pins: ["{PIN_A}", "{PIN_B}"]\n')
    assert parsed.decide(HostPort("a.example")).reason.endswith(
        "only an anchor with one of the 2 pinned fingerprints will be trusted"
    )


def test_an_unlisted_endpoint_is_denied_with_an_operator_sentence() -> None:
    parsed = policy("registries:\n  - host: registry.corp.example:5000\n")
    decision = parsed.decide(HostPort("registry.other.example", 5000))
    assert decision == Decision(
        allowed=False,
        rule=None,
        pins=(),
        reason="registry.other.example:5000 is not listed in policy.yaml registries",
    )


# --- pins -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        PIN_A,
        PIN_A.lower(),
        "SHA256:" + "3F1A" * 16,
        "sha256:" + ":".join(["3F", "1A"] * 16),
        "3f1a" * 16,
        ":".join(["3f", "1a"] * 16),
        f"  {PIN_A}  ",
    ],
)
def test_pins_are_normalised_to_upper_case_hex_without_colons(written: str) -> None:
    [rule] = policy(f'registries:\n  - host: a.example\n    pins: ["{written}"]\n').registries
    assert rule.pins == (PIN_A,)


def test_pins_are_deduplicated_and_sorted() -> None:
    [rule] = policy(
        f'registries:\n  - host: a.example\n    pins: ["{PIN_A}", "{PIN_B}", "{PIN_A.lower()}"]\n'
    ).registries
    assert rule.pins == (PIN_B, PIN_A)


@pytest.mark.parametrize(
    ("pin", "shown"),
    [
        ('"sha256:1234"', "'sha256:1234'"),
        ('"sha1:' + "AB" * 20 + '"', "'sha1:" + "AB" * 20 + "'"),
        ('"sha256:' + "G" * 64 + '"', "'sha256:" + "G" * 64 + "'"),
        ('"sha256:' + "A" * 65 + '"', "'sha256:" + "A" * 65 + "'"),
        ("12345", "12345"),
        ("null", "nothing"),
    ],
)
def test_a_bad_pin_is_named_by_its_path(pin: str, shown: str) -> None:
    text = f'registries:\n  - host: a.example\n  - host: b.example\n    pins: ["{PIN_A}", {pin}]\n'
    assert error_of(text) == (
        "registries[1].pins[1]: not a sha256 fingerprint (sha256: and 64 hex digits, "
        f"colons allowed): {shown}"
    )


@pytest.mark.parametrize(
    ("pins", "shown"), [("[]", "a list"), ("", "nothing"), (f'"{PIN_A}"', repr(PIN_A))]
)
def test_pins_must_be_a_non_empty_list(pins: str, shown: str) -> None:
    assert error_of(f"registries:\n  - host: a.example\n    pins: {pins}\n") == (
        f"registries[0].pins: must be a non-empty list of sha256 fingerprints, not {shown}; "
        "remove the key to allow any anchor"
    )


def test_too_many_pins_are_refused() -> None:
    pins = ", ".join(f'"sha256:{n:064X}"' for n in range(MAX_PINS + 1))
    assert error_of(f"registries:\n  - host: a.example\n    pins: [{pins}]\n") == (
        "registries[0].pins: 65 pins: more than the 64 allowed"
    )


# --- caPEM ------------------------------------------------------------------------------


def test_ca_pem_is_stored_as_a_deterministic_bundle_and_declared() -> None:
    both = CA_ONE + b"# a comment between blocks\n" + CA_TWO + CA_ONE
    parsed = parse_policy(
        "registries:\n"
        "  - host: harbor.internal:8443\n"
        "    caPEM: |\n" + yaml_block(both) + "  - host: plain.internal\n"
    )
    bundle = pem_bundle(parse_pem_bundle(CA_ONE) + parse_pem_bundle(CA_TWO))
    assert parsed.registries[0].ca_pem == bundle
    assert parsed.declared() == ((HostPort("harbor.internal", 8443), bundle, ()),)


def test_a_declared_ca_without_a_port_is_for_port_443() -> None:
    parsed = policy(f"registries:\n  - host: harbor.internal\n    caPEM: |\n{yaml_block(CA_ONE)}")
    [(endpoint, _, _)] = parsed.declared()
    assert endpoint == HostPort("harbor.internal", 443)
    assert parsed.decide(HostPort("harbor.internal", 5000)).allowed  # matching is any port


def test_declared_ca_with_matching_pins() -> None:
    pin = fingerprint(CA_ONE)
    parsed = policy(
        f'registries:\n  - host: h.internal\n    pins: ["{pin}"]\n'
        f"    caPEM: |\n{yaml_block(CA_ONE)}"
    )
    assert parsed.declared() == (
        (HostPort("h.internal"), pem_bundle(parse_pem_bundle(CA_ONE)), (pin,)),
    )


def test_every_declared_certificate_must_be_pinned_when_pins_are_given() -> None:
    pin = fingerprint(CA_ONE)
    other = parse_pem_bundle(CA_TWO)[0]
    message = error_of(
        f'registries:\n  - host: h.internal\n    pins: ["{pin}"]\n    caPEM: |\n'
        f"{yaml_block(CA_ONE + CA_TWO)}"
    )
    number = 0 if other.sha256 < pin else 1  # the bundle is sorted by fingerprint
    assert message == (
        f"registries[0].caPEM: certificate {number} ({other.subject}, {other.sha256}) is not in "
        "pins; every declared certificate must be pinned when pins are given"
    )


def test_a_declared_ca_needs_an_exact_host() -> None:
    assert parse_policy_error(fixture("invalid-glob-capem.yaml")) == (
        "registries[0].caPEM: needs an exact host, not the glob '*.internal': a declared CA "
        "is written for one registry"
    )


def test_a_private_key_in_ca_pem_is_refused() -> None:
    message = parse_policy_error(fixture("invalid-private-key.yaml"))
    assert message.startswith("registries[0].caPEM: ")
    assert "PRIVATE KEY" in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"not pem"', "must be PEM text with at least one -----BEGIN CERTIFICATE----- block"),
        ("42", "must be PEM text with at least one -----BEGIN CERTIFICATE----- block"),
        ("", "must be PEM text with at least one -----BEGIN CERTIFICATE----- block"),
        (
            '"-----BEGIN CERTIFICATE-----\\nAAAA\\n"',
            "PEM data is truncated or not in PEM format",
        ),
        (
            '"-----BEGIN CERTIFICATE-----\\n!!!!\\n-----END CERTIFICATE-----\\n"',
            "CERTIFICATE block is not valid base64",
        ),
        (
            '"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n"',
            "not a valid X.509 certificate",
        ),
    ],
)
def test_malformed_ca_pem_is_named_by_its_path(value: str, problem: str) -> None:
    message = error_of(f"registries:\n  - host: h.internal\n    caPEM: {value}\n")
    assert message.startswith(f"registries[0].caPEM: {problem}")


def test_a_ca_pem_over_the_size_limit_is_refused() -> None:
    padding = "# filler\n" * 30000
    text = (
        f"registries:\n  - host: h.internal\n    caPEM: |\n{yaml_block(CA_ONE + padding.encode())}"
    )
    assert error_of(text) == "registries[0].caPEM: larger than 256 KiB"


# --- all errors at once -----------------------------------------------------------------


def test_every_problem_is_reported_together() -> None:
    assert parse_policy_error(fixture("invalid-many.yaml")) == "; ".join(
        [
            "scope: must be one of registry, system, auto, not 'cluster'",
            "maxConcurrentRestarts: must be a whole number of at least 1, not 0",
            "dryRun: must be true or false, not 'yes please'",
            "registries[0].host: invalid registry address 'https://registry.corp.example/v2/': "
            "give host[:port], not a URL or path",
            "registries[1].pins[0]: not a sha256 fingerprint (sha256: and 64 hex digits, colons "
            "allowed): 'sha256:1234'",
            "registries[2]: must be a mapping like {host: registry.corp:5000}, not "
            "'registry.other.example'",
        ]
    )


def test_policy_error_is_the_policy_kind_with_exit_code_5() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("scope: nope")
    assert (caught.value.kind, caught.value.exit_code) == ("invalid", 5)


def test_parse_policy_refuses_bytes() -> None:
    with pytest.raises(PolicyError):
        parse_policy(b"scope: auto")  # type: ignore[arg-type]


# --- hostile documents ------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

policy_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=30),
        st.sampled_from(["auto", "registry", "never", "*.corp.example", "a.example:5000", PIN_A]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(["host", "pins", "caPEM", "pin"]), st.text(max_size=5)),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@FUZZ
@given(st.text(max_size=500))
def test_arbitrary_text_is_a_policy_or_a_policy_error(text: str) -> None:
    try:
        parse_policy(text)
    except PolicyError as exc:
        assert exc.kind == "invalid"


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["scope", "restart", "maxConcurrentRestarts", "dryRun", "registries"]),
        policy_values,
    )
)
def test_arbitrary_documents_are_a_policy_or_a_policy_error(document: dict[str, object]) -> None:
    try:
        parsed = parse_policy(yaml.safe_dump(document))
    except PolicyError as exc:
        assert exc.kind == "invalid"
        return
    for rule in parsed.registries:  # whatever got through is well-formed
        assert all(len(pin) == 71 and pin.startswith("sha256:") for pin in rule.pins)
        assert rule.port is None or 1 <= rule.port <= 65535


# --- caFrom: a CA the cluster already holds ------------------------------------------------


def test_ca_from_names_a_config_map_key_or_cluster_trust_bundles() -> None:
    from agent.core.policy import CASource

    policy = parse_policy(
        textwrap.dedent(
            """\
            registries:
              - host: harbor.corp:443
                caFrom: {configMap: {name: corp-ca, key: ca.crt}}
              - host: quay.corp
                caFrom: {clusterTrustBundle: {name: corp-registry-ca}}
              - host: r.corp:5000
                caFrom:
                  clusterTrustBundle:
                    signerName: corp.example/ca
                    labelSelector: {matchLabels: {b: "2", a: "1"}}
            """
        )
    )
    assert policy.sources() == (
        CASource("configMap", name="corp-ca", key="ca.crt"),
        CASource("clusterTrustBundle", name="corp-registry-ca"),
        CASource(
            "clusterTrustBundle", signer_name="corp.example/ca", labels=(("a", "1"), ("b", "2"))
        ),
    )
    assert policy.summary()["registries"][2]["caFrom"] == (
        "ClusterTrustBundles labelled a=1,b=2 signer corp.example/ca"
    )
    # nothing is declared until the cluster side has listed the sources
    assert policy.declared() == ()
    assert policy.pending({}) == {"harbor.corp:443", "quay.corp:443", "r.corp:5000"}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("{host: a.corp, caFrom: {}}", "registries[0].caFrom: must hold exactly one of"),
        ("{host: a.corp, caFrom: {secret: {name: x}}}", "registries[0].caFrom.secret: unknown key"),
        ("{host: a.corp, caFrom: {configMap: {name: x}}}", "caFrom.configMap: missing key"),
        ("{host: a.corp, caFrom: {configMap: {name: X_Y, key: k}}}", "must be a ConfigMap name"),
        ("{host: a.corp, caFrom: {configMap: {name: x, key: 'a/b'}}}", "must be a ConfigMap key"),
        (
            "{host: a.corp, caFrom: {clusterTrustBundle: {}}}",
            "needs exactly one of name or labelSelector",
        ),
        (
            "{host: a.corp, caFrom: {clusterTrustBundle: {labelSelector: {matchLabels: {}}}}}",
            "must name at least one label",
        ),
        (
            "{host: a.corp, caFrom: {clusterTrustBundle: {signerName: nope, name: x}}}",
            "must be a signer such as corp.example/ca",
        ),
        (
            "{host: '*.corp', caFrom: {configMap: {name: x, key: k}}}",
            "needs an exact host, not the glob",
        ),
    ],
)
def test_a_bad_ca_from_is_named_by_its_path(entry: str, problem: str) -> None:
    assert problem in error_of(f"registries: [{entry}]")


def test_ca_pem_and_ca_from_together_is_an_error() -> None:
    pem = "-----BEGIN CERTIFICATE-----\\nAA\\n-----END CERTIFICATE-----"
    source = "{configMap: {name: x, key: k}}"
    message = error_of(f'registries: [{{host: a.corp, caPEM: "{pem}", caFrom: {source}}}]')
    assert "give caPEM or caFrom, not both" in message
