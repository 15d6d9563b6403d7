"""The network's edges, shared by every step: the bounded HTTP exchange, error categories, loopback hosts, and the
server's clock as its Date header tells it.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
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
