"""One WebSocket connection's life: opening it, every message as it is read (the inbox), what we send, how it
ended (the close record: code, reason, who closed first, when after accept, or the drop) and closing it within a
limit.

Messages are taken synchronously from websockets' parser (`wire.TappedConnection`): each becomes a `Frame` event at
once, and only frames that mention a protocol type a stage waits for are parsed and queued for `next()`. Floods of
filler are counted, published and recorded, but cost no JSON parse and no task wake-up.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from .certs import cert_facts
from .closecodes import close_sentence, describe
from .events import Closed, Event, Frame
from .frames import frame_type, parse_json
from .net import is_loopback
from .wire import TappedConnection

FRAME_KEEP = 64 * 1024  # bytes of each frame kept in events (the size is always exact)
OTHER = "\x00other"  # type marker: a frame that mentions no protocol type we wait for (not parsed)
_new_frame = partial(tuple.__new__, Frame)  # Frame(*fields) without NamedTuple's Python-level __new__

Message = tuple[str | None, Any, Frame]  # (protocol type, parsed JSON, the frame)


class SessionEnded(Exception):
    """The connection ended and every message it delivered has been read. `note`: what else the stage should
    say (e.g. that the server never answered the close we sent)."""

    def __init__(self, close: Closed, note: str = "") -> None:
        super().__init__(close.reason)
        self.close = close
        self.note = note


def ended_detail(ended: SessionEnded | Closed, before: str) -> str:
    """A stage's one line for a connection that ended under it."""
    close, note = (ended.close, ended.note) if isinstance(ended, SessionEnded) else (ended, "")
    return f"{close_sentence(close.code, close.reason, close.by, close.after_ms)}, before {before}" + (
        f"; {note}" if note else "")


class _Connect(connect):
    """websockets' `connect` that follows an upgrade redirect only to a host in `follow_to` (the target's own
    hosts, and only when the config opts in); any other redirect is raised as the InvalidStatus it is, so the token
    it would carry never leaves for a host nobody named."""

    follow_to: frozenset[str] = frozenset()
    split: bool = True  # measure DNS / TCP / TLS apart (not for held sessions: thousands, nobody reads it)
    timing: dict[str, Any] | None = None  # what the opening took: dns_ms, tcp_ms, tls_ms (+ TLS facts)
    last: Any = None  # the last connection opened (its response, when the upgrade is refused after a 101)

    async def open_tcp_connection(self) -> Any:
        """The connection with its time split: DNS, TCP, TLS, each measured (the upgrade is the rest). Only where
        nothing else shapes the connection (no proxy, no socket given); else websockets' own path, unsplit."""
        kwargs = self.create_connection_kwargs
        proxy = _env_proxy(self.ws_uri) if self.proxy is True else self.proxy
        if not self.split or proxy is not None or kwargs.get("sock") is not None or kwargs.get("unix"):
            self.last = await super().open_tcp_connection()
            return self.last
        loop = asyncio.get_running_loop()
        uri = self.ws_uri
        t0 = time.monotonic()
        infos = await loop.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM)
        t1 = time.monotonic()
        last: OSError | None = None
        sock: socket.socket | None = None
        for family, kind, proto, _canonical, address in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
                break
            except OSError as exc:
                sock.close()
                sock, last = None, exc
        if sock is None:
            raise last or OSError(f"no address for {uri.host}")
        t2 = time.monotonic()
        extra: dict[str, Any] = {}
        if uri.secure:
            extra = {"ssl": kwargs.get("ssl", True), "server_hostname": kwargs.get("server_hostname", uri.host)}
        try:
            _, connection = await loop.create_connection(lambda: self.factory(uri), sock=sock, **extra)
        except BaseException:
            sock.close()
            raise
        t3 = time.monotonic()
        self.timing = {"dns_ms": round((t1 - t0) * 1000, 2), "tcp_ms": round((t2 - t1) * 1000, 2),
                       "tls_ms": round((t3 - t2) * 1000, 2) if uri.secure else None}
        tls = connection.transport.get_extra_info("ssl_object") if uri.secure else None
        if tls is not None:
            self.timing.update({"tls_version": tls.version(), "tls_cipher": (tls.cipher() or ("",))[0]})
            context = kwargs.get("ssl")
            verified = not isinstance(context, ssl.SSLContext) or context.verify_mode != ssl.CERT_NONE
            self.timing.update(cert_facts(tls, verified))
        self.last = connection  # what answered, for a failed upgrade's evidence (the 101 we refused, its timing)
        return connection

    def process_redirect(self, exc: Exception) -> Exception | str:
        if not self.follow_to:
            return exc
        found = super().process_redirect(exc)
        if isinstance(found, str) and (urlsplit(found).hostname or "").lower() not in self.follow_to:
            return exc
        return found


@functools.lru_cache(maxsize=8)
def ws_tls_context(verify: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """The TLS context for wss, built once per setting (loading the CA bundle costs ~15 ms of CPU: not per
    connection, and not inside the connect stage's time). Unverified (`--insecure`): no CA bundle at all."""
    if not verify:
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        return insecure
    return ssl.create_default_context()  # (reads SSL_CERT_FILE / SSL_CERT_DIR: part of the cache key)


async def open_connection(url: str, *, subprotocols: list[str] | None, headers: dict[str, str], open_timeout: float,
                          close_timeout: float, max_size: int, verify_tls: bool,
                          follow_redirects_to: frozenset[str] = frozenset(), ping_interval: float | None = 20.0,
                          lean: bool = False, seen: dict[str, Any] | None = None) -> TappedConnection:
    """The upgrade, bounded by `open_timeout`; websockets' own exceptions (InvalidStatus…) reach the caller.
    A redirect is not followed unless `follow_redirects_to` names the host it points to."""
    kwargs: dict[str, Any] = {}
    if url.startswith("wss:"):
        kwargs["ssl"] = ws_tls_context(verify_tls, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if is_loopback(urlsplit(url).hostname):
        kwargs["proxy"] = None
    if lean:  # many held sessions: no compression state, small buffers (an idle session costs little)
        kwargs.update(compression=None, max_queue=4, write_limit=4096)
    opening = _Connect(url, subprotocols=subprotocols or None,  # type: ignore[arg-type]
                       additional_headers=headers, open_timeout=open_timeout, close_timeout=close_timeout,
                       max_size=max_size, create_connection=TappedConnection, ping_interval=ping_interval,
                       **kwargs)
    opening.follow_to = follow_redirects_to
    opening.split = not lean
    started = time.monotonic()
    try:
        ws = await opening
    except Exception:
        if seen is not None:  # a refused upgrade still took DNS, TCP, TLS and a round trip; a 101 may have come
            last = opening.last
            split = dict(opening.timing or {})
            spent = sum(v for k, v in split.items() if k.endswith("_ms") and isinstance(v, (int, float)))
            if split:
                split["upgrade_ms"] = round(max(0.0, (time.monotonic() - started) * 1000 - spent), 2)
            seen.update(timing=split, response=getattr(last, "response", None) if last is not None else None)
        raise
    assert isinstance(ws, TappedConnection)
    if lean:
        _shed_handshake(ws)
    elif opening.timing is not None:  # the upgrade: the rest, up to the 101 as read off the socket
        split = dict(opening.timing)
        spent = sum(v for k, v in split.items() if k.endswith("_ms") and isinstance(v, (int, float)))
        accepted = ws.accepted_at or time.monotonic()
        split["upgrade_ms"] = round(max(0.0, (accepted - started) * 1000 - spent), 2)
        ws.timing = split
    return ws


def _shed_handshake(ws: TappedConnection) -> None:
    """A held session reads no header after its upgrade: the request goes (its headers carry the token twice), the
    response keeps its status line only (the same object websockets' parser keeps; its presence tells the
    connection the handshake is over), and the subprotocols offered (the token again) are forgotten: about 3.5 KB
    less per idle session (bench/hold.py)."""
    ws.request = None
    if ws.response is not None:
        ws.response.headers = Headers()
    ws.protocol.available_subprotocols = None


def _env_proxy(uri: Any) -> str | None:
    """The proxy websockets would take from the environment for `uri` (None: none; websockets < 15 has none)."""
    try:
        from websockets.proxy import get_proxy
    except ImportError:
        return None
    return get_proxy(uri)


def close_facts(ws: TappedConnection) -> tuple[int, str, str, float]:
    """How a connection ended, from websockets' close frames: code (1006 when none came), reason, who closed
    first (server, client, or none: dropped) and when on the wire (monotonic: the peer's close frame or the drop
    as read, not when somebody noticed)."""
    proto = ws.protocol
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
    at = (ws.close_frame_at if by == "server" else None) or (ws.lost_at if by == "none" else None) \
        or (ws.failed_at if by == "client" else None) or time.monotonic()
    return code, reason, by, at


class Session:
    """An open connection of one probe. `emit` publishes an event (and folds it into the probe's own model);
    `take_frame` is the hot path for a received frame (fold + publish, without type tests)."""

    def __init__(self, ws: TappedConnection, url: str, *, probe_id: str, clock_t0: float,
                 clock: Callable[[], float], redact: Callable[[str], str], redact_bytes: Callable[[bytes], bytes],
                 emit: Callable[[Event | Frame], None],
                 take_frame: Callable[[Frame], None], awaited_types: Iterable[str], type_field: str) -> None:
        self.ws = ws
        self.url = url
        self.opened_at = ws.accepted_at or time.monotonic()  # the 101 as read, not when we resumed
        self.closed: Closed | None = None
        self.note = ""  # e.g. "the server never answered our close"
        self.lost = False
        self.first_seen = False
        self.other = 0  # frames of no awaited type, after the first
        self.inbox: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # bound once: `_on_message` runs a million times in a flood
        self._probe_id, self._t0, self._clock, self._redact = probe_id, clock_t0, clock, redact
        self._redact_bytes = redact_bytes
        self._emit, self._take = emit, take_frame
        self._type_field = type_field
        names = sorted(set(awaited_types), key=len, reverse=True)
        self._interesting = re.compile("|".join(re.escape(n) for n in names if n) or r"(?!)")
        ws.attach(self._on_message, self._on_lost)

    # --- reading ------------------------------------------------------------------------------------------------
    def _on_message(self, data: str | bytes) -> None:
        """Called by the connection for every whole message, synchronously, as the socket is read."""
        now = time.monotonic()
        size = len(data)
        truncated = size > FRAME_KEEP
        kept = data[:FRAME_KEEP] if truncated else data
        if type(kept) is str:
            kept = self._redact(kept)
        else:  # a binary frame can carry the token too (raw, or as base64 text inside it)
            kept = self._redact_bytes(kept)  # type: ignore[arg-type]
        frame = _new_frame((now - self._t0, self._probe_id, "in", (now - self.opened_at) * 1000.0, size, kept,
                            truncated))
        self._take(frame)
        if type(data) is str and self._interesting.search(data) is not None:
            value = parse_json(data)
            self.inbox.append((frame_type(value, self._type_field), value, frame))
        elif self.first_seen:
            self.other += 1  # filler: counted, published and recorded, but no stage waits for it
            return
        else:  # the first frame always reaches the handshake check, whatever it is
            self.inbox.append((OTHER if type(data) is str else None, None, frame))
        self.first_seen = True
        self._wake()

    def _on_lost(self) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Message:
        """The next awaited message; SessionEnded once the connection has ended and every message was read."""
        while True:
            if self.inbox:
                return self.inbox.popleft()
            if self.closed is not None:
                raise SessionEnded(self.closed, self.note)
            if self.lost:
                raise SessionEnded(self.record_close(), self.note)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def real_type(self, t: str | None, frame: Frame) -> str | None:
        """The type of a frame `_on_message` did not parse (only needed for error messages)."""
        if t != OTHER:
            return t
        return frame_type(parse_json(frame.data), self._type_field)

    # --- writing ------------------------------------------------------------------------------------------------
    async def send_text(self, payload: str) -> None:
        """Send one text message and publish it as an outgoing frame; SessionEnded if the connection is gone."""
        if self.closed is not None:
            raise SessionEnded(self.closed, self.note)
        try:
            await self.ws.send(payload)
        except ConnectionClosed:
            raise SessionEnded(self.record_close(), self.note) from None
        now = time.monotonic()
        self._emit(Frame(now - self._t0, self._probe_id, "out", (now - self.opened_at) * 1000.0, len(payload),
                         self._redact(payload), False))

    # --- ending -------------------------------------------------------------------------------------------------
    async def close(self, limit: float, code: int = 1000, reason: str = "stagewatch done") -> tuple[Closed, bool]:
        """Our close handshake within `limit` seconds. Returns the close record and whether the server answered
        in time; if it did not, the TCP connection is aborted (recorded as a 1006 drop after our close)."""
        if self.closed is not None:
            return self.closed, False
        answered = True
        try:
            async with asyncio.timeout(limit):
                await self.ws.close(code, reason)
        except TimeoutError:
            answered = False
        except OSError:
            pass
        if not answered or self.ws.protocol.close_rcvd is None:
            transport = self.ws.transport
            if transport is not None and not transport.is_closing():
                transport.abort()
            answered = answered and self.ws.protocol.close_rcvd is not None
        return self.record_close(), answered

    def record_close(self) -> Closed:
        """How the connection ended, from websockets' close frames (published once)."""
        if self.closed is not None:
            return self.closed
        code, reason, by, at = close_facts(self.ws)
        rcvd, sent = self.ws.protocol.close_rcvd, self.ws.protocol.close_sent
        if by == "client" and rcvd is None and self.ws.failed_at is not None:
            waited = (self.ws.lost_at or time.monotonic()) - self.ws.failed_at
            if waited < 0.05:  # RFC 6455 §7.1.7: failing the connection closes TCP without awaiting the reply
                self.note = "the client failed the connection and closed it at once, not waiting for the server's " \
                            "reply (RFC 6455 §7.1.7)"
            else:
                self.note = f"the server never answered our close: connection dropped {waited:.1f} s later"
        info = describe(code)
        closed = Closed(self._clock(), self._probe_id, code, info.name, self._redact(reason), by,  # type: ignore[arg-type]
                        (at - self.opened_at) * 1000.0,
                        info.on_wire and (rcvd is not None or code == getattr(sent, "code", None)))
        self.closed = closed
        self._emit(closed)
        return closed
