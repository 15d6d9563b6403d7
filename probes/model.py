"""The one picture of a run, folded from the event stream: per probe its stages, the frames kept, its closes (and
the one that matters), its diagnoses and counters. The headless printer, the reports, replay and the app's state
all read this fold; the probe runner keeps a `ProbeModel` of its own probe for `diagnose`.

Folding is pure and the same live and on replay. A probe that starts again (a rerun, a watch round) starts afresh;
`runs` counts how often.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .events import (Closed, Diagnosed, Event, Frame, HoldTick, HttpExchange, Notice, ProbeFinished, ProbeStarted,
                     Queued, SessionChanged, RunFinished, RunStarted, StageFinished, StageStarted, WsOpened)
from .evidence import StepEvidence
from .holdfold import HoldFold
from .steps.auth import AuthEvidence
from .steps.http import HttpEvidence
from .watch import History

KEEP_FRAMES = 8  # frames kept per probe for diagnosis and reports: the last ones before the first close


@dataclass
class StageModel:
    name: str
    step: str = ""
    status: str = "queued"  # queued, running, pass, fail, error, skip
    duration_ms: float | None = None
    detail: str = ""
    evidence: StepEvidence | None = None
    started_t: float | None = None
    limit_s: float | None = None  # the limit the stage announced
    degraded_ms: float | None = None  # the DEGRADED threshold the stage announced

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")

    @property
    def degraded(self) -> bool:
        """Passed, but slower than its announced threshold."""
        return (self.status == "pass" and self.degraded_ms is not None and self.duration_ms is not None
                and self.duration_ms > self.degraded_ms)


@dataclass
class ProbeModel:
    id: str
    name: str = ""
    priority: int = 0
    stages: dict[str, StageModel] = field(default_factory=dict)
    status: str = "queued"  # queued, running, pass, fail, error, skip
    duration_ms: float | None = None
    failed_stage: str | None = None
    started_t: float | None = None
    frames_in: int = 0
    frames_out: int = 0
    closes: list[Closed] = field(default_factory=list)
    opened: WsOpened | None = None
    http: list[HttpExchange] = field(default_factory=list)
    diagnoses: list[dict[str, Any]] = field(default_factory=list)
    last_frames: deque[Frame] = field(default_factory=lambda: deque(maxlen=KEEP_FRAMES))
    runs: int = 0
    hold: HoldFold | None = None  # a `hold` stage's sessions (one row each) and its disruption summary

    # --- folding ------------------------------------------------------------------------------------------------
    def start(self, event: ProbeStarted) -> None:
        self.name, self.priority = event.name, event.priority
        self.stages = {name: StageModel(name) for name in event.stages}
        self.status, self.duration_ms, self.failed_stage = "running", None, None
        self.started_t = event.t
        self.frames_in = self.frames_out = 0
        self.closes, self.opened, self.http, self.diagnoses = [], None, [], []
        self.hold = None
        self.last_frames.clear()
        self.runs += 1

    def frame_in(self, frame: Frame) -> None:
        """The hot path of a flood: a received frame, without type tests."""
        self.frames_in += 1
        if not self.closes:
            self.last_frames.append(frame)

    def apply(self, event: Event | Frame) -> None:
        """Fold one event of this probe."""
        if type(event) is Frame:
            if event.direction == "in":
                self.frames_in += 1
            else:
                self.frames_out += 1
            if not self.closes:
                self.last_frames.append(event)
        elif isinstance(event, StageStarted):
            stage = self.stages.setdefault(event.stage, StageModel(event.stage))
            stage.step, stage.status, stage.started_t, stage.limit_s = event.step, "running", event.t, event.timeout_s
            stage.degraded_ms = event.degraded_ms
        elif isinstance(event, StageFinished):
            stage = self.stages.setdefault(event.stage, StageModel(event.stage))
            stage.status, stage.duration_ms = event.status, event.duration_ms
            stage.detail, stage.evidence = event.detail, event.evidence
        elif isinstance(event, Closed):
            self.closes.append(event)
        elif isinstance(event, WsOpened):
            self.opened = event
        elif isinstance(event, HttpExchange):
            self.http.append(event)
        elif isinstance(event, Diagnosed):
            self.diagnoses = [dict(d) for d in event.diagnoses]
        elif isinstance(event, ProbeFinished):
            self.status, self.duration_ms, self.failed_stage = event.status, event.duration_ms, event.failed_stage
            self.frames_in, self.frames_out = event.frames_in, event.frames_out
        elif isinstance(event, ProbeStarted):
            self.start(event)
        elif isinstance(event, (SessionChanged, HoldTick)):
            if self.hold is None:
                self.hold = HoldFold()
            self.hold.apply(event)

    def snapshot(self) -> ProbeModel:
        """A copy that later folding does not touch (a watch keeps each round's probes)."""
        return replace(self, stages=dict(self.stages), closes=list(self.closes), http=list(self.http),
                       diagnoses=list(self.diagnoses), last_frames=deque(self.last_frames, maxlen=KEEP_FRAMES))

    def interrupt(self) -> None:
        """The run ended under this probe: nothing of it stays "running"."""
        if self.status == "running":
            self.status = "error"
        for stage in self.stages.values():
            if stage.status == "running":
                stage.status, stage.detail = "error", "interrupted"

    # --- reading ------------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.status not in ("queued", "running")

    @property
    def failed(self) -> StageModel | None:
        """The first failing stage: the probe's verdict."""
        return next((s for s in self.stages.values() if s.failed), None)

    @property
    def current_stage(self) -> StageModel | None:
        return next((s for s in self.stages.values() if s.status == "running"), None)

    @property
    def done_stages(self) -> list[StageModel]:
        """The stages that finished, in order."""
        return [s for s in self.stages.values() if s.status not in ("queued", "running")]

    @property
    def far_close(self) -> Closed | None:
        """The close from the far side (the server's close frame, or a drop): what diagnosis explains."""
        return next((c for c in self.closes if c.by != "client"), None)

    @property
    def close(self) -> Closed | None:
        """The close that matters: the far side's, else our own (e.g. the cleanup close after a pass)."""
        return self.far_close or (self.closes[0] if self.closes else None)

    def close_record(self) -> dict[str, Any] | None:
        """The report contract's `close` object."""
        c = self.close
        if c is None:
            return None
        return {"code": c.code, "name": c.name, "reason": c.reason, "by": c.by, "after_ms": round(c.after_ms, 1)}

    def evidence_of(self, step: str) -> StepEvidence | None:
        """The evidence of the first finished stage of a step kind."""
        return next((s.evidence for s in self.stages.values() if s.step == step and s.evidence is not None), None)

    def last_result(self) -> str:
        """One line for a queue row: what the probe's last run came to."""
        if self.status == "queued":
            return "queued"
        if self.status == "running":
            current = self.current_stage
            if current:
                return f"{current.name}…"
            return "connection open" if self.opened is not None and not self.closes else "starting…"
        failed = self.failed
        if failed is not None:
            if self.diagnoses:  # the engine's name for it says most in the fewest characters
                return f"{failed.name}: {self.diagnoses[0].get('code')}"
            c = self.far_close
            if c is not None:
                return f"{failed.name}: {'dropped' if c.by == 'none' else 'closed'} {c.code}"
            return f"{failed.name}: {failed.detail}"
        if self.status == "skip":
            return next((s.detail for s in self.stages.values() if s.detail), "skipped")
        done = sum(1 for s in self.stages.values() if s.status == "pass")
        return f"{done}/{len(self.stages)} stages passed"


class RunModel:
    """Feed it every event (`apply`, a bus listener) and read the run at any time. A session may hold several
    runs (reruns, watch rounds): each probe shows its latest, and `history` (probes/watch.py) keeps the rounds."""

    def __init__(self, history: History | None = None) -> None:
        self.history = history or History()
        self.stopped = False
        self._wall = 0.0  # epoch seconds at t == 0 of the current run
        self.target = ""
        self.base_url = ""
        self.fault = "none"  # the current run's sandbox fault (each run says its own)
        self.wall0: float | None = None
        self.started_t = 0.0
        self.order: list[str] = []
        self.probes: dict[str, ProbeModel] = {}
        self.runs = 0
        self.running = False
        self.finished: RunFinished | None = None
        self.notices: list[Notice] = []
        self.last_t = 0.0
        self.first_failure: str | None = None  # the first probe that failed in the current run
        self.current: str | None = None  # the probe running now
        self.version: str | None = None  # the build health reported last
        self.token: AuthEvidence | None = None  # the last auth stage's evidence (subject, expiry, redacted token)

    def apply(self, event: Event | Frame) -> set[str]:
        """Fold one event; returns what changed: probe ids, "header", "queue", "notice"."""
        changed: set[str] = set()
        t = event.t
        if t > self.last_t:
            self.last_t = t
        probe_id = getattr(event, "probe_id", None)
        if probe_id is not None:
            probe = self.probes.get(probe_id)
            if isinstance(event, ProbeStarted):
                if probe is None:
                    probe = self.probes[probe_id] = ProbeModel(probe_id)
                    self.order.append(probe_id)
                probe.start(event)
                self.current = probe_id
                changed.update(("queue", "header"))
            elif probe is None:
                return changed
            else:
                probe.apply(event)
                if isinstance(event, SessionChanged) and event.change in ("ended", "reopened"):
                    self.history.sessions_changed(probe_id, event.change, event.code, event.at, event.reconnect_ms,
                                                  event.build)
                    changed.add("history")
                if isinstance(event, StageFinished):
                    self._header_evidence(event)
                    changed.add("header")
                elif isinstance(event, ProbeFinished):
                    if event.status in ("fail", "error") and self.first_failure is None:
                        self.first_failure = probe_id
                    if self.current == probe_id:
                        self.current = None
                    self.history.probe_finished(probe, self._wall + t, probe.snapshot(),
                                                None if probe.started_t is None else self._wall + probe.started_t)
                    changed.update(("queue", "header", "history"))
            changed.add(probe_id)
        elif isinstance(event, RunStarted):
            self._run_started(event)
            changed.update(("header", "queue", *self.probes))
        elif isinstance(event, Queued):
            self._queue(event.probes)
            changed.update(("header", "queue", *(i for i, _, _ in event.probes)))
        elif isinstance(event, RunFinished):
            self.running = False
            self.finished = event
            if event.verdict == "interrupted":
                for probe in self.probes.values():
                    probe.interrupt()
            self.current = None
            self.history.round_finished(event.verdict, self._wall + t)
            changed.update(("header", "queue", "history", *self.probes))
        elif isinstance(event, Notice):
            self.notices.append(event)
            changed.add("notice")
        return changed

    def apply_all(self, events: Iterable[Event | Frame]) -> set[str]:
        changed: set[str] = set()
        for event in events:
            changed |= self.apply(event)
        return changed

    def _run_started(self, event: RunStarted) -> None:
        self.target, self.base_url, self.fault = event.target, event.base_url, event.fault
        if self.wall0 is None:
            self.wall0 = event.wall
        self.started_t = event.t
        self._wall = event.wall
        self.history.round_started(event.wall + event.t)
        self.runs += 1
        self.running = True
        self.finished = None
        self.first_failure = None
        self._queue(event.probes)

    def _queue(self, entries: tuple[tuple[str, str, int], ...]) -> None:
        for probe_id, name, priority in entries:
            probe = self.probes.get(probe_id)
            if probe is None:
                probe = self.probes[probe_id] = ProbeModel(probe_id, name, priority)
                self.order.append(probe_id)
            probe.status, probe.duration_ms = "queued", None
        self.order.sort(key=lambda i: self.probes[i].priority)  # priority order (stable)

    def _header_evidence(self, event: StageFinished) -> None:
        ev = event.evidence
        if ev is None:
            return
        if isinstance(ev, HttpEvidence) and ev.version:
            self.version = ev.version
            self.history.build_seen(ev.version, self._wall + event.t)
        elif isinstance(ev, AuthEvidence) and ev.token:
            self.token = ev

    # --- reading ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """The session was stopped (Ctrl-C, a signal) — between rounds of a watch too: its verdict says so."""
        self.stopped = True

    @property
    def verdict(self) -> str:
        if self.stopped:
            return "interrupted"
        if self.finished is not None:
            return self.finished.verdict
        return "fail" if any(p.status in ("fail", "error") for p in self.probes.values()) else "running"

    def ordered(self) -> list[ProbeModel]:
        return [self.probes[i] for i in self.order if i in self.probes]

    def counts(self) -> dict[str, int]:
        """Probes by status; one stopped mid-stage (q, Ctrl-C, a rerun) is `stopped`, not a failure."""
        out = {"queued": 0, "running": 0, "pass": 0, "fail": 0, "error": 0, "skip": 0, "stopped": 0}
        for probe in self.probes.values():
            failed = probe.failed
            stopped = probe.status == "error" and failed is not None and failed.detail == "interrupted"
            key = "stopped" if stopped else probe.status
            out[key] = out.get(key, 0) + 1
        return out
