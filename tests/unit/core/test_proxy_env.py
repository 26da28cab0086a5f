"""agent.core.proxy_env: a runtime's proxy variables as systemd sets them and Go reads them.

The systemd cases follow systemd.exec(5) (`Environment=`: quoted words, later assignments
win, an empty assignment resets) and the NO_PROXY cases follow
golang.org/x/net/http/httpproxy, which containerd and dockerd use through net/http.
"""

from __future__ import annotations

import pytest

from agent.core.hostport import HostPort
from agent.core.proxy_env import (
    ProxyChoice,
    choose_proxy,
    no_proxy_match,
    parse_environment_file,
    service_environment,
    split_words,
)

PROXY = "http://proxy.corp:3128"


def env_of(*units: tuple[str, str]) -> dict[str, str]:
    return service_environment(units).as_dict()


# -- systemd ----------------------------------------------------------------------------------
def test_the_usual_drop_in_quotes_each_assignment() -> None:
    text = (
        "[Service]\n"
        'Environment="HTTPS_PROXY=http://proxy.corp:3128" "NO_PROXY=10.0.0.0/8,.corp,localhost"\n'
    )
    assert env_of(("/etc/systemd/system/containerd.service.d/http-proxy.conf", text)) == {
        "HTTPS_PROXY": PROXY,
        "NO_PROXY": "10.0.0.0/8,.corp,localhost",
    }


def test_unquoted_assignments_and_several_per_line() -> None:
    text = "[Service]\nEnvironment=HTTPS_PROXY=http://p:1 HTTP_PROXY=http://p:2\n"
    assert env_of(("a.conf", text)) == {"HTTPS_PROXY": "http://p:1", "HTTP_PROXY": "http://p:2"}


def test_a_quote_may_open_inside_a_word_and_escapes_are_c_escapes() -> None:
    assert split_words('NO_PROXY="a b" X=c\\ d \'Y=e"f\'') == ["NO_PROXY=a b", "X=c d", 'Y=e"f']


def test_later_files_and_later_lines_override_earlier_ones() -> None:
    unit = (
        "/lib/systemd/system/containerd.service",
        "[Service]\nEnvironment=HTTPS_PROXY=http://old:1\n",
    )
    dropin = (
        "10-proxy.conf",
        "[Service]\nEnvironment=HTTPS_PROXY=http://new:2\nEnvironment=NO_PROXY=x\n",
    )
    env = service_environment([unit, dropin])
    assert env.as_dict() == {"HTTPS_PROXY": "http://new:2", "NO_PROXY": "x"}
    assert dict(env.sources)["HTTPS_PROXY"] == "10-proxy.conf"


def test_an_empty_environment_line_resets_what_came_before() -> None:
    text = "[Service]\nEnvironment=HTTPS_PROXY=http://p:1\nEnvironment=\nEnvironment=NO_PROXY=x\n"
    assert env_of(("a.conf", text)) == {"NO_PROXY": "x"}


def test_only_the_service_section_counts_and_comments_and_continuations_are_handled() -> None:
    text = (
        "[Unit]\nEnvironment=HTTPS_PROXY=http://unit-section:1\n"
        "# Environment=HTTPS_PROXY=http://commented:1\n"
        "[Service]\n; a comment\nEnvironment=HTTPS_PROXY=http://p:1 \\\n  NO_PROXY=.corp\n"
    )
    assert env_of(("a.conf", text)) == {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".corp"}


def test_invalid_assignments_are_ignored_and_reported_and_percent_is_unescaped() -> None:
    env = service_environment([("a.conf", "[Service]\nEnvironment=novalue 1X=y P=100%%\n")])
    assert env.as_dict() == {"P": "100%"}
    assert env.ignored == ("a.conf: 'novalue'", "a.conf: '1X=y'")


def test_environment_files_are_listed_and_parsed() -> None:
    env = service_environment(
        [("a.conf", "[Service]\nEnvironmentFile=-/etc/default/containerd /etc/proxy.env\n")]
    )
    assert env.environment_files == ("-/etc/default/containerd", "/etc/proxy.env")
    text = '# proxy\nexport HTTPS_PROXY="http://p:1"\nNO_PROXY=.corp\n;x\nbad line\n'
    assert parse_environment_file(text) == {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".corp"}


# -- Go's choice --------------------------------------------------------------------------------
def test_upper_case_wins_over_lower_case_and_an_empty_value_does_not_count() -> None:
    target = HostPort("ghcr.io", 443)
    assert (
        choose_proxy({"HTTPS_PROXY": PROXY, "https_proxy": "http://lower:1"}, target).proxy == PROXY
    )
    chosen = choose_proxy({"HTTPS_PROXY": "", "https_proxy": "http://lower:1"}, target)
    assert (chosen.proxy, chosen.variable) == ("http://lower:1", "https_proxy")


def test_https_never_falls_back_to_http_proxy_and_a_bare_host_means_http() -> None:
    target = HostPort("ghcr.io", 443)
    assert choose_proxy({"HTTP_PROXY": PROXY}, target) == ProxyChoice(None, None, None)
    assert choose_proxy({"HTTP_PROXY": PROXY}, target, scheme="http").proxy == PROXY
    assert choose_proxy({"HTTPS_PROXY": "proxy.corp:3128"}, target).proxy == PROXY


def test_loopback_is_never_proxied() -> None:
    for host in ("localhost", "127.0.0.1", "::1"):
        chosen = choose_proxy({"HTTPS_PROXY": PROXY}, HostPort(host, 5000))
        assert chosen.proxy is None and chosen.bypass == "loopback is never proxied"


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "entry"),
    [
        ("*", "ghcr.io", 443, "*"),
        ("corp", "registry.corp", 443, "corp"),  # a bare domain covers itself and below
        ("corp", "corp", 443, "corp"),
        (".corp", "registry.corp", 443, ".corp"),
        (".corp", "corp", 443, None),  # a leading dot: subdomains only
        ("*.corp", "registry.corp", 443, "*.corp"),
        ("*.corp", "corp", 443, None),
        ("notcorp", "registry.corp", 443, None),
        ("Registry.Corp:5000", "registry.corp", 5000, "registry.corp:5000"),
        ("registry.corp:5000", "registry.corp", 443, None),
        ("10.0.0.0/8", "10.1.2.3", 443, "10.0.0.0/8"),
        ("10.0.0.0/8", "11.1.2.3", 443, None),
        ("10.0.0.0/8", "ten.corp", 443, None),
        ("10.1.2.3", "10.1.2.3", 5000, "10.1.2.3"),
        ("10.1.2.3:5000", "10.1.2.3", 5000, "10.1.2.3:5000"),
        ("10.1.2.3:5000", "10.1.2.3", 443, None),
        ("fd00::/8", "fd00::1", 443, "fd00::/8"),
        ("[fd00::1]:443", "fd00::1", 443, "[fd00::1]:443"),
        (" , ghcr.io ,", "ghcr.io", 443, "ghcr.io"),
    ],
)
def test_no_proxy_matches_as_go_does(
    no_proxy: str, host: str, port: int, entry: str | None
) -> None:
    assert no_proxy_match(no_proxy, HostPort(host, port)) == entry


def test_no_proxy_makes_the_connection_direct_and_says_which_entry() -> None:
    env = {"HTTPS_PROXY": PROXY, "no_proxy": ".corp"}
    chosen = choose_proxy(env, HostPort("registry.corp", 443))
    assert chosen == ProxyChoice(None, None, "no_proxy entry '.corp'")
    assert chosen.describe() == "direct (no_proxy entry '.corp')"
    through = choose_proxy(env, HostPort("ghcr.io", 443))
    assert through.describe() == f"through the proxy {PROXY} (HTTPS_PROXY)"
