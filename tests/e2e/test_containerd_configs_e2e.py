"""containerd 1.6.20 and 2.1.9 as they really read their configuration, judged by CRI pulls.

Every row is a node configuration measured on real containerd (see
agent/core/containerd_config.py). For each, the invariant an operator relies on:

    if `install` reports trust, the next CRI pull succeeds;
    otherwise it refused with a reason and wrote nothing.

Each containerd runs in a node of its own (lab/isolation/nodens.py): /etc/containerd, its
socket and the agent's ledger are private bind mounts, the OS trust store is the sandbox's copy. The
registry sits on a network-namespace address (containerd 2.x never verifies TLS for loopback
registries). The agent runs as on the node: `python -m agent install ... --image REF`, so the
runtime's own pull is the verification.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.isolation.nodens import NodeNamespace
from lab.runtimes.containerd2 import VERSION, Containerd2, available
from lab.runtimes.cri import PullResult
from tests.e2e.conftest import REPO, CliResult, LabRegistry

pytestmark = [pytest.mark.e2e, pytest.mark.root]

X509 = "x509: certificate signed by unknown authority"
ANCHORS = Path("/usr/local/share/ca-certificates")
V1_TABLE = '[plugins."io.containerd.grpc.v1.cri".registry]'
V2_TABLE = "[plugins.'io.containerd.cri.v1.images'.registry]"
CERTS_D = "/etc/containerd/certs.d"


@dataclass
class Node:
    """One containerd and the agent that runs beside it, sharing the node's paths."""

    daemon: Containerd2
    registry: LabRegistry

    @property
    def image(self) -> str:
        return self.registry.image

    def configure(self, registry_settings: str, *, restart: bool = True) -> None:
        self.daemon.write_config(self.daemon.base_config() + registry_settings)
        if restart:
            self.daemon.restart()

    def pull(self) -> PullResult:
        with self.daemon.cri() as cri:
            result = cri.pull(self.image)
            if result.ok:
                cri.remove(self.image)
        return result

    def agent(self, *args: str) -> CliResult:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "CA_TRUST_AGENT_RESTART_COMMAND": shlex.join(self.daemon.restart_command),
        }
        argv = self.daemon.node.wrap((sys.executable, "-m", "agent", *args))
        done = subprocess.run(
            argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False
        )
        return CliResult(tuple(argv), done.returncode, done.stdout, done.stderr)

    def install(self, *args: str) -> CliResult:
        return self.agent(
            "install", self.registry.target, "--image", self.image, "--timeout", "30", *args
        )

    def certs_d_files(self) -> list[str]:
        root = self.daemon.certs_d
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def clean(self) -> None:
        """Undo whatever the agent holds (the ledger says exactly what), then any test dirs."""
        self.agent("remove", self.registry.target)
        for path in sorted(self.daemon.certs_d.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        assert not list(ANCHORS.glob("ca-trust-agent-*"))


@pytest.fixture(scope="module", params=["1.6.20", VERSION])
def containerd_node(
    request: pytest.FixtureRequest,
    netns_registry: LabRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    version = str(request.param)
    if version == VERSION and not available():
        pytest.fail(f"containerd {VERSION} is missing: scripts/bootstrap unpacks it")
    base = tmp_path_factory.mktemp(f"node-{version}")
    daemon = Containerd2(NodeNamespace(base / "node"), base / "daemon", version)
    daemon.start()
    try:
        yield Node(daemon, netns_registry)
    finally:
        daemon.stop()


@pytest.fixture
def node(containerd_node: Node) -> Iterator[Node]:
    yield containerd_node
    containerd_node.clean()


def is_2x(node: Node) -> bool:
    return node.daemon.version.startswith("2.")


def assert_trust_means_a_working_pull(node: Node, result: CliResult) -> None:
    assert result.returncode == 0, result.explain()
    pulled = node.pull()
    assert pulled.ok, f"install said trusted, the CRI pull still fails: {pulled.error}\n" + (
        result.explain()
    )


def assert_refused_and_nothing_written(node: Node, result: CliResult, reason: str) -> None:
    assert result.returncode != 0, result.explain()
    assert reason in result.stderr, result.explain()
    assert [f for f in node.certs_d_files() if "ca-trust-agent" in f] == []
    assert not list(ANCHORS.glob("ca-trust-agent-*"))
    assert X509 in (node.pull().error or "")


def test_a_single_config_path_is_trusted_in_registry_scope_and_verified_by_a_pull(
    node: Node,
) -> None:
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n')
    assert X509 in (node.pull().error or "")
    pid = node.daemon.spec.pid
    result = node.install()
    assert "registry scope" in result.stdout
    assert f"Check: verified: containerd pulled {node.image}" in result.stdout
    assert node.daemon.spec.pid == pid  # no restart
    assert_trust_means_a_working_pull(node, result)


def test_a_config_path_list(node: Node) -> None:
    """2.x reads "a:b" as one directory: registry scope would be a false success, so the agent
    says why and uses system scope (with the restart the OS store needs). 1.x reads the
    first directory, and registry scope works there."""
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}:/etc/docker/certs.d"\n')
    if is_2x(node):
        refused = node.install("--scope", "registry")
        assert_refused_and_nothing_written(node, refused, "reads that string as one directory")
        result = node.install()
        assert "Scope: system because" in result.stdout, result.explain()
        assert "restart" in result.stdout
    else:
        result = node.install()
        assert "registry scope" in result.stdout, result.explain()
    assert_trust_means_a_working_pull(node, result)


def test_no_config_path_means_system_scope_and_a_restart(node: Node) -> None:
    node.configure("")
    pid = node.daemon.spec.pid
    result = node.install()
    assert "system scope" in result.stdout, result.explain()
    assert node.daemon.spec.pid != pid  # the cached system pool needs a restart
    assert_trust_means_a_working_pull(node, result)


ONLY_2X = pytest.mark.parametrize("containerd_node", [VERSION], indirect=True)


@ONLY_2X
def test_a_config_path_set_in_an_imported_drop_in_is_honoured(node: Node) -> None:
    conf_d = node.daemon.config_file.parent / "conf.d"
    conf_d.mkdir(exist_ok=True)
    (conf_d / "20-registry.toml").write_text(f'{V2_TABLE}\n  config_path = "{CERTS_D}"\n')
    try:
        node.configure(f'imports = ["{CERTS_D.rsplit("/", 1)[0]}/conf.d/*.toml"]\n')
        result = node.install()
        assert "registry scope" in result.stdout, result.explain()
        assert_trust_means_a_working_pull(node, result)
    finally:
        (conf_d / "20-registry.toml").unlink()


@ONLY_2X
def test_a_version_3_file_with_both_tables_uses_the_1x_one(node: Node) -> None:
    node.configure(
        f'{V1_TABLE}\n  config_path = "{CERTS_D}"\n'
        f'{V2_TABLE}\n  config_path = "/etc/containerd/unused.d"\n'
    )
    result = node.install()
    assert f"{CERTS_D}/{node.registry.target}/" in result.stdout, result.explain()
    assert_trust_means_a_working_pull(node, result)


def test_a_config_changed_without_a_restart_is_caught_by_the_runtime(node: Node) -> None:
    """The file says config_path, the running containerd never read it: only the runtime's
    own pull can tell. The registry-scope file is rolled back and system scope used."""
    node.configure("")
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n', restart=False)
    result = node.install()
    assert "registry scope was not used by containerd" in result.stdout, result.explain()
    assert not [f for f in node.certs_d_files() if "ca-trust-agent" in f]
    assert_trust_means_a_working_pull(node, result)
    node.daemon.restart()  # leave the node reading what its file says


# hosts.toml content -> does containerd then ignore the *.crt beside it? (1.6.20, 2.1.9),
# measured: a 0-byte or unparsable file is ignored by both; 1.6 also ignores one without a
# [host] table; 2.x obeys any parsable, non-empty one.
HOSTS_TOML = {
    "empty": ("", (False, False)),
    "unparsable": ("this is [ not toml\n", (False, False)),
    "only a comment": ("# managed elsewhere\n", (False, True)),
    "only server": ('server = "https://{host}:{port}"\n', (False, True)),
    "a host table without ca": (
        'server = "https://{host}:{port}"\n'
        '[host."https://{host}:{port}"]\n  capabilities = ["pull", "resolve"]\n',
        (True, True),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTS_TOML))
def test_a_foreign_hosts_toml_is_judged_as_containerd_reads_it(node: Node, case: str) -> None:
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n')
    text, governs = HOSTS_TOML[case]
    mine = node.daemon.certs_d / node.registry.target
    mine.mkdir(parents=True)
    (mine / "hosts.toml").write_text(text.format(host=node.registry.host, port=node.registry.port))
    result = node.install("--scope", "registry")
    if governs[is_2x(node)]:
        assert_refused_and_nothing_written(node, result, "hosts.toml exists")
    else:
        assert_trust_means_a_working_pull(node, result)


def test_a_port_directory_wins_and_is_reported(node: Node) -> None:
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n')
    host, port = node.registry.host, node.registry.port
    other = node.daemon.certs_d / f"{host}_{port}_"
    other.mkdir(parents=True)
    (other / "hosts.toml").write_text(f'server = "https://{host}:{port}"\n')
    result = node.install("--scope", "registry")
    assert_refused_and_nothing_written(node, result, "reads it instead of")


def test_hosts_toml_append_adds_our_ca_and_remove_restores_the_file_byte_for_byte(
    node: Node,
) -> None:
    """Policy `hostsToml: append` (CLI --hosts-toml append): a hosts.toml containerd obeys
    gets one `ca` line naming our file; the pull works; `remove` puts the original back."""
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n')
    host, port = node.registry.host, node.registry.port
    mine = node.daemon.certs_d / node.registry.target
    mine.mkdir(parents=True)
    original = (
        f'# managed by the platform team\nserver = "https://{host}:{port}"\n'
        f'[host."https://{host}:{port}"]\n  capabilities = ["pull", "resolve"]\n'
    ).encode()
    (mine / "hosts.toml").write_bytes(original)
    assert_refused_and_nothing_written(node, node.install(), "hosts.toml exists")

    result = node.install("--scope", "registry", "--hosts-toml", "append")
    assert_trust_means_a_working_pull(node, result)
    assert b"ca = [" in (mine / "hosts.toml").read_bytes()

    removed = node.agent("remove", node.registry.target)
    assert removed.returncode == 0, removed.explain()
    assert (mine / "hosts.toml").read_bytes() == original
    assert X509 in (node.pull().error or "")


def test_hosts_toml_changed_by_someone_else_is_reported_not_overwritten(node: Node) -> None:
    table = V2_TABLE if is_2x(node) else V1_TABLE
    node.configure(f'{table}\n  config_path = "{CERTS_D}"\n')
    host, port = node.registry.host, node.registry.port
    mine = node.daemon.certs_d / node.registry.target
    mine.mkdir(parents=True)
    (mine / "hosts.toml").write_text(
        f'server = "https://{host}:{port}"\n'
        f'[host."https://{host}:{port}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    assert node.install("--scope", "registry", "--hosts-toml", "append").returncode == 0
    theirs = (mine / "hosts.toml").read_bytes() + b"# edited again by the platform team\n"
    (mine / "hosts.toml").write_bytes(theirs)

    refused = node.agent("remove", node.registry.target)
    assert refused.returncode == 6, refused.explain()
    assert "changed by someone else" in refused.stderr
    assert (mine / "hosts.toml").read_bytes() == theirs  # never overwritten
    # the operator takes our line out, as the message says; then remove converges and
    # leaves their file exactly as they left it
    without_ours = b"\n".join(line for line in theirs.split(b"\n") if b"ca-trust-agent" not in line)
    (mine / "hosts.toml").write_bytes(without_ours)
    removed = node.agent("remove", node.registry.target)
    assert removed.returncode == 0, removed.explain()
    assert (mine / "hosts.toml").read_bytes() == without_ours
    assert not [f for f in node.certs_d_files() if "ca-trust-agent" in f]
