"""`expect`: wait for a frame — by default the ready frame, which must come first — or, with `require_text`, for
the response text (already among the answers since the last send, or still to come)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..config import Step
from ..context import ProbeContext, StageFailed
from ..evidence import EchoCheck, StepEvidence
from ..messages import error_text, excerpt, response_text
from ..net import ms_since
from ..session import SessionEnded, ended_detail
from .base import StepKind


@dataclass(slots=True, kw_only=True)
class ExpectEvidence(StepEvidence):
    kind = "expect"
    frame_type: str | None = None  # the frame that answered (or the wrong one that came first)
    ms_since_accept: float | None = None
    wrong_type: bool = False
    error_frame: str | None = None  # an error frame's message
    waited_ms: float | None = None
    skipped: list[str] = field(default_factory=list)  # frame types passed over while waiting
    echo: EchoCheck | None = None  # asked when the server closed before the ready frame
    # with require_text
    chars: int | None = None
    excerpt: str = ""
    empty_response: bool = False


class Expect(StepKind):
    name = "expect"
    evidence = ExpectEvidence

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        return step.timeout or (ctx.timeouts.response if step.require_text else ctx.timeouts.ready)

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, ExpectEvidence]:
        if step.require_text:
            return await self._response(ctx, limit)
        session = ctx.require_session()
        p = ctx.protocol
        wanted = step.any_of or [step.type or p.ready_type]
        strict = step.type is None and step.any_of is None  # the ready frame must come first
        start = time.monotonic()
        skipped: list[str] = []
        try:
            async with asyncio.timeout(limit):
                while True:
                    t, value, frame = await session.next()
                    if t in wanted:
                        return f"{t} after {frame.ms:.0f} ms", ExpectEvidence(frame_type=t,
                                                                              ms_since_accept=round(frame.ms, 1))
                    if t in p.error_types:
                        said = error_text(value)
                        raise StageFailed(f"error frame instead of {wanted[0]}: {said}",
                                          evidence=ExpectEvidence(error_frame=said, frame_type=t))
                    if strict:
                        t = session.real_type(t, frame)
                        shown = t or ("binary" if isinstance(frame.data, bytes) else "non-JSON text")
                        raise StageFailed(f"first frame was {shown}, expected {wanted[0]}",
                                          evidence=ExpectEvidence(frame_type=shown, wrong_type=True))
                    skipped.append(session.real_type(t, frame) or "?")
        except TimeoutError:
            raise StageFailed(f"no {wanted[0]} within {limit:g} s", evidence=ExpectEvidence(
                timeout=True, error="timeout", waited_ms=ms_since(start), skipped=skipped[-10:])) from None
        except SessionEnded as ended:
            ev = ExpectEvidence(closed=True)
            if strict and ("Authorization" in ctx.sent_headers or "Sec-WebSocket-Protocol" in ctx.sent_headers):
                # the close came before the limit: what is left of it bounds the echo check
                ev.echo = await ctx.echo_check(min(ctx.timeouts.http, limit - (time.monotonic() - start)))
            raise StageFailed(ended_detail(ended, wanted[0]), evidence=ev) from None

    async def _response(self, ctx: ProbeContext, limit: float) -> tuple[str, ExpectEvidence]:
        p = ctx.protocol
        looked = ", ".join(p.response_paths[:4]) + ", …"
        for t, value, _frame in ctx.answers:
            text = response_text(value, p.response_paths)
            if text:
                return self._found(t, text)
        session = ctx.require_session()
        try:
            async with asyncio.timeout(limit):
                while True:
                    t, value, _frame = await session.next()
                    if t in p.error_types:
                        said = error_text(value)
                        raise StageFailed(f"error frame instead of a response: {said}",
                                          evidence=ExpectEvidence(error_frame=said, frame_type=t))
                    if t in p.response_types:
                        text = response_text(value, p.response_paths)
                        if text:
                            return self._found(t, text)
        except TimeoutError:
            seen = ", ".join(str(t) for t, _, _ in ctx.answers) or "no response frame"
            raise StageFailed(f"no response text within {limit:g} s ({seen}; looked at {looked})",
                              evidence=ExpectEvidence(empty_response=True)) from None
        except SessionEnded as ended:
            raise StageFailed(ended_detail(ended, "a response arrived"),
                              evidence=ExpectEvidence(closed=True)) from None

    @staticmethod
    def _found(t: str | None, text: str) -> tuple[str, ExpectEvidence]:
        shown = excerpt(text)
        return f"{len(text)} chars in {t}: {shown}", ExpectEvidence(chars=len(text), frame_type=t, excerpt=shown)
