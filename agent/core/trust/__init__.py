"""Pure certificate logic: parse what a server presented, choose the anchor, verify the leaf.

Nothing here touches the network or the node. `chain` fetches certificates, this module
decides whether one of them may become trusted:

- the anchor is the root if the server sent it, else the topmost CA it sent, else a
  self-signed leaf that is the whole chain; a lone leaf issued by someone else is refused,
  because trusting it would pin one server certificate, not a CA;
- the leaf must verify to that anchor for the host name or IP the image reference uses
  (`cryptography.x509.verification`, with the extension rules relaxed to what ordinary
  private CAs emit and what Go's crypto/x509 accepts);
- every refusal is a `TrustError` whose `kind` names the one problem an operator must fix.

Bundles are written deterministically (only CERTIFICATE blocks, de-duplicated and sorted by
SHA-256) so "already installed?" is a byte comparison.

The package holds the certificates as values (`certs`: parsing, bundles) apart from the
decision about them (`analysis`: anchor choice, pins, names, validity, verification).
"""

from agent.core.trust.analysis import (
    Analysis,
    analyze,
    analyze_with_anchor,
    check_anchor_only,
    choose_anchor,
)
from agent.core.trust.certs import MAX_CERTS, CertInfo, cert_from_der, parse_pem_bundle, pem_bundle

__all__ = [
    "MAX_CERTS",
    "Analysis",
    "CertInfo",
    "analyze",
    "analyze_with_anchor",
    "cert_from_der",
    "check_anchor_only",
    "choose_anchor",
    "parse_pem_bundle",
    "pem_bundle",
]
