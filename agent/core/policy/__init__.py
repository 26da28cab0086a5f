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

The package holds the policy as values and decisions (`model`) apart from the strict reading
of policy.yaml (`schema` for the document, `registries` for its `registries` entries,
`problems` for how each problem is collected and worded).
"""

from agent.core.options import HOSTS_TOML_MODES, RESTARTS, SCOPES, InstallOptions
from agent.core.policy.model import (
    APPROVALS,
    DEFAULT_POLICY,
    MAX_CA_PEM_BYTES,
    MAX_PINS,
    MAX_POLICY_BYTES,
    MAX_REGISTRIES,
    MAX_REPORTED_ERRORS,
    CASource,
    Decision,
    Interception,
    Policy,
    RegistryRule,
    Resolved,
)
from agent.core.policy.schema import parse_policy

__all__ = [
    "APPROVALS",
    "DEFAULT_POLICY",
    "HOSTS_TOML_MODES",
    "MAX_CA_PEM_BYTES",
    "MAX_PINS",
    "MAX_POLICY_BYTES",
    "MAX_REGISTRIES",
    "MAX_REPORTED_ERRORS",
    "RESTARTS",
    "SCOPES",
    "CASource",
    "Decision",
    "InstallOptions",
    "Interception",
    "Policy",
    "RegistryRule",
    "Resolved",
    "parse_policy",
]
