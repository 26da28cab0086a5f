"""A second test host for dockerd: a network namespace reached over a veth pair.

dockerd treats every 127.0.0.0/8 registry as insecure, so an x509 error only shows for a
registry on another address. The lab puts one in a network namespace of its own, on
198.18.0.0/15 benchmark addresses (never routed anywhere), and always deletes the
namespace and the veth pair afterwards, also when the body failed.

    ip netns add NS; ip link add HOSTIF type veth peer name NSIF; ip link set NSIF netns NS
    ip addr add 198.18.100.1/30 dev HOSTIF; ip link set HOSTIF up
    ip -n NS addr add 198.18.100.2/30 dev NSIF; ip -n NS link set NSIF up; ip -n NS link set lo up
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from lab.procs import LabError, clean_env


@dataclass(frozen=True)
class NetnsHost:
    name: str  # the network namespace
    host_if: str  # veth end in the caller's network namespace
    ns_if: str  # veth end inside
    host_ip: str
    ns_ip: str  # where servers inside listen; the address test names resolve to
    prefix: int

    def exec_argv(self, *argv: str) -> tuple[str, ...]:
        """argv run inside the namespace (`ip netns exec` execs: PIDs stay the command's)."""
        return ("ip", "netns", "exec", self.name, *argv)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], env=clean_env(), capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def address_in_use(address: str) -> bool:
    """True when some interface of this network namespace already holds `address`."""
    out = _ip("-o", "addr", "show", check=False).stdout
    return any(f" {address}/" in line for line in out.splitlines())


def free_slash30(base: str = "198.18.100.0", tries: int = 64) -> tuple[str, str]:
    """(host_ip, ns_ip) of the first /30 from `base` whose addresses nobody holds.

    Other lab users on the same machine may have their own pair up at the same time.
    """
    net = ipaddress.ip_address(base)
    for i in range(tries):
        host_ip, ns_ip = str(net + 4 * i + 1), str(net + 4 * i + 2)
        if not address_in_use(host_ip) and not address_in_use(ns_ip):
            return host_ip, ns_ip
    raise LabError(f"no free /30 from {base}")


_serial = itertools.count()


@contextlib.contextmanager
def netns_host(
    host_ip: str = "198.18.100.1",
    ns_ip: str = "198.18.100.2",
    *,
    prefix: int = 30,
    name: str | None = None,
) -> Iterator[NetnsHost]:
    """Create the namespace + veth pair; yield; always delete what was created."""
    tag = name or f"cta{os.getpid() % 100000}-{next(_serial)}"
    if len(tag) > 14:  # interface names are limited to 15 bytes
        raise LabError(f"netns name {tag!r} too long")
    host = NetnsHost(
        name=tag,
        host_if=f"{tag}h",
        ns_if=f"{tag}n",
        host_ip=host_ip,
        ns_ip=ns_ip,
        prefix=prefix,
    )
    if exists(host.name) or link_exists(host.host_if):
        raise LabError(f"netns {host.name} or link {host.host_if} already exists")
    for address in (host_ip, ns_ip):
        if address_in_use(address):
            raise LabError(f"{address} is already assigned on this machine")
    try:
        _ip("netns", "add", host.name)
        _ip("link", "add", host.host_if, "type", "veth", "peer", "name", host.ns_if)
        _ip("link", "set", host.ns_if, "netns", host.name)
        _ip("addr", "add", f"{host_ip}/{prefix}", "dev", host.host_if)
        _ip("link", "set", host.host_if, "up")
        _ip("-n", host.name, "addr", "add", f"{ns_ip}/{prefix}", "dev", host.ns_if)
        _ip("-n", host.name, "link", "set", host.ns_if, "up")
        _ip("-n", host.name, "link", "set", "lo", "up")
        yield host
    finally:
        # deleting the namespace destroys its veth end and with it the pair; the explicit
        # link delete covers a failure between `link add` and moving the peer in
        if link_exists(host.host_if):
            _ip("link", "del", host.host_if, check=False)
        if exists(host.name):
            _ip("netns", "del", host.name, check=False)


def exists(name: str) -> bool:
    return name in _ip("netns", "list", check=False).stdout.split()


def link_exists(ifname: str) -> bool:
    return _ip("link", "show", ifname, check=False).returncode == 0
