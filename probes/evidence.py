"""What a probe saw, gathered for diagnosis: statuses, headers, subprotocols, close, frames, timings.

Filled by the probe runner as it goes (live) or rebuilt from events (replay); read by `diagnosis` rules.
Everything here is already redacted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .closecodes import describe
from .events import (Closed, Event, Frame, HttpExchange, ProbeStarted, StageFinished, StageStarted,
                     WsOpened)


@dataclass
class StageOutcome:
    name: str
    step: str
    status: str
    duration_ms: float
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    probe_id: str = ""
    stages: list[StageOutcome] = field(default_factory=list)
    http: list[HttpExchange] = field(default_factory=list)
    opened: list[WsOpened] = field(default_factory=list)
    closes: list[Closed] = field(default_factory=list)
    # the last few frames before the (first) close: a bounded deque, so keeping them is one C call per frame
    last_frames: deque[Frame] = field(default_factory=lambda: deque(maxlen=Evidence.KEEP_FRAMES))
    frames_in: int = 0
    frames_out: int = 0
    _steps: dict[str, str] = field(default_factory=dict)

    KEEP_FRAMES = 8

    @property
    def failed(self) -> StageOutcome | None:
        return next((s for s in self.stages if s.status in ("fail", "error")), None)

    @property
    def close(self) -> Closed | None:
        """The close that matters: the first server-side or abnormal one, else the first."""
        for c in self.closes:
            if c.by != "client":
                return c
        return self.closes[0] if self.closes else None

    def stage(self, name: str) -> StageOutcome | None:
        return next((s for s in self.stages if s.name == name), None)

    def add(self, event: Event | Frame) -> None:
        """Fold one event of this probe into the evidence (used live and on replay)."""
        if type(event) is Frame:  # the hot path
            if event.direction == "in":
                self.frames_in += 1
            else:
                self.frames_out += 1
            if not self.closes:
                self.last_frames.append(event)
            return
        if isinstance(event, StageStarted):
            self._steps[event.stage] = event.step
        elif isinstance(event, StageFinished):
            self.stages.append(StageOutcome(event.stage, self._steps.get(event.stage, ""), event.status,
                                            event.duration_ms, event.detail, dict(event.evidence)))
        elif isinstance(event, HttpExchange):
            self.http.append(event)
        elif isinstance(event, WsOpened):
            self.opened.append(event)
        elif isinstance(event, Closed):
            self.closes.append(event)
        elif isinstance(event, ProbeStarted):
            self.probe_id = event.probe_id

    def recent_frames(self) -> list[Frame]:
        return list(self.last_frames)

    def frame_in(self, frame: Frame) -> None:
        """The hot path of a flood (`add` for a received frame, without its type tests)."""
        self.frames_in += 1
        if not self.closes:
            self.last_frames.append(frame)

    def close_summary(self) -> dict[str, Any] | None:
        c = self.close
        if c is None:
            return None
        return {"code": c.code, "name": describe(c.code).name, "reason": c.reason, "by": c.by,
                "after_ms": round(c.after_ms, 1)}
