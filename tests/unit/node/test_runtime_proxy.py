"""agent.node.runtime_proxy: the runtime's proxy read from a node's systemd units.

A host-root tree stands for the node, laid out as Debian's containerd package and an
operator's drop-ins leave it.
"""

from __future__ import annotations

from pathlib import Path

from agent.core.hostport import HostPort
from agent.node.host import HostFS
from agent.node.runtime_proxy import runtime_proxy, unit_files

GHCR = HostPort("ghcr.io", 443)


def put(root: Path, path: str, text: str) -> None:
    real = root / path.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text(text)


def test_the_drop_in_names_the_proxy_and_no_proxy_exempts_internal_registries(
    tmp_path: Path,
) -> None:
    put(
        tmp_path,
        "/lib/systemd/system/containerd.service",
        "[Service]\nExecStart=/usr/bin/containerd\n",
    )
    put(
        tmp_path,
        "/etc/systemd/system/containerd.service.d/http-proxy.conf",
        '[Service]\nEnvironment="HTTPS_PROXY=http://proxy.corp:3128" "NO_PROXY=.corp,10.0.0.0/8"\n',
    )
    fs = HostFS(str(tmp_path))
    through = runtime_proxy(fs, "containerd", GHCR)
    assert through.choice.proxy == "http://proxy.corp:3128"
    assert through.source == "systemd"
    assert through.describe() == (
        "containerd connects to ghcr.io:443 through the proxy http://proxy.corp:3128 "
        "(HTTPS_PROXY) (from systemd)"
    )
    direct = runtime_proxy(fs, "containerd", HostPort("harbor.corp", 443))
    assert direct.choice.proxy is None and direct.choice.bypass == "NO_PROXY entry '.corp'"


def test_drop_ins_apply_in_name_order_and_etc_masks_the_same_name_below(tmp_path: Path) -> None:
    put(
        tmp_path,
        "/usr/lib/systemd/system/docker.service.d/50-proxy.conf",
        "[Service]\nEnvironment=HTTPS_PROXY=http://vendor:1\n",
    )
    put(
        tmp_path,
        "/etc/systemd/system/docker.service.d/50-proxy.conf",
        "[Service]\nEnvironment=HTTPS_PROXY=http://etc:1\n",
    )
    put(
        tmp_path,
        "/run/systemd/system/docker.service.d/90-late.conf",
        "[Service]\nEnvironment=NO_PROXY=example.test\n",
    )
    put(tmp_path, "/etc/systemd/system/docker.service.d/README", "not a drop-in")
    fs = HostFS(str(tmp_path))
    assert unit_files(fs, "docker.service") == (
        "/etc/systemd/system/docker.service.d/50-proxy.conf",
        "/run/systemd/system/docker.service.d/90-late.conf",
    )
    assert runtime_proxy(fs, "docker", GHCR).choice.proxy == "http://etc:1"


def test_an_environment_file_overrides_environment_lines(tmp_path: Path) -> None:
    put(
        tmp_path,
        "/etc/systemd/system/containerd.service.d/proxy.conf",
        "[Service]\nEnvironment=HTTPS_PROXY=http://inline:1\n"
        "EnvironmentFile=/etc/default/proxy\nEnvironmentFile=-/etc/default/missing\n",
    )
    put(tmp_path, "/etc/default/proxy", "HTTPS_PROXY=http://from-file:1\n")
    chosen = runtime_proxy(HostFS(str(tmp_path)), "containerd", GHCR)
    assert chosen.choice.proxy == "http://from-file:1"
    assert chosen.note == ""


def test_without_proxy_settings_in_the_unit_the_agent_environment_is_the_fallback(
    tmp_path: Path,
) -> None:
    fs = HostFS(str(tmp_path))
    fallback = {"HTTPS_PROXY": "http://agent-env:1", "PATH": "/bin"}
    chosen = runtime_proxy(fs, "containerd", GHCR, fallback=fallback)
    assert (chosen.choice.proxy, chosen.source) == ("http://agent-env:1", "agent environment")
    none = runtime_proxy(fs, "containerd", GHCR)
    assert (none.choice.proxy, none.source, none.files) == (None, "none", ())
    assert none.describe() == "containerd connects to ghcr.io:443 direct (no proxy configured)"


def test_a_drop_in_masked_by_a_link_to_dev_null_is_not_read(tmp_path: Path) -> None:
    put(
        tmp_path,
        "/usr/lib/systemd/system/containerd.service.d/proxy.conf",
        "[Service]\nEnvironment=HTTPS_PROXY=http://vendor:1\n",
    )
    masked = tmp_path / "etc/systemd/system/containerd.service.d/proxy.conf"
    masked.parent.mkdir(parents=True)
    masked.symlink_to("/dev/null")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/null").write_text("")  # the tree's own /dev/null: links resolve inside
    chosen = runtime_proxy(HostFS(str(tmp_path)), "containerd", GHCR)
    assert chosen.choice.proxy is None
