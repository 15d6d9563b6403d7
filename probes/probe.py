"""Running one probe: its steps in order over real HTTP and WebSocket connections, timing each stage and
publishing every exchange, frame and close as events. A stage that fails stops the probe; the rest skip.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import (ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI,
                                   NegotiationError)

from . import auth as authmod
from .bus import EventBus
from .clock import Clock
from .closecodes import describe
from .config import ProbeDef, ResolvedTarget, Step
from .events import (Closed, Frame, HttpExchange, ProbeFinished, ProbeStarted, StageFinished, StageStarted,
                     Status, WsOpened)
from .evidence import Evidence
from .frames import frame_type, get_path, parse_json
from .redact import Redactor
from .wire import TappedConnection

FRAME_KEEP = 64 * 1024  # bytes of each frame kept in events (the size is always exact)
BODY_KEEP = 2048  # bytes of a failed upgrade's body kept as evidence
HTTP_BODY_MAX = 1 << 20  # an HTTP answer (health, auth endpoint, echo) is not read past this
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class StageFailed(Exception):
    def __init__(self, detail: str, status: Status = "fail", **evidence: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.evidence = evidence


class HostNotAllowed(Exception):
    """A probe tried to reach a host outside the selected target."""


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
        return parts.port if parts.hostname in LOOPBACK else None


_new_frame = partial(tuple.__new__, Frame)  # Frame(*fields) without NamedTuple's Python-level __new__
OTHER = "\x00other"  # type marker: a frame that mentions no protocol type we wait for (not parsed)


@dataclass
class _Conn:
    ws: TappedConnection
    opened_at: float  # monotonic, when the 101 arrived
    url: str
    closed: Closed | None = None
    lost: bool = False
    first_seen: bool = False
    other: int = 0  # frames of no awaited type, after the first
    inbox: deque[tuple[str | None, Any, Frame]] = field(default_factory=deque)  # read, not yet consumed
    waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class ProbeRun:
    def __init__(self, probe: ProbeDef, ctx: RunContext) -> None:
        self.probe = probe
        self.ctx = ctx
        self.p = ctx.target.protocol
        self.evidence = Evidence(probe_id=probe.id)
        self.conn: _Conn | None = None
        self.token: authmod.TokenInfo | None = None
        self.answers: list[tuple[str, Any, Frame]] = []  # response-type frames since the last send
        self.sent_headers: dict[str, str] = {}  # what the last upgrade request carried (for the echo check)
        self.frames_in = 0
        self.frames_out = 0
        p = self.p
        # bound once: `_on_message` runs a million times in a flood
        self._redact, self._publish, self._t0 = ctx.redactor.text, ctx.bus.publish, ctx.clock.start
        self._probe_id = probe.id
        names = {p.ready_type, p.final_event, *p.agent_events, *p.error_types, *p.response_types}
        self._interesting = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))

    # --- events -------------------------------------------------------------------------------------
    def _emit(self, event: Any) -> None:
        self.evidence.add(event)
        self.ctx.bus.publish(event)

    def _t(self) -> float:
        return self.ctx.clock()

    # --- the run ------------------------------------------------------------------------------------
    async def run(self) -> ProbeFinished:
        start = time.monotonic()
        self._emit(ProbeStarted(self._t(), self.probe.id, self.probe.name or self.probe.id,
                                self.probe.priority, tuple(s.name for s in self.probe.steps)))
        failed: str | None = None
        status: Status = "pass"
        current: str | None = None
        interrupted = False
        try:
            for step in self.probe.steps:
                if failed is not None:
                    self._emit(StageStarted(self._t(), self.probe.id, step.name, step.step))
                    self._emit(StageFinished(self._t(), self.probe.id, step.name, "skip", 0.0,
                                             f"not run: {failed} failed"))
                    continue
                current = step.name
                result = await self._stage(step)
                if result in ("fail", "error"):
                    failed, status = step.name, result
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            await self._close_quietly()
            if interrupted:  # Ctrl-C, a rerun, quitting: every consumer still learns how this probe ended
                self._emit(ProbeFinished(self._t(), self.probe.id, "error", _ms(start), current, self.frames_in,
                                         self.frames_out))
        from .diagnosis import diagnose  # local import: diagnosis imports evidence, not this module

        diagnoses = diagnose(self.evidence, expected_version=self.ctx.expected_version,
                             protocol=self.p, timeouts=self.ctx.target.timeouts)
        if diagnoses:
            from .events import Diagnosed

            self._emit(Diagnosed(self._t(), self.probe.id, tuple(d.as_dict() for d in diagnoses)))
        finished = ProbeFinished(self._t(), self.probe.id, status, _ms(start), failed,
                                 self.frames_in, self.frames_out)
        self._emit(finished)
        return finished

    async def _stage(self, step: Step) -> Status:
        self._emit(StageStarted(self._t(), self.probe.id, step.name, step.step, self._limit(step)))
        start = time.monotonic()
        handler = getattr(self, f"_step_{step.step}")
        try:
            detail, evidence = await handler(step)
            status: Status = "pass"
        except StageFailed as exc:
            detail, evidence, status = exc.detail, exc.evidence, exc.status
        except HostNotAllowed as exc:
            detail, evidence, status = f"blocked: {exc}", {"blocked": True}, "error"
        except asyncio.CancelledError:
            self._emit(StageFinished(self._t(), self.probe.id, step.name, "error", _ms(start), "interrupted"))
            raise
        except Exception as exc:  # our own bug: report it as an error of this stage, keep the app alive
            detail, evidence, status = f"internal error: {type(exc).__name__}: {exc}", {}, "error"
        detail = self.ctx.redactor.text(detail)
        evidence = self.ctx.redactor.tree(evidence)  # server text (error frames, bodies) may echo our token
        self._emit(StageFinished(self._t(), self.probe.id, step.name, status, _ms(start), detail, evidence))
        return status

    def _limit(self, step: Step) -> float | None:
        """How long this stage may take before it fails on its timeout (None: no single limit)."""
        t = self.ctx.target.timeouts
        if step.step == "http":
            return t.http * len([step.path] if step.path else self.p.health_paths)
        if step.step == "connect":
            upgrade = step.timeout or t.connect
            return upgrade + (step.timeout or t.ready) if step.expect == "refused" else upgrade
        if step.step == "expect":
            return step.timeout or (t.response if step.require_text else t.ready)
        if step.step == "expect_events":
            return step.timeout or t.agent
        if step.step == "close":
            return t.close
        return step.timeout

    # --- http -----------------------------------------------------------------------------------------
    async def _get(self, url: str, stage: str) -> httpx.Response:
        self.ctx.check_host(url)
        assert self.ctx.http is not None
        start = time.monotonic()
        try:
            resp = await bounded_request(self.ctx.http, "GET", url, self.ctx.target.timeouts.http,
                                         headers=dict(self.p.headers))
        except BodyTooLarge as exc:
            self._emit(HttpExchange(self._t(), self.probe.id, stage, "GET", url, exc.status, {}, "", _ms(start),
                                    f"too-large: {exc}"))
            raise StageFailed(f"GET {urlsplit(url).path or '/'}: {exc}", error="too-large", url=url) from None
        except httpx.HTTPError as exc:
            kind, text = _http_error(exc, self.ctx.target.timeouts.http)
            self._emit(HttpExchange(self._t(), self.probe.id, stage, "GET", url, None, {}, "", _ms(start),
                                    f"{kind}: {text}"))
            raise StageFailed(f"GET {urlsplit(url).path or '/'}: {text}", error=kind, url=url) from None
        body = resp.content[:BODY_KEEP].decode("utf-8", "replace")
        self._emit(HttpExchange(self._t(), self.probe.id, stage, "GET", url, resp.status_code,
                                self.ctx.redactor.headers(resp.headers.multi_items()),
                                self.ctx.redactor.text(body), _ms(start)))
        return resp

    async def _step_http(self, step: Step) -> tuple[str, dict[str, Any]]:
        paths = [step.path] if step.path else self.p.health_paths
        details, versions = [], []
        for path in paths:
            url = self.ctx.base_url + path
            resp = await self._get(url, step.name)
            if not 200 <= resp.status_code < 300:
                location = resp.headers.get("location")
                raise StageFailed(f"GET {path}: HTTP {resp.status_code} {resp.reason_phrase}"
                                  + (f" → {self.ctx.redactor.text(location)}" if location else ""),
                                  http_status=resp.status_code, url=url, location=location)
            value = parse_json(resp.text)
            version = _version_of(value, self.p.version_field)
            if version is not None:
                versions.append(version)
            details.append(f"GET {path} {resp.status_code}" + (f" · version {version}" if version else ""))
            expected = self.ctx.expected_version or self.p.expected_version
            if expected and version is not None and version != expected:
                raise StageFailed(f"GET {path}: build {version} is deployed, expected {expected}",
                                  http_status=resp.status_code, version=version, expected_version=expected)
            if expected and version is None:
                raise StageFailed(f"GET {path}: no '{self.p.version_field}' field to compare with {expected}",
                                  http_status=resp.status_code, expected_version=expected, version_missing=True,
                                  body=self.ctx.redactor.text(resp.text[:200]))
        return " · ".join(details), {"version": versions[0] if versions else None}

    # --- auth -----------------------------------------------------------------------------------------
    async def _get_token(self) -> authmod.TokenInfo:
        a = self.ctx.target.auth
        if a.mode == "none":
            raise StageFailed("auth.mode is 'none': no token to send", "skip")
        if a.mode == "env":
            return authmod.token_from_env(a, self.ctx.env)
        if a.mode == "endpoint":
            assert a.endpoint is not None and self.ctx.http is not None
            self.ctx.check_host(a.endpoint.url)
            try:
                resp = await bounded_request(self.ctx.http, a.endpoint.method, a.endpoint.url,
                                             self.ctx.target.timeouts.http, json=a.endpoint.json_body)
            except BodyTooLarge as exc:
                raise StageFailed(f"auth endpoint: {exc}") from None
            except httpx.HTTPError as exc:
                raise StageFailed(f"auth endpoint: {_http_error(exc, self.ctx.target.timeouts.http)[1]}") from None
            if resp.status_code >= 400:
                raise StageFailed(f"auth endpoint answered HTTP {resp.status_code}", http_status=resp.status_code)
            token = get_path(parse_json(resp.text), a.endpoint.token_field)
            if not isinstance(token, str) or not token:
                raise StageFailed(f"auth endpoint response has no '{a.endpoint.token_field}'")
            return authmod.TokenInfo(token, "auth endpoint", authmod.decode_unverified(token))
        return authmod.mint_token(a, self.ctx.env, loopback_port=self.ctx.loopback_port,
                                  secret=self.ctx.sandbox_secret)

    async def _step_auth(self, step: Step) -> tuple[str, dict[str, Any]]:
        try:
            token = await self._get_token()
        except authmod.AuthError as exc:
            raise StageFailed(str(exc), secret_missing=True) from None
        self.token = self.ctx.token = token
        self.ctx.redactor.add(token.token)
        now = time.time()
        parts = [f"{token.source}", f"token {token.redacted}"]
        if token.subject:
            parts.insert(1, f"sub {token.subject}")
        ev: dict[str, Any] = {"sub": token.subject, "exp": token.expires_at, "iat": token.issued_at,
                              "token": token.redacted, "source": token.source}
        if token.expires_at is not None:
            left = token.expires_at - now
            if left <= 0:
                raise StageFailed(f"token expired {int(-left)} s ago ({token.redacted})", token_expired=True, **ev)
            parts.append(f"expires in {_duration(left)}")
        return " · ".join(parts), ev

    # --- websocket ------------------------------------------------------------------------------------
    async def _step_connect(self, step: Step) -> tuple[str, dict[str, Any]]:
        await self._close_quietly()
        use_token = step.token == "default"
        token: str | None = None
        if use_token:
            if self.token is None:
                try:
                    self.token = self.ctx.token or await self._get_token()
                except authmod.AuthError as exc:
                    raise StageFailed(str(exc), secret_missing=True) from None
                self.ctx.redactor.add(self.token.token)
            token = self.token.token
        url = self.ctx.ws_url
        headers = dict(self.p.headers)
        subprotocols: list[str] = list(self.p.extra_subprotocols)
        offered: str | None = None
        if token:
            if "header" in self.p.token_transport:
                headers["Authorization"] = f"Bearer {token}"
            if "subprotocol" in self.p.token_transport:
                offered = authmod.subprotocol_for(token, self.p)
                subprotocols.insert(0, offered)
            if "query" in self.p.token_transport:
                parts = urlsplit(url)
                url = urlunsplit(parts._replace(query=urlencode({self.p.query_param: token})))
        shown_url = self.ctx.redactor.text(url)
        offered_shown = self.ctx.redactor.text(offered) if offered else None
        ev: dict[str, Any] = {"url": shown_url, "subprotocol_offered": offered_shown,
                              "token_sent": bool(token), "transport": list(self.p.token_transport) if token else []}
        self.sent_headers = dict(headers)
        if offered:
            self.sent_headers["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
        if offered and not authmod.is_legal_subprotocol(offered):
            raise StageFailed("the subprotocol value is not a legal RFC 7230 token (padded base64 '=' or another "
                              "illegal character): browsers throw SyntaxError and refuse to send it",
                              subprotocol_illegal=True, **ev)
        self.ctx.check_host(url)
        start = time.monotonic()
        kwargs: dict[str, Any] = {}
        if url.startswith("wss:") and not self.ctx.target.verify_tls:
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            kwargs["ssl"] = insecure
        if urlsplit(url).hostname in LOOPBACK:
            kwargs["proxy"] = None
        try:
            ws = await connect(url, subprotocols=subprotocols or None, additional_headers=headers,
                               open_timeout=step.timeout or self.ctx.target.timeouts.connect,
                               max_size=self.p.max_frame_bytes, create_connection=TappedConnection, **kwargs)
        except InvalidStatus as exc:
            r = exc.response
            body = bytes(r.body or b"")[:BODY_KEEP].decode("utf-8", "replace")
            ev.update(http_status=r.status_code, response_headers=self.ctx.redactor.headers(r.headers.raw_items()),
                      body=self.ctx.redactor.text(body), date=_header(r.headers, "Date"))
            if step.expect == "refused" and r.status_code in (401, 403):
                return f"refused with HTTP {r.status_code} {r.reason_phrase} (as required)", ev
            if r.status_code in (401, 403) and token:
                ev["echo"] = await self._echo_check()
            raise StageFailed(f"HTTP {r.status_code} {r.reason_phrase} instead of 101 Switching Protocols", **ev) \
                from None
        except NegotiationError as exc:
            raise StageFailed(f"handshake refused by the client: {exc}", negotiation=str(exc), **ev) from None
        except InvalidURI as exc:
            raise StageFailed(f"invalid WebSocket URL: {exc}", "error", **ev) from None
        except InvalidHandshake as exc:
            if any(isinstance(c, (EOFError, ConnectionError)) for c in _causes(exc)):
                raise StageFailed("the connection was closed before any HTTP answer to the upgrade",
                                  error="dropped", handshake_error=str(exc), **ev) from None
            raise StageFailed(f"invalid handshake: {exc}", handshake_error=str(exc), **ev) from None
        except TimeoutError:
            limit = step.timeout or self.ctx.target.timeouts.connect
            raise StageFailed(f"no 101 response within {limit:g} s", timeout=True, **ev) from None
        except OSError as exc:
            kind, text = _os_error(exc)
            raise StageFailed(f"{text} ({urlsplit(url).netloc})", error=kind, **ev) from None
        opened = getattr(ws, "accepted_at", None) or time.monotonic()  # the 101 as read, not when we resumed
        resp_headers = ws.response.headers if ws.response is not None else None
        echoed = ws.subprotocol
        ev.update(http_status=101, subprotocol_echoed=self.ctx.redactor.text(echoed) if echoed else None,
                  date=_header(resp_headers, "Date") if resp_headers else None,
                  response_headers=self.ctx.redactor.headers(resp_headers.raw_items()) if resp_headers else {})
        self._emit(WsOpened(self._t(), self.probe.id, shown_url, offered_shown, ev["subprotocol_echoed"],
                            self.ctx.redactor.headers(ws.request.headers.raw_items()) if ws.request else {},
                            ev["response_headers"]))
        assert isinstance(ws, TappedConnection)
        conn = self.conn = _Conn(ws, opened, shown_url)
        ws.attach(lambda data: self._on_message(conn, data), lambda: self._on_lost(conn))
        if step.expect == "refused":
            return await self._await_refusal(step, ev)
        detail = f"101 in {_ms(start):.0f} ms"
        if offered and not echoed:
            ev["subprotocol_not_echoed"] = True
            ev["echo"] = await self._echo_check()
            if self.p.require_subprotocol_echo:
                raise StageFailed("101 but the server did not echo the offered subprotocol: browsers refuse this "
                                  "handshake (Python clients accept it)", **ev)
            detail += " · subprotocol NOT echoed (browsers would refuse)"
        elif offered:
            detail += " · subprotocol echoed"
        return detail, ev

    async def _await_refusal(self, step: Step, ev: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        limit = step.timeout or self.ctx.target.timeouts.ready
        try:
            async with asyncio.timeout(limit):
                while True:
                    t, _value, _frame = await self._next()
                    if t == self.p.ready_type:
                        raise StageFailed(f"accepted a connection without a token and sent {t}",
                                          unauthenticated_accept=True, **ev)
        except TimeoutError:
            raise StageFailed(f"accepted a connection without a token and kept it open {limit:g} s",
                              unauthenticated_accept=True, **ev) from None
        except _ConnClosed as closed:
            c = closed.close
            if c.code == 1008 or 4000 <= c.code <= 4999:
                return f"refused after accept: close {c.code} {describe(c.code).name} '{c.reason}' (as required)", ev
            raise StageFailed(f"closed {c.code} {describe(c.code).name} '{c.reason}' — expected 401/403 or close "
                              "1008/4xxx for a connection without a token", **ev) from None

    def _on_message(self, conn: _Conn, data: str | bytes) -> None:
        """Called by the connection for every whole message, synchronously, as the socket is read."""
        self.frames_in += 1
        now = time.monotonic()
        size = len(data)
        truncated = size > FRAME_KEEP
        kept = data[:FRAME_KEEP] if truncated else data
        if type(kept) is str:
            kept = self._redact(kept)
        frame = _new_frame((now - self._t0, self._probe_id, "in", (now - conn.opened_at) * 1000.0, size, kept,
                            truncated))
        self.evidence.frame_in(frame)
        self._publish(frame)
        if type(data) is str and self._interesting.search(data) is not None:
            value = parse_json(data)
            conn.inbox.append((frame_type(value, self.p.type_field), value, frame))
        elif conn.first_seen:
            conn.other += 1  # filler: counted, published and recorded, but no stage waits for it
            return
        else:  # the first frame always reaches the handshake check, whatever it is
            conn.inbox.append((OTHER if type(data) is str else None, None, frame))
        conn.first_seen = True
        conn.wake()

    def _on_lost(self, conn: _Conn) -> None:
        conn.lost = True
        conn.wake()

    async def _next(self) -> tuple[str | None, Any, Frame]:
        """The next message, or _ConnClosed once the connection has ended and every message was read."""
        conn = self.conn
        if conn is None:
            raise StageFailed("no open connection (a connect stage must come first)", "error")
        while True:
            if conn.inbox:
                return conn.inbox.popleft()
            if conn.closed is not None:
                raise _ConnClosed(conn.closed)
            if conn.lost:
                raise _ConnClosed(self._record_close())
            conn.waiter = asyncio.get_running_loop().create_future()
            try:
                await conn.waiter
            finally:
                conn.waiter = None

    def _real_type(self, t: str | None, frame: Frame) -> str | None:
        """The type of a frame that `_on_message` did not parse (only needed for error messages)."""
        if t != OTHER:
            return t
        return frame_type(parse_json(frame.data), self.p.type_field)

    def _record_close(self, exc: ConnectionClosed | None = None) -> Closed:
        conn = self.conn
        assert conn is not None
        if conn.closed is not None:
            return conn.closed
        proto = conn.ws.protocol
        rcvd, sent = proto.close_rcvd, proto.close_sent
        if rcvd is not None:
            code, reason = rcvd.code, rcvd.reason
        elif sent is not None and sent.code != 1000:  # we ended it for a reason (e.g. 1009 frame too big)
            code, reason = sent.code, sent.reason or ""
        else:
            code, reason = 1006, ""
        if proto.close_rcvd_then_sent is True or (rcvd is not None and sent is None):
            by = "server"
        elif proto.close_rcvd_then_sent is False or (sent is not None and rcvd is None):
            by = "client"
        else:
            by = "none"
        # When it happened on the wire: the peer's close frame (or the drop) as read, not when a stage noticed.
        at = (conn.ws.close_frame_at if by == "server" else None) or (conn.ws.lost_at if by == "none" else None) \
            or time.monotonic()
        closed = Closed(self._t(), self.probe.id, code, describe(code).name, self.ctx.redactor.text(reason), by,
                        (at - conn.opened_at) * 1000.0,
                        describe(code).on_wire and (rcvd is not None or code == getattr(sent, "code", None)))
        conn.closed = closed
        self._emit(closed)
        return closed

    def _close_detail(self, closed: Closed, before: str) -> str:
        who = {"server": "server closed", "client": "client closed", "none": "connection dropped"}[closed.by]
        reason = f" '{closed.reason}'" if closed.reason else ""
        wire = "" if closed.on_wire else " (not sent by the peer)"
        return (f"{closed.code} {closed.name}{wire}{reason} — {who} {closed.after_ms:.0f} ms after accept, "
                f"before {before}")

    async def _step_expect(self, step: Step) -> tuple[str, dict[str, Any]]:
        if step.require_text:
            return await self._expect_response(step)
        wanted = step.any_of or [step.type or self.p.ready_type]
        strict = step.type is None and step.any_of is None  # the ready frame must come first
        limit = step.timeout or self.ctx.target.timeouts.ready
        start = time.monotonic()
        skipped: list[str] = []
        try:
            async with asyncio.timeout(limit):
                while True:
                    t, value, frame = await self._next()
                    if t in wanted:
                        ev = {"frame_type": t, "ms_since_accept": round(frame.ms, 1)}
                        return f"{t} after {frame.ms:.0f} ms", ev
                    if t in self.p.error_types:
                        raise StageFailed(f"error frame instead of {wanted[0]}: {_error_text(value)}",
                                          error_frame=_error_text(value), frame_type=t)
                    if strict:
                        t = self._real_type(t, frame)
                        shown = t or ("binary" if isinstance(frame.data, bytes) else "non-JSON text")
                        raise StageFailed(f"first frame was {shown}, expected {wanted[0]}", frame_type=shown,
                                          wrong_type=True)
                    skipped.append(self._real_type(t, frame) or "?")
        except TimeoutError:
            raise StageFailed(f"no {wanted[0]} within {limit:g} s", timeout=True,
                              waited_ms=_ms(start), skipped=skipped[-10:]) from None
        except _ConnClosed as closed:
            extra: dict[str, Any] = {}
            if strict and ("Authorization" in self.sent_headers or "Sec-WebSocket-Protocol" in self.sent_headers):
                extra["echo"] = await self._echo_check()
            raise StageFailed(self._close_detail(closed.close, wanted[0]), closed=True, **extra) from None

    async def _echo_check(self) -> dict[str, Any] | None:
        """Ask the target's header-echo endpoint (if configured) whether our credentials reach the backend."""
        path = self.p.echo_headers_path
        if not path or not self.sent_headers or self.ctx.http is None:
            return None
        url = self.ctx.base_url + path
        try:
            self.ctx.check_host(url)
            resp = await bounded_request(self.ctx.http, "GET", url, self.ctx.target.timeouts.http,
                                         headers=self.sent_headers)
        except (httpx.HTTPError, HostNotAllowed, BodyTooLarge) as exc:
            return {"url": path, "error": type(exc).__name__}
        result: dict[str, Any] = {"url": path, "status": resp.status_code}
        seen = _echoed_headers(parse_json(resp.text))
        if resp.status_code == 200 and seen is not None:
            result["authorization_sent"] = "Authorization" in self.sent_headers
            result["subprotocol_sent"] = "Sec-WebSocket-Protocol" in self.sent_headers
            result["authorization_arrived"] = bool(seen.get("authorization"))
            result["subprotocol_arrived"] = bool(seen.get("sec-websocket-protocol"))
        return result

    async def _step_send(self, step: Step) -> tuple[str, dict[str, Any]]:
        conn = self.conn
        if conn is None:
            raise StageFailed("no open connection (a connect stage must come first)", "error")
        if conn.closed is not None:
            raise StageFailed(self._close_detail(conn.closed, "the message was sent"), closed=True)
        text = step.text if step.text is not None else self.p.messages[step.message % len(self.p.messages)]
        payload = json.dumps(_render(self.p.message_template, text))
        try:
            await conn.ws.send(payload)
        except ConnectionClosed as exc:
            raise StageFailed(self._close_detail(self._record_close(exc), "the message was sent"),
                              closed=True) from None
        self.frames_out += 1
        now = time.monotonic()
        self._emit(Frame(self._t(), self.probe.id, "out", (now - conn.opened_at) * 1000.0, len(payload),
                         self.ctx.redactor.text(payload)))
        self.answers = []
        return f"sent {len(payload)} B: {text[:60]}", {"bytes": len(payload)}

    async def _step_expect_events(self, step: Step) -> tuple[str, dict[str, Any]]:
        required = list(self.p.agent_events)
        final = self.p.final_event
        limit = step.timeout or self.ctx.target.timeouts.agent
        seen: list[tuple[str, float]] = []
        other = 0
        start = time.monotonic()
        conn = self.conn
        other_before = conn.other if conn is not None else 0

        def progress() -> dict[str, Any]:
            return {"events": [[t, round(ms, 1)] for t, ms in seen[:50]], "other_frames": other,
                    "missing": [e for e in required if e not in {t for t, _ in seen}]}

        try:
            async with asyncio.timeout(limit):
                while True:
                    t, value, frame = await self._next()
                    if t in self.p.response_types:
                        self.answers.append((t, value, frame))
                    if t in self.p.error_types:
                        raise StageFailed(f"error frame during the agent run: {_error_text(value)}",
                                          error_frame=_error_text(value), **progress())
                    if t in required:
                        seen.append((t, frame.ms))
                        if t == final:
                            break
                    else:
                        other += 1
        except TimeoutError:
            got = ", ".join(dict.fromkeys(t for t, _ in seen)) or "no agent events"
            raise StageFailed(f"no {final} within {limit:g} s (got: {got})", timeout=True,
                              waited_ms=_ms(start), **progress()) from None
        except _ConnClosed as closed:
            raise StageFailed(self._close_detail(closed.close, final), closed=True, **progress()) from None
        if conn is not None:
            other += conn.other - other_before
        ev = progress()
        if ev["missing"]:
            raise StageFailed(f"{final} arrived but {', '.join(ev['missing'])} never did", missing_events=True,
                              **ev)
        if self.p.ordered:
            first = list(dict.fromkeys(t for t, _ in seen))
            expected = [e for e in required if e in first]
            if first != expected:
                bad = next(i for i, (a, b) in enumerate(zip(first, expected)) if a != b)
                raise StageFailed(f"events out of order: {first[bad]} arrived before {expected[bad]}",
                                  out_of_order=True, order=first, **ev)
        span = seen[-1][1] - seen[0][1] if seen else 0.0
        return f"{len(required)}/{len(required)} events in order over {span:.0f} ms" + (
            f" (+{other} other frames)" if other else ""), ev

    async def _expect_response(self, step: Step) -> tuple[str, dict[str, Any]]:
        looked = ", ".join(self.p.response_paths[:4]) + ", …"
        for t, value, _frame in self.answers:
            text = _response_text(value, self.p.response_paths)
            if text:
                return f"{len(text)} chars in {t}: {_excerpt(text)}", {"chars": len(text), "frame_type": t,
                                                                      "excerpt": _excerpt(text)}
        limit = step.timeout or self.ctx.target.timeouts.response
        try:
            async with asyncio.timeout(limit):
                while True:
                    t, value, _frame = await self._next()
                    if t in self.p.error_types:
                        raise StageFailed(f"error frame instead of a response: {_error_text(value)}",
                                          error_frame=_error_text(value))
                    if t in self.p.response_types:
                        text = _response_text(value, self.p.response_paths)
                        if text:
                            return f"{len(text)} chars in {t}: {_excerpt(text)}", {
                                "chars": len(text), "frame_type": t, "excerpt": _excerpt(text)}
        except TimeoutError:
            seen = ", ".join(t for t, _, _ in self.answers) or "no response frame"
            raise StageFailed(f"no response text within {limit:g} s ({seen}; looked at {looked})",
                              empty_response=True) from None
        except _ConnClosed as closed:
            raise StageFailed(self._close_detail(closed.close, "a response arrived"), closed=True) from None

    async def _step_close(self, step: Step) -> tuple[str, dict[str, Any]]:
        conn = self.conn
        if conn is None:
            raise StageFailed("no open connection to close", "error")
        if conn.closed is not None:
            raise StageFailed(self._close_detail(conn.closed, "the client closed"), closed=True)
        start = time.monotonic()
        await conn.ws.close(1000, "stagewatch done")
        closed = self._record_close()
        self.conn = None
        if closed.by == "client" and closed.code == 1000:
            return f"closed 1000, server answered in {_ms(start):.0f} ms", {"code": closed.code}
        raise StageFailed(f"close handshake incomplete: {closed.code} {closed.name}", code=closed.code)

    async def _close_quietly(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        if conn.closed is None:
            try:
                await asyncio.wait_for(conn.ws.close(1000, "stagewatch done"), self.ctx.target.timeouts.close)
            except (TimeoutError, OSError):
                pass
            self.conn = conn
            self._record_close()
            self.conn = None


class _ConnClosed(Exception):
    def __init__(self, close: Closed) -> None:
        self.close = close


# --- helpers ------------------------------------------------------------------------------------------------

class BodyTooLarge(Exception):
    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"answer larger than {limit // 1024} KiB (HTTP {status}); not read further")
        self.status = status


async def bounded_request(http: httpx.AsyncClient, method: str, url: str, limit: float,
                          **kwargs: Any) -> httpx.Response:
    """One HTTP exchange, whole answer within `limit` seconds and at most HTTP_BODY_MAX bytes of body.

    httpx's timeout bounds each read, not the exchange: a server trickling an endless body would hold the stage
    forever. The deadline covers the whole exchange (reported as httpx.ReadTimeout, like httpx's own timeouts).
    """
    answered = False
    try:
        async with asyncio.timeout(limit):
            async with http.stream(method, url, timeout=limit, **kwargs) as resp:
                answered = True
                body = bytearray()
                async for chunk in resp.aiter_bytes():  # decoded (gzip…) chunks: the cap holds for bombs too
                    body += chunk
                    if len(body) > HTTP_BODY_MAX:
                        raise BodyTooLarge(resp.status_code, HTTP_BODY_MAX)
                kept = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in _DECODED_AWAY]
                return httpx.Response(resp.status_code, headers=kept, content=bytes(body), request=resp.request)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no {'complete ' if answered else ''}answer within {limit:g} s") from None


_DECODED_AWAY = frozenset({"content-encoding", "transfer-encoding", "content-length"})  # body is stored decoded

def _header(headers: Any, name: str) -> str | None:
    """The first value of a header, tolerating servers that send it twice."""
    values = headers.get_all(name) if hasattr(headers, "get_all") else [headers.get(name)]
    return values[0] if values and values[0] is not None else None


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000.0, 1)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} m"
    if seconds >= 60:
        return f"{seconds // 60} m {seconds % 60} s"
    return f"{seconds} s"


def _echoed_headers(value: Any) -> dict[str, Any] | None:
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


def _render(template: Any, text: str) -> Any:
    if isinstance(template, str):
        return template.replace("{text}", text)
    if isinstance(template, dict):
        return {k: _render(v, text) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, text) for v in template]
    return template


def _version_of(value: Any, field_path: str) -> str | None:
    for path in (field_path, "version", "build", "build_id", "commit", "git_sha"):
        v = get_path(value, path)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v):
            return str(v)
    return None


def _response_text(value: Any, paths: list[str]) -> str:
    for path in paths:
        v = get_path(value, path)
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, dict):
            for key in ("response", "content", "text", "message", "answer"):
                inner = v.get(key)
                if isinstance(inner, str) and inner.strip():
                    return inner
    return ""


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _error_text(value: Any) -> str:
    for path in ("payload.message", "payload.error", "data.message", "data.error", "message", "error", "detail"):
        v = get_path(value, path)
        if isinstance(v, str) and v:
            return _excerpt(v, 160)
    return _excerpt(json.dumps(value)[:200], 160) if value is not None else "(no message)"


def _os_error(exc: OSError) -> tuple[str, str]:
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return "dns", f"DNS lookup failed: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "reset", "connection reset by peer"
    return "os", f"{type(exc).__name__}: {exc.strerror or exc}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, its causes/contexts and, for exception groups, their members (depth-first)."""
    seen: list[BaseException] = []
    stack = [exc]
    while stack and len(seen) < 32:
        cur = stack.pop()
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        stack.extend(getattr(cur, "exceptions", ()) or ())
        for nxt in (cur.__cause__, cur.__context__):
            if nxt is not None:
                stack.append(nxt)
    return seen


def _http_error(exc: httpx.HTTPError, timeout: float) -> tuple[str, str]:
    if isinstance(exc, httpx.TimeoutException):
        text = str(exc)
        return "timeout", text if text.startswith("no ") else f"no answer within {timeout:g} s"
    causes = _causes(exc)
    for kind in (ssl.SSLError, socket.gaierror, ConnectionRefusedError, ConnectionResetError):
        found = next((c for c in causes if isinstance(c, kind)), None)
        if found is not None:
            return _os_error(found)  # type: ignore[arg-type]
    text = " / ".join(dict.fromkeys(str(c) for c in causes if str(c))) or type(exc).__name__
    lower = text.lower()
    if "certificate" in lower or "ssl" in lower or "tls" in lower or "wrong version number" in lower:
        return "tls", f"TLS error: {text}"
    if "name or service not known" in lower or "nodename" in lower or "getaddrinfo" in lower \
            or "name resolution" in lower:
        return "dns", f"DNS lookup failed: {text}"
    if "refused" in lower or "all connection attempts failed" in lower or "errno 111" in lower:
        return "refused", "connection refused"
    return "http", text


def server_date_skew(date_header: str | None) -> float | None:
    """Seconds the server's Date header is ahead of our clock (negative: behind)."""
    if not date_header:
        return None
    try:
        return email.utils.parsedate_to_datetime(date_header).timestamp() - time.time()
    except (TypeError, ValueError):
        return None
