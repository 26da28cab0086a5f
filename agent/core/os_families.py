"""The OS families whose trust store the agent manages, as data: one row per family.

Pure (no I/O): `agent.node.stores.system` reads `/etc/os-release` and writes the files; every
property of a family it or the engine needs is in that family's row here.

Adding a family: one row in `FAMILIES` (and its tests).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OsFamily:
    name: str  # the family's key, as the ledger and messages name it
    label: str  # how the "unsupported OS" message names it
    ids: tuple[str, ...]  # os-release ID values (lower-case); ID_LIKE is read the same way
    anchor_dir: str  # where a local anchor file goes
    refresh: tuple[str, ...]  # argv that rebuilds the bundle from the anchors
    bundle: str  # the bundle the refresh writes (the TLS check trusts it)
    # Whether the bundle keeps only CAs: p11-kit's `trust extract --filter=ca-anchors`
    # (RHEL family, SUSE) drops a self-signed leaf or a v3 certificate without
    # basicConstraints CA:TRUE silently, whatever the refresh returns (measured with the real
    # extractor, tests/integration/node/test_rhel_trust.py). Debian's and Alpine's
    # update-ca-certificates concatenate every anchor, and Go and OpenSSL accept a leaf
    # found verbatim in the roots.
    ca_only: bool
    # argv after a removal, when it differs from `refresh`. Debian's update-ca-certificates
    # counts only added links and "!"-listed removals, so a deleted local .crt leaves a
    # dangling ca-trust-agent-*.pem link and its hash link in /etc/ssl/certs; --fresh
    # rebuilds the links (seen on Debian 12).
    refresh_after_remove: tuple[str, ...] | None = None


FAMILIES: dict[str, OsFamily] = {
    f.name: f
    for f in (
        OsFamily(
            "rhel",
            "RHEL",
            (
                "rhel",
                "centos",
                "rocky",
                "almalinux",
                "fedora",
                "ol",
                "amzn",
                "euleros",
                "openeuler",
                "hce",
            ),
            "/etc/pki/ca-trust/source/anchors",
            ("update-ca-trust", "extract"),
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            ca_only=True,
        ),
        OsFamily(
            "debian",
            "Debian/Ubuntu",
            ("debian", "ubuntu"),
            "/usr/local/share/ca-certificates",
            ("update-ca-certificates",),
            "/etc/ssl/certs/ca-certificates.crt",
            ca_only=False,
            refresh_after_remove=("update-ca-certificates", "--fresh"),
        ),
        OsFamily(
            "suse",
            "SUSE",
            (
                "sles",
                "sled",
                "sle-micro",
                "opensuse",
                "opensuse-leap",
                "opensuse-tumbleweed",
                "suse",
            ),
            "/etc/pki/trust/anchors",
            ("update-ca-certificates",),
            "/var/lib/ca-certificates/ca-bundle.pem",
            ca_only=True,
        ),
        OsFamily(
            "alpine",
            "Alpine",
            ("alpine",),
            "/usr/local/share/ca-certificates",
            ("update-ca-certificates",),
            "/etc/ssl/certs/ca-certificates.crt",
            ca_only=False,
        ),
    )
}

_BY_ID: dict[str, OsFamily] = {os_id: f for f in FAMILIES.values() for os_id in f.ids}


def family_of(os_id: str, id_like: str = "") -> OsFamily | None:
    """The family of an os-release ID, else of the first ID_LIKE word that has one."""
    for candidate in (os_id, *id_like.split()):
        family = _BY_ID.get(candidate.lower())
        if family is not None:
            return family
    return None


def known_families() -> str:
    """ "the RHEL, Debian/Ubuntu, SUSE and Alpine families" for the unsupported-OS message."""
    words = [f.label for f in FAMILIES.values()]
    return ", ".join(words[:-1]) + " and " + words[-1] + " families"
