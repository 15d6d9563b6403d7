"""Hostile servers and hostile input: whatever a server sends (or withholds), the engine reports it as a stage
result with evidence and keeps running; frame helpers and the recorder never raise on any input; probes only
reach the target's hosts, production needs --allow-production, and TLS is verified unless --insecure.

Every server here listens on loopback with port 0. Timeouts are shortened so each case takes about a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.http11 import Request, Response

from probes.bus import EventBus
from probes.config import (Auth, AuthEndpoint, Config, ConfigError, ResolvedTarget, Timeouts, load_config,
                           packaged_config_text, parse_config, resolve_target)
from probes.events import (Closed, Diagnosed, Event, Frame, HttpExchange, Notice, ProbeFinished, RunFinished, StageFinished,
                           from_record)
from probes.frames import classify, get_path, parse_json, pretty
from probes.recording import Recorder, encode_lines, read_recording
from probes.redact import Redactor
from probes.runner import RunOptions, RunResult, run_queue
from probes.sandbox import Sandbox, SandboxOptions

FAST = Timeouts(http=1, connect=1, ready=0.5, agent=1, response=0.5, close=0.5)
SECRET = "hardening-test-secret-0123456789abcdef"
ENV = {"JWT_SECRET_KEY": SECRET}
SLACK = 1.5  # seconds of scheduling slack on a shared 2-core machine
AGENT_EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
STAGEWATCH = str(Path(sys.executable).with_name("stagewatch"))

Behaviour = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture(scope="module")
def fast() -> Config:
    return load_config(None).model_copy(update={"timeouts": FAST})


# --- tiny hostile servers ----------------------------------------------------------------------------------

def _health(conn: ServerConnection, request: Request) -> Response | None:
    if request.path == "/health":
        return conn.respond(200, '{"status": "ok", "version": "hostile-1"}')
    return None


def raw_frame(opcode: Opcode, payload: bytes) -> bytes:
    """A server frame exactly as given: lets a test send what websockets itself would refuse to."""
    return WireFrame(opcode, payload).serialize(mask=False, extensions=[])


async def agent_run(ws: ServerConnection) -> None:
    for name in AGENT_EVENTS:
        body: dict[str, Any] = {"response": "4"} if name == "agent_completed" else {}
        await ws.send(json.dumps({"type": name, "payload": body}))


@asynccontextmanager
async def hostile(after_message: Behaviour | None = None, *, first: Behaviour | None = None,
                  ssl_context: ssl.SSLContext | None = None, echo: str | None = None) -> AsyncIterator[str]:
    """A WebSocket server on 127.0.0.1:0 that answers /health, echoes the subprotocol, then misbehaves:
    `first` replaces the ready frame; `after_message` runs once the first message arrives."""

    async def handler(ws: ServerConnection) -> None:
        if first is not None:
            await first(ws)
        else:
            await ws.send(json.dumps({"type": "connection_established"}))
            await ws.recv()
            if after_message is not None:
                await after_message(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=_health, ssl=ssl_context, max_size=None,
                     select_subprotocol=lambda _c, offered: echo or (offered[0] if offered else None)) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"


class Run:
    def __init__(self, result: RunResult, events: list[Event], seconds: float) -> None:
        self.result, self.events, self.seconds = result, events, seconds

    def stage(self, stage: str, probe: str | None = None) -> StageFinished:
        return next(e for e in self.events if isinstance(e, StageFinished) and e.stage == stage
                    and (probe is None or e.probe_id == probe))

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def probe(config: Config, url: str | None = None, *, only: tuple[str, ...] = ("event-order",),
                target: ResolvedTarget | None = None, guard: float = 15.0, **options: Any) -> Run:
    """Run the queue against `url` (or `target`) and collect events; a hang fails the test after `guard` s."""
    bus = EventBus()
    events: list[Event] = []
    bus.subscribe(events.append)
    target = target or resolve_target(config, url=url)
    start = time.monotonic()
    async with asyncio.timeout(guard):
        result = await run_queue(config, target, bus, RunOptions(only=only, env=ENV, **options))
    assert not bus.failures, bus.failures
    assert isinstance(events[-1], RunFinished)
    return Run(result, events, time.monotonic() - start)


# --- hostile frames -----------------------------------------------------------------------------------------

async def test_non_json_first_frame_fails_the_handshake(fast: Config) -> None:
    async def first(ws: ServerConnection) -> None:
        await ws.send("<html>502 Bad Gateway</html>")

    async with hostile(first=first) as url:
        run = await probe(fast, url)
    handshake = run.stage("handshake")
    assert handshake.status == "fail"
    assert handshake.detail == "first frame was non-JSON text, expected connection_established"
    assert [f.data for f in run.of(Frame) if f.direction == "in"] == ["<html>502 Bad Gateway</html>"]


async def test_binary_first_frame_fails_the_handshake(fast: Config) -> None:
    async def first(ws: ServerConnection) -> None:
        await ws.send(b"\x00\xff\xfe garbage \x80")

    async with hostile(first=first) as url:
        run = await probe(fast, url)
    assert run.stage("handshake").detail == "first frame was binary, expected connection_established"
    frame = next(f for f in run.of(Frame) if f.direction == "in")
    assert frame.data == b"\x00\xff\xfe garbage \x80" and frame.size == 13
    assert classify(frame.data).kind == "binary"


async def test_garbage_between_agent_events_is_counted_not_fatal(fast: Config) -> None:
    async def behaviour(ws: ServerConnection) -> None:
        await ws.send("not json {")
        await ws.send(b"\x80\x81")
        await ws.send('{"type": 42}')
        await agent_run(ws)

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    assert run.result.verdict == "pass"
    assert run.stage("agent").detail.endswith("(+3 other frames)")


async def test_invalid_utf8_text_frame_is_reported_as_1007(fast: Config) -> None:
    async def behaviour(ws: ServerConnection) -> None:
        ws.transport.write(raw_frame(Opcode.TEXT, b'{"type": "agent_started", "x": "\xff\xfe"}'))

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    agent = run.stage("agent")
    assert agent.status == "fail"
    assert agent.detail.startswith("1007 Invalid Frame Payload Data"), agent.detail
    closed = run.of(Closed)[0]
    assert (closed.code, closed.by) == (1007, "client")
    assert run.seconds < FAST.agent + SLACK  # reported at once, not after the agent timeout


async def test_ten_megabyte_frame_is_reported_as_1009(fast: Config) -> None:
    async def behaviour(ws: ServerConnection) -> None:
        await ws.send("x" * 10_000_000)

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    agent = run.stage("agent")
    assert agent.status == "fail"
    assert agent.detail.startswith("1009 Message Too Big"), agent.detail
    assert run.of(Closed)[0].code == 1009


async def test_sandbox_huge_frame_fault_is_reported_as_1009(fast: Config) -> None:
    run = await probe(fast, target=resolve_target(fast, "sandbox"), fault="huge-frame")
    assert run.stage("agent").detail.startswith("1009 Message Too Big")


async def test_fragmented_message_is_reassembled_across_a_split_character(fast: Config) -> None:
    async def behaviour(ws: ServerConnection) -> None:
        text = json.dumps({"type": "progress", "payload": {"thought": "π≈3.14159"}}, ensure_ascii=False).encode()
        cut = text.index("≈".encode()) + 1  # inside the three bytes of ≈
        ws.transport.write(WireFrame(Opcode.TEXT, text[:cut], fin=False).serialize(mask=False, extensions=[])
                           + WireFrame(Opcode.CONT, text[cut:]).serialize(mask=False, extensions=[]))
        await agent_run(ws)

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    assert run.result.verdict == "pass", [e.detail for e in run.of(StageFinished) if e.status != "pass"]
    assert any(isinstance(f.data, str) and "π≈3.14159" in f.data for f in run.of(Frame))


async def test_fragments_over_max_size_together_are_reported_as_1009(fast: Config) -> None:
    async def behaviour(ws: ServerConnection) -> None:
        piece = b"y" * 700_000  # each under the 1 MiB limit, together over it
        ws.transport.write(WireFrame(Opcode.TEXT, piece, fin=False).serialize(mask=False, extensions=[])
                           + WireFrame(Opcode.CONT, piece).serialize(mask=False, extensions=[]))

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    assert run.stage("agent").detail.startswith("1009 Message Too Big"), run.stage("agent").detail


async def test_endless_tiny_fragments_are_cut_off(fast: Config) -> None:
    async def behaviour(ws: ServerConnection) -> None:
        ws.transport.write(WireFrame(Opcode.TEXT, b"[", fin=False).serialize(mask=False, extensions=[])
                           + WireFrame(Opcode.CONT, b"1", fin=False).serialize(mask=False, extensions=[]) * 10_000)

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    agent = run.stage("agent")
    assert agent.status == "fail" and agent.detail.startswith("1009 Message Too Big"), agent.detail


async def test_deeply_nested_json_is_survived(fast: Config) -> None:
    """Nesting far past the recursion limit is a non-JSON frame, not a crash; the run then passes."""
    async def behaviour(ws: ServerConnection) -> None:
        await ws.send("[" * 100_000 + "]" * 100_000)
        await ws.send('{"type": "x", "a": ' * 50_000 + "1" + "}" * 50_000)
        await agent_run(ws)

    async with hostile(behaviour) as url:
        run = await probe(fast, url)
    assert run.result.verdict == "pass", [e for e in run.of(StageFinished) if e.status != "pass"]
    assert run.stage("agent").detail.endswith("(+2 other frames)")


async def test_flood_is_recorded_in_batches_not_a_write_per_frame(fast: Config, tmp_path: Path) -> None:
    """100k frames as fast as the sandbox can send them: all consumed, counted and recorded in batches."""
    count = 100_000
    bus = EventBus()
    recorder = Recorder(tmp_path / "flood.jsonl")
    bus.subscribe(recorder.handle)
    await recorder.start()
    target = resolve_target(fast, "sandbox").model_copy(update={"timeouts": FAST.model_copy(update={"agent": 20})})
    start = time.monotonic()
    try:
        result = await run_queue(fast, target, bus, RunOptions(
            only=("event-order",), sandbox_options=SandboxOptions(fault="flood", flood=count)))
    finally:
        recorder.close()
    print(f"{count / (time.monotonic() - start):,.0f} frames/s recorded with {recorder.writes} writes")
    assert result.verdict == "pass"
    assert result.probes[0].frames_in >= count
    assert recorder.lines_written > count
    assert recorder.writes < count / 50, f"{recorder.writes} writes for {recorder.lines_written} lines"
    replay = read_recording(tmp_path / "flood.jsonl")
    assert replay.version == 2  # the header line is the one line that is not an event
    assert sum(1 for e in replay.events if isinstance(e, Frame)) == recorder.lines_written - 1 - sum(
        1 for e in replay.events if not isinstance(e, Frame))


async def test_silent_server_handshake_times_out_within_the_limit(fast: Config) -> None:
    run = await probe(fast, target=resolve_target(fast, "sandbox"), fault="silent")
    handshake = run.stage("handshake")
    assert handshake.status == "fail"
    assert handshake.detail == "no connection_established within 0.5 s"
    assert FAST.ready * 1000 <= handshake.duration_ms < (FAST.ready + SLACK) * 1000


async def test_server_silent_after_the_message_agent_times_out(fast: Config) -> None:
    async with hostile(None) as url:
        run = await probe(fast, url)
    agent = run.stage("agent")
    assert agent.detail == "no agent_completed within 1 s (got: no agent events)"
    assert FAST.agent * 1000 <= agent.duration_ms < (FAST.agent + SLACK) * 1000


class _BlackHole(asyncio.Protocol):
    """Accepts a TCP connection and never sends a byte: a TLS or HTTP handshake that never completes."""

    def __init__(self, sockets: list[asyncio.BaseTransport]) -> None:
        self.sockets = sockets

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sockets.append(transport)


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_server_that_never_answers_times_out_health_and_connect(fast: Config, scheme: str) -> None:
    accepted: list[asyncio.BaseTransport] = []
    server = await asyncio.get_running_loop().create_server(lambda: _BlackHole(accepted), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        run = await probe(fast, f"{scheme}://127.0.0.1:{port}", only=("health", "event-order"))
    finally:
        for transport in accepted:
            transport.close()
        server.close()
    health, connect = run.stage("health"), run.stage("connect")
    assert health.detail == "GET /health: no answer within 1 s"
    assert connect.detail == "no 101 response within 1 s"
    for stage, limit in ((health, FAST.http), (connect, FAST.connect)):
        assert limit * 1000 <= stage.duration_ms < (limit + SLACK) * 1000, stage
    assert len(accepted) == 2  # both reached the listener, neither got an answer


async def test_tcp_handshake_that_never_completes_times_out(fast: Config) -> None:
    """A listener whose accept queue is full drops our SYN: the TCP handshake itself never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # fills the queue (nobody calls accept)
    try:
        probe_sock = socket.socket()
        probe_sock.settimeout(0.3)
        try:
            probe_sock.connect(("127.0.0.1", port))
            pytest.skip("this kernel completes TCP handshakes beyond the listen backlog")
        except (TimeoutError, OSError):
            pass
        finally:
            probe_sock.close()
        run = await probe(fast, f"http://127.0.0.1:{port}", only=("health",))
    finally:
        filler.close()
        listener.close()
    health = run.stage("health")
    assert health.detail == "GET /health: no answer within 1 s"
    assert health.duration_ms < (FAST.http + SLACK) * 1000


@asynccontextmanager
async def endless_health(pace: float, chunk: int) -> AsyncIterator[str]:
    """/health answers 200 and then never finishes its chunked body: `chunk` bytes every `pace` seconds."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
            while True:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pace)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()



@pytest.mark.parametrize("pace, chunk", [(0.3, 1), (0.01, 65536)], ids=["trickle", "endless"])
async def test_health_body_that_never_ends_times_out(fast: Config, pace: float, chunk: int) -> None:
    async with endless_health(pace, chunk) as url:
        run = await probe(fast, url, only=("health",), guard=FAST.http + 2)
    health = run.stage("health")
    assert health.status == "fail", health.detail
    assert health.detail.startswith(("GET /health: no complete answer within 1 s", "GET /health: no answer within 1 s",
                                     "GET /health: answer larger than")), health.detail
    assert health.duration_ms < (FAST.http + SLACK) * 1000


# --- property-based: the frame helpers and the recorder never raise ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30)
surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
any_text = st.text() | surrogates | st.builds(lambda a, b: a + b, st.text(), surrogates)
nested = st.builds(lambda depth, open_, close: open_ * depth + close * depth,
                   st.integers(0, 30_000), st.sampled_from(["[", '{"a":']), st.sampled_from(["]", "}"]))
frames_data = (any_text | st.binary(max_size=2048) | json_values.map(json.dumps)
               | nested | st.builds(lambda v: json.dumps(v)[:-1], json_values))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(frames_data, st.sampled_from(["type", "kind", ""]))
def test_classify_and_pretty_never_raise(data: str | bytes, type_field: str) -> None:
    info = classify(data, type_field)
    assert info.kind in ("json", "text", "binary")
    assert "\n" not in info.summary and len(info.summary) <= 120
    shown = pretty(data, limit=4096)
    assert isinstance(shown, str)
    assert len(shown) <= 4096 + 64


@SETTINGS
@given(frames_data)
def test_parse_json_returns_a_container_or_none(data: str | bytes) -> None:
    value = parse_json(data)
    assert value is None or isinstance(value, (dict, list))


@SETTINGS
@given(json_values, st.text(max_size=20))
def test_get_path_never_raises(value: Any, path: str) -> None:
    get_path(value, path)


def test_huge_values_are_summarised_cheaply() -> None:
    big = "word " * 2_000_000  # 10 MB of text
    start = time.monotonic()
    assert len(classify(big).summary) == 120
    assert classify(memoryview(b"\x01" * 10_000_000)).summary.startswith("binary 10000000 B: 01 01")
    assert len(pretty(big, limit=1000)) < 1100
    assert time.monotonic() - start < 1.0


def _frame(data: str | bytes) -> Frame:
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    return Frame(1.5, "golden-path", "in", 12.25, size, data, False)


@SETTINGS
@given(st.lists(frames_data, min_size=1, max_size=5), any_text)
def test_recorder_lines_round_trip_any_frame(datas: list[str | bytes], notice: str) -> None:
    """Every line the recorder writes is valid UTF-8 JSON and reads back as the same event."""
    recorder = Recorder.__new__(Recorder)  # only the line encoder: no file
    recorder.redactor, recorder.wall0, recorder._ids = Redactor(), 1_700_000_000.0, {}
    events: list[Event] = [_frame(d) for d in datas] + [Notice(2.0, "warning", notice)]
    raw = encode_lines([recorder._line(e) for e in events])
    text = raw.decode("utf-8")  # strict: no surrogates or invalid bytes reach the file
    lines = text.split("\n")  # JSON Lines: only \n ends a line (U+2028 or U+0085 in a value do not)
    assert lines.pop() == ""
    assert len(lines) == len(events)
    for line, event in zip(lines, events):
        record = json.loads(line)
        assert record.pop("wall_ts") == pytest.approx(1_700_000_000.0 + event.t)
        back = from_record(record)
        if "eyJ" not in str(getattr(event, "data", "")) + str(getattr(event, "message", "")):
            assert _utf16(back) == _utf16(event)  # (JWT-shaped text is redacted, by design)


def _utf16(event: Any) -> Any:
    """The event with its text as UTF-16 code units would read it: a lone surrogate pair written as two \\u
    escapes reads back as the one character it encodes (a WebSocket text frame never holds surrogates)."""
    def norm(value: Any) -> Any:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if isinstance(value, str) else value
    if isinstance(event, Frame):
        return event._replace(data=norm(event.data))
    return Notice(event.t, event.level, norm(event.message))


async def test_recorder_survives_unserialisable_evidence(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "r.jsonl")
    deep: list[Any] = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    recorder.handle(StageFinished(1.0, "p", "s", "fail", 1.0, "detail", {"deep": deep, "obj": object()}))
    recorder.handle(ProbeFinished(2.0, "p", "fail", 2.0, "s", 0, 0))
    recorder.close()
    replay = read_recording(tmp_path / "r.jsonl")
    assert isinstance(replay.events[-1], ProbeFinished)
    assert "not recorded" in replay.events[0].message  # type: ignore[attr-defined]


# --- safety: hosts, production, TLS ------------------------------------------------------------------------

@asynccontextmanager
async def counting_listener(host: str) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP listener on `host`:0 that records every connection (and the first bytes sent on it)."""
    seen: list[bytes] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await asyncio.wait_for(reader.read(1024), 1.0))
        except (TimeoutError, ConnectionError):
            seen.append(b"")
        writer.close()

    server = await asyncio.start_server(accept, host, 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


def _endpoint_config(port: int) -> str:
    return packaged_config_text().replace(
        "  mode: mint ", f"  mode: endpoint\n  endpoint: {{url: 'http://127.0.0.2:{port}/token'}}\n ")


async def test_auth_endpoint_on_another_host_is_a_config_error_and_nothing_is_sent(tmp_path: Path) -> None:
    async with counting_listener("127.0.0.2") as (port, seen):
        cfg = tmp_path / "endpoint.yaml"
        cfg.write_text(_endpoint_config(port), encoding="utf-8")
        async with Sandbox(SandboxOptions(secret=SECRET)) as sb:
            proc = await asyncio.create_subprocess_exec(
                STAGEWATCH, "run", "--config", str(cfg), "--url", sb.base_url, "--no-record",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **ENV})
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert sb.connections == 0
    assert proc.returncode == 2
    assert out == b""
    assert err.decode().startswith(f"stagewatch: error: {cfg}:")
    assert "auth.endpoint.url: host '127.0.0.2' is not a host of target" in err.decode()
    assert err.count(b"\n") == 1
    assert seen == []


async def test_auth_endpoint_allowed_when_listed(tmp_path: Path) -> None:
    text = _endpoint_config(9).replace("base_url: sandbox ", "base_url: sandbox\n    allowed_hosts: [127.0.0.2] ")
    config = load_config_text(text)
    assert resolve_target(config, "sandbox").auth.endpoint is not None


def load_config_text(text: str) -> Config:
    return parse_config(text, "test.yaml")


async def test_engine_blocks_auth_endpoint_outside_the_target(fast: Config) -> None:
    """Defence in depth: a ResolvedTarget built without resolve_target still cannot reach another host."""
    async with counting_listener("127.0.0.2") as (port, seen):
        auth = Auth(mode="endpoint", endpoint=AuthEndpoint(url=f"http://127.0.0.2:{port}/token"))
        target = resolve_target(fast, "sandbox").model_copy(update={"auth": auth})
        run = await probe(fast, target=target, only=("event-order",))
        await asyncio.sleep(0)  # let a connection that did get through be accepted
    stage = run.stage("auth")
    assert stage.status == "error" and stage.detail.startswith("blocked:"), stage.detail
    assert seen == []


def _cli_run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STAGEWATCH, "run", "--no-record", *args], check=False, capture_output=True, text=True,
                          timeout=60,
                          env={**os.environ, **(env or {})})


async def test_production_looking_host_needs_allow_production() -> None:
    async with Sandbox(SandboxOptions(secret=SECRET), host="127.0.0.3") as sb:  # 127.0.0.3 is not on the list
        blocked = await asyncio.to_thread(_cli_run, ["--url", sb.base_url], ENV)
        assert (blocked.returncode, blocked.stdout) == (2, "")
        assert blocked.stderr == (f"stagewatch: error: target '{sb.base_url}' (127.0.0.3) looks like production "
                                  "(no staging/localhost/127.0.0.1… in the host); pass --allow-production if you "
                                  "mean it\n")
        assert sb.connections == 0
        allowed = await asyncio.to_thread(_cli_run, ["--url", sb.base_url, "--allow-production"], ENV)
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "verdict: PASS" in allowed.stdout
        assert sb.connections > 0


async def test_self_signed_tls_fails_by_default(fast: Config, self_signed: ssl.SSLContext) -> None:
    async with hostile(agent_run, ssl_context=self_signed) as url:
        run = await probe(fast, url, only=("health", "event-order"))
    health, connect = run.stage("health"), run.stage("connect")
    assert health.status == "fail" and "TLS error" in health.detail and "certificate" in health.detail.lower()
    assert connect.status == "fail" and "TLS error" in connect.detail, connect.detail
    assert next(e for e in run.of(HttpExchange)).error.startswith("tls:")


async def test_insecure_opts_out_of_tls_verification(fast: Config, self_signed: ssl.SSLContext) -> None:
    async with hostile(agent_run, ssl_context=self_signed) as url:
        target = resolve_target(fast, url=url).model_copy(update={"verify_tls": False})
        run = await probe(fast, target=target, only=("health", "event-order"))
        cli = await asyncio.to_thread(_cli_run, ["--url", url, "--insecure", "--only", "health"])
    assert run.result.verdict == "pass", [e.detail for e in run.of(StageFinished)]
    assert cli.returncode == 0, cli.stdout + cli.stderr
    timing = run.stage("connect").evidence.timing  # the opening split, TLS measured apart
    assert {"dns_ms", "tcp_ms", "tls_ms", "upgrade_ms"} <= set(timing) and timing["tls_ms"] > 0
    assert timing["tls_version"].startswith("TLSv1.")
    # the certificate is read although not verified: who it names, who signed it, and that we did not check it
    assert timing["cert_subject"] == "CN=127.0.0.1" and timing["cert_issuer"] == "CN=127.0.0.1"
    assert timing["cert_self_signed"] is True and timing["cert_verified"] is False
    assert timing["cert_expires"].endswith("UTC")


def test_resolve_target_rejects_nothing_it_should_accept() -> None:
    """The safety checks do not get in the way of the shipped targets."""
    config = load_config(None)
    assert resolve_target(config, "sandbox").is_sandbox
    with pytest.raises(ConfigError):
        resolve_target(config, url="http://user:pw@127.0.0.1:1")


async def test_a_subprotocol_we_never_offered_is_named_with_the_101_and_the_timing(fast: Config, monkeypatch) -> None:
    """A 101 selecting `jwt.bogus`: websockets refuses it; the evidence keeps the 101, its headers, what it echoed
    and the timing split, and the diagnosis names it (not `unknown`)."""
    monkeypatch.setenv("JWT_SECRET_KEY", "hardening-test-secret")
    async with hostile(agent_run, echo="jwt.bogus") as url:
        run = await probe(fast, url, only=("golden-path",))
    connect = run.stage("connect")
    ev = connect.evidence
    assert connect.status == "fail" and "did not offer (jwt.bogus)" in connect.detail, connect.detail
    assert ev.http_status == 101 and ev.subprotocol_echoed == "jwt.bogus" and ev.subprotocol_mismatch
    assert ev.response_headers.get("Sec-WebSocket-Protocol") == "jwt.bogus"
    assert {"dns_ms", "tcp_ms", "upgrade_ms"} <= set(ev.timing)
    (diagnosed,) = run.of(Diagnosed)
    assert diagnosed.diagnoses[0]["code"] == "subprotocol-mismatch"


async def test_a_refused_upgrade_keeps_its_timing(fast: Config, monkeypatch) -> None:
    """A 403 at the upgrade still took DNS, TCP and a round trip: the split is in the evidence (and `-v`)."""
    monkeypatch.setenv("JWT_SECRET_KEY", "hardening-test-secret")

    def refuse(conn: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/health"):
            return _health(conn, request)
        return conn.respond(403, "<html><h1>Forbidden</h1></html>")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        run = await probe(fast, url, only=("golden-path",))
    connect = run.stage("connect")
    assert connect.evidence.http_status == 403
    assert {"dns_ms", "tcp_ms", "upgrade_ms"} <= set(connect.evidence.timing), connect.evidence.timing
