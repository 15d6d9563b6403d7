"""An HTTP answer is bounded by its DECODED size across every content-coding layer, and a bomb is named a bomb.

Loopback servers (127.0.0.1, port 0) serve gzip-over-gzip and deflate bombs, legitimate stacked codings, codings
not decoded here, and bodies past the wire cap. Most tests drive `probes.net.bounded_request` with an
httpx.AsyncClient; one runs the engine (`run_queue`) with an http step only, and bounds the process's peak memory.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import resource
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache

import httpx
import pytest
import yaml

from probes.bus import EventBus
from probes.config import parse_config, resolve_target
from probes.events import Event, HttpExchange, StageFinished
from probes.net import HTTP_BODY_MAX, HTTP_WIRE_MAX, BodyBomb, BodyTooLarge, bounded_request
from probes.runner import RunOptions, run_queue

MIB = 1 << 20
BOMB_MIB = 1024  # the bombs inflate to 1 GiB of zeros
RSS_GROWTH_MAX = 200 * MIB  # the process's peak memory may grow this much while a bomb is read, no more
LIMIT = 10.0  # seconds: bounded_request's deadline where the deadline is not under test
ENV = {"JWT_SECRET_KEY": "k" * 32}


# --- bodies ---------------------------------------------------------------------------------------------------

@cache
def zeros_stream(mib: int, container: str) -> bytes:
    """`mib` MiB of zeros compressed as "gzip", "zlib" or "raw" deflate, built without compressing them all:
    after the first sync-flushed MiB, every further MiB compresses to the same bytes, so they are repeated."""
    zeros = bytes(MIB)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = c.compress(zeros) + c.flush(zlib.Z_SYNC_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_SYNC_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_SYNC_FLUSH) == again  # the repetition holds
    raw = first + again * (mib - 1) + c.flush()
    if container == "raw":
        return raw
    crc, adler = 0, 1
    for _ in range(mib):
        crc, adler = zlib.crc32(zeros, crc), zlib.adler32(zeros, adler)
    if container == "gzip":
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw + struct.pack("<II", crc, (mib * MIB) & 0xFFFFFFFF)
    assert container == "zlib"
    return b"\x78\xda" + raw + struct.pack(">I", adler)


def encode(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(data, mtime=0)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "raw-deflate":  # what some servers send as "deflate"
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    raise AssertionError(coding)


def encode_all(data: bytes, codings: list[str]) -> bytes:
    """Codings applied in the order listed, as Content-Encoding lists them."""
    for coding in codings:
        data = encode(data, coding)
    return data


@cache
def double_gzip_bomb() -> bytes:
    return encode(zeros_stream(BOMB_MIB, "gzip"), "gzip")


LEGIT = json.dumps({"status": "ok", "version": "1.2.3",
                    "checks": [{"name": f"dep-{i}", "ok": True, "latency_ms": i * 7 % 113} for i in range(400)]},
                   ).encode()


# --- a loopback server ----------------------------------------------------------------------------------------

@dataclass
class Answer:
    body: bytes = b""
    content_encoding: str | None = None
    status: int = 200
    trickle: bool = False  # chunked: the body's first byte at once, then one more every 50 ms, forever


@dataclass
class Server:
    routes: dict[str, Answer]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[str] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("ascii")
            self.requests.append(path)
            answer = self.routes.get(path, Answer(b"not here", status=404))
            lines = [f"HTTP/1.1 {answer.status} X", "Content-Type: application/json", "Connection: close"]
            if answer.content_encoding is not None:
                lines.append(f"Content-Encoding: {answer.content_encoding}")
            if answer.trickle:
                writer.write(("\r\n".join(lines + ["Transfer-Encoding: chunked"]) + "\r\n\r\n").encode())
                for byte in answer.body:
                    writer.write(b"1\r\n" + bytes([byte]) + b"\r\n")
                    await writer.drain()
                    try:
                        await asyncio.wait_for(self.stop.wait(), 0.05)  # the trickle's pace; ends on teardown
                        return
                    except TimeoutError:
                        pass
                await self.stop.wait()
                return
            lines.append(f"Content-Length: {len(answer.body)}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + answer.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client stopped reading: what a bounded reader does
        finally:
            writer.transport.abort()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Answer]], Awaitable[Server]]]:
    servers: list[tuple[Server, asyncio.Server]] = []

    async def start(routes: dict[str, Answer]) -> Server:
        server = Server(routes)
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.port = srv.sockets[0].getsockname()[1]
        servers.append((server, srv))
        return server

    yield start
    for server, srv in servers:
        server.stop.set()
        srv.close()
        await srv.wait_closed()


async def fetch(url: str, limit: float = LIMIT) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await bounded_request(http, "GET", url, limit)


def peak_rss() -> int:
    """The process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the bodies themselves ------------------------------------------------------------------------------------

@pytest.mark.parametrize("container", ["gzip", "zlib", "raw"])
def test_zero_streams_are_valid(container: str) -> None:
    wbits = {"gzip": 31, "zlib": 15, "raw": -15}[container]
    d = zlib.decompressobj(wbits)
    assert d.decompress(zeros_stream(3, container)) + d.flush() == bytes(3 * MIB)
    assert d.eof and not d.unused_data


def test_the_double_gzip_bomb_is_tiny() -> None:
    bomb = double_gzip_bomb()
    assert len(bomb) < 64 * 1024  # a few KiB on the wire for 1 GiB decoded
    inner = gzip.decompress(bomb)
    assert inner == zeros_stream(BOMB_MIB, "gzip")


# --- bounded_request ------------------------------------------------------------------------------------------

async def test_double_gzip_bomb_is_named_and_bounded(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/bomb": Answer(double_gzip_bomb(), "gzip, gzip")})
    before = peak_rss()
    with pytest.raises(BodyBomb) as caught:
        await fetch(server.url("/bomb"))
    growth = peak_rss() - before
    print(f"double-gzip bomb: peak RSS grew {growth / MIB:.1f} MiB; {caught.value}")
    exc = caught.value
    assert isinstance(exc, BodyTooLarge) and exc.status == 200
    text = str(exc)
    assert text.startswith("decompression bomb: ")
    assert "on the wire inflates past 1 MiB (Content-Encoding: gzip, gzip)" in text
    assert exc.wire < 64 * 1024 and exc.codings == ["gzip", "gzip"]
    assert growth < RSS_GROWTH_MAX


@pytest.mark.parametrize("container", ["zlib", "raw"])
async def test_single_deflate_bomb(serve: Callable[..., Awaitable[Server]], container: str) -> None:
    bomb = zeros_stream(BOMB_MIB, container)
    assert len(bomb) > 1000 * 1024  # about a MiB on the wire: the bomb is caught from its first KiBs
    server = await serve({"/bomb": Answer(bomb, "deflate")})
    with pytest.raises(BodyBomb, match=r"^decompression bomb: .* on the wire inflates past 1 MiB "
                                       r"\(Content-Encoding: deflate\)$"):
        await fetch(server.url("/bomb"))


@pytest.mark.parametrize("codings", [["gzip", "gzip"], ["gzip", "deflate"], ["raw-deflate", "gzip"],
                                     ["deflate", "deflate", "gzip", "gzip"], ["gzip"], []])
async def test_legitimate_stacked_codings_decode(serve: Callable[..., Awaitable[Server]],
                                                 codings: list[str]) -> None:
    header = ", ".join("deflate" if c == "raw-deflate" else c for c in codings)
    server = await serve({"/health": Answer(encode_all(LEGIT, codings), header or None)})
    resp = await fetch(server.url("/health"))
    assert resp.status_code == 200
    assert resp.content == LEGIT
    assert resp.json()["version"] == "1.2.3"
    assert "content-encoding" not in resp.headers
    assert resp.headers["content-length"] == str(len(LEGIT))  # httpx's own, for the decoded body
    assert resp.headers["content-type"] == "application/json"


async def test_multi_member_gzip_and_identity_decode(serve: Callable[..., Awaitable[Server]]) -> None:
    half = len(LEGIT) // 2
    body = gzip.compress(LEGIT[:half]) + gzip.compress(LEGIT[half:])  # RFC 1952: members concatenate
    server = await serve({"/health": Answer(body, "identity, GZIP")})
    assert (await fetch(server.url("/health"))).content == LEGIT


async def test_body_of_exactly_the_cap_is_read(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/full": Answer(encode_all(bytes(HTTP_BODY_MAX), ["gzip", "gzip"]), "gzip, gzip")})
    assert (await fetch(server.url("/full"))).content == bytes(HTTP_BODY_MAX)


@pytest.mark.parametrize(("coding", "unknown"), [("br", "br"), ("zstd", "zstd"), ("gzip, compress", "compress")])
async def test_coding_not_decoded_here_fails_clearly(serve: Callable[..., Awaitable[Server]], coding: str,
                                                     unknown: str) -> None:
    server = await serve({"/health": Answer(b"\x0b\x02\x80{}\x03", coding)})
    with pytest.raises(httpx.DecodingError) as caught:
        await fetch(server.url("/health"))
    assert f"Content-Encoding: {coding}: {unknown} is not decoded here" in str(caught.value)


async def test_an_empty_body_needs_no_decoding(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/empty": Answer(b"", "br"), "/gz": Answer(b"", "gzip")})
    assert (await fetch(server.url("/empty"))).content == b""
    assert (await fetch(server.url("/gz"))).content == b""


async def test_too_many_layers_fail(serve: Callable[..., Awaitable[Server]]) -> None:
    codings = ["gzip"] * 5
    server = await serve({"/deep": Answer(encode_all(b"{}", codings), ", ".join(codings))})
    with pytest.raises(httpx.DecodingError, match="5 codings, more than the 4 decoded here"):
        await fetch(server.url("/deep"))


async def test_corrupt_coding_is_a_decoding_error(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/bad": Answer(b"this is not gzip at all", "gzip")})
    with pytest.raises(httpx.DecodingError, match="Content-Encoding gzip: "):
        await fetch(server.url("/bad"))


async def test_a_merely_large_coded_answer_is_too_large_not_a_bomb(serve: Callable[..., Awaitable[Server]]) -> None:
    text = base64.b64encode(os.urandom(3 * MIB // 2))  # 2 MiB that gzip shrinks by a quarter only
    server = await serve({"/big": Answer(encode(text, "gzip"), "gzip")})
    with pytest.raises(BodyTooLarge) as caught:
        await fetch(server.url("/big"))
    assert not isinstance(caught.value, BodyBomb)
    assert str(caught.value).startswith("answer larger than 1 MiB once decoded (HTTP 200, ")


async def test_wire_bytes_are_capped_too(serve: Callable[..., Awaitable[Server]]) -> None:
    junk = encode(b"{}", "gzip") + b"\0" * (HTTP_WIRE_MAX + MIB)  # decodes to 2 bytes; the rest is ignored
    plain = b" " * (HTTP_BODY_MAX + 1)
    server = await serve({"/junk": Answer(junk, "gzip"), "/plain": Answer(plain)})
    with pytest.raises(BodyTooLarge, match=r"^answer larger than 2 MiB on the wire \(HTTP 200\)"):
        await fetch(server.url("/junk"))
    with pytest.raises(BodyTooLarge, match=r"^answer larger than 1024 KiB \(HTTP 200\)"):
        await fetch(server.url("/plain"))


async def test_a_trickling_coded_body_still_times_out(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/slow": Answer(encode(LEGIT, "gzip"), "gzip", trickle=True)})
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(httpx.ReadTimeout, match=r"^no complete answer within 0.5 s$"):
        await fetch(server.url("/slow"), limit=0.5)
    assert loop.time() - start < 0.5 + 1.5  # the whole exchange's deadline, not a per-read one


# --- through the engine ---------------------------------------------------------------------------------------

async def test_engine_names_the_bomb(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve({"/health": Answer(double_gzip_bomb(), "gzip, gzip")})
    doc = {
        "default_target": "loopback",
        "targets": {"loopback": {"base_url": f"http://127.0.0.1:{server.port}"}},
        "protocol": {"health_paths": ["/health"]},
        "timeouts": {"http": 5, "connect": 2, "ready": 1, "agent": 1, "response": 1, "close": 1},
        "probes": [{"id": "bomb", "name": "health against a bomb", "priority": 0,
                    "steps": [{"step": "http", "name": "health"}]}],
    }
    config = parse_config(yaml.safe_dump(doc, sort_keys=False), "test_http_bounds.yaml")
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    before = peak_rss()
    await asyncio.wait_for(run_queue(config, resolve_target(config, "loopback", env=ENV), bus,
                                     RunOptions(env=ENV)), 30)
    growth = peak_rss() - before
    finished = next(e for e in events if isinstance(e, StageFinished) and e.probe_id == "bomb"
                    and e.stage == "health")
    print(f"engine, double-gzip bomb: peak RSS grew {growth / MIB:.1f} MiB; {finished.detail}")
    assert server.requests == ["/health"]
    assert finished.status == "fail"
    assert finished.detail.startswith("GET /health: decompression bomb: ")
    assert "inflates past 1 MiB (Content-Encoding: gzip, gzip)" in finished.detail
    assert "timeout" not in finished.detail and "within" not in finished.detail
    assert finished.evidence is not None and finished.evidence.error == "bomb"
    assert not finished.evidence.timeout
    exchange = next(e for e in events if isinstance(e, HttpExchange) and e.probe_id == "bomb")
    assert exchange.error.startswith("bomb: decompression bomb: ") and exchange.status == 200
    assert growth < RSS_GROWTH_MAX
