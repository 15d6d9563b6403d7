"""Running one probe: its steps in order, each as a stage that announces its limit, runs within it and publishes
its result with typed evidence. A stage that fails stops the probe; the rest skip. The probe keeps its own
`ProbeModel` (the same fold every consumer uses) for the runner to diagnose.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .config import ProbeDef, Step
from .context import ProbeContext, RunContext, StageFailed
from .events import Event, Frame, ProbeStarted, StageFinished, StageStarted, Status
from .evidence import StepEvidence
from .model import ProbeModel
from .net import HostNotAllowed, ms_since
from .steps import StepKind, kinds
from .tracecontext import new_span_id, new_trace_id

KINDS = kinds()
BACKSTOP_GRACE_S = 0.1


@dataclass
class ProbeOutcome:
    status: Status
    failed_stage: str | None
    duration_ms: float
    model: ProbeModel


class ProbeRun:
    def __init__(self, probe: ProbeDef, run: RunContext) -> None:
        self.probe = probe
        self.run_ctx = run
        self.model = ProbeModel(probe.id)
        self._publish = run.bus.publish
        self._fold = self.model.apply
        self.ctx = ProbeContext(run, probe.id, emit=self._emit, take_frame=self._take_frame)
        self.current: str | None = None

    def _emit(self, event: Event | Frame) -> None:
        self._fold(event)
        self._publish(event)  # type: ignore[arg-type]

    emit = _emit  # for a driver of its own stages (the console)

    async def stage(self, step: Step) -> Status:
        """One stage of `step`'s kind, announced, limited and published (the console runs them one by one)."""
        self.current = step.name
        return await self._stage(step, KINDS[step.step])

    def _take_frame(self, frame: Frame) -> None:
        """A received frame: the hot path (no type dispatch)."""
        self.model.frame_in(frame)
        self._publish(frame)  # type: ignore[arg-type]

    async def run(self) -> ProbeOutcome:
        """Every stage in order; the connection is closed however the probe ends (a cancel re-raises after)."""
        start = time.monotonic()
        ctx = self.ctx
        root = ""
        if self.run_ctx.trace:  # a trace per run of the probe: its root span, a span per stage below it
            ctx.trace_id, root = new_trace_id(), new_span_id()
        self._emit(ProbeStarted(ctx.t(), self.probe.id, self.probe.name or self.probe.id, self.probe.priority,
                                tuple(s.name for s in self.probe.steps), ctx.trace_id, root))
        failed: str | None = None
        status: Status = "pass"
        try:
            for step in self.probe.steps:
                if failed is not None:
                    self._emit(StageStarted(ctx.t(), self.probe.id, step.name, step.step,
                                            span_id=new_span_id() if ctx.trace_id else ""))
                    self._emit(StageFinished(ctx.t(), self.probe.id, step.name, "skip", 0.0,
                                             f"not run: {failed} failed"))
                    continue
                self.current = step.name
                result = await self._stage(step, KINDS[step.step])
                if result in ("fail", "error"):
                    failed, status = step.name, result
        finally:
            await ctx.end_session()
        return ProbeOutcome(status, failed, ms_since(start), self.model)

    async def _stage(self, step: Step, kind: StepKind) -> Status:
        ctx = self.ctx
        limit = kind.limit(step, ctx)
        ctx.span_id = new_span_id() if ctx.trace_id else ""  # the parent its requests name (traceparent)
        self._emit(StageStarted(ctx.t(), self.probe.id, step.name, step.step, limit,
                                step.degraded_ms or ctx.run.degraded_ms, ctx.span_id))
        start = time.monotonic()
        status: Status = "pass"
        evidence: StepEvidence | None
        try:
            # The step keeps `limit` itself (its failure then says what it was waiting for); this backstop
            # enforces it whatever the step waits on, a moment later so the step's own words win the race.
            async with asyncio.timeout(limit + BACKSTOP_GRACE_S):
                detail, evidence = await kind.run(step, ctx, limit)
        except StageFailed as exc:
            detail, evidence = exc.detail, exc.evidence
            status = exc.status  # type: ignore[assignment]
        except TimeoutError:
            detail, evidence = f"no result within {limit:g} s", kind.evidence(timeout=True, error="timeout")
            status = "fail"
        except HostNotAllowed as exc:
            detail, evidence, status = f"blocked: {exc}", kind.evidence(blocked=True), "error"
        except asyncio.CancelledError:
            self._emit(StageFinished(ctx.t(), self.probe.id, step.name, "error", ms_since(start), "interrupted"))
            raise
        except Exception as exc:  # our own bug: report it as an error of this stage, keep the app alive
            detail = f"internal error: {type(exc).__name__}: {exc}"
            evidence, status = kind.evidence(error="internal"), "error"
        redactor = self.run_ctx.redactor
        if evidence is not None:  # server text (error frames, bodies) may echo our token
            evidence = type(evidence).from_record(redactor.tree(evidence.to_record()))
        self._emit(StageFinished(ctx.t(), self.probe.id, step.name, status, ms_since(start),
                                 redactor.text(detail), evidence))
        return status
