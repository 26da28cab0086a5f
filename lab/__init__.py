"""The local lab: real PKI, TLS servers, registry, containerd and dockerd for tests and the demo.

Not shipped in the wheel; the tests, the bench and `python -m lab` (the README's first
command) use it. By concern:

    lab/procs.py     process control every package shares (clean env, readiness, stop by PID)
    lab/tls/         private CAs and the loopback TLS servers that present them
    lab/isolation/   private mount and network namespaces: the machine stays untouched
    lab/registry/    the real distribution registry, a pusher, redirecting front ends
    lab/runtimes/    real containerd (1.6, 2.x) and dockerd, the CRI client, the restart command
    lab/fakes/       no daemons: the fake kube-apiserver, doubles, host-root trees
    lab/demo.py      `python -m lab`, the README's demo

The packages are layers, checked by `lint-imports` (pyproject.toml): procs at the bottom,
isolation and tls on it, then registry, runtimes and fakes (none importing another), the demo
on top. The fakes start nothing: they import neither procs, isolation, runtimes nor registry.
And the agent never imports the lab.
"""
