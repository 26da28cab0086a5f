"""Node effects: files under a host root and commands on the host.

Everything the agent does to a node goes through `HostFS` (files, in `files`) or a `Runner`
(commands, in `commands`), so tests swap the root for a temp tree and the runner for a
recording double.
"""

from __future__ import annotations

from agent.node.host.commands import (
    CLEAN_PATH,
    NSENTER_PREFIX,
    OUTPUT_LIMIT,
    CommandResult,
    DirectRunner,
    NsenterRunner,
    Runner,
    nsenter_prefix,
)
from agent.node.host.files import HostFS, split_host_path
from agent.node.host.staging import STAGING_DIR, TMP_PREFIX

__all__ = [
    "CLEAN_PATH",
    "NSENTER_PREFIX",
    "OUTPUT_LIMIT",
    "STAGING_DIR",
    "TMP_PREFIX",
    "CommandResult",
    "DirectRunner",
    "HostFS",
    "NsenterRunner",
    "Runner",
    "nsenter_prefix",
    "split_host_path",
]
