"""Pure: policy.yaml -> Policy, and the allow / pin decision for one registry endpoint.

The policy is the operator's security boundary, so it is read strictly: an unknown key, a
value of the wrong type, a duplicate key or a duplicate registry is an error, never a
default. A typo such as `pin:` for `pins:` would otherwise silently drop a pin. A policy
that fails here never takes effect (the caller keeps the last good one). Every problem
found is reported at once, each as `path: what is wrong` (`registries[2].pins[0]: not a
sha256 fingerprint ...`), joined with "; " in one PolicyError(kind="invalid").

Registry rules (`registries[].host`):
- `name`, `name:port`, an IP literal, `[v6]:port`: exact. Without a port the rule
  allows every port of that host.
- a glob with `*` and/or `?` (`*.corp.example`, `reg-?.corp.example:5000`), matched
  case-insensitively against the whole host name. `*` matches any run of characters,
  dots included: `*.corp.example` matches `a.corp.example` and `a.b.corp.example`, but not
  `corp.example` (no label before the dot) nor `evilcorp.example` (the dot is literal).
  A glob can only widen a name inside the literal suffix that follows its last `*`, so a
  glob is as safe as that suffix. `[...]` sets are not supported (they would clash with
  IPv6 brackets); a glob with no port allows any port.

When several rules match an endpoint, exactly one decides (its pins apply, never a mix):
  1. an exact `host:port` rule,
  2. an exact `host` rule (any port),
  3. globs, the longest pattern first; at equal length a glob with a port first;
then the earlier rule in the file. A more specific rule can therefore relax or tighten the
pins of a broad glob, and an operator can read which one applies from the file alone.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.core.errors import AgentError, InputError, PolicyError
from agent.core.hostport import DEFAULT_PORT, HostPort, parse_hostport
from agent.core.pins import normalize_pin

MAX_POLICY_BYTES = 1 << 20
# Bounds that keep a document full of YAML aliases from multiplying the work.
MAX_REGISTRIES = 1000
MAX_PINS = 64
MAX_CA_PEM_BYTES = 256 * 1024
MAX_REPORTED_ERRORS = 20

SCOPES = ("registry", "system", "auto")
RESTARTS = ("auto", "never")

_TOP_KEYS = (
    "scope",
    "restart",
    "maxConcurrentRestarts",
    "allowDockerRestartWithoutLiveRestore",
    "dryRun",
    "recyclePods",
    "registries",
)
_RULE_KEYS = ("host", "pins", "caPEM")
_GLOB_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_*?")


@dataclass(frozen=True)
class RegistryRule:
    """One entry of `registries`: which endpoints it allows and what it requires."""

    pattern: str  # canonical host (lower case, IPs normalised) or a lower-case glob
    port: int | None = None  # None: any port
    pins: tuple[str, ...] = ()  # "sha256:" + 64 upper-case hex digits, sorted, unique
    ca_pem: bytes | None = None  # declarative anchors: deterministic PEM bundle
    index: int = 0  # position in policy.yaml `registries`, for messages

    @property
    def is_glob(self) -> bool:
        return "*" in self.pattern or "?" in self.pattern

    @property
    def host(self) -> str:
        """The rule as an operator wrote it (canonicalised): `name[:port]` or the glob."""
        name = f"[{self.pattern}]" if ":" in self.pattern else self.pattern
        return name if self.port is None else f"{name}:{self.port}"

    @property
    def source(self) -> str:
        return f"registries[{self.index}]"

    def matches(self, endpoint: HostPort) -> bool:
        if self.port is not None and self.port != endpoint.port:
            return False
        return self.matches_host(endpoint.host)

    def matches_host(self, host: str) -> bool:
        # HostPort hosts are already lower case; patterns are lower-cased when parsed.
        if self.is_glob:
            return fnmatch.fnmatchcase(host.lower(), self.pattern)
        return host.lower() == self.pattern

    def precedence(self) -> tuple[int, int, int, int]:
        """Sort key: the smallest matching rule decides (see the module docstring)."""
        if not self.is_glob:
            return (0 if self.port is not None else 1, 0, 0, self.index)
        return (2, -len(self.pattern), 0 if self.port is not None else 1, self.index)


@dataclass(frozen=True)
class Decision:
    """May the agent trust a CA for this endpoint, and under which pins."""

    allowed: bool
    rule: RegistryRule | None
    pins: tuple[str, ...]
    reason: str  # one operator-facing sentence, used in Events and logs


@dataclass(frozen=True)
class Policy:
    scope: str = "auto"
    restart: str = "auto"
    max_concurrent_restarts: int = 1
    allow_docker_restart_without_live_restore: bool = False
    dry_run: bool = False
    recycle_pods: bool = False  # reserved: recreate pods stuck in back-off after a fix
    registries: tuple[RegistryRule, ...] = field(default=())

    def rule_for(self, endpoint: HostPort) -> RegistryRule | None:
        matching = [rule for rule in self.registries if rule.matches(endpoint)]
        return min(matching, key=RegistryRule.precedence, default=None)

    def decide(self, endpoint: HostPort) -> Decision:
        rule = self.rule_for(endpoint)
        if rule is not None:
            reason = f"{endpoint.key} is allowed by policy.yaml {rule.source} (host {rule.host!r})"
            if len(rule.pins) == 1:
                reason += "; only an anchor with the pinned fingerprint will be trusted"
            elif rule.pins:
                reason += (
                    f"; only an anchor with one of the {len(rule.pins)} pinned fingerprints "
                    "will be trusted"
                )
            return Decision(True, rule, rule.pins, reason)
        if not self.registries:
            return Decision(
                False,
                None,
                (),
                f"{endpoint.key} is not allowed: policy.yaml lists no registries, so every "
                "registry is denied",
            )
        return Decision(False, None, (), self._not_listed(endpoint))

    def _not_listed(self, endpoint: HostPort) -> str:
        reason = f"{endpoint.key} is not listed in policy.yaml registries"
        other_port = [r for r in self.registries if r.matches_host(endpoint.host)]
        if other_port:
            rule = min(other_port, key=RegistryRule.precedence)
            reason += f" ({rule.source} {rule.host!r} allows port {rule.port} only)"
        return reason

    def declared(self) -> tuple[tuple[HostPort, bytes, tuple[str, ...]], ...]:
        """Registries with `caPEM`: trusted on every opted-in node without a fetch.

        A caPEM rule without a port declares the CA for port 443 (the endpoint whose
        certs.d directory is the bare host name).
        """
        return tuple(
            (HostPort(rule.pattern, rule.port or DEFAULT_PORT), rule.ca_pem, rule.pins)
            for rule in self.registries
            if rule.ca_pem is not None
        )

    def summary(self) -> dict[str, Any]:
        """The effective policy in policy.yaml's own words, for the startup log."""
        return {
            "scope": self.scope,
            "restart": self.restart,
            "maxConcurrentRestarts": self.max_concurrent_restarts,
            "allowDockerRestartWithoutLiveRestore": self.allow_docker_restart_without_live_restore,
            "dryRun": self.dry_run,
            "recyclePods": self.recycle_pods,
            "registries": [_rule_summary(rule) for rule in self.registries],
        }


DEFAULT_POLICY = Policy()


def parse_policy(text: str) -> Policy:
    """Parse and validate policy.yaml. An empty document is DEFAULT_POLICY (deny all).

    Raises PolicyError(kind="invalid") listing every problem found.
    """
    if not isinstance(text, str):
        raise PolicyError("policy.yaml must be text", kind="invalid")
    if len(text) > MAX_POLICY_BYTES or len(text.encode("utf-8", "replace")) > MAX_POLICY_BYTES:
        raise PolicyError(
            f"policy.yaml is larger than {MAX_POLICY_BYTES // 1024} KiB", kind="invalid"
        )
    document = _load_yaml(text)
    if document is None:
        return DEFAULT_POLICY
    if not isinstance(document, Mapping):
        raise PolicyError(
            f"policy.yaml must be a mapping of settings, not {_type_name(document)}",
            kind="invalid",
        )
    errors = _Errors()
    policy = _policy(document, errors)
    errors.raise_if_any()
    return policy


# --- YAML ---------------------------------------------------------------------------------

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """yaml.safe_load, except that a key given twice is an error.

    PyYAML keeps the last value of a repeated key; in a security policy a second
    `registries:` or `dryRun:` further down must not silently replace the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice", key_node.start_mark
                    )
                seen.add(key_node.value)
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy.yaml is not valid YAML: {_one_line(exc)}", "invalid") from exc
    except RecursionError as exc:
        raise PolicyError("policy.yaml is nested too deeply", kind="invalid") from exc


# --- validation ---------------------------------------------------------------------------


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, problem: str) -> None:
        self.items.append(f"{path}: {problem}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_ERRORS]
        more = len(self.items) - len(shown)
        message = "; ".join(shown) + (f"; and {more} more" if more else "")
        raise PolicyError(message, kind="invalid")


def _policy(document: Mapping[Any, Any], errors: _Errors) -> Policy:
    _unknown_keys(document, _TOP_KEYS, "", errors)
    defaults = DEFAULT_POLICY
    return Policy(
        scope=_choice(document, "scope", SCOPES, defaults.scope, errors),
        restart=_choice(document, "restart", RESTARTS, defaults.restart, errors),
        max_concurrent_restarts=_positive_int(
            document, "maxConcurrentRestarts", defaults.max_concurrent_restarts, errors
        ),
        allow_docker_restart_without_live_restore=_bool(
            document,
            "allowDockerRestartWithoutLiveRestore",
            defaults.allow_docker_restart_without_live_restore,
            errors,
        ),
        dry_run=_bool(document, "dryRun", defaults.dry_run, errors),
        recycle_pods=_bool(document, "recyclePods", defaults.recycle_pods, errors),
        registries=_registries(document.get("registries"), errors),
    )


def _unknown_keys(
    mapping: Mapping[Any, Any], known: tuple[str, ...], prefix: str, errors: _Errors
) -> None:
    lowered = {k.lower(): k for k in known}
    for key in mapping:
        if key in known:
            continue
        name = key if isinstance(key, str) and len(key) <= 80 else _shown(key)
        path = f"{prefix}{name}"
        guess = difflib.get_close_matches(str(key)[:80].lower(), list(lowered), n=1, cutoff=0.6)
        hint = f"; did you mean {lowered[guess[0]]!r}?" if guess else ""
        errors.add(path, f"unknown key (known: {', '.join(known)}){hint}")


def _choice(
    document: Mapping[Any, Any], key: str, allowed: tuple[str, ...], default: str, errors: _Errors
) -> str:
    if key not in document:
        return default
    value = document[key]
    if isinstance(value, str) and value in allowed:
        return value
    errors.add(key, f"must be one of {', '.join(allowed)}, not {_shown(value)}")
    return default


def _bool(document: Mapping[Any, Any], key: str, default: bool, errors: _Errors) -> bool:
    if key not in document:
        return default
    value = document[key]
    if isinstance(value, bool):
        return value
    errors.add(key, f"must be true or false, not {_shown(value)}")
    return default


def _positive_int(document: Mapping[Any, Any], key: str, default: int, errors: _Errors) -> int:
    if key not in document:
        return default
    value = document[key]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    errors.add(key, f"must be a whole number of at least 1, not {_shown(value)}")
    return default


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
    if parsed is None or len(errors.items) != before:
        return None
    pattern, port = parsed
    if ca_pem is not None and ("*" in pattern or "?" in pattern):
        errors.add(
            f"{path}.caPEM",
            f"needs an exact host, not the glob {entry['host']!r}: a declared CA is written "
            "for one registry",
        )
        return None
    return RegistryRule(pattern, port, pins, ca_pem, index)


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


def _rule_summary(rule: RegistryRule) -> dict[str, Any]:
    summary: dict[str, Any] = {"host": rule.host}
    if rule.pins:
        summary["pins"] = list(rule.pins)
    if rule.ca_pem is not None:
        summary["caPEM"] = f"{rule.ca_pem.count(b'-----BEGIN CERTIFICATE-----')} certificate(s)"
    return summary


def _type_name(value: Any) -> str:
    names: Mapping[type, str] = {list: "a list", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    """A value for an error message: short, one line, with its type when it is not a str."""
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _one_line(exc: yaml.YAMLError) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
