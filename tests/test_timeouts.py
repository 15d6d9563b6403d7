"""Every step kind announces a limit (StageStarted.timeout_s) and enforces exactly that limit.

Each test runs one probe against a loopback server that goes silent at the point under test, with a short limit
set one of two ways: (a) the target's `timeouts.<name>` (the top-level value is much longer, so the target's
override has to win), or (b) the step's own `timeout` (the target's value is much longer: the step's must win).
The stage must announce the limit in effect, fail, take about that long, and the whole run must end well before
any library default (websockets' 10 s open/close timeouts, httpx's 5 s).

Only the public entry points are used: config text, `run_queue` and the events it publishes. Every run is capped
(RUN_CAP) so an engine that hangs fails the test instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from websockets.asyncio.server import ServerConnection, serve

from probes.bus import EventBus
from probes.config import Config, parse_config, resolve_target
from probes.events import Event, ProbeFinished, RunFinished, StageFinished, StageStarted
from probes.runner import RunOptions, run_queue

RUN_CAP = 15.0  # seconds: a run still going after this is a hang, reported as a failure
SLACK_MS = 1500.0  # a stage may end this much after its limit (a loaded 2-core machine)
RUN_SLACK_S = 2.5  # the whole run: the limit under test plus this (setup steps, teardown)
LONG = 4.0  # seconds: every limit that must NOT be the one in effect
ENV = {"JWT_SECRET_KEY": "k" * 32}
TARGET = "loopback"
PROBE = "timeouts"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

BASE_TIMEOUTS = {"http": LONG, "connect": LONG, "ready": LONG, "agent": LONG, "response": LONG, "close": LONG}
TEARDOWN_CLOSE = 1.0  # the target's close timeout unless under test: a probe's teardown stays quick

AUTH = {"step": "auth", "name": "auth"}  # mint mode: HS256 with $JWT_SECRET_KEY from RunOptions.env
CONNECT = {"step": "connect", "name": "connect"}
HANDSHAKE = {"step": "expect", "name": "handshake"}
MESSAGE = {"step": "send", "name": "message"}


# --- config and run -------------------------------------------------------------------------------------------

def make_config(port: int, steps: list[dict[str, Any]], *, timeouts: dict[str, float] | None = None,
                auth: dict[str, Any] | None = None) -> Config:
    """Config text for one probe against 127.0.0.1:port; `timeouts` are the target's own overrides."""
    target: dict[str, Any] = {"base_url": f"http://127.0.0.1:{port}",
                              "timeouts": {"close": TEARDOWN_CLOSE, **(timeouts or {})}}
    if auth:
        target["auth"] = auth
    doc = {
        "default_target": TARGET,
        "targets": {TARGET: target},
        "protocol": {"health_paths": ["/health"]},
        "timeouts": BASE_TIMEOUTS,
        "probes": [{"id": PROBE, "name": "timeout under test", "priority": 0, "steps": steps}],
    }
    return parse_config(yaml.safe_dump(doc, sort_keys=False), "test_timeouts.yaml")


@dataclass
class Run:
    events: list[Event] = field(default_factory=list)
    wall_s: float = 0.0
    hung: bool = False  # still running after RUN_CAP (cancelled)

    def started(self, stage: str) -> StageStarted:
        found = [e for e in self.events if isinstance(e, StageStarted) and e.probe_id == PROBE and e.stage == stage]
        assert found, f"stage {stage!r} never started; events: {self.events}"
        return found[0]

    def finished(self, stage: str) -> StageFinished | None:
        return next((e for e in self.events if isinstance(e, StageFinished) and e.probe_id == PROBE
                     and e.stage == stage), None)

    def stage_results(self) -> list[tuple[str, str, float, str]]:
        return [(e.stage, e.status, e.duration_ms, e.detail) for e in self.events
                if isinstance(e, StageFinished) and e.probe_id == PROBE]

    def probe_ms(self) -> float | None:
        return next((e.duration_ms for e in self.events if isinstance(e, ProbeFinished) and e.probe_id == PROBE),
                    None)


async def run_probe(config: Config) -> Run:
    bus = EventBus()
    run = Run()
    bus.subscribe(run.events.append)
    target = resolve_target(config, TARGET, env=ENV)
    start = time.monotonic()
    try:
        await asyncio.wait_for(run_queue(config, target, bus, RunOptions(env=ENV)), RUN_CAP)
    except TimeoutError:
        run.hung = True
    run.wall_s = time.monotonic() - start
    return run


def check(run: Run, stage: str, limit: float, label: str) -> None:
    """The stage announced `limit`, failed, took about `limit`, and the run ended well before any default.
    Every violation is listed, not only the first."""
    started = run.started(stage)
    finished = run.finished(stage)
    measured = (f"{label}: announced {started.timeout_s} s, limit in effect {limit:g} s; stage "
                f"{finished.status if finished else 'never finished'} after "
                f"{finished.duration_ms if finished else '-'} ms; probe {run.probe_ms()} ms; run {run.wall_s:.2f} s"
                + (f" (hung: cancelled after {RUN_CAP:g} s)" if run.hung else ""))
    print(measured)
    stages = run.stage_results()
    earlier = run.events[:run.events.index(started)]
    before = [(e.stage, e.status, e.duration_ms, e.detail) for e in earlier
              if isinstance(e, StageFinished) and e.probe_id == PROBE]
    assert all(status == "pass" for _, status, _, _ in before), f"a step before {stage!r} failed: {before}"
    problems: list[str] = []
    if run.hung:
        problems.append(f"the run did not finish within {RUN_CAP:g} s")
    if started.timeout_s is None or started.timeout_s != pytest.approx(limit):
        problems.append(f"announced {started.timeout_s} s, but the limit in effect is {limit:g} s")
    if finished is None:
        problems.append("the stage never finished")
    else:
        if finished.status not in ("fail", "error"):
            problems.append(f"status {finished.status!r}, expected 'fail' or 'error'")
        low, high = limit * 1000 * 0.9, limit * 1000 + SLACK_MS
        if not low <= finished.duration_ms <= high:
            problems.append(f"the stage took {finished.duration_ms} ms, expected {low:.0f}–{high:.0f} ms")
    if not any(isinstance(e, RunFinished) for e in run.events):
        problems.append("no RunFinished")
    if run.wall_s > limit + RUN_SLACK_S:
        problems.append(f"the whole run took {run.wall_s:.2f} s, expected at most {limit + RUN_SLACK_S:g} s")
    assert not problems, f"{measured}\n  - " + "\n  - ".join(problems) + f"\n  stages: {stages}"


# --- loopback servers -----------------------------------------------------------------------------------------

Play = Callable[[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Event], Awaitable[None]]


class RawServer:
    """A plain TCP server on 127.0.0.1:0 where `play(reader, writer, stop)` is the server side of a connection."""

    def __init__(self, play: Play, *, rcvbuf: int | None = None) -> None:
        self.play = play
        self.rcvbuf = rcvbuf
        self.stop = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> RawServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf is not None:  # inherited by accepted sockets: a server that stops reading fills up fast
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._handle, sock=sock)
        self.port = sock.getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # type: ignore[arg-type]
        self.writers.append(writer)
        try:
            await self.play(reader, writer, self.stop)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.transport.abort()

    async def close(self) -> None:
        self.stop.set()
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> dict[str, str]:
    """The request head's headers (lower-case names); a body is left unread."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


async def http_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """Accepts, reads the request, never answers."""
    await read_request(reader)
    await stop.wait()


async def http_trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """Answers 200 with its headers at once, then trickles a chunked body forever (a byte every 50 ms)."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"1\r\n{\r\n")
    await writer.drain()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.05)  # the trickle's pace; returns at once on teardown
        except TimeoutError:
            writer.write(b"1\r\n \r\n")
            await writer.drain()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode("ascii")).digest()).decode("ascii")


def text_frame(text: str) -> bytes:
    """One unmasked (server-to-client) text frame, FIN set."""
    data = text.encode("utf-8")
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + data


async def ws_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers the upgrade by hand (101, echoing the first offered subprotocol) and sends the ready frame."""
    headers = await read_request(reader)
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(headers['sec-websocket-key'])}"]
    offered = headers.get("sec-websocket-protocol")
    if offered:
        lines.append(f"Sec-WebSocket-Protocol: {offered.split(',')[0].strip()}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    writer.write(text_frame(json.dumps({"type": "connection_established", "payload": {"user_id": "u"}})))
    await writer.drain()


async def ws_deaf_to_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """Handshake and ready frame, then reads and ignores everything: our close frame is never answered (no close
    frame back) and the TCP connection stays open until the client drops it."""
    await ws_handshake(reader, writer)
    while await reader.read(65536):
        pass


async def ws_never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """Handshake and ready frame, then never reads again: a large enough message fills every buffer on the way."""
    await ws_handshake(reader, writer)
    await stop.wait()


@pytest.fixture
async def raw_servers():
    """Start RawServers on demand; all are stopped (connections aborted) at teardown."""
    started: list[RawServer] = []

    async def start(play: Play, **kwargs: Any) -> int:
        server = await RawServer(play, **kwargs).start()
        started.append(server)
        return server.port

    yield start
    for server in started:
        await server.close()


@pytest.fixture(params=["silent", "trickle"])
async def http_server(request, raw_servers) -> int:
    """An HTTP server that never answers (silent) or sends headers and then trickles the body forever (trickle)."""
    return await raw_servers({"silent": http_silent, "trickle": http_trickle}[request.param])


@pytest.fixture
async def silent_upgrade(raw_servers) -> int:
    """Accepts TCP and reads the upgrade request; never answers it."""
    return await raw_servers(http_silent)


@pytest.fixture
async def deaf_close_ws(raw_servers) -> int:
    return await raw_servers(ws_deaf_to_close)


@pytest.fixture
async def never_reads_ws(raw_servers) -> int:
    return await raw_servers(ws_never_reads, rcvbuf=4096)


def _echo_subprotocol(_conn: ServerConnection, offered: Any) -> str | None:
    return offered[0] if offered else None


async def _ws_server(handler: Callable[[ServerConnection], Awaitable[None]]):
    async with serve(handler, "127.0.0.1", 0, select_subprotocol=_echo_subprotocol, close_timeout=1) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@pytest.fixture
async def no_frame_ws():
    """Completes the upgrade (echoing the subprotocol) and never sends a frame."""
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async for port in _ws_server(handler):
        yield port


@pytest.fixture
async def ready_then_silent_ws():
    """Sends the ready frame, reads the message, and then never sends anything else."""
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "connection_established", "payload": {"user_id": "u"}}))
        async for _message in ws:
            pass

    async for port in _ws_server(handler):
        yield port


# --- the limit set two ways -----------------------------------------------------------------------------------

TARGET_LIMIT = 0.5  # (a) the target's timeouts.<name>
STEP_LIMIT = 0.3  # (b) the step's own timeout; the target's timeouts.<name> is LONG


def limits(name: str, how: str) -> tuple[dict[str, float], dict[str, float], float]:
    """(target timeouts, extra step fields, the limit in effect) for timeouts.`name` set the `how` way."""
    if how == "target":
        return {name: TARGET_LIMIT}, {}, TARGET_LIMIT
    return {name: LONG}, {"timeout": STEP_LIMIT}, STEP_LIMIT


HOW = ["target", "step"]


# --- http -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_http_step(http_server, how):
    timeouts, extra, limit = limits("http", how)
    config = make_config(http_server, [{"step": "http", "name": "health", **extra}], timeouts=timeouts)
    check(await run_probe(config), "health", limit, f"http/{how}")


# --- auth (endpoint mode: an HTTP request, limited by timeouts.http) -------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_auth_endpoint_step(http_server, how):
    port = http_server
    timeouts, extra, limit = limits("http", how)
    auth = {"mode": "endpoint", "endpoint": {"url": f"http://127.0.0.1:{port}/token", "json_body": {"u": "e2e"}}}
    config = make_config(port, [{**AUTH, **extra}], timeouts=timeouts, auth=auth)
    check(await run_probe(config), "auth", limit, f"auth/{how}")


# --- connect --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_connect_step(silent_upgrade, how):
    timeouts, extra, limit = limits("connect", how)
    config = make_config(silent_upgrade, [AUTH, {**CONNECT, **extra}], timeouts=timeouts)
    check(await run_probe(config), "connect", limit, f"connect/{how}")


# --- expect: the ready frame ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_expect_ready_step(no_frame_ws, how):
    timeouts, extra, limit = limits("ready", how)
    config = make_config(no_frame_ws, [AUTH, CONNECT, {**HANDSHAKE, **extra}], timeouts=timeouts)
    check(await run_probe(config), "handshake", limit, f"expect-ready/{how}")


# --- expect require_text: the response ------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_expect_response_step(ready_then_silent_ws, how):
    timeouts, extra, limit = limits("response", how)
    steps = [AUTH, CONNECT, HANDSHAKE, MESSAGE, {"step": "expect", "name": "response", "require_text": True, **extra}]
    config = make_config(ready_then_silent_ws, steps, timeouts=timeouts)
    check(await run_probe(config), "response", limit, f"expect-response/{how}")


# --- expect_events --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_expect_events_step(ready_then_silent_ws, how):
    timeouts, extra, limit = limits("agent", how)
    steps = [AUTH, CONNECT, HANDSHAKE, MESSAGE, {"step": "expect_events", "name": "agent", **extra}]
    config = make_config(ready_then_silent_ws, steps, timeouts=timeouts)
    check(await run_probe(config), "agent", limit, f"expect-events/{how}")


# --- send -----------------------------------------------------------------------------------------------------

HUGE = 16 * 2**20  # far more than the socket buffers and websockets' write limit hold: the send must wait


async def test_send_step_announces_its_timeout(ready_then_silent_ws):
    """A small message never blocks, so here only the announcement is checked: the step's own timeout."""
    steps = [AUTH, CONNECT, HANDSHAKE, {**MESSAGE, "timeout": STEP_LIMIT}]
    run = await run_probe(make_config(ready_then_silent_ws, steps))
    assert not run.hung
    assert run.started("message").timeout_s == pytest.approx(STEP_LIMIT)
    finished = run.finished("message")
    assert finished is not None and finished.status == "pass", run.stage_results()


async def test_send_step_to_a_server_that_stops_reading(never_reads_ws):
    """A 16 MiB message to a server that stops reading (4 KiB receive buffer) blocks in the send: the step's own
    timeout must end it."""
    config = make_config(never_reads_ws, [AUTH, CONNECT, HANDSHAKE, {**MESSAGE, "timeout": STEP_LIMIT}])
    probe = config.probes[0]
    steps = [s.model_copy(update={"text": "x" * HUGE}) if s.step == "send" else s for s in probe.steps]
    config = config.model_copy(update={"probes": [probe.model_copy(update={"steps": steps})]})
    check(await run_probe(config), "message", STEP_LIMIT, "send/never-reads/step")


# --- close ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOW)
async def test_close_step(deaf_close_ws, how):
    timeouts, extra, limit = limits("close", how)
    steps = [AUTH, CONNECT, HANDSHAKE, {"step": "close", "name": "close", **extra}]
    config = make_config(deaf_close_ws, steps, timeouts=timeouts)
    check(await run_probe(config), "close", limit, f"close/{how}")
