"""`hold`: K sessions held open through a rollout — who got dropped, how, when, and how fast they came back.

`{step: hold, sessions: 50, for: 10m, heartbeat: 15s, message_every: 60s, reconnect: true}`. Sessions open
staggered (over `stagger`, default one heartbeat up to 10 s), each with a fresh token the way the golden path sends
it, and must see the ready frame. Every heartbeat one scheduler pings every open session (spread over the beat),
measures the round trip and counts a ping still unanswered at the next beat as missed (a stall: the socket is
open but nobody answers), and polls health for the build. With `message_every` it sends the chat message on each
session in turn and watches for the final event: a session that ends with a run in flight lost it. When a session
ends it publishes how (SessionChanged: code, reason, who, age, the build health reported then); with `reconnect`
it comes back with a fresh token after a backoff (0.25 s doubling to 8 s, jittered) and publishes the time to its
first good ready frame and the build it found.

An open session costs no task of its own: websockets' protocol object, its transport and a small record; its
frames are read by a callback (`wire.TappedConnection`), counted, not published. The stage passes when no session
was disrupted; otherwise it fails, and the diagnosis names the pattern (probes/diagnosis.py, hold rules).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import InvalidHandshake, InvalidStatus

from .. import auth as authmod
from ..closecodes import describe
from ..config import Step
from ..context import ProbeContext, StageFailed, credentials
from ..events import HoldTick, SessionChanged
from ..evidence import StepEvidence
from ..frames import frame_type, get_path, parse_json
from ..holdfold import HoldFold, percentile
from ..messages import render
from ..net import bounded_request, open_files_room, os_error
from ..redact import scrub_jwt_fragments
from ..session import close_facts, open_connection
from ..wire import TappedConnection
from .base import StepKind

DEFAULT_SESSIONS = 10
DEFAULT_FOR_S = 60.0
DEFAULT_HEARTBEAT_S = 15.0
MAX_STAGGER_S = 10.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 8.0
TICK_RTTS = 64  # round trips a tick carries (for the sparklines); the percentiles use all of them
OPEN_AT_ONCE = 200  # concurrent opens (a burst of 5,000 upgrades would look like an attack and time out)
PING_BATCH = 50  # pings sent back to back, then a pause (the beat's pings spread over up to 2 s)
HOLD_MAX_FRAME = 64 * 1024  # a held session reads control frames and the agent's events only


@dataclass(slots=True, kw_only=True)
class HoldEvidence(StepEvidence):
    kind = "hold"
    sessions: dict[str, Any] = field(default_factory=dict)  # probes.holdfold.HoldFold.summary()
    spec: dict[str, Any] = field(default_factory=dict)  # what was asked: sessions, for_s, heartbeat_s, …


@dataclass(slots=True)
class _Held:
    """One held session: its connection and what the scheduler needs."""

    n: int
    ws: TappedConnection | None = None
    opened_mono: float = 0.0
    ready: asyncio.Future[None] | None = None
    ping_waiter: Any = None  # websockets' pong future for the ping in flight
    ping_sent: float = 0.0
    run_since: float | None = None  # an agent run in flight (the message sent, the final event not seen)
    ended: bool = False
    holder: _Holder | None = None

    # The connection's sink and end callback: two bound methods (not two partials: ~400 B less per session).
    def message(self, data: str | bytes) -> None:
        if self.holder is not None:
            self.holder._message(self, data)

    def lost(self) -> None:
        if self.holder is not None:
            self.holder._lost(self)


class Hold(StepKind):
    name = "hold"
    evidence = HoldEvidence

    def limit(self, step: Step, ctx: ProbeContext) -> float:
        t = ctx.timeouts
        return (step.hold_for or DEFAULT_FOR_S) + t.connect + t.ready + t.close + 5.0

    async def run(self, step: Step, ctx: ProbeContext, limit: float) -> tuple[str, HoldEvidence]:
        holder = _Holder(step, ctx)
        short = open_files_room(holder.k)
        if short is not None:
            raise StageFailed(short, evidence=HoldEvidence(spec=holder.spec()))
        try:
            await holder.run()
        finally:
            await holder.stop()
        summary = holder.fold.summary()
        ev = HoldEvidence(sessions=summary, spec=holder.spec())
        line = holder.fold.headline()
        if holder.fold.disrupted() or holder.fold.failed_attempts or summary["pings_missed"]:
            raise StageFailed(line, evidence=ev)
        return line, ev


class _Holder:
    def __init__(self, step: Step, ctx: ProbeContext) -> None:
        self.step, self.ctx = step, ctx
        self.k = step.sessions or DEFAULT_SESSIONS
        self.for_s = step.hold_for or DEFAULT_FOR_S
        self.heartbeat = step.heartbeat or DEFAULT_HEARTBEAT_S
        self.stagger = step.stagger if step.stagger is not None else min(self.heartbeat, MAX_STAGGER_S)
        self.fold = HoldFold()
        self.held: dict[int, _Held] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.build: str | None = None
        self.polled_at = 0.0
        self.pings_sent = self.pings_missed = 0
        self.rtts: list[tuple[int, float]] = []  # since the last tick
        self.all_rtts: list[float] = []  # the last beat's, for its percentiles
        self.stalled: list[int] = []
        self.over = False
        self.opening = asyncio.Semaphore(OPEN_AT_ONCE)
        self.t0 = time.monotonic()
        self.token: authmod.TokenInfo | None = None

    def spec(self) -> dict[str, Any]:
        return {"sessions": self.k, "for_s": self.for_s, "heartbeat_s": self.heartbeat,
                "message_every_s": self.step.message_every, "reconnect": self.step.reconnect,
                "stagger_s": self.stagger}

    # --- publishing ---------------------------------------------------------------------------------------------
    def _publish(self, event: SessionChanged | HoldTick) -> None:
        self.fold.apply(event)
        self.ctx.emit(event)

    def _changed(self, n: int, change: str, **fields: Any) -> None:
        self._publish(SessionChanged(self.ctx.t(), self.ctx.probe_id, n, change, time.time(),  # type: ignore[arg-type]
                                     **fields))

    # --- the hold ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        try:  # a token must be had before anything opens: a missing secret is the stage's failure, not K
            await self._token()
        except ConnectionError as exc:
            raise StageFailed(str(exc).removeprefix("no token: ")) from None
        await self._poll_build()
        self._spawn(self._open_all())
        deadline = self.t0 + self.for_s
        next_message = self.t0 + (self.step.message_every or 0)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            await asyncio.sleep(min(self.heartbeat, deadline - now))
            if time.monotonic() >= deadline:
                break
            await self._beat()
            if self.step.message_every and time.monotonic() >= next_message:
                self._send_messages()
                next_message = time.monotonic() + self.step.message_every
        self.over = True

    async def _open_all(self) -> None:
        """The first opens, one every stagger/K: each open's task is made when its turn comes (not K sleeping
        tasks and timers at once)."""
        spacing = self.stagger / self.k if self.k > 1 else 0.0
        start = time.monotonic()
        for n in range(1, self.k + 1):
            wait = start + spacing * (n - 1) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.over:
                return
            self._spawn(self._open(n, first=True))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _beat(self) -> None:
        """Count last beat's unanswered pings, tick, then ping every open session (spread over this beat)."""
        self.stalled = []
        for h in self.held.values():
            if h.ping_waiter is not None and not h.ping_waiter.done() and not h.ended:
                self.pings_missed += 1
                self.stalled.append(h.n)
            h.ping_waiter = None
        await self._poll_build()
        self._tick()
        open_now = [h for h in self.held.values() if h.ws is not None and not h.ended and h.ready is not None
                    and h.ready.done()]
        # A pause after every PING_BATCH pings: the round trips are measured in this loop, so a burst of thousands
        # would queue the pongs behind the sends (5,000 at once: p95 ≈ 0.5 s of our own backlog, not the server's).
        pause = min(self.heartbeat * 0.5, 2.0) / max(1, len(open_now)) * PING_BATCH
        for i, h in enumerate(open_now):
            if i and pause >= 0.001 and i % PING_BATCH == 0:
                await asyncio.sleep(pause)
            self._ping(h)

    def _ping(self, h: _Held) -> None:
        if h.ws is not None and not h.ended:
            self._spawn(self._ping_one(h))

    async def _ping_one(self, h: _Held) -> None:
        ws = h.ws
        if ws is None:
            return
        sent = time.monotonic()
        try:
            waiter: Any = await ws.ping()
        except Exception:  # noqa: BLE001 - the connection is going: its end is recorded by on_lost
            return
        h.ping_waiter, h.ping_sent = waiter, sent
        self.pings_sent += 1

        def answered(fut: Any) -> None:
            if h.ping_waiter is fut:  # answered (or the connection went): nothing of it is kept till next beat
                h.ping_waiter = None
            if not fut.cancelled() and fut.exception() is None:
                rtt = (time.monotonic() - sent) * 1000.0
                self.rtts.append((h.n, round(rtt, 2)))
                self.all_rtts.append(rtt)

        waiter.add_done_callback(answered)

    def _tick(self) -> None:
        rtts, self.rtts = self.rtts, []
        values, self.all_rtts = self.all_rtts, []
        connecting = sum(1 for h in self.held.values() if not h.ended and (h.ready is None or not h.ready.done()))
        self._publish(HoldTick(self.ctx.t(), self.ctx.probe_id, self.fold.open, connecting, self.pings_sent,
                               self.pings_missed, _r(percentile(values, 50)), _r(percentile(values, 95)),
                               self.build, tuple(rtts[-TICK_RTTS:]), tuple(self.stalled[:TICK_RTTS])))

    async def _poll_build(self) -> None:
        """The build health reports now (what a session's end is attributed to); None when health does not say."""
        run = self.ctx.run
        self.polled_at = time.monotonic()
        if run.http is None:
            return
        p = run.target.protocol
        url = run.base_url.rstrip("/") + (p.health_paths[0] if p.health_paths else "/health")
        try:
            resp = await bounded_request(run.http, "GET", url, run.target.timeouts.http)
        except Exception:  # noqa: BLE001 - health down during a rollout is expected; the build stays as last seen
            return
        value = get_path(parse_json(resp.text), p.version_field) if resp.status_code == 200 else None
        if isinstance(value, (str, int, float)):
            self.build = self.ctx.redact(str(value))

    def _send_messages(self) -> None:
        p = self.ctx.protocol
        text = json.dumps(render(p.message_template, p.messages[0]))  # the golden path's own message
        for h in self.held.values():
            if h.ws is not None and not h.ended and h.ready is not None and h.ready.done() and h.run_since is None:
                h.run_since = time.monotonic()
                self._spawn(self._send(h, text))

    async def _send(self, h: _Held, text: str) -> None:
        ws = h.ws
        if ws is None:
            return
        try:
            await ws.send(text)
        except Exception:  # noqa: BLE001 - the end is recorded by on_lost
            return

    # --- one session ------------------------------------------------------------------------------------------
    async def _token(self) -> authmod.TokenInfo:
        a = self.ctx.run.target.auth
        try:
            if self.token is None:  # the first: obtained as a run does, and told to the redactor
                self.token = await self.ctx.obtain_token(self.ctx.timeouts.connect)
            elif a.mode == "mint":  # then fresh per connection, minted here: telling thousands of tokens to the
                run = self.ctx.run  # redactor would rebuild it each time; nothing of a held session's wire is shown
                self.token = authmod.mint_token(a, run.env, loopback_port=run.loopback_port,
                                                secret=run.sandbox_secret)
        except authmod.AuthError as exc:  # e.g. a restarting local sandbox has no key file yet: retried
            raise ConnectionError(f"no token: {exc}") from None
        return self.token

    async def _open(self, n: int, *, delay: float = 0.0, first: bool = False, since: float | None = None,
                    attempt: int = 0) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.over:
            return
        h = self.held.setdefault(n, _Held(n, holder=self))
        h.ended, h.ws, h.ping_waiter, h.run_since = False, None, None, None
        loop = asyncio.get_running_loop()
        h.ready = loop.create_future()
        t = self.ctx.timeouts
        p = self.ctx.protocol
        try:
            async with self.opening:
                token = await self._token()
                url, headers, subprotocols = credentials(self.ctx.run, token.token, p.token_transport)
                headers.update(self.ctx.trace_headers())  # each session's upgrade joins the hold stage's span
                self.ctx.run.check_host(url)
                ws = await open_connection(url, subprotocols=subprotocols, headers=headers, open_timeout=t.connect,
                                           close_timeout=t.close, max_size=HOLD_MAX_FRAME,
                                           verify_tls=self.ctx.run.target.verify_tls, ping_interval=None, lean=True)
            h.ws, h.opened_mono = ws, time.monotonic()
            ws.attach(h.message, h.lost)
            await asyncio.wait_for(asyncio.shield(h.ready), t.ready)
        except StageFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - refused, timed out, dropped: the attempt failed
            why = _why(exc, p.ready_type)
            if h.ws is not None and not h.ended:
                h.ended = True
                await h.ws.close()
            h.ws = None
            self._changed(n, "failed", detail=why)
            if self.step.reconnect and not self.over:
                backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** attempt) * random.uniform(0.8, 1.2)
                self._spawn(self._open(n, delay=backoff, since=since if since is not None else time.monotonic(),
                                       attempt=attempt + 1))
            return
        if first and since is None:
            self._changed(n, "opened", build=self.build)
        else:
            back = None if since is None else round((time.monotonic() - since) * 1000.0, 1)
            if time.monotonic() - self.polled_at > 0.25:  # the build that answered the way back (at most 4/s)
                await self._poll_build()
            self._changed(n, "reopened", build=self.build, reconnect_ms=back)

    def _message(self, h: _Held, data: str | bytes) -> None:
        p = self.ctx.protocol
        value = parse_json(data)
        kind = frame_type(value, p.type_field)
        if h.ready is not None and not h.ready.done():
            if kind == p.ready_type:
                h.ready.set_result(None)
            return
        if h.run_since is not None and (kind == p.final_event or kind in p.error_types):
            h.run_since = None

    def _lost(self, h: _Held) -> None:
        """The connection ended (its close handshake done, or dropped): record how; come back if asked."""
        ws = h.ws
        if ws is None or h.ended:
            if h.ready is not None and not h.ready.done():
                h.ready.set_exception(ConnectionError("closed before the ready frame"))
            return
        h.ended = True
        if h.ready is not None and not h.ready.done():
            h.ready.set_exception(ConnectionError("closed before the ready frame"))
            return  # the open attempt reports it (failed)
        code, reason, by, _at = close_facts(ws)
        age = round(time.monotonic() - h.opened_mono, 3)
        ours = self.over and by == "client"  # our own close at the hold's end: not a disruption
        self._changed(h.n, "closed" if ours else "ended", code=code, name=describe(code).name,
                      reason=scrub_jwt_fragments(self.ctx.redact(reason)), by=by, age_s=age, build=self.build,
                      run_lost=h.run_since is not None and not ours)
        h.ws = None
        if self.step.reconnect and not self.over:
            self._spawn(self._open(h.n, delay=BACKOFF_FIRST_S * random.uniform(0.8, 1.2), since=time.monotonic()))

    async def stop(self) -> None:
        """The hold is over: our own close (1000) on every open session, within timeouts.close, then a last tick."""
        self.over = True
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        open_ws = [h.ws for h in self.held.values() if h.ws is not None and not h.ended]
        if open_ws:
            limit = self.ctx.timeouts.close
            await asyncio.wait([asyncio.ensure_future(_close(ws, limit)) for ws in open_ws], timeout=limit + 1.0)
        self._tick()


async def _close(ws: TappedConnection, limit: float) -> None:
    try:
        async with asyncio.timeout(limit):
            await ws.close(1000, "hold over")
    except (TimeoutError, OSError):
        if ws.transport is not None:
            ws.transport.abort()


def _why(exc: BaseException, ready: str) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, InvalidHandshake):
        return f"handshake: {exc}"[:120]
    if isinstance(exc, ConnectionError) and "ready frame" in str(exc):
        return f"closed before {ready}"
    if isinstance(exc, ConnectionError) and str(exc).startswith("no token"):
        return str(exc)[:160]
    if isinstance(exc, OSError):
        return os_error(exc)[1][:120]
    return f"{type(exc).__name__}: {exc}"[:120]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
