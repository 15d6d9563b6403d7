"""Redaction: how a token or secret may be shown to a person or written to a file."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"})
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_JWT_SUBPROTOCOL_RE = re.compile(r"\bjwt\.([A-Za-z0-9_=-]{12,})")


def redact_token(token: str) -> str:
    """'eyJhbGciOi…' + the last 4 characters; short values are hidden entirely."""
    if not token:
        return ""
    if len(token) <= 16:
        return "…(hidden)"
    return f"{token[:10]}…{token[-4:]}"


class Redactor:
    """Replaces every known secret value, and anything shaped like a JWT, in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._ordered: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets.add(secret)
            self._ordered = sorted(self._secrets, key=len, reverse=True)
            # the b64url form of a token travels in the subprotocol; hide that too
            from base64 import urlsafe_b64encode

            encoded = urlsafe_b64encode(secret.encode()).decode().rstrip("=")
            if len(encoded) >= 12 and encoded not in self._secrets:
                self._secrets.add(encoded)
                self._ordered = sorted(self._secrets, key=len, reverse=True)

    def text(self, value: str) -> str:
        """`value` with secrets and JWT-shaped strings redacted. Cheap when there is nothing to hide."""
        if not value:
            return value
        for secret in self._ordered:
            if secret in value:
                value = value.replace(secret, redact_token(secret))
        if "eyJ" in value:
            value = _JWT_RE.sub(lambda m: redact_token(m.group(0)), value)
        if "jwt." in value:
            value = _JWT_SUBPROTOCOL_RE.sub(lambda m: "jwt." + redact_token(m.group(1)), value)
        return value

    def headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        items = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, str] = {}
        for name, value in items:
            lower = name.lower()
            if lower in SENSITIVE_HEADERS:
                scheme, _, cred = value.partition(" ")
                shown = f"{scheme} {redact_token(cred)}" if cred else redact_token(value)
            else:
                shown = self.text(value)
            out[name] = f"{out[name]}, {shown}" if name in out else shown
        return out
