"""Watching a deploy in the app (Pilot): a scripted deploy on a loopback sandbox the test switches between rounds
(build v1 → v2, the WebSocket closed before connection_established, the server down, then healthy again), and what
the screen says about it — the history strips, PENDING then DOWN, the timeline's DOWN and UP lines, the stale build
while health is unreachable, a past round's stages and frames — plus the alerts a flip sets off, the `w` key, the
interval prompt, the `--watch` options (of the app and of `demo`) and a snapshot of the watch view. Rounds folded
from fixed events (no sandbox) show the rest: the timeline keeping its newest line in view (until the person
scrolls up), one short toast per round clear of the Close and Diagnosis panes, the build lane naming only what
health reported, and a DEGRADED line with figures wrapped whole.

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
from textual.events import MouseScrollDown, MouseScrollUp
from textual.geometry import Region

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.events import (Diagnosed, Event, Frame, ProbeFinished, ProbeStarted, RunFinished, RunStarted,
                           StageFinished, StageStarted)
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
            # one short toast for the round: the probe and the cause (the timeline has the rest)
            assert toasts == [("golden-path DOWN — closed-before-ready", "error")], toasts
            assert bells  # DOWN rang the bell
            # round 4: the server is down: health unreachable, the build shown is stale
            await sb.stop()
            await next_round(app, pilot, 4)
            assert "build v2 (stale: not reported this round)" in screen_text(app)
            assert len(toasts) == 1  # health and the rest went PENDING (DOWN already): no news worth a toast
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
            assert len(toasts) == 2 and re.fullmatch(r"golden-path UP — outage [\d.]+ s", toasts[1][0]), toasts
            assert toasts[1][1] == "information"
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
            assert app.state.history.total_rounds >= 1  # (a slow machine may have begun the next 5 s round)
            rounds = app.state.history.total_rounds
            await pilot.pause(0.3)
            assert app.control is None and app.state.history.total_rounds == rounds  # stopped: no round begins
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
    assert opened[-1] == {"watch": 30.0, "bell": False, "on_change": "true", "telemetry": None}
    result = runner.invoke(cli.main, ["--no-record", "--watch"])
    assert result.exit_code == 0 and opened[-1]["watch"] == 10.0  # alone: config watch.interval_s
    result = runner.invoke(cli.main, ["--no-record"])
    assert opened[-1] == {"watch": None, "bell": True, "on_change": None, "telemetry": None}
    result = runner.invoke(cli.main, ["--watch", "soon"])
    assert result.exit_code == 2 and "Invalid value for '--watch': 'soon' is not a duration" in result.output


def test_demo_watches_a_deploy_every_2s_unless_told(monkeypatch):
    opened: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "_open_app", lambda *a, **kw: opened.append(kw))
    runner = CliRunner()
    deploy = ["demo", "--no-record", "--deploy", "0s ok@v1, 6s closed-before-ready@v2"]
    assert runner.invoke(cli.main, deploy).exit_code == 0 and opened[-1] == {"watch": 2.0}
    assert runner.invoke(cli.main, [*deploy, "--watch", "500ms"]).exit_code == 0 and opened[-1] == {"watch": 0.5}
    assert runner.invoke(cli.main, [*deploy, "--watch"]).exit_code == 0 and opened[-1] == {"watch": 10.0}  # config
    assert runner.invoke(cli.main, ["demo", "--no-record"]).exit_code == 0 and opened[-1] == {"watch": None}
    result = runner.invoke(cli.main, [*deploy, "--watch", "soon"])
    assert result.exit_code == 2 and "'soon' is not a duration" in result.output


def _health_round(t: float, build: str | None, status: str = "pass") -> list[Event]:
    """One round of a one-probe queue whose health reports `build` (as the engine's events would say it; None: an
    HTTP 503 naming no build)."""
    return [RunStarted(0.0, "sandbox", "http://127.0.0.1:1", (("health", "Health", 0),), WALL0 + t),
            ProbeStarted(0.1, "health", "Health", 0, ("health",)),
            StageStarted(0.2, "health", "health", "http"),
            StageFinished(0.3, "health", "health", status, 1.0, "GET /health 200" if build else "GET /health 503",
                          HttpEvidence(http_status=200 if build else 503, version=build)),
            ProbeFinished(0.4, "health", status, 1.0, None if status == "pass" else "health", 0, 0),
            RunFinished(0.5, "pass" if status == "pass" else "fail", 1.0)]


Outcome = tuple[str, ...]  # ("pass",), ("fail", STAGE, CODE), ("slow", STAGE, MS, OVER_MS)


def _round(t: float, build: str | None, outcomes: dict[str, Outcome]) -> list[Event]:
    """One round: health reporting `build` (None: a 503 naming none), then each probe's outcome."""
    ids = ("health", *outcomes)
    events: list[Event] = _health_round(t, build, "pass" if build else "fail")[:-1]
    events[0] = dataclasses.replace(events[0], probes=tuple((i, i, 0) for i in ids))  # type: ignore[call-arg]
    verdict = "pass" if build else "fail"
    for pid, outcome in outcomes.items():
        stage = outcome[1] if len(outcome) > 1 else "agent"
        events += [ProbeStarted(1.0, pid, pid, 0, (stage,))]
        if outcome[0] == "slow":
            events += [StageStarted(1.1, pid, stage, "ws", degraded_ms=float(outcome[3])),
                       StageFinished(1.2, pid, stage, "pass", float(outcome[2]), "ok"),
                       ProbeFinished(1.3, pid, "pass", float(outcome[2]), None, 0, 0)]
        elif outcome[0] == "fail":
            verdict = "fail"
            events += [StageStarted(1.1, pid, stage, "ws"), StageFinished(1.2, pid, stage, "fail", 1.0, "x"),
                       Diagnosed(1.25, pid, ({"code": outcome[2], "summary": "", "evidence": [], "next_step": ""},)),
                       ProbeFinished(1.3, pid, "fail", 1.0, stage, 0, 0)]
        else:
            events += [StageStarted(1.1, pid, stage, "ws"), StageFinished(1.2, pid, stage, "pass", 1.0, "ok"),
                       ProbeFinished(1.3, pid, "pass", 1.0, None, 0, 0)]
    return events + [RunFinished(2.0, verdict, 2000.0)]  # type: ignore[arg-type]


async def _fold(app: StagewatchApp, pilot: Any, events: list[Event]) -> None:
    """Hand the app a round's events and wait until it has folded and drawn them."""
    for event in events:
        app._ingest(event)
    await wait_until(pilot, lambda: not app._inbox and not app.state.running)
    await pilot.pause()


def _confirm_1(config: Config) -> Config:
    return config.model_copy(update={"watch": config.watch.model_copy(update={"confirm": 1})})


def region_words(app: StagewatchApp, region: Region) -> str:
    """The words on screen inside `region`, lines joined with one space (so wrapped text reads as one line)."""
    rows = screen_text(app).splitlines()[region.y:region.bottom]
    return " ".join(" ".join(row[region.x:region.right].split()) for row in rows)


def timeline_shows(app: StagewatchApp, line: str) -> bool:
    """Is the timeline line (as `timeline()` lists it) on screen, whole, in the Timeline pane (wrapped or not)?"""
    return " ".join(line.split()) in region_words(app, app.query_one("#timeline").content_region)


def lane(app: StagewatchApp) -> str:
    """The build lane as drawn: the history column's header."""
    queue = app.query_one("#queue", QueuePane)
    return next(str(c.label) for c in queue.columns.values() if c.key.value == "history")


# --- the timeline follows, the toasts stay out of the way, the lane tells the truth --------------------------------

async def test_the_timeline_keeps_its_newest_line_in_view(tui_config):  # noqa: F811
    """Many rounds make more lines than the pane has rows; after each one the newest line is on screen — also when
    the pane gets shorter without a new line — until the person scrolls up; scrolled back down, it follows again."""
    app = StagewatchApp(_confirm_1(tui_config), events=[], now=lambda: WALL0 + 999, watch=2.0)

    def lines() -> list[str]:
        return timeline(app).splitlines()

    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one("#timeline")
        for k in range(18):  # a line or two a round: a build every 4 rounds, DOWN and UP in turn
            await _fold(app, pilot, _round(10 * k, f"v{k // 4 + 1}", {"golden-path": ("pass",) if k % 2 else (
                "fail", "handshake", "closed-before-ready")}))
            assert timeline_shows(app, lines()[-1]), (k, lines()[-1], screen_text(app))
        assert len(lines()) > pane.size.height and not timeline_shows(app, lines()[0])  # it did overflow
        # the pane shrinks with no new line — the row below grows (a long close explained), the terminal shrinks —
        # and the newest line is still the one shown
        height = pane.size.height
        app.query_one("#bottom").styles.min_height = 12
        await wait_until(pilot, lambda: pane.size.height < height and timeline_shows(app, lines()[-1]))
        height = pane.size.height
        await pilot.resize_terminal(SIZE[0], SIZE[1] - 3)
        await wait_until(pilot, lambda: pane.size.height < height and timeline_shows(app, lines()[-1]))
        # the person scrolls up: the view stays where they read, however many lines come
        for _ in range(3):
            pane.post_message(MouseScrollUp(pane, 1, 1, 0, -1, 0, False, False, False))
        await pilot.pause()
        shown = [line for line in lines() if timeline_shows(app, line)]
        await _fold(app, pilot, _round(10 * 18, "v9", {"golden-path": ("pass",)}))
        assert shown and not timeline_shows(app, lines()[-1]) and all(timeline_shows(app, line) for line in shown)
        for _ in range(20):  # back at the bottom: following again
            pane.post_message(MouseScrollDown(pane, 1, 1, 0, 1, 0, False, False, False))
        await pilot.pause()
        await _fold(app, pilot, _round(10 * 19, "v9", {"golden-path": ("fail", "agent", "server-error")}))
        assert timeline_shows(app, lines()[-1])


async def test_a_round_of_flips_is_one_short_toast_clear_of_the_close_and_diagnosis(tui_config):  # noqa: F811
    """The alerting flips of a round make one toast that names the probes and the cause (error for DOWN), drawn
    top right — the Close and Diagnosis panes, which explain the flip, stay readable — and gone after a few s."""
    from tui import app as app_module

    app = StagewatchApp(_confirm_1(tui_config), events=[], now=lambda: WALL0 + 999, watch=2.0, bell=False)
    app.alerts_on = True  # (a fixed event list alerts as a live watch would)
    said: list[tuple[str, str, float | None]] = []
    notify = app.notify

    def record(message: str, **kw: Any) -> None:
        said.append((message, str(kw.get("severity")), kw.get("timeout")))
        notify(message, **kw)

    app.notify = record  # type: ignore[method-assign]
    both = {"golden-path": ("pass",), "event-order": ("pass",)}
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await _fold(app, pilot, _round(0, "v1", both))
        assert said == []  # the first UP is no news
        await _fold(app, pilot, _round(10, "v2", {p: ("fail", "handshake", "closed-before-ready") for p in both}))
        assert said == [("golden-path, event-order DOWN — closed-before-ready", "error", app_module.FLIP_TOAST_S)]
        assert app_module.FLIP_TOAST_S <= 5
        toasts = list(app.screen.query("Toast"))  # (Textual's toast widget, by its type name)
        assert len(toasts) == 1  # on screen, whole:
        assert "golden-path, event-order DOWN — closed-before-ready" in region_words(app, toasts[0].content_region)
        assert "closed-before-ready" in region_words(app, app.query_one("#diagnosis-box").region)
        for toast in toasts:
            for pane in ("#close-box", "#diagnosis-box", "#queue"):
                assert not toast.region.overlaps(app.query_one(pane).region), (pane, toast.region)
        # a round where several things change, differently: one toast naming them, pointing at the timeline
        await _fold(app, pilot, _round(20, "v2", {"golden-path": ("pass",), "event-order": ("slow", "agent", 1503,
                                                                                           1000)}))
        assert said[-1][:2] == ("event-order DEGRADED, golden-path UP — see Timeline", "warning")
        assert len(said) == 2


async def test_the_build_lane_names_only_what_health_reported(tui_config):  # noqa: F811
    """The tester's deploy: v1, killed (refused), v2 answering 503, v2, v3. Rounds with no build reported are `?`,
    never the last build's; every change of build carries its name, the newest one hanging past the strip when it
    has only a round; scrolled back, the leftmost name is the build of the first cells shown; the header's build
    is stale in words true for a refusal and a 503 alike."""
    app = StagewatchApp(tui_config, events=[], now=lambda: WALL0 + 999, watch=2.0)
    script = ["v1"] * 4 + [None] * 6 + ["v2"] * 3 + ["v3"]
    async with app.run_test(size=SIZE) as pilot:
        for k, build in enumerate(script):
            await _fold(app, pilot, _health_round(10 * k, build, "pass" if build else "fail"))
            if k == 4:
                assert "build v1 (stale: not reported this round)" in screen_text(app)
        cells = len(strip_of(app, "health"))
        assert cells == len(script) and app.query_one("#queue", QueuePane)._widths[2] > cells
        assert lane(app) == "v1──??????▏v2▏v3"
        assert "v1──??????▏v2▏v3" in pane_text(app, "#queue") and "stale" not in screen_text(app)
        width = app.query_one("#queue", QueuePane)._widths[2]
        # v3 until the strip is full and has scrolled
        await _fold(app, pilot, [e for k in range(len(script), width + 6) for e in _health_round(10 * k, "v3")])
        first = app.query_one("#queue", QueuePane).rounds[0]
        assert lane(app).startswith("?" if first <= 10 else "▏v2" if first == 11 else "v3")
        # a new build at the newest round of a full strip: the strip ends short so that its name fits
        await _fold(app, pilot, _health_round(10 * (width + 6), "v4"))
        assert lane(app).endswith("─▏v4") and len(strip_of(app, "health")) == width - 2
        # scrolled back to round 3: the first cells are v1's, and say so
        await pilot.press("left_square_bracket")  # a past round…
        app.select_round(3)  # …then straight to round 3 (what ~25 more presses of [ come to)
        await pilot.pause()
        assert app.selected_round == 3 and app.query_one("#queue", QueuePane).rounds[0] == 3
        assert lane(app).startswith("v1??????▏v2▏v3─")


def test_build_names_that_do_not_fit_are_abbreviated_from_their_end():
    from tui.widgets.history import _fit

    assert _fit("v2", True, 3) == "▏v2" and _fit("v2", False, 5) == "v2"
    assert _fit("2026.11.25-abc", True, 6) == "▏…-abc" and _fit("v17", True, 2) == "▏7"
    assert _fit("v17", False, 2) == "…7" and _fit("v17", True, 1) == "7"  # one cell: drawn in reverse


async def test_a_degraded_line_with_figures_wraps_whole_at_120_columns(tui_config):  # noqa: F811
    """The engine's figures make a DEGRADED line longer than the pane: it wraps under its time like any line."""
    app = StagewatchApp(tui_config, events=[], now=lambda: WALL0 + 999, watch=2.0)
    async with app.run_test(size=SIZE) as pilot:
        await _fold(app, pilot, _round(0, "v3", {"golden-path": ("pass",), "event-order": ("pass",)}))
        slow = {"golden-path": ("slow", "agent", 1503, 1000), "event-order": ("slow", "agent", 1503, 1000)}
        await _fold(app, pilot, _round(10, "v3", slow))
        words = "golden-path, event-order DEGRADED — agent 1503 ms, over 1000 ms (build v3)"
        line = next(line for line in timeline(app).splitlines() if words in line)
        assert line.endswith(words) and timeline_shows(app, line)  # whole, wrapped under its time
        region = app.query_one("#timeline").content_region
        rows = [row[region.x:region.right] for row in screen_text(app).splitlines()[region.y:region.bottom]]
        at = next(i for i, row in enumerate(rows) if "DEGRADED" in row)
        assert rows[at + 1].startswith(" " * 9) and rows[at + 1].strip()  # the hanging indent past the time


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


async def test_a_watch_at_80x24_keeps_state_strip_and_the_diagnosis_code(tui_config, deploy_events):  # noqa: F811
    """The compact watch queue: glyph, probe, the state in four letters, the strip, and the code whole."""
    ends = [i for i, e in enumerate(deploy_events) if isinstance(e, RunFinished)]
    four = deploy_events[: ends[2] + 1]  # rounds 1-3: golden-path DOWN in the last, closed before ready
    app = StagewatchApp(tui_config, events=four, now=lambda: WALL0 + ROUND_S * 2 + 8.0, watch=10.0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        row = next(line for line in text.splitlines() if "golden-path " in line and "Stages" not in line)
        assert re.search(r"golden-path +(DOWN|PEND|UP) +[✓✗~·]+ +closed-before-ready", row), row
