"""Getting a token for a probe (mint HS256 from an env secret, read one from env, or fetch one) and encoding
it for the WebSocket handshake. Secrets are read from the environment only; nothing here prints them.
"""

from __future__ import annotations

import base64
import os
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from .config import Auth, AuthEndpoint, Protocol
from .frames import get_path, parse_json
from .handoff import read_handoff
from .net import BodyTooLarge, bounded_request, http_error
from .redact import redact_token

# RFC 7230 "token" characters: what a Sec-WebSocket-Protocol value may contain.
_TCHAR_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class AuthError(Exception):
    """The token could not be obtained; the message says why in one line."""


@dataclass(frozen=True)
class TokenInfo:
    token: str = field(repr=False)  # never in a repr, a log line or an error message
    source: str  # e.g. "minted HS256 with $JWT_SECRET_KEY"
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def redacted(self) -> str:
        return redact_token(self.token)

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return str(sub) if sub is not None else None

    @property
    def expires_at(self) -> float | None:
        exp = self.claims.get("exp")
        return float(exp) if isinstance(exp, (int, float)) else None

    @property
    def issued_at(self) -> float | None:
        iat = self.claims.get("iat")
        return float(iat) if isinstance(iat, (int, float)) else None


def read_secret(auth: Auth, env: Mapping[str, str], *, loopback_port: int | None = None) -> tuple[str, str]:
    """The signing secret and where it came from. Only the environment (or a local sandbox key file)."""
    secret = env.get(auth.secret_env, "")
    if secret:
        return secret, f"${auth.secret_env}"
    if loopback_port is not None:
        handoff = read_handoff(loopback_port)
        if handoff and isinstance(handoff.get("secret"), str):
            return handoff["secret"], f"the local sandbox's key (port {loopback_port})"
    raise AuthError(f"environment variable {auth.secret_env} is not set or empty (the JWT signing secret)")


def mint(auth: Auth, secret: str, *, now: float | None = None) -> tuple[str, dict[str, Any]]:
    now = time.time() if now is None else now
    claims = {**auth.claims, "iat": int(now), "exp": int(now) + auth.ttl_s}
    with warnings.catch_warnings():  # a short staging key is the backend's choice, not something to fix here
        warnings.simplefilter("ignore")
        return jwt.encode(claims, secret, algorithm=auth.algorithm), claims


def decode_unverified(token: str) -> dict[str, Any]:
    """Claims of a token without checking its signature (for display and skew checks)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def header_unverified(token: str) -> dict[str, Any]:
    """A token's JOSE header (alg, typ, kid) without checking anything; {} when it is not a JWT."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return {}
    return header if isinstance(header, dict) else {}


def token_from_env(auth: Auth, env: Mapping[str, str]) -> TokenInfo:
    token = env.get(auth.token_env, "").strip()  # a token pasted or read from a file often ends in a newline
    if not token:
        raise AuthError(f"environment variable {auth.token_env} is not set or empty (auth.mode is 'env')")
    return TokenInfo(token, f"${auth.token_env}", decode_unverified(token))


def mint_token(auth: Auth, env: Mapping[str, str] | None = None, *, loopback_port: int | None = None,
               secret: str | None = None) -> TokenInfo:
    env = os.environ if env is None else env
    source = "sandbox key"
    if secret is None:
        secret, source = read_secret(auth, env, loopback_port=loopback_port)
    token, claims = mint(auth, secret)
    return TokenInfo(token, f"minted {auth.algorithm} with {source}", claims)


def credentials_problem(auth: Auth, env: Mapping[str, str], *, loopback_port: int | None = None) -> str | None:
    """Why no token can be had before anything is sent (a missing env var), or None. Endpoint mode is only
    known by asking, and 'none' needs nothing."""
    try:
        if auth.mode == "mint":
            read_secret(auth, env, loopback_port=loopback_port)
        elif auth.mode == "env":
            token_from_env(auth, env)
    except AuthError as exc:
        return str(exc)
    return None


def b64url(token: str, *, padding: bool = False) -> str:
    raw = base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii")
    return raw if padding else raw.rstrip("=")


def subprotocol_for(token: str, protocol: Protocol) -> str:
    return protocol.subprotocol_template.format(
        token=token, token_b64=b64url(token, padding=protocol.subprotocol_padding))


def is_legal_subprotocol(value: str) -> bool:
    """RFC 6455 §4.1 requires subprotocol values to be RFC 7230 tokens (no '=', '/', spaces, ...)."""
    return bool(_TCHAR_RE.match(value))


def token_from_subprotocol(value: str, prefix: str = "jwt.") -> str | None:
    """Inverse of `subprotocol_for` with the default template (used by the sandbox)."""
    if not value.startswith(prefix):
        return None
    encoded = value[len(prefix):]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


async def fetch_token(http: httpx.AsyncClient, endpoint: AuthEndpoint, limit: float,
                      headers: Mapping[str, str] | None = None) -> TokenInfo:
    """A token from the auth endpoint (auth.mode endpoint), bounded by `limit`; AuthError with one line if not.
    The caller checks the endpoint's host is one of the target's first. `headers`: extra request headers (the
    stage's `traceparent`)."""
    try:
        resp = await bounded_request(http, endpoint.method, endpoint.url, limit, json=endpoint.json_body,
                                     headers=dict(headers or {}))
    except BodyTooLarge as exc:
        raise AuthError(f"auth endpoint: {exc}") from None
    except httpx.HTTPError as exc:
        raise AuthError(f"auth endpoint: {http_error(exc, limit)[1]}") from None
    if resp.status_code >= 400:
        raise AuthError(f"auth endpoint answered HTTP {resp.status_code}")
    token = get_path(parse_json(resp.text), endpoint.token_field)
    if not isinstance(token, str) or not token:
        raise AuthError(f"auth endpoint response has no '{endpoint.token_field}'")
    return TokenInfo(token, "auth endpoint", decode_unverified(token))
