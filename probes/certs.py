"""What a TLS peer's certificate says: subject, issuer, validity and whether we verified it, read from the DER
bytes with `cryptography` so it is shown with `--insecure` too (the standard library decodes only verified ones)."""

from __future__ import annotations

import ssl
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

_SHORT = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O", NameOID.COUNTRY_NAME: "C",
          NameOID.ORGANIZATIONAL_UNIT_NAME: "OU"}


def _name(name: x509.Name) -> str:
    """'CN=x, O=y' (the attributes we know by their short names, the others by dotted OID)."""
    return ", ".join(f"{_SHORT.get(a.oid, a.oid.dotted_string)}={a.value!s}" for a in name)


def cert_facts(tls: ssl.SSLObject, verified: bool) -> dict[str, Any]:
    """The peer certificate's facts for the connect evidence; {} when the peer sent none or it does not parse."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        return {}
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {"cert_subject": "(unparseable certificate)", "cert_verified": verified}
    return {"cert_subject": _name(cert.subject), "cert_issuer": _name(cert.issuer),
            "cert_expires": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
            "cert_self_signed": cert.subject == cert.issuer, "cert_verified": verified}
