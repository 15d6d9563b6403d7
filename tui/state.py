"""The app's picture of the session, folded from engine events: probes, stages, closes, diagnoses, frames.

Pure Python (no Textual), so the same code serves the live run, a replay and the tests. `SessionState.take` moves
frames into a bounded `FrameBuffer` per probe (the last `FRAME_CAP` frames and at most `FRAME_BYTES` of data are
kept for display; the full record is on disk); every other event is folded by `SessionState.apply`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import groupby
from operator import attrgetter
from dataclasses import dataclass, field
from typing import Any

from probes.closecodes import describe, label
from probes.events import (Closed, Diagnosed, Event, Frame, HttpExchange, Notice, ProbeFinished, ProbeStarted,
                           RunFinished, RunStarted, StageFinished, StageStarted, WsOpened)
from probes.frames import FrameInfo, classify

FRAME_CAP = 5000  # frames shown per probe
FRAME_BYTES = 32 * 1024 * 1024  # frame data kept per probe for display

GLYPHS = {"queued": "·", "running": "▶", "pass": "✔", "fail": "✘", "error": "!", "skip": "–"}


class FrameBuffer:
    """The last frames of one probe run, for display. Filled and read by the UI thread only (the tick moves frames
    here from the app's inbox), so no locking. Frames are numbered from 0 in arrival order (`seq`); at most `cap`
    are shown and at most `2 * cap` (and `max_bytes` of data) kept.
    """

    __slots__ = ("start", "items", "cap", "max_bytes", "_bytes", "_info", "closes")

    def __init__(self, cap: int = FRAME_CAP, max_bytes: int = FRAME_BYTES) -> None:
        self.start = 0  # seq of items[0]
        self.items: list[Frame] = []
        self.cap = cap
        self.max_bytes = max_bytes
        self._bytes = 0
        self._info: dict[int, FrameInfo] = {}
        self.closes = 0  # close rows among the rows (shown in the stream, not counted as frames)

    def append(self, frame: Frame) -> None:
        self.extend([frame], 1)

    def extend(self, frames: list[Frame], count: int) -> None:
        """`count` frames arrived; `frames` are the last of them (all of them, or at least the last `cap`)."""
        kept = frames[-self.cap:] if len(frames) > self.cap else frames
        size = sum(map(len, map(_data, kept)))
        if count >= self.cap:  # they fill the view on their own: the older ones go
            self.start += len(self.items) + count - len(kept)
            self.items = list(kept)
            self._bytes = size
        else:
            self.start += count - len(kept)  # (always 0 here: fewer than `cap` arrived, all are kept)
            self.items.extend(kept)
            self._bytes += size
        if len(self.items) >= 2 * self.cap or self._bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        items = self.items
        drop = max(0, len(items) - self.cap)
        kept = self._bytes - sum(map(len, map(_data, items[:drop])))
        while kept > self.max_bytes // 2 and drop < len(items) - 1:
            kept -= len(items[drop].data)
            drop += 1
        del items[:drop]
        self._bytes = kept
        self.start += drop
        if self._info:
            self._info = {k: v for k, v in self._info.items() if k >= self.start}

    def snapshot(self) -> FrameBuffer:
        """A frozen copy of what is shown now (for a paused view while frames keep arriving)."""
        copy = FrameBuffer(self.cap, self.max_bytes)
        first = self.first
        copy.start, copy.items = first, self.items[first - self.start:]
        copy._info = self._info  # the same seqs classify the same
        return copy

    @property
    def total(self) -> int:
        """How many rows arrived (the next seq): frames and close rows."""
        return self.start + len(self.items)

    @property
    def frames(self) -> int:
        """How many WebSocket frames arrived (the rows less the close rows)."""
        return self.total - self.closes

    @property
    def first(self) -> int:
        """The seq of the oldest frame shown (at most `cap` are shown)."""
        return max(self.start, self.total - self.cap)

    def get(self, seq: int) -> Frame | None:
        i = seq - self.start
        return self.items[i] if 0 <= i < len(self.items) else None

    def info(self, seq: int) -> FrameInfo | None:
        """The classification of a frame, computed once (only for frames someone looks at)."""
        found = self._info.get(seq)
        if found is None:
            frame = self.get(seq)
            if frame is None:
                return None
            if len(self._info) >= 4 * self.cap:
                self._info.clear()
            found = self._info[seq] = (FrameInfo("close", "close", str(frame.data)) if frame.direction == "close"
                                       else classify(frame.data))
        return found


_data = attrgetter("data")


@dataclass
class StageState:
    name: str
    status: str = "queued"  # queued, running, pass, fail, error, skip
    duration_ms: float | None = None
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    started_t: float | None = None
    limit_s: float | None = None  # the stage's timeout, when the engine said

    def elapsed(self, now_t: float) -> str:
        """'12 s of 30 s' while running (session time `now_t`), '' when not running."""
        if self.status != "running" or self.started_t is None:
            return ""
        took = fmt_ms(max(0.0, now_t - self.started_t) * 1000.0)
        return f"{took} of {self.limit_s:g} s" if self.limit_s else took


@dataclass
class ProbeState:
    id: str
    name: str
    priority: int
    stages: dict[str, StageState] = field(default_factory=dict)
    status: str = "queued"
    duration_ms: float | None = None
    failed_stage: str | None = None
    started_t: float | None = None
    frames_in: int = 0
    frames_out: int = 0
    close: Closed | None = None
    opened: WsOpened | None = None
    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    http: list[HttpExchange] = field(default_factory=list)
    runs: int = 0

    @property
    def current_stage(self) -> StageState | None:
        return next((s for s in self.stages.values() if s.status == "running"), None)

    @property
    def failed(self) -> StageState | None:
        return next((s for s in self.stages.values() if s.status in ("fail", "error")), None)

    def reset(self, stages: Iterable[str]) -> None:
        self.stages = {name: StageState(name) for name in stages}
        self.status, self.duration_ms, self.failed_stage = "running", None, None
        self.frames_in = self.frames_out = 0
        self.close, self.opened = None, None
        self.diagnoses, self.http = [], []

    def last_result(self) -> str:
        """One line for the queue: what the probe's last run came to."""
        if self.status == "queued":
            return "queued"
        if self.status == "running":
            current = self.current_stage
            return f"{current.name}…" if current else "starting…"
        failed = self.failed
        if failed is not None:
            if self.diagnoses:  # the engine's name for it says most in the fewest characters
                return f"{failed.name}: {self.diagnoses[0].get('code')}"
            if self.close is not None and self.close.by != "client":
                return f"{failed.name}: {'dropped' if self.close.by == 'none' else 'closed'} {self.close.code}"
            return f"{failed.name}: {failed.detail}"
        if self.status == "skip":
            return next((s.detail for s in self.stages.values() if s.detail), "skipped")
        done = sum(1 for s in self.stages.values() if s.status == "pass")
        return f"{done}/{len(self.stages)} stages passed"


def close_row(closed: Closed) -> Frame:
    """The close as a row of the frame stream (where DevTools shows it too): direction "close", the sentence as
    its data. Only the UI makes these; the engine never publishes one."""
    return Frame(closed.t, closed.probe_id, "close", closed.after_ms, 0, close_sentence(closed))  # type: ignore[arg-type]


def close_label(closed: Closed) -> str:
    return label(closed.code)


def close_sentence(closed: Closed) -> str:
    """'1000 Normal Closure — 'main cleanup' — server closed 50 ms after accept'."""
    who = {"server": "server closed", "client": "client closed", "none": "connection dropped"}.get(closed.by,
                                                                                                  closed.by)
    reason = f"'{closed.reason}'" if closed.reason else "no reason given"
    return f"{label(closed.code)} — {reason} — {who} {closed.after_ms:.0f} ms after accept"


def close_meaning(closed: Closed) -> str:
    """What the close means, from the side that closed: our own cleanup close is not the server's doing."""
    if closed.by == "client" and closed.code == 1000:
        return "stagewatch closed the connection itself once the probe was done with it: not a server close"
    if closed.by == "client":
        return f"stagewatch closed it: {describe(closed.code).meaning}"
    return describe(closed.code).meaning


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def fmt_countdown(seconds: float) -> str:
    if seconds <= 0:
        return f"expired {fmt_countdown(-seconds)[3:]} ago" if seconds < 0 else "expired"
    s = int(seconds)
    if s >= 3600:
        return f"in {s // 3600} h {s % 3600 // 60:02d} m"
    return f"in {s // 60}:{s % 60:02d}"


class SessionState:
    """Everything the panes show, folded from events. `apply` returns what changed (probe ids, 'header')."""

    def __init__(self) -> None:
        self.target = ""
        self.base_url = ""
        self.wall0: float | None = None
        self.order: list[str] = []
        self.probes: dict[str, ProbeState] = {}
        self.frames: dict[str, FrameBuffer] = {}
        self.version: str | None = None
        self.token_sub: str | None = None
        self.token_exp: float | None = None
        self.token_shown: str | None = None
        self.runs = 0
        self.running = False
        self.verdict: str | None = None
        self.run_duration_ms: float | None = None
        self.notices: list[Notice] = []
        self.last_t = 0.0
        self.first_failure: str | None = None  # the first probe that failed in the current run
        self.current: str | None = None  # the probe running now

    # --- frames -----------------------------------------------------------------------------------------------
    def take(self, events: list[Event]) -> list[Event]:
        """Move the frames among `events` (in arrival order) into their probes' buffers — only the last `cap` of a
        burst are kept — and return the other events, for `apply`. Cost: C-speed per frame, Python per burst."""
        others: list[Event] = []
        for kind, group in groupby(events, type):
            if kind is Frame:
                frames = list(group)
                # Frames of two probes are never adjacent: ProbeFinished/ProbeStarted come between them.
                self.buffer(frames[0].probe_id).extend(frames, len(frames))
            else:
                for event in group:
                    if kind is ProbeStarted:
                        self.new_buffer(event.probe_id)  # type: ignore[attr-defined]
                    elif kind is Closed:
                        buf = self.buffer(event.probe_id)  # type: ignore[attr-defined]
                        buf.append(close_row(event))  # type: ignore[arg-type]
                        buf.closes += 1
                    others.append(event)
        return others

    def buffer(self, probe_id: str) -> FrameBuffer:
        buf = self.frames.get(probe_id)
        if buf is None:
            buf = self.frames[probe_id] = FrameBuffer()
        return buf

    def new_buffer(self, probe_id: str) -> None:
        """A probe (re)starts: its frames start afresh."""
        self.frames[probe_id] = FrameBuffer()

    # --- folding ---------------------------------------------------------------------------------------
    def apply(self, events: Iterable[Event]) -> set[str]:
        changed: set[str] = set()
        for event in events:
            self.last_t = max(self.last_t, event.t)
            if isinstance(event, RunStarted):
                self._run_started(event)
                changed.update(("header", "queue"))
                changed.update(p[0] for p in event.probes)
                continue
            if isinstance(event, RunFinished):
                self.running = False
                self.verdict = event.verdict
                self.run_duration_ms = event.duration_ms
                for probe in self.probes.values():  # an interrupted run leaves nothing "running"
                    if probe.status == "running":
                        probe.status = "error" if event.verdict == "interrupted" else probe.status
                        for stage in probe.stages.values():
                            if stage.status == "running":
                                stage.status, stage.detail = "error", "interrupted"
                self.current = None
                changed.update(("header", "queue", *self.probes))
                continue
            if isinstance(event, Notice):
                self.notices.append(event)
                changed.add("notice")
                continue
            probe_id = getattr(event, "probe_id", None)
            if probe_id is None:
                continue
            probe = self.probes.get(probe_id)
            if isinstance(event, ProbeStarted):
                if probe is None:
                    probe = self.probes[probe_id] = ProbeState(probe_id, event.name, event.priority)
                    self.order.append(probe_id)
                probe.name, probe.priority = event.name, event.priority
                probe.reset(event.stages)
                probe.started_t = event.t
                probe.runs += 1
                self.current = probe_id
                changed.update(("queue", "header"))
            elif probe is None:
                continue
            elif isinstance(event, StageStarted):
                stage = probe.stages.setdefault(event.stage, StageState(event.stage))
                stage.status, stage.started_t, stage.limit_s = "running", event.t, event.timeout_s
            elif isinstance(event, StageFinished):
                stage = probe.stages.setdefault(event.stage, StageState(event.stage))
                stage.status, stage.duration_ms = event.status, event.duration_ms
                stage.detail, stage.evidence = event.detail, dict(event.evidence or {})
                self._header_evidence(event)
                changed.add("header")
            elif isinstance(event, Closed):
                if probe.close is None or (probe.close.by == "client" and event.by != "client"):
                    probe.close = event
            elif isinstance(event, WsOpened):
                probe.opened = event
            elif isinstance(event, HttpExchange):
                probe.http.append(event)
            elif isinstance(event, Diagnosed):
                probe.diagnoses = [dict(d) for d in event.diagnoses]
            elif isinstance(event, ProbeFinished):
                probe.status, probe.duration_ms = event.status, event.duration_ms
                probe.failed_stage = event.failed_stage
                probe.frames_in, probe.frames_out = event.frames_in, event.frames_out
                if event.status in ("fail", "error") and self.first_failure is None:
                    self.first_failure = probe_id
                if self.current == probe_id:
                    self.current = None
                changed.update(("queue", "header"))
            changed.add(probe_id)
        return changed

    def _run_started(self, event: RunStarted) -> None:
        self.target, self.base_url = event.target, event.base_url
        if self.wall0 is None:
            self.wall0 = event.wall
        self.runs += 1
        self.running = True
        self.verdict = None
        self.run_duration_ms = None
        self.first_failure = None
        for probe_id, name, priority in event.probes:
            probe = self.probes.get(probe_id)
            if probe is None:
                probe = self.probes[probe_id] = ProbeState(probe_id, name, priority)
                self.order.append(probe_id)
            probe.status, probe.duration_ms = "queued", None
        # Keep the queue in priority order (stable), whatever order probes first appeared in.
        self.order.sort(key=lambda i: self.probes[i].priority)

    def _header_evidence(self, event: StageFinished) -> None:
        ev = event.evidence or {}
        version = ev.get("version")
        if isinstance(version, str) and version:
            self.version = version
        if "sub" in ev or "exp" in ev:
            sub, exp = ev.get("sub"), ev.get("exp")
            self.token_sub = str(sub) if sub is not None else self.token_sub
            self.token_exp = float(exp) if isinstance(exp, (int, float)) else self.token_exp
            token = ev.get("token")
            self.token_shown = token if isinstance(token, str) else self.token_shown

    # --- reading ---------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {"queued": 0, "running": 0, "pass": 0, "fail": 0, "error": 0, "skip": 0}
        for probe in self.probes.values():
            out[probe.status] = out.get(probe.status, 0) + 1
        return out

    def frames_total(self) -> int:
        return sum(buf.frames for buf in self.frames.values())


def wall_now() -> float:
    return time.time()
