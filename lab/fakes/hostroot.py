"""A host-root tree shaped like a node, for tests and benches that need no real daemon.

The agent reads `<root>/etc/os-release` (which OS store) and `<root>/etc/containerd/config.toml`
(whether registry scope is available, and where `certs.d` is); everything else it creates.
"""

from __future__ import annotations

from pathlib import Path

CERTS_D = "/etc/containerd/certs.d"


def node_root(root: Path, *, os_id: str = "debian", certs_d: str | None = CERTS_D) -> Path:
    """Create `root` with an os-release and a containerd 1.x config (`config_path = certs_d`,
    or none at all when certs_d is None, so only system scope is available)."""
    (root / "etc/containerd").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(f"ID={os_id}\n")
    table = '[plugins."io.containerd.grpc.v1.cri".registry]\n'
    config = f'version = 2\n{table}config_path = "{certs_d}"\n' if certs_d else "version = 2\n"
    (root / "etc/containerd/config.toml").write_text(config)
    return root
