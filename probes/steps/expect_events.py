"""`expect_events`: the agent's events after the message — every required one, in order, until the final one —
with error frames failing the stage at once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Step
from ..context import ProbeContext, StageFailed
from ..evidence import StepEvidence
from ..messages import error_text
from ..net import ms_since
from ..session import SessionEnded, ended_detail
from .base import StepKind

EVENTS_KEPT = 50


@dataclass(slots=True, kw_only=True)
class EventsEvidence(StepEvidence):
    kind = "expect_events"
    events: list[tuple[str, float]] = field(default_factory=list)  # (type, ms since accept), the first 50
    other_frames: int = 0
    missing: list[str] = field(default_factory=list)
    missing_events: bool = False  # the final event came, some required ones never did
    out_of_order: bool = False
    order: list[str] = field(default_factory=list)  # first arrival order, when out of order
    error_frame: str | None = None
    waited_ms: float | None = None

    @classmethod
    def _convert(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        events = kwargs.get("events")
        if isinstance(events, list):
            kwargs["events"] = [(str(e[0]), float(e[1])) for e in events
                                if isinstance(e, (list, tuple)) and len(e) == 2
                                and isinstance(e[1], (int, float))]
        return kwargs


class ExpectEvents(StepKind):
    name = "expect_events"
    evidence = EventsEvidence

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.agent

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, EventsEvidence]:
        p = ctx.protocol
        required = list(p.agent_events)
        final = p.final_event
        seen: list[tuple[str, float]] = []
        other = 0
        start = time.monotonic()
        session = ctx.require_session()
        other_before = session.other

        def progress(**kw: Any) -> EventsEvidence:
            got = {t for t, _ in seen}
            return EventsEvidence(events=[(t, round(ms, 1)) for t, ms in seen[:EVENTS_KEPT]], other_frames=other,
                                  missing=[e for e in required if e not in got], **kw)

        try:
            async with asyncio.timeout(limit):
                while True:
                    t, value, frame = await session.next()
                    if t in p.response_types:
                        ctx.answers.append((t, value, frame))
                    if t in p.error_types:
                        said = error_text(value)
                        raise StageFailed(f"error frame during the agent run: {said}",
                                          evidence=progress(error_frame=said))
                    if t is not None and t in required:
                        seen.append((t, frame.ms))
                        if t == final:
                            break
                    else:
                        other += 1
        except TimeoutError:
            got = ", ".join(dict.fromkeys(t for t, _ in seen)) or "no agent events"
            raise StageFailed(f"no {final} within {limit:g} s (got: {got})",
                              evidence=progress(timeout=True, error="timeout", waited_ms=ms_since(start))) from None
        except SessionEnded as ended:
            raise StageFailed(ended_detail(ended, final), evidence=progress(closed=True)) from None
        other += session.other - other_before
        ev = progress()
        if ev.missing:
            ev.missing_events = True
            raise StageFailed(f"{final} arrived but {', '.join(ev.missing)} never did", evidence=ev)
        if p.ordered:
            first = list(dict.fromkeys(t for t, _ in seen))
            expected = [e for e in required if e in first]
            if first != expected:
                bad = next(i for i, (a, b) in enumerate(zip(first, expected)) if a != b)
                ev.out_of_order, ev.order = True, first
                raise StageFailed(f"events out of order: {first[bad]} arrived before {expected[bad]}", evidence=ev)
        span = seen[-1][1] - seen[0][1] if seen else 0.0
        return f"{len(required)}/{len(required)} events in order over {span:.0f} ms" + (
            f" (+{other} other frames)" if other else ""), ev
