"""The stagewatch Textual app: one screen showing the probe queue, the focused probe's stages, its frames, its
close and diagnosis, fed only by engine events (live from the bus, or from a recording at recorded pace).

Watching (`--watch`, `w`): the queue runs in rounds inside one long engine run (`tui.watching.run_rounds`, one
shared sandbox for all rounds); the state's `History` folds them, and the alerting flips of a round set off one
short toast (top right, clear of the Close and Diagnosis panes), the bell and `--on-change`. The queue rows grow a history strip whose cells select a past round; the middle row's
right-hand pane shows the timeline or per-stage latency (`t`) instead of the frame detail.

The flow is one-way. The bus subscriber is `list.append` on the app's inbox: called synchronously in the engine's
task for every event, it costs a C call and touches nothing else. A 50 ms timer (`_tick`) takes what arrived,
keeps the last frames of each burst in the probe's bounded buffer, folds the other events into `SessionState`
and updates the panes once, however many frames arrived. Runs happen in an exclusive worker that only awaits
the engine, which runs in its own thread and loop (see `tui.engine`) so that rendering never skews a timing;
replays in a worker that only calls `_ingest` (the same append).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from textual import on
from textual.content import Content
from textual.app import App, ComposeResult, SystemCommand
from textual.screen import Screen
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Input
from textual.worker import Worker, WorkerState

from probes.alerts import flip_payload, run_on_change
from probes.bus import EventBus
from probes.config import Config, ConfigError, ResolvedTarget, resolve_target
from probes.events import Closed, Event, Frame, Notice
from probes.evidence_view import stage_lines, waterfall_lines
from probes.frames import FrameInfo, pretty
from probes.model import ProbeModel
from probes.recording import Recorder, RecordingError, Replay, default_recordings_dir, read_recording
from probes.redact import Redactor
from probes.safety import looks_like_production
from probes.sanitize import one_line, visible
from probes.pytest_run import run_pytest
from probes.runner import Clock, RunOptions, run_queue
from probes.watch import Flip
from tui.byhand import ByHand
from tui.clipboard import copy_elsewhere
from tui.commands import StagewatchCommands
from tui.console_control import ConsoleControl
from tui.engine import EngineThread
from tui.help import HelpScreen
from probes.telemetry import Telemetry
from tui.follower import Follower
from tui.player import Player, speed_label
from tui.state import FrameBuffer, SessionState
from tui.watching import WatchControl, interval_words, run_rounds
from tui.widgets.close import ClosePanel, DiagnosisPanel, close_summary
from tui.widgets.console import ConsolePanel
from tui.widgets.frames import FrameDetail, FrameList, FrameScreen
from tui.widgets.header import HeaderBar, SessionInfo
from tui.widgets.history import flips_toast, summary_only
from tui.widgets.interval import IntervalScreen
from tui.widgets.latency import LatencyPane
from tui.widgets.queue import QueuePane
from tui.widgets.sessions import SessionsPane
from tui.widgets.stages import StagePane
from tui.widgets.textreport import TextReportScreen
from tui.widgets.timeline import TimelinePane, wall_clock

TICK = 0.05  # seconds between screen updates (frames are batched into one update per tick)
FRAMES_EVERY = 0.1  # while only frames arrive, the frame list is redrawn at most this often
DETAIL_EVERY = 0.25  # and the detail of the newest frame (when following) at most this often
SETTLE_MAX = 1.0  # at most this long after mount before the first run
GC_GEN0 = 100_000  # allocations between young-generation collections while the app runs (default 700)
FLIP_TOAST_S = 4.0  # a round's flip toast: long enough to read, gone before it hides the next round's panes
PANELS = ("timeline", "latency", "frame")  # what `t` cycles through in the middle row's right-hand pane (watch)


def _home(path: Path | str) -> str:
    text, home = str(path), str(Path.home())
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text


class StagewatchApp(App[int]):
    """Live: `StagewatchApp(config, target, options, record_path)`; `watch=SECONDS` watches from the start (rounds),
    `bell=False` keeps the terminal quiet on flips, `on_change=CMD` runs CMD on each alerting flip.
    Replay: `replay=Replay(...)`. Tests and screenshots: `events=[...]` shows a fixed event list at once, `now=`
    fixes the countdown clock."""

    CSS_PATH = "app.tcss"
    TITLE = "stagewatch"
    COMMANDS = App.COMMANDS | {StagewatchCommands}
    BINDINGS = [
        Binding("r", "rerun", "Rerun", id="rerun", tooltip="Rerun the focused probe"),
        Binding("R", "run_queue", "Run all", id="run-queue", tooltip="Run every probe again, P0 first"),
        Binding("f", "fail_fast", "Fail-fast", id="fail-fast", show=False,
                tooltip="Stop the next runs at the first failing probe (toggle)"),
        Binding("space", "pause", "Follow", id="pause",
                tooltip="Live: stop/resume following new frames. Replay: pause/resume"),
        Binding("n,right", "step", "Step", id="step", tooltip="Replay: deliver the next event"),
        Binding("plus,equals_sign", "speed(1)", "Faster", id="faster", key_display="+",
                tooltip="Replay: faster"),
        Binding("minus", "speed(-1)", "Slower", id="slower", tooltip="Replay: slower"),
        Binding("slash", "filter", "Filter", id="filter", key_display="/",
                tooltip="Filter frames by text or type:NAME; ! inverts; esc clears"),
        Binding("c", "copy", "Copy", id="copy",
                tooltip="Copy the selected frame (frames focused), else the close summary"),
        Binding("w", "watch", "Watch", id="watch",
                tooltip="Start/stop watching: the queue in rounds, every interval (W sets the interval)"),
        Binding("W", "interval", "Interval", id="interval", show=False, tooltip="Set the watch interval"),
        Binding("left_square_bracket", "round(-1)", "Round", id="round-earlier", key_display="[ ]",
                tooltip="Watch: show an earlier round (its stages, frames, close and diagnosis); ] a later one"),
        Binding("right_square_bracket", "round(1)", "Later round", id="round-later", key_display="]", show=False,
                tooltip="Watch: show a later round; past the newest, back to the live one"),
        Binding("t", "panel", "Panel", id="panel",
                tooltip="Watch: the right-hand pane shows the timeline, per-stage latency or the frame detail"),
        Binding("v", "waterfall", "Waterfall", id="waterfall", show=False,
                tooltip="The focused probe's stages on one time axis (connect split into DNS/TCP/TLS/upgrade)"),
        Binding("s", "stages", "Stages", id="stages", show=False,
                tooltip="Pick a stage (↑/↓): its whole evidence in the Frame pane; enter opens it whole; esc back"),
        Binding("x", "console", "Console", id="console", show=False,
                tooltip="Open/close the console: a session of your own — compose, send, ping, close, reconnect"),
        Binding("m", "matrix", "Matrix", id="matrix", show=False,
                tooltip="Auth-path matrix: connect once per token transport and say which reaches the backend"),
        Binding("d", "compare", "Compare", id="compare", show=False,
                tooltip="Compare two runs: this round and the one before, or the last recording and this session"),
        Binding("z", "zoom", "Max", id="zoom",
                tooltip="Maximise the focused pane to the whole screen; again (or esc) restores the layout"),
        Binding("question_mark", "help", "Help", id="help", key_display="?", tooltip="All keys"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave stagewatch"),
        Binding("escape", "escape", "Back", id="escape", show=False),
    ]

    def __init__(self, config: Config, target: ResolvedTarget | None = None, options: RunOptions | None = None,
                 record_path: Path | None = None, replay: Replay | None = None, replay_name: str = "", *,
                 events: Iterable[Event] | None = None, now: Callable[[], float] | None = None,
                 autostart: bool = True, speed: float = 1.0, paused: bool = False, watch: float | None = None,
                 bell: bool = True, on_change: str | None = None, pytest_args: Sequence[str] | None = None,
                 console: bool = False, follow_path: Path | None = None, follow_idle: float | None = None,
                 telemetry: Telemetry | None = None) -> None:
        super().__init__()
        self.hand = ConsoleControl(self)
        self.tools = ByHand(self)
        self.console_requested = console  # `stagewatch console`: the console opens at once, no queue run
        self.pytest_args = None if pytest_args is None else tuple(pytest_args)
        self.config = config
        self.target = target
        self.options = options or RunOptions()
        self.fail_fast = self.options.fail_fast
        self.record_path = record_path
        self.replay = replay
        self.fixed_events = list(events) if events is not None else None
        self.autostart = autostart
        self.state = SessionState()
        self.state.history.configure(confirm=config.watch.confirm, keep_rounds=config.watch.keep_rounds)
        # watching: asked for (--watch, or a deploy the sandbox plays: it only makes sense over rounds), the
        # interval, what a flip sets off, and the watch under way (None: not watching)
        deploy = self.options.sandbox_options is not None and bool(self.options.sandbox_options.deploy)
        self.watch_requested = watch is not None or deploy
        self.watch_interval = watch if watch is not None else config.watch.interval_s
        self.bell_on = bell and config.watch.bell
        self.on_change = on_change
        self.control: WatchControl | None = None
        self.alerts_on = False  # flips alert once this session has watched (never for a replay)
        self._flips: list[Flip] = []  # alerting flips of the round under way: said together when it ends
        self.watch_view = False  # the watch panes (strips, timeline): once watching, or a replay of rounds
        self.selected_round: int | None = None  # a past round picked on the strip (None: the live one)
        self.panel = "timeline"  # the middle row's right-hand pane in the watch view (PANELS)
        self._held_rows: int | None = None  # watching: the bottom row's height held while a round runs
        self.bus = EventBus()
        self.clock = Clock()
        self.recorder: Recorder | None = None
        mode = "replay" if replay is not None else "follow" if follow_path is not None else "live"
        self.info = SessionInfo(mode=mode, fail_fast=self.fail_fast,
                                replay_file=replay_name, replay_truncated=bool(replay and replay.truncated),
                                fault=self.options.fault, insecure=target is not None and not target.verify_tls)
        self.focus_probe: str | None = None
        self.user_pinned = False  # the user chose a probe: stop auto-focusing
        # The inbox: appended to by the engine thread (list.append is atomic), taken by the tick (slice + del).
        self._inbox: list[Event] = []
        self.engine: EngineThread | None = None
        self._fixed_now = now
        self._shown_probe: tuple[str | None, int, int | None] | None = None  # (probe, its runs, round picked)
        self._scrolled_to: tuple[str | None, int, int | None] | None = None
        self._queue_frames_at = 0.0
        self._sessions_at = 0.0
        self._detail = "frame"  # the Frame pane shows the selected frame, or ("stage") the picked stage
        self._detail_stale: set[str] = set()
        self._frames_at = 0.0
        self._detail_at = 0.0
        self.player = Player(replay.events, self._ingest, speed=speed, paused=paused) if replay is not None else None
        # follow: another stagewatch's recording as it is written (read-only: no engine, no run keys)
        self.follower = Follower(follow_path, self._ingest, idle=follow_idle) if follow_path is not None else None
        # --metrics-port / --otlp: listeners on the bus (the engine's thread), /metrics read from this session's fold
        self.telemetry = telemetry if target is not None else None
        if self.telemetry is not None and self.telemetry.otlp_endpoint is not None:
            self.options = dataclasses.replace(self.options, trace=True)  # the engine names the traces it sends
        self._follow_said = False
        self._unsubscribe = self.bus.subscribe(self._inbox.append)

    # --- what the app is ---------------------------------------------------------------------------------
    @property
    def is_live(self) -> bool:
        return self.replay is None and self.fixed_events is None and self.target is not None

    def now(self) -> float:
        """Wall-clock time for countdowns: real time live, the recording's time in a replay."""
        if self._fixed_now is not None:
            return self._fixed_now()
        if self.player is not None and self.state.wall0 is not None:
            return self.state.wall0 + self.player.t
        return time.time()

    # --- layout ------------------------------------------------------------------------------------------
    @property
    def _detail_mode(self) -> str:
        return self._detail

    @_detail_mode.setter
    def _detail_mode(self, mode: str) -> None:
        """frame, stage or waterfall; a stage's evidence or the waterfall take the wider half of the middle row."""
        self._detail = mode
        self.screen.set_class(mode != "frame", "-wide-detail")
        self.screen.set_class(mode != "frame" and self.size.height >= 30, "-tall-detail")  # (24 rows: no room)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """Textual's own commands, less those the app's provider names as the footer does (Quit, Help, Max)."""
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Keys", "Maximize", "Minimize"):
                yield command

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="top"):
            yield QueuePane(id="queue")
            with VerticalScroll(id="stages-box", classes="pane"):
                yield StagePane(id="stages")
        with Horizontal(id="middle"):
            with Vertical(id="frames-box", classes="pane"):
                yield Input(placeholder="filter: text, type:NAME, in/out, !inverts — enter keeps, esc clears",
                            id="filter")
                yield FrameList(id="frames")
            yield SessionsPane(id="sessions", classes="pane")
            yield FrameDetail(id="detail")
            yield TimelinePane(id="timeline", classes="pane")
            yield LatencyPane(id="latency", classes="pane")
        with Horizontal(id="bottom"):
            with VerticalScroll(id="close-box", classes="pane"):
                yield ClosePanel(id="close")
            with VerticalScroll(id="diagnosis-box", classes="pane"):
                yield DiagnosisPanel(id="diagnosis")
        yield Footer()

    async def on_mount(self) -> None:
        # A flood allocates a million short-lived frames while the UI holds thousands of widgets' objects: with the
        # default thresholds the collector walks them all every few hundred allocations, in the engine's thread
        # too (one GIL). Measured by bench/flood.py: ratio 0.65 -> ~0.8, loop lag p95 26 -> 7 ms.
        self._gc_threshold = gc.get_threshold()
        gc.set_threshold(GC_GEN0, 50, 100)
        self.query_one("#queue").border_title = "Queue"
        self.query_one("#queue", QueuePane).now_t = self.session_t
        self.query_one("#stages-box").border_title = "Stages"
        self.query_one("#frames-box").border_title = "Frames"
        self.query_one("#detail").border_title = "Frame"
        self.query_one("#close-box").border_title = "Close"
        self.query_one("#diagnosis-box").border_title = "Diagnosis"
        self.query_one("#timeline").border_title = "Timeline"
        self.query_one("#latency").border_title = "Latency"
        self.query_one("#filter", Input).display = False
        self.query_one("#sessions").border_title = "Sessions"
        self.query_one("#sessions").display = False
        for box in self.query(".pane"):  # tab: queue → stages → frames → frame → close → diagnosis
            box.can_focus = box.id in ("close-box", "diagnosis-box", "timeline", "latency")
            box.ALLOW_MAXIMIZE = True  # z on what is inside it (the stages, the frames) maximises the whole pane
        self.on_resize()
        if self.fixed_events is not None:
            for event in self.fixed_events:
                self._ingest(event)
        if self.is_live:
            self.engine = EngineThread()
            self.engine.start()
            if self.telemetry is not None:
                self.telemetry.summary = self.state
                if self.telemetry.start():
                    for listener in self.telemetry.listeners:
                        self.bus.subscribe(listener)
                    if self.telemetry.url:
                        self.notify(f"metrics: {self.telemetry.url}", title="--metrics-port", markup=False, timeout=20)
                else:
                    self.notify(f"--metrics-port {self.telemetry.metrics_port}: could not serve /metrics there",
                                severity="error", markup=False)
        if self.record_path is not None and self.engine is not None:
            self.recorder = Recorder(self.record_path, Redactor(), self.clock.wall, notify=self.bus.publish,
                                     offload=True, max_bytes=int(self.config.recording.max_file_mb * 1024 * 1024))
            self.bus.subscribe(self.recorder.handle)
            await self.engine.run(self.recorder.start())  # its flush timer lives in the engine loop
            if self.recorder.active:
                self.info.recording = _home(self.record_path)
            else:
                self.info.recording_error = self.recorder.error
        self._tick()
        self.set_interval(TICK, self._tick, name="drain")
        self.set_interval(1.0, self._refresh_clock, name="countdown")
        self.query_one("#queue", QueuePane).focus()
        if self.player is not None:
            self.run_worker(self.player.play(), group="replay", exclusive=True, exit_on_error=False,
                            name="replay")
        elif self.follower is not None:
            self.run_worker(self.follower.run(), group="follow", exclusive=True, exit_on_error=False, name="follow")
        elif self.is_live and self.console_requested:
            self.run_worker(self.hand.open(), group="console", exit_on_error=False, name="console")
        elif self.is_live and self.autostart:
            self.run_worker(self._start_when_settled(), group="start", exit_on_error=False, name="start")
        if self.watch_requested and not self.is_live:
            self._set_watch_view(True)  # (a fixed event list shown as a watch)

    async def action_quit(self) -> None:
        """Leave: an open console session is closed first (1001), so its recording ends whole."""
        await self.hand.shutdown()
        self.exit()

    def on_unmount(self) -> None:
        gc.set_threshold(*self._gc_threshold)
        if self.engine is not None:
            self.engine.stop()  # cancels a run still going; it publishes RunFinished and stops its sandbox
        self._unsubscribe()
        if self.recorder is not None:
            self.recorder.close()

    # --- events in (engine task; append only) -------------------------------------------------------------
    def _ingest(self, event: Event) -> None:
        """What the bus subscriber does (replays and tests call this): append to the inbox, nothing else."""
        self._inbox.append(event)

    # --- the tick: fold, focus, render --------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self._drain()
        except NoMatches:  # the app is closing: the panes are gone
            pass

    def _drain(self) -> None:
        inbox = self._inbox
        n = len(inbox)
        arrived = inbox[:n]
        del inbox[:n]  # the engine thread may append meanwhile: only what was taken is removed
        pending = self.state.take(arrived) if arrived else []
        changed = self.state.apply_all(pending) if pending else set()
        for event in pending:
            if isinstance(event, Notice):
                severity = {"error": "error", "warning": "warning"}.get(event.level, "information")
                self.notify(event.message, severity=severity, timeout=8, markup=False)  # type: ignore[arg-type]
        if "history" in changed:
            self._history_changed()
        self._steady_bottom()
        with self.batch_update():
            if changed:
                self.query_one("#queue", QueuePane).sync(self.state, changed)
            self._auto_focus()
            self._render_focused(changed)
            self._render_sessions(changed)
            if self.watch_view and ("history" in changed or self.focus_probe in changed):
                self._render_watch()
            now = time.monotonic()
            flowing = now - self._frames_at < FRAMES_EVERY  # a flood: redraw the frames at most every 100 ms
            if changed or not flowing:
                self._frames_at = now
                if self._render_frames() or changed or self.info.mode == "replay":
                    self._render_header()

    def _close_view(self, probe: ProbeModel | None) -> ProbeModel | None:
        """What the Close panel shows: the probe's close, or for a hold the selected session's last end."""
        if probe is None or probe.hold is None:
            return probe
        n = self.query_one("#sessions", SessionsPane).selected
        row = probe.hold.rows.get(n) if n is not None else None
        end = row.ended if row is not None else None
        if end is None:
            return dataclasses.replace(probe, closes=[])
        code = end.code or 1006
        closed = Closed(end.t, probe.id, code, end.name, end.reason, end.by or "none",  # type: ignore[arg-type]
                        (end.age_s or 0.0) * 1000.0, code != 1006)
        return dataclasses.replace(probe, closes=[closed])

    def on_sessions_pane_selected(self, message: SessionsPane.Selected) -> None:
        probe, _words = self._shown_model()
        self.query_one("#close", ClosePanel).show(self._close_view(probe))

    def _render_sessions(self, changed: set[str]) -> None:
        """A probe that holds sessions shows them in place of its frames (at most twice a second)."""
        probe, _words = self._shown_model()
        fold = probe.hold if probe is not None else None
        pane = self.query_one("#sessions", SessionsPane)
        want = fold is not None
        if pane.display != want:
            pane.display = want
            self.query_one("#frames-box").display = not want
            self._sessions_at = 0.0
        if not want:
            return
        now = time.monotonic()
        if now - self._sessions_at < 0.5 and self.focus_probe not in changed:
            return
        self._sessions_at = now
        assert probe is not None
        pane.show(fold, probe.diagnoses, self.now())

    def _auto_focus(self) -> None:
        """Follow the running probe; stop on the run's first failure; at the end show the golden path."""
        state = self.state
        if not state.order:
            return
        if self.focus_probe is None or (not self.user_pinned and self.focus_probe not in state.probes):
            self._focus(state.order[0])
        if self.user_pinned or self.selected_round is not None:
            return
        if state.first_failure is not None:
            want = state.first_failure
        elif state.current is not None and (not self.watch_view or state.history.total_rounds <= 1):
            # (a watch does not hop probe to probe each round; its first round is followed like a single run)
            want = state.current
        elif not state.running and state.finished is not None:
            want = "golden-path" if "golden-path" in state.probes else state.order[0]
        else:
            return
        if want != self.focus_probe:
            self._focus(want)

    def focus_probe_id(self, probe_id: str) -> None:
        """Show this probe in the panes (the console's session), as if the person had picked it."""
        self.user_pinned = True
        if probe_id in self.state.probes:
            self._focus(probe_id)
        else:
            self.focus_probe = probe_id
            self._shown_probe = None

    def action_console(self) -> None:
        if not self.is_live:
            self.notify("the console needs a live session (not a replay)", severity="warning", timeout=3)
            return
        self.run_worker(self.hand.toggle(), group="console", exit_on_error=False, name="console")

    def action_matrix(self) -> None:
        if not self.is_live:
            self.notify("the matrix needs a live session (not a replay)", severity="warning", timeout=3)
            return
        self.run_worker(self.tools.matrix(), group="matrix", exclusive=True, exit_on_error=False, name="matrix")

    def action_compare(self) -> None:
        self.tools.compare()

    def on_console_panel_do(self, message: ConsolePanel.Do) -> None:
        self.run_worker(self.hand.handle(message), group="console-do", exit_on_error=False, name="console")

    def _focus(self, probe_id: str) -> None:
        self.focus_probe = probe_id
        self.query_one("#queue", QueuePane).select_probe(probe_id)
        self._shown_probe = None

    def _shown_model(self) -> tuple[ProbeModel | None, str | None]:
        """The focused probe as the panes show it: its latest run, or its run in the picked round (the round's
        snapshot); with the words to show instead when the round is kept only as a summary."""
        live = self.state.probes.get(self.focus_probe) if self.focus_probe else None
        n = self.selected_round
        if n is None or self.focus_probe is None:
            return live, None
        rnd = self.state.history.round(n)
        if rnd is None:
            return live, None
        if rnd.detail is None:
            return None, summary_only(rnd, self.focus_probe)
        if self.focus_probe not in rnd.detail:
            if n == self.state.history.total_rounds and self.state.running:
                return live, None  # the round under way: its probe has not finished yet
            return None, f"{self.focus_probe} did not run in round {n}"
        return rnd.detail[self.focus_probe], None

    def _render_focused(self, changed: set[str]) -> None:
        live = self.state.probes.get(self.focus_probe) if self.focus_probe else None
        key = (self.focus_probe, live.runs if live else 0, self.selected_round)
        if key == self._shown_probe and self.focus_probe not in changed:
            return
        self._shown_probe = key
        probe, words = self._shown_model()
        pane = self.query_one("#stages", StagePane)
        if words is not None:
            pane.show_text(words)
        else:
            pane.show(probe, self.now, self.state.wall0)
        failed_at = (self.focus_probe, probe.runs if probe else 0, pane.failed_line)
        if pane.failed_line is not None and failed_at != self._scrolled_to:
            self._scrolled_to = failed_at  # once per failure: the person may scroll elsewhere afterwards
            self.call_after_refresh(self._show_failed_stage)
        self.query_one("#close", ClosePanel).show(self._close_view(probe))
        self.query_one("#diagnosis", DiagnosisPanel).show(probe)
        box = self.query_one("#stages-box")
        # config text: shown as Content, never parsed as markup
        title = f"Stages · {probe.id}" if probe else (f"Stages · {self.focus_probe}" if words else "Stages")
        box.border_title = Content(one_line(title + self._round_words()))
        box.border_subtitle = Content(one_line(probe.name)) if probe else ""
        close = self.query_one("#close-box")
        close.set_class(probe is not None and probe.close is not None
                        and not (probe.close.by == "client" and probe.close.code == 1000), "-bad")
        diag = self.query_one("#diagnosis-box")
        diag.set_class(bool(probe and probe.diagnoses), "-bad")
        diag.border_title = f"Diagnosis ({len(probe.diagnoses)})" if probe and probe.diagnoses else "Diagnosis"
        self._render_watch()  # the latency of the probe now focused

    def _steady_bottom(self) -> None:
        """Watching: while a round runs, the Close and Diagnosis row keeps the height it had (the round's close
        has not come yet), so the panes above do not jump twice a round — and the timeline stays put; when the
        round ends the row takes its new content's height (the same, mostly: once per change)."""
        hold = self.watch_view and self.state.running and self.selected_round is None
        if hold == (self._held_rows is not None):
            return
        boxes = (self.query_one("#close-box"), self.query_one("#diagnosis-box"))
        if hold:
            self._held_rows = self.query_one("#bottom").outer_size.height
            for box in boxes:  # both fill the row: no gap under a pane that has little to say yet
                box.styles.min_height = self._held_rows
        else:
            self._held_rows = None
            for box in boxes:
                box.styles.min_height = None  # back to the stylesheet's

    def _show_failed_stage(self) -> None:
        """Scroll the stages so the failing stage's row is in view (small terminals hide it below the fold)."""
        line = self.query_one("#stages", StagePane).failed_line
        box = self.query_one("#stages-box")
        if line is None:
            return
        height = box.scrollable_content_region.height
        if not box.scroll_y <= line < box.scroll_y + height - 1:
            box.scroll_to(y=line, animate=False)  # the row whole at the top

    def _round_words(self) -> str:
        """' · round 12 at 14:03:12' while a past round is picked."""
        rnd = self.state.history.round(self.selected_round) if self.selected_round is not None else None
        return f" · round {rnd.n} at {wall_clock(rnd.started_at)}" if rnd is not None else ""

    def _shown_frames(self) -> tuple[FrameBuffer | None, str | None]:
        """The focused probe's frames: the live buffer, or the bounded copy kept of the picked round (with why
        there are none when the round is too old)."""
        if self.focus_probe is None:
            return None, None
        live = self.state.frames.get(self.focus_probe)
        n = self.selected_round
        if n is None:
            return live, None
        kept = self.state.frames_of_round(n, self.focus_probe)
        if kept is not None:
            return kept, None
        if n == self.state.history.total_rounds:
            return live, None  # the round under way
        return None, (f"no frames kept of round {n}: the last {self.state.history.keep_rounds} rounds keep "
                      "their frames")

    def _render_frames(self) -> bool:
        """Bring the frame list up to date; returns True when new frames arrived."""
        frames = self.query_one("#frames", FrameList)
        buffer, why = self._shown_frames()
        if buffer is not frames.live:
            frames.show(buffer)
        probe, _words = self._shown_model()
        if why is not None:
            frames.empty_text = why
        elif probe is None or probe.status in ("queued", "running"):
            frames.empty_text = "no frames yet"
        else:
            frames.empty_text = "no WebSocket frames exchanged"  # (whole in a 40-column pane)
        moved = frames.sync()
        if moved and probe is not None and probe.status == "running":
            now = time.monotonic()
            if now - self._queue_frames_at >= 0.5:  # the running probe's frame count, twice a second
                self._queue_frames_at = now
                self.query_one("#queue", QueuePane).sync(self.state, {probe.id})
        box = self.query_one("#frames-box")
        total = buffer.frames if buffer is not None else 0
        named = self.focus_probe and not (frames.filter is not None and self.size.width < 120)  # narrow: room
        title = f"Frames · {self.focus_probe if named else ''}{' · ' if named else ''}{total:,}{self._round_words()}" \
            if self.focus_probe else "Frames"
        if buffer is not None and buffer.total > buffer.cap:
            title += f" (last {buffer.cap:,} shown)"
        if frames.filter is not None:
            title += f" · /{one_line(frames.filter.text)} → {frames.frame_count:,}"
        box.border_title = Content(title)  # the filter was typed: text, not markup
        if frames.follow:
            box.border_subtitle = "following · space pauses"
        else:
            box.border_subtitle = f"paused · {frames.new_count:,} new · space/end follows"
        detail = self.query_one("#detail", FrameDetail)
        now = time.monotonic()
        stage = self._stage_shown()
        if self._detail_mode == "waterfall":
            if now - self._detail_at >= DETAIL_EVERY:
                self._detail_at = now
                self._show_waterfall()
        elif stage is not None:  # a stage picked in the Stages pane: its evidence, live
            if now - self._detail_at >= DETAIL_EVERY or self.focus_probe in self._detail_stale:
                self._detail_at = now
                self._detail_stale.clear()
                self._show_stage(stage)
        elif not (moved and frames.follow) or now - self._detail_at >= DETAIL_EVERY:  # following a flood: 4/s
            self._detail_at = now
            selected = frames.selected()
            if selected is None:  # nothing to show of a frame: the probe's waterfall
                shown, _words = self._shown_model()
                detail.set_waterfall(self._waterfall_lines(shown) if shown else [])
            detail.show(selected)
        return moved

    def _stage_shown(self) -> str | None:
        """The stage whose evidence the Frame pane shows: picked in Stages, until the frames are focused."""
        pane = self.query_one("#stages", StagePane)
        return pane.selected if self._detail_mode == "stage" else None

    def _show_stage(self, name: str) -> None:
        probe, _words = self._shown_model()
        stage = probe.stages.get(name) if probe is not None else None
        if probe is None or stage is None:
            return
        self.query_one("#detail", FrameDetail).show_lines(f"Stage · {name}", self._stage_lines(probe, name))
        self.query_one("#detail").border_title = Content(one_line(f"Stage · {name}"))  # a config's name: text

    def _stage_lines(self, probe: ProbeModel, name: str) -> list[str]:
        """stage_lines with the app's longer frame buffer (the model keeps only the last frames)."""
        buf = self.state.frames.get(probe.id)
        return stage_lines(probe, probe.stages[name], self.now(), buf.items[-2000:] if buf else None,
                           self.session_t())

    def action_waterfall(self) -> None:
        """v: the waterfall in the Frame pane (again: back to the frame)."""
        if self._detail_mode == "waterfall":
            self._detail_mode = "frame"
            self.query_one("#detail").border_title = "Frame"
            self.query_one("#detail", FrameDetail).show(self.query_one("#frames", FrameList).selected())
            return
        self._detail_mode = "waterfall"
        self._show_waterfall()

    def _show_waterfall(self) -> None:
        probe, _words = self._shown_model()
        detail = self.query_one("#detail", FrameDetail)
        lines = self._waterfall_lines(probe) if probe else []
        title = f"Waterfall · {probe.id}" if probe else "Waterfall"
        detail.show_lines(title, ["each stage on one time axis (█ passed, ▓ failed, ▒ running, ▪ connect's split)"]
                          + (lines or ["no stage has started yet"]))
        detail.border_title = Content(one_line(title))  # a config's probe id: text, never markup

    def _waterfall_lines(self, probe: ProbeModel) -> list[str]:
        """waterfall_lines fitted to the Frame pane (a scrollbar: 2), its ticks from the app's frame buffer."""
        buf = self.state.frames.get(probe.id)  # the model keeps only the last frames
        return waterfall_lines(probe, max(10, self.query_one("#detail").size.width - 34), self.session_t(),
                               buf.items[-2000:] if buf else None)

    def action_stages(self) -> None:
        self.query_one("#stages", StagePane).enter()

    def on_stage_pane_open(self, message: StagePane.Open) -> None:
        probe, _words = self._shown_model()
        if probe is not None and message.stage in probe.stages:
            lines = self._stage_lines(probe, message.stage)
            self.push_screen(TextReportScreen(one_line(f"Stage · {message.stage}"), visible("\n".join(lines)), wrap=True))

    def on_stage_pane_selected(self, message: StagePane.Selected) -> None:
        if message.stage:
            self.user_pinned = True  # reading a stage: the focus stays on this probe when the next one starts
        self._detail_mode = "stage" if message.stage else "frame"
        if message.stage:
            self._show_stage(message.stage)

    def on_descendant_focus(self, event: object) -> None:
        focused = self.focused
        if focused is not None and focused.id == "frames" and self._detail_mode != "frame":
            self._detail_mode = "frame"  # back to the frames: the frame detail again
            self.query_one("#detail").border_title = "Frame"
            self.query_one("#detail", FrameDetail).show(self.query_one("#frames", FrameList).selected())

    def _render_header(self) -> None:
        if self.player is not None:
            self.info.replay_position = self.player.position()
            self.info.replay_speed = speed_label(self.player.speed)
            self.info.replay_paused = self.player.paused
        if self.follower is not None:
            f = self.follower
            status = ("ended" if f.ended == "end" else "stopped") if f.done else "live" if f.live else "catching up"
            self.info.replay_position = f"{status} · {f.delivered:,} events"
            self.info.replay_file = one_line(_home(f.path))
            if self.follower.done and not self._follow_said:  # once: the partner knows the run is over
                self._follow_said = True
                self.notify(self.follower.position(), title="follow", markup=False,
                            severity="error" if self.follower.error else "information", timeout=8)
        self.info.fail_fast = self.fail_fast
        control = self.control
        self.info.watch_view = self.watch_view
        if self.is_live:
            self.info.watch_interval = control.interval if control is not None else None
        else:  # a fixed event list shown as a watch (screenshots): the interval it was given
            self.info.watch_interval = self.watch_interval if self.watch_requested else None
        self.info.watch_next_at = control.next_at if control is not None else None
        self.info.watch_stopping = control is not None and control.stopping
        try:
            self.query_one("#header", HeaderBar).show(self.state, self.info, self.now)
        except NoMatches:  # closing
            pass

    def session_t(self) -> float | None:
        """Seconds since the session's t=0 (the engine's clock), live or at the replay's position."""
        return None if self.state.wall0 is None else self.now() - self.state.wall0

    def _refresh_clock(self) -> None:
        self._render_header()
        self._shown_probe = None  # the auth stage's countdown, a running stage's clock
        try:
            self._render_focused(set())
            running = {p for p, probe in self.state.probes.items() if probe.status == "running"}
            if running:
                self.query_one("#queue", QueuePane).sync(self.state, running)
        except NoMatches:  # closing
            pass

    def on_resize(self) -> None:
        size = self.size
        self.screen.set_class(size.width < 120, "-narrow")
        self.screen.set_class(size.height < 34, "-short")
        try:
            footer = self.query_one(Footer)
            # so ? and q still fit on 80 columns (and on 120 with the watch keys)
            footer.compact = size.width < (140 if self.watch_view else 120)
            footer.show_command_palette = size.width >= 100
        except NoMatches:
            pass
        self.call_after_refresh(self._resync_queue)

    def _resync_queue(self) -> None:
        self.query_one("#queue", QueuePane).sync(self.state, None)

    # --- watching: the view, the flips ----------------------------------------------------------------------
    def _set_watch_view(self, on: bool) -> None:
        """The watch panes: the queue's state and history strip, the timeline/latency pane."""
        self.watch_view = on
        self.screen.set_class(on, "-watch")
        self.refresh_bindings()  # the footer shows the watch keys
        self.on_resize()
        self._show_panel()
        self.query_one("#queue", QueuePane).set_watching(on, self.state)
        self._shown_probe = None
        self._render_watch()
        self._render_header()

    def _show_panel(self) -> None:
        for name in PANELS:
            self.screen.set_class(self.watch_view and self.panel == name, f"-panel-{name}")

    def _history_changed(self) -> None:
        """A round or a probe of it finished: alert on the flips, show the rounds of a replayed watch."""
        history = self.state.history
        flips = history.take_flips()
        if self.alerts_on:
            self._flips += [f for f in flips if f.alerting]
            if self._flips and not self.state.running:  # the round is over: say what changed, once
                self._alert(self._flips)
                self._flips = []
        if not self.watch_view and not self.is_live and history.total_rounds >= 2:
            self._set_watch_view(True)
        if self.selected_round is not None and history.round(self.selected_round) is None:
            self.selected_round = None  # older than the summaries kept
            self._round_changed()

    def _alert(self, flips: list[Flip]) -> None:
        """A round's alerting flips: one short toast for the round (`flips_toast`: the probes and the cause, or
        how many changed — the timeline has the lines), one bell, and `--on-change` once per flip, in order, in
        the background."""
        history = self.state.history
        message, severity = flips_toast(history, flips)
        last = flips[-1]
        self.notify(message, title=f"{wall_clock(last.at)} · round {last.round}", severity=severity,
                    timeout=FLIP_TOAST_S, markup=False)  # probe ids and codes: text, never markup
        if self.bell_on:
            self.bell()
        if self.on_change:
            target = self.target.name if self.target is not None else self.state.target
            payloads = [flip_payload(flip, history, target) for flip in flips]
            self.run_worker(self._on_change(self.on_change, payloads), group="on-change", exit_on_error=False,
                            name="on-change")

    async def _on_change(self, command: str, payloads: list[dict[str, object]]) -> None:
        """`--on-change CMD` once per flip, the flip on its stdin; a failure is a warning toast, never an error."""
        for payload in payloads:
            problem = await run_on_change(command, payload)
            if problem:
                self.notify(one_line(problem), severity="warning", timeout=10, markup=False)

    def _render_watch(self) -> None:
        if not self.watch_view:
            return
        history = self.state.history
        self.query_one("#timeline", TimelinePane).show(history, self.selected_round)
        probe = self.state.probes.get(self.focus_probe) if self.focus_probe else None
        self.query_one("#latency", LatencyPane).show(history, self.focus_probe,
                                                     tuple(probe.stages) if probe is not None else ())
        latency = self.query_one("#latency")
        latency.border_title = Content(one_line(f"Latency · {self.focus_probe}" if self.focus_probe else "Latency"))
        latency.border_subtitle = "passing stages · p50 · p95 · t: frame"
        self.query_one("#timeline").border_subtitle = f"{len(history.timeline):,} changes · t: latency"

    def _round_changed(self) -> None:
        """Show the picked round (or the live one) in every pane."""
        queue = self.query_one("#queue", QueuePane)
        queue.selected_round = self.selected_round
        queue.sync(self.state, None)
        self._shown_probe = None
        self._render_focused(set())
        self._render_frames()
        self._render_watch()
        self._render_header()

    # --- user input ---------------------------------------------------------------------------------------
    @on(QueuePane.ProbePicked)
    def _probe_picked(self, event: QueuePane.ProbePicked) -> None:
        self.user_pinned = True
        if event.probe_id != self.focus_probe:
            self.focus_probe = event.probe_id
            self._shown_probe = None
            self._tick()

    @on(QueuePane.RoundPicked)
    def _round_picked(self, event: QueuePane.RoundPicked) -> None:
        if event.round is not None:
            self.select_round(event.round)
        else:
            self.action_round(event.delta)

    @on(FrameList.Opened)
    def _frame_opened(self) -> None:
        selected = self.query_one("#frames", FrameList).selected()
        if selected is not None:
            self.push_screen(FrameScreen(selected))

    @on(FrameList.FollowChanged)
    def _follow_changed(self) -> None:
        try:
            self._render_frames()
        except NoMatches:  # closing
            pass

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_one("#frames", FrameList).set_filter(event.value)
        self._render_frames()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self) -> None:
        """The filter stays applied and the input gives its rows back to the frames: the pane's title says it."""
        self.query_one("#filter", Input).display = False
        self.query_one("#frames", FrameList).focus()
        self._render_frames()

    def action_zoom(self) -> None:
        """z: the focused pane on the whole screen, or back to the layout."""
        if self.screen.maximized is not None:
            self.screen.minimize()
        elif self.screen.focused is not None:
            self.screen.maximize(self.screen.focused)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("rerun", "run_queue", "fail_fast"):
            return self.replay is None and self.follower is None
        if action in ("step", "speed"):
            return self.replay is not None
        if action in ("watch", "interval"):
            return self.replay is None and self.fixed_events is None and self.follower is None
        if action in ("console", "matrix"):
            return self.follower is None  # following another's run: read-only
        if action in ("round", "panel"):
            return self.watch_view
        return True

    def action_rerun(self) -> None:
        if not self.is_live or self.focus_probe is None:
            return
        if self.control is not None:
            self.notify("watching: the probes run in rounds (R runs the next round now; w stops the watch)",
                        timeout=4)
            return
        self.user_pinned = True
        self._start_run(only=(self.focus_probe,))

    def action_run_queue(self) -> None:
        if not self.is_live:
            return
        self.user_pinned = False
        if self.control is not None:
            if self.state.running:
                self.notify("a round is running; the next one starts when it has finished", timeout=3)
            self.control.run_now()
            return
        self._start_run()

    # --- watching: keys ------------------------------------------------------------------------------------
    def action_watch(self) -> None:
        """w: start watching; stop after the round under way; pressed again, stop now."""
        if not self.is_live:
            return
        control = self.control
        if control is None:
            self._start_watch()
            self.notify(f"watching: a round every {interval_words(self.watch_interval)} (w stops)", timeout=3)
        elif self.state.running and not control.stopping:
            control.stop_after_round()
            self.notify("the watch stops after this round (w again stops it now)", timeout=4)
        else:
            self._stop_watch()
            self.notify("watch stopped", timeout=3)
        self._render_header()

    def _start_watch(self) -> None:
        assert self.target is not None
        options = dataclasses.replace(self.options, fail_fast=self.fail_fast)
        control = self.control = WatchControl(self.watch_interval, options)
        self.alerts_on = True
        self.user_pinned = False
        if not self.watch_view:
            self._set_watch_view(True)
        self.run_worker(self._watch(self.target, control), group="run", exclusive=True, exit_on_error=False,
                        name="watch")

    def _stop_watch(self) -> None:
        self.control = None
        for worker in self.workers:
            if worker.group == "run" and worker.name == "watch":
                worker.cancel()  # the round under way (if any) ends as interrupted; the shared sandbox stops

    async def _watch(self, target: ResolvedTarget, control: WatchControl) -> None:
        """The watch worker: await the rounds in the engine's loop; they speak only through the bus."""
        assert self.engine is not None
        try:
            await self.engine.run(run_rounds(self.config, target, self.bus, self.clock, control, self.pytest_args))
        finally:
            if self.control is control:
                self.control = None
            self._render_header()

    def action_interval(self) -> None:
        """W: ask for the watch interval."""
        def chosen(seconds: float | None) -> None:
            if seconds is not None:
                self.set_watch_interval(seconds)

        self.push_screen(IntervalScreen(self.watch_interval), chosen)

    def set_watch_interval(self, seconds: float) -> None:
        self.watch_interval = seconds
        if self.control is not None:
            self.control.set_interval(seconds)
        words = interval_words(seconds)
        self.notify(f"watch interval {words}" + ("" if self.control is not None else " (w starts watching)"),
                    timeout=3)
        self._render_header()

    def action_round(self, delta: int) -> None:
        """[ / ] (or left/right on the queue): the round before or after the one shown; past the newest, live."""
        history = self.state.history
        if not self.watch_view or not history.rounds:
            return
        first, last = history.rounds[0].n, history.rounds[-1].n
        current = self.selected_round
        if current is None:
            if delta > 0:
                return
            # the newest round that has finished (a running one shows live anyway)
            n = last - 1 if self.state.running and last > first else last
        else:
            n = current + delta
            if n > last:
                self.select_round(None)
                return
        self.select_round(max(first, n))

    def select_round(self, n: int | None) -> None:
        if n is not None and self.state.history.round(n) is None:
            return
        if n == self.selected_round:
            return
        self.selected_round = n
        self._round_changed()

    def action_panel(self) -> None:
        """t: timeline → latency → frame detail."""
        if not self.watch_view:
            return
        self.panel = PANELS[(PANELS.index(self.panel) + 1) % len(PANELS)]
        self._show_panel()
        self._render_watch()

    def action_fail_fast(self) -> None:
        self.fail_fast = not self.fail_fast
        if self.control is not None:  # watching: from the next round on
            self.control.options = dataclasses.replace(self.control.options, fail_fast=self.fail_fast)
        self.notify(f"fail-fast {'on' if self.fail_fast else 'off'} for the next run", timeout=3)
        self._render_header()

    def action_pause(self) -> None:
        if self.player is not None:
            self.player.toggle_pause()
            self._render_header()
            return
        frames = self.query_one("#frames", FrameList)
        frames.set_follow(not frames.follow)

    def action_step(self) -> None:
        if self.player is not None:
            self.player.step()

    def action_speed(self, direction: int) -> None:
        if self.player is not None:
            self.player.change_speed(direction)
            self._render_header()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        self.set_focus(box)  # now, not after a refresh: the keys typed next belong to the filter

    def action_escape(self) -> None:
        box = self.query_one("#filter", Input)
        if self.screen.maximized is not None:
            self.screen.minimize()
        elif box.display or self.query_one("#frames", FrameList).filter is not None:
            box.value = ""  # (Input.Changed clears the list's filter)
            box.display = False
            self.query_one("#frames", FrameList).set_filter("")
            self._render_frames()
            self.query_one("#frames", FrameList).focus()
        elif self.selected_round is not None:
            self.select_round(None)  # back to the live round
        elif self.screen.focused is self.query_one("#stages", StagePane):
            self.query_one("#queue", QueuePane).focus()  # out of the stages: the frame detail again
            self._detail_mode = "frame"
            self.query_one("#detail").border_title = "Frame"
            self.query_one("#detail", FrameDetail).show(self.query_one("#frames", FrameList).selected())

    def action_copy(self) -> None:
        """The frame on show (frame screen, or the frames pane focused), else the close summary, else a frame."""
        if isinstance(self.screen, FrameScreen):
            self._copy_frame(self.screen.selected)
            return
        stages = self.query_one("#stages", StagePane)
        probe, _words = self._shown_model()
        if self.screen.focused is stages and stages.selected and probe and stages.selected in probe.stages:
            text = "\n".join(self._stage_lines(probe, stages.selected))
            self.copy_text(visible(text), f"the {stages.selected} stage's evidence")
            return
        frames = self.query_one("#frames", FrameList)
        selected = frames.selected()
        if self.screen.focused is frames and selected is not None:
            self._copy_frame(selected)
            return
        text = close_summary(self.state.probes.get(self.focus_probe) if self.focus_probe else None)
        if text is None and selected is not None:
            self._copy_frame(selected)
            return
        if text is None:
            self.notify("nothing to copy: no close and no frame selected", severity="warning", timeout=3)
            return
        self.copy_text(text, "the close summary")

    def _copy_frame(self, selected: tuple[Frame, FrameInfo, int]) -> None:
        frame, info, seq = selected
        self.copy_text(visible(pretty(frame.data)),  # the clipboard gets no control characters
                       f"frame #{seq} ({info.type or info.kind})")

    def copy_text(self, text: str, what: str) -> None:
        """Copy to the terminal's clipboard (OSC 52), tmux's buffer and a file; the toast says the real size and
        where it went (a frame type in `what` is the server's text: shown, never markup)."""
        self.copy_to_clipboard(text)
        size, where = copy_elsewhere(text)
        self.notify(one_line(f"copied {what}: {size:,} B → " + "; ".join(where)), timeout=6, markup=False)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # --- runs (live) --------------------------------------------------------------------------------------
    def _start_run(self, only: tuple[str, ...] | None = None) -> None:
        """Run the queue (as selected on the command line), or only the given probes. While watching: the watch
        starts again with the new options (a new target, another fault)."""
        assert self.target is not None
        if self.control is not None and only is None:
            self._start_watch()  # exclusive: the old watch winds down (its sandbox stops) before this one starts
            return
        options = dataclasses.replace(self.options, only=self.options.only if only is None else only,
                                      fail_fast=self.fail_fast)
        self.run_worker(self._run(self.target, options), group="run", exclusive=True, exit_on_error=False,
                        name="queue run")

    async def _start_when_settled(self) -> None:
        """Start the first run once the screen has settled (the first paints and layouts take the CPU for a
        few hundred milliseconds; a run started meanwhile would measure them as network time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_MAX
        quiet = 0
        while quiet < 3 and loop.time() < deadline:
            before = loop.time()
            await asyncio.sleep(0.02)
            quiet = quiet + 1 if loop.time() - before < 0.03 else 0
        if self.watch_requested:
            self._start_watch()
        else:
            self._start_run()

    async def _run(self, target: ResolvedTarget, options: RunOptions) -> None:
        """The worker: await the engine (in its thread). Everything it has to say arrives as events on the bus."""
        assert self.engine is not None
        if self.pytest_args is not None:  # the team's own suite as the queue
            await self.engine.run(run_pytest(self.config, target, self.bus, options, self.clock, self.pytest_args))
        else:
            await self.engine.run(run_queue(self.config, target, self.bus, options, self.clock))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.error is not None:
            err = event.worker.error
            self.notify(one_line(f"{event.worker.name} failed: {type(err).__name__}: {err}"), severity="error", timeout=10,
                        markup=False)
            self.state.running = False
            self._render_header()

    def switch_target(self, name: str) -> None:
        try:
            target = resolve_target(self.config, name)
        except ConfigError as exc:
            self.notify(one_line(str(exc)), title="cannot switch target", severity="error", timeout=8, markup=False)
            return
        if not target.is_sandbox:
            from urllib.parse import urlsplit

            host = urlsplit(target.base_url).hostname or ""
            if looks_like_production(host, self.config.safety.non_production_patterns):
                self.notify(f"{name} ({host}) looks like production; start stagewatch with --target {name} "
                            "--allow-production if you mean it", severity="error", timeout=10, markup=False)
                return
        self.target = target
        self.info.insecure = not target.verify_tls
        if not target.is_sandbox:
            self.options = dataclasses.replace(self.options, fault="none", expected_version=None)
            self.info.fault = "none"
        self.user_pinned = False
        self.notify(one_line(f"target {name}: running the queue"), timeout=3, markup=False)
        self._start_run()

    def switch_fault(self, fault: str) -> None:
        self.options = dataclasses.replace(self.options, fault=fault)
        self.info.fault = fault
        self.user_pinned = False
        self._start_run()


def run_app(config: Config, target: ResolvedTarget | None, options: RunOptions, record_path: Path | None,
            replay_path: Path | None, *, watch: float | None = None, bell: bool = True,
            on_change: str | None = None, pytest_args: Sequence[str] | None = None, console: bool = False,
            follow_path: Path | None = None, follow_idle: float | None = 1800.0,
            telemetry: Telemetry | None = None) -> int:
    """Open the app (live against `target`, watching every `watch` seconds when given, or replaying
    `replay_path`; with the console open and no queue run for `console`); returns the process exit code. On
    leaving, says where the session was recorded."""
    replay: Replay | None = None
    if replay_path is not None:
        try:
            size = replay_path.stat().st_size if replay_path.exists() else 0
            if size > 5 * 2**20:  # a flood's recording takes seconds to read: say so rather than show nothing
                sys.stderr.write(f"stagewatch: reading {_home(replay_path)} ({size / 2**20:,.0f} MB)…\n")
                sys.stderr.flush()
            replay = read_recording(replay_path)
        except RecordingError as exc:
            sys.stderr.write(f"stagewatch: error: {exc}\n")
            return 2
    elif target is None and follow_path is None:
        sys.stderr.write("stagewatch: error: no target to probe\n")
        return 2
    app = StagewatchApp(config, target, options, record_path, replay, replay_name=one_line(_home(replay_path or "")),
                        watch=watch if replay is None else None, bell=bell, on_change=on_change,
                        pytest_args=pytest_args, console=console, follow_path=follow_path, follow_idle=follow_idle,
                        telemetry=telemetry)
    try:
        app.run()
    finally:
        if app.telemetry is not None:
            app.telemetry.close()  # the spans flushed (a line if they could not be delivered), /metrics stopped
    if app.recorder is not None and record_path is not None and record_path.exists():
        newest = record_path.parent.resolve() == default_recordings_dir().resolve()  # what --last opens
        sys.stderr.write(one_line(f"stagewatch: recorded to {record_path} — replay it: stagewatch replay "
                                  f"{_shell_word(str(record_path))}" + (" (or stagewatch replay --last)" if newest
                                                                        else "")) + "\n")
    return app.return_code or 0


def _shell_word(text: str) -> str:
    import shlex

    return shlex.quote(text)  # 0 after quitting; 1 if the app itself crashed (Textual printed why)
