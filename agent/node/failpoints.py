"""Crash injection for the crash-safety tests: die exactly at a named step.

`CA_TRUST_AGENT_FAILPOINT=<name>` makes the process SIGKILL itself when it reaches
`hit(<name>)` — the same as an operator's `kill -9` or an OOM kill at that instant, but
deterministic. Unset (always, in production) it costs one dict lookup per step.
Names: "write:temp-written", "write:renamed", "apply:before:<Action>", "apply:after:<Action>"
where <Action> is a plan action class name (WriteFile, Refresh, Restart, RecordLedger, ...).
"""

from __future__ import annotations

import os
import signal

ENV = "CA_TRUST_AGENT_FAILPOINT"


def hit(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
