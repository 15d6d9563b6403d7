"""What steps share: the run's context (target, hosts, HTTP client, secrets) and one probe's context (its open
session, its token, what the last upgrade carried, the answers since the last send), plus the two things more
than one step kind does: obtaining a token and asking the header-echo endpoint what reached the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from . import auth as authmod
from .bus import EventBus
from .clock import Clock
from .config import Protocol, ResolvedTarget, Timeouts
from .events import Event, Frame
from .evidence import EchoCheck
from .frames import parse_json
from .net import BodyTooLarge, HostNotAllowed, bounded_request, is_loopback
from .redact import Redactor
from .session import Message, Session
from .tracecontext import traceparent


class StageFailed(Exception):
    """A step ends its stage as failed (or error/skip) with this one line and its evidence."""

    def __init__(self, detail: str, status: str = "fail", evidence: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.evidence = evidence


def ws_url_for(target: ResolvedTarget, base_url: str) -> str:
    """The WebSocket URL: the target's ws_url, or base_url with ws(s):// and the protocol's ws_path."""
    if target.ws_url:
        return target.ws_url
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + target.protocol.ws_path, "", ""))


@dataclass
class RunContext:
    """What all probes of one run share."""

    target: ResolvedTarget
    base_url: str  # the real http(s) base URL (the sandbox's address when embedded)
    bus: EventBus
    clock: Clock
    redactor: Redactor
    env: Mapping[str, str]
    expected_version: str | None = None
    sandbox_secret: str | None = None
    http: httpx.AsyncClient | None = None
    token: authmod.TokenInfo | None = None
    allowed_hosts: frozenset[str] = frozenset()
    degraded_ms: float | None = None  # watch.degraded_ms: a stage's default threshold for DEGRADED
    trace: bool = False  # RunOptions.trace: every probe a trace, every stage a span, `traceparent` on requests

    @property
    def ws_url(self) -> str:
        return ws_url_for(self.target, self.base_url)

    def check_host(self, url: str) -> None:
        host = (urlsplit(url).hostname or "").lower()
        if host not in self.allowed_hosts:
            raise HostNotAllowed(f"{host or url!r} is not a host of target {self.target.name!r}")

    @property
    def loopback_port(self) -> int | None:
        parts = urlsplit(self.base_url)
        return parts.port if is_loopback(parts.hostname) else None


@dataclass
class ProbeContext:
    """One probe's state between its steps. Steps read and write it; they never call each other."""

    run: RunContext
    probe_id: str
    emit: Callable[[Event | Frame], None]
    take_frame: Callable[[Frame], None]
    session: Session | None = None
    token: authmod.TokenInfo | None = None
    sent_headers: dict[str, str] = field(default_factory=dict)  # what the last upgrade carried (echo check)
    answers: list[Message] = field(default_factory=list)  # response-type frames since the last send
    trace_id: str = ""  # with tracing on: this probe run's trace, and the span of the stage running now
    span_id: str = ""

    @property
    def protocol(self) -> Protocol:
        return self.run.target.protocol

    @property
    def timeouts(self) -> Timeouts:
        return self.run.target.timeouts

    def t(self) -> float:
        return self.run.clock()

    def trace_headers(self) -> dict[str, str]:
        """`traceparent` naming the running stage's span as the parent, with tracing on; else nothing."""
        if not self.trace_id or not self.span_id:
            return {}
        return {"traceparent": traceparent(self.trace_id, self.span_id)}

    def redact(self, text: str) -> str:
        return self.run.redactor.text(text)

    def require_session(self) -> Session:
        if self.session is None:
            raise StageFailed("no open connection (a connect stage must come first)", "error")
        return self.session

    async def end_session(self) -> None:
        """Close the open session (if any) quietly, within timeouts.close."""
        session, self.session = self.session, None
        if session is not None and session.closed is None:
            await session.close(self.timeouts.close)

    async def obtain_token(self, limit: float) -> authmod.TokenInfo:
        """A token as auth.mode says (raises AuthError or StageFailed); added to the redactor at once."""
        a = self.run.target.auth
        if a.mode == "none":
            raise StageFailed("auth.mode is 'none': no token to send", "skip")
        if a.mode == "env":
            token = authmod.token_from_env(a, self.run.env)
        elif a.mode == "endpoint":
            token = await self._fetch_token(limit)
        else:
            token = authmod.mint_token(a, self.run.env, loopback_port=self.run.loopback_port,
                                       secret=self.run.sandbox_secret)
        self.run.redactor.add(token.token)
        self.token = self.run.token = token
        return token

    async def _fetch_token(self, limit: float) -> authmod.TokenInfo:
        a = self.run.target.auth
        assert a.endpoint is not None and self.run.http is not None
        self.run.check_host(a.endpoint.url)
        try:
            return await authmod.fetch_token(self.run.http, a.endpoint, limit, headers=self.trace_headers())
        except authmod.AuthError as exc:
            raise StageFailed(str(exc)) from None

    async def echo_check(self, limit: float) -> EchoCheck | None:
        """Ask the target's header-echo endpoint (if configured) whether our credentials reach the backend,
        within `limit` seconds (what is left of the stage's own limit)."""
        path = self.protocol.echo_headers_path
        if not path or not self.sent_headers or self.run.http is None or limit <= 0:
            return None
        url = self.run.base_url + path
        try:
            self.run.check_host(url)
            resp = await bounded_request(self.run.http, "GET", url, limit, headers=self.sent_headers)
        except (httpx.HTTPError, HostNotAllowed, BodyTooLarge) as exc:
            return EchoCheck(url=path, error=type(exc).__name__)
        check = EchoCheck(url=path, status=resp.status_code)
        seen = echoed_headers(parse_json(resp.text))
        if resp.status_code == 200 and seen is not None:
            check.authorization_sent = "Authorization" in self.sent_headers
            check.subprotocol_sent = "Sec-WebSocket-Protocol" in self.sent_headers
            check.authorization_arrived = bool(seen.get("authorization"))
            check.subprotocol_arrived = bool(seen.get("sec-websocket-protocol"))
        return check


def echoed_headers(value: Any) -> dict[str, Any] | None:
    """Lower-cased header map from an echo endpoint's JSON: {"headers": {...}}, similar nestings, or flat."""
    if not isinstance(value, dict):
        return None
    for key in ("headers", "received_headers", "request_headers", "received", "request"):
        inner = value.get(key)
        if isinstance(inner, dict):
            value = inner.get("headers") if isinstance(inner.get("headers"), dict) else inner
            break
    out: dict[str, Any] = {}
    for name, v in value.items():
        if isinstance(v, str) and v.strip().lower() in ("", "none", "null", "missing", "absent", "<missing>"):
            v = None
        out[str(name).lower().replace("_", "-")] = v
    return out


def credentials(run: RunContext, token: str, sends: Sequence[str]) -> tuple[str, dict[str, str], list[str]]:
    """The WebSocket URL, headers and subprotocols that carry `token` the ways `sends` names (subprotocol, header,
    query), with the protocol's own headers and extra subprotocols, as the connect step sends them."""
    p = run.target.protocol
    url = run.ws_url
    headers = dict(p.headers)
    subprotocols = list(p.extra_subprotocols)
    if "header" in sends:
        headers["Authorization"] = f"Bearer {token}"
    if "subprotocol" in sends:
        subprotocols.insert(0, authmod.subprotocol_for(token, p))
    if "query" in sends:
        url = urlunsplit(urlsplit(url)._replace(query=urlencode({p.query_param: token})))
    return url, headers, subprotocols
