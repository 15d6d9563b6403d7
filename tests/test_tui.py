"""The Textual app driven with Pilot against the embedded sandbox (loopback only): what the screen shows after
a passing and a faulted run, the frame filter, follow mode, rerun, copy, replay controls, help and the palette.

Runs are awaited through the app's own state (RunFinished folded, with a deadline), never with blind sleeps.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from probes.bus import EventBus
from probes.config import Config, Timeouts, load_config, resolve_target
from probes.events import Event, Frame, ProbeStarted, RunFinished, RunStarted, StageFinished
from probes.recording import Recorder, read_recording
from probes.runner import Clock, RunOptions, run_queue
from textual.geometry import Region
from tui.app import StagewatchApp
from tui.state import FrameBuffer
from tui.widgets.frames import FrameList

SIZE = (160, 45)
FAST = Timeouts(http=2, connect=2, ready=0.5, agent=1.0, response=0.5, close=0.5)
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{12,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")


# --- fixtures and helpers -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tui_config() -> Config:
    """The packaged config with short timeouts (a fault that hangs costs half a second, not 30)."""
    return load_config(None).model_copy(update={"timeouts": FAST})


def live_app(config: Config, fault: str = "none", **options: object) -> StagewatchApp:
    target = resolve_target(config, "sandbox")
    return StagewatchApp(config, target, RunOptions(fault=fault, **options), None)  # type: ignore[arg-type]


async def wait_for_run(app: StagewatchApp, pilot: object, *, runs: int = 1, timeout: float = 15.0) -> None:
    """Until the app has folded the RunFinished of its `runs`-th run (and drawn it), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (app.state.runs >= runs and not app.state.running and app.state.finished is not None):
        if time.monotonic() > deadline:
            raise AssertionError(f"run {runs} did not finish within {timeout} s (runs={app.state.runs}, "
                                 f"running={app.state.running})")
        await pilot.pause(0.02)  # type: ignore[attr-defined]
    await pilot.pause()  # type: ignore[attr-defined]


async def wait_until(pilot: object, predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)  # type: ignore[attr-defined]


def screen_text(app: StagewatchApp) -> str:
    """The whole screen as plain text, exactly as the terminal would show it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True,
                      color_system=None, legacy_windows=False, force_terminal=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def pane_text(app: StagewatchApp, selector: str) -> str:
    """The visible text of one widget (its rendered lines)."""
    widget = app.query_one(selector)
    strips = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return "\n".join(strip.text for strip in strips)


def style_of(app: StagewatchApp, selector: str, text: str) -> str | None:
    """The foreground colour (hex) of the first rendered segment of `selector` containing `text`."""
    widget = app.query_one(selector)
    for strip in widget.render_lines(Region(0, 0, widget.size.width, widget.size.height)):
        for segment in strip:
            if text in segment.text and segment.style is not None and segment.style.color is not None:
                triplet = segment.style.color.get_truecolor()
                return f"#{triplet.red:02X}{triplet.green:02X}{triplet.blue:02X}"
    return None


def theme_hex(app: StagewatchApp, variable: str) -> str:
    from textual.color import Color

    return Color.parse(app.theme_variables[variable]).hex.upper()


# --- a passing run -----------------------------------------------------------------------------------------

async def test_passing_run_shows_every_stage_green(tui_config):
    app = live_app(tui_config)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        assert app.state.verdict == "pass"
        assert app.focus_probe == "golden-path"  # at the end of a passing run: the golden path
        golden = app.state.probes["golden-path"]
        assert [(s.name, s.status) for s in golden.stages.values()] == [
            (name, "pass") for name in ("health", "auth", "connect", "handshake", "message", "agent", "response")]
        text = screen_text(app)
        for probe in ("health", "golden-path", "auth-required", "event-order", "message-flow", "reconnect"):
            assert probe in text
        assert "build 2026.11.25-sandbox" in text  # header: the build health reported
        assert "token staging-e2e-user-002 · expires in 14:5" in text  # subject and the countdown
        assert "✔ 6 passed" in text and "PASS" in text
        stages = pane_text(app, "#stages")
        assert "✔ health" in stages and "✔ response" in stages
        assert "subprotocol echoed" in stages
        assert "agent_started +" in stages and "agent_completed +" in stages  # which events came, and when
        assert "The answer to" in stages  # the response excerpt
        assert style_of(app, "#stages", "✔ handshake") == theme_hex(app, "success")
        frames = pane_text(app, "#frames")
        assert "connection_established" in frames and "user_message" in frames and "agent_completed" in frames
        assert "↑" in frames and "↓" in frames
        assert "1000 Normal Closure — 'stagewatch done' — client closed" in pane_text(app, "#close")
        assert not JWT_RE.search(text), "a full token is on screen"


# --- the demo fault: closed before ready -------------------------------------------------------------------------

async def test_closed_before_ready_focuses_the_failure_with_close_and_diagnosis(tui_config):
    app = live_app(tui_config, "closed-before-ready")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        assert app.state.verdict == "fail"
        assert app.focus_probe == "golden-path"  # the first failing probe, without a key press
        statuses = {s.name: s.status for s in app.state.probes["golden-path"].stages.values()}
        assert statuses == {"health": "pass", "auth": "pass", "connect": "pass", "handshake": "fail",
                            "message": "skip", "agent": "skip", "response": "skip"}
        stages = pane_text(app, "#stages")
        assert "✘ handshake" in stages and "FAIL" in stages
        assert style_of(app, "#stages", "✘ handshake") == theme_hex(app, "error")  # red
        close = pane_text(app, "#close")
        assert re.search(r"1000 Normal Closure — 'main cleanup' — server closed \d+ ms after accept", close), close
        assert "the server closed first" in close
        diagnosis = pane_text(app, "#diagnosis")
        assert "closed-before-ready" in diagnosis and "next:" in diagnosis
        text = screen_text(app)
        assert "✘ 4 failed" in text and "FAIL" in text
        assert "handshake: closed-before-ready" in text  # the queue's last result


async def test_copy_puts_the_close_summary_on_the_clipboard(tui_config):
    app = live_app(tui_config, "closed-before-ready", only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        await pilot.press("c")
        assert "golden-path: 1000 Normal Closure — 'main cleanup' — server closed" in app.clipboard
        assert "diagnosis closed-before-ready" in app.clipboard


async def test_non_json_and_binary_frames_are_shown_safely(tui_config):
    app = live_app(tui_config, "garbage", only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        frames = pane_text(app, "#frames")
        assert "<html>502 Bad Gateway</html>" in frames  # text frame, one line
        assert "binary" in frames and "00 ff fe" in frames  # binary frame: hex, no raw bytes
        await pilot.press("tab", "tab", "home")  # queue → stages → the frames, the first one
        await pilot.press("down")
        assert app.query_one("#frames", FrameList).cursor == 1
        await wait_until(pilot, lambda: "00000000  00 ff fe" in app.query_one("#detail").text)


# --- frames: filter, follow ----------------------------------------------------------------------------------------

async def test_filter_narrows_the_stream_and_esc_clears_it(tui_config):
    app = live_app(tui_config, only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        frames = app.query_one("#frames", FrameList)
        assert frames.row_count == 8  # 7 frames and the close, as its own row
        last = [line for line in pane_text(app, "#frames").splitlines() if line.strip()][-1]
        assert "✕" in last and "close" in last and "1000 Normal Closure — 'stagewatch done'" in last
        await pilot.press("slash", *"type:close")
        await wait_until(pilot, lambda: frames.row_count == 1)
        await pilot.press(*["backspace"] * len("type:close"), *"tool")
        await wait_until(pilot, lambda: frames.row_count == 2)
        shown = pane_text(app, "#frames")
        assert "tool_executing" in shown and "tool_completed" in shown
        assert "agent_started" not in shown and "connection_established" not in shown
        assert "/tool → 2" in screen_text(app)
        await pilot.press("enter")  # keep the filter, back to the list
        assert app.screen.focused is frames
        await pilot.press("slash", *[k for k in "tool"], *["backspace"] * 4, *"type:user_message")
        await wait_until(pilot, lambda: frames.row_count == 1)
        assert "user_message" in pane_text(app, "#frames")
        await pilot.press("escape")
        await wait_until(pilot, lambda: frames.row_count == 8)
        assert frames.filter is None


async def test_follow_pauses_when_scrolling_up_and_counts_new_frames(tui_config):
    app = live_app(tui_config, only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        frames = app.query_one("#frames", FrameList)
        assert frames.follow
        await pilot.press("tab", "tab", "up")  # queue → stages → frames
        assert not frames.follow
        # more frames arrive for the focused probe (as the bus would deliver them)
        for i in range(12):
            app._ingest(Frame(9.0 + i, "golden-path", "in", 100.0 + i, 20, '{"type":"late","n":%d}' % i))
        await wait_until(pilot, lambda: "12 new" in screen_text(app))
        assert frames.cursor == 6  # the selection did not jump (7 frames and the close: rows 0-7)
        await pilot.press("space")  # follow again
        await wait_until(pilot, lambda: frames.follow and frames.cursor == 19)
        assert "following" in screen_text(app)


def test_frame_buffer_is_bounded():
    buf = FrameBuffer(cap=100, max_bytes=10_000)
    for i in range(1000):
        buf.append(Frame(float(i), "p", "in", float(i), 30, '{"type":"flood","n":%05d}' % i))
    assert buf.total == 1000
    assert buf.first == 900 and buf.get(899) is None and buf.get(999) is not None
    big = FrameBuffer(cap=100, max_bytes=10_000)
    for i in range(50):
        big.append(Frame(float(i), "p", "in", 0.0, 1000, "x" * 1000))
    assert big.total == 50 and big.get(49) is not None
    kept = [big.get(seq) for seq in range(50)]
    assert sum(len(f.data) for f in kept if f is not None) <= 10_000  # the byte cap held


# --- runs: rerun, fail-fast ------------------------------------------------------------------------------------------

async def test_rerun_runs_only_the_focused_probe(tui_config):
    app = live_app(tui_config)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        app.query_one("#queue").focus()
        await pilot.press("home")  # health
        await pilot.press("down", "down", "down")  # → event-order (picked by the user)
        assert app.focus_probe == "event-order" and app.user_pinned
        assert "Stages · event-order" in screen_text(app)
        await pilot.press("r")
        await wait_for_run(app, pilot, runs=2)
        assert app.state.probes["event-order"].runs == 2
        assert app.state.probes["golden-path"].runs == 1
        assert app.state.probes["event-order"].status == "pass"
        assert app.focus_probe == "event-order"
        assert "run 2 PASS" in screen_text(app)


async def test_fail_fast_toggle_applies_to_the_next_queue_run(tui_config):
    app = live_app(tui_config, "not-ready")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        assert app.state.counts()["skip"] == 0
        await pilot.press("f")
        assert "fail-fast on" in screen_text(app)
        await pilot.press("R")
        await wait_for_run(app, pilot, runs=2)
        assert app.state.counts()["skip"] == 5  # health failed; the rest were not run
        assert "5 skipped" in screen_text(app)


# --- replay ----------------------------------------------------------------------------------------------------------

async def _record(config: Config, path: Path, fault: str) -> list[Event]:
    bus = EventBus()
    clock = Clock()
    events: list[Event] = []
    bus.subscribe(events.append)
    recorder = Recorder(path, wall0=clock.wall, notify=bus.publish)
    bus.subscribe(recorder.handle)
    try:
        await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(fault=fault, only=("golden-path",)),
                        clock)
    finally:
        recorder.close()
    return events


async def test_replay_shows_the_recording_with_pause_step_and_speed(tui_config, tmp_path):
    path = tmp_path / "session.jsonl"
    await _record(tui_config, path, "closed-before-ready")
    replay = read_recording(path)
    app = StagewatchApp(tui_config, None, None, None, replay, replay_name=str(path), speed=1.0, paused=True)
    async with app.run_test(size=SIZE) as pilot:
        assert app.player.paused
        before = app.player.index
        await pilot.press("n")
        await wait_until(pilot, lambda: app.player.index == before + 1)
        before = app.player.index
        await pilot.press("n")
        await wait_until(pilot, lambda: app.player.index == before + 1)
        await wait_until(pilot, lambda: f"event {before + 1}/{len(replay.events)}" in screen_text(app))
        assert "⏸ paused" in screen_text(app)
        await pilot.press("plus", "plus")
        assert app.player.speed == 4.0
        await pilot.press("minus")
        assert app.player.speed == 2.0
        await pilot.press("space")  # resume to the end
        await wait_until(pilot, lambda: app.player.done and app.state.finished is not None, timeout=10)
        await pilot.pause()
        assert app.focus_probe == "golden-path"
        assert re.search(r"1000 Normal Closure — 'main cleanup' — server closed \d+ ms",
                         pane_text(app, "#close"))
        assert "finished" in screen_text(app)
        # the same picture as the live run: stage by stage
        assert {s.name: s.status for s in app.state.probes["golden-path"].stages.values()}["handshake"] == "fail"


async def test_replay_of_a_truncated_recording_says_so(tui_config, tmp_path):
    path = tmp_path / "cut.jsonl"
    await _record(tui_config, path, "none")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the recorder died mid-line
    replay = read_recording(path)
    assert replay.truncated
    app = StagewatchApp(tui_config, None, None, None, replay, replay_name=str(path), speed=float("inf"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.player.done)
        await pilot.pause()
        assert "truncated recording" in screen_text(app)


# --- keys, help, palette ---------------------------------------------------------------------------------------------

def test_every_binding_has_an_id_and_a_tooltip():
    for binding in StagewatchApp.BINDINGS:
        assert binding.id, binding  # type: ignore[union-attr]
        if binding.show:  # type: ignore[union-attr]
            assert binding.tooltip, binding  # type: ignore[union-attr]


async def test_help_screen_lists_the_keys(tui_config):
    app = StagewatchApp(tui_config, events=[])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: "rerun the focused probe" in screen_text(app))
        assert "fail-fast" in screen_text(app)
        await pilot.press("escape")
        await wait_until(pilot, lambda: "rerun the focused probe" not in screen_text(app))


async def test_command_palette_offers_the_actions_and_switch_target(tui_config):
    app = live_app(tui_config, only=("health",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        await pilot.press("ctrl+p")
        await pilot.press(*"toggle fail")
        await wait_until(pilot, lambda: "Toggle fail-fast" in screen_text(app))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.fail_fast)
        await pilot.press("ctrl+p", *"switch target")
        await wait_until(pilot, lambda: "Switch target: staging" in screen_text(app))
        await pilot.press("escape")


async def test_subscriber_only_appends_and_the_tick_draws_in_batches(tui_config):
    """The bus subscriber appends to the inbox and nothing else; the tick keeps the last 5,000 frames and draws."""
    app = StagewatchApp(tui_config, events=[])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        before = screen_text(app)
        app.bus.publish(RunStarted(0.0, "sandbox", "http://127.0.0.1:1", (("p", "P", 0),), 0.0))
        app.bus.publish(ProbeStarted(0.1, "p", "P", 0, ("connect",)))
        for i in range(10_000):  # as the engine would, synchronously, in one go
            app.bus.publish(Frame(0.2, "p", "in", 1.0 + i, 10, '{"type":"x","n":%d}' % i))
        assert len(app._inbox) == 10_002 and "p" not in app.state.frames  # only appended
        assert screen_text(app) == before
        app.bus.publish(StageFinished(0.3, "p", "connect", "pass", 1.0, "ok"))
        app.bus.publish(RunFinished(0.4, "pass", 400.0))
        await wait_until(pilot, lambda: app.state.verdict == "pass")
        await wait_until(pilot, lambda: "Frames · p · 10,000 (last 5,000 shown)" in screen_text(app))
        buffer = app.state.frames["p"]
        assert buffer.total == 10_000 and len(buffer.items) <= 5_000 and not app._inbox
        await wait_until(pilot, lambda: '"n": 9999' in app.query_one("#detail").text)  # following: the newest
        assert '"n": 9999' in screen_text(app)


async def test_a_running_stage_shows_its_clock_and_rerunning_mid_run_interrupts_cleanly(tui_config):
    app = live_app(tui_config, "slow-agent")
    async with app.run_test(size=SIZE) as pilot:
        def agent_running() -> bool:
            probe = app.state.probes.get("golden-path")
            return probe is not None and probe.current_stage is not None and probe.current_stage.name == "agent"

        await wait_until(pilot, agent_running, timeout=10)
        await wait_until(pilot, lambda: re.search(r"▶ agent [\d.]+ m?s of 1 s", pane_text(app, "#stages")))
        await pilot.press("R")  # the whole queue again, while run 1 is still in its agent stage
        await wait_for_run(app, pilot, runs=2, timeout=30)
        # run 1 wound down (its RunFinished folded) before run 2 started, so run 2's results stand alone
        assert app.state.verdict == "fail"
        statuses = {p: probe.status for p, probe in app.state.probes.items()}
        assert not {"queued", "running"} & set(statuses.values()), statuses
        golden = app.state.probes["golden-path"]
        assert golden.status == "fail" and golden.failed is not None
        assert golden.failed.detail.startswith("no agent_completed within 1 s"), golden.failed.detail
        assert "agent: agent-timeout" in screen_text(app)


async def test_enter_opens_a_frame_whole_and_esc_goes_back(tui_config):
    app = live_app(tui_config, only=("golden-path",))
    async with app.run_test(size=(80, 24)) as pilot:  # too narrow for the detail pane: enter is the way in
        await wait_for_run(app, pilot)
        await pilot.press("tab", "tab", "home", "enter")  # queue → stages → frames
        await wait_until(pilot, lambda: "Frame #0" in screen_text(app))
        text = screen_text(app)
        assert '"type": "connection_established"' in text and "received +" in text
        await pilot.press("c")
        assert '"type": "connection_established"' in app.clipboard
        await pilot.press("escape")
        await wait_until(pilot, lambda: "Frame #0" not in screen_text(app))
        assert "? Help" in screen_text(app) and "q Quit" in screen_text(app)  # the footer fits 80 columns


async def test_engine_runs_never_overlap_and_each_is_cancelled_once():
    """Three runs started in quick succession (r, r, r): each earlier run is cancelled once and its cleanup runs
    to the end before the next run starts; a second cancel would cut that cleanup short."""
    import asyncio

    from tui.engine import EngineThread

    log: list[str] = []

    async def run(name: str) -> None:
        log.append(f"{name} start")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append(f"{name} cleanup")
            await asyncio.sleep(0.2)  # a close handshake, a sandbox stop: must not be interrupted
            log.append(f"{name} cleaned")
            raise

    engine = EngineThread()
    engine.start()
    try:
        waits = []
        for name in ("a", "b"):
            waits.append(asyncio.ensure_future(engine.run(run(name))))
            await asyncio.sleep(0.05)
            waits[-1].cancel()  # what an exclusive worker does when the next run starts
        last = asyncio.ensure_future(engine.run(run("c")))
        await asyncio.sleep(0.8)
        assert log == ["a start", "a cleanup", "a cleaned", "b start", "b cleanup", "b cleaned", "c start"] or \
            log == ["a start", "a cleanup", "a cleaned", "c start"], log  # b may be cancelled before it starts
        last.cancel()
        await asyncio.sleep(0.4)
        assert log[-2:] == ["c cleanup", "c cleaned"], log
    finally:
        engine.stop()
