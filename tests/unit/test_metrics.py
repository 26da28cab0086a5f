"""The agent's metrics and its /metrics, /healthz, /readyz endpoint, scraped over real HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import DEFAULT_PORT, Metrics, MetricsServer, Readiness, serve


def get(server: MetricsServer, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, including 4xx/5xx answers."""
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    handle = serve(metrics, port=0, host="127.0.0.1")
    yield handle
    handle.stop()


def test_default_port_is_the_one_the_manifests_expose() -> None:
    assert DEFAULT_PORT == 9402


def test_scrape_exports_every_agent_metric_with_the_prefix(
    metrics: Metrics, server: MetricsServer
) -> None:
    metrics.record_remediation("trusted", 1.5)
    metrics.record_runtime_restart("containerd", "ok")
    metrics.record_watch_restart("pods", "expired")
    metrics.record_event_dropped("rate-limited")
    metrics.set_trusted({"registry.test:5443": datetime(2030, 1, 1, tzinfo=UTC)})

    status, content_type, body = get(server, "/metrics")

    assert status == 200
    assert content_type.startswith("text/plain")
    got = samples(body)
    assert got[("ca_trust_agent_remediations_total", (("result", "trusted"),))] == 1
    assert got[("ca_trust_agent_remediation_duration_seconds_count", ())] == 1
    assert got[("ca_trust_agent_remediation_duration_seconds_sum", ())] == 1.5
    assert got[("ca_trust_agent_trusted_cas", ())] == 1
    endpoint = (("endpoint", "registry.test:5443"),)
    assert got[("ca_trust_agent_ca_not_after_timestamp_seconds", endpoint)] == 1893456000
    restart = (("result", "ok"), ("runtime", "containerd"))
    assert got[("ca_trust_agent_runtime_restarts_total", restart)] == 1
    watch = (("reason", "expired"), ("resource", "pods"))
    assert got[("ca_trust_agent_watch_restarts_total", watch)] == 1
    assert got[("ca_trust_agent_events_dropped_total", ())] == 1


# what prometheus-client's standard collectors export, and nothing else without our prefix
STANDARD_PREFIXES = ("process_", "python_info", "python_gc_")


def test_every_exported_family_is_ours_or_a_standard_one(
    metrics: Metrics, server: MetricsServer
) -> None:
    _, _, body = get(server, "/metrics")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert names, "the registry exported nothing"
    assert all(n.startswith(("ca_trust_agent_", *STANDARD_PREFIXES)) for n in names), names


def test_the_standard_process_and_platform_metrics_describe_this_process(
    metrics: Metrics, server: MetricsServer
) -> None:
    """What the usual dashboards (and the agent's footprint target) read off a pod."""
    _, _, body = get(server, "/metrics")
    got = samples(body)
    rss = got[("process_resident_memory_bytes", ())]
    with open("/proc/self/status") as status:  # the same number, from the kernel
        vm_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
    assert 0.5 * vm_rss < rss < 2 * vm_rss
    assert got[("process_cpu_seconds_total", ())] > 0
    started = got[("process_start_time_seconds", ())]
    assert started <= datetime.now(UTC).timestamp()
    info = [labels for (name, labels) in got if name == "python_info"]
    assert dict(info[0])["major"] == "3" and dict(info[0])["implementation"] == "CPython"
    assert ("python_gc_collections_total", (("generation", "0"),)) in got


def test_a_port_in_use_is_an_os_error_the_daemon_turns_into_one_line(metrics: Metrics) -> None:
    taken = serve(metrics, port=0, host="127.0.0.1")
    try:
        with pytest.raises(OSError, match="in use"):
            serve(Metrics(), port=taken.port, host="127.0.0.1")
    finally:
        taken.stop()


def test_collectors_live_in_a_private_registry_not_the_global_one() -> None:
    """Two Metrics in one process must not collide, and the global registry stays clean."""
    first, second = Metrics(), Metrics()
    first.record_event_dropped()
    assert second.registry.get_sample_value("ca_trust_agent_events_dropped_total") == 0
    assert REGISTRY.get_sample_value("ca_trust_agent_events_dropped_total") is None


def test_set_trusted_drops_endpoints_no_longer_in_the_ledger(metrics: Metrics) -> None:
    metrics.set_trusted(
        {
            "a.test:443": datetime(2030, 1, 1, tzinfo=UTC),
            "b.test:5000": datetime(2031, 1, 1, tzinfo=UTC),
        }
    )
    metrics.set_trusted({"b.test:5000": datetime(2031, 1, 1, tzinfo=UTC)})

    value = metrics.registry.get_sample_value
    name = "ca_trust_agent_ca_not_after_timestamp_seconds"
    assert value(name, {"endpoint": "a.test:443"}) is None
    assert value(name, {"endpoint": "b.test:5000"}) == datetime(2031, 1, 1, tzinfo=UTC).timestamp()
    assert value("ca_trust_agent_trusted_cas") == 1


def test_healthz_answers_200_while_the_process_runs(server: MetricsServer) -> None:
    status, _, body = get(server, "/healthz")
    assert (status, body) == (200, "ok\n")


def test_readyz_is_200_by_default(server: MetricsServer) -> None:
    status, _, _ = get(server, "/readyz")
    assert status == 200


def test_readyz_follows_the_readiness_callable_and_names_the_reason(metrics: Metrics) -> None:
    state = {"now": Readiness(False, "waiting for the first policy")}
    handle = serve(metrics, port=0, host="127.0.0.1", readiness=lambda: state["now"])
    try:
        assert get(handle, "/readyz")[0::2] == (503, "waiting for the first policy\n")
        state["now"] = Readiness(True)
        assert get(handle, "/readyz")[0::2] == (200, "ok\n")
    finally:
        handle.stop()


def test_a_failing_readiness_check_reads_as_not_ready(metrics: Metrics) -> None:
    def broken() -> Readiness:
        raise RuntimeError("informer cache gone")

    handle = serve(metrics, port=0, host="127.0.0.1", readiness=broken)
    try:
        status, _, body = get(handle, "/readyz")
        assert status == 503
        assert "informer cache gone" in body
        assert get(handle, "/healthz")[0] == 200, "the server survives a broken check"
    finally:
        handle.stop()


def test_unknown_paths_are_404(server: MetricsServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metrics/extra")[0] == 404


def test_query_strings_do_not_change_the_route(server: MetricsServer) -> None:
    assert get(server, "/healthz?verbose=1")[0] == 200


def test_port_zero_binds_a_free_port_and_reports_it(server: MetricsServer) -> None:
    assert server.port > 0
    assert server.host == "127.0.0.1"


def test_server_runs_in_a_daemon_thread_and_stop_releases_the_port(metrics: Metrics) -> None:
    """A daemon thread never holds the agent up at exit; after stop() nothing listens."""
    handle = serve(metrics, port=0, host="127.0.0.1")
    threads = [t for t in threading.enumerate() if t.name == "metrics-http"]
    assert threads and all(t.daemon for t in threads)
    handle.stop()
    with pytest.raises(urllib.error.URLError):
        get(handle, "/healthz")


def test_openmetrics_is_served_when_the_scraper_asks_for_it(server: MetricsServer) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 (fixed http URL)
        body = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_an_ipv6_bind_address_serves_over_ipv6(metrics: Metrics) -> None:
    """IPv6-only clusters pass `--metrics-address [::]:9402`; here on loopback."""
    handle = serve(metrics, port=0, host="::1")
    try:
        url = f"http://[::1]:{handle.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
    finally:
        handle.stop()
