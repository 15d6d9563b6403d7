"""The sandbox server: HTTP health and header echo, and the WebSocket chat protocol, each fault switchable.

It validates the JWT (HS256) with its own secret (carried as `Authorization: Bearer`, a `jwt.` subprotocol or a
`token` query parameter), echoes the `jwt.` subprotocol, sends
`connection_established`, answers each user message with the five agent events and a response, and closes 1000
when the client does. It listens on loopback only. Given a deploy script (`deploy.py`) it plays it from its start:
fault and build switched in place, the listener stopped and started again on the same port.

For probes that hold sessions open it plays two more things, deterministically (`rolling_restart()` and the faults
`rolling-restart` and `idle-timeout`, below), counts what is open (`open_sessions`) and holds thousands of idle
sessions cheaply: a session costs its handler awaiting the next message (websockets answers pings itself; the
server never pings; with `compression=False`, or a client that offers none, about 15 KB each, 50 KB with
permessage-deflate), and the listen backlog takes a burst of thousands of connects.

A rolling restart (the rollout): K sessions are open when it begins. From that moment every request and upgrade
is answered 503 (the pod is out of the load balancer), and the sessions are closed one by one in the order they
were opened, session i of K at `i-1`/K of the drain window `drain_s`: every `drop_every`-th (ranks 10, 20, … by
default) is dropped (TCP aborted, no close frame: 1006 on the client, as a killed pod), the others get a close
frame `drain_code` (1012 'service restart' or 1001 'going away'). So floor(K/drop_every) are dropped and the rest
closed cleanly; a session that ended on its own before its turn is skipped (its rank still counts). The 503s go on
`refuse_s` after the drain window, then the new build answers (health, and `server_build` in
`connection_established`). A session whose upgrade passed just before the drain began is closed with
`drain_code` as soon as it opens. The fault `rolling-restart` plays one `rolling_at` seconds after the start (then
every `rolling_every` seconds after the last one ended, when set); a deploy's `rolling` step plays one at its offset.

The fault `idle-timeout` ends every session at its age `idle_after_s` (from its accept, a timer per session, not a
task), whatever its traffic: TCP dropped with no close frame, or a close frame `idle_close_code` when set.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..net import open_files_headroom
from ..auth import token_from_subprotocol
from ..redact import redact_token
from .deploy import DeployStep
from .faults import DEFAULT_FLOOD, FAULTS, IDLE_TIMEOUT, ROLLING_RESTART

SANDBOX_BUILD = "2026.11.25-sandbox"
STALE_BUILD = "2026.10.02-stale"
CLOSE_GRACE_S = 1.0  # a deploy's down/restart: how long open sessions get to finish their close handshake
CLOCK_SKEW_S = 1200  # clock-skew fault: the server runs 20 minutes ahead (more than the token lifetime)
AGENT_EVENTS = ("agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed")
MESSAGE_TYPES = {"user_message", "chat_message", "message", "start_agent"}
QUERY_PARAM = "token"  # the protocol's default query_param
# What a header-stripping proxy in front of the backend removes, per fault.
STRIPPED = {"strip-auth": frozenset({"authorization", "sec-websocket-protocol"}),
            "strip-auth-header": frozenset({"authorization"})}
DRAIN_REASONS = {1012: "service restart", 1001: "going away"}  # a rollout's clean close, per drain_code
IDLE_REASON = "max connection age"  # idle-timeout with idle_close_code: the close frame's reason
BACKLOG = 4096  # the listen backlog (asyncio's default 100 refuses a burst of thousands of connects)


@dataclass
class SandboxOptions:
    """What the sandbox serves. The rollout's and idle-timeout's knobs are read when they act, so a test may set
    them on a running sandbox's `options`."""

    fault: str = "none"
    flood: int = DEFAULT_FLOOD
    delay: float = 35.0  # slow-agent: seconds between agent events
    step_delay: float = 0.004  # normal pace between agent events
    ready_close_after: float = 0.05  # closed-before-ready: seconds between accept and close
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ws_path: str = "/ws"
    build: str | None = None  # what health reports (default: SANDBOX_BUILD; version-mismatch: STALE_BUILD)
    deploy: list[DeployStep] | None = None  # a script played from the start (deploy.parse_deploy)
    compression: bool = True  # permessage-deflate when offered; off, a held session costs ~15 KB instead of ~50
    # A rollout (rolling_restart(), a deploy's `rolling` step, the rolling-restart fault):
    drain_s: float = 2.0  # the window over which the open sessions are closed, in the order they were opened
    drop_every: int = 10  # every N-th open session (by open order, 1-based) is dropped, no close frame; 0: none
    drain_code: int = 1012  # the others' close: 1012 'service restart' or 1001 'going away'
    refuse_s: float = 1.0  # after the drain window, upgrades and health still answer 503 this long
    rolling_at: float = 2.0  # the rolling-restart fault: seconds from its start (or switch) to its rollout
    rolling_every: float | None = None  # the fault: seconds from a rollout's end to the next (None: just one)
    rolling_build: str | None = None  # the fault's new build (default: the build served + "+r<n>", n = rollout)
    # The idle-timeout fault:
    idle_after_s: float = 3.0  # every session ends at this age (since its accept), whatever its traffic
    idle_close_code: int | None = None  # None: TCP dropped, no close frame (1006); else a close frame with it

    def fault_words(self) -> str:
        """What the fault does, with this sandbox's own knobs (the FAULTS text states the defaults)."""
        if self.fault == "rolling-restart":
            dropped = f"every {self.drop_every}th dropped with no close frame (1006), " if self.drop_every else ""
            return (f"{self.rolling_at:g} s after start, a rolling restart: from then on every request answers 503; "
                    f"the open sessions are closed one by one in open order over {self.drain_s:g} s, {dropped}the rest "
                    f"{self.drain_code} '{DRAIN_REASONS[self.drain_code]}'; {self.refuse_s:g} s after that window a "
                    "new build answers" + (f", again every {self.rolling_every:g} s" if self.rolling_every else ""))
        if self.fault == "idle-timeout":
            how = (f"a close frame {self.idle_close_code} '{IDLE_REASON}'" if self.idle_close_code is not None
                   else "TCP dropped with no close frame (1006)")
            return (f"every session ends {self.idle_after_s:g} s after its accept whatever its traffic (pings "
                    f"included), {how}: a proxy's max connection age")
        return FAULTS[self.fault]

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r} (faults: {', '.join(FAULTS)})")
        if self.drain_code not in DRAIN_REASONS:
            raise ValueError(f"drain_code {self.drain_code} (1012 or 1001)")
        if self.idle_close_code is not None and not _sendable(self.idle_close_code):
            raise ValueError(f"idle_close_code {self.idle_close_code} cannot be sent in a close frame")
        if min(self.drain_s, self.refuse_s, self.rolling_at) < 0 or self.drop_every < 0:
            raise ValueError("drain_s, refuse_s, rolling_at and drop_every are never negative")
        if self.idle_after_s <= 0 or (self.rolling_every is not None and self.rolling_every <= 0):
            raise ValueError("idle_after_s and rolling_every are positive")


@dataclass(frozen=True)
class Rollout:
    """One rolling restart as played. Times are the event loop's clock (`loop.time()`, monotonic seconds)."""

    number: int  # 1-based: the sandbox's rollouts so far
    build_before: str  # what health reported before it
    build: str  # what answers after it
    sessions: int  # K: open when the drain began
    dropped: int  # TCP aborted, no close frame
    closed: int  # a close frame with drain_code
    skipped: int  # ended on their own before their turn
    code: int  # the drain_code used
    started: float  # the drain began (503s from here)
    drained: float  # the drain window ended (started + drain_s)
    ended: float  # the new build answers (drained + refuse_s, or later if the loop was late)


@dataclass
class _Drain:
    """A rollout under way: the sessions it closes, in open order, and when it began."""

    sessions: list[ServerConnection]
    started: float
    build_before: str


StepCallback = Callable[[DeployStep], None]
RolloutCallback = Callable[["Rollout"], None]


def _sendable(code: int) -> bool:
    """Whether a close frame may carry `code` (RFC 6455 7.4: not 1004-1006 nor 1015; 3000-4999 are free)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


class Sandbox:
    """`async with Sandbox(SandboxOptions(fault=...)) as sb:` then use `sb.base_url`.

    With `options.deploy`, the script plays from `start()`: after each step `phase` names it, `on_step` callbacks
    are called with it, and `await wait_step(n)` returns once step n has been applied (a `rolling` step: once its
    rollout has begun; the next step waits for its end).

    Counters: `connections` (handlers run), `messages`, `open_sessions` (now), `rollouts` (completed; the last
    one's numbers in `last_rollout`, each passed to the `on_rollout` callbacks as it ends), `idle_closed` (sessions the idle-timeout fault ended). `rollout_phase` is
    "draining", "restarting" or None; `await wait_for(predicate)` re-checks a condition on every step, rollout
    phase and rollout end.
    """

    def __init__(self, options: SandboxOptions | None = None, host: str = "127.0.0.1", port: int = 0,
                 on_step: StepCallback | None = None) -> None:
        self.options = options or SandboxOptions()
        self.host = host
        self.port = port
        self._server: Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.messages = 0
        self._fault: str | None = None  # switched in place (a deploy step): wins over options.fault
        self._build: str | None = None  # likewise over options.build
        self.on_step: list[StepCallback] = [on_step] if on_step else []
        self.step: DeployStep | None = None  # the deploy step applied last
        self.applied = 0  # deploy steps applied so far
        self._stepped = asyncio.Condition()
        self._player: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.deploy_error: str | None = None  # why the step applied last could not listen again
        self._sessions: dict[ServerConnection, None] = {}  # open sessions, in the order they were opened
        self.rollouts = 0  # completed rolling restarts
        self.last_rollout: Rollout | None = None
        self.on_rollout: list[RolloutCallback] = []  # called with each rollout once it has ended
        self.idle_closed = 0  # sessions the idle-timeout fault ended
        self.rollout_phase: str | None = None  # "draining", "restarting" or None
        self._refuse_until = 0.0  # loop time the rollout's 503s end (for Retry-After)
        self._rolling_lock = asyncio.Lock()  # rollouts never overlap
        self._mode: asyncio.Task[None] | None = None  # the rolling-restart fault's schedule
        self._mode_rolling = False  # that schedule is in a rollout (not asleep)
        self._tasks: set[asyncio.Task[Any]] = set()  # closes and rollouts under way
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()

    @property
    def fault(self) -> str:
        return self._fault if self._fault is not None else self.options.fault

    @property
    def plays_deploy(self) -> bool:
        return bool(self.options.deploy)

    @property
    def open_sessions(self) -> int:
        """WebSocket sessions open now (their handlers running)."""
        return len(self._sessions)

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def phase(self) -> str:
        """What the sandbox serves now, one line: the deploy step applied last, or its fault."""
        rolling = f" · rolling restart: {self.rollout_phase}" if self.rollout_phase else ""
        if self.step is not None:
            return self.step.describe() + (f" ({self.deploy_error})" if self.deploy_error else "") + rolling
        return f"fault {self.fault}" + (" (deploy not started)" if self.plays_deploy else "") + rolling

    @property
    def release_build(self) -> str | None:
        """The build a probe should expect; None while a deploy or rolling restarts play (builds change by
        design)."""
        if self.plays_deploy or self.options.fault == ROLLING_RESTART:
            return None
        return self.options.build or SANDBOX_BUILD

    @property
    def secret(self) -> str:
        return self.options.secret

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def build(self) -> str:
        """What health reports now."""
        if self.fault == "version-mismatch":
            return STALE_BUILD
        return self._build or self.options.build or SANDBOX_BUILD

    def switch(self, fault: str | None = None, build: str | None = None) -> None:
        """Serve `fault` and/or report `build` from now on (new connections; open ones keep their fault). Switching
        rolling-restart on starts its schedule (a rollout `rolling_at` s later); switching it off ends it (after the
        rollout under way, if any)."""
        if fault is not None:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} (faults: {', '.join(FAULTS)})")
            changed = fault != self.fault
            self._fault = fault
            if changed:
                self._schedule_rolling()
        if build is not None:
            self._build = build

    async def start(self) -> Sandbox:
        open_files_headroom()  # thousands of held sessions: one descriptor each
        self._stopped.clear()
        if self.plays_deploy:  # a deploy plays from the start again
            self._fault = self._build = self.step = self.deploy_error = None
            self.applied = 0
        self._loop = asyncio.get_running_loop()
        started = self._loop.time()
        await self._listen()
        steps = list(self.options.deploy or ())
        # What it serves from the start is in place when start() returns (a rollout at 0s: the player's).
        while steps and steps[0].offset <= 0 and not steps[0].rolling:
            await self._apply(steps.pop(0))
        if steps:
            self._player = asyncio.create_task(self._play(steps, started))
        self._schedule_rolling()
        return self

    async def _listen(self) -> None:
        self._server = await serve(
            self._handle, self.host, self.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            server_header="stagewatch-sandbox",
            compression="deflate" if self.options.compression else None,
            max_size=2**20,
            ping_interval=None,  # the server never pings: a held session costs nothing between the client's pings
            backlog=BACKLOG,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]  # port 0 asked: the one given; later listens reuse it

    async def _unlisten(self, code: int | None = None, reason: str = "") -> None:
        """Stop listening. With `code`, open sessions get that close first (a grace of CLOSE_GRACE_S)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=code is None)
        if code is not None:
            closing = [asyncio.create_task(ws.close(code, reason)) for ws in server.connections]
            if closing:
                await asyncio.wait(closing, timeout=CLOSE_GRACE_S)
        for task in tuple(self._handlers):  # a handler asleep in a slow fault must not hold the stop
            task.cancel()
        await server.wait_closed()

    async def stop(self) -> None:
        tasks = [t for t in (self._player, self._mode, *self._tasks) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._player = self._mode = None
        await self._unlisten(1001, "server shutting down")  # a graceful stop (SIGTERM): Going Away, not 1011
        self._loop = None
        self._stopped.set()

    async def wait_step(self, index: int) -> DeployStep:
        """Wait until deploy step `index` (1-based) has been applied; returns the step applied last."""
        await self.wait_for(lambda: self.applied >= index)
        assert self.step is not None
        return self.step

    async def wait_rollout(self, number: int = 1) -> Rollout:
        """Wait until `number` rollouts have completed; returns the last one."""
        await self.wait_for(lambda: self.rollouts >= number)
        assert self.last_rollout is not None
        return self.last_rollout

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checked after every deploy step, rollout phase and rollout (no
        deadline here: wrap it in `asyncio.wait_for`)."""
        async with self._stepped:
            await self._stepped.wait_for(predicate)

    async def _changed(self) -> None:
        async with self._stepped:
            self._stepped.notify_all()

    async def _play(self, steps: list[DeployStep], started: float) -> None:
        """The deploy: each step at its offset from `started` (loop time)."""
        loop = asyncio.get_running_loop()
        for step in steps:
            delay = started + step.offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._apply(step)

    async def _apply(self, step: DeployStep) -> None:
        if step.rolling:  # applied once the rollout began; the player goes on when it has ended
            async with self._rolling_lock:
                drain = await self._begin_rollout()
                self.deploy_error = None
                await self._applied(step)
                await self._finish_rollout(drain, step.build)
            return
        self.switch(fault=step.fault, build=step.build)
        self.deploy_error = None
        if not step.listening:
            await self._unlisten(*((1012, "service restart") if step.what == "restart" else (1001, "going away")))
        elif self._server is None:
            try:
                await self._listen()
            except OSError as exc:  # the port was taken meanwhile: down until a later step listens again
                self.deploy_error = f"cannot listen again on {self.host}:{self.port}: {exc.strerror or exc}"
        await self._applied(step)

    async def _applied(self, step: DeployStep) -> None:
        self.step = step
        self.applied += 1
        for callback in self.on_step:
            callback(step)
        await self._changed()

    # --- rolling restart and idle timeout -----------------------------------------------------------------
    async def rolling_restart(self, build: str | None = None) -> Rollout:
        """Play one rollout now (see the module's docstring) and return it once `build` answers (None: the build
        stays). A rollout under way is finished first: rollouts never overlap."""
        async with self._rolling_lock:
            return await self._finish_rollout(await self._begin_rollout(), build)

    async def _begin_rollout(self) -> _Drain:
        """503s from now; the sessions open now are the ones drained."""
        loop = asyncio.get_running_loop()
        drain = _Drain(list(self._sessions), loop.time(), self.build)
        self.rollout_phase = "draining"
        self._refuse_until = drain.started + self.options.drain_s + self.options.refuse_s
        await self._changed()
        return drain

    async def _finish_rollout(self, drain: _Drain, build: str | None) -> Rollout:
        loop = asyncio.get_running_loop()
        opts = self.options
        code, every, count = opts.drain_code, opts.drop_every, len(drain.sessions)
        dropped = closed = skipped = 0
        try:
            for rank, ws in enumerate(drain.sessions, start=1):
                await _sleep_until(loop, drain.started + opts.drain_s * (rank - 1) / count)
                if ws.state is not State.OPEN:
                    skipped += 1
                elif every and rank % every == 0:
                    ws.transport.abort()  # a killed pod: no close frame
                    dropped += 1
                else:
                    self._spawn(ws.close(code, DRAIN_REASONS[code]))
                    closed += 1
            drained = drain.started + opts.drain_s
            await _sleep_until(loop, drained)
            self.rollout_phase = "restarting"
            await self._changed()
            await _sleep_until(loop, drained + opts.refuse_s)
            if build is not None:
                self._build = build
        finally:
            self.rollout_phase = None
        self.rollouts += 1
        self.last_rollout = Rollout(self.rollouts, drain.build_before, self.build, count, dropped, closed, skipped,
                                    code, drain.started, drained, loop.time())
        for callback in self.on_rollout:
            callback(self.last_rollout)
        await self._changed()
        return self.last_rollout

    def _schedule_rolling(self) -> None:
        """Match the rolling-restart fault's schedule to the fault served now (a sleeping schedule restarts)."""
        if self._mode is not None and not self._mode.done() and not self._mode_rolling:
            self._mode.cancel()
            self._mode = None
        if self.fault == ROLLING_RESTART and self._loop is not None and (self._mode is None or self._mode.done()):
            self._mode = self._loop.create_task(self._rolling_mode())

    async def _rolling_mode(self) -> None:
        """The rolling-restart fault: a rollout `rolling_at` s after it was switched on, then (with
        `rolling_every`) one that long after each rollout's end, while the fault is served."""
        delay = self.options.rolling_at
        while True:
            await asyncio.sleep(delay)
            if self.fault != ROLLING_RESTART:
                return
            self._mode_rolling = True
            try:
                async with self._rolling_lock:
                    base = re.sub(r"\+r\d+$", "", self.build)  # the build served, without an earlier "+rN"
                    build = self.options.rolling_build or f"{base}+r{self.rollouts + 1}"
                    await self._finish_rollout(await self._begin_rollout(), build)
            finally:
                self._mode_rolling = False
            if self.options.rolling_every is None or self.fault != ROLLING_RESTART:
                return
            delay = self.options.rolling_every

    def _idle_end(self, ws: ServerConnection) -> None:
        """The idle-timeout fault: the session reached `idle_after_s`; dropped, or closed with a frame."""
        if ws.state is not State.OPEN:
            return
        self.idle_closed += 1
        code = self.options.idle_close_code
        if code is None:
            ws.transport.abort()
        else:
            self._spawn(ws.close(code, IDLE_REASON))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A close that runs on by itself (kept until done; cancelled by stop())."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Until `stop()` (a deploy may stop and start the listener meanwhile)."""
        await self._stopped.wait()

    # --- HTTP -------------------------------------------------------------------------------------------
    def _date(self) -> str:
        skew = CLOCK_SKEW_S if self.fault == "clock-skew" else 0
        return email.utils.formatdate(time.time() + skew, usegmt=True)

    def _json(self, conn: ServerConnection, status: int, body: dict[str, Any]) -> Response:
        resp = conn.respond(status, json.dumps(body))
        del resp.headers["Content-Type"]  # respond() set text/plain: one Content-Type, not two
        resp.headers["Content-Type"] = "application/json"
        del resp.headers["Date"]
        resp.headers["Date"] = self._date()
        return resp

    def _seen_headers(self, request: Request) -> Headers:
        stripped = STRIPPED.get(self.fault)
        if not stripped:
            return request.headers
        # What a header-stripping proxy leaves behind.
        return Headers([(k, v) for k, v in request.headers.raw_items() if k.lower() not in stripped])

    def _token(self, headers: Headers, path: str = "") -> str | None:
        """The token as the request carries it: Authorization, a `jwt.` subprotocol, or the `token` query
        parameter (no proxy strips a query string)."""
        auth = headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        for value in headers.get_all("Sec-WebSocket-Protocol"):
            for offered in (v.strip() for v in value.split(",")):
                token = token_from_subprotocol(offered)
                if token:
                    return token
        return _query(path).get(QUERY_PARAM) or None

    def _verify(self, token: str) -> tuple[dict[str, Any] | None, str]:
        now = time.time() + (CLOCK_SKEW_S if self.fault == "clock-skew" else 0)
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"],
                                options={"verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            return None, f"invalid token: {exc}"
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and exp < now:
            return None, "token expired"
        return claims, ""

    def _refusal(self, conn: ServerConnection) -> Response:
        """A rollout's 503, for every path: health says which phase, Retry-After when the new build answers."""
        status = "draining" if self.rollout_phase == "draining" else "restarting"
        resp = self._json(conn, 503, {"status": status, "detail": f"rolling restart: {status}"})
        wait = self._refuse_until - asyncio.get_running_loop().time()
        resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return resp

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if self.rollout_phase is not None:
            return self._refusal(conn)
        if path == "/health":
            if self.fault == "not-ready":
                return self._json(conn, 503, {"status": "starting", "detail": "warming up"})
            return self._json(conn, 200, {"status": "healthy", "version": self.build,
                                          "service": "stagewatch-sandbox"})
        if path == "/debug/echo-headers":
            seen = self._seen_headers(request)
            shown = {k.lower(): (redact_token(v) if k.lower() in ("authorization", "sec-websocket-protocol")
                                 else v) for k, v in seen.raw_items()}
            query = {k: redact_token(v) for k, v in _query(request.path).items()}
            return self._json(conn, 200, {"headers": shown, "query": query})
        if path != self.options.ws_path:
            return self._json(conn, 404, {"detail": f"no route {path}"})
        if self.fault == "not-ready":
            return self._json(conn, 503, {"detail": "service starting"})
        if self.fault == "no-upgrade":
            resp = conn.respond(200, "<!doctype html><html><body><h1>Welcome</h1></body></html>")
            resp.headers["Content-Type"] = "text/html"
            return resp
        if self.fault == "auth-rejected":
            return self._json(conn, 403, {"detail": "forbidden"})
        headers = self._seen_headers(request)
        token = self._token(headers, request.path)
        if token is None:
            return self._json(conn, 401, {"detail": "missing token"})
        claims, why = self._verify(token)
        if claims is None and self.fault != "auth-close":
            return self._json(conn, 401, {"detail": why})
        return None

    def _select_subprotocol(self, conn: ServerConnection, subprotocols: Any) -> Any:
        if self.fault in ("strip-auth", "subprotocol-not-echoed"):  # strip-auth-header: the subprotocol passes
            return None
        for offered in subprotocols:
            if offered.startswith("jwt."):
                return offered
        return None

    # --- WebSocket ----------------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        fault = self.fault
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self._sessions[ws] = None  # before connection_established: a client that saw it is counted
        idle = (asyncio.get_running_loop().call_later(self.options.idle_after_s, self._idle_end, ws)
                if fault == IDLE_TIMEOUT else None)
        try:
            if self.rollout_phase is not None:  # its upgrade passed just before the drain began
                code = self.options.drain_code
                await ws.close(code, DRAIN_REASONS[code])
                return
            if fault == "closed-before-ready":
                await asyncio.sleep(self.options.ready_close_after)
                await ws.close(1000, "main cleanup")
                return
            if fault == "auth-close":
                await ws.close(1008, "invalid token")
                return
            if fault == "silent":
                await ws.wait_closed()
                return
            if fault == "garbage":
                await ws.send("<html>502 Bad Gateway</html>")
                await ws.send(b"\x00\xff\xfe garbage \x80")
            user = "anonymous"
            token = self._token(self._seen_headers(ws.request), ws.request.path) if ws.request else None
            if token:
                user = str((self._verify(token)[0] or {}).get("sub", "anonymous"))
            await ws.send(json.dumps({"type": "connection_established", "payload": {
                "connection_id": uuid.uuid4().hex[:12], "user_id": user, "server_build": self.build}}))
            async for message in ws:
                try:
                    frame = json.loads(message) if isinstance(message, str) else None
                except ValueError:
                    frame = None
                if not isinstance(frame, dict) or frame.get("type") not in MESSAGE_TYPES:
                    await ws.send(json.dumps({"type": "error", "payload": {"message": "unrecognised frame"}}))
                    continue
                self.messages += 1
                await self._agent_run(ws, frame)
        except ConnectionClosed:
            pass
        finally:
            del self._sessions[ws]
            if idle is not None:
                idle.cancel()

    async def _agent_run(self, ws: ServerConnection, frame: dict[str, Any]) -> None:
        fault = self.fault
        given = frame.get("payload")
        payload: dict[str, Any] = given if isinstance(given, dict) else {}
        question = str(payload.get("content", ""))
        run_id = uuid.uuid4().hex[:8]
        if fault == "error-frame":
            await ws.send(json.dumps({"type": "error", "payload": {"message": "agent registry not initialised",
                                                                   "run_id": run_id}}))
            return
        if fault == "flood":
            await self._flood(ws, self.options.flood)
        if fault == "huge-frame":
            await ws.send(json.dumps({"type": "agent_thinking", "payload": {"blob": "x" * 10_000_000}}))
        events = list(AGENT_EVENTS)
        if fault == "missing-events":
            events = [e for e in events if e not in ("tool_executing", "tool_completed")]
        if fault == "events-out-of-order":
            events[0], events[1] = events[1], events[0]
        delay = self.options.delay if fault == "slow-agent" else self.options.step_delay
        answer = f"The answer to {question!r} is {_arithmetic(question)}." if question else "Done."
        for i, name in enumerate(events):
            if i == 2 and fault in ("server-error", "abnormal-close", "restart"):
                if fault == "abnormal-close":
                    ws.transport.abort()
                    return
                code, reason = (1011, "agent crashed") if fault == "server-error" else (1012, "deploy in progress")
                await ws.close(code, reason)
                return
            body: dict[str, Any] = {"run_id": run_id, "agent_name": "triage"}
            if name == "tool_executing":
                body["tool_name"] = "calculator"
            elif name == "tool_completed":
                body.update(tool_name="calculator", result="4")
            elif name == "agent_thinking":
                body["thought"] = "working out the sum"
            elif name == "agent_completed":
                body["response"] = "" if fault == "empty-response" else answer
            await asyncio.sleep(delay)
            await ws.send(json.dumps({"type": name, "payload": body}))

    async def _flood(self, ws: ServerConnection, count: int) -> None:
        """Send `count` filler frames as fast as the socket takes them (pre-encoded, written in batches)."""
        one = Frame(Opcode.TEXT, b'{"type":"flood","payload":{"n":1}}').serialize(
            mask=False, extensions=[])
        batch = 512
        chunk = one * batch
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            ws.transport.write(chunk if n == batch else one * n)
            sent += n
            await ws.drain()


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Until loop time `when` (at once if it has passed)."""
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


def fault_help() -> str:
    width = max(map(len, FAULTS))
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in FAULTS.items())


def _query(path: str) -> dict[str, str]:
    """A request path's query parameters (the first value of each)."""
    return {k: v[0] for k, v in parse_qs(path.partition("?")[2]).items() if v}


def _arithmetic(question: str) -> str:
    """The sandbox's 'agent': adds the numbers in 'what is 2 + 2?' (enough for the probes' questions)."""
    numbers = [int(n) for n in re.findall(r"\d+", question)]
    return str(sum(numbers)) if numbers else "42"
