"""The Node as the agent reads it (opt-in, runtime) and the status annotation it writes,
against the fake apiserver through the real KubeClient."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import Configuration

from agent.cluster.client import ApiError, KubeClient, RetryPolicy
from agent.cluster.nodes import (
    OPT_IN_ANNOTATION,
    TRUSTED_REGISTRIES_ANNOTATION,
    NodeInfo,
    TrustedRegistriesAnnotation,
    node_info,
    set_trusted_registries,
    trusted_registries_value,
)
from lab.fakes.apiserver import FakeApiServer, make_node

JSON = dict[str, Any]


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        server.put_object(make_node("node-a", annotations={"team": "platform"}))
        yield server


@pytest.fixture
def client(api: FakeApiServer) -> Iterator[KubeClient]:
    config = Configuration()
    config.host = api.url
    c = KubeClient(config, retry=RetryPolicy(attempts=2, initial=0.01, max_wait=0.02))
    yield c
    c.close()


def node_annotations(api: FakeApiServer, name: str = "node-a") -> dict[str, str]:
    obj = api.get_object("nodes", None, name)
    assert obj is not None
    found: dict[str, str] = obj["metadata"].get("annotations") or {}
    return found


def node_patches(api: FakeApiServer) -> int:
    return sum(1 for r in api.requests() if r.method == "PATCH" and "/nodes/" in r.path)


# --- reading the node ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "opted_in"),
    [
        ("enabled", True),
        ("Enabled", False),
        ("true", False),
        ("yes", False),
        (" enabled", False),
        ("enabled ", False),
        ("", False),
        ("disabled", False),
    ],
)
def test_only_the_exact_value_enabled_opts_a_node_in(value: str, opted_in: bool) -> None:
    obj = make_node("node-a", annotations={OPT_IN_ANNOTATION: value})
    assert node_info(obj).opted_in is opted_in


def test_a_node_without_annotations_is_not_opted_in() -> None:
    obj = make_node("node-a")
    del obj["metadata"]["annotations"]
    info = node_info(obj)
    assert info.opted_in is False
    assert dict(info.annotations) == {}
    assert info.trusted_registries == ()


@pytest.mark.parametrize(
    ("version", "runtime"),
    [
        ("containerd://1.6.20", "containerd"),
        ("docker://24.0.7", "docker"),
        ("cri-o://1.29.1", "crio"),
        ("remote://1.0", None),
        ("", None),
    ],
)
def test_the_runtime_comes_from_the_nodes_container_runtime_version(
    version: str, runtime: str | None
) -> None:
    assert node_info(make_node("node-a", runtime=version)).runtime == runtime


def test_node_info_reads_what_the_apiserver_serves(api: FakeApiServer, client: KubeClient) -> None:
    api.put_object(make_node("node-b", annotations={OPT_IN_ANNOTATION: "enabled"}))
    info = node_info(client.get("/api/v1/nodes/node-b"))
    assert info.name == "node-b"
    assert info.uid == api.get_object("nodes", None, "node-b")["metadata"]["uid"]  # type: ignore[index]
    assert info.opted_in is True
    assert info.runtime == "containerd"
    assert info.annotations[OPT_IN_ANNOTATION] == "enabled"


def test_node_info_is_a_read_only_hashable_value() -> None:
    info = node_info(make_node("node-a", annotations={OPT_IN_ANNOTATION: "enabled"}))
    assert isinstance(info, NodeInfo)
    with pytest.raises(TypeError):
        info.annotations["x"] = "y"  # type: ignore[index]
    labelled = node_info(make_node("node-a", annotations={"team": "platform"}))
    plain = node_info(make_node("node-a"))
    assert hash(labelled) == hash(plain)  # usable in sets; annotations are not hashed
    assert labelled != plain  # but they still count for equality


# --- the annotation value --------------------------------------------------------------------


def test_the_annotation_value_is_sorted_unique_and_comma_separated() -> None:
    value = trusted_registries_value(["registry.test:5443", "harbor.internal:443",
                                      "registry.test:5443", "[::1]:5000"])
    assert value == "[::1]:5000,harbor.internal:443,registry.test:5443"
    assert trusted_registries_value([]) is None


# --- writing the annotation ------------------------------------------------------------------


def test_the_annotation_is_merged_in_without_touching_other_annotations(
    api: FakeApiServer, client: KubeClient
) -> None:
    writer = TrustedRegistriesAnnotation(client, "node-a")
    assert writer.update(["registry.test:5443", "harbor.internal:443"]) is True
    assert node_annotations(api) == {
        "team": "platform",
        TRUSTED_REGISTRIES_ANNOTATION: "harbor.internal:443,registry.test:5443",
    }


def test_an_unchanged_value_is_not_patched_again(api: FakeApiServer, client: KubeClient) -> None:
    writer = TrustedRegistriesAnnotation(client, "node-a")
    writer.update(["b.test:443", "a.test:443"])
    assert writer.update(["a.test:443", "b.test:443"]) is False  # same set, other order
    assert node_patches(api) == 1
    assert writer.update(["a.test:443"]) is True
    assert node_patches(api) == 2
    assert node_annotations(api)[TRUSTED_REGISTRIES_ANNOTATION] == "a.test:443"


def test_an_empty_list_removes_the_annotation(api: FakeApiServer, client: KubeClient) -> None:
    writer = TrustedRegistriesAnnotation(client, "node-a")
    writer.update(["a.test:443"])
    assert writer.update([]) is True
    assert node_annotations(api) == {"team": "platform"}
    assert writer.update([]) is False
    assert node_patches(api) == 2


def test_a_value_seeded_from_the_node_as_read_is_not_rewritten_after_an_agent_restart(
    api: FakeApiServer, client: KubeClient
) -> None:
    api.put_object(make_node("node-a", annotations={TRUSTED_REGISTRIES_ANNOTATION: "a.test:443"}))
    info = node_info(client.get("/api/v1/nodes/node-a"))
    writer = TrustedRegistriesAnnotation(
        client, "node-a", current=info.annotations.get(TRUSTED_REGISTRIES_ANNOTATION))
    assert writer.update(["a.test:443"]) is False
    assert node_patches(api) == 0


def test_a_failed_patch_raises_and_is_retried_on_the_next_update(
    api: FakeApiServer, client: KubeClient
) -> None:
    writer = TrustedRegistriesAnnotation(client, "node-gone")
    with pytest.raises(ApiError) as caught:
        writer.update(["a.test:443"])
    assert caught.value.status == 404
    api.put_object(make_node("node-gone"))
    assert writer.update(["a.test:443"]) is True
    assert node_annotations(api, "node-gone")[TRUSTED_REGISTRIES_ANNOTATION] == "a.test:443"


def test_the_one_shot_form_reads_the_node_and_patches_only_on_change(
    api: FakeApiServer, client: KubeClient
) -> None:
    assert set_trusted_registries(client, "node-a", ["a.test:443"]) is True
    assert set_trusted_registries(client, "node-a", ["a.test:443"]) is False
    assert set_trusted_registries(client, "node-a", []) is True
    assert node_patches(api) == 2
    assert TRUSTED_REGISTRIES_ANNOTATION not in node_annotations(api)
