"""The network's edges, shared by every step: the bounded HTTP exchange, error categories, loopback hosts, and the
server's clock as its Date header tells it.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx

HTTP_BODY_MAX = 1 << 20  # an HTTP answer (health, auth endpoint, echo) is not read past this
BODY_KEEP = 2048  # bytes of an answer's body kept as evidence
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_DECODED_AWAY = frozenset({"content-encoding", "transfer-encoding", "content-length"})  # body is stored decoded


def is_loopback(host: str | None) -> bool:
    return (host or "").lower() in LOOPBACK


class HostNotAllowed(Exception):
    """A probe tried to reach a host outside the selected target."""


class BodyTooLarge(Exception):
    def __init__(self, status: int, limit: int, message: str | None = None) -> None:
        super().__init__(message or f"answer larger than {limit // 1024} KiB (HTTP {status}); not read further")
        self.status = status


class BodyBomb(BodyTooLarge):
    """A content-coded answer that inflates past its cap from a tiny wire size (BOMB_RATIO or more)."""

    def __init__(self, status: int, limit: int, wire: int, codings: list[str]) -> None:
        super().__init__(status, limit, f"decompression bomb: {size_words(wire)} on the wire inflates past "
                                        f"{size_words(limit)} (Content-Encoding: {', '.join(codings)})")
        self.wire = wire
        self.codings = codings


HTTP_WIRE_MAX = 2 * HTTP_BODY_MAX  # raw (still content-coded) bytes of an answer read at most
CODINGS_MAX = 4  # content-coding layers decoded at most; more is no answer we read
BOMB_RATIO = 100  # decoded ÷ wire bytes from which an answer past its cap is a bomb (gzip peaks near 1032)
_LAYER_MAX = 2 * HTTP_BODY_MAX  # an inner layer's output (the next layer's input), stacked codings
_PIECE = 64 * 1024  # a decoder yields at most this many bytes per step
_ZLIB_HEADER = 2  # bytes that tell zlib-wrapped from raw deflate, or start a further gzip member
_GZIP_MAGIC = b"\x1f\x8b"
_DECODABLE = ("gzip", "x-gzip", "deflate")  # br and zstd: httpx decodes neither here (no brotli/zstandard)


def size_words(n: int) -> str:
    """A byte count for a sentence: "1 MiB", "2048 KiB" past 10 KiB, "1.7 KiB" below."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{round(n / 1024)} KiB" if n >= 10 * 1024 else f"{n / 1024:.1f} KiB"


class _Overflow(Exception):
    def __init__(self, layer: _Inflater) -> None:
        super().__init__(layer.coding)
        self.layer = layer


class _Inflater:
    """One gzip or deflate layer, decoded incrementally: at most `cap` + 1 bytes out in all, _PIECE per step.

    zlib's `max_length` bounds each step's output; what it has not consumed yet waits in `unconsumed_tail`, so a
    bomb never inflates further than asked. Like httpx: deflate is zlib-wrapped or raw (the first two bytes tell),
    bytes after the stream's end are ignored, and a truncated stream is not an error; unlike httpx, a further
    gzip member is decoded too (RFC 1952 §2.2).
    """

    def __init__(self, coding: str, cap: int) -> None:
        self.coding = coding
        self.cap = cap
        self.produced = 0
        self.consumed = 0  # input bytes handed to zlib so far (the rest waits)
        self._gzip = coding in ("gzip", "x-gzip")
        self._zlib: zlib._Decompress | None = None  # the decompressobj of the stream (gzip member) under way
        self._held = b""  # input held until _ZLIB_HEADER bytes tell what starts
        self._streams = 0  # streams (gzip members) started
        self._ignoring = False  # past the end: the rest of the input is dropped

    def _start(self, head: bytes) -> zlib._Decompress | None:
        if self._gzip:
            if self._streams and head[:2] != _GZIP_MAGIC:
                return None
            return zlib.decompressobj((zlib.MAX_WBITS | 32) if not self._streams else (zlib.MAX_WBITS | 16))
        if self._streams:
            return None
        cmf, flg = head[0], head[1]
        wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        buf = data
        while buf and not self._ignoring:
            if self._zlib is None:
                buf = self._held + buf
                if len(buf) < _ZLIB_HEADER:
                    self._held = buf
                    return
                self._held = b""
                self._zlib = self._start(buf)
                if self._zlib is None:
                    self._ignoring = True
                    return
                self._streams += 1
            try:
                out, failure = self._zlib.decompress(buf, min(_PIECE, self.cap - self.produced + 1)), ""
            except zlib.error as exc:
                out, failure = b"", str(exc)
            if failure:  # raised outside the except: zlib's words once, not again as the context
                raise httpx.DecodingError(f"Content-Encoding {self.coding}: {failure}")
            if self._zlib.eof:
                rest, self._zlib = self._zlib.unused_data, None
            else:
                rest = self._zlib.unconsumed_tail
                if not out and len(rest) == len(buf):
                    raise httpx.DecodingError(f"Content-Encoding {self.coding}: the decoder makes no progress")
            self.consumed += len(buf) - len(rest)
            buf = rest
            if out:
                self.produced += len(out)
                if self.produced > self.cap:
                    raise _Overflow(self)
                yield out

    def finish(self) -> Iterator[bytes]:
        if self._zlib is not None:
            try:
                out, failure = self._zlib.flush(), ""  # its input is all consumed: what is left is at most a window
            except zlib.error as exc:
                out, failure = b"", str(exc)
            if failure:
                raise httpx.DecodingError(f"Content-Encoding {self.coding}: {failure}")
            if out:
                self.produced += len(out)
                if self.produced > self.cap:
                    raise _Overflow(self)
                yield out


class _BodyReader:
    """An answer's body from its raw (wire) bytes: content codings decoded layer by layer, every layer bounded.

    At most HTTP_WIRE_MAX raw bytes are taken, and no layer produces more than its cap + 1 bytes: HTTP_BODY_MAX
    for the decoded body, _LAYER_MAX for an inner one, whatever the ratio or number of layers (CODINGS_MAX).
    """

    def __init__(self, status: int, content_encoding: list[str]) -> None:
        self.status = status
        self.codings = [c.strip().lower() for c in content_encoding]
        self.codings = [c for c in self.codings if c and c != "identity"]
        undo = [c for c in reversed(self.codings) if c in _DECODABLE]  # the last coding applied, first
        self.layers = [_Inflater(c, HTTP_BODY_MAX if i == len(undo) - 1 else _LAYER_MAX) for i, c in enumerate(undo)]
        self.wire = 0
        self.body = bytearray()

    def _check_codings(self) -> None:
        shown = ", ".join(self.codings)
        if len(self.codings) > CODINGS_MAX:
            raise httpx.DecodingError(f"Content-Encoding: {shown}: {len(self.codings)} codings, more than the "
                                      f"{CODINGS_MAX} decoded here; answer not read")
        unknown = [c for c in self.codings if c not in _DECODABLE]
        if unknown:
            raise httpx.DecodingError(f"Content-Encoding: {shown}: {', '.join(dict.fromkeys(unknown))} is not "
                                      f"decoded here (only {', '.join(_DECODABLE)}); answer not read")

    def _push(self, index: int, data: bytes) -> None:
        if index == len(self.layers):
            self.body += data
            if len(self.body) > HTTP_BODY_MAX:  # no coding: the wire bytes themselves
                raise BodyTooLarge(self.status, HTTP_BODY_MAX)
            return
        for piece in self.layers[index].feed(data):
            self._push(index + 1, piece)

    def feed(self, raw: bytes) -> None:
        if not raw:
            return
        if not self.wire:
            self._check_codings()  # only a body needs decoding (HEAD, 204 and 304 carry codings, no body)
        self.wire += len(raw)
        if self.wire > HTTP_WIRE_MAX:
            raise BodyTooLarge(self.status, HTTP_WIRE_MAX, f"answer larger than {size_words(HTTP_WIRE_MAX)} on "
                               f"the wire (HTTP {self.status}); not read further")
        try:
            self._push(0, raw)
        except _Overflow as exc:
            raise self._too_large(exc.layer) from None

    def finish(self) -> bytes:
        try:
            for i, layer in enumerate(self.layers):
                for piece in layer.finish():
                    self._push(i + 1, piece)
        except _Overflow as exc:
            raise self._too_large(exc.layer) from None
        return bytes(self.body)

    def _too_large(self, layer: _Inflater) -> BodyTooLarge:
        wire = self.layers[0].consumed if self.layers else self.wire
        if layer.produced >= BOMB_RATIO * max(wire, 1):
            return BodyBomb(self.status, layer.cap, wire, self.codings)
        return BodyTooLarge(self.status, layer.cap, f"answer larger than {size_words(layer.cap)} once decoded "
                            f"(HTTP {self.status}, {size_words(wire)} on the wire, Content-Encoding: "
                            f"{', '.join(self.codings)}); not read further")


async def bounded_request(http: httpx.AsyncClient, method: str, url: str, limit: float,
                          **kwargs: Any) -> httpx.Response:
    """One HTTP exchange, whole answer within `limit` seconds and at most HTTP_BODY_MAX bytes of decoded body.

    httpx's timeout bounds each read, not the exchange: a server trickling an endless body would hold the stage
    forever. The deadline covers the whole exchange (reported as httpx.ReadTimeout, like httpx's own timeouts).
    The body is read raw and its content codings decoded here, every layer bounded (httpx's own decoder inflates
    a whole chunk at once: gzip over gzip reaches gigabytes before any cap applies). Past a cap: BodyTooLarge,
    or BodyBomb when a small wire size inflates past it; a coding not decoded here: httpx.DecodingError.
    """
    answered = False
    try:
        async with asyncio.timeout(limit):
            async with http.stream(method, url, timeout=limit, **kwargs) as resp:
                answered = True
                reader = _BodyReader(resp.status_code, resp.headers.get_list("content-encoding", split_commas=True))
                async for chunk in resp.aiter_raw():
                    reader.feed(chunk)
                body = reader.finish()
                # The raw bytes: a header value with obs-text (legal, RFC 9110 §5.5) survives as it came.
                kept = [(k, v) for k, v in resp.headers.raw if k.decode("latin-1").lower() not in _DECODED_AWAY]
                return httpx.Response(resp.status_code, headers=kept, content=body, request=resp.request)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no {'complete ' if answered else ''}answer within {limit:g} s") from None


def first_header(headers: Any, name: str) -> str | None:
    """The first value of a header, tolerating servers that send it twice."""
    values = headers.get_all(name) if hasattr(headers, "get_all") else [headers.get(name)]
    return values[0] if values and values[0] is not None else None


def causes(exc: BaseException) -> list[BaseException]:
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


def os_error(exc: OSError) -> tuple[str, str]:
    """(category, words) for a socket-level error."""
    if isinstance(exc, ssl.SSLError):
        return "tls", f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return "dns", f"DNS lookup failed: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "reset", "connection reset by peer"
    return "os", f"{type(exc).__name__}: {exc.strerror or exc}"


def http_error(exc: httpx.HTTPError, timeout: float) -> tuple[str, str]:
    """(category, words) for an httpx error, looking through its chain for the socket-level cause."""
    if isinstance(exc, httpx.TimeoutException):
        text = str(exc)
        return "timeout", text if text.startswith("no ") else f"no answer within {timeout:g} s"
    chain = causes(exc)
    for kind in (ssl.SSLError, socket.gaierror, ConnectionRefusedError, ConnectionResetError):
        found = next((c for c in chain if isinstance(c, kind)), None)
        if isinstance(found, OSError):
            return os_error(found)
    text = " / ".join(dict.fromkeys(str(c) for c in chain if str(c))) or type(exc).__name__
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


def ms_since(start: float) -> float:
    """Milliseconds since a `time.monotonic()` reading, to 0.1 ms."""
    return round((time.monotonic() - start) * 1000.0, 1)


NOFILE_MARGIN = 256  # descriptors beside the sockets asked for: the loop, HTTP, the recording, logs


def open_files_room(sessions: int) -> str | None:
    """Make room for `sessions` sockets: raise this process's open-file soft limit (RLIMIT_NOFILE) to
    sessions + NOFILE_MARGIN when it is lower, up to the hard limit. None when there is room (or the platform has no
    such limit); else one line saying that the hard limit stops it."""
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit to raise
        return None
    need = sessions + NOFILE_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    if hard != resource.RLIM_INFINITY and hard < need:
        return (f"{sessions:,} sessions need {need:,} open files, but this process's hard limit is {hard:,} "
                f"(ulimit -Hn): raise it (limits.conf, systemd LimitNOFILE=) or hold fewer sessions")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError) as exc:
        return f"{sessions:,} sessions need {need:,} open files; raising the soft limit from {soft:,} failed: {exc}"
    return None


def open_files_headroom(limit: int = 65536) -> None:
    """Best effort, for a server that cannot know how many will connect (the sandbox): the open-file soft limit
    raised towards `limit`, never past the hard one."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
