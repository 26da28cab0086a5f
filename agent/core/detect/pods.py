"""Pod statuses and Events (raw API JSON, camelCase) -> the pull failures they report.

A container waiting in ErrImagePull / ImagePullBackOff, or a kubelet Event of reason
Failed / FailedCreatePodSandBox, is tied to its pod and container; its message is read by
`message.parse_pull_error`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.core.detect.message import PullFailure, parse_pull_error

POD_STATUS_REASONS = ("ErrImagePull", "ImagePullBackOff")
EVENT_REASONS = ("Failed", "FailedCreatePodSandBox")

# kubelet < 1.32 writes only this for ImagePullBackOff: the cause is in the earlier Event.
_BACKOFF_WITHOUT_CAUSE = re.compile(r'\s*back-off pulling image "[^"\n]*"\.?\s*', re.IGNORECASE)
_FIELD_PATH_CONTAINER = re.compile(
    r"spec\.(?:containers|initContainers|ephemeralContainers)\{([^}]{1,253})\}"
)


@dataclass(frozen=True)
class PodPullFailure:
    """A pod's container that cannot pull its image, with the cause when known."""

    pod_namespace: str
    pod_name: str
    pod_uid: str
    container: str  # "" for a sandbox failure (the pause image belongs to no container)
    image: str
    reason: str  # ErrImagePull | ImagePullBackOff | FailedCreatePodSandBox | Failed
    failure: PullFailure | None  # None when the status carries no error text


def pull_failures_from_pod(pod: Mapping[str, Any]) -> list[PodPullFailure]:
    """Containers of a pod (raw API JSON, camelCase) waiting because a pull failed.

    A status whose message names a non-x509 cause (manifest unknown, DNS, ...) is left
    out. A status with no cause at all (empty, or only `Back-off pulling image "..."`,
    as kubelet < 1.32 writes for ImagePullBackOff) is kept with `failure=None`: the cause
    is in the pod's earlier Failed Event.
    """
    metadata = _mapping(_get(pod, "metadata"))
    spec = _mapping(_get(pod, "spec"))
    status = _mapping(_get(pod, "status"))
    spec_images = _spec_images(spec)
    namespace = _string(metadata.get("namespace"))
    name = _string(metadata.get("name"))
    uid = _string(metadata.get("uid"))
    found: list[PodPullFailure] = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for raw in _sequence(status.get(key)):
            entry = _status_failure(_mapping(raw), spec_images)
            if entry is None:
                continue
            container, image, reason, failure = entry
            found.append(PodPullFailure(namespace, name, uid, container, image, reason, failure))
    return found


def pull_failure_from_event(
    event: Mapping[str, Any], image_hint: str | None = None
) -> PullFailure | None:
    """A core/v1 Event of reason Failed or FailedCreatePodSandBox, as kubelet writes it."""
    if _string(_get(event, "reason")) not in EVENT_REASONS:
        return None
    message = _string(_get(event, "message"))
    if not message:
        return None
    return parse_pull_error(message, image_hint)


def pod_pull_failure_from_event(
    event: Mapping[str, Any], image_hint: str | None = None
) -> PodPullFailure | None:
    """The same, tied to the Pod the Event is about (involvedObject); None otherwise."""
    failure = pull_failure_from_event(event, image_hint)
    if failure is None:
        return None
    involved = _mapping(_get(event, "involvedObject"))
    if _string(involved.get("kind")) != "Pod":
        return None
    field_path = _string(involved.get("fieldPath"))[:1024]
    match = _FIELD_PATH_CONTAINER.fullmatch(field_path)
    return PodPullFailure(
        pod_namespace=_string(involved.get("namespace")),
        pod_name=_string(involved.get("name")),
        pod_uid=_string(involved.get("uid")),
        container=match.group(1) if match else "",
        image=failure.image or "",
        reason=_string(_get(event, "reason")),
        failure=failure,
    )


def _status_failure(
    status: Mapping[str, Any], spec_images: Mapping[str, str]
) -> tuple[str, str, str, PullFailure | None] | None:
    waiting = _mapping(_mapping(status.get("state")).get("waiting"))
    reason = _string(waiting.get("reason"))
    if reason not in POD_STATUS_REASONS:
        return None
    container = _string(status.get("name"))
    image = _string(status.get("image")) or spec_images.get(container, "")
    message = _string(waiting.get("message"))
    if not message.strip() or _BACKOFF_WITHOUT_CAUSE.fullmatch(message[:2048]):
        return container, image, reason, None
    failure = parse_pull_error(message, image or None)
    if failure is None:
        return None
    return container, image, reason, failure


def _spec_images(spec: Mapping[str, Any]) -> dict[str, str]:
    images: dict[str, str] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for raw in _sequence(spec.get(key)):
            container = _mapping(raw)
            name = _string(container.get("name"))
            if name:
                images[name] = _string(container.get("image"))
    return images


# The API server's JSON is trusted in shape but not assumed: a field of the wrong type
# reads as absent rather than crashing the watch loop.
def _get(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
