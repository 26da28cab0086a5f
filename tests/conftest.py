"""Suite-wide setup: make every test run as on a real node.

The development machine exports SSL_CERT_FILE, REQUESTS_CA_BUNDLE and friends; a node has
none of them, and Go daemons and Python's ssl would quietly trust the machine's bundle
through them. Dropping them here keeps every test honest about which trust it uses.
"""

from __future__ import annotations

import os

_TRUST_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "NIX_SSL_CERT_FILE",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
    "HTTPLIB2_CA_CERTS",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)

for _name in _TRUST_ENV:
    os.environ.pop(_name, None)
