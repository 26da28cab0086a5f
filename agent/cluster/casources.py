"""The CAs that policy.yaml takes from the cluster (`caFrom`), watched.

A registry entry may read its CA from a ConfigMap key in the agent's namespace (what
trust-manager writes as a Bundle target) or from ClusterTrustBundles
(certificates.k8s.io/v1beta1), by name or by label selector. A watch per kind runs only
while the policy names a source of that kind, so an agent whose policy uses none makes no
such call (and needs no RBAC for it). Every change is handed to `on_change` as the whole
resolved mapping (`agent.core.policy.Resolved`): the controller installs a changed bundle
(a rotation) and removes the CA of a source that is gone.

A source is reported only once its kind's first list has arrived: before that it is
"unknown", and an unknown source never causes a removal (a restarted agent must not take
a CA away because its watch is still listing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from agent.cluster.client import JSON, KubeClient, resource_path
from agent.cluster.watch import Key, Watcher
from agent.core.policy import CASource

log = logging.getLogger(__name__)

CTB_API = "certificates.k8s.io/v1beta1"
SYNCED = "SYNCED"  # a pseudo event: the first (or a re-) list has been delivered in full
Resolution = dict[CASource, str | None]


class _ListMarkingWatcher(Watcher):
    """A Watcher that says when a list's events have all been delivered. `synced` is set
    before the listed objects are yielded, so it cannot tell "absent" from "not yet seen"."""

    def _relist(self) -> Iterator[tuple[str, JSON]]:
        yield from super()._relist()
        yield SYNCED, {}


class CASources:
    """Watches what `configure(sources)` names; calls `on_change(resolution)` on changes."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        on_change: Callable[[Resolution], None],
        *,
        on_restart: Callable[[str, str], None] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.on_change = on_change
        self.on_restart = on_restart
        self._lock = threading.Lock()
        self._sources: tuple[CASource, ...] = ()
        self._watches: dict[str, tuple[Watcher, threading.Thread]] = {}
        self._objects: dict[str, dict[Key, JSON]] = {}
        self._synced: set[str] = set()
        # what on_change last heard: nothing configured = nothing to report (no extra sync)
        self._last: Resolution = {}

    def configure(self, sources: tuple[CASource, ...]) -> None:
        """Watch exactly the kinds `sources` need; report the resolution for them."""
        kinds = {s.kind for s in sources}
        with self._lock:
            self._sources = sources
            stale = [k for k in self._watches if k not in kinds]
            fresh = [k for k in sorted(kinds) if k not in self._watches]
            stopped = [self._watches.pop(k)[0] for k in stale]
            for kind in stale:
                self._objects.pop(kind, None)
                self._synced.discard(kind)
            for kind in fresh:
                watcher = self._watcher(kind)
                thread = threading.Thread(
                    target=self._pump, args=(kind, watcher), name=f"watch-{kind}", daemon=True
                )
                self._watches[kind] = (watcher, thread)
                self._objects[kind] = {}
                thread.start()
        for watcher in stopped:
            watcher.stop()
        self._publish()

    def stop(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watcher, _ in watches:
            watcher.stop()

    def join(self, timeout: float = 5.0) -> None:
        with self._lock:
            threads = [t for _, t in self._watches.values()]
        for thread in threads:
            thread.join(timeout)

    def resolve(self) -> Resolution:
        """Every configured source whose kind has been listed: its PEM text, or None."""
        with self._lock:
            return {
                s: _pem_of(s, self._objects.get(s.kind, {}))
                for s in self._sources
                if s.kind in self._synced
            }

    # ------------------------------------------------------------------ internals

    def _watcher(self, kind: str) -> Watcher:
        if kind == "configMap":
            # All ConfigMaps of the agent's namespace: the Role already allows that (the
            # policy is one of them); a field selector can name only one.
            path = resource_path("v1", "configmaps", self.namespace)
        else:
            path = resource_path(CTB_API, "clustertrustbundles")
        return _ListMarkingWatcher(
            self.client, path, on_restart=lambda reason: self._restarted(kind, reason)
        )

    def _restarted(self, kind: str, reason: str) -> None:
        if self.on_restart is not None:
            self.on_restart(kind, reason)

    def _pump(self, kind: str, watcher: Watcher) -> None:
        for event, obj in watcher.events():
            try:
                self._apply(kind, event, obj)
            except Exception:  # one odd object never stops the watch
                log.exception("handling %s %s failed", kind, event)

    def _apply(self, kind: str, event: str, obj: JSON) -> None:
        with self._lock:
            objects = self._objects.get(kind)
            if objects is None:  # configured away meanwhile
                return
            if event == SYNCED:
                self._synced.add(kind)
            else:
                meta = obj.get("metadata") or {}
                key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
                if event == "DELETED":
                    objects.pop(key, None)
                else:
                    objects[key] = obj
            if kind not in self._synced:
                return  # mid-list: the SYNCED marker reports the whole list at once
        self._publish()

    def _publish(self) -> None:
        resolution = self.resolve()
        with self._lock:
            if resolution == self._last:
                return
            self._last = resolution
        for source, pem in resolution.items():
            log.info("CA source %s: %s", source.describe(), "found" if pem else "absent")
        self.on_change(resolution)


def _pem_of(source: CASource, objects: dict[Key, JSON]) -> str | None:
    if source.kind == "configMap":
        obj = next((o for (_, name), o in objects.items() if name == source.name), None)
        value = ((obj or {}).get("data") or {}).get(source.key)
        return value if isinstance(value, str) and value.strip() else None
    chosen = sorted(
        (o for o in objects.values() if source.selects(o)),
        key=lambda o: str((o.get("metadata") or {}).get("name", "")),
    )
    bundles = [_trust_bundle(o) for o in chosen]
    text = "\n".join(b for b in bundles if b)
    return text or None


def _trust_bundle(obj: dict[str, Any]) -> str:
    value = (obj.get("spec") or {}).get("trustBundle")
    return value if isinstance(value, str) else ""


__all__ = ["CTB_API", "CASources", "Resolution"]
