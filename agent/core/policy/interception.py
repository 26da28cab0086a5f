"""Strict reading of policy.yaml `interception`: a TLS-inspecting proxy's CA and the
registries it covers.

    interception:
      caPEM: |                         # or caFrom: {configMap: ...} / {clusterTrustBundle: ...}
        -----BEGIN CERTIFICATE-----    # or spki: [sha256:...] (the proxy must send its CA)
        ...
      hosts: ["*"]                     # default: every registry; globs as in registries
      except: [registry.corp:5000]     # registries reached without the proxy

Exactly one of caPEM, caFrom and spki names the CA. `hosts` and `except` take the host forms
of `registries[].host` (exact `name[:port]`, IP, globs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.core.policy.model import MAX_PINS, MAX_REGISTRIES, Interception, RegistryRule
from agent.core.policy.problems import _Errors, _shown, _unknown_keys
from agent.core.policy.registries import _ca_pem, _host, _pin
from agent.core.policy.sources import ca_from as _ca_from_source

_KEYS = ("caPEM", "caFrom", "spki", "hosts", "except")
_CA_KEYS = ("caPEM", "caFrom", "spki")


def interception(value: Any, errors: _Errors) -> Interception | None:
    """`interception`, or None (absent, or with the problems added to `errors`)."""
    if value is None:
        return None
    path = "interception"
    if not isinstance(value, Mapping):
        errors.add(path, f"must be a mapping with caPEM, caFrom or spki, not {_shown(value)}")
        return None
    before = len(errors.items)
    _unknown_keys(value, _KEYS, f"{path}.", errors)
    given = [k for k in _CA_KEYS if k in value]
    if len(given) != 1:
        errors.add(
            path,
            "name the proxy's CA with exactly one of caPEM, caFrom and spki"
            + (f" (given: {', '.join(given)})" if given else ""),
        )
    ca_pem = _ca_pem(value, path, (), errors, {}) if "caPEM" in value else None
    source = (
        _ca_from_source(value["caFrom"], f"{path}.caFrom", errors) if "caFrom" in value else None
    )
    spki = _spki(value["spki"], f"{path}.spki", errors) if "spki" in value else ()
    hosts = _hosts(value.get("hosts"), f"{path}.hosts", errors) if "hosts" in value else ()
    except_ = _hosts(value.get("except"), f"{path}.except", errors) if "except" in value else ()
    if len(errors.items) != before:
        return None
    return Interception(ca_pem, source, spki, hosts, except_)


def _spki(value: Any, path: str, errors: _Errors) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_PINS:
        errors.add(
            path,
            f"must be a list of 1 to {MAX_PINS} sha256 fingerprints of the CA's "
            f"SubjectPublicKeyInfo, not {_shown(value)}",
        )
        return ()
    pins: set[str] = set()
    for number, item in enumerate(value):
        normal = _pin(item)
        if normal is None:
            errors.add(
                f"{path}[{number}]",
                f"not a sha256 fingerprint (sha256: and 64 hex digits): {_shown(item)}",
            )
        else:
            pins.add(normal)
    return tuple(sorted(pins))


def _hosts(value: Any, path: str, errors: _Errors) -> tuple[RegistryRule, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_REGISTRIES:
        errors.add(
            path,
            f"must be a non-empty list of hosts or globs (registry.corp:5000, *.corp.example), "
            f"not {_shown(value)}",
        )
        return ()
    rules: list[RegistryRule] = []
    for number, item in enumerate(value):
        parsed = _host(item, f"{path}[{number}]", errors)
        if parsed is not None:
            rules.append(RegistryRule(parsed[0], parsed[1], index=number))
    return tuple(rules)
