"""Logging setup: JSON lines for the DaemonSet, a plain line for people, one handler always."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from agent.core.errors import InputError
from agent.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """setup_logging changes the process-wide root logger; put it back for other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def ours(stream: io.StringIO) -> list[logging.Handler]:
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is stream
    ]


def test_json_lines_carry_timestamp_level_logger_message_and_extras() -> None:
    out = io.StringIO()
    setup_logging("info", json=True, stream=out)

    logging.getLogger("agent.cluster.daemon").info(
        "trusted %s", "registry.test:5443", extra={"endpoint": "registry.test:5443", "restarts": 0}
    )

    record = json.loads(out.getvalue())
    assert record["level"] == "INFO"
    assert record["logger"] == "agent.cluster.daemon"
    assert record["message"] == "trusted registry.test:5443"
    assert record["endpoint"] == "registry.test:5443"
    assert record["restarts"] == 0
    stamp = datetime.fromisoformat(record["timestamp"])
    assert stamp.tzinfo is not None
    assert stamp.utcoffset() == timedelta(0)


def test_json_puts_a_traceback_in_the_same_line() -> None:
    """One event = one line, or a log pipeline splits a traceback into unrelated records."""
    out = io.StringIO()
    setup_logging("info", json=True, stream=out)
    try:
        raise ValueError("bad bytes")
    except ValueError:
        logging.getLogger("agent.x").exception("apply failed")

    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "ValueError: bad bytes" in json.loads(lines[0])["exc_info"]


def test_plain_format_is_one_readable_line_with_extras_as_key_value() -> None:
    out = io.StringIO()
    setup_logging("info", json=False, stream=out)

    logging.getLogger("agent.cli").warning("pin mismatch", extra={"endpoint": "r.test:443"})

    line = out.getvalue().rstrip("\n")
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z"), "timestamps are UTC"
    datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    assert rest == "WARNING agent.cli: pin mismatch endpoint=r.test:443"


def test_level_filters_lower_records() -> None:
    out = io.StringIO()
    setup_logging("warning", json=False, stream=out)
    log = logging.getLogger("agent.x")
    log.info("hidden")
    log.warning("shown")
    assert "hidden" not in out.getvalue()
    assert "shown" in out.getvalue()


def test_level_names_are_case_insensitive() -> None:
    setup_logging("DEBUG", json=False, stream=io.StringIO())
    assert logging.getLogger().level == logging.DEBUG


def test_unknown_level_is_an_input_error() -> None:
    with pytest.raises(InputError) as info:
        setup_logging("verbose", json=False)
    assert info.value.kind == "log-level"
    assert info.value.exit_code == 2


def test_calling_twice_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", json=False, stream=first)
    setup_logging("info", json=True, stream=second)

    logging.getLogger("agent.x").info("once")

    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"
    assert len(ours(first)) == 0
    assert len(ours(second)) == 1


def test_handlers_installed_by_others_are_left_alone() -> None:
    """pytest's caplog and a library's handler keep working after setup_logging."""
    foreign = logging.NullHandler()
    logging.getLogger().addHandler(foreign)
    setup_logging("info", json=False, stream=io.StringIO())
    setup_logging("info", json=False, stream=io.StringIO())
    assert foreign in logging.getLogger().handlers
