"""The node engine on a host-root tree: what install, remove and recovery do to the files.

The network, the refresh command and runtime restarts are stand-ins here (recorded, or
made to fail on purpose); the real ones run in tests/e2e. What this file pins down is the
engine's contract: exactly which files appear, idempotency, dry run, rollback, undo.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.core.errors import (
    ApplyError,
    InputError,
    LedgerError,
    RuntimeRestartError,
    StoreError,
    TrustError,
)
from agent.core.hostport import HostPort
from agent.core.trust import cert_from_der
from agent.node.engine import InstallRequest
from lab.tls import pki
from tests.unit.node.engine_world import (
    CERTS_D,
    IMAGE,
    OUR_FILE,
    REG,
    SYSTEM_FILE,
    Node,
    Pulls,
    der,
    ledger,
    with_runtime_socket,
)


def test_registry_scope_writes_one_file_under_certs_d_and_needs_no_restart(node: Node) -> None:
    result = node.engine().install(InstallRequest(REG, scope="registry"))
    assert result.status == "installed"
    assert result.scope == "registry"
    assert node.files() == {OUR_FILE, "/var/lib/ca-trust-agent/ledger.json"}
    assert (node.root / OUR_FILE.lstrip("/")).read_bytes() == node.ca.intermediate.pem  # type: ignore[union-attr]
    assert node.manager.restarts == []
    assert node.runner.calls == []
    assert node.verified == [(REG, str(node.root / OUR_FILE.lstrip("/")))]
    entry = node.engine().entries()[REG.key]
    assert entry.state == "installed"
    assert entry.files == (OUR_FILE,)
    assert entry.sha256 == result.anchor.sha256  # type: ignore[union-attr]
    assert f"{CERTS_D}/registry.test:5443" in entry.dirs


def test_auto_scope_prefers_registry_when_containerd_has_config_path(node: Node) -> None:
    assert node.engine().install(InstallRequest(REG)).scope == "registry"


def test_auto_scope_falls_back_to_system_without_config_path(node: Node) -> None:
    (node.root / "etc/containerd/config.toml").write_text("version = 2\n")
    result = node.engine().install(InstallRequest(REG))
    assert result.scope == "system"
    assert node.runner.calls == [("update-ca-certificates",)]
    assert node.manager.restarts == ["containerd"]
    assert SYSTEM_FILE in node.files()


def test_second_install_with_same_bytes_changes_nothing_and_restarts_nothing(node: Node) -> None:
    engine = node.engine()
    engine.install(InstallRequest(REG, scope="system"))
    before = (node.runner.calls[:], node.manager.restarts[:], ledger(node))
    again = engine.install(InstallRequest(REG, scope="system"))
    assert again.status == "unchanged"
    assert again.actions == ()
    assert (node.runner.calls, node.manager.restarts, ledger(node)) == before


def test_dry_run_shows_the_plan_and_writes_nothing(node: Node) -> None:
    result = node.engine().install(InstallRequest(REG, scope="system", dry_run=True))
    assert result.status == "dry-run"
    kinds = [type(a).__name__ for a in result.actions]
    assert kinds == ["RecordLedger", "WriteFile", "Refresh", "Verify", "Restart", "RecordLedger"]
    assert node.files() == set()
    assert node.runner.calls == [] and node.manager.restarts == []


def test_failing_refresh_rolls_back_the_anchor_file_and_the_ledger(node: Node) -> None:
    node.runner.fail.add("update-ca-certificates")
    with pytest.raises(ApplyError) as err:
        node.engine().install(InstallRequest(REG, scope="system"))
    assert err.value.kind == "refresh-failed"
    assert "rolled back" in str(err.value)
    assert SYSTEM_FILE not in node.files()
    assert ledger(node)["entries"] == {}
    # refreshed once to install, once more after removing the file again (--fresh: Debian's
    # plain run would leave a dangling link to the removed file in /etc/ssl/certs)
    assert node.runner.calls == [
        ("update-ca-certificates",),
        ("update-ca-certificates", "--fresh"),
    ]
    assert node.manager.restarts == []


def test_failed_verification_rolls_back_and_never_restarts(node: Node) -> None:
    node.verify_fails = True
    with pytest.raises(ApplyError) as err:
        node.engine().install(InstallRequest(REG, scope="system"))
    assert err.value.kind == "verify-failed"
    assert SYSTEM_FILE not in node.files()
    assert node.manager.restarts == []


def test_refused_restart_fails_before_anything_is_written(node: Node) -> None:
    node.manager.refuse = True
    with pytest.raises(RuntimeRestartError) as err:
        node.engine().install(InstallRequest(REG, scope="system"))
    assert err.value.kind == "refused"
    assert node.files() == set()


def test_restart_never_installs_and_says_a_restart_is_still_required(node: Node) -> None:
    result = node.engine().install(InstallRequest(REG, scope="system", restart="never"))
    assert result.status == "installed"
    assert result.restart_required == ("containerd",)
    assert node.manager.restarts == []
    assert "restart" in result.next_step


def test_restart_failure_after_install_keeps_the_trust_and_reports_it(node: Node) -> None:
    node.manager.fail = True
    result = node.engine().install(InstallRequest(REG, scope="system"))
    assert result.status == "installed"
    assert result.restart_error is not None and result.restart_error.kind == "failed"
    assert SYSTEM_FILE in node.files()
    assert node.engine().entries()[REG.key].restarted == ()


def test_pin_mismatch_is_refused_before_anything_is_written(node: Node) -> None:
    with pytest.raises(TrustError) as err:
        node.engine().install(InstallRequest(REG, pins=("sha256:" + "AB" * 32,)))
    assert err.value.kind == "pin-mismatch"
    assert node.files() == set()


def test_matching_pin_installs(node: Node) -> None:
    pin = node.chain[-1].sha256
    assert node.engine().install(InstallRequest(REG, pins=(pin,))).status == "installed"


def test_remove_undoes_exactly_what_the_ledger_says(node: Node) -> None:
    engine = node.engine()
    engine.install(InstallRequest(REG, scope="registry"))
    result = engine.remove(REG)
    assert result.status == "removed"
    assert node.files() == {"/var/lib/ca-trust-agent/ledger.json"}
    assert not (node.root / "etc/containerd/certs.d/registry.test:5443").exists()
    assert ledger(node)["entries"] == {}


def test_remove_of_system_scope_refreshes_and_restarts(node: Node) -> None:
    engine = node.engine()
    engine.install(InstallRequest(REG, scope="system"))
    node.runner.calls.clear()
    node.manager.restarts.clear()
    engine.remove(REG)
    assert SYSTEM_FILE not in node.files()
    assert node.runner.calls == [("update-ca-certificates", "--fresh")]
    assert node.manager.restarts == ["containerd"]


def test_remove_of_something_never_installed_is_a_no_op(node: Node) -> None:
    assert node.engine().remove(REG).status == "absent"


def test_a_foreign_file_in_a_registry_dir_is_kept_when_we_remove_ours(node: Node) -> None:
    regdir = node.root / "etc/containerd/certs.d/registry.test:5443"
    regdir.mkdir(parents=True)
    (regdir / "client.cert").write_text("not ours")
    engine = node.engine()
    engine.install(InstallRequest(REG, scope="registry"))
    assert engine.entries()[REG.key].dirs == ()
    engine.remove(REG)
    assert (regdir / "client.cert").read_text() == "not ours"


def test_a_foreign_hosts_toml_is_a_conflict_not_a_target(node: Node) -> None:
    regdir = node.root / "etc/containerd/certs.d/registry.test:5443"
    regdir.mkdir(parents=True)
    (regdir / "hosts.toml").write_text('server = "https://registry.test:5443"\n')
    with pytest.raises(StoreError) as err:
        node.engine().install(InstallRequest(REG, scope="registry"))
    assert err.value.kind == "conflict"
    assert (regdir / "hosts.toml").read_text() == 'server = "https://registry.test:5443"\n'
    assert node.files() == set()


def test_a_symlink_planted_at_the_registry_dir_is_refused(node: Node, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (node.root / "etc/containerd/certs.d").mkdir(parents=True)
    (node.root / "etc/containerd/certs.d/registry.test:5443").symlink_to(elsewhere)
    with pytest.raises(StoreError) as err:
        node.engine().install(InstallRequest(REG, scope="registry"))
    assert err.value.kind == "symlink"
    assert list(elsewhere.iterdir()) == []


def test_switching_scope_removes_the_files_of_the_previous_install(node: Node) -> None:
    engine = node.engine()
    engine.install(InstallRequest(REG, scope="system"))
    engine.install(InstallRequest(REG, scope="registry"))
    assert SYSTEM_FILE not in node.files()
    assert OUR_FILE in node.files()
    assert engine.entries()[REG.key].scope == "registry"


def test_recover_undoes_an_install_that_died_half_way(node: Node) -> None:
    """A crash after the intent was recorded and the file written, before 'installed'."""
    engine = node.engine()
    result = engine.install(InstallRequest(REG, scope="registry", dry_run=True))
    from agent.core import plan as p

    for action in result.actions[:3]:  # RecordLedger(installing), MakeDir..., WriteFile
        engine.applier.run(action, {})
    assert engine.entries()[REG.key].state == "installing"
    assert engine.recover() == [REG.key]
    assert engine.entries() == {}
    assert node.files() == {"/var/lib/ca-trust-agent/ledger.json"}
    assert isinstance(result.actions[0], p.RecordLedger)


def test_auth_host_trust_goes_into_the_image_registry_directory(node: Node) -> None:
    auth = HostPort("auth.registry.test", 443)
    node.chain = tuple(
        cert_from_der(c.public_bytes(der()))
        for c in pki.make_pki(node.root.parent / "auth", names=("auth.registry.test",)).chain
    )
    node.engine().install(InstallRequest(auth, registry=REG, scope="registry"))
    assert f"{CERTS_D}/registry.test:5443/ca-trust-agent-auth.registry.test_443.crt" in node.files()


@contextmanager
def _gate_log(log: list[str]) -> Iterator[None]:
    log.append("acquired")
    yield
    log.append("released")


def test_restarts_happen_inside_the_restart_gate(node: Node) -> None:
    log: list[str] = []
    engine = node.engine(restart_gate=lambda rt: _gate_log(log))
    engine.install(InstallRequest(REG, scope="system"))
    assert log == ["acquired", "released"]
    assert node.manager.restarts == ["containerd"]


def test_a_restart_that_failed_is_done_by_the_next_install_without_rewriting(node: Node) -> None:
    """containerd did not come back: the CA stays, and running install again finishes the job."""
    node.manager.fail = True
    first = node.engine().install(InstallRequest(REG, scope="system"))
    assert first.restart_error is not None
    node.manager.fail = False
    node.runner.calls.clear()
    again = node.engine().install(InstallRequest(REG, scope="system"))
    assert again.status == "installed"
    assert [type(a).__name__ for a in again.actions] == ["Restart", "RecordLedger"]
    assert node.runner.calls == []  # nothing written, nothing refreshed
    assert node.manager.restarts == ["containerd"]
    assert node.engine().entries()[REG.key].restarted == ("containerd",)
    assert node.engine().install(InstallRequest(REG, scope="system")).status == "unchanged"


def test_a_foreign_host_port_underscore_directory_is_a_conflict(node: Node) -> None:
    """containerd reads certs.d/<host>_<port>_/ first: our file beside it would do nothing."""
    (node.root / "etc/containerd/certs.d/registry.test_5443_").mkdir(parents=True)
    with pytest.raises(StoreError) as err:
        node.engine().install(InstallRequest(REG, scope="registry"))
    assert err.value.kind == "conflict"
    assert "registry.test_5443_" in str(err.value)
    assert node.files() == set()


# --- the runtime judges: after writing, the runtime that failed pulls the image again ------


def test_the_runtime_pulling_the_image_is_the_verification(node: Node) -> None:
    socket_path = with_runtime_socket(node)
    pulls = Pulls(["pulled"])
    result = node.engine(pull=pulls).install(InstallRequest(REG, image=IMAGE))
    assert result.scope == "registry"
    assert result.verification == "runtime"
    assert result.verified
    assert pulls.calls == [("containerd", socket_path, IMAGE)]
    assert result.verified_by == f"verified: containerd pulled {IMAGE} (sha256:0123)"


def test_an_answer_past_the_handshake_verifies_trust_without_pull_secrets(node: Node) -> None:
    with_runtime_socket(node)
    result = node.engine(pull=Pulls(["past-handshake"])).install(
        InstallRequest(REG, image=IMAGE)
    )
    assert result.verification == "runtime"
    assert result.verdict is not None
    assert result.verdict.kind == "past-handshake"


def test_a_registry_scope_the_runtime_ignores_falls_back_to_system_scope(node: Node) -> None:
    """The false success this check exists for: the file is written, the handshake trusting
    it works, and still the runtime fails x509 (it reads another directory)."""
    with_runtime_socket(node)
    pulls = Pulls(["untrusted", "pulled"])
    result = node.engine(pull=pulls).install(InstallRequest(REG, image=IMAGE))
    assert result.scope == "system"
    assert result.verification == "runtime"
    assert "registry scope was not used by containerd" in result.scope_reason
    assert OUR_FILE not in node.files()
    assert SYSTEM_FILE in node.files()
    assert node.manager.restarts == ["containerd"]
    assert len(pulls.calls) == 2


def test_a_refused_explicit_scope_is_rolled_back_and_says_what_was_found(node: Node) -> None:
    with_runtime_socket(node)
    with pytest.raises(ApplyError) as err:
        node.engine(pull=Pulls(["untrusted"])).install(
            InstallRequest(REG, scope="registry", image=IMAGE)
        )
    assert err.value.kind == "runtime-rejected"
    assert "containerd still fails TLS" in str(err.value)
    assert OUR_FILE in str(err.value)  # which file it ignored
    assert "/etc/containerd/config.toml" in str(err.value)  # which config was read
    assert node.files() <= {"/var/lib/ca-trust-agent/ledger.json"}
    assert REG.key not in node.engine().entries()


def test_an_already_installed_ca_the_runtime_ignores_is_not_called_trusted(node: Node) -> None:
    node.engine().install(InstallRequest(REG, scope="registry"))
    with_runtime_socket(node)
    with pytest.raises(ApplyError, match="did not use the CA"):
        node.engine(pull=Pulls(["untrusted"])).install(
            InstallRequest(REG, scope="registry", image=IMAGE)
        )
    assert OUR_FILE not in node.files()
    assert REG.key not in node.engine().entries()


def test_a_runtime_that_cannot_tell_leaves_the_tls_check_standing(node: Node) -> None:
    with_runtime_socket(node)
    result = node.engine(pull=Pulls(["inconclusive"])).install(InstallRequest(REG, image=IMAGE))
    assert result.status == "installed"
    assert result.verification == "tls"
    assert "no runtime verdict" in result.verified_by
    assert OUR_FILE in node.files()


def test_without_an_image_or_with_verify_tls_the_runtime_is_not_asked(node: Node) -> None:
    with_runtime_socket(node)
    pulls = Pulls(["untrusted"])
    assert node.engine(pull=pulls).install(InstallRequest(REG)).verification == "tls"
    node.engine().remove(REG)
    tls = node.engine(pull=pulls).install(InstallRequest(REG, image=IMAGE, verify="tls"))
    assert tls.verification == "tls"
    assert pulls.calls == []


def test_verify_runtime_needs_an_image_and_reports_a_silent_runtime(node: Node) -> None:
    with pytest.raises(InputError, match="--image"):
        InstallRequest(REG, verify="runtime")
    pulls = Pulls(["pulled"])  # no socket under the host root: nobody to ask
    result = node.engine(pull=pulls).install(InstallRequest(REG, image=IMAGE, verify="runtime"))
    assert pulls.calls == []
    assert result.verification == "tls"
    assert "no container runtime socket answers" in result.verified_by


# --- hostsToml: append — the one file of others the agent may change, and give back --------


HOSTS_TOML = "/etc/containerd/certs.d/registry.test:5443/hosts.toml"
THEIRS = (
    b'server = "https://registry.test:5443"\n'
    b'[host."https://registry.test:5443"]\n  capabilities = ["pull"]\n'
)


def with_hosts_toml(node: Node) -> Path:
    path = node.root / HOSTS_TOML.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(THEIRS)
    return path


def test_append_names_our_file_in_their_hosts_toml_and_the_ledger_keeps_the_original(
    node: Node,
) -> None:
    path = with_hosts_toml(node)
    with pytest.raises(StoreError, match=r"hosts\.toml exists"):
        node.engine().install(InstallRequest(REG, scope="registry"))
    assert path.read_bytes() == THEIRS

    node.engine().install(InstallRequest(REG, scope="registry", hosts_toml="append"))
    assert f'ca = ["{OUR_FILE}"]'.encode() in path.read_bytes()
    entry = node.engine().entries()[REG.key]
    assert [(e.path, e.original) for e in entry.edits] == [(HOSTS_TOML, THEIRS)]

    again = node.engine().install(InstallRequest(REG, scope="registry", hosts_toml="append"))
    assert again.status == "unchanged"  # the edit is recognised as ours, not doubled

    node.engine().remove(REG)
    assert path.read_bytes() == THEIRS
    assert OUR_FILE not in node.files()


def test_a_failed_install_gives_their_hosts_toml_back(node: Node) -> None:
    path = with_hosts_toml(node)
    node.verify_fails = True
    with pytest.raises(ApplyError):
        node.engine().install(InstallRequest(REG, scope="registry", hosts_toml="append"))
    assert path.read_bytes() == THEIRS
    assert REG.key not in node.engine().entries()


def test_a_ledger_edit_outside_a_hosts_toml_beside_our_file_is_refused(node: Node) -> None:
    """A tampered ledger must not make remove overwrite an arbitrary file."""
    path = with_hosts_toml(node)
    node.engine().install(InstallRequest(REG, scope="registry", hosts_toml="append"))
    ledger_path = node.root / "var/lib/ca-trust-agent/ledger.json"
    doc = json.loads(ledger_path.read_text())
    doc["entries"][REG.key]["edits"][0]["path"] = "/etc/passwd"
    ledger_path.write_text(json.dumps(doc))
    with pytest.raises(LedgerError, match="never writes"):
        node.engine().remove(REG)
    assert f'ca = ["{OUR_FILE}"]'.encode() in path.read_bytes()


# --- crash hygiene: what a killed write left is swept by the next install ------------------


@pytest.mark.parametrize("scope", ["registry", "system"])
def test_the_next_install_sweeps_the_temp_file_a_killed_write_left(
    node: Node, scope: str
) -> None:
    target = OUR_FILE if scope == "registry" else SYSTEM_FILE
    staging = node.root / target.lstrip("/").rsplit("/", 1)[0] / ".ca-trust-agent-tmp-staging"
    staging.mkdir(parents=True)
    (staging / ".ca-trust-agent-tmp-killed").write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf")
    node.engine().install(InstallRequest(REG, scope=scope))
    assert not staging.exists()
    assert target in node.files()
