"""The runtime as the judge of an install: ask the runtime that failed to pull again.

A TLS handshake trusting the file we wrote proves the CA matches the server, not that the
runtime reads that file (containerd 2.x with a config_path list, a competing hosts.toml, a
system pool cached since the first pull). So after writing, the runtime itself pulls the
failing image through the API kubelet uses: the CRI for containerd and CRI-O, the Engine
API for dockerd. grpc and protobuf load here, with the first verification only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

from agent.core.containerd_config import major_version
from agent.core.errors import AgentError
from agent.core.pull_verdict import INCONCLUSIVE, UNTRUSTED, PullVerdict
from agent.node.host import HostFS
from agent.node.runtimes import registry, socket_path

log = logging.getLogger(__name__)

# (runtime, real socket path, image, timeout) -> verdict
Pull = Callable[[str, str, str, float], PullVerdict]


def pull_through_api(name: str, socket: str, image: str, timeout: float) -> PullVerdict:
    """The real thing: the runtime's own verification client (CRI or Engine API)."""
    return registry.runtime(name).pull(socket, image, timeout)


class RuntimeJudge:
    """Knows each runtime's version and asks it to pull. Injected `pull` for tests."""

    def __init__(self, fs: HostFS, *, pull: Pull | None = None) -> None:
        self.fs = fs
        self._pull = pull or pull_through_api
        self._versions: dict[str, str] = {}

    def learn_version(self, runtime: str, version: str) -> None:
        """The daemon passes the Node's containerRuntimeVersion (`containerd://2.1.9`)."""
        if version:
            self._versions[runtime] = version
        else:
            self._versions.pop(runtime, None)  # ask the runtime itself next time

    def answering(self, runtimes: Sequence[str]) -> tuple[str, ...]:
        """The runtimes whose API socket exists: only they can be asked."""
        found = []
        for runtime in runtimes:
            with contextlib.suppress(AgentError):
                if self.fs.is_socket(socket_path(self.fs, runtime)):
                    found.append(runtime)
        return tuple(found)

    def version(self, runtime: str) -> str | None:
        """Asked once per engine (a silent socket too: "" = unknown), never per install step."""
        if runtime not in self._versions and self.answering((runtime,)):
            real = self.fs.resolve(socket_path(self.fs, runtime))
            self._versions[runtime] = registry.runtime(runtime).version(real, 1.0) or ""
        return self._versions.get(runtime) or None

    def major(self, runtime: str) -> int | None:
        version = self.version(runtime)
        return major_version(version) if version else None

    def judge(self, runtimes: Sequence[str], image: str, timeout: float) -> PullVerdict:
        """Every runtime must accept; the first refusal (or silence) is the verdict."""
        if not runtimes:
            return PullVerdict(
                INCONCLUSIVE, "no runtime", image, "no container runtime socket answers", 0.0
            )
        verdicts = [self._ask(rt, image, timeout) for rt in runtimes]
        for kind in (UNTRUSTED, INCONCLUSIVE):
            for verdict in verdicts:
                if verdict.kind == kind:
                    return verdict
        return verdicts[0]

    def _ask(self, runtime: str, image: str, timeout: float) -> PullVerdict:
        socket = self.fs.resolve(socket_path(self.fs, runtime))
        verdict = self._pull(runtime, socket, image, timeout)
        log.info(
            "runtime verdict",
            extra={"runtime": runtime, "image": image, "result": verdict.kind},
        )
        return verdict
