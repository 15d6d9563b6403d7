"""`connect`: the WebSocket upgrade with the token as the protocol says (subprotocol, header, query), or without
one (`token: none`, with `expect: refused` to check the server refuses it)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI, NegotiationError

from .. import auth as authmod
from ..closecodes import describe
from ..config import Step
from ..context import ProbeContext, StageFailed
from ..events import WsOpened
from ..evidence import EchoCheck, StepEvidence
from ..hops import identify, is_proxy, words
from ..net import BODY_KEEP, causes, first_header, ms_since, os_error
from ..session import Session, SessionEnded, open_connection
from .base import StepKind


@dataclass(slots=True, kw_only=True)
class ConnectEvidence(StepEvidence):
    kind = "connect"
    url: str = ""  # redacted (a query token is hidden)
    token_sent: bool = False
    transport: list[str] = field(default_factory=list)  # how the token travelled
    subprotocol_offered: str | None = None
    subprotocol_echoed: str | None = None
    subprotocol_not_echoed: bool = False
    subprotocol_mismatch: bool = False  # 101 echoing a subprotocol we did not offer (every client refuses it)
    subprotocol_illegal: bool = False
    http_status: int | None = None  # 101, or the status that refused the upgrade
    response_headers: dict[str, str] = field(default_factory=dict)
    body: str = ""  # of a refused upgrade
    date: str | None = None  # the server's Date header (clock skew)
    location: str | None = None  # where a redirect answering the upgrade pointed (not followed)
    echo: EchoCheck | None = None
    negotiation: str = ""
    handshake_error: str = ""
    unauthenticated_accept: bool = False
    secret_missing: bool = False
    hop: dict[str, Any] | None = None  # who answered the upgrade (probes/hops.py): the backend, or a named proxy
    request_headers: dict[str, str] = field(default_factory=dict)  # the upgrade's headers we set, redacted
    timing: dict[str, Any] = field(default_factory=dict)  # dns_ms, tcp_ms, tls_ms, upgrade_ms (+ TLS version, cert)


class Connect(StepKind):
    name = "connect"
    evidence = ConnectEvidence

    @staticmethod
    def _refused_evidence(ev: ConnectEvidence, exc: Exception, seen: dict[str, Any], ctx: ProbeContext) -> None:
        """What a failed upgrade still tells: its timing (DNS, TCP, TLS, the round trip), and a 101 we refused
        (a subprotocol or extension we did not offer): its headers and what it echoed."""
        ev.timing = dict(seen.get("timing") or {})
        answered = seen.get("response")
        if isinstance(exc, NegotiationError) and answered is not None and answered.status_code == 101:
            ev.http_status = 101
            ev.response_headers = ctx.run.redactor.headers(answered.headers.raw_items())
            echoed = answered.headers.get("Sec-WebSocket-Protocol")
            ev.subprotocol_echoed = ctx.redact(echoed) if echoed else None
            ev.hop = ctx.run.redactor.tree(identify(answered.headers.raw_items()))

    def upgrade_limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.connect

    def refusal_limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.ready

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        upgrade = self.upgrade_limit(step, ctx)
        return upgrade + self.refusal_limit(step, ctx) if step.expect == "refused" else upgrade

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, ConnectEvidence]:
        deadline = time.monotonic() + limit
        await ctx.end_session()
        p = ctx.protocol
        token: str | None = None
        if step.token == "default":
            info = ctx.token or ctx.run.token
            if info is None:
                try:
                    info = await ctx.obtain_token(self.upgrade_limit(step, ctx))
                except authmod.AuthError as exc:
                    raise StageFailed(str(exc), evidence=ConnectEvidence(secret_missing=True)) from None
            ctx.token = info
            token = info.token
        url = ctx.run.ws_url
        headers = {**p.headers, **ctx.trace_headers()}  # traceparent: the backend's spans join this stage's
        subprotocols: list[str] = list(p.extra_subprotocols)
        offered: str | None = None
        if token:
            if "header" in p.token_transport:
                headers["Authorization"] = f"Bearer {token}"
            if "subprotocol" in p.token_transport:
                offered = authmod.subprotocol_for(token, p)
                subprotocols.insert(0, offered)
            if "query" in p.token_transport:
                parts = urlsplit(url)
                url = urlunsplit(parts._replace(query=urlencode({p.query_param: token})))
        shown_url = ctx.redact(url)
        ev = ConnectEvidence(url=shown_url, subprotocol_offered=ctx.redact(offered) if offered else None,
                             token_sent=bool(token), transport=list(p.token_transport) if token else [])
        ctx.sent_headers = dict(headers)
        if subprotocols:
            ctx.sent_headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        ev.request_headers = ctx.run.redactor.headers(list(ctx.sent_headers.items()))
        if offered and not authmod.is_legal_subprotocol(offered):
            ev.subprotocol_illegal = True
            raise StageFailed("the subprotocol value is not a legal RFC 7230 token (padded base64 '=' or another "
                              "illegal character): browsers throw SyntaxError and refuse to send it", evidence=ev)
        ctx.run.check_host(url)
        start = time.monotonic()
        upgrade = self.upgrade_limit(step, ctx)
        seen: dict[str, Any] = {}  # a refused upgrade's timing, and a 101 we refused
        try:
            try:
                ws = await open_connection(url, subprotocols=subprotocols, headers=headers, open_timeout=upgrade,
                                           close_timeout=ctx.timeouts.close, max_size=p.max_frame_bytes,
                                           verify_tls=ctx.run.target.verify_tls,
                                           follow_redirects_to=ctx.run.allowed_hosts if p.follow_upgrade_redirects
                                           else frozenset(), seen=seen)
            except Exception as exc:
                self._refused_evidence(ev, exc, seen, ctx)
                raise
        except InvalidStatus as exc:
            r = exc.response
            ev.http_status = r.status_code
            ev.response_headers = ctx.run.redactor.headers(r.headers.raw_items())
            ev.body = ctx.redact(bytes(r.body or b"")[:BODY_KEEP].decode("utf-8", "replace"))
            ev.date = first_header(r.headers, "Date")
            ev.hop = ctx.run.redactor.tree(identify(r.headers.raw_items(), bytes(r.body or b"")[:BODY_KEEP].decode(
                "utf-8", "replace")))
            if step.expect == "refused" and r.status_code in (401, 403):
                return f"refused with HTTP {r.status_code} {r.reason_phrase} (as required)", ev
            if r.status_code in (401, 403) and token:
                ev.echo = await ctx.echo_check(deadline - time.monotonic())
            detail = f"HTTP {r.status_code} {r.reason_phrase} instead of 101 Switching Protocols"
            if is_proxy(ev.hop):
                detail += f" · {words(ev.hop)}"
            if 300 <= r.status_code < 400:
                ev.location = ctx.redact(first_header(r.headers, "Location") or "")
                detail += f" → {ev.location or '(no Location)'} (not followed: it would carry the token)"
            raise StageFailed(detail, evidence=ev) from None
        except NegotiationError as exc:
            ev.negotiation = ctx.redact(str(exc))
            if ev.subprotocol_echoed is not None and ev.subprotocol_echoed != ev.subprotocol_offered:
                ev.subprotocol_mismatch = True
                raise StageFailed(f"101 but the server echoed a subprotocol we did not offer "
                                  f"({ev.subprotocol_echoed}): every client must refuse it", evidence=ev) from None
            raise StageFailed(f"handshake refused by the client: {ctx.redact(str(exc))}", evidence=ev) from None
        except InvalidURI as exc:
            raise StageFailed(f"invalid WebSocket URL: {exc}", "error", evidence=ev) from None
        except InvalidHandshake as exc:
            ev.handshake_error = str(exc)
            if any(isinstance(c, (EOFError, ConnectionError)) for c in causes(exc)):
                ev.error = "dropped"
                raise StageFailed("the connection was closed before any HTTP answer to the upgrade",
                                  evidence=ev) from None
            raise StageFailed(f"invalid handshake: {exc}", evidence=ev) from None
        except TimeoutError:
            ev.timeout, ev.error = True, "timeout"
            raise StageFailed(f"no 101 response within {upgrade:g} s", evidence=ev) from None
        except OSError as exc:
            ev.error, text = os_error(exc)
            raise StageFailed(f"{text} ({urlsplit(url).netloc})", evidence=ev) from None
        resp_headers = ws.response.headers if ws.response is not None else None
        ev.timing = dict(ws.timing or {})
        echoed = ws.subprotocol
        ev.http_status = 101
        ev.subprotocol_echoed = ctx.redact(echoed) if echoed else None
        ev.date = first_header(resp_headers, "Date") if resp_headers else None
        ev.response_headers = ctx.run.redactor.headers(resp_headers.raw_items()) if resp_headers else {}
        ev.hop = ctx.run.redactor.tree(identify(resp_headers.raw_items() if resp_headers else []))
        ctx.emit(WsOpened(ctx.t(), ctx.probe_id, shown_url, ev.subprotocol_offered, ev.subprotocol_echoed,
                          ctx.run.redactor.headers(ws.request.headers.raw_items()) if ws.request else {},
                          ev.response_headers))
        p = ctx.protocol
        ctx.session = Session(ws, shown_url, probe_id=ctx.probe_id, clock_t0=ctx.run.clock.start, clock=ctx.t,
                              redact=ctx.run.redactor.text, redact_bytes=ctx.run.redactor.bytes_, emit=ctx.emit,
                              take_frame=ctx.take_frame,
                              awaited_types=(p.ready_type, p.final_event, *p.agent_events, *p.error_types,
                                             *p.response_types),
                              type_field=p.type_field)
        if step.expect == "refused":
            return await self._await_refusal(ctx.session, self.refusal_limit(step, ctx), ev, ctx)
        detail = f"101 in {ms_since(start):.0f} ms"
        if offered and not echoed:
            ev.subprotocol_not_echoed = True
            ev.echo = await ctx.echo_check(deadline - time.monotonic())
            if p.require_subprotocol_echo:
                raise StageFailed("101 but the server did not echo the offered subprotocol: browsers refuse this "
                                  "handshake (Python clients accept it)", evidence=ev)
            detail += " · subprotocol NOT echoed (browsers would refuse)"
        elif offered:
            detail += " · subprotocol echoed"
        return detail, ev

    async def _await_refusal(self, session: Session, wait: float, ev: ConnectEvidence,
                             ctx: ProbeContext) -> tuple[str, ConnectEvidence]:
        try:
            async with asyncio.timeout(wait):
                while True:
                    t, _value, _frame = await session.next()
                    if t == ctx.protocol.ready_type:
                        ev.unauthenticated_accept = True
                        raise StageFailed(f"accepted a connection without a token and sent {t}", evidence=ev)
        except TimeoutError:
            ev.unauthenticated_accept = True
            raise StageFailed(f"accepted a connection without a token and kept it open {wait:g} s",
                              evidence=ev) from None
        except SessionEnded as ended:
            c = ended.close
            if c.code == 1008 or 4000 <= c.code <= 4999:
                return f"refused after accept: close {c.code} {describe(c.code).name} '{c.reason}' (as required)", ev
            raise StageFailed(f"closed {c.code} {describe(c.code).name} '{c.reason}' — expected 401/403 or close "
                              "1008/4xxx for a connection without a token", evidence=ev) from None
