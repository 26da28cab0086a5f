"""Real container runtimes for the lab: containerd 1.6 and 2.x, dockerd, and what drives them.

The CRI client asks containerd what kubelet asks (its stubs are generated from
`cri-runtime-v1-min.proto` into `_proto/`, git-ignored); `restart` is the restart command the
agent runs in the lab where a node has systemd; `imagebuild` builds the agent's own image with
the lab dockerd.
"""
