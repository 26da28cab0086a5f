"""The lab proves itself: real registry, real containerd, and what containerd really reads.

Before any product test can claim "the agent fixed the pull", the lab must show that the
pull really fails for the right reason (x509: certificate signed by unknown authority),
that the fix a person would do by hand really fixes it (with no restart), and that undoing
it really breaks it again. The containerd tests also pin down which files containerd 1.6
loads from `certs.d/<host:port>/`; the agent's file naming and its conflict check are
built on these observations.

Needs root in a private mount namespace (see tests/e2e/conftest.py); skipped otherwise:

    unshare --mount --propagation private -- \
        .venv/bin/pytest tests/integration/test_lab_selfcheck.py
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from OpenSSL import SSL, crypto

from lab.isolation.netns import exists as netns_exists
from lab.isolation.netns import free_slash30, link_exists, netns_host
from lab.isolation.sandbox import Sandbox, in_private_mount_namespace
from lab.procs import clean_env
from lab.registry.push import RegistryClient, tiny_image
from lab.runtimes.containerd import Containerd, run_containerd, temp_layout
from tests.e2e.conftest import (
    LabRegistry,
    cri_pull,
    lab_pki,  # noqa: F401 - fixtures shared with the e2e suite
    lab_registry,  # noqa: F401
    sandbox,  # noqa: F401
    timing,
)

pytestmark = [pytest.mark.integration, pytest.mark.root]

X509_UNKNOWN = "x509: certificate signed by unknown authority"


@pytest.fixture(scope="module")
def containerd(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:  # noqa: F811
    """containerd with everything (config, socket, certs.d) under a temp dir."""
    began = time.monotonic()
    with run_containerd(temp_layout(tmp_path_factory.mktemp("containerd-temp"))) as daemon:
        timing("containerd (temp layout) start to CRI ready", time.monotonic() - began)
        yield daemon


@pytest.fixture
def host_dir(containerd: Containerd, lab_registry: LabRegistry) -> Iterator[Path]:  # noqa: F811
    """certs.d/registry.test:PORT/ (created empty), removed again after the test."""
    path = containerd.layout.certs_d / lab_registry.target
    path.mkdir()
    yield path
    shutil.rmtree(path)
    foreign = containerd.layout.certs_d / f"{lab_registry.host}_{lab_registry.port}_"
    shutil.rmtree(foreign, ignore_errors=True)


def _ours(registry: LabRegistry) -> str:
    """The agent's file name for this registry (architecture.md: safe(endpoint.key))."""
    return f"ca-trust-agent-{registry.safe_key}.crt"


def _hosts_toml(registry: LabRegistry, *, host_table: bool, ca: str | None = None) -> str:
    server = f"https://{registry.target}"
    text = f'server = "{server}"\n'
    if host_table:
        text += f'\n[host."{server}"]\n  capabilities = ["pull", "resolve"]\n'
        if ca is not None:
            text += f'  ca = "{ca}"\n'
    return text


# --- the sandbox ---------------------------------------------------------------------


def test_sandbox_runs_in_a_private_mount_namespace_with_lab_names(sandbox: Sandbox) -> None:  # noqa: F811
    assert in_private_mount_namespace()
    assert socket.gethostbyname("registry.test") == "127.0.0.1"
    for private in ("/etc/containerd", "/etc/docker", "/run/containerd"):
        assert Path(private).is_dir()


def test_trust_store_copy_is_writable_and_real_store_is_not_reached(sandbox: Sandbox) -> None:  # noqa: F811
    """A file dropped into the sandbox's trust dir never shows in the machine's."""
    probe = Path("/usr/local/share/ca-certificates/ca-trust-agent-lab-probe.crt")
    probe.write_text("probe\n")
    try:
        assert sandbox.changed_real_paths() == []
    finally:
        probe.unlink()


# --- the registry ----------------------------------------------------------------------


def test_registry_presents_leaf_then_intermediate(lab_registry: LabRegistry) -> None:  # noqa: F811
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", lab_registry.port), timeout=5) as raw:
        raw.setblocking(True)  # pyOpenSSL wants a blocking socket for do_handshake
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(lab_registry.host.encode())
        conn.set_connect_state()
        conn.do_handshake()
        chain = conn.get_peer_cert_chain() or []
        subjects = [c.get_subject().CN for c in chain]
        conn.shutdown()
    pki = lab_registry.pki
    assert pki.intermediate is not None
    expected = [lab_registry.host, "Lab Intermediate CA"]
    assert subjects == expected
    leaf_der = crypto.dump_certificate(crypto.FILETYPE_ASN1, chain[0])
    assert leaf_der == pki.leaf.der


def test_registry_is_trusted_through_the_lab_root_only(lab_registry: LabRegistry) -> None:  # noqa: F811
    """The pushed manifest is served to a client anchored at the lab root..."""
    client = RegistryClient(lab_registry.host, lab_registry.port, lab_registry.pki.paths.root)
    status, headers, _ = client.request(
        "HEAD",
        "/v2/lab/tiny/manifests/v1",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert status == 200
    assert headers["docker-content-digest"] == tiny_image().manifest_digest


def test_registry_is_not_trusted_by_the_machine_default_store(lab_registry: LabRegistry) -> None:  # noqa: F811
    """...and refused by the system's default trust, as containerd will refuse it."""
    ctx = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", lab_registry.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"),
    ):
        ctx.wrap_socket(raw, server_hostname=lab_registry.host)


# --- containerd: the failure and the manual fix ---------------------------------------


def test_cri_pull_fails_with_unknown_authority(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
) -> None:
    result = cri_pull(containerd, lab_registry.image)
    assert not result.ok
    assert X509_UNKNOWN in result.error
    assert lab_registry.target in result.error


def test_ca_crt_in_host_dir_fixes_pull_without_restart_and_removal_breaks_it(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    pid = containerd.pid
    shutil.copy(lab_registry.pki.paths.root, host_dir / "ca.crt")
    fixed = cri_pull(containerd, lab_registry.image)
    assert fixed.ok, fixed.error
    assert fixed.image_ref.startswith("sha256:")
    (host_dir / "ca.crt").unlink()
    broken = cri_pull(containerd, lab_registry.image)
    assert X509_UNKNOWN in broken.error
    assert containerd.pid == pid


def test_intermediate_alone_is_enough_as_anchor(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    assert lab_registry.pki.paths.intermediate is not None
    shutil.copy(lab_registry.pki.paths.intermediate, host_dir / "ca.crt")
    assert cri_pull(containerd, lab_registry.image).ok


# --- containerd: which files in certs.d/<host:port>/ count (measured on 1.6.20) --------


def test_any_crt_file_name_is_loaded_without_hosts_toml(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    """Without hosts.toml every *.crt is a CA file: the agent's own name works alone."""
    shutil.copy(lab_registry.pki.paths.root, host_dir / _ours(lab_registry))
    assert cri_pull(containerd, lab_registry.image).ok


def test_a_pem_extension_is_not_loaded(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    shutil.copy(lab_registry.pki.paths.root, host_dir / "ca.pem")
    assert X509_UNKNOWN in cri_pull(containerd, lab_registry.image).error


def test_foreign_hosts_toml_with_a_host_table_hides_our_crt_file(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    """A valid hosts.toml replaces the *.crt convention: our file is silently ignored.

    This is why the agent treats a foreign hosts.toml in the registry's dir as a conflict.
    """
    shutil.copy(lab_registry.pki.paths.root, host_dir / _ours(lab_registry))
    (host_dir / "hosts.toml").write_text(_hosts_toml(lab_registry, host_table=True))
    assert X509_UNKNOWN in cri_pull(containerd, lab_registry.image).error


def test_hosts_toml_whose_ca_names_our_file_trusts_it(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    ours = _ours(lab_registry)
    shutil.copy(lab_registry.pki.paths.root, host_dir / ours)
    (host_dir / "hosts.toml").write_text(_hosts_toml(lab_registry, host_table=True, ca=ours))
    assert cri_pull(containerd, lab_registry.image).ok


def test_hosts_toml_without_host_table_falls_back_to_crt_files(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    """containerd 1.6 rejects a hosts.toml with no [host] table ("invalid `host` tree") and
    falls back to the *.crt files, so a server-only hosts.toml does not hide ours."""
    shutil.copy(lab_registry.pki.paths.root, host_dir / _ours(lab_registry))
    (host_dir / "hosts.toml").write_text(_hosts_toml(lab_registry, host_table=False))
    assert cri_pull(containerd, lab_registry.image).ok


def test_underscore_port_directory_takes_precedence_over_host_colon_port(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    """containerd looks up `host_PORT_/` before `host:PORT/`: a foreign one hides ours."""
    shutil.copy(lab_registry.pki.paths.root, host_dir / _ours(lab_registry))
    assert cri_pull(containerd, lab_registry.image).ok
    (containerd.layout.certs_d / f"{lab_registry.host}_{lab_registry.port}_").mkdir()
    assert X509_UNKNOWN in cri_pull(containerd, lab_registry.image).error


# --- the lab's restart command and network namespace ----------------------------------


def test_lab_restart_command_replaces_containerd_and_keeps_its_config(
    containerd: Containerd,
    lab_registry: LabRegistry,  # noqa: F811
    host_dir: Path,
) -> None:
    """What the agent runs for RestartMethod("command", ...): a new PID, same certs.d."""
    before = containerd.pid
    argv = [a.replace("{runtime}", "containerd") for a in containerd.restart_command]
    began = time.monotonic()
    done = subprocess.run(
        argv, env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )
    timing("lab restart command (containerd)", time.monotonic() - began)
    assert done.returncode == 0, done.stderr
    assert containerd.pid != before
    containerd.wait_ready()
    shutil.copy(lab_registry.pki.paths.root, host_dir / "ca.crt")
    assert cri_pull(containerd, lab_registry.image).ok


def test_netns_host_and_veth_are_deleted_even_when_the_body_fails(sandbox: Sandbox) -> None:  # noqa: F811
    host_ip, ns_ip = free_slash30("198.18.101.0")
    with pytest.raises(RuntimeError, match="boom"), netns_host(host_ip, ns_ip) as ns:
        assert netns_exists(ns.name)
        assert link_exists(ns.host_if)
        raise RuntimeError("boom")
    assert not netns_exists(ns.name)
    assert not link_exists(ns.host_if)


def test_reexec_lands_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """What `python -m lab` does first: re-run itself under unshare, then check where it is."""
    if os.geteuid() != 0:
        pytest.skip("unshare --mount needs root")
    script = tmp_path / "where.py"
    script.write_text(
        "from lab.isolation.sandbox import in_private_mount_namespace as private, "
        "reexec_in_private_mount_namespace as reexec\n"
        "print('private' if private() else 'shared', flush=True)\n"
        "if not private():\n"
        "    reexec()\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "PYTHONPATH": repo},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = ["private"] if in_private_mount_namespace() else ["shared", "private"]
    assert done.stdout.split() == expected


def test_real_node_paths_are_unchanged(sandbox: Sandbox) -> None:  # noqa: F811
    """Read beneath the mounts: the machine's hosts file and trust store are as they were."""
    assert sandbox.changed_real_paths() == []
