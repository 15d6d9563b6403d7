"""A hostile server must not reach the terminal, the clipboard, another host, or the token: control characters and
markup from outside are shown, never obeyed, in every output (printer, JSON, JUnit, Markdown, the app's widgets);
an upgrade redirect is evidence, not followed; a connection we fail ends within the close timeout."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.bus import EventBus
from probes.config import Config, load_config, resolve_target
from probes.events import (Closed, Diagnosed, HttpExchange, ProbeFinished, ProbeStarted, RunFinished, RunStarted,
                           StageFinished, StageStarted)
from probes.headless import Printer
from probes.model import RunModel
from probes.report import write_json, write_junit, write_markdown
from probes.runner import RunOptions, run_queue
from probes.sanitize import visible
from probes.steps.http import HttpEvidence

SECRET = "k" * 40
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
NASTY = ["\x1b]0;PWNED\x07", "\x1b]52;c;SGVsbG8=\x07", "\x1b[2J", "\x1b[6n", "\x9b31m", "\u202egnp.exe", "\x00",
         "a\x08\x08b", "[bold red]x[/]", "[/", "[link=file:///etc/passwd]y[/link]", "[@click=app.quit]z[/]"]


# --- the boundary itself ---------------------------------------------------------------------------------------

def test_visible_shows_controls_and_keeps_newlines_and_text():
    assert visible("ok — ünïcode\n\tnext") == "ok — ünïcode\n\tnext"
    assert visible("\x1b]0;PWNED\x07") == "\\x1b]0;PWNED\\x07"
    assert visible("\x9b\u202e\x00") == "\\x9b\\u202e\\x00"


def _events(text: str) -> list:
    ev = HttpEvidence(url="http://h/health", version=text, body=text, http_status=500)
    return [
        RunStarted(0.0, f"target{text}", f"http://h{text}", (("p", f"name {text}", 1),), 1_790_000_000.0),
        ProbeStarted(0.1, "p", f"name {text}", 1, ("health", "handshake")),
        StageStarted(0.1, "p", "health", "http", 5.0),
        HttpExchange(0.2, "p", "health", "GET", "http://h/health", 500, {"x-evil": text}, text, 1.0),
        StageFinished(0.2, "p", "health", "fail", 1.0, f"GET /health: build {text}", ev),
        StageStarted(0.2, "p", "handshake", "expect", 5.0),
        Closed(0.3, "p", 4001, "Application", text, "server", 12.0, True),
        StageFinished(0.3, "p", "handshake", "fail", 1.0, f"closed '{text}'"),
        Diagnosed(0.3, "p", ({"code": "x", "summary": text, "evidence": [text], "next_step": text},)),
        ProbeFinished(0.4, "p", "fail", 3.0, "health", 0, 0),
        RunFinished(0.5, "fail", 500.0),
    ]


def _outputs(text: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = io.StringIO()
    printer = Printer(out, color=True, verbose=True)
    model = RunModel()
    for e in _events(text):
        printer.handle(e)
        model.apply(e)
    err = capsys.readouterr().err
    return {"printer": out.getvalue() + err, "json": write_json(model), "junit": write_junit(model),
            "markdown": write_markdown(model)}


@pytest.mark.parametrize("text", NASTY)
def test_no_output_carries_a_raw_control_character(text, capsys):
    for name, output in _outputs(text, capsys).items():
        stripped = re.sub(r"\x1b\[[0-9;]*m", "", output) if name == "printer" else output  # our own colours
        assert not RAW.search(stripped), (name, text, output)
    outputs = _outputs(text, capsys)
    ET.fromstring(outputs["junit"].split("\n", 1)[1])  # always valid XML
    json.loads(outputs["json"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_arbitrary_outside_text_never_comes_out_raw(capsys, text):
    outputs = _outputs(text, capsys)
    for name, output in outputs.items():
        stripped = re.sub(r"\x1b\[[0-9;]*m", "", output) if name == "printer" else output
        assert not RAW.search(stripped), (name, repr(text))
    ET.fromstring(outputs["junit"].split("\n", 1)[1])
    json.loads(outputs["json"])


# --- the app ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(None)


@pytest.mark.parametrize("text", NASTY)
async def test_the_app_shows_outside_text_without_obeying_it(config, text):
    from tests.test_tui import screen_text  # the screen as the terminal would show it
    from tui.app import StagewatchApp
    from tui.widgets.frames import FrameList

    app = StagewatchApp(config, events=_events(text))
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(20):
            await pilot.pause(0.02)
            if app.state.finished is not None:
                break
        shown = screen_text(app)
        assert not RAW.search(shown), repr(shown)
        await pilot.press("slash", *"[/", "enter")  # markup typed into the filter is text, not a crash
        await pilot.pause()
        app.query_one("#frames", FrameList)
        assert not RAW.search(screen_text(app))


async def test_a_probe_name_with_markup_does_not_crash_the_app(config):
    from tui.app import StagewatchApp

    probes = [p.model_copy(update={"name": "Health [/health] [bold]x"}) if p.id == "health" else p
              for p in config.probes]
    app = StagewatchApp(config.model_copy(update={"probes": probes}), events=[])
    async with app.run_test(size=(120, 40)) as pilot:
        app._ingest(ProbeStarted(0.0, "health", "Health [/health] [bold]x", 0, ("health",)))
        app.focus_probe = "health"
        await pilot.pause(0.2)
        from tests.test_tui import screen_text

        assert "Health [/health] [bold]x" in screen_text(app)  # shown as typed, not parsed


# --- redirects -------------------------------------------------------------------------------------------------

class Recorder:
    """A loopback server that records every connection it gets (the redirect's target must get none)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.read(65536))
        writer.close()


async def _redirecting(location: str, status: int = 302):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if request.startswith(b"GET /health"):
            body = b'{"status": "ok", "version": "b1"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        else:
            writer.write(f"HTTP/1.1 {status} Found\r\nLocation: {location}\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _run(config: Config, url: str) -> list:
    bus = EventBus()
    events: list = []
    bus.subscribe(events.append)
    target = resolve_target(config, url=url)
    await asyncio.wait_for(run_queue(config, target, bus, RunOptions(only=("golden-path",),
                                                                     env={"JWT_SECRET_KEY": SECRET})), 20)
    return events


@pytest.mark.parametrize("follow", [False, True])
async def test_an_upgrade_redirect_never_carries_the_token_to_another_host(config, follow):
    sink = Recorder()
    other = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    port2 = other.sockets[0].getsockname()[1]
    # "localhost" is not the target's host (127.0.0.1): another host, even when following is switched on
    server = await _redirecting(f"ws://localhost:{port2}/ws")
    port = server.sockets[0].getsockname()[1]
    protocol = config.protocol.model_copy(update={"follow_upgrade_redirects": follow})
    try:
        events = await _run(config.model_copy(update={"protocol": protocol}), f"http://127.0.0.1:{port}")
    finally:
        server.close()
        other.close()
    assert sink.received == []
    failed = next(e for e in events if isinstance(e, StageFinished) and e.status == "fail")
    assert failed.stage == "connect" and "HTTP 302" in failed.detail and f"localhost:{port2}" in failed.detail
    assert failed.evidence.location == f"ws://localhost:{port2}/ws"
    diagnosed = next(e for e in events if isinstance(e, Diagnosed))
    assert diagnosed.diagnoses[0]["code"] == "upgrade-redirected"


async def test_a_redirect_to_the_targets_own_host_is_followed_when_asked(config):
    sink = Recorder()
    other = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    port2 = other.sockets[0].getsockname()[1]
    server = await _redirecting(f"ws://127.0.0.1:{port2}/ws")
    port = server.sockets[0].getsockname()[1]
    protocol = config.protocol.model_copy(update={"follow_upgrade_redirects": True})
    try:
        await _run(config.model_copy(update={"protocol": protocol}), f"http://127.0.0.1:{port}")
    finally:
        server.close()
        other.close()
    assert len(sink.received) == 1 and sink.received[0].startswith(b"GET /ws")  # same host: followed


# --- a connection we fail -------------------------------------------------------------------------------------

async def _deaf_after_bad_utf8(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Health, then an upgrade whose server sends invalid UTF-8 and ignores our close, keeping TCP open."""
    request = await reader.readuntil(b"\r\n\r\n")
    if request.startswith(b"GET /health"):
        body = b'{"status": "ok", "version": "b1"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()
        return
    headers = dict(line.split(": ", 1) for line in request.decode().split("\r\n")[1:] if ": " in line)
    accept = base64.b64encode(hashlib.sha1((headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                           .encode()).digest()).decode()
    offered = headers.get("Sec-WebSocket-Protocol", "").split(",")[0].strip()
    writer.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {offered}\r\n\r\n").encode())
    ready = b'{"type": "connection_established"}'
    writer.write(bytes([0x81, len(ready)]) + ready)
    await writer.drain()
    await reader.read(1)  # the user message arrives
    writer.write(bytes([0x81, 2]) + b"\xff\xfe")  # not UTF-8: the client must fail the connection (1007)
    await writer.drain()
    while await reader.read(65536):  # our close frame is read and ignored; TCP stays open
        pass


async def test_a_failed_connection_ends_within_the_close_timeout(config):
    server = await asyncio.start_server(_deaf_after_bad_utf8, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeouts = config.timeouts.model_copy(update={"close": 0.5, "agent": 20.0})
    try:
        events = await _run(config.model_copy(update={"timeouts": timeouts}), f"http://127.0.0.1:{port}")
    finally:
        server.close()
    agent = next(e for e in events if isinstance(e, StageFinished) and e.stage == "agent")
    assert agent.status == "fail" and agent.duration_ms < 3000, agent  # the close timeout, not the agent's 20 s
    assert "1007" in agent.detail and "never answered our close" in agent.detail
    close = next(e for e in events if isinstance(e, Closed))
    assert close.code == 1007 and close.by == "client" and close.after_ms < 1000  # when we closed, not the drop


def test_follow_upgrade_redirects_is_off_by_default():
    from probes.config import Protocol

    assert Protocol().follow_upgrade_redirects is False
    assert load_config(None).protocol.follow_upgrade_redirects is False


# --- the token, echoed back in other encodings ----------------------------------------------------------------

async def test_a_token_echoed_in_any_encoding_is_never_shown_or_recorded_whole(config):
    from urllib.parse import quote

    from websockets.asyncio.server import serve

    from probes.events import Frame

    seen: list[str] = []

    async def handler(ws) -> None:
        offered = ws.request.headers.get("Sec-WebSocket-Protocol", "").split(",")[0].strip()
        token = base64.urlsafe_b64decode(offered[4:] + "=" * (-len(offered[4:]) % 4)).decode()
        seen.append(token)
        await ws.send('{"type": "connection_established"}')
        await ws.recv()
        escaped = "".join(f"\\u{ord(c):04x}" for c in token)
        await ws.send(token.encode())  # raw, in a binary frame
        await ws.send(b"prefix " + base64.b64encode(token.encode()))  # base64 inside a binary frame
        await ws.send('{"type": "agent_started", "echo": "%s"}' % escaped)  # JSON \\u-escaped
        await ws.send('{"type": "agent_thinking", "echo": "%s"}' % quote(token, safe=""))  # percent-encoded
        await ws.send('{"type": "tool_executing", "hex": "%s"}' % token.encode().hex())  # hex of the whole token
        await ws.close(4001, "invalid signature " + token.rsplit(".", 1)[1])  # the signature alone

    async def health(connection, request):
        if request.path == "/health":
            return connection.respond(200, '{"status": "ok", "version": "b1"}')
        return None

    server = await serve(handler, "127.0.0.1", 0, process_request=health,
                         select_subprotocol=lambda conn, offered: offered[0] if offered else None)
    port = server.sockets[0].getsockname()[1]
    try:
        events = await _run(config, f"http://127.0.0.1:{port}")
    finally:
        server.close()
    assert seen, "the server never got a token"
    tail = seen[0][-12:]
    frames = [e for e in events if isinstance(e, Frame) and e.direction == "in"]
    assert len(frames) >= 6
    assert not any(seen[0].encode().hex()[-24:] in str(f.data) for f in frames)
    closes = [e for e in events if isinstance(e, Closed)]
    assert closes and all(tail not in (c.reason or "") for c in closes), closes
    for frame in frames:
        data = frame.data
        forms = [data.decode("latin-1") if isinstance(data, bytes) else data]
        text = forms[0]
        forms.append(json.loads('"' + text.replace('"', "") + '"') if "\\u" in text else text)
        from urllib.parse import unquote
        forms.append(unquote(text))
        for run in re.findall(r"[A-Za-z0-9+/=_-]{16,}", text):
            try:
                forms.append(base64.b64decode(run + "=" * (-len(run) % 4)).decode("latin-1"))
            except ValueError:
                pass
        assert not any(tail in f for f in forms), (frame, forms)


async def test_copying_a_frame_with_a_hostile_type_neither_crashes_nor_carries_controls(config):
    from probes.events import Frame
    from tests.test_tui import screen_text
    from tui.app import StagewatchApp
    from tui.widgets.frames import FrameList

    hostile = '{"type": "[link=file:///etc/passwd]x[/link] \\u001b]0;PWNED\\u0007 [/", "payload": {}}'
    events = _events("ok")[:2] + [Frame(0.15, "p", "in", 1.0, len(hostile), json.loads(json.dumps(hostile)))]
    events[2] = events[2]._replace(data=hostile.replace("\\u001b", "\x1b").replace("\\u0007", "\x07"))
    app = StagewatchApp(config, events=events)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        app.focus_probe = "p"
        await pilot.pause(0.2)
        frames = app.query_one("#frames", FrameList)
        frames.focus()
        await pilot.press("end", "c")
        await pilot.pause(0.2)
        assert not RAW.search(screen_text(app))
        assert app.clipboard and not RAW.search(app.clipboard), repr(app.clipboard)


async def test_a_health_header_with_obs_text_is_evidence_not_an_internal_error(config):
    """RFC 9110 §5.5 allows obs-text (bytes 0x80-0xff) in a field value: the stage reads it, shows it visibly."""
    import socket

    body = b'{"status": "ok", "version": "b1"}'
    answer = (b"HTTP/1.1 200 OK\r\nServer: hostile/1.0 \xc2\x9b2J\xe2\x80\xae\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0, family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    try:
        events = await _run(config, f"http://127.0.0.1:{port}")
    finally:
        server.close()
    health = [e for e in events if isinstance(e, StageFinished) and e.stage == "health"]
    assert health and health[0].status == "pass", health
    out = io.StringIO()
    printer = Printer(out, verbose=True)
    for e in events:
        printer.handle(e)
    assert "internal error" not in out.getvalue()
    assert not RAW.search(out.getvalue())


def test_markdown_report_keeps_outside_html_links_and_fences_inert():
    """A 403's HTML body, a markdown image in a close reason, a fence in a frame: pasted into an issue, none renders."""
    from probes.events import (Closed, Diagnosed, Frame, ProbeFinished, ProbeStarted, RunFinished, RunStarted,
                               StageFinished, StageStarted)
    from probes.model import RunModel
    from probes.report import write_markdown

    html_body = "<!doctype html><h1>Forbidden</h1><img src=x onerror=alert(1)>"
    model = RunModel()
    for e in (RunStarted(0.0, "t", "http://x", (("p", "p", 0),), 1.0), ProbeStarted(0.0, "p", "p", 0, ("connect",)),
              StageStarted(0.0, "p", "connect", "connect", 5.0),
              Frame(0.05, "p", "in", 1.0, 20, "```\n# not a heading"),
              Closed(0.1, "p", 1008, "Policy Violation", "bad `token` ![x](http://evil/p.png)", "server", 5.0, True),
              StageFinished(0.1, "p", "connect", "fail", 10.0, f"HTTP 403: {html_body}"),
              Diagnosed(0.1, "p", ({"code": "auth-rejected", "summary": f"refused: {html_body}",
                                    "evidence": ["[click](http://evil)"], "next_step": "<b>do</b>"},)),
              ProbeFinished(0.2, "p", "fail", 20.0, "connect", 1, 0), RunFinished(0.3, "fail", 30.0)):
        model.apply(e)
    md = write_markdown(model)
    outside_code = re.sub(r"(`+)[\s\S]*?\1", "", md)  # what renders as Markdown: everything but code
    assert "<h1>" not in outside_code and "<img" not in outside_code and "<b>" not in outside_code
    assert "](http://evil" not in outside_code.replace("\\]", "")
    assert "&lt;h1&gt;Forbidden&lt;/h1&gt;" in md  # shown, as text
    assert "# not a heading" not in outside_code  # the frame's fence did not close the block
