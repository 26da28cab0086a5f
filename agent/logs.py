"""Logging setup: one handler on the root logger, JSON for the DaemonSet, plain for people.

Call sites log with `extra={...}` (endpoint, node, pod, sha256...). JSON output keeps those as
fields a log pipeline can filter on; the plain format appends them as `key=value` so a person
running the CLI sees the same facts.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

from agent.core.errors import InputError

LEVELS = ("debug", "info", "warning", "error", "critical")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_MARK = "_ca_trust_agent_handler"


class PlainFormatter(logging.Formatter):
    """`2026-11-27T13:57:51Z INFO agent.cluster.daemon: message key=value ...` in UTC."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.converter = time.gmtime  # nodes in any zone; logs compare across them in UTC

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback below the fields
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{head} {fields}{sep}{tail}"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


def json_formatter() -> logging.Formatter:
    # Imported here: the CLI's human path (and `fetch`'s start-up time) never needs it.
    from pythonjsonlogger.json import JsonFormatter

    # timestamp=True adds an ISO 8601 UTC "timestamp" from record.created; the other names
    # are renamed to what log pipelines (Loki, Elastic, Cloud Logging) expect.
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )


def parse_level(level: str) -> int:
    name = level.strip().lower()
    if name not in LEVELS:
        choices = ", ".join(LEVELS)
        raise InputError(f"unknown log level {level!r}; use one of {choices}", "log-level")
    return int(getattr(logging, name.upper()))


def setup_logging(level: str = "info", json: bool = False, *, stream: TextIO | None = None) -> None:
    """Route all logging to one stderr handler; calling again replaces it, never adds one.

    stderr, because the CLI prints its data (`--json` output) on stdout.
    """
    numeric = parse_level(level)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter() if json else PlainFormatter())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(numeric)
