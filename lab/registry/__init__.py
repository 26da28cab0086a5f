"""Registries for the lab: the real distribution registry, a pusher, redirecting front ends.

`distribution` runs Debian's docker-registry with TLS; `push` uploads a tiny image over the
/v2/ API; `redirects` builds the CDN-redirect and token-realm cases of Docker Hub.
"""
