"""`Engine`: the install, remove/recover and apply/rollback parts put together."""

from __future__ import annotations

from agent.node.engine.install import Installer
from agent.node.engine.remove import Remover


class Engine(Installer, Remover):
    """Installs, verifies and removes trust anchors on one node."""
