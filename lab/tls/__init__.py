"""Certificates and the loopback servers that present them.

`pki` makes private CAs (root -> intermediate -> leaf) and the broken variants the agent must
refuse; `servers` runs real TLS servers, hostile imitations and a CONNECT proxy on loopback.
"""
