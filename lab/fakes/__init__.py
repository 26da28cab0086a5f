"""Stand-ins that need no daemon: the fake kube-apiserver, small doubles, a host-root tree.

The cluster-level tests run the agent's real code against these; the rotation driver runs the
daemon's first-trust step on a host-root tree with the Kubernetes side kept in memory. Nothing
here starts a process or mounts anything.
"""
