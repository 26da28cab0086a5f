"""The runtime and OS-family tables: one row per runtime or family, everything else derived.

Adding a runtime or a family is one row (and, for a runtime, one module in
agent/node/runtimes registered under the same name); these tests keep the rows whole and
the places that read them in step.
"""

from __future__ import annotations

import pytest

from agent.cli_args import build_parser
from agent.core import os_families, runtime_kinds
from agent.core.os_families import FAMILIES, family_of, known_families
from agent.core.runtime_kinds import BY_NAME, KINDS, RUNTIMES, runtime_from_version


def test_every_runtime_row_is_complete_and_named_once() -> None:
    assert RUNTIMES == ("containerd", "docker", "crio")
    assert len(set(RUNTIMES)) == len(KINDS)
    for kind in KINDS:
        assert kind.default_sockets and all(s.startswith("/") for s in kind.default_sockets)
        assert kind.api in ("cri", "engine")
        assert kind.systemd_unit and kind.version_schemes
        assert all(runtime_from_version(f"{s}://1.0") == kind.name for s in kind.version_schemes)
    # only containerd has a hosts.toml beside our *.crt that can override it
    assert [k.name for k in KINDS if k.hosts_toml] == ["containerd"]


def test_the_cli_offers_exactly_the_runtimes_of_the_table() -> None:
    parser = build_parser()
    flags = [word for name in RUNTIMES for word in ("--runtime", name)]
    args = parser.parse_args(["install", "registry.test:5443", *flags])
    assert args.runtime == list(RUNTIMES)
    with pytest.raises(SystemExit):
        parser.parse_args(["install", "registry.test:5443", "--runtime", "rkt"])


def test_messages_name_the_runtimes_by_their_labels() -> None:
    assert runtime_kinds.labels() == "containerd, docker and CRI-O"
    assert runtime_kinds.labels(("crio",)) == BY_NAME["crio"].label == "CRI-O"


@pytest.mark.parametrize(
    ("os_id", "id_like", "family"),
    [
        ("rocky", "", "rhel"),
        ("hce", "", "rhel"),
        ("ubuntu", "debian", "debian"),
        ("opensuse-leap", "suse opensuse", "suse"),
        ("alpine", "", "alpine"),
        ("linuxmint", "ubuntu debian", "debian"),
        ("RHEL", "", "rhel"),
        ("gentoo", "", None),
    ],
)
def test_an_os_release_id_belongs_to_one_family(
    os_id: str, id_like: str, family: str | None
) -> None:
    found = family_of(os_id, id_like)
    assert (found.name if found is not None else None) == family


def test_every_family_row_is_complete_and_its_ids_belong_to_it_alone() -> None:
    ids = [os_id for f in FAMILIES.values() for os_id in f.ids]
    assert len(ids) == len(set(ids))
    for name, family in FAMILIES.items():
        assert family.name == name and family.label
        assert family.anchor_dir.startswith("/") and family.bundle.startswith("/")
        assert family.refresh and all(family_of(i) is family for i in family.ids)
    # p11-kit builds the bundle (only CAs survive) on the RHEL family and SUSE, nowhere else
    assert {n for n, f in FAMILIES.items() if f.ca_only} == {"rhel", "suse"}


def test_the_unsupported_os_message_lists_every_family() -> None:
    assert known_families() == "RHEL, Debian/Ubuntu, SUSE and Alpine families"
    assert os_families.FAMILIES["debian"].refresh_after_remove == (
        "update-ca-certificates",
        "--fresh",
    )
