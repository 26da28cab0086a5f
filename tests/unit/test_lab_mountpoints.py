"""The lab's shared mountpoints: the last live user removes a directory the lab made, so a
second session's private mounts on it are never detached under its feet (LAB.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.isolation import mountpoints


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(mountpoints, "STATE", tmp_path / "state")
    return tmp_path / "state"


def test_a_directory_the_lab_made_goes_with_its_last_user(tmp_path: Path, state: Path) -> None:
    path = str(tmp_path / "run-containerd")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert mountpoints.acquire(path)
        (state / mountpoints._holders(path).name / str(other.pid)).touch()  # another session
        assert mountpoints.release(path)
        assert os.path.isdir(path)  # still in use elsewhere: kept
    finally:
        other.kill()
        other.wait()
    assert mountpoints.acquire(path)
    assert mountpoints.release(path)  # the other user died: the last one removes it
    assert not os.path.exists(path)


def test_a_directory_of_the_machine_s_own_is_never_taken(tmp_path: Path) -> None:
    path = tmp_path / "etc-containerd"
    path.mkdir()
    assert not mountpoints.acquire(str(path))
    assert path.is_dir()
