"""Everything the agent does to the cluster: raw-ApiClient access (no typed models on hot or
idle paths), reflector-like watches, Events, the node annotation, restart Leases and the
policy ConfigMap."""
