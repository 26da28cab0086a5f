"""Everything that talks to the Kubernetes API: client, watches, Events, Leases, the loop."""
