"""agent.node.wiring: the one engine builder the CLI and the daemon share."""

from __future__ import annotations

from pathlib import Path

from agent.node.host import DirectRunner, NsenterRunner
from agent.node.runtimes import RestartMethod
from agent.node.wiring import EngineConfig, build_engine


def test_a_host_root_other_than_slash_runs_host_commands_in_pid_1_s_namespaces(
    tmp_path: Path,
) -> None:
    assert isinstance(build_engine(EngineConfig(host_root=str(tmp_path))).runner, NsenterRunner)
    assert isinstance(build_engine(EngineConfig(host_root="/")).runner, DirectRunner)
    chosen = EngineConfig(host_root=str(tmp_path), runner="direct")
    assert isinstance(build_engine(chosen).runner, DirectRunner)


def test_a_restart_command_is_split_like_a_shell_would_but_never_run_by_one(
    tmp_path: Path,
) -> None:
    command = "ssh node 'systemctl restart {runtime}'"
    config = EngineConfig(host_root=str(tmp_path), restart_command=command)
    assert config.restart_method() == RestartMethod(
        "command", ("ssh", "node", "systemctl restart {runtime}")
    )


def test_named_runtimes_are_the_engine_s_and_the_root_is_its_file_system(tmp_path: Path) -> None:
    engine = build_engine(EngineConfig(host_root=str(tmp_path), runtimes=("docker",)))
    assert engine.runtimes == ("docker",)
    assert engine.fs.root == str(tmp_path)
