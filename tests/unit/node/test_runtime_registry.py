"""The registry of runtimes: one `Runtime` per row of agent.core.runtime_kinds, asked by name.

What each runtime answers is tested where it matters (sockets and restarts in
test_runtime.py, certs.d in test_stores.py, the runtime as a judge in test_engine.py);
here: that the registry and the table agree, and that an unknown name is refused everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.errors import RuntimeRestartError, StoreError
from agent.core.runtime_kinds import BY_NAME, RUNTIMES
from agent.node.host import HostFS
from agent.node.runtimes import REGISTRY, runtime, socket_path
from agent.node.stores.registry import registry_store


def test_the_registry_holds_one_runtime_per_row_in_the_tables_order() -> None:
    assert tuple(REGISTRY) == RUNTIMES
    for name, rt in REGISTRY.items():
        assert rt.kind is BY_NAME[name]
        assert runtime(name) is rt


def test_a_runtime_without_config_listens_on_its_first_default_socket(tmp_path: Path) -> None:
    fs = HostFS(str(tmp_path))
    for name in RUNTIMES:
        assert socket_path(fs, name) == BY_NAME[name].default_sockets[0]


def test_an_unknown_runtime_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(RuntimeRestartError) as err:
        runtime("rkt")
    assert err.value.kind == "unknown-runtime" and "containerd, docker, crio" in str(err.value)
    with pytest.raises(StoreError) as store_err:
        registry_store(HostFS(str(tmp_path)), "rkt")
    assert store_err.value.kind == "unavailable"


def test_only_dockerd_without_consent_refuses_a_restart_for_its_containers(
    tmp_path: Path,
) -> None:
    """No daemon.json: dockerd's live-restore is off; containerd and CRI-O keep theirs."""
    fs = HostFS(str(tmp_path))
    runtime("containerd").check_restart(fs, allow_disruptive=False)
    runtime("crio").check_restart(fs, allow_disruptive=False)
    runtime("docker").check_restart(fs, allow_disruptive=True)
    with pytest.raises(RuntimeRestartError) as err:
        runtime("docker").check_restart(fs, allow_disruptive=False)
    assert err.value.kind == "refused"
