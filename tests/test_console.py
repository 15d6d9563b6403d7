"""Reproducing by hand in the app: the console (compose, send, ping, close with a code, reconnect with another token
transport), the auth-path matrix (m) and the comparison of two runs (d), driven with Textual's Pilot against the
embedded sandbox; and the console's engine alone. Assertions are on what the panes show and on the events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probes.bus import EventBus
from probes.clock import Clock
from probes.config import resolve_target
from probes.console import Console, ConsoleError, Overrides, check_close_code, check_json, parse_claims, parse_headers
from probes.model import RunModel
from probes.runner import RunOptions
from probes.sandbox import Sandbox, SandboxOptions
from tests.test_tui import SIZE, pane_text, screen_text, tui_config, wait_until  # noqa: F401
from tui.app import StagewatchApp
from tui.widgets.console import Composer, ConsolePanel, load_saved, save_message
from tui.widgets.textreport import TextReportScreen


def console_app(config, fault: str = "none") -> StagewatchApp:  # noqa: F811
    return StagewatchApp(config, resolve_target(config, "sandbox"), RunOptions(fault=fault), None, console=True)


def frames(app: StagewatchApp) -> int:
    buf = app.state.frames.get("console")
    return buf.frames if buf else 0


def test_overrides_are_parsed_and_bad_input_is_one_line():
    assert parse_headers("X-A: 1; -X-E2E-Test\nX-B:two") == ({"X-A": "1", "X-B": "two"}, ("x-e2e-test",))
    with pytest.raises(ConsoleError, match="Name: value"):
        parse_headers("not a header")
    assert parse_claims('sub=other exp=-60 roles=["admin"]') == {"sub": "other", "exp": -60, "roles": ["admin"]}
    with pytest.raises(ConsoleError, match="line 1, column"):
        check_json('{"type": ')
    with pytest.raises(ConsoleError, match="may not be sent"):
        check_close_code(1006)
    assert check_close_code(4001) == 4001


async def test_console_engine_sends_pings_closes_and_reconnects(tui_config):  # noqa: F811
    bus, model = EventBus(), RunModel()
    bus.subscribe(model.apply)
    console = Console(tui_config, resolve_target(tui_config, "sandbox"), bus, Clock(), RunOptions())
    await console.open()
    try:
        assert await console.connect() == "pass"
        await console.send(json.dumps({"type": "user_message", "payload": {"content": "2 + 2?"}}))
        assert await console.ping() is not None
        await console.close(4001, "done by hand")
        probe = model.probes["console"]
        assert probe.status == "pass" and (probe.close.code, probe.close.reason, probe.close.by) == (
            4001, "done by hand", "client")
        assert [s for s in probe.stages] == ["connect", "handshake", "send", "ping", "close"]
        assert probe.frames_out == 1 and probe.frames_in >= 1
        # an expired token, another transport: a fresh connection, refused and diagnosed as a probe would be
        assert await console.connect(Overrides(claims={"exp": -60})) == "fail"
        probe = model.probes["console"]
        assert probe.stages["connect"].status == "fail" and "401" in probe.stages["connect"].detail
        assert probe.diagnoses and probe.stages["handshake"].status == "skip"
        assert await console.connect(Overrides(transport="header", remove_headers=("x-e2e-test",))) == "pass"
        sent = model.probes["console"].opened.request_headers
        assert "Authorization" in sent and "X-E2E-Test" not in sent and "Sec-WebSocket-Protocol" not in sent
        assert sent["Authorization"].startswith("Bearer eyJhbGciOi…")  # redacted in the event
        with pytest.raises(ConsoleError, match="not JSON"):
            await console.send("{oops")
    finally:
        await console.shutdown()
    assert not bus.failures


async def test_the_app_console_composes_sends_pings_closes_and_reconnects(tui_config, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    app = console_app(tui_config)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "console" in app.state.probes and app.state.probes["console"].stages.get(
            "handshake") is not None and app.state.probes["console"].stages["handshake"].status == "pass", 10)
        panel = app.query_one(ConsolePanel)
        composer = panel.query_one(Composer)
        assert '"user_message"' in composer.text  # the config's first template
        composer.load_text('{"type": "user_message", "payload": {"content": "console: 3 + 4?"}}')
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: frames(app) >= 7, 10)  # ready, ours, five agent events
        await wait_until(pilot, lambda: "agent_completed" in pane_text(app, "#frames"), 5)
        assert "user_message" in pane_text(app, "#frames")
        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: "ping" in app.state.probes["console"].stages, 5)
        await wait_until(pilot, lambda: app.state.probes["console"].stages["ping"].status == "pass", 5)
        assert "pong in" in app.state.probes["console"].stages["ping"].detail
        composer.load_text("{not json")
        await pilot.press("ctrl+s")
        await pilot.pause(0.2)
        assert frames(app) == 7  # refused before sending
        # history: ↑ on the first line brings the sent message back
        composer.move_cursor((0, 0))
        await pilot.press("up")
        assert "console: 3 + 4?" in composer.text
        panel.query_one("#console-code").value = "4001"
        panel.query_one("#console-reason").value = "closed by hand"
        await pilot.press("ctrl+k")
        await wait_until(pilot, lambda: app.state.probes["console"].status == "pass", 5)
        close = pane_text(app, "#close")
        assert "4001" in close and "closed by hand" in close
        # reconnect with the token in the Authorization header only
        panel.query_one("#console-transport").value = "header"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: app.state.probes["console"].opened is not None and "Authorization" in
                         app.state.probes["console"].opened.request_headers, 10)
        assert app.state.probes["console"].opened.subprotocol_offered is None
        # save: the message lands in the user data dir, offered as a template
        composer.load_text('{"type": "ping"}')
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: load_saved() == ['{"type": "ping"}'], 5)
        assert screen_text(app).count("Console") >= 1


async def test_the_console_shows_a_refusal_with_its_diagnosis(tui_config):  # noqa: F811
    app = console_app(tui_config, fault="strip-auth")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "console" in app.state.probes and app.state.probes["console"].finished, 10)
        probe = app.state.probes["console"]
        assert probe.status == "fail" and probe.failed_stage == "connect"
        await wait_until(pilot, lambda: "auth-header-stripped" in pane_text(app, "#diagnosis"), 5)


async def test_matrix_key_names_the_stripped_header(tui_config):  # noqa: F811
    app = StagewatchApp(tui_config, resolve_target(tui_config, "sandbox"), RunOptions(fault="strip-auth-header"),
                        None, autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("m")
        await wait_until(pilot, lambda: isinstance(app.screen, TextReportScreen), 15)
        text = screen_text(app)
        assert "the Authorization header does not reach the backend; the subprotocol does" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, TextReportScreen)


def test_saved_messages_are_bounded_and_survive_garbage(tmp_path: Path):
    path = tmp_path / "messages.json"
    path.write_text("{not a list")
    assert load_saved(path) == []
    for n in range(120):
        save_message(json.dumps({"n": n}), path)
    saved = load_saved(path)
    assert len(saved) == 100 and saved[0] == '{"n": 119}'


async def test_copy_as_python_lands_in_a_file_with_its_size(tui_config, tmp_path, monkeypatch):  # noqa: F811
    """Copy falls back where OSC 52 is not confirmed: the runtime dir's file (and tmux's buffer inside tmux)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("TMUX", raising=False)
    app = StagewatchApp(tui_config, resolve_target(tui_config, "sandbox"), RunOptions(fault="closed-before-ready"),
                        None, autostart=False)
    async with app.run_test(size=SIZE) as pilot:
        notes: list[str] = []
        monkeypatch.setattr(app, "notify", lambda message, **kw: notes.append(str(message)))
        app.tools.copy_as("python")
        await pilot.pause()
    copied = (tmp_path / "stagewatch" / "clipboard.txt").read_text()
    assert "stagewatch sandbox --port 8765 --fault closed-before-ready &" in copied
    assert "eyJ" not in copied
    assert notes and f"{len(copied.encode()):,} B" in notes[-1] and "clipboard.txt" in notes[-1]


async def test_a_console_session_exports_as_markdown(tui_config, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    app = console_app(tui_config)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "console" in app.state.probes and app.state.probes["console"].stages.get(
            "handshake") is not None and app.state.probes["console"].stages["handshake"].status == "pass", 10)
        await pilot.press("ctrl+k")
        await wait_until(pilot, lambda: app.state.probes["console"].finished, 5)
        app.tools.export_markdown()
    reports = list((tmp_path / "stagewatch" / "reports").glob("*-session.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "### console (console · as configured)" in text and "connection_established" in text
    assert "| handshake | pass |" in text
    assert "**Close:** `1000`" in text


async def test_a_server_that_ignores_pings_and_our_close_fails_those_stages(fast_config, monkeypatch):
    """Its own server: pongs and close replies are swallowed. The ping fails at its deadline, the unanswered close
    fails the session (the drop that follows is not the client's doing), both with words for the toast."""
    from websockets.asyncio.server import serve
    from websockets.frames import Opcode
    from websockets.server import ServerProtocol

    original = ServerProtocol.recv_frame

    def deaf(self, frame):  # type: ignore[no-untyped-def]
        if frame.opcode in (Opcode.PING, Opcode.CLOSE):
            return None
        return original(self, frame)

    monkeypatch.setattr(ServerProtocol, "recv_frame", deaf)  # the server's side only: our client is a ClientProtocol

    async def handler(ws):  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"type": "connection_established"}))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, select_subprotocol=lambda conn, offered: offered[0] if offered
                     else None) as server:
        port = server.sockets[0].getsockname()[1]
        target = resolve_target(fast_config, url=f"http://127.0.0.1:{port}")
        bus, model = EventBus(), RunModel()
        bus.subscribe(model.apply)
        console = Console(fast_config, target, bus, Clock(), RunOptions(env={"JWT_SECRET_KEY": "k" * 32}))
        await console.open(own_run=True)
        try:
            assert await console.connect() == "pass"
            assert await console.ping() is None
            assert console.last is not None and console.last[:2] == ("ping", "fail")
            assert "no pong within" in console.last[2]
            await console.close(4000, "bye")
            probe = model.probes["console"]
            assert probe.status == "fail" and probe.failed_stage == "close"
            assert "did not answer our close 4000" in probe.stages["close"].detail
        finally:
            await console.shutdown()
    assert model.finished is not None and model.finished.verdict == "fail"  # the session was the run, ended
    assert model.target == target.name
