"""Whether an OS trust store will really trust a given anchor: a decision on values only.

Where the family's bundle is built by p11-kit (`OsFamily.ca_only`, agent.core.os_families),
a certificate that is not a CA never reaches the bundle the runtimes read, so system scope
is refused before anything is written. Elsewhere a leaf anchor works and is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.core.os_families import FAMILIES

if TYPE_CHECKING:
    from agent.core.trust import CertInfo


def system_anchor_refusal(anchor: CertInfo, family: str) -> str | None:
    """Why `anchor` would never reach `family`'s system bundle, or None when it would."""
    known = FAMILIES.get(family)
    if known is None or not known.ca_only or anchor.is_ca:
        return None
    what = "a self-signed certificate" if anchor.self_signed else "a certificate"
    return (
        f"the anchor {anchor.subject or '<empty subject>'} is {what} without "
        "basicConstraints CA:TRUE; this node's OS store is built by p11-kit, which leaves "
        "such certificates out of the bundle the runtimes read, so system scope cannot "
        "trust it here. Use registry scope (--scope registry): containerd and docker accept "
        "it from certs.d, or give the registry a certificate issued by a CA"
    )
