"""After a refresh: does the bundle the runtimes read really hold (or no longer hold) our anchor?

The refresh commands do not prove it by their exit status: RHEL's, EL8/9's and openEuler's
`update-ca-trust` have no `set -e` and return 0 after p11-kit failed to write the bundle,
and p11-kit silently leaves non-CA anchors out. So the engine reads the bundle back.

"The bundle the runtimes read" is what Go's crypto/x509 reads (containerd, dockerd, CRI-O
and the kubelet are Go): the first of its `certFiles` that exists, links followed inside
the host root. On RHEL that is `/etc/pki/tls/certs/ca-bundle.crt`, a package-owned link to
`extracted/pem/tls-ca-bundle.pem`; on Debian `/etc/ssl/certs/ca-certificates.crt`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection, Iterable

from agent.core.errors import ApplyError
from agent.node.host import HostFS

# Go's crypto/x509 root_linux.go certFiles, in its order: the first one that exists wins.
GO_CERT_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine (ca-certificates)
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL family
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7 without the link
    "/etc/ssl/cert.pem",  # Alpine
)
BUNDLE_LIMIT = 64 << 20

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def runtime_bundle(fs: HostFS) -> str | None:
    """The host path of the CA bundle a Go runtime on this node loads, or None."""
    for path in GO_CERT_FILES:
        if fs.lstat_kind(path) is not None and fs.read_bytes(path, limit=BUNDLE_LIMIT) is not None:
            return path
    return None


def bundle_digests(data: bytes) -> set[str]:
    """The "sha256:<HEX>" of the DER of every CERTIFICATE block (as CertInfo.sha256)."""
    digests: set[str] = set()
    for match in _PEM.finditer(data):
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except (binascii.Error, ValueError):
            continue  # a damaged block is no certificate of ours either
        digests.add("sha256:" + hashlib.sha256(der).hexdigest().upper())
    return digests


def files_holding(fs: HostFS, directory: str, sha256: str, *, skip: Iterable[str]) -> list[str]:
    """Files in `directory` (not ours) that hold the certificate `sha256`."""
    skipped = set(skip)
    found = []
    for name in fs.listdir(directory):
        path = f"{directory.rstrip('/')}/{name}"
        if path in skipped or fs.lstat_kind(path) != "file":
            continue
        data = fs.read_bytes(path, limit=BUNDLE_LIMIT)
        if data is not None and sha256 in bundle_digests(data):
            found.append(path)
    return found


def check_bundle(
    fs: HostFS,
    sha256: str,
    *,
    present: bool,
    refresh: Collection[str],
    other_sources: Collection[str] = (),
) -> None:
    """Raise ApplyError unless the runtime bundle holds `sha256` (present) or not (absent).

    `other_sources` name what else on the node holds the same certificate (another ledger
    entry's file, an operator's own anchor): after our removal the bundle keeps it then,
    rightly.
    """
    command = " ".join(refresh)
    path = runtime_bundle(fs)
    if path is None:
        raise ApplyError(
            f"`{command}` left no CA bundle a runtime reads (looked for "
            f"{', '.join(GO_CERT_FILES)} under {fs.root})",
            kind="refresh-failed",
        )
    data = fs.read_bytes(path, limit=BUNDLE_LIMIT) or b""
    has = sha256 in bundle_digests(data)
    if present and not has:
        raise ApplyError(
            f"`{command}` finished but {path}, the bundle the runtimes read, does not hold "
            f"the anchor {sha256}: the trust tool did not take it (its exit status proves "
            "nothing: RHEL's update-ca-trust returns 0 when p11-kit fails)",
            kind="refresh-failed",
        )
    if not present and has and not other_sources:
        raise ApplyError(
            f"`{command}` finished but {path}, the bundle the runtimes read, still holds the "
            f"removed anchor {sha256}: the trust tool did not rebuild it",
            kind="refresh-failed",
        )
