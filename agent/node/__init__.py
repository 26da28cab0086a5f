"""Everything that touches the node: files under the host root, commands, TLS, runtimes."""
