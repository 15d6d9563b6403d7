"""`auth`: obtain the token (mint, environment, or the auth endpoint) and read its claims; fail if it expired."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .. import auth as authmod
from ..config import Step
from ..context import ProbeContext, StageFailed
from ..evidence import StepEvidence
from .base import StepKind


@dataclass(slots=True, kw_only=True)
class AuthEvidence(StepEvidence):
    kind = "auth"
    source: str = ""  # e.g. "minted HS256 with $JWT_SECRET_KEY"
    sub: str | None = None
    exp: float | None = None
    iat: float | None = None
    token: str = ""  # redacted
    token_expired: bool = False
    secret_missing: bool = False
    header: dict[str, Any] = field(default_factory=dict)  # the JOSE header (alg, typ, kid): never the signature
    claims: dict[str, Any] = field(default_factory=dict)  # every claim, decoded without verifying
    transports: list[str] = field(default_factory=list)  # how the connect offers it: header, subprotocol, query


class Auth(StepKind):
    name = "auth"
    evidence = AuthEvidence

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.http  # minting is instant; the auth endpoint is one HTTP exchange

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, AuthEvidence]:
        try:
            token = await ctx.obtain_token(limit)
        except authmod.AuthError as exc:
            raise StageFailed(str(exc), evidence=AuthEvidence(secret_missing=True)) from None
        parts = [token.source, f"token {token.redacted}"]
        if token.subject:
            parts.insert(1, f"sub {token.subject}")
        ev = AuthEvidence(source=token.source, sub=token.subject, exp=token.expires_at, iat=token.issued_at,
                          token=token.redacted, header=authmod.header_unverified(token.token),
                          claims=dict(token.claims), transports=list(ctx.protocol.token_transport))
        if token.expires_at is not None:
            left = token.expires_at - time.time()
            if left <= 0:
                ev.token_expired = True
                raise StageFailed(f"token expired {int(-left)} s ago ({token.redacted})", evidence=ev)
            parts.append(f"expires in {_duration(left)}")
        return " · ".join(parts), ev


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} m"
    if seconds >= 60:
        return f"{seconds // 60} m {seconds % 60} s"
    return f"{seconds} s"
