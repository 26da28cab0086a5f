"""Strict reading of policy.yaml as a document: size, YAML without duplicate keys, and the
top-level settings. The `registries` entries are read by `registries`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from agent.core.errors import PolicyError
from agent.core.options import HOSTS_TOML_MODES, RESTARTS, SCOPES
from agent.core.policy.interception import interception as _interception
from agent.core.policy.model import (
    APPROVALS,
    DEFAULT_POLICY,
    MAX_POLICY_BYTES,
    Policy,
)
from agent.core.policy.problems import _Errors, _shown, _unknown_keys
from agent.core.policy.registries import _registries, confirmations_value

_TOP_KEYS = (
    "scope",
    "restart",
    "maxConcurrentRestarts",
    "allowDockerRestartWithoutLiveRestore",
    "dryRun",
    "recyclePods",
    "confirmations",
    "approval",
    "hostsToml",
    "registries",
    "interception",
)


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


# --- settings ---------------------------------------------------------------------------


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
        confirmations=_confirmations(document, "confirmations", errors) or 1,
        approval=_choice(document, "approval", APPROVALS, defaults.approval, errors),
        hosts_toml=_choice(document, "hostsToml", HOSTS_TOML_MODES, defaults.hosts_toml, errors),
        registries=_registries(document.get("registries"), errors),
        interception=_interception(document.get("interception"), errors),
    )


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


def _confirmations(document: Mapping[Any, Any], key: str, errors: _Errors) -> int | None:
    return confirmations_value(document[key], key, errors) if key in document else None


def _type_name(value: Any) -> str:
    names: Mapping[type, str] = {list: "a list", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def _one_line(exc: yaml.YAMLError) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
