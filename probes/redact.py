"""Redaction: how a token or secret may be shown to a person or written to a file.

A JWT is shown as its first 10 characters (the public `eyJhbGciOi` header) and its last 4, so two runs can be
told apart without revealing a usable token. Any other secret (a signing key, an API key) is hidden entirely.
Every known value is also hidden in the forms it travels in: base64url (the `jwt.<b64>` subprotocol) and
JSON-escaped text. Anything shaped like a JWT is redacted even when it was never registered.
"""

from __future__ import annotations

import json
import re
from base64 import urlsafe_b64encode
from collections.abc import Iterable, Mapping
from typing import Any

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization", "x-api-key"})
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})  # "<scheme> <credentials>"
HIDDEN = "…(hidden)"
MIN_SECRET = 4  # shorter values are too common to replace without mangling ordinary text
_SHOWN_MIN = 40  # values shorter than this are hidden entirely, never shown in part
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_JWT_SUBPROTOCOL_RE = re.compile(r"\bjwt\.([A-Za-z0-9_=-]{12,})")
# What every token-shaped form contains: a JWT ('eyJ'), its base64 ('ZXlK'), the subprotocol ('jwt.'). Compiled
# once: a pattern per run (per token) would fill re's cache with megabytes over a long session.
_SHAPES = re.compile(r"eyJ|ZXlK|jwt\.")


def redact_token(token: str) -> str:
    """'eyJhbGciOi…' + the last 4 characters; values under 40 characters are hidden entirely."""
    if not token:
        return ""
    if len(token) < _SHOWN_MIN:
        return HIDDEN
    return f"{token[:10]}…{token[-4:]}"


def looks_like_jwt(value: str) -> bool:
    return value.startswith("eyJ") and value.count(".") == 2


def _variants(secret: str) -> list[tuple[str, str]]:
    """(form, replacement) for every form in which `secret` may appear in text."""
    shown = redact_token(secret) if looks_like_jwt(secret) else HIDDEN
    forms = [(secret, shown)]
    encoded = urlsafe_b64encode(secret.encode("utf-8", "surrogatepass")).decode("ascii")
    for b64 in (encoded.rstrip("="), encoded):
        if len(b64) >= 12:
            forms.append((b64, redact_token(b64) if looks_like_jwt(secret) else HIDDEN))
    escaped = json.dumps(secret)[1:-1]
    if escaped != secret:
        forms.append((escaped, shown))
    return forms


class Redactor:
    """Replaces every known secret value, and anything shaped like a JWT, in text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._known: set[str] = set()
        self._forms: dict[str, str] = {}
        self._ordered: list[str] = []
        self._plain: tuple[str, ...] = ()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        """Hide `secret` (and its encoded forms) from now on. Values under 4 characters are ignored."""
        if not secret or len(secret) < MIN_SECRET or secret in self._known:
            return
        self._known.add(secret)
        for form, shown in _variants(secret):
            self._forms.setdefault(form, shown)
        self._ordered = sorted(self._forms, key=len, reverse=True)
        # Forms the shape scan cannot see (a signing key and its encodings) are looked for one by one.
        self._plain = tuple(f for f in self._ordered if _SHAPES.search(f) is None)

    def __contains__(self, secret: str) -> bool:
        return secret in self._known

    def text(self, value: str) -> str:
        """`value` with secrets and JWT-shaped strings redacted. Cheap when there is nothing to hide."""
        if not value:
            return value
        if _SHAPES.search(value) is None:  # one C scan: the common case (a flood's frames) has nothing to hide
            for form in self._plain:
                if form in value:
                    break
            else:
                return value
        for form in self._ordered:
            if form in value:
                value = value.replace(form, self._forms[form])
        if "eyJ" in value:
            value = _JWT_RE.sub(lambda m: redact_token(m.group(0)), value)
        if "jwt." in value:
            value = _JWT_SUBPROTOCOL_RE.sub(lambda m: "jwt." + redact_token(m.group(1)), value)
        return value

    def tree(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.tree(k) if isinstance(k, str) else k: self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        return value

    def headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers for display: credentials headers hidden whatever their value, the rest redacted as text."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, str] = {}
        for name, value in items:
            lower = name.lower()
            if lower in _AUTH_HEADERS and " " in value.strip():
                scheme, _, cred = value.strip().partition(" ")
                shown = f"{scheme} {redact_token(cred.strip())}"
            elif lower in SENSITIVE_HEADERS:
                shown = redact_token(value) if looks_like_jwt(value) else HIDDEN
            else:
                shown = self.text(value)
            out[name] = f"{out[name]}, {shown}" if name in out else shown
        return out
