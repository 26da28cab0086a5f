"""ca-trust-agent: turn x509 unknown-authority image-pull failures into a verified CA install."""

__version__ = "0.1.0"
