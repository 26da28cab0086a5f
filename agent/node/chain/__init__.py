"""Network side of trust: fetch the chain a registry presents, and re-check it afterwards.

`fetch_chain` performs a TLS handshake with verification OFF (the whole point is to see a
chain nobody trusts yet) and returns the certificates exactly as sent. It is careful
about the ways a registry endpoint misbehaves in practice:

- one overall deadline for resolve + connect + proxy + handshake, enforced on a
  non-blocking socket, so a server that accepts and never speaks ends on time;
- the handshake runs over memory BIOs: we see the raw bytes, which lets an HTTP server
  or garbage be named as such and caps what a hostile server can make us read;
- HTTPS_PROXY / NO_PROXY are honoured with an HTTP CONNECT tunnel, NO_PROXY parsed the
  way curl does;
- only "could not connect" (refused, unreachable) is retried, with jitter; a timeout, an
  alert or a non-TLS answer will not change on retry and is reported at once.

`verify_handshake` is the proof after installation: a fresh handshake with the stdlib
`ssl` trusting ONLY the given CA file (never the default paths, so SSL_CERT_FILE cannot
help), partial chains allowed, host name checked.

This package is on the `ca-trust-agent fetch` path, whose whole-process time is measured
against `openssl s_client`: keep top-level imports light (tenacity and ssl are imported
only when needed, kubernetes never).

The package holds the two operations (`fetch`: fetch_chain, verify_handshake) apart from
what they are built of: the socket and deadline plumbing (`sockets`), the proxy
configuration and CONNECT tunnel (`proxy`) and the memory-BIO handshake (`handshake`).
"""

from agent.node.chain.fetch import (
    MAX_CERTS,
    UNSET,
    FetchedChain,
    Unset,
    fetch_chain,
    verify_handshake,
)
from agent.node.chain.handshake import MAX_HANDSHAKE_BYTES
from agent.node.chain.proxy import ProxyURL, no_proxy_matches, parse_proxy_url, proxy_from_env

__all__ = [
    "MAX_CERTS",
    "MAX_HANDSHAKE_BYTES",
    "UNSET",
    "FetchedChain",
    "ProxyURL",
    "Unset",
    "fetch_chain",
    "no_proxy_matches",
    "parse_proxy_url",
    "proxy_from_env",
    "verify_handshake",
]
