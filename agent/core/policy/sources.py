"""Strict reading of `registries[].caFrom`: a CA the cluster already holds.

    caFrom: {configMap: {name: corp-ca, key: ca.crt}}       # in the agent's namespace
    caFrom: {clusterTrustBundle: {name: corp-ca}}             # certificates.k8s.io/v1beta1
    caFrom: {clusterTrustBundle: {signerName: corp.example/ca,
                                  labelSelector: {matchLabels: {trust: registry}}}}

The shape follows the Pod API (`configMapKeyRef`-like names, the projected volume's
`clusterTrustBundle` fields), so an operator who wrote one of those can write this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agent.core.policy.model import CASource
from agent.core.policy.problems import _Errors, _shown, _unknown_keys

_FROM_KEYS = ("configMap", "clusterTrustBundle")
_CM_KEYS = ("name", "key")
_CTB_KEYS = ("name", "signerName", "labelSelector")
# Kubernetes' own rules: an object name is a DNS subdomain, a ConfigMap key
# [-._a-zA-Z0-9]+, a label value at most 63 characters.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_CM_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")
_SIGNER = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]{1,250}")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-._A-Za-z0-9]{0,61}[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"(|[A-Za-z0-9]([-._A-Za-z0-9]{0,61}[A-Za-z0-9])?)")


def ca_from(value: Any, path: str, errors: _Errors) -> CASource | None:
    """`registries[i].caFrom`, or None with the problems added to `errors`."""
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in _FROM_KEYS:
        if isinstance(value, Mapping):
            _unknown_keys(value, _FROM_KEYS, f"{path}.", errors)
        errors.add(path, f"must hold exactly one of {', '.join(_FROM_KEYS)}, not {_shown(value)}")
        return None
    ((kind, spec),) = value.items()
    where = f"{path}.{kind}"
    if not isinstance(spec, Mapping):
        errors.add(where, f"must be a mapping, not {_shown(spec)}")
        return None
    before = len(errors.items)
    if kind == "configMap":
        source = _config_map(spec, where, errors)
    else:
        source = _trust_bundle(spec, where, errors)
    return source if len(errors.items) == before else None


def _config_map(spec: Mapping[Any, Any], where: str, errors: _Errors) -> CASource | None:
    _unknown_keys(spec, _CM_KEYS, f"{where}.", errors)
    name = _text(spec, "name", _NAME, where, errors, "a ConfigMap name")
    key = _text(spec, "key", _CM_KEY, where, errors, "a ConfigMap key such as ca.crt")
    if name is None or key is None:
        return None
    return CASource("configMap", name=name, key=key)


def _trust_bundle(spec: Mapping[Any, Any], where: str, errors: _Errors) -> CASource | None:
    _unknown_keys(spec, _CTB_KEYS, f"{where}.", errors)
    if ("name" in spec) == ("labelSelector" in spec):
        errors.add(where, "needs exactly one of name or labelSelector")
        return None
    signer = ""
    if "signerName" in spec:
        signer = (
            _text(spec, "signerName", _SIGNER, where, errors, "a signer such as corp.example/ca")
            or ""
        )
    if "name" in spec:
        name = _text(spec, "name", _NAME, where, errors, "a ClusterTrustBundle name")
        return CASource("clusterTrustBundle", name=name or "", signer_name=signer)
    labels = _match_labels(spec["labelSelector"], f"{where}.labelSelector", errors)
    return CASource("clusterTrustBundle", signer_name=signer, labels=labels)


def _match_labels(value: Any, where: str, errors: _Errors) -> tuple[tuple[str, str], ...]:
    # matchLabels only: a selector that matched every bundle (an empty one) would trust
    # whatever anybody publishes cluster-wide, so it must name at least one label.
    if not isinstance(value, Mapping) or set(value) != {"matchLabels"}:
        errors.add(where, f"must be {{matchLabels: {{label: value}}}}, not {_shown(value)}")
        return ()
    labels = value["matchLabels"]
    if not isinstance(labels, Mapping) or not labels:
        errors.add(f"{where}.matchLabels", "must name at least one label: value")
        return ()
    out = []
    for k, v in labels.items():
        if not (isinstance(k, str) and _LABEL_KEY.fullmatch(k)):
            errors.add(f"{where}.matchLabels", f"{_shown(k)} is not a label key")
        elif not (isinstance(v, str) and _LABEL_VALUE.fullmatch(v)):
            errors.add(f"{where}.matchLabels.{k}", f"{_shown(v)} is not a label value")
        else:
            out.append((k, v))
    return tuple(sorted(out))


def _text(
    spec: Mapping[Any, Any],
    key: str,
    pattern: re.Pattern[str],
    where: str,
    errors: _Errors,
    what: str,
) -> str | None:
    value = spec.get(key)
    if value is None:
        errors.add(where, f"missing {key}")
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        errors.add(f"{where}.{key}", f"must be {what}, not {_shown(value)}")
        return None
    return value
