"""Error-text parsing: one image-pull error message -> PullFailure (kind, failing host,
image, registry, Go's conflicting-CA hint), and an image reference -> its registry.

The kinds and the two hosts are explained in the package docstring. The text is
untrusted: it is bounded before any regex runs and no regex here can backtrack
catastrophically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.core.errors import InputError
from agent.core.hostport import HostPort, parse_hostport

MESSAGE_LIMIT_BYTES = 4096
# Enough for any real kubelet message (long CDN URLs included); bounds the regex work.
SCAN_LIMIT_CHARS = 65536
IMAGE_LIMIT_CHARS = 512

DOCKER_HUB = HostPort("docker.io", 443)

KINDS = ("unknown-authority", "hostname-mismatch", "conflicting-ca", "expired", "other-x509")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Matched on the lower-cased text. Go wordings from crypto/x509 (verify.go).
_MISMATCH_PHRASES = (
    "x509: certificate is valid for ",
    "x509: certificate is not valid for any names",
    "x509: cannot validate certificate for ",
)
_EXPIRED_PHRASE = "x509: certificate has expired or is not yet valid"
_UNKNOWN_AUTHORITY_PHRASE = "certificate signed by unknown authority"
_X509_PREFIX = "x509:"

# A Go %q string: escaped characters are consumed by `\\.`, everything else by the class;
# the two alternatives start with different characters, so matching is linear.
_GO_QUOTED = r'"((?:[^"\\\n]|\\.){0,512})"'
_HINT = re.compile(
    r"\(possibly because of "
    + _GO_QUOTED
    + r" while trying to verify candidate authority certificate "
    + _GO_QUOTED
    + r"\)"
)
# The authority part only: characters a host, port, IPv6 literal or user info can use.
# Stopping at anything else keeps "(https://x.example)" and "https://x: x509" clean.
_URL_AUTHORITY = re.compile(r"https://([A-Za-z0-9._~%@:\[\]-]{1,600})", re.IGNORECASE)
# Older containers/image (CRI-O, podman) name the registry before the URL; newer ones say
# "pinging container registry".
_PINGING = re.compile(
    r"(?:error pinging docker registry|pinging container registry) ([^\s:/\"]{1,300}(?::\d{1,5})?)",
    re.IGNORECASE,
)
# Outermost first: kubelet's own wording names the image the user wrote.
_IMAGE_PATTERNS = (
    re.compile(r'failed to pull image "([^"\n]{1,600})"', re.IGNORECASE),
    re.compile(r'failed to pull and unpack image "([^"\n]{1,600})"', re.IGNORECASE),
    re.compile(r'failed to resolve reference "([^"\n]{1,600})"', re.IGNORECASE),
    re.compile(r'failed to get sandbox image "([^"\n]{1,600})"', re.IGNORECASE),
    re.compile(r'back-off pulling image "([^"\n]{1,600})"', re.IGNORECASE),
    # containers/image (CRI-O, podman) names the source transport-qualified, unquoted.
    re.compile(r"initializing source docker://([^\s\"]{1,600}): "),
)
_IMAGE_SYNTAX = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._/:@\[\]+-]*")


@dataclass(frozen=True)
class PullFailure:
    """One x509 image-pull failure, as far as the message tells."""

    kind: str  # one of KINDS
    failing: HostPort | None  # host:port from the URL in the message; None without a URL
    image: str | None  # the image reference as given (a "docker://" prefix dropped)
    registry: HostPort | None  # the image's registry; None when the image is unknown
    message: str  # the original text, truncated to MESSAGE_LIMIT_BYTES of UTF-8
    x509: str = ""  # the Go error class: KINDS without "conflicting-ca" ("": from kind)
    hint: str | None = None  # signature error in Go's "(possibly because of ...)" hint
    hint_authority: str | None = None  # name of the candidate CA that did not verify

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown pull failure kind {self.kind!r}")
        if not self.x509:  # built by hand (tests, other modules): the class follows the kind
            derived = "unknown-authority" if self.kind == "conflicting-ca" else self.kind
            object.__setattr__(self, "x509", derived)

    @property
    def remediable(self) -> bool:
        """Installing the failing host's CA can fix this pull."""
        return self.kind == "unknown-authority" and self.failing is not None

    @property
    def conflicting_ca(self) -> bool:
        return self.kind == "conflicting-ca"


def parse_pull_error(message: str, image: str | None = None) -> PullFailure | None:
    """Classify one error message; None when it is not an x509 failure.

    `image` is a hint (the container's image from the pod spec). An image named in the
    message wins over it: a sandbox failure names the pause image, not the container's.
    """
    if not isinstance(message, str):
        return None
    text = message[:SCAN_LIMIT_CHARS]
    # ASCII-only lower-casing keeps offsets in `lower` valid in `text` ("İ".lower() is 2 chars).
    lower = text.translate(_ASCII_LOWER)
    found = _classify(lower)
    if found is None:
        return None
    x509, error_at = found
    hint: str | None = None
    hint_authority: str | None = None
    kind = x509
    if x509 == "unknown-authority":
        match = _HINT.search(text)
        if match is not None:
            hint, hint_authority = _go_unquote(match.group(1)), _go_unquote(match.group(2))
            kind = "conflicting-ca"
    found_image = _image_from_message(text)
    if found_image is None and image is not None:
        found_image = normalize_image(image)
    return PullFailure(
        kind=kind,
        failing=_failing_host(text, error_at),
        image=found_image,
        registry=_registry_or_none(found_image),
        message=_truncate(message),
        x509=x509,
        hint=hint,
        hint_authority=hint_authority,
    )


def image_registry(image: str) -> HostPort:
    """The registry an image reference pulls from, as docker and containerd decide it.

    The first path component is a registry when it contains "." or ":", is "localhost",
    is an IPv6 literal in brackets, or has upper-case letters (distribution/reference's
    rule); otherwise the image is on Docker Hub (docker.io:443). Raises InputError for a
    registry that is not a valid host[:port].
    """
    ref = image.strip()
    if ref.startswith("docker://"):
        ref = ref[len("docker://") :]
    name = ref.split("@", 1)[0]  # a digest never names the registry
    slash = name.find("/")
    if slash < 0:
        return DOCKER_HUB
    first = name[:slash]
    if not (
        "." in first
        or ":" in first
        or first == "localhost"
        or first.startswith("[")
        or first != first.lower()
    ):
        return DOCKER_HUB
    registry = parse_hostport(first)
    if registry.host == "index.docker.io":  # the legacy name of the same registry
        return HostPort("docker.io", registry.port)
    return registry


def normalize_image(image: str) -> str | None:
    """The reference as given, stripped; None when it cannot be an image reference."""
    ref = image.strip()
    if ref.startswith("docker://"):
        ref = ref[len("docker://") :]
    if not ref or len(ref) > IMAGE_LIMIT_CHARS or _IMAGE_SYNTAX.fullmatch(ref) is None:
        return None
    return ref


def _classify(lower: str) -> tuple[str, int] | None:
    """The x509 class and where its error starts; None when there is no x509 error."""
    for phrase in _MISMATCH_PHRASES:
        at = lower.find(phrase)
        if at >= 0:
            return "hostname-mismatch", at
    at = lower.find(_EXPIRED_PHRASE)
    if at >= 0:
        return "expired", at
    at = lower.find(_UNKNOWN_AUTHORITY_PHRASE)
    if at >= 0:
        prefixed = lower.rfind(_X509_PREFIX, 0, at)
        return "unknown-authority", prefixed if prefixed >= 0 else at
    at = lower.find(_X509_PREFIX)
    if at >= 0:
        return "other-x509", at
    return None


def _failing_host(text: str, error_at: int) -> HostPort | None:
    """The host of the last URL before the error (the request that failed)."""
    last: str | None = None
    for match in _URL_AUTHORITY.finditer(text, 0, error_at):
        last = match.group(1)
    if last is not None:
        return _hostport_or_none(_authority_host(last))
    pinging = _PINGING.search(text, 0, error_at)
    if pinging is not None:
        return _hostport_or_none(pinging.group(1))
    return None


def _authority_host(authority: str) -> str:
    host = authority.rsplit("@", 1)[-1]
    # "Get https://host:5000: x509: ..." (unquoted, no path) leaves the separator colon.
    return host.rstrip(":")


def _hostport_or_none(text: str) -> HostPort | None:
    try:
        return parse_hostport(text)
    except InputError:
        return None


def _registry_or_none(image: str | None) -> HostPort | None:
    if image is None:
        return None
    try:
        return image_registry(image)
    except InputError:
        return None


def _image_from_message(text: str) -> str | None:
    for pattern in _IMAGE_PATTERNS:
        match = pattern.search(text)
        if match is not None:
            image = normalize_image(match.group(1))
            if image is not None:
                return image
    return None


def _go_unquote(quoted: str) -> str:
    r"""Undo Go's %q escaping of \" and \\ (enough for a CA name in a report)."""
    out: list[str] = []
    escaped = False
    for char in quoted:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def _truncate(message: str) -> str:
    data = message[:MESSAGE_LIMIT_BYTES].encode("utf-8", errors="replace")
    return data[:MESSAGE_LIMIT_BYTES].decode("utf-8", errors="ignore")
