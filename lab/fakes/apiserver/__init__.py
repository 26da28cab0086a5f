"""A small in-memory Kubernetes API server that speaks the real wire protocol.

No kube-apiserver runs here, so the agent's Kubernetes side (and the official python client,
which the tests use as a referee) is tested against this fake. It serves the resources the
agent touches — core/v1 pods, nodes, events, configmaps, coordination.k8s.io/v1 leases and
certificates.k8s.io/v1beta1 clustertrustbundles —
with the semantics the agent relies on:

- one global, monotonically increasing resourceVersion; no-op writes do not bump it;
- LIST with `limit`/`continue`, field selectors (only the labels the real server supports
  for that resource; others are a 400 as on a real cluster) and label selectors;
- WATCH as chunked JSON lines, replayed from a bounded history; a resourceVersion older than
  the history gives an ERROR event carrying a 410 Expired Status; selectors are applied to
  the old and new object, so an object leaving the selection arrives as DELETED;
  `allowWatchBookmarks` and `timeoutSeconds`;
- POST (generateName, 409 AlreadyExists), PUT (409 Conflict on a stale resourceVersion),
  merge / strategic-merge (treated as merge) / JSON patch, DELETE (with preconditions);
  pods and nodes have a `status` subresource: the main resource keeps the old status;
- pods have the `eviction` subresource: POST a policy/v1 Eviction deletes the pod (201 with a
  Success Status), honouring `deleteOptions.preconditions`; no PodDisruptionBudgets are
  modelled, a test refuses evictions explicitly (`refuse_evictions`);
- every error is a metav1 Status.

Simplifications, on purpose: no authentication, no admission, no defaulting or validation
beyond names, no graceful pod deletion (deletes are immediate), LIST always serves the
latest state, and a paginated LIST continues from the current state.

Test controls: `expire_history()`, `drop_watches()`, `pause()` / `resume()`,
`refuse_evictions()` (429 as a PodDisruptionBudget answers), per-client byte
counters (`bytes_sent`) keyed by the `X-Fake-Client` header or else the User-Agent, a request
log (`requests`), and `put_object` / `get_object` / `delete_object` to set state directly as
kubelet or a controller would.

The package, by concern: `kinds` (served types, Status errors), `selectors`, `patches`,
`routes` (URL -> resource, discovery), `store` (objects, resourceVersions, history), `watch`
(what each watcher sees), `verbs` (the REST semantics above), `controls` (outages, injected
errors, refusals, request log, byte counters), `handler` (HTTP, chunked watch streams),
`fixtures` (objects and a kubeconfig) and `server` (`FakeApiServer`, wiring them).
"""

from lab.fakes.apiserver.controls import RequestRecord
from lab.fakes.apiserver.fixtures import (
    make_configmap,
    make_event,
    make_lease,
    make_node,
    make_pod,
    write_kubeconfig,
)
from lab.fakes.apiserver.kinds import JSON, KINDS, ApiFailure, Kind, status_object
from lab.fakes.apiserver.patches import json_patch, merge_patch
from lab.fakes.apiserver.routes import discovery
from lab.fakes.apiserver.selectors import (
    Selector,
    field_values,
    parse_field_selector,
    parse_label_selector,
)
from lab.fakes.apiserver.server import FakeApiServer
from lab.fakes.apiserver.watch import Change

__all__ = [
    "JSON",
    "KINDS",
    "ApiFailure",
    "Change",
    "FakeApiServer",
    "Kind",
    "RequestRecord",
    "Selector",
    "discovery",
    "field_values",
    "json_patch",
    "make_configmap",
    "make_event",
    "make_lease",
    "make_node",
    "make_pod",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
    "status_object",
    "write_kubeconfig",
]
