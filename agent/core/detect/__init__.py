"""Pure detection: image-pull error text, pod statuses and Events -> PullFailure.

Every wording this module knows is a case in tests/fixtures/pull-errors.txt. The text
comes from kubelet, containerd, CRI-O and dockerd through the API server, so it is
untrusted input: it is bounded before any regex runs, the regexes have no nested
quantifiers (no catastrophic backtracking), and a host name that does not validate as a
HostPort becomes `failing=None`, never an exception.

Two hosts are extracted and they are different things:
- `failing`: the host:port in the URL that failed TLS verification. This is the chain to
  trust, and it can be an auth-token server (auth.docker.io) or a CDN blob host.
- `registry`: the image's registry (docker.io for Docker Hub short names). Its
  `certs.d/<registry>/` directory is where registry-scoped trust goes.

Kinds (`PullFailure.kind`), in the order they win when a message holds several errors
(anything that must never be auto-remediated wins):
- "hostname-mismatch": the certificate is valid, but not for this name. Installing a CA
  cannot fix it and must not be attempted.
- "expired": expired or not yet valid (Go prints one message for both).
- "conflicting-ca": unknown authority, but Go adds
  `(possibly because of "<signature error>" while trying to verify candidate authority
  certificate "<name>")`: a CA with the issuer's name WAS found and its key did not sign
  this certificate. Either a different CA with the same name is already trusted (a rotated
  corporate root, see kpack#844) or someone presents a certificate under a well-known CA's
  name that the CA did not sign (interception). Both are for a person to look at, so this
  is never remediable. `x509` stays "unknown-authority" (that is the Go error) and the
  hint is exposed in `hint` / `hint_authority` for the report.
- "unknown-authority": the case the agent fixes.
- "other-x509": any other `x509:` error (legacy CN, bad key usage, malformed, ...).

The package holds the reading of the error text (`message`: phrases, regexes, Go
unquoting, the failing host and the image's registry) apart from the walk over the API
objects that carry it (`pods`: pod statuses, spec images, Events).
"""

from agent.core.detect.message import (
    DOCKER_HUB,
    IMAGE_LIMIT_CHARS,
    KINDS,
    MESSAGE_LIMIT_BYTES,
    SCAN_LIMIT_CHARS,
    PullFailure,
    image_registry,
    normalize_image,
    parse_pull_error,
)
from agent.core.detect.pods import (
    EVENT_REASONS,
    POD_STATUS_REASONS,
    PodPullFailure,
    pod_pull_failure_from_event,
    pull_failure_from_event,
    pull_failures_from_pod,
)

__all__ = [
    "DOCKER_HUB",
    "EVENT_REASONS",
    "IMAGE_LIMIT_CHARS",
    "KINDS",
    "MESSAGE_LIMIT_BYTES",
    "POD_STATUS_REASONS",
    "SCAN_LIMIT_CHARS",
    "PodPullFailure",
    "PullFailure",
    "image_registry",
    "normalize_image",
    "parse_pull_error",
    "pod_pull_failure_from_event",
    "pull_failure_from_event",
    "pull_failures_from_pod",
]
