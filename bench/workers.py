"""Worker processes of the cluster benchmarks: many agents' components in a few processes,
driven over stdin/stdout with one JSON object per line (bench_scale, bench_fleet)."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.bench_daemon import clean_environ, proc_status_kib

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    lines: queue.Queue[JSON]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, timeout: float) -> JSON:
        """The next message holding `key`; the ones before it are skipped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if key in message:
                return message
        raise TimeoutError(f"worker {self.proc.pid}: no {key!r} within {timeout:.0f}s")

    def rss_kib(self) -> int:
        return proc_status_kib(self.proc.pid, "VmRSS")

    def stop(self, *, grace: float = 30.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, TimeoutError):
                self.send("stop")
                self.expect("stopped", grace)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _pump(stream: IO[str], lines: queue.Queue[JSON]) -> None:
    for line in stream:
        with contextlib.suppress(ValueError):
            lines.put(json.loads(line))


def spawn(argv: Sequence[str], log: Path) -> Worker:
    """Start `argv` from the repository with a clean environment (a node's), stderr to `log`."""
    with log.open("w") as err:
        proc = subprocess.Popen(list(argv), cwd=REPO, env=clean_environ(), text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    lines: queue.Queue[JSON] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    return Worker(proc, lines)
