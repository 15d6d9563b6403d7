"""The WebSocket and HTTP tap inside the user's pytest process: what their tests' clients did on the wire, from the
clients' own logging, without changing a test.

websockets logs every handshake line and frame of every client connection (asyncio, sync and legacy) at DEBUG on
the "websockets.client" logger, through a per-connection LoggerAdapter: `record.websocket` is the connection and,
for frames, `record.args[0]` the real Frame. `WsTap` turns those records into channel messages, each attributed to
the test running when it was logged (one test runs at a time in a process; the sync client's reader thread logs
too), else to the test that opened the connection: `ws_connect`, `ws_response` (status, headers with credentials
redacted, offered and echoed subprotocol), `ws_failed` (no answer to the upgrade), `ws_frame` (whole messages,
fragments joined) and `ws_close` (code, reason, who closed first, ms after the 101, the way `probes/session.py`
words its own closes). `HttpTap` reads httpx's INFO line `HTTP Request: GET url "HTTP/1.1 200 OK"`.

Everything is bounded (frames per test, bytes per frame, headers, connections) and redacted before it leaves:
Authorization values and `jwt.*` subprotocols never leave whole, and the token they carry is hidden everywhere
after. A record the tap cannot read is ignored: the tap never fails a test.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .redact import Redactor

Send = Callable[[dict[str, Any]], None]

MAX_HEADERS = 60  # per request or response
HEADER_CHARS = 500
MAX_OPEN = 256  # connections tracked at once (a leak of thousands stays bounded)
QUERY_CREDENTIALS = frozenset({"token", "access_token", "jwt", "auth", "authorization", "api_key", "apikey", "key"})


@dataclass(frozen=True)
class Limits:
    max_frames: int = 500  # frames reported per test (all are counted)
    frame_bytes: int = 8192  # bytes of each frame reported (its size is always exact)
    max_connections: int = 32  # connections reported per test
    max_http: int = 200  # HTTP requests reported per test


@dataclass
class TestCounts:
    frames_in: int = 0
    frames_out: int = 0
    frames_sent: int = 0
    dropped: int = 0
    connections: int = 0
    http: int = 0


class RunningTests:
    """Which test is running (and in which phase), and what was counted per test. The plugin's hooks set it; the
    tap reads it from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodeid: str | None = None
        self.phase = ""
        self.counts: dict[str, TestCounts] = {}

    def start(self, nodeid: str) -> None:
        with self.lock:
            self.nodeid, self.phase = nodeid, ""
            self.counts[nodeid] = TestCounts()

    def finish(self, nodeid: str) -> TestCounts:
        with self.lock:
            if self.nodeid == nodeid:
                self.nodeid, self.phase = None, ""
            return self.counts.pop(nodeid, TestCounts())

    def count(self, nodeid: str) -> TestCounts | None:
        return self.counts.get(nodeid)


def subprotocol_token(value: str) -> str | None:
    """The token in a `jwt.<base64url(token)>` subprotocol value, if it is one."""
    if not value.startswith("jwt."):
        return None
    data = value[4:]
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


@dataclass
class _Conn:
    id: int  # unique in this process
    n: int  # the connection's number in the test that opened it (1, 2, …)
    owner: str  # the nodeid of the test that opened it
    started: float
    path: str
    request: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    reason: str = ""
    response: list[tuple[str, str]] = field(default_factory=list)
    answered: bool = False  # the response (status and headers) was sent on
    opened_at: float | None = None
    first_close: str = ""  # "<" or ">": who sent the first close frame
    close_at: float | None = None
    close_rcvd: tuple[int, str] | None = None
    close_sent: tuple[int, str] | None = None
    parts: dict[str, tuple[str, list[bytes], int]] = field(default_factory=dict)  # direction -> fragments so far


class WsTap(logging.Handler):
    """websockets client records -> channel messages. logging calls `emit` under the handler's lock, so the
    sync client's reader thread and the test's thread never interleave here."""

    def __init__(self, send: Send, tests: RunningTests, redactor: Redactor, limits: Limits) -> None:
        super().__init__(logging.DEBUG)
        self.send, self.tests, self.redactor, self.limits = send, tests, redactor, limits
        self.conns: dict[object, _Conn] = {}
        self.serial = 0

    def _whose(self, conn: _Conn) -> str:
        """The test a record belongs to: the one running now (a connection a fixture shares across tests shows
        on each test that used it), else the one that opened it (a close read just after it ended)."""
        return self.tests.nodeid or conn.owner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._take(record)
        except Exception:  # a record we cannot read: the tap never fails the test
            pass

    def _key(self, record: logging.LogRecord) -> object | None:
        ws = getattr(record, "websocket", None)
        if ws is None:
            return None
        try:
            key: object = ws.id  # a weakref proxy: ReferenceError once the connection is gone
        except (ReferenceError, AttributeError):
            return None
        return key

    def _take(self, record: logging.LogRecord) -> None:
        key = self._key(record)
        if key is None:
            return
        msg, args = record.msg, record.args if isinstance(record.args, tuple) else ()
        now = time.monotonic()
        if msg == "> GET %s HTTP/1.1":
            self._open(key, str(args[0]) if args else "/", now)
            return
        conn = self.conns.get(key)
        if conn is None:
            return  # opened before the tap, or beyond the per-test bound
        if msg == "> %s: %s" and conn.status is None and len(args) == 2:
            if len(conn.request) < MAX_HEADERS:
                name, value = str(args[0]), str(args[1])[:HEADER_CHARS * 8]
                self._learn(name, value)
                conn.request.append((name, value))
            return
        if msg == "< HTTP/1.1 %d %s" and len(args) == 2:
            conn.status, conn.reason = int(str(args[0])), str(args[1])
            return
        if msg == "< %s: %s" and not conn.answered and len(args) == 2:
            if len(conn.response) < MAX_HEADERS:
                conn.response.append((str(args[0]), str(args[1])))
            return
        if conn.status is not None and not conn.answered:
            self._answer(conn, now)
        if isinstance(msg, str) and msg.startswith("= connection is "):
            state = str(args[0]) if args else msg[len("= connection is "):]
            if state == "CLOSED":
                self._ended(key, conn, now)
        elif msg in ("< %s", "> %s") and len(args) == 1:
            self._frame(conn, msg[0], args[0], now)

    # --- the handshake ------------------------------------------------------------------------------------------
    def _open(self, key: object, path: str, now: float) -> None:
        owner = self.tests.nodeid
        if owner is None:
            return  # outside any test (a session fixture at collection time): nobody to show it on
        counts = self.tests.count(owner)
        if counts is None or counts.connections >= self.limits.max_connections:
            return
        counts.connections += 1
        if len(self.conns) >= MAX_OPEN:
            self.conns.pop(next(iter(self.conns)))
        self.serial += 1
        _, _, query = path.partition("?")
        for name, value in parse_qsl(query):  # a token in the URL (query transport) is hidden like a header's
            if name.lower() in QUERY_CREDENTIALS:
                self.redactor.add(value)
        conn = self.conns[key] = _Conn(self.serial, counts.connections, owner, now, self.redactor.text(path))
        self.send({"type": "ws_connect", "nodeid": owner, "conn": conn.id, "n": conn.n, "path": conn.path})

    def _learn(self, name: str, value: str) -> None:
        """A credential our test sends: hidden from now on, in every form (before anything is sent on)."""
        lower = name.lower()
        if lower in ("authorization", "proxy-authorization"):
            self.redactor.add(value.strip().partition(" ")[2].strip() or value.strip())
        elif lower == "sec-websocket-protocol":
            for offered in (v.strip() for v in value.split(",")):
                token = subprotocol_token(offered)
                if token:
                    self.redactor.add(token)
                    self.redactor.add(offered[4:])

    def _answer(self, conn: _Conn, now: float) -> None:
        conn.answered = True
        request = _first(conn.request)
        response = _first(conn.response)
        offered = request.get("sec-websocket-protocol")
        echoed = response.get("sec-websocket-protocol")
        transport = []
        if offered and any(subprotocol_token(v.strip()) for v in offered.split(",")):
            transport.append("subprotocol")
        if request.get("authorization", "").lower().startswith("bearer "):
            transport.append("header")
        if "token=" in conn.path:
            transport.append("query")
        host = request.get("host", "")
        if conn.status == 101:
            conn.opened_at = now
        self.send({"type": "ws_response", "nodeid": self._whose(conn), "conn": conn.id, "status": conn.status,
                   "reason": conn.reason, "url": f"ws://{host}{conn.path}" if host else conn.path,
                   "request_headers": self._headers(conn.request), "response_headers": self._headers(conn.response),
                   "offered": self.redactor.text(offered) if offered else None,
                   "echoed": self.redactor.text(echoed) if echoed else None,
                   "token_sent": bool(transport), "transport": transport, "date": response.get("date"),
                   "location": self.redactor.text(response.get("location", "")) or None,
                   "ms": round((now - conn.started) * 1000.0, 1)})

    def _headers(self, items: list[tuple[str, str]]) -> dict[str, str]:
        shown = self.redactor.headers(items)
        return {k[:HEADER_CHARS]: v[:HEADER_CHARS] for k, v in shown.items()}

    # --- frames and the close -----------------------------------------------------------------------------------
    def _frame(self, conn: _Conn, arrow: str, frame: Any, now: float) -> None:
        opcode = getattr(getattr(frame, "opcode", None), "name", "")
        data = bytes(getattr(frame, "data", b""))
        fin = bool(getattr(frame, "fin", True))
        if opcode == "CLOSE":
            code, reason = _close_payload(data)
            if arrow == "<" and conn.close_rcvd is None:
                conn.close_rcvd = (code, reason)
            elif arrow == ">" and conn.close_sent is None:
                conn.close_sent = (code, reason)
            if not conn.first_close:
                conn.first_close, conn.close_at = arrow, now
            return
        if opcode in ("TEXT", "BINARY"):
            if fin:
                self._message(conn, arrow, opcode, [data], len(data), now)
            else:
                conn.parts[arrow] = (opcode, [data], len(data))
        elif opcode == "CONT" and arrow in conn.parts:
            kind, chunks, size = conn.parts[arrow]
            kept = sum(len(c) for c in chunks)
            if kept < self.limits.frame_bytes:
                chunks.append(data[:self.limits.frame_bytes - kept])
            conn.parts[arrow] = (kind, chunks, size + len(data))
            if fin:
                del conn.parts[arrow]
                self._message(conn, arrow, kind, chunks, size + len(data), now)

    def _message(self, conn: _Conn, arrow: str, opcode: str, chunks: list[bytes], size: int, now: float) -> None:
        whose = self._whose(conn)
        counts = self.tests.count(whose)
        if counts is None:
            return  # between tests, after the one that opened it ended
        direction = "in" if arrow == "<" else "out"
        if direction == "in":
            counts.frames_in += 1
        else:
            counts.frames_out += 1
        if counts.frames_sent >= self.limits.max_frames:
            counts.dropped += 1
            return
        counts.frames_sent += 1
        data = b"".join(chunks)[:self.limits.frame_bytes]
        msg: dict[str, Any] = {"type": "ws_frame", "nodeid": whose, "conn": conn.id, "dir": direction,
                               "ms": round((now - (conn.opened_at or now)) * 1000.0, 2), "size": size,
                               "truncated": size > len(data)}
        if opcode == "TEXT":
            msg["text"] = self.redactor.text(data.decode("utf-8", "replace"))
        else:
            msg["b64"] = base64.b64encode(self.redactor.bytes_(data)).decode("ascii")
        self.send(msg)

    def _ended(self, key: object, conn: _Conn, now: float) -> None:
        self.conns.pop(key, None)
        whose = self._whose(conn)
        if self.tests.count(whose) is None:
            return
        if conn.opened_at is None:
            if conn.status is None:  # TCP closed before any answer to the upgrade
                self.send({"type": "ws_failed", "nodeid": whose, "conn": conn.id, "error": "dropped",
                           "ms": round((now - conn.started) * 1000.0, 1)})
            return
        rcvd, sent = conn.close_rcvd, conn.close_sent
        if rcvd is not None:
            code, reason = rcvd
        elif sent is not None and sent[0] != 1000:  # we ended it for a reason of our own
            code, reason = sent
        else:
            code, reason = 1006, ""
        by = {"<": "server", ">": "client"}.get(conn.first_close, "none")
        at = conn.close_at if conn.close_at is not None else now
        self.send({"type": "ws_close", "nodeid": whose, "conn": conn.id, "code": code,
                   "reason": self.redactor.text(reason), "by": by, "received": rcvd is not None,
                   "after_ms": round((at - conn.opened_at) * 1000.0, 1)})


class HttpTap(logging.Handler):
    """httpx's `HTTP Request: GET url "HTTP/1.1 200 OK"` INFO line -> an `http` message for the running test."""

    def __init__(self, send: Send, tests: RunningTests, redactor: Redactor, limits: Limits) -> None:
        super().__init__(logging.INFO)
        self.send, self.tests, self.redactor, self.limits = send, tests, redactor, limits

    def emit(self, record: logging.LogRecord) -> None:
        try:
            args = record.args if isinstance(record.args, tuple) else ()
            nodeid = self.tests.nodeid
            if not str(record.msg).startswith("HTTP Request:") or len(args) != 5 or nodeid is None:
                return
            counts = self.tests.count(nodeid)
            if counts is None or counts.http >= self.limits.max_http:
                return
            counts.http += 1
            method, url, _version, status, reason = args
            self.send({"type": "http", "nodeid": nodeid, "phase": self.tests.phase, "method": str(method),
                       "url": self.redactor.text(str(url))[:2000], "status": int(str(status)),
                       "reason": str(reason)})
        except Exception:
            pass


def _first(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        out.setdefault(name.lower(), value)
    return out


def _close_payload(data: bytes) -> tuple[int, str]:
    """A close frame's code and reason (1005 for an empty payload, as websockets reports it)."""
    if len(data) < 2:
        return 1005, ""
    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")


def install(send: Send, tests: RunningTests, redactor: Redactor, limits: Limits) -> Callable[[], None]:
    """Attach the taps; returns the function that detaches them and restores what it changed.

    A logger whose records were not produced at the level the tap needs is set to it with propagate off, so
    pytest's log capture (and the user's handlers) do not get a flood they never asked for; a logger already
    producing them is left as it is."""
    undo: list[Callable[[], None]] = []
    for name, handler in (("websockets.client", WsTap(send, tests, redactor, limits)),
                          ("httpx", HttpTap(send, tests, redactor, limits))):
        logger = logging.getLogger(name)
        level, propagate = logger.level, logger.propagate
        if not logger.isEnabledFor(handler.level):
            logger.setLevel(handler.level)
            logger.propagate = False
        logger.addHandler(handler)

        def restore(logger: logging.Logger = logger, handler: logging.Handler = handler, level: int = level,
                    propagate: bool = propagate) -> None:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

        undo.append(restore)

    def uninstall() -> None:
        for restore in undo:
            restore()

    return uninstall
