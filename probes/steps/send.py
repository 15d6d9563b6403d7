"""`send`: the user's chat message, from the protocol's template, on the open connection."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from ..config import Step
from ..context import ProbeContext, StageFailed
from ..evidence import StepEvidence
from ..messages import render
from ..session import SessionEnded, ended_detail
from .base import StepKind


@dataclass(slots=True, kw_only=True)
class SendEvidence(StepEvidence):
    kind = "send"
    bytes: int = 0


class Send(StepKind):
    name = "send"
    evidence = SendEvidence

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or ctx.timeouts.send

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, SendEvidence]:
        session = ctx.require_session()
        p = ctx.protocol
        text = step.text if step.text is not None else p.messages[step.message % len(p.messages)]
        payload = json.dumps(render(p.message_template, text))
        try:
            async with asyncio.timeout(limit):  # a peer that stops reading fills the buffers: the send waits
                await session.send_text(payload)
        except SessionEnded as ended:
            raise StageFailed(ended_detail(ended, "the message was sent"),
                              evidence=SendEvidence(closed=True)) from None
        except TimeoutError:
            raise StageFailed(f"the message could not be written within {limit:g} s (the server is not reading)",
                              evidence=SendEvidence(timeout=True)) from None
        ctx.answers = []
        return f"sent {len(payload)} B: {text[:60]}", SendEvidence(bytes=len(payload))
