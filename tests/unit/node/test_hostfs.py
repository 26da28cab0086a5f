"""HostFS keeps every write under the host root and never through a link; the runners run
argument lists with a clean environment, a timeout and capped output.

Runner tests use the real scripts in tests/fixtures/scripts/ (as node-problem-detector's
plugin tests do), not mocks of subprocess.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.core.errors import StoreError
from agent.node.host import (
    NSENTER_PREFIX,
    OUTPUT_LIMIT,
    TMP_PREFIX,
    CommandResult,
    DirectRunner,
    HostFS,
    NsenterRunner,
)

SCRIPTS = Path(__file__).resolve().parents[2] / "fixtures" / "scripts"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "host"
    (r / "etc").mkdir(parents=True)
    return r


@pytest.fixture
def fs(root: Path) -> HostFS:
    return HostFS(str(root))


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


# --- paths --------------------------------------------------------------------------------


def test_real_maps_host_paths_under_the_root(fs: HostFS, root: Path) -> None:
    assert fs.real("/etc/containerd/config.toml") == f"{root}/etc/containerd/config.toml"
    assert fs.real("/") == str(root)
    assert HostFS("/").real("/etc/x") == "/etc/x"


@pytest.mark.parametrize("bad", ["etc/x", "/etc/../../outside", "/etc/x\0y", "", "/a/../b"])
def test_real_refuses_relative_paths_dotdot_and_nul(fs: HostFS, bad: str) -> None:
    with pytest.raises(StoreError):
        fs.real(bad)


def test_root_given_through_a_link_is_resolved(tmp_path: Path, root: Path) -> None:
    (tmp_path / "link-to-host").symlink_to(root)
    assert HostFS(str(tmp_path / "link-to-host")).root == str(root)


# --- reads --------------------------------------------------------------------------------


def test_read_bytes_returns_none_for_a_missing_file(fs: HostFS) -> None:
    assert fs.read_bytes("/etc/missing") is None
    assert fs.read_bytes("/no/such/dir/file") is None


def test_read_follows_an_absolute_link_inside_the_root_like_chroot(
    fs: HostFS, root: Path, tmp_path: Path
) -> None:
    """Real hosts link /etc/os-release -> ../usr/lib/os-release and /var/run -> /run; an
    absolute target means the host's path, not the agent container's."""
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=debian\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/abs").symlink_to("/usr/lib/os-release")
    (tmp_path / "usr-outside").write_text("outside")
    assert fs.read_bytes("/etc/os-release") == b"ID=debian\n"
    assert fs.read_bytes("/etc/abs") == b"ID=debian\n"


def test_read_through_a_link_cannot_escape_the_root(fs: HostFS, root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside the root")
    (root / "etc/escape").symlink_to("../../../secret")
    assert fs.read_bytes("/etc/escape") is None  # clamps at the root: <root>/secret is absent


def test_read_refuses_files_over_the_limit_and_non_regular_files(fs: HostFS, root: Path) -> None:
    (root / "etc/big").write_bytes(b"x" * 100)
    assert fs.read_bytes("/etc/big", limit=100) == b"x" * 100
    with pytest.raises(StoreError, match="larger than 50 bytes"):
        fs.read_bytes("/etc/big", limit=50)
    os.mkfifo(root / "etc/fifo")
    with pytest.raises(StoreError, match="not a regular file"):
        fs.read_bytes("/etc/fifo")


def test_listdir_is_sorted_and_empty_for_a_missing_dir(fs: HostFS, root: Path) -> None:
    for name in ("b", "a", "c"):
        (root / "etc" / name).write_text("")
    assert fs.listdir("/etc") == ["a", "b", "c"]
    assert fs.listdir("/nope") == []
    assert fs.exists("/etc/a") and not fs.exists("/etc/z")
    assert fs.is_dir("/etc") and not fs.is_dir("/etc/a")


def test_lstat_kind_reports_links_on_the_way(fs: HostFS, root: Path, tmp_path: Path) -> None:
    (root / "etc/file").write_text("")
    (root / "etc/link").symlink_to(tmp_path)
    assert fs.lstat_kind("/etc/file") == "file"
    assert fs.lstat_kind("/etc") == "dir"
    assert fs.lstat_kind("/etc/link") == "symlink"
    assert fs.lstat_kind("/etc/link/anything") == "symlink"
    assert fs.lstat_kind("/etc/missing/x") is None


# --- writes -------------------------------------------------------------------------------


def test_write_atomic_writes_exact_bytes_with_the_mode_and_no_temp_left(
    fs: HostFS, root: Path
) -> None:
    fs.write_atomic("/etc/a.crt", b"one")
    fs.write_atomic("/etc/a.crt", b"two", mode=0o600)
    assert (root / "etc/a.crt").read_bytes() == b"two"
    assert stat.S_IMODE((root / "etc/a.crt").stat().st_mode) == 0o600
    assert not [n for n in os.listdir(root / "etc") if n.startswith(TMP_PREFIX)]


def test_write_atomic_mode_is_not_filtered_by_the_umask(fs: HostFS, root: Path) -> None:
    old = os.umask(0o077)
    try:
        fs.write_atomic("/etc/b.crt", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((root / "etc/b.crt").stat().st_mode) == 0o644


def test_write_atomic_needs_the_parent_directory(fs: HostFS) -> None:
    with pytest.raises(StoreError, match="does not exist") as err:
        fs.write_atomic("/etc/containerd/certs.d/x/ca.crt", b"x")
    assert err.value.kind == "io"


def test_write_atomic_refuses_a_link_at_the_target(fs: HostFS, root: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (root / "etc/a.crt").symlink_to(victim)
    with pytest.raises(StoreError) as err:
        fs.write_atomic("/etc/a.crt", b"evil")
    assert err.value.kind == "symlink"
    assert victim.read_text() == "precious"


def test_write_atomic_refuses_a_link_at_a_directory_on_the_way(
    fs: HostFS, root: Path, tmp_path: Path
) -> None:
    """A link at /etc/containerd would turn our write into one anywhere on the node."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "certs.d").mkdir(parents=True)
    (root / "etc/containerd").symlink_to(elsewhere)
    with pytest.raises(StoreError) as err:
        fs.write_atomic("/etc/containerd/certs.d/a.crt", b"evil")
    assert err.value.kind == "symlink"
    assert list((elsewhere / "certs.d").iterdir()) == []


def test_write_atomic_refuses_to_replace_a_directory(fs: HostFS, root: Path) -> None:
    (root / "etc/dir.crt").mkdir()
    with pytest.raises(StoreError) as err:
        fs.write_atomic("/etc/dir.crt", b"x")
    assert err.value.kind == "conflict"


def test_makedirs_returns_what_it_created_outermost_first(fs: HostFS, root: Path) -> None:
    created = fs.makedirs("/etc/containerd/certs.d/registry.test:5443")
    assert created == (
        "/etc/containerd",
        "/etc/containerd/certs.d",
        "/etc/containerd/certs.d/registry.test:5443",
    )
    assert fs.makedirs("/etc/containerd/certs.d/registry.test:5443") == ()
    assert stat.S_IMODE((root / "etc/containerd").stat().st_mode) == 0o755


def test_makedirs_refuses_a_link_and_a_file_on_the_way(
    fs: HostFS, root: Path, tmp_path: Path
) -> None:
    (root / "etc/containerd").symlink_to(tmp_path)
    with pytest.raises(StoreError) as err:
        fs.makedirs("/etc/containerd/certs.d")
    assert err.value.kind == "symlink"
    assert not (tmp_path / "certs.d").exists()
    (root / "etc/file").write_text("")
    with pytest.raises(StoreError) as err:
        fs.makedirs("/etc/file/sub")
    assert err.value.kind == "conflict"


def test_remove_file_reports_whether_it_removed_and_refuses_links(
    fs: HostFS, root: Path, tmp_path: Path
) -> None:
    (root / "etc/a.crt").write_text("x")
    assert fs.remove_file("/etc/a.crt") is True
    assert fs.remove_file("/etc/a.crt") is False
    assert fs.remove_file("/missing/dir/a.crt") is False
    (root / "etc/link.crt").symlink_to(tmp_path / "whatever")
    with pytest.raises(StoreError) as err:
        fs.remove_file("/etc/link.crt")
    assert err.value.kind == "symlink"
    assert (root / "etc/link.crt").is_symlink()


def test_remove_dir_only_removes_an_empty_directory(fs: HostFS, root: Path, tmp_path: Path) -> None:
    (root / "etc/full").mkdir()
    (root / "etc/full/x").write_text("")
    (root / "etc/empty").mkdir()
    assert fs.remove_dir("/etc/full") is False
    assert (root / "etc/full/x").exists()
    assert fs.remove_dir("/etc/empty") is True
    assert fs.remove_dir("/etc/empty") is False
    (root / "etc/dirlink").symlink_to(tmp_path)
    with pytest.raises(StoreError) as err:
        fs.remove_dir("/etc/dirlink")
    assert err.value.kind == "symlink"


# --- DirectRunner with real scripts -------------------------------------------------------


def test_runner_returns_stdout_of_a_successful_command() -> None:
    result = DirectRunner().run([str(SCRIPTS / "ok.sh"), "a b", "c"])
    assert result.ok
    assert result.returncode == 0
    assert result.stdout == "ok a b c\n"  # "a b" stayed one argument: no shell in between
    assert result.stderr == ""
    assert not result.timed_out
    assert result.argv == (str(SCRIPTS / "ok.sh"), "a b", "c")


def test_runner_reports_exit_code_and_stderr_of_a_failing_command() -> None:
    result = DirectRunner().run([str(SCRIPTS / "fail.sh")])
    assert not result.ok
    assert result.returncode == 3
    assert "cannot open /etc/pki/ca-trust/source/anchors" in result.stderr
    assert "exited 3" in result.describe()
    assert "cannot open" in result.describe()


def test_runner_kills_the_whole_process_group_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    result = DirectRunner().run([str(SCRIPTS / "slow.sh"), str(pidfile)], timeout=1.0)
    print(f"timed-out command returned after {time.monotonic() - start:.2f}s")
    assert result.timed_out
    assert not result.ok
    assert result.returncode == 128 + 9
    assert "started child" in result.stdout
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(child), "the forked child survived the timeout"


def test_runner_caps_huge_output_at_64_kib_and_says_so() -> None:
    result = DirectRunner().run([str(SCRIPTS / "huge.sh")])
    assert result.ok
    out, _, note = result.stdout.partition("\n[output truncated:")
    assert out == "o" * OUTPUT_LIMIT
    assert note == f" {(1 << 20) - OUTPUT_LIMIT} more bytes]"
    assert result.stderr.startswith("e" * OUTPUT_LIMIT + "\n[output truncated:")


def test_runner_maps_a_missing_executable_to_127() -> None:
    result = DirectRunner().run(["/nonexistent/update-ca-trust", "extract"])
    assert result.returncode == 127
    assert "command not found" in result.stderr
    assert not result.ok
    assert DirectRunner().run(["no-such-command-anywhere"]).returncode == 127


def test_runner_maps_a_file_without_execute_permission_to_126() -> None:
    result = DirectRunner().run([str(SCRIPTS / "not-executable.sh")])
    assert result.returncode == 126
    assert "permission denied" in result.stderr


def test_runner_maps_death_by_signal_to_128_plus_the_signal() -> None:
    assert DirectRunner().run([str(SCRIPTS / "signalled.sh")]).returncode == 128 + 15


def test_runner_passes_only_path_and_lang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/tmp/leak.pem")
    result = DirectRunner().run([str(SCRIPTS / "env.sh")])
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert names - {"PWD", "SHLVL", "_"} == {"PATH", "LANG"}
    assert "LANG=C.UTF-8" in result.stdout.splitlines()


def test_runner_returns_when_the_command_exits_even_if_its_daemon_keeps_stdout(
    tmp_path: Path,
) -> None:
    """A restart command that launches a daemon in the background must not hang the agent."""
    pidfile = tmp_path / "daemon.pid"
    result = DirectRunner().run([str(SCRIPTS / "daemonizes.sh"), str(pidfile)], timeout=20)
    daemon = int(pidfile.read_text())
    try:
        assert result.ok and not result.timed_out
        assert result.stdout == "launched\n"
        print(f"command with a lingering daemon returned after {result.duration:.2f}s")
    finally:
        os.kill(daemon, 9)


def test_runner_refuses_a_shell_string() -> None:
    with pytest.raises(TypeError):
        DirectRunner().run("systemctl restart containerd")
    with pytest.raises(ValueError):
        DirectRunner().run([])


# --- NsenterRunner ------------------------------------------------------------------------


class RecordingRunner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, timeout: float = 120.0) -> CommandResult:
        self.calls.append(tuple(argv))
        return CommandResult(tuple(argv), 0, "", "", 0.0, False)


def test_nsenter_runner_enters_all_namespaces_of_pid_1() -> None:
    inner = RecordingRunner()
    NsenterRunner(inner).run(["update-ca-certificates"], timeout=5)
    assert inner.calls == [
        ("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "update-ca-certificates")
    ]
    assert NSENTER_PREFIX[-1] == "--"


def test_nsenter_runner_really_enters_the_target_namespaces() -> None:
    """PID 1 of this sandbox cannot be entered, so the real nsenter targets this process."""
    result = NsenterRunner(target=os.getpid()).run([str(SCRIPTS / "ok.sh"), "inside"], timeout=10)
    assert result.ok, result.describe()
    assert result.stdout == "ok inside\n"
    assert result.argv[:3] == ("nsenter", "-t", str(os.getpid()))


def test_nsenter_failure_is_a_result_not_an_exception() -> None:
    result = NsenterRunner(target=999_999_999).run(["true"], timeout=10)
    assert not result.ok
    assert "nsenter" in result.stderr


def test_runner_timeout_applies_after_the_command_closed_its_output() -> None:
    result = DirectRunner().run([str(SCRIPTS / "silent-hang.sh")], timeout=1.0)
    assert result.timed_out
    assert result.returncode == 128 + 9


def test_resolution_never_walks_back_out_below_a_missing_component(fs: HostFS, root: Path) -> None:
    (root / "etc/odd").symlink_to("missing/../../../../etc")
    assert fs.resolve("/etc/odd/passwd").startswith(str(root) + "/")
    assert ".." not in fs.resolve("/etc/odd/passwd").split("/")
    (root / "etc/file").write_text("")
    assert fs.read_bytes("/etc/file/below") is None


def test_lock_is_exclusive_across_processes_and_refuses_a_link(
    fs: HostFS, root: Path, tmp_path: Path
) -> None:
    (root / "etc/state").mkdir()
    probe = [sys.executable, "-c", PROBE_LOCK, str(root / "etc/state")]
    with fs.lock("/etc/state"):
        assert subprocess.run(probe, check=False).returncode == 1  # held: another can't take it
    assert subprocess.run(probe, check=False).returncode == 0  # released on exit
    assert os.listdir(root / "etc/state") == []  # no lock file left behind
    (root / "etc/link").symlink_to(tmp_path)
    with pytest.raises(StoreError) as err, fs.lock("/etc/link"):
        pass
    assert err.value.kind == "symlink"


PROBE_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""
