"""The local lab: real PKI, TLS servers, registry, containerd and dockerd for tests and the demo.

Not shipped in the wheel; the tests, the bench and `python -m lab` (the README's first
command) use it.
"""
