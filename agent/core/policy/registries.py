"""Strict reading of policy.yaml `registries` entries: host or glob, pins, caPEM, caFrom
(read by `sources`).

A caPEM entry loads the X.509 stack (cryptography) lazily, so a daemon whose policy
declares no CA never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.errors import AgentError, InputError
from agent.core.hostport import HostPort, parse_hostport
from agent.core.pins import normalize_pin
from agent.core.policy.model import (
    APPROVALS,
    MAX_CA_PEM_BYTES,
    MAX_CONFIRMATIONS,
    MAX_PINS,
    MAX_REGISTRIES,
    RegistryRule,
)
from agent.core.policy.problems import _Errors, _shown, _unknown_keys
from agent.core.policy.sources import ca_from as _ca_from_source

_RULE_KEYS = ("host", "pins", "caPEM", "caFrom", "confirmations", "approval")
_GLOB_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_*?")


def _registries(value: Any, errors: _Errors) -> tuple[RegistryRule, ...]:
    if value is None:  # `registries:` with nothing under it: the default, deny all
        return ()
    if not isinstance(value, list):
        errors.add("registries", f"must be a list of {{host: ...}} entries, not {_shown(value)}")
        return ()
    if len(value) > MAX_REGISTRIES:
        errors.add("registries", f"{len(value)} entries: more than the {MAX_REGISTRIES} allowed")
        return ()
    pem_cache: dict[str, bytes | str] = {}
    rules: list[RegistryRule] = []
    first_seen: dict[tuple[str, int | None], int] = {}
    for index, entry in enumerate(value):
        rule = _rule(entry, index, errors, pem_cache)
        if rule is None:
            continue
        identity = (rule.pattern, rule.port)
        if identity in first_seen:
            errors.add(
                f"registries[{index}].host",
                f"{rule.host!r} is already listed as registries[{first_seen[identity]}]; "
                "merge the two entries",
            )
            continue
        first_seen[identity] = index
        rules.append(rule)
    return tuple(rules)


def _rule(
    entry: Any, index: int, errors: _Errors, pem_cache: dict[str, bytes | str]
) -> RegistryRule | None:
    path = f"registries[{index}]"
    if not isinstance(entry, Mapping):
        errors.add(
            path, f"must be a mapping like {{host: registry.corp:5000}}, not {_shown(entry)}"
        )
        return None
    _unknown_keys(entry, _RULE_KEYS, f"{path}.", errors)
    if "host" not in entry:
        errors.add(path, "missing host")
        return None
    before = len(errors.items)
    parsed = _host(entry["host"], f"{path}.host", errors)
    pins = _pins(entry, path, errors)
    ca_pem = _ca_pem(entry, path, pins, errors, pem_cache)
    source = None
    if "caFrom" in entry:
        source = _ca_from_source(entry["caFrom"], f"{path}.caFrom", errors)
    if "caFrom" in entry and "caPEM" in entry:
        errors.add(path, "give caPEM or caFrom, not both: one registry, one source of its CA")
    confirmations = (
        confirmations_value(entry["confirmations"], f"{path}.confirmations", errors)
        if "confirmations" in entry
        else None
    )
    approval = (
        approval_value(entry["approval"], f"{path}.approval", errors)
        if "approval" in entry
        else None
    )
    if parsed is None or len(errors.items) != before:
        return None
    pattern, port = parsed
    declared = "caPEM" if ca_pem is not None else "caFrom" if source is not None else None
    if declared and ("*" in pattern or "?" in pattern):
        errors.add(
            f"{path}.{declared}",
            f"needs an exact host, not the glob {entry['host']!r}: a declared CA is written "
            "for one registry",
        )
        return None
    return RegistryRule(
        pattern,
        port,
        pins,
        ca_pem,
        index,
        ca_from=source,
        confirmations=confirmations,
        approval=approval,
    )


def confirmations_value(value: Any, path: str, errors: _Errors) -> int | None:
    """`confirmations`: distinct nodes that must fetch the same anchor, from 1 to a bound
    that keeps the cluster-wide record small."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONFIRMATIONS:
        return value
    errors.add(path, f"must be a whole number from 1 to {MAX_CONFIRMATIONS}, not {_shown(value)}")
    return None


def approval_value(value: Any, path: str, errors: _Errors) -> str | None:
    if isinstance(value, str) and value in APPROVALS:
        return value
    errors.add(path, f"must be one of {', '.join(APPROVALS)}, not {_shown(value)}")
    return None


def _host(value: Any, path: str, errors: _Errors) -> tuple[str, int | None] | None:
    if not isinstance(value, str) or not value.strip():
        errors.add(
            path, f"must be a string like registry.corp:5000 or *.corp.example, not {_shown(value)}"
        )
        return None
    text = value.strip()
    if "*" in text or "?" in text:
        return _glob(text, path, errors)
    try:
        endpoint = parse_hostport(text)
    except InputError as exc:
        errors.add(path, exc.message)
        return None
    return endpoint.host, endpoint.port if _has_port(text) else None


def _glob(text: str, path: str, errors: _Errors) -> tuple[str, int | None] | None:
    pattern, _, port_text = text.partition(":")
    port: int | None = None
    if port_text:
        if not (port_text.isdigit() and len(port_text) <= 5 and 1 <= int(port_text) <= 65535):
            errors.add(path, f"invalid port {port_text!r} in {text!r}")
            return None
        port = int(port_text)
    pattern = pattern.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if not set(pattern) <= _GLOB_CHARS:
        errors.add(
            path,
            f"glob {text!r} may only use letters, digits, '.', '-', '_', '*' and '?' "
            "(IPv6 literals and [...] sets are not supported in globs)",
        )
        return None
    try:  # with the wildcards filled in, it must be a valid host name
        HostPort(pattern.replace("*", "a").replace("?", "a"))
    except InputError:
        errors.add(path, f"glob {text!r} does not describe host names (empty or odd labels)")
        return None
    return pattern, port


def _has_port(text: str) -> bool:
    if text.startswith("["):
        return "]:" in text
    return text.count(":") == 1  # more than one colon is a bare IPv6 literal, no port


def _pins(entry: Mapping[Any, Any], path: str, errors: _Errors) -> tuple[str, ...]:
    if "pins" not in entry:
        return ()
    value = entry["pins"]
    if not isinstance(value, list) or not value:
        # An empty `pins:` pins nothing; refusing it keeps a half-written pin list from
        # quietly meaning "any anchor".
        errors.add(
            f"{path}.pins",
            f"must be a non-empty list of sha256 fingerprints, not {_shown(value)}; remove "
            "the key to allow any anchor",
        )
        return ()
    if len(value) > MAX_PINS:
        errors.add(f"{path}.pins", f"{len(value)} pins: more than the {MAX_PINS} allowed")
        return ()
    pins: set[str] = set()
    for number, pin in enumerate(value):
        normal = _pin(pin)
        if normal is None:
            errors.add(
                f"{path}.pins[{number}]",
                f"not a sha256 fingerprint (sha256: and 64 hex digits, colons allowed): "
                f"{_shown(pin)}",
            )
        else:
            pins.add(normal)
    return tuple(sorted(pins))


def _pin(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return normalize_pin(value)
    except InputError:
        return None


def _ca_pem(
    entry: Mapping[Any, Any],
    path: str,
    pins: tuple[str, ...],
    errors: _Errors,
    cache: dict[str, bytes | str],
) -> bytes | None:
    if "caPEM" not in entry:
        return None
    value = entry["caPEM"]
    where = f"{path}.caPEM"
    # Any PEM block goes on to the parser, so a key pasted by mistake is named as such.
    if not isinstance(value, str) or "-----BEGIN " not in value:
        errors.add(where, "must be PEM text with at least one -----BEGIN CERTIFICATE----- block")
        return None
    if len(value) > MAX_CA_PEM_BYTES:
        errors.add(where, f"larger than {MAX_CA_PEM_BYTES // 1024} KiB")
        return None
    outcome = cache.get(value)
    if outcome is None:  # an alias repeats the same text: parse it once
        outcome = cache[value] = _bundle_or_problem(value)
    if isinstance(outcome, str):
        errors.add(where, outcome)
        return None
    if pins:
        from agent.core.trust import parse_pem_bundle  # only a caPEM entry loads the X.509 stack

        for number, cert in enumerate(parse_pem_bundle(outcome)):
            if cert.sha256 not in pins:
                errors.add(
                    where,
                    f"certificate {number} ({cert.subject}, {cert.sha256}) is not in pins; "
                    "every declared certificate must be pinned when pins are given",
                )
    return outcome


def _bundle_or_problem(text: str) -> bytes | str:
    """Deterministic bundle bytes, or what is wrong with the PEM."""
    from agent.core.trust import parse_pem_bundle, pem_bundle

    try:
        return pem_bundle(parse_pem_bundle(text.encode("utf-8")))
    except AgentError as exc:
        return exc.message
