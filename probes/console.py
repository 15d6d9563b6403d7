"""A hand-driven WebSocket session (the console): connect with session overrides, send what you compose, ping,
close with a chosen code and reason, reconnect with a fresh token — each action a stage of the probe `console`,
so the same panes, the recorder, the reports and the diagnosis see it as they see any probe.

The connection stages are the engine's own step kinds (`connect`, then `expect` for the ready frame), run on a
target copied with the overrides (`Overrides`: token transport, headers added/removed, claims, a subprotocol
string), so what the console shows for a refused upgrade is what a probe would show, diagnosis included. Frames
stream into the frame pane as they arrive, also while nobody is sending. Every wait has the target's limit.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson

from . import auth as authmod
from .bus import EventBus
from .clock import Clock
from .closecodes import close_sentence
from .config import Config, ProbeDef, ResolvedTarget, Step, TokenTransport
from .context import RunContext
from .diagnosis import diagnose
from .events import (Diagnosed, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished, StageStarted,
                     Status)
from .net import ms_since
from .options import RunOptions, run_fault, run_redactor, sandbox_options
from .probe import ProbeRun
from .runner import target_hosts
from .sandbox import Sandbox

CONSOLE_ID = "console"  # probes.report.CONSOLE_PROBE says the same (the report shows this probe whole)
TRANSPORTS: dict[str, tuple[TokenTransport, ...]] = {
    "config": (), "subprotocol": ("subprotocol",), "header": ("header",), "query": ("query",),
    "subprotocol+header": ("subprotocol", "header"), "none": ()}
CLOSE_CODES = (1000, 1001, 1008, 1011, 3000, 4000, 4001)  # offered in the app; any 1000, 3000–4999 is accepted


class ConsoleError(Exception):
    """What the person asked for cannot be done (not connected, bad JSON, an illegal close code): one line."""


@dataclass(frozen=True)
class Overrides:
    """A console session's changes to the config, for this session only (no file is edited)."""

    transport: str = "config"  # a key of TRANSPORTS; "none" sends no token
    add_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()  # names, any case
    claims: dict[str, Any] = field(default_factory=dict)  # over auth.claims; exp/iat/nbf given as +/-N are relative
    subprotocol: str | None = None  # offered as it is, beside (or, with transport "none"/no subprotocol, instead)

    def words(self) -> str:
        parts = [] if self.transport == "config" else [f"token via {self.transport}"]
        parts += [f"+{k}" for k in self.add_headers] + [f"-{k}" for k in self.remove_headers]
        parts += [f"{k}={v}" for k, v in self.claims.items()]
        if self.subprotocol:
            parts.append(f"subprotocol {self.subprotocol!r}")
        return ", ".join(parts) or "as configured"


def parse_headers(text: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """'X-A: 1; -X-E2E-Test; Authorization: Bearer x' -> ({'X-A': '1', …}, ('x-e2e-test',)). ';' or newlines
    separate; a leading '-' removes a configured header."""
    add: dict[str, str] = {}
    remove: list[str] = []
    for part in text.replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if part.startswith("-") and ":" not in part:
            remove.append(part[1:].strip().lower())
            continue
        name, sep, value = part.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
            raise ConsoleError(f"header {part!r}: write it as 'Name: value' (or '-Name' to remove one)")
        add[name.strip()] = value.strip()
    return add, tuple(remove)


def parse_claims(text: str) -> dict[str, Any]:
    """'sub=other exp=-60 roles=["admin"]' -> claims; a value is JSON when it parses, else a string."""
    out: dict[str, Any] = {}
    for part in text.split():
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ConsoleError(f"claim {part!r}: write it as name=value (exp=-60 for a token expired a minute ago)")
        try:
            out[name] = orjson.loads(value)
        except orjson.JSONDecodeError:
            out[name] = value
    return out


def check_json(text: str) -> str:
    """The composed message, validated: JSON (any value); raises ConsoleError naming line and column."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConsoleError(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    return text


def check_close_code(code: int) -> int:
    """RFC 6455 §7.4: a client may send 1000, or 3000–4999 (1001/1008/1011 are accepted too, as servers use)."""
    if code in (1000, 1001, 1008, 1011) or 3000 <= code <= 4999:
        return code
    raise ConsoleError(f"close code {code} may not be sent (use 1000, 1001, 1008, 1011 or 3000–4999)")


def templates(target: ResolvedTarget) -> list[tuple[str, str]]:
    """The config's messages as composer templates: (label, JSON text)."""
    p = target.protocol
    out = []
    for text in p.messages:
        rendered = orjson.loads(orjson.dumps(p.message_template).decode().replace(
            "{text}", orjson.dumps(text).decode()[1:-1]))
        out.append((text[:40], orjson.dumps(rendered, option=orjson.OPT_INDENT_2).decode()))
    return out


def overridden(target: ResolvedTarget, ov: Overrides) -> ResolvedTarget:
    """The target with the session's overrides applied (a copy; the config is untouched)."""
    p = target.protocol
    removed = {name.lower() for name in ov.remove_headers}
    headers = {k: v for k, v in p.headers.items() if k.lower() not in removed}
    headers.update(ov.add_headers)
    transport = list(p.token_transport) if ov.transport == "config" else list(TRANSPORTS[ov.transport])
    extra = list(p.extra_subprotocols) + ([ov.subprotocol] if ov.subprotocol else [])
    protocol = p.model_copy(update={"headers": headers, "token_transport": transport or list(p.token_transport),
                                    "extra_subprotocols": extra})
    return target.model_copy(update={"protocol": protocol})


class Console:
    """One console: `open()` once (it starts the embedded sandbox for a sandbox target), then `connect`, `send`,
    `ping`, `close`, `reconnect` in any order, then `shutdown()`. Every call runs in the engine's loop."""

    def __init__(self, config: Config, target: ResolvedTarget, bus: EventBus, clock: Clock,
                 options: RunOptions | None = None) -> None:
        self.config, self.target, self.bus, self.clock = config, target, bus, clock
        self.options = options or RunOptions()
        self.overrides = Overrides()
        self.sandbox: Sandbox | None = None
        self.http: httpx.AsyncClient | None = None
        self.base_url = target.base_url
        self.secret: str | None = None
        self.run: ProbeRun | None = None
        self.connections = 0
        self.counts: dict[str, int] = {}
        self.closing = False
        self.last: tuple[str, Status, str] | None = None  # the last stage: name, status, detail (for a toast)
        self.own_run = False  # announce the session as a run of its own (RunStarted … RunFinished): no queue ran
        self._watch: asyncio.Task[None] | None = None

    # --- life -------------------------------------------------------------------------------------------------
    async def open(self, own_run: bool = False) -> None:
        """Start what the session needs; with `own_run` (nothing else runs in this session, e.g. `stagewatch
        console`) the session is announced as a run, so its recording and report name the target and end."""
        if self.target.is_sandbox:
            self.sandbox = self.options.sandbox or await Sandbox(sandbox_options(self.target, self.options)).start()
            self.base_url, self.secret = self.sandbox.base_url, self.sandbox.secret
        self.http = httpx.AsyncClient(verify=self.target.verify_tls, follow_redirects=False, trust_env=False)
        self.own_run = own_run
        if own_run:
            self._started_at = time.monotonic()
            self.bus.publish(RunStarted(self.clock(), self.target.name, self.base_url, (), self.clock.wall,
                                        run_fault(self.target, self.options)))

    async def shutdown(self) -> None:
        if self.connected:
            try:
                await self.close(1001, "stagewatch console closed")
            except ConsoleError:
                pass
        if self._watch is not None:
            self._watch.cancel()
        if self.own_run:
            self.own_run = False
            probe = self.run.model if self.run is not None else None
            verdict = "fail" if probe is not None and probe.status in ("fail", "error") else "pass"
            self.bus.publish(RunFinished(self.clock(), verdict,  # type: ignore[arg-type]
                                         round((time.monotonic() - self._started_at) * 1000, 1)))
        if self.http is not None:
            await self.http.aclose()
        if self.sandbox is not None and self.sandbox is not self.options.sandbox:
            await self.sandbox.stop()

    @property
    def connected(self) -> bool:
        ctx = self.run.ctx if self.run else None
        return bool(ctx and ctx.session and ctx.session.closed is None and not ctx.session.lost)

    def _context(self, target: ResolvedTarget) -> RunContext:
        env = os.environ if self.options.env is None else self.options.env
        return RunContext(target=target, base_url=self.base_url, bus=self.bus, clock=self.clock,
                          redactor=run_redactor(target, env, self.secret), env=env, sandbox_secret=self.secret,
                          http=self.http, allowed_hosts=target_hosts(target, self.base_url))

    # --- actions ------------------------------------------------------------------------------------------------
    async def connect(self, overrides: Overrides | None = None) -> Status:
        """A fresh connection (and a fresh token) with these overrides: the stages connect and handshake."""
        if overrides is not None:
            self.overrides = overrides
        if self.connected:
            await self.close(1000, "stagewatch console reconnects")
        ov = self.overrides
        target = overridden(self.target, ov)
        self.connections += 1
        self.counts.clear()
        probe = ProbeDef(id=CONSOLE_ID, name=f"console · {ov.words()}", priority=0, steps=[
            Step(step="connect", name="connect", token="none" if ov.transport == "none" else "default"),
            Step(step="expect", name="handshake")])
        run = self.run = ProbeRun(probe, self._context(target))
        run.emit(ProbeStarted(self.clock(), CONSOLE_ID, probe.name, 0, ("connect", "handshake")))
        if ov.claims and ov.transport != "none":
            run.ctx.token = self._token(target, ov.claims)
            run.run_ctx.redactor.add(run.ctx.token.token)
        status: Status = "pass"
        for step in probe.steps:
            status = await run.stage(step)
            stage = run.model.stages.get(step.name)
            self.last = (step.name, status, stage.detail if stage else "")
            if status != "pass":
                break
        if status != "pass":
            for later in probe.steps[probe.steps.index(step) + 1:]:
                run.emit(StageStarted(self.clock(), CONSOLE_ID, later.name, later.step))
                run.emit(StageFinished(self.clock(), CONSOLE_ID, later.name, "skip", 0.0, f"not run: {step.name} failed"))
            await self._finish(status, step.name)
        else:
            self._watch = asyncio.create_task(self._watch_close(run))
        return status

    reconnect = connect

    async def send(self, text: str) -> None:
        session = self._session()
        check_json(text)
        name = self._stage_name("send")
        limit = self.target.timeouts.send
        self._started(name, "send", limit)
        start = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                await session.send_text(text)
        except Exception as exc:  # noqa: BLE001 - a send that fails is the stage's result, not a crash
            self._finished(name, "fail", start, f"not sent: {type(exc).__name__}: {exc}")
            return
        self._finished(name, "pass", start, f"sent {len(text.encode())} B")

    async def ping(self) -> float | None:
        """A ping; the round trip in ms (None when no pong came within timeouts.ready)."""
        session = self._session()
        name = self._stage_name("ping")
        limit = self.target.timeouts.ready
        self._started(name, "ping", limit)
        start = time.monotonic()
        try:
            waiter = await session.ws.ping()
            async with asyncio.timeout(limit):
                await waiter
        except TimeoutError:
            self._finished(name, "fail", start, f"no pong within {limit:g} s")
            return None
        except Exception as exc:  # noqa: BLE001
            self._finished(name, "fail", start, f"ping failed: {type(exc).__name__}: {exc}")
            return None
        rtt = ms_since(start)
        self._finished(name, "pass", start, f"pong in {rtt:.1f} ms")
        return rtt

    async def close(self, code: int = 1000, reason: str = "stagewatch console") -> None:
        session = self._session()
        check_close_code(code)
        if len(reason.encode()) > 123:
            raise ConsoleError("a close reason is at most 123 bytes (RFC 6455 §5.5)")
        name = self._stage_name("close")
        limit = self.target.timeouts.close
        self._started(name, "close", limit)
        start = time.monotonic()
        self.closing = True
        closed, answered = await session.close(limit, code, reason)
        detail = close_sentence(closed.code, closed.reason, closed.by, closed.after_ms)
        if answered:
            self._finished(name, "pass", start, detail)
            await self._finish("pass", None)
        else:  # a server that leaves a close unanswered fails the session: the drop is its doing, not ours
            self._finished(name, "fail", start, f"the server did not answer our close {code} within {limit:g} s: "
                           f"stagewatch dropped the connection ({detail})")
            await self._finish("fail", name)

    # --- inside -------------------------------------------------------------------------------------------------
    def _session(self) -> Any:
        if not self.connected or self.run is None or self.run.ctx.session is None:
            raise ConsoleError("not connected: reconnect first")
        return self.run.ctx.session

    def _token(self, target: ResolvedTarget, claims: dict[str, Any]) -> authmod.TokenInfo:
        a = target.auth
        if a.mode != "mint":
            raise ConsoleError(f"claims can be changed only when stagewatch mints the token (auth.mode is {a.mode!r})")
        env = os.environ if self.options.env is None else self.options.env
        secret, source = (self.secret, "sandbox key") if self.secret else authmod.read_secret(
            a, env, loopback_port=self._context(target).loopback_port)
        now = int(time.time())
        merged: dict[str, Any] = {**a.claims, "iat": now, "exp": now + a.ttl_s}
        for name, value in claims.items():
            relative = name in ("exp", "iat", "nbf") and isinstance(value, int) and not isinstance(value, bool)
            merged[name] = now + value if relative and abs(value) < 10**8 else value
        token = jwt.encode(merged, secret, algorithm=a.algorithm)
        return authmod.TokenInfo(token, f"minted {a.algorithm} with {source} (console claims)", merged)

    def _stage_name(self, kind: str) -> str:
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        return kind if n == 1 else f"{kind}-{n}"

    def _started(self, name: str, step: str, limit: float) -> None:
        assert self.run is not None
        self.run.emit(StageStarted(self.clock(), CONSOLE_ID, name, step, limit))

    def _finished(self, name: str, status: Status, start: float, detail: str) -> None:
        assert self.run is not None
        shown = self.run.run_ctx.redactor.text(detail)
        self.last = (name, status, shown)
        self.run.emit(StageFinished(self.clock(), CONSOLE_ID, name, status, ms_since(start), shown))

    async def _watch_close(self, run: ProbeRun) -> None:
        """The server closing (or the line dropping) while the session is idle ends the console probe too."""
        session = run.ctx.session
        if session is None:
            return
        await session.ws.wait_closed()
        if run is self.run and not self.closing:
            session.record_close()
            await self._finish("fail", None)

    async def _finish(self, status: Status, failed_stage: str | None) -> None:
        run = self.run
        if run is None or run.model.finished:
            return
        self.closing = False
        m = run.model
        if status != "pass" or (m.close is not None and m.close.by == "server"):
            found = diagnose(m, protocol=run.run_ctx.target.protocol, timeouts=self.target.timeouts)
            if found:
                run.emit(Diagnosed(self.clock(), CONSOLE_ID, tuple(d.as_dict() for d in found)))
        duration = 0.0 if m.started_t is None else (self.clock() - m.started_t) * 1000.0
        run.emit(ProbeFinished(self.clock(), CONSOLE_ID, status, round(duration, 1), failed_stage,
                               m.frames_in, m.frames_out))
