"""Watching a deploy in the app (Pilot): a scripted deploy on a loopback sandbox the test switches between rounds
(build v1 → v2, the WebSocket closed before connection_established, the server down, then healthy again), and what
the screen says about it — the history strips, PENDING then DOWN, the timeline's DOWN and UP lines, the stale build
while health is unreachable, a past round's stages and frames — plus the alerts a flip sets off, the `w` key, the
interval prompt, the `--watch` options and a snapshot of the watch view.

Rounds are started by the test (R: the next round now) with a long interval, and awaited through the app's own
state; nothing sleeps blindly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from typing import Any

import pytest
from click.testing import CliRunner

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.events import (Event, Frame, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished,
                           StageStarted)
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions, parse_deploy
from probes.steps.http import HttpEvidence
from tests.test_tui import pane_text, screen_text, tui_config, wait_until  # noqa: F401 (fixture)
from tests.test_tui_snapshots import WALL0, normalise
from tui import cli
from tui.app import StagewatchApp
from tui.state import ROUND_FRAMES, FrameBuffer, SessionState
from tui.widgets.queue import QueuePane

SIZE = (120, 35)  # the watch view must read at 120×35
PROBES = ("health", "golden-path")
ROUND_S = 10.0  # the snapshot's rounds are this far apart


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Local wall time is shown: pin the zone so the times read the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def sandbox_for(config: Config, fault: str = "none", build: str = "v1") -> Sandbox:
    """A sandbox on loopback (port 0) for the packaged target's protocol, playing a deploy (so no build is
    expected: builds change by design) whose steps the test applies by hand between rounds (`switch`, `stop`)."""
    return Sandbox(SandboxOptions(ws_path=resolve_target(config, "sandbox").protocol.ws_path,
                                  deploy=parse_deploy(f"0s {'ok' if fault == 'none' else fault}@{build}")))


def watch_app(config: Config, sandbox: Sandbox, **kwargs: Any) -> StagewatchApp:
    """Watching `sandbox` (the test's, switched by the test) every minute: the test starts each round with R."""
    target = resolve_target(config, "sandbox")
    return StagewatchApp(config, target, RunOptions(only=PROBES, sandbox=sandbox), None, watch=60.0, **kwargs)


async def next_round(app: StagewatchApp, pilot: Any, n: int, *, press: bool = True, timeout: float = 15.0) -> None:
    """Start round `n` (R) unless it starts by itself, and wait until the app has folded its end and drawn it."""
    if press:
        await wait_until(pilot, lambda: app.control is not None and app.control.next_at is not None, timeout)
        await pilot.press("R")
    await wait_until(pilot, lambda: app.state.history.total_rounds >= n and not app.state.running
                     and app.state.history.current is not None and app.state.history.current.verdict is not None,
                     timeout)
    await pilot.pause()


def queue_row(app: StagewatchApp, probe: str) -> str:
    """The probe's row of the queue pane, as drawn."""
    return next(line for line in pane_text(app, "#queue").splitlines() if f" {probe} " in line)


def timeline(app: StagewatchApp) -> str:
    """The timeline's lines as they read (the pane wraps them under their time)."""
    return app.query_one("#timeline").plain  # type: ignore[attr-defined, no-any-return]


def strip_of(app: StagewatchApp, probe: str) -> str:
    queue = app.query_one("#queue", QueuePane)
    return "".join(str(queue.get_cell(probe, "history")).split())


# --- a deploy, round by round ---------------------------------------------------------------------------------

async def test_a_deploy_round_by_round(tui_config, tmp_path):  # noqa: F811
    sb = sandbox_for(tui_config, build="v1")
    await sb.start()
    flips_file = tmp_path / "flips.jsonl"
    app = watch_app(tui_config, sb, on_change=f"cat >> {flips_file}")
    toasts: list[tuple[str, str]] = []
    bells: list[int] = []
    notify = app.notify

    def record(message: str, **kw: Any) -> None:
        toasts.append((message, str(kw.get("severity", "information"))))
        notify(message, **kw)

    app.notify = record  # type: ignore[method-assign]
    app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
    try:
        async with app.run_test(size=SIZE) as pilot:
            # round 1: v1, all well
            await next_round(app, pilot, 1, press=False)
            assert strip_of(app, "golden-path") == "✓" and app.state.history.state("golden-path") == "UP"
            assert "⟳ watch 1 m" in screen_text(app) and "round 1 PASS" in screen_text(app)
            await wait_until(pilot, lambda: "next in" in screen_text(app))  # the countdown to round 2
            assert "UP" in queue_row(app, "golden-path")
            # rounds 2-3: v2 closes the WebSocket before connection_established
            sb.switch(fault="closed-before-ready", build="v2")
            await next_round(app, pilot, 2)
            assert "PENDING" in queue_row(app, "golden-path") and strip_of(app, "golden-path") == "✓✗"
            assert "build v1 → v2" in screen_text(app)  # the timeline's build line
            assert "▏v2" in screen_text(app)  # the build lane marks where v2 began
            await next_round(app, pilot, 3)
            assert "DOWN" in queue_row(app, "golden-path") and strip_of(app, "golden-path") == "✓✗✗"
            text = screen_text(app)
            assert "golden-path DOWN at handshake — closed-before-ready" in text  # on screen, and as a line:
            assert re.search(r"^\d\d:\d\d:\d\d golden-path DOWN at handshake — closed-before-ready \(build v1 → v2\)$",
                             timeline(app), re.M), timeline(app)
            assert any("golden-path DOWN at handshake" in m and sev == "error" for m, sev in toasts), toasts
            assert bells  # DOWN rang the bell
            # round 4: the server is down: health unreachable, the build shown is stale
            await sb.stop()
            await next_round(app, pilot, 4)
            assert "build v2 (stale: health unreachable)" in screen_text(app)
            assert strip_of(app, "health") == "✓✓✓✗" and strip_of(app, "golden-path") == "✓✗✗✗"
            # round 5: back, healthy
            await sb.start()  # (a deploy starts again from its first step: v1)
            sb.switch(fault="none", build="v2")
            await next_round(app, pilot, 5)
            text = screen_text(app)
            assert "stale" not in text
            assert strip_of(app, "golden-path") == "✓✗✗✗✓" and "UP" in queue_row(app, "golden-path")
            assert "golden-path UP — outage" in text
            assert re.search(r"^\d\d:\d\d:\d\d golden-path UP — outage [\d.]+ s, 3 rounds \(build v2\)$", timeline(app),
                             re.M), timeline(app)
            assert any("golden-path UP — outage" in m and sev == "information" for m, sev in toasts), toasts
            # a past round: round 3's stages, close and frames
            await pilot.press("left", "left", "left")  # the newest round (5), then 4, then 3
            assert app.selected_round == 3
            stages = app.query_one("#stages").plain
            assert "handshake FAIL" in stages and "message skip" in stages
            assert "'main cleanup'" in app.query_one("#close").plain
            assert "closed-before-ready" in app.query_one("#diagnosis").plain
            text = screen_text(app)
            assert "Stages · golden-path · round 3 at" in text
            assert "closed-before-ready" in queue_row(app, "golden-path")  # what it came to in round 3
            assert "round 3" in pane_text(app, "#queue").splitlines()[1]  # the result column's header says so
            assert "1000 Normal Closure" in text  # round 3's close row in its frames
            await pilot.press("escape")  # back to the live round
            assert app.selected_round is None and "✔ handshake" in app.query_one("#stages").plain
            # --on-change got each alerting flip as one JSON object: golden-path DOWN, then UP (health was only
            # PENDING: its UP again is no news)
            await wait_until(pilot, lambda: flips_file.exists() and len(flips_file.read_text().splitlines()) >= 2)
            flips = [json.loads(line) for line in flips_file.read_text().splitlines()]
            assert [(f["probe"], f["to"]) for f in flips][:1] == [("golden-path", "DOWN")]
            assert ("golden-path", "UP") in [(f["probe"], f["to"]) for f in flips]
            assert all(f["target"] == "sandbox" for f in flips)
            assert next(f for f in flips if f["to"] == "UP" and f["probe"] == "golden-path")["outage"]["rounds"] == 3
    finally:
        await sb.stop()


async def test_on_change_failure_is_a_warning_and_no_bell_keeps_quiet(tui_config):  # noqa: F811
    config = tui_config.model_copy(update={"watch": tui_config.watch.model_copy(update={"confirm": 1})})
    sb = sandbox_for(config, fault="closed-before-ready")
    await sb.start()
    app = watch_app(config, sb, bell=False, on_change="echo 'webhook said no' >&2; exit 3")
    bells: list[int] = []
    app.bell = lambda: bells.append(1)  # type: ignore[method-assign]
    try:
        async with app.run_test(size=SIZE, notifications=True) as pilot:  # the toasts drawn
            await next_round(app, pilot, 1, press=False)
            assert app.state.history.state("golden-path") == "DOWN"  # confirm: 1
            said = lambda: [(n.message, n.severity) for n in app._notifications]  # noqa: E731
            await wait_until(pilot, lambda: ("--on-change exited 3: webhook said no", "warning") in said())
            await wait_until(pilot, lambda: "webhook said no" in screen_text(app))  # the toast
            assert not bells
    finally:
        await sb.stop()


# --- keys: w, W, t ----------------------------------------------------------------------------------------------

async def test_w_starts_and_stops_watching_and_the_interval_prompt(tui_config):  # noqa: F811
    sb = sandbox_for(tui_config)
    await sb.start()
    target = resolve_target(tui_config, "sandbox")
    app = StagewatchApp(tui_config, target, RunOptions(only=("health",), sandbox=sb), None, autostart=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            assert "Timeline" not in screen_text(app)  # the single-run view: no watch panes
            await pilot.press("w")
            await next_round(app, pilot, 1, press=False)
            await wait_until(pilot, lambda: "next in" in screen_text(app))
            assert "⟳ watch 10 s" in screen_text(app) and "Timeline" in screen_text(app)
            await pilot.press("W")
            await wait_until(pilot, lambda: "Watch interval" in screen_text(app))
            await pilot.press(*["backspace"] * 5, *"soon", "enter")
            await wait_until(pilot, lambda: "'soon' is not a duration" in screen_text(app))
            await pilot.press(*["backspace"] * 4, *"30s", "enter")
            await wait_until(pilot, lambda: "⟳ watch 30 s" in screen_text(app))
            assert app.control is not None and app.control.interval == 30.0
            assert app.control.next_at is not None and app.control.next_at - time.time() > 20  # the wait, again
            await pilot.press("ctrl+p", *"watch interval: 5")  # the palette's presets
            await wait_until(pilot, lambda: "Watch interval: 5 s" in screen_text(app))
            await pilot.press("enter")
            await wait_until(pilot, lambda: "⟳ watch 5 s" in screen_text(app))
            await pilot.press("t")  # timeline → latency
            await wait_until(pilot, lambda: "Latency · health" in screen_text(app))
            assert "p50" in screen_text(app) and "p95" in screen_text(app)
            await pilot.press("t")  # → the frame detail
            await wait_until(pilot, lambda: "Latency · health" not in screen_text(app))
            await pilot.press("w")  # waiting: stops at once
            await wait_until(pilot, lambda: app.control is None and "watch stopped" in screen_text(app))
            assert app.state.history.total_rounds == 1
    finally:
        await sb.stop()


# --- the pieces, without the screen ---------------------------------------------------------------------------------

def test_round_frames_are_bounded_and_numbered_as_they_came():
    buf = FrameBuffer()
    for i in range(ROUND_FRAMES + 50):
        buf.append(Frame(float(i), "p", "in", float(i), 10, '{"type":"x","n":%d}' % i))
    kept = buf.tail(ROUND_FRAMES, 256 * 1024)
    assert kept.total == buf.total and len(kept.items) == ROUND_FRAMES
    assert kept.get(buf.total - 1) is not None and kept.get(buf.total - ROUND_FRAMES - 1) is None
    state = SessionState()
    state.history.configure(keep_rounds=3)
    for n in range(1, 7):
        state.apply_all(state.take([RunStarted(float(n), "t", "u", (("p", "P", 0),), 0.0),
                                    ProbeStarted(float(n), "p", "P", 0, ("s",)),
                                    Frame(float(n), "p", "in", 1.0, 10, f"round {n}"),
                                    ProbeFinished(float(n), "p", "pass", 1.0, None, 1, 0),
                                    RunFinished(float(n), "pass", 1.0)]))
    assert sorted(state.round_frames) == [4, 5, 6]  # the last keep_rounds rounds
    six = state.frames_of_round(6, "p")
    assert six is not None and six.items[0].data == "round 6"
    assert state.frames_of_round(2, "p") is None


def test_watch_option_parses_durations_and_says_what_is_wrong(monkeypatch):
    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "_open_app", lambda *a, **kw: opened.append(kw))
    runner = CliRunner()
    result = runner.invoke(cli.main, ["--watch", "30s", "--no-bell", "--on-change", "true", "--no-record"])
    assert result.exit_code == 0, result.output
    assert opened[-1] == {"watch": 30.0, "bell": False, "on_change": "true"}
    result = runner.invoke(cli.main, ["--no-record", "--watch"])
    assert result.exit_code == 0 and opened[-1]["watch"] == 10.0  # alone: config watch.interval_s
    result = runner.invoke(cli.main, ["--no-record"])
    assert opened[-1] == {"watch": None, "bell": True, "on_change": None}
    result = runner.invoke(cli.main, ["--watch", "soon"])
    assert result.exit_code == 2 and "Invalid value for '--watch': 'soon' is not a duration" in result.output


def _health_round(t: float, build: str, status: str = "pass") -> list[Event]:
    """One round of a one-probe queue whose health reports `build` (as the engine's events would say it)."""
    return [RunStarted(0.0, "sandbox", "http://127.0.0.1:1", (("health", "Health", 0),), WALL0 + t),
            ProbeStarted(0.1, "health", "Health", 0, ("health",)),
            StageStarted(0.2, "health", "health", "http"),
            StageFinished(0.3, "health", "health", status, 1.0, "GET /health 200",
                          HttpEvidence(http_status=200, version=build)),
            ProbeFinished(0.4, "health", status, 1.0, None if status == "pass" else "health", 0, 0),
            RunFinished(0.5, "pass" if status == "pass" else "fail", 1.0)]


async def test_rounds_of_a_recording_show_as_a_watch_and_a_hostile_build_stays_text(tui_config):  # noqa: F811
    """A replayed or fixed list of several rounds opens the watch view; a build named by the server with markup
    and a terminal escape in it is shown as visible text in the lane, the header and the timeline."""
    hostile = "[bold red]v2\x1b]0;pwned\x07"
    events = _health_round(0, "v1") + _health_round(10, hostile, "fail") + _health_round(20, hostile, "fail")
    app = StagewatchApp(tui_config, events=events, now=lambda: WALL0 + 25)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.watch_view and "▏[bold" in screen_text(app))  # the build lane
        text = screen_text(app)
        assert "\x1b" not in text and "\x07" not in text
        assert "[bold red]v2\\x1b]0;pwned\\x07" in timeline(app)  # made visible, never parsed as markup
        assert "build [bold red]v2\\x1b" in text  # the header, as text
        assert "DOWN" in queue_row(app, "health") and strip_of(app, "health") == "✓✗✗"
        assert "watch stopped" in text and "round 3 FAIL" in text
        queue = app.query_one("#queue", QueuePane)  # a click on a history cell picks its round
        x = 1 + queue.cell_padding  # the border, then the cell's padding
        for column in queue.ordered_columns:
            if column.key.value == "history":
                break
            x += column.get_render_width(queue)
        await pilot.click("#queue", offset=(x + 1, 2))  # health's row, the second round's cell
        await wait_until(pilot, lambda: app.selected_round == 2)
        assert "Stages · health · round 2 at" in screen_text(app)


async def test_a_timeline_line_that_grows_is_drawn_again(tui_config):  # noqa: F811
    """Probes that flip alike in one round share one line, which the history replaces as each probe finishes:
    the pane shows the line as it stands, not as it first read."""
    probes = (("a", "A", 0), ("b", "B", 0))

    def round_events(t: float, status: str) -> list[list[Event]]:
        steps = [[RunStarted(0.0, "sandbox", "http://127.0.0.1:1", probes, WALL0 + t)]]
        for pid, _name, _prio in probes:
            steps.append([ProbeStarted(0.1, pid, pid, 0, ("s",)), StageStarted(0.2, pid, "s", "http"),
                          StageFinished(0.3, pid, "s", status, 1.0, "x"),
                          ProbeFinished(0.4, pid, status, 1.0, None if status == "pass" else "s", 0, 0)])
        steps.append([RunFinished(0.5, "pass" if status == "pass" else "fail", 1.0)])
        return steps

    app = StagewatchApp(tui_config, events=[], now=lambda: WALL0 + 30)
    async with app.run_test(size=SIZE) as pilot:
        for k, status in enumerate(("pass", "fail")):
            for step in round_events(10 * k, status):  # each probe's end in a tick of its own
                for event in step:
                    app._ingest(event)
                await wait_until(pilot, lambda: not app._inbox)
                await pilot.pause()
        await wait_until(pilot, lambda: "a, b PENDING at s" in screen_text(app))


# --- a snapshot of the watch view -----------------------------------------------------------------------------------

async def _deploy_rounds(config: Config) -> list[Event]:
    """Five rounds of the real engine against a sandbox switched between rounds, each round normalised (times,
    ports, ids) and placed ROUND_S apart on the wall clock."""
    sb = sandbox_for(config, build="v1")
    await sb.start()
    script = [("none", "v1", True), ("closed-before-ready", "v2", True), ("closed-before-ready", "v2", True),
              ("none", "v2", False), ("none", "v2", True)]
    out: list[Event] = []
    try:
        for k, (fault, build, up) in enumerate(script):
            if up and not sb.listening:
                await sb.start()
            elif not up:
                await sb.stop()
            sb.switch(fault=fault, build=build)
            bus = EventBus()
            events: list[Event] = []
            bus.subscribe(events.append)
            await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(only=PROBES, sandbox=sb))
            for e in normalise(events):
                out.append(dataclasses.replace(e, wall=WALL0 + ROUND_S * k) if isinstance(e, RunStarted) else e)
    finally:
        await sb.stop()
    return out


@pytest.fixture(scope="module")
def deploy_events(tui_config: Config) -> list[Event]:  # noqa: F811
    return asyncio.run(_deploy_rounds(tui_config))


def test_snapshot_watch_view(snap_compare, tui_config, deploy_events):  # noqa: F811
    """Five rounds: the strips (✓✗✗✗✓), DOWN then UP, the build lane, the timeline; round 3 picked on the strip."""
    app = StagewatchApp(tui_config, events=deploy_events, now=lambda: WALL0 + ROUND_S * 4 + 8.0, watch=10.0)

    async def pick(pilot: Any) -> None:
        await pilot.press("left", "left", "left")
        assert app.selected_round == 3
        assert app.state.history.state("golden-path") == "UP"
        assert "round 5 PASS" in app.query_one("#header").plain

    assert snap_compare(app, terminal_size=SIZE, run_before=pick)


def test_snapshot_module_has_no_stray_time_dependence(deploy_events):
    walls = sorted({e.wall for e in deploy_events if isinstance(e, RunStarted)})
    assert walls == [WALL0 + ROUND_S * k for k in range(5)]
