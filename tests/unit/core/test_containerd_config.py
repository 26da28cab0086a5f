"""agent.core.containerd_config: which certs.d a containerd's CRI pull really reads.

Each case is a row measured on real containerd (1.6.20, 2.1.9, 2.3.4; shared/LAB.md): the
model must answer what containerd does, not what the file seems to say. The rows that
2.1.9 and 1.6.20 can run are also pulled for real in tests/e2e/test_containerd2_e2e.py.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from agent.core.containerd_config import (
    DEFAULT_SOCKET,
    config_version,
    hosts_toml_governs,
    import_patterns,
    major_version,
    merge,
    registry_dirs,
    socket_address,
)

V1_TABLE = '[plugins."io.containerd.grpc.v1.cri".registry]\n'
V2_TABLE = "[plugins.'io.containerd.cri.v1.images'.registry]\n"


def toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def test_a_single_directory_is_read_by_both_generations() -> None:
    for major in (1, 2, None):
        dirs = registry_dirs(
            toml(f'version = 2\n{V1_TABLE}config_path = "/etc/containerd/certs.d"'), major
        )
        assert dirs.directory == "/etc/containerd/certs.d"


def test_a_directory_list_is_one_literal_path_for_2x_cri_pulls() -> None:
    config = toml(
        f'version = 3\n{V2_TABLE}config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"'
    )
    dirs = registry_dirs(config, 2)
    assert dirs.directory is None
    assert "reads that string as one directory" in dirs.reason
    assert "use_local_image_pull" in dirs.reason


def test_a_directory_list_is_split_by_1x() -> None:
    config = toml(
        f'version = 2\n{V1_TABLE}config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"'
    )
    assert registry_dirs(config, 1).directory == "/etc/containerd/certs.d"


def test_an_unknown_version_accepts_only_what_both_generations_read() -> None:
    config = toml(f'version = 2\n{V1_TABLE}config_path = "/a:/b"')
    assert registry_dirs(config, None).directory is None


def test_use_local_image_pull_splits_the_list_on_2x() -> None:
    config = toml(
        "version = 3\n[plugins.'io.containerd.cri.v1.images']\nuse_local_image_pull = true\n"
        f'{V2_TABLE}config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"'
    )
    assert registry_dirs(config, 2).directory == "/etc/containerd/certs.d"


def test_no_config_path_means_no_certs_d_on_2x() -> None:
    dirs = registry_dirs(toml("version = 3\n"), 2)
    assert dirs.directory is None
    assert "config_path is not set" in dirs.reason


def test_version_3_with_both_tables_the_1x_table_wins() -> None:
    config = toml(f'version = 3\n{V1_TABLE}config_path = "/old"\n{V2_TABLE}config_path = "/new"')
    assert registry_dirs(config, 2).directory == "/old"


def test_version_4_ignores_the_1x_table() -> None:
    only_old = toml(f'version = 4\n{V1_TABLE}config_path = "/old"')
    assert registry_dirs(only_old, 2).directory is None
    both = toml(f'version = 4\n{V1_TABLE}config_path = "/old"\n{V2_TABLE}config_path = "/new"')
    assert registry_dirs(both, 2).directory == "/new"


def test_1x_ignores_the_2x_table() -> None:
    config = toml(f'version = 2\n{V2_TABLE}config_path = "/new"')
    assert registry_dirs(config, 1).directory is None


def test_a_version_1_file_uses_the_short_plugin_name() -> None:
    config = toml('[plugins.cri.registry]\nconfig_path = "/etc/containerd/certs.d"')
    assert config_version(config) == 1
    assert registry_dirs(config, 1).directory == "/etc/containerd/certs.d"


@pytest.mark.parametrize(
    ("text", "socket"),
    [
        ("version = 2\n", DEFAULT_SOCKET),
        (
            'version = 2\n[grpc]\naddress = "/run/k3s/containerd/containerd.sock"',
            "/run/k3s/containerd/containerd.sock",
        ),
        ('version = 3\n[grpc]\naddress = "unix:///x/c.sock"', "/x/c.sock"),
        (
            "version = 4\n[plugins.'io.containerd.server.v1.grpc']\naddress = '/v4/c.sock'",
            "/v4/c.sock",
        ),
        ("version = 4\n[grpc]\naddress = '/ignored.sock'", DEFAULT_SOCKET),
    ],
)
def test_the_socket_key_depends_on_the_schema_version(text: str, socket: str) -> None:
    assert socket_address(toml(text)) == socket


def test_imports_are_relative_to_the_importing_file() -> None:
    config = toml('imports = ["conf.d/*.toml", "/abs/x.toml", ""]')
    assert import_patterns(config, "/etc/containerd/config.toml") == (
        "/etc/containerd/conf.d/*.toml",
        "/abs/x.toml",
    )


def test_an_imported_drop_in_sets_config_path_table_by_table() -> None:
    main = toml("version = 3\n[plugins.'io.containerd.cri.v1.images']\nsnapshotter = 'overlayfs'")
    drop_in = toml(f'{V2_TABLE}config_path = "/etc/containerd/certs.d"')
    merged = merge(main, drop_in)
    assert merged["plugins"]["io.containerd.cri.v1.images"]["snapshotter"] == "overlayfs"
    assert registry_dirs(merged, 2).directory == "/etc/containerd/certs.d"


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("containerd://1.6.20", 1),
        ("v1.6.20", 1),
        ("2.1.9+unknown", 2),
        ("containerd://v2.3.4", 2),
        ("", None),
        ("cri-o://1.30", 1),
    ],
)
def test_major_version_reads_node_and_cri_spellings(text: str, major: int | None) -> None:
    assert major_version(text) == major


@pytest.mark.parametrize(
    ("data", "major", "governs"),
    [
        (b"", 2, False),  # 0 bytes: both fall back to *.crt
        (b"this is [ not toml", 2, False),
        (b"this is [ not toml", 1, False),
        (b"# only a comment\n", 2, True),  # 2.1.9: parsable and non-empty is obeyed
        (b'server = "https://r.test:5443"\n', 2, True),
        (b'server = "https://r.test:5443"\n', 1, False),  # 1.6: "invalid host tree", ignored
        (b'[host."https://m.test"]\n  capabilities = ["pull"]\n', 1, True),
        (b'server = "https://r.test:5443"\n', None, True),  # unknown version: the stricter
    ],
)
def test_which_hosts_toml_switches_off_the_side_by_side_crt_files(
    data: bytes, major: int | None, governs: bool
) -> None:
    assert hosts_toml_governs(data, major) is governs
