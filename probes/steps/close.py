"""`close`: our close handshake (1000), which the server must answer within the limit."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..config import Step
from ..context import ProbeContext, StageFailed
from ..evidence import StepEvidence
from ..net import ms_since
from ..session import ended_detail
from .base import StepKind


@dataclass(slots=True, kw_only=True)
class CloseEvidence(StepEvidence):
    kind = "close"
    code: int | None = None


class Close(StepKind):
    name = "close"
    evidence = CloseEvidence

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.close

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, CloseEvidence]:
        session = ctx.session
        if session is None:
            raise StageFailed("no open connection to close", "error")
        if session.closed is not None:
            raise StageFailed(ended_detail(session.closed, "the client closed"),
                              evidence=CloseEvidence(closed=True, code=session.closed.code))
        start = time.monotonic()
        closed, answered = await session.close(limit)
        ctx.session = None
        if not answered and closed.by == "client":
            raise StageFailed(f"the server did not answer our close within {limit:g} s: connection aborted",
                              evidence=CloseEvidence(timeout=True, code=closed.code))
        if closed.by == "client" and closed.code == 1000:
            return f"closed 1000, server answered in {ms_since(start):.0f} ms", CloseEvidence(code=closed.code)
        raise StageFailed(f"close handshake incomplete: {closed.code} {closed.name}",
                          evidence=CloseEvidence(code=closed.code))
