"""Keeping the machine out of the lab's reach: private mount and network namespaces.

`sandbox` puts private copies over the node paths (trust store, runtime configs, /etc/hosts);
`nodens` gives one "node" its own /etc/containerd in every process it starts; `netns` makes a
second host on 198.18.0.0/15 addresses; `rhel` mounts a RHEL- or SUSE-family trust store.
"""
