"""Where trust goes on each OS and runtime, and when writing there is refused.

The OS is read from real-looking /etc/os-release files (tests/fixtures/os-release/) placed
in a host-root temp tree; containerd's registry directory comes from its config.toml.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import StoreError
from agent.core.hostport import HostPort, parse_hostport
from agent.node.host import HostFS
from agent.node.stores import (
    Placement,
    check_placement,
    file_name,
    registry_store,
    safe,
    system_store,
)
from agent.node.stores.system import parse_os_release

OS_RELEASE = Path(__file__).resolve().parents[2] / "fixtures" / "os-release"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

RHEL = (
    "/etc/pki/ca-trust/source/anchors",
    ("update-ca-trust", "extract"),
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
)
DEBIAN = (
    "/usr/local/share/ca-certificates",
    ("update-ca-certificates",),
    "/etc/ssl/certs/ca-certificates.crt",
)
SUSE = (
    "/etc/pki/trust/anchors",
    ("update-ca-certificates",),
    "/var/lib/ca-certificates/ca-bundle.pem",
)
ALPINE = DEBIAN


def host_with_os(tmp_path: Path, fixture: str) -> HostFS:
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_bytes((OS_RELEASE / fixture).read_bytes())
    return HostFS(str(root))


def host_with_containerd_config(tmp_path: Path, toml: str) -> HostFS:
    root = tmp_path / "host"
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(toml)
    return HostFS(str(root))


# --- os-release -----------------------------------------------------------------------------


def test_parse_os_release_handles_quotes_comments_and_junk() -> None:
    text = (
        "# comment\nID=\"opensuse-leap\"\nID_LIKE='suse opensuse'\nNAME=Plain\n"
        'PRETTY_NAME="A \\"quoted\\" name"\nnot a line\n=novalue\nVERSION_ID=1 # trailing\n'
    )
    assert parse_os_release(text) == {
        "ID": "opensuse-leap",
        "ID_LIKE": "suse opensuse",
        "NAME": "Plain",
        "PRETTY_NAME": 'A "quoted" name',
        "VERSION_ID": "1",
    }


@pytest.mark.parametrize(
    ("fixture", "os_id", "family", "layout"),
    [
        ("rhel-9", "rhel", "rhel", RHEL),
        ("centos-7", "centos", "rhel", RHEL),
        ("rocky-9", "rocky", "rhel", RHEL),
        ("almalinux-9", "almalinux", "rhel", RHEL),
        ("fedora-40", "fedora", "rhel", RHEL),
        ("ol-8", "ol", "rhel", RHEL),
        ("amzn-2023", "amzn", "rhel", RHEL),
        ("euleros-2.0", "euleros", "rhel", RHEL),
        ("openeuler-22.03", "openeuler", "rhel", RHEL),
        ("hce-2.0", "hce", "rhel", RHEL),
        ("debian-12", "debian", "debian", DEBIAN),
        ("ubuntu-22.04", "ubuntu", "debian", DEBIAN),
        ("linuxmint-21", "linuxmint", "debian", DEBIAN),
        ("sles-15", "sles", "suse", SUSE),
        ("opensuse-leap-15.5", "opensuse-leap", "suse", SUSE),
        ("opensuse-tumbleweed", "opensuse-tumbleweed", "suse", SUSE),
        ("alpine-3.19", "alpine", "alpine", ALPINE),
        # the rest of the distributions system scope is asked for, as they ship os-release
        ("euleros-2.0-sp5", "euleros", "rhel", RHEL),
        ("euleros-2.0-sp8", "euleros", "rhel", RHEL),
        ("euleros-2.0-sp9", "euleros", "rhel", RHEL),
        ("euleros-2.0-sp12", "euleros", "rhel", RHEL),
        ("openeuler-20.03", "openeuler", "rhel", RHEL),  # ID="openEuler": case folded
        ("openeuler-24.03", "openeuler", "rhel", RHEL),
        ("centos-9", "centos", "rhel", RHEL),  # CentOS Stream 9
        ("rhel-8", "rhel", "rhel", RHEL),
        ("amzn-2", "amzn", "rhel", RHEL),
        ("ol-9", "ol", "rhel", RHEL),
        ("fedora-41", "fedora", "rhel", RHEL),
        ("ubuntu-20.04", "ubuntu", "debian", DEBIAN),
        ("ubuntu-24.04", "ubuntu", "debian", DEBIAN),
        ("debian-11", "debian", "debian", DEBIAN),
        ("opensuse-leap-15.6", "opensuse-leap", "suse", SUSE),
        ("alpine-3.20", "alpine", "alpine", ALPINE),
    ],
)
def test_system_store_follows_the_os_family(
    tmp_path: Path, fixture: str, os_id: str, family: str, layout: tuple[object, ...]
) -> None:
    store = system_store(host_with_os(tmp_path, fixture))
    assert (store.os_id, store.family) == (os_id, family)
    assert (store.anchor_dir, store.refresh, store.bundle) == layout


@pytest.mark.parametrize(("fixture", "named"), [("arch", "ID=arch"), ("flatcar", "ID=flatcar")])
def test_unknown_os_is_unsupported_and_named(tmp_path: Path, fixture: str, named: str) -> None:
    with pytest.raises(StoreError, match=named) as err:
        system_store(host_with_os(tmp_path, fixture))
    assert err.value.kind == "unsupported-os"
    assert "registry scope" in str(err.value)


def test_os_release_is_read_through_the_usual_link_and_from_usr_lib(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_bytes((OS_RELEASE / "rocky-9").read_bytes())
    assert system_store(HostFS(str(root))).family == "rhel"  # no /etc/os-release at all
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert system_store(HostFS(str(root))).os_id == "rocky"


def test_missing_os_release_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot tell the host's OS") as err:
        system_store(HostFS(str(tmp_path)))
    assert err.value.kind == "unsupported-os"


# --- system placements --------------------------------------------------------------------


def test_system_placement_on_rhel_family_is_an_anchor_refreshed_by_update_ca_trust(
    tmp_path: Path,
) -> None:
    fs = host_with_os(tmp_path, "euleros-2.0")
    placement = system_store(fs).placement(HostPort("registry.test", 5443), PEM)
    assert placement == Placement(
        store="system",
        scope="system",
        directory="/etc/pki/ca-trust/source/anchors",
        file="/etc/pki/ca-trust/source/anchors/ca-trust-agent-registry.test_5443.crt",
        content=PEM,
        refresh=("update-ca-trust", "extract"),
        needs_restart=True,
        verify_cafile="/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    )


@pytest.mark.parametrize(
    ("fixture", "expected_file"),
    [
        ("sles-15", "/etc/pki/trust/anchors/ca-trust-agent-harbor.corp_443.crt"),
        ("alpine-3.19", "/usr/local/share/ca-certificates/ca-trust-agent-harbor.corp_443.crt"),
        ("ubuntu-22.04", "/usr/local/share/ca-certificates/ca-trust-agent-harbor.corp_443.crt"),
    ],
)
def test_system_placement_file_per_family_ends_in_crt(
    tmp_path: Path, fixture: str, expected_file: str
) -> None:
    """update-ca-certificates only reads *.crt files. Install/remove cycles per family are in
    tests/integration/node/test_update_ca_certificates.py."""
    placement = system_store(host_with_os(tmp_path, fixture)).placement(
        parse_hostport("harbor.corp"), PEM
    )
    assert placement.file == expected_file
    assert placement.refresh == ("update-ca-certificates",)


def test_system_placement_ignores_the_registry_argument(tmp_path: Path) -> None:
    store = system_store(host_with_os(tmp_path, "debian-12"))
    token_host = HostPort("auth.corp")
    assert store.placement(token_host, PEM, registry=HostPort("registry.corp")) == (
        store.placement(token_host, PEM)
    )


# --- file names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("registry.test:5443", "ca-trust-agent-registry.test_5443.crt"),
        ("[::1]:5000", "ca-trust-agent-ipv6+0000.0000.0000.0000.0000.0000.0000.0001_5000.crt"),
        ("my_reg-1.corp:443", "ca-trust-agent-my_reg-1.corp_443.crt"),
    ],
)
def test_file_names_are_safe(key: str, name: str) -> None:
    assert file_name(key) == name
    assert "/" not in safe(key)


# --- registry stores ----------------------------------------------------------------------

CONTAINERD_1X = """
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"""

CONTAINERD_2X = """
version = 3
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"
"""


def test_containerd_1x_config_path_gives_the_registry_directory(tmp_path: Path) -> None:
    fs = host_with_containerd_config(tmp_path, CONTAINERD_1X)
    store = registry_store(fs, "containerd")
    assert store.certs_dir == "/etc/containerd/certs.d"
    placement = store.placement(HostPort("registry.test", 5443), PEM)
    assert placement == Placement(
        store="containerd",
        scope="registry",
        directory="/etc/containerd/certs.d/registry.test:5443",
        file="/etc/containerd/certs.d/registry.test:5443/ca-trust-agent-registry.test_5443.crt",
        content=PEM,
        refresh=None,
        needs_restart=False,
        verify_cafile="/etc/containerd/certs.d/registry.test:5443/ca-trust-agent-registry.test_5443.crt",
    )


def test_containerd_2x_reads_none_of_several_config_paths(tmp_path: Path) -> None:
    """Measured on 2.1.9 and 2.3.4: the CRI pull path reads "a:b" as one literal directory,
    so writing into the first would report trust that the pull never uses."""
    fs = host_with_containerd_config(tmp_path, CONTAINERD_2X)
    with pytest.raises(StoreError, match="reads that string as one directory") as err:
        registry_store(fs, "containerd", major=2)
    assert err.value.kind == "unavailable"
    with pytest.raises(StoreError, match="reads that string as one directory"):
        registry_store(fs, "containerd")  # version unknown: only what both read is accepted


def test_containerd_1x_reads_the_first_of_several_config_paths(tmp_path: Path) -> None:
    fs = host_with_containerd_config(
        tmp_path,
        '[plugins."io.containerd.grpc.v1.cri".registry]\n'
        'config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"\n',
    )
    assert registry_store(fs, "containerd", major=1).certs_dir == "/etc/containerd/certs.d"


def test_a_config_path_in_an_imported_drop_in_is_honoured(tmp_path: Path) -> None:
    fs = host_with_containerd_config(
        tmp_path, "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n"
    )
    drop_ins = tmp_path / "host" / "etc" / "containerd" / "conf.d"
    drop_ins.mkdir()
    (drop_ins / "10-registry.toml").write_text(
        "[plugins.'io.containerd.cri.v1.images'.registry]\n"
        "config_path = '/etc/containerd/certs.d'\n"
    )
    assert registry_store(fs, "containerd", major=2).certs_dir == "/etc/containerd/certs.d"


def test_a_k3s_node_is_refused_with_where_the_ca_goes(tmp_path: Path) -> None:
    embedded = tmp_path / "var/lib/rancher/k3s/agent/etc/containerd"
    embedded.mkdir(parents=True)
    (embedded / "config.toml").write_text(
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        'config_path = "/var/lib/rancher/k3s/agent/etc/containerd/certs.d"\n'
    )
    fs = HostFS(str(tmp_path))
    with pytest.raises(StoreError, match=r"registries\.yaml"):
        registry_store(fs, "containerd", major=1)


def test_containerd_version_1_config_is_understood(tmp_path: Path) -> None:
    fs = host_with_containerd_config(
        tmp_path, '[plugins.cri.registry]\nconfig_path = "/var/lib/certs.d/"\n'
    )
    assert registry_store(fs, "containerd").certs_dir == "/var/lib/certs.d"


@pytest.mark.parametrize(
    "toml",
    [
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
        'endpoint = ["https://mirror"]\n',
        "",
    ],
)
def test_containerd_without_config_path_has_no_registry_scope(tmp_path: Path, toml: str) -> None:
    fs = host_with_containerd_config(tmp_path, toml)
    with pytest.raises(StoreError, match="set config_path") as err:
        registry_store(fs, "containerd")
    assert err.value.kind == "unavailable"
    assert "registry scope is not available for containerd" in str(err.value)


def test_containerd_without_any_config_has_no_registry_scope(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        registry_store(HostFS(str(tmp_path)), "containerd")
    assert err.value.kind == "unavailable"


def test_a_broken_containerd_config_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    fs = host_with_containerd_config(tmp_path, "[plugins\nnot toml")
    with pytest.raises(StoreError, match="cannot parse") as err:
        registry_store(fs, "containerd")
    assert err.value.kind == "unavailable"


def test_a_relative_or_dotdot_config_path_is_refused(tmp_path: Path) -> None:
    fs = host_with_containerd_config(
        tmp_path, '[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/../x"\n'
    )
    with pytest.raises(StoreError, match="not usable") as err:
        registry_store(fs, "containerd")
    assert err.value.kind == "unavailable"


def test_docker_and_crio_have_fixed_certs_dirs(tmp_path: Path) -> None:
    fs = HostFS(str(tmp_path))
    docker = registry_store(fs, "docker").placement(HostPort("10.0.0.5", 5000), PEM)
    assert docker.file == "/etc/docker/certs.d/10.0.0.5:5000/ca-trust-agent-10.0.0.5_5000.crt"
    crio = registry_store(fs, "crio").placement(HostPort("registry.corp"), PEM)
    assert crio.file == "/etc/containers/certs.d/registry.corp/ca-trust-agent-registry.corp_443.crt"
    with pytest.raises(StoreError):
        registry_store(fs, "rkt")


def test_registry_placement_goes_in_the_image_registry_dir_named_after_the_endpoint(
    tmp_path: Path,
) -> None:
    """The failing host can be a token or CDN host; the directory is the image's registry."""
    store = registry_store(host_with_containerd_config(tmp_path, CONTAINERD_1X), "containerd")
    placement = store.placement(
        HostPort("auth.corp", 8443), PEM, registry=HostPort("registry.corp")
    )
    assert placement.directory == "/etc/containerd/certs.d/registry.corp"
    assert placement.file == (
        "/etc/containerd/certs.d/registry.corp/ca-trust-agent-auth.corp_8443.crt"
    )


def test_ipv6_registry_directory_is_bracketed(tmp_path: Path) -> None:
    store = registry_store(HostFS(str(tmp_path)), "docker")
    placement = store.placement(parse_hostport("[::1]:5000"), PEM)
    assert placement.directory == "/etc/docker/certs.d/[::1]:5000"


# --- check_placement ----------------------------------------------------------------------


@pytest.fixture
def containerd(tmp_path: Path) -> tuple[HostFS, Placement]:
    fs = host_with_containerd_config(tmp_path, CONTAINERD_1X)
    return fs, registry_store(fs, "containerd").placement(HostPort("registry.test", 5443), PEM)


def test_a_fresh_placement_is_allowed(containerd: tuple[HostFS, Placement]) -> None:
    fs, placement = containerd
    check_placement(fs, placement, ours=())
    fs.makedirs(placement.directory)
    check_placement(fs, placement, ours=())


def test_a_foreign_hosts_toml_is_a_conflict_for_containerd(
    containerd: tuple[HostFS, Placement],
) -> None:
    fs, placement = containerd
    fs.makedirs(placement.directory)
    fs.write_atomic(placement.directory + "/hosts.toml", b'server = "https://registry.test:5443"\n')
    with pytest.raises(StoreError, match=r"hosts\.toml") as err:
        check_placement(fs, placement, ours=())
    assert err.value.kind == "conflict"
    # A hosts.toml the ledger says we wrote is ours to keep using.
    check_placement(fs, placement, ours=(placement.directory + "/hosts.toml",))


def test_hosts_toml_does_not_matter_for_docker(tmp_path: Path) -> None:
    fs = HostFS(str(tmp_path))
    placement = registry_store(fs, "docker").placement(HostPort("registry.test", 5443), PEM)
    fs.makedirs(placement.directory)
    fs.write_atomic(placement.directory + "/hosts.toml", b"")
    check_placement(fs, placement, ours=())


def test_a_foreign_file_at_our_path_with_other_content_is_never_overwritten(
    containerd: tuple[HostFS, Placement],
) -> None:
    fs, placement = containerd
    fs.makedirs(placement.directory)
    fs.write_atomic(placement.file, b"someone else's CA")
    with pytest.raises(StoreError, match="was not written by ca-trust-agent") as err:
        check_placement(fs, placement, ours=())
    assert err.value.kind == "conflict"
    check_placement(fs, placement, ours=(placement.file,))  # ours: replacing it is fine


def test_a_foreign_file_with_identical_content_is_accepted(
    containerd: tuple[HostFS, Placement],
) -> None:
    fs, placement = containerd
    fs.makedirs(placement.directory)
    fs.write_atomic(placement.file, PEM)
    check_placement(fs, placement, ours=())


def test_a_link_at_our_file_or_on_the_way_is_refused(
    containerd: tuple[HostFS, Placement], tmp_path: Path
) -> None:
    fs, placement = containerd
    fs.makedirs(placement.directory)
    Path(fs.real(placement.file)).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError) as err:
        check_placement(fs, placement, ours=(placement.file,))
    assert err.value.kind == "symlink"

    Path(fs.real(placement.file)).unlink()
    Path(fs.real(placement.directory)).rmdir()
    Path(fs.real(placement.directory)).symlink_to(tmp_path)
    with pytest.raises(StoreError) as err:
        check_placement(fs, placement, ours=())
    assert err.value.kind == "symlink"


def test_a_directory_at_our_file_path_is_refused(containerd: tuple[HostFS, Placement]) -> None:
    fs, placement = containerd
    fs.makedirs(placement.file)
    with pytest.raises(StoreError) as err:
        check_placement(fs, placement, ours=())
    assert err.value.kind == "symlink"


def test_a_file_where_the_registry_dir_should_be_is_a_conflict(
    containerd: tuple[HostFS, Placement],
) -> None:
    fs, placement = containerd
    fs.makedirs("/etc/containerd/certs.d")
    fs.write_atomic(placement.directory, b"")
    with pytest.raises(StoreError) as err:
        check_placement(fs, placement, ours=())
    assert err.value.kind == "conflict"


def test_a_pathologically_nested_containerd_config_is_unavailable(tmp_path: Path) -> None:
    fs = host_with_containerd_config(tmp_path, "a = " + "[" * 100_000)
    with pytest.raises(StoreError, match="cannot parse") as err:
        registry_store(fs, "containerd")
    assert err.value.kind == "unavailable"


# --- what the OS store really keeps ---------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "refused"), [("rhel", True), ("suse", True), ("debian", False), ("alpine", False)]
)
def test_a_self_signed_non_ca_anchor_is_refused_only_where_p11kit_builds_the_bundle(
    family: str, refused: bool
) -> None:
    """RHEL-family and SUSE bundles come from `trust extract --filter=ca-anchors`, which drops
    non-CA certificates (tests/integration/node/test_rhel_trust.py); Debian and Alpine
    concatenate every anchor file, and Go/OpenSSL accept a leaf found verbatim in the roots."""
    from agent.core.system_anchor import system_anchor_refusal
    from agent.core.trust import cert_from_der
    from lab.tls import pki

    leaf = cert_from_der(pki.make_leaf(None, names=("selfsigned.test",)).der)
    ca = cert_from_der(pki.make_ca("a CA").der)
    reason = system_anchor_refusal(leaf, family)
    assert (reason is not None) == refused
    if reason is not None:
        assert "registry scope" in reason and "CA:TRUE" in reason
    assert system_anchor_refusal(ca, family) is None


def test_bundle_digests_read_every_certificate_block_and_skip_damaged_ones() -> None:
    from agent.node.stores.bundle import bundle_digests
    from lab.tls import pki

    first, second = pki.make_ca("first"), pki.make_ca("second")
    damaged = b"-----BEGIN CERTIFICATE-----\n!!notbase64!!\n-----END CERTIFICATE-----\n"
    data = b"# comment\n" + first.pem + damaged + second.pem
    assert bundle_digests(data) == {first.sha256, second.sha256}


def test_the_runtime_bundle_is_the_first_file_go_would_load(tmp_path: Path) -> None:
    from agent.node.stores.bundle import runtime_bundle

    root = tmp_path / "host"
    fs = HostFS(str(root))
    assert runtime_bundle(fs) is None
    (root / "etc/pki/ca-trust/extracted/pem").mkdir(parents=True)
    (root / "etc/pki/tls/certs").mkdir(parents=True)
    # RHEL's package link, absolute: resolved inside the host root, as chroot would
    (root / "etc/pki/tls/certs/ca-bundle.crt").symlink_to(
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"
    )
    assert runtime_bundle(fs) is None  # a dangling link is skipped, as Go skips it
    (root / "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem").write_text("")
    assert runtime_bundle(fs) == "/etc/pki/tls/certs/ca-bundle.crt"
    (root / "etc/ssl/certs").mkdir(parents=True)
    (root / "etc/ssl/certs/ca-certificates.crt").write_text("")
    assert runtime_bundle(fs) == "/etc/ssl/certs/ca-certificates.crt"  # Debian's comes first
