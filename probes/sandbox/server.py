"""The sandbox server: HTTP health and header echo, and the WebSocket chat protocol, each fault switchable.

It validates the JWT (HS256) with its own secret (carried as `Authorization: Bearer`, a `jwt.` subprotocol or a
`token` query parameter), echoes the `jwt.` subprotocol, sends
`connection_established`, answers each user message with the five agent events and a response, and closes 1000
when the client does. It listens on loopback only. Given a deploy script (`deploy.py`) it plays it from its start:
fault and build switched in place, the listener stopped and started again on the same port.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from ..auth import token_from_subprotocol
from ..redact import redact_token
from .deploy import DeployStep
from .faults import DEFAULT_FLOOD, FAULTS

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


@dataclass
class SandboxOptions:
    fault: str = "none"
    flood: int = DEFAULT_FLOOD
    delay: float = 35.0  # slow-agent: seconds between agent events
    step_delay: float = 0.004  # normal pace between agent events
    ready_close_after: float = 0.05  # closed-before-ready: seconds between accept and close
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    ws_path: str = "/ws"
    build: str | None = None  # what health reports (default: SANDBOX_BUILD; version-mismatch: STALE_BUILD)
    deploy: list[DeployStep] | None = None  # a script played from the start (deploy.parse_deploy)

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r} (faults: {', '.join(FAULTS)})")


StepCallback = Callable[[DeployStep], None]


class Sandbox:
    """`async with Sandbox(SandboxOptions(fault=...)) as sb:` then use `sb.base_url`.

    With `options.deploy`, the script plays from `start()`: after each step `phase` names it, `on_step` callbacks
    are called with it, and `await wait_step(n)` returns once step n has been applied.
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

    @property
    def fault(self) -> str:
        return self._fault if self._fault is not None else self.options.fault

    @property
    def plays_deploy(self) -> bool:
        return bool(self.options.deploy)

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def phase(self) -> str:
        """What the sandbox serves now, one line: the deploy step applied last, or its fault."""
        if self.step is not None:
            return self.step.describe() + (f" ({self.deploy_error})" if self.deploy_error else "")
        return f"fault {self.fault}" + (" (deploy not started)" if self.plays_deploy else "")

    @property
    def release_build(self) -> str | None:
        """The build a probe should expect; None while a deploy plays (builds change by design)."""
        if self.plays_deploy:
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
        """Serve `fault` and/or report `build` from now on (new connections; open ones keep their fault)."""
        if fault is not None:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} (faults: {', '.join(FAULTS)})")
            self._fault = fault
        if build is not None:
            self._build = build

    async def start(self) -> Sandbox:
        self._stopped.clear()
        if self.plays_deploy:  # a deploy plays from the start again
            self._fault = self._build = self.step = self.deploy_error = None
            self.applied = 0
        started = asyncio.get_running_loop().time()
        await self._listen()
        steps = list(self.options.deploy or ())
        while steps and steps[0].offset <= 0:  # what it serves from the start is in place when start() returns
            await self._apply(steps.pop(0))
        if steps:
            self._player = asyncio.create_task(self._play(steps, started))
        return self

    async def _listen(self) -> None:
        self._server = await serve(
            self._handle, self.host, self.port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            server_header="stagewatch-sandbox",
            max_size=2**20,
            ping_interval=None,
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
        if self._player is not None:
            self._player.cancel()
            try:
                await self._player
            except asyncio.CancelledError:
                pass
            self._player = None
        await self._unlisten()
        self._stopped.set()

    async def wait_step(self, index: int) -> DeployStep:
        """Wait until deploy step `index` (1-based) has been applied; returns the step applied last."""
        async with self._stepped:
            await self._stepped.wait_for(lambda: self.applied >= index)
        assert self.step is not None
        return self.step

    async def _play(self, steps: list[DeployStep], started: float) -> None:
        """The deploy: each step at its offset from `started` (loop time)."""
        loop = asyncio.get_running_loop()
        for step in steps:
            delay = started + step.offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._apply(step)

    async def _apply(self, step: DeployStep) -> None:
        self.switch(fault=step.fault, build=step.build)
        self.deploy_error = None
        if not step.listening:
            await self._unlisten(*((1012, "service restart") if step.what == "restart" else (1001, "going away")))
        elif self._server is None:
            try:
                await self._listen()
            except OSError as exc:  # the port was taken meanwhile: down until a later step listens again
                self.deploy_error = f"cannot listen again on {self.host}:{self.port}: {exc.strerror or exc}"
        self.step = step
        self.applied += 1
        for callback in self.on_step:
            callback(step)
        async with self._stepped:
            self._stepped.notify_all()

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

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
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
        try:
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
