"""Whether an OS trust store will really trust a given anchor: a decision on values only.

RHEL-family (RHEL, CentOS, EulerOS, openEuler, Fedora, ...) and SUSE nodes build the bundle
the runtimes read with p11-kit (`trust extract --filter=ca-anchors`), which keeps only
certificates that are CAs: a self-signed leaf without basicConstraints CA:TRUE (or a v3
certificate without basicConstraints) is dropped silently, whatever `update-ca-trust`
returns (measured with the real extractor, tests/integration/node/test_rhel_trust.py).
Debian's and Alpine's `update-ca-certificates` concatenate every anchor file into
`ca-certificates.crt`, and Go and OpenSSL accept a self-signed leaf found verbatim in the
roots, so there a leaf anchor works and is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.core.trust import CertInfo

# OS families whose system bundle is extracted by p11-kit's ca-anchors filter.
CA_ONLY_FAMILIES = frozenset({"rhel", "suse"})


def system_anchor_refusal(anchor: CertInfo, family: str) -> str | None:
    """Why `anchor` would never reach `family`'s system bundle, or None when it would."""
    if family not in CA_ONLY_FAMILIES or anchor.is_ca:
        return None
    what = "a self-signed certificate" if anchor.self_signed else "a certificate"
    return (
        f"the anchor {anchor.subject or '<empty subject>'} is {what} without "
        "basicConstraints CA:TRUE; this node's OS store is built by p11-kit, which leaves "
        "such certificates out of the bundle the runtimes read, so system scope cannot "
        "trust it here. Use registry scope (--scope registry): containerd and docker accept "
        "it from certs.d, or give the registry a certificate issued by a CA"
    )
