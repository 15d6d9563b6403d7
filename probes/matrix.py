"""The auth-path matrix: one connection per way of carrying the token (subprotocol, Authorization header, query
parameter, subprotocol+header, none), each with what the header-echo endpoint says reached the backend, and one
conclusion drawn from that evidence ("the Authorization header does not reach the backend; the subprotocol does:
a proxy strips it").

`run_matrix()` connects with the engine's own machinery (`session.open_connection`, `Session`), one connection at a
time, each step within the target's timeouts; rows hold redacted values and raw outside text, and every renderer
passes that text through `sanitize` before it is shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from . import auth as authmod
from .bus import EventBus
from .clock import Clock
from .closecodes import label
from .config import Config, ResolvedTarget
from .context import credentials, ProbeContext, RunContext, StageFailed, echoed_headers
from .events import Event, Frame
from .frames import parse_json
from .net import (BODY_KEEP, BodyTooLarge, HostNotAllowed, bounded_request, causes, http_error, is_loopback,
                  ms_since, os_error)
from .options import RunOptions, run_redactor, sandbox_options
from .runner import target_hosts
from .sandbox import Sandbox
from .sanitize import one_line, tree
from .session import Session, SessionEnded, open_connection

# Each row: its name and what carries the token. The order is the table's.
TRANSPORTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("subprotocol", ("subprotocol",)),
    ("header", ("header",)),
    ("query", ("query",)),
    ("both", ("subprotocol", "header")),
    ("none", ()),
)
MECHANISMS = ("subprotocol", "header", "query")
WORDS = {"subprotocol": "the subprotocol", "header": "the Authorization header", "query": "the query parameter",
         "both": "subprotocol+header together", "none": "no token"}
SHORT = {"subprotocol": "subprotocol", "header": "Authorization header", "query": "query parameter",
         "both": "subprotocol+header"}
UNREACHABLE = frozenset({"refused", "dns", "tls"})  # nothing to try the other transports against
REFUSALS = (401, 403)
DETAIL_CHARS = 60


@dataclass(frozen=True)
class EchoSeen:
    """What the header-echo endpoint says the backend received for one row's credentials (values redacted)."""

    path: str
    status: int | None = None
    error: str = ""
    compared: bool = False  # a header map came back
    authorization: str | None = None  # as received, redacted; None: absent
    subprotocol: str | None = None
    query: bool | None = None  # the token query parameter arrived; None: the echo does not report queries

    def arrived(self, mechanism: str) -> bool | None:
        if not self.compared:
            return None
        if mechanism == "header":
            return self.authorization is not None
        if mechanism == "subprotocol":
            return self.subprotocol is not None
        return self.query


@dataclass
class MatrixRow:
    """One connection: how the token travelled and what happened to it."""

    transport: str
    sends: tuple[str, ...]
    url: str = ""  # redacted
    status: int | None = None  # 101, or the HTTP status that answered the upgrade
    reason: str = ""  # the status's reason phrase (outside text)
    body: str = ""  # of a refused upgrade, redacted (outside text)
    error: str = ""  # category when no HTTP answer came: refused, dns, tls, timeout, dropped, handshake, os
    error_text: str = ""
    upgrade_ms: float | None = None
    subprotocol_echoed: bool | None = None  # None: none offered
    ready: bool = False
    ready_ms: float | None = None  # since the 101
    ready_wait_s: float | None = None  # the limit waited for the ready frame without it
    close_code: int | None = None  # a close before the ready frame
    close_reason: str = ""  # outside text
    close_by: str = ""
    close_after_ms: float | None = None
    echo: EchoSeen | None = None
    skipped: str = ""  # why this row was not tried
    require_echo: bool = True  # protocol.require_subprotocol_echo

    @property
    def echo_refused(self) -> bool:
        return bool(self.require_echo and "subprotocol" in self.sends and self.subprotocol_echoed is False)

    @property
    def works(self) -> bool:
        """The ready frame arrived over a handshake a browser accepts."""
        return self.ready and not self.echo_refused

    @property
    def ok(self) -> bool:
        """As it should be: a token row works; the row without a token is refused."""
        return self.works if self.sends else not self.ready

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def refusal(self) -> bool:
        """Refused as unauthenticated: 401/403, or closed 1008 / 4xxx before the ready frame."""
        code = self.close_code
        return self.status in REFUSALS or code == 1008 or (code is not None and 4000 <= code <= 4999)

    def answer(self) -> str:
        """What happened, in a few words (outside text included: sanitise before showing)."""
        if self.skipped:
            return f"not tried: {self.skipped}"
        if self.error:
            return self.error_text
        if self.status != 101:
            return f"HTTP {self.status}"
        if self.close_code is not None:
            return f"close {self.close_code} '{self.close_reason}'" if self.close_reason else \
                f"close {self.close_code}"
        if self.echo_refused:
            return "101 without echoing the subprotocol"
        if not self.ready:
            return f"no ready frame within {self.ready_wait_s or 0:g} s"
        return f"ready in {_ms(self.ready_ms)}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("require_echo")
        out.update(works=self.works, ok=self.ok, answer=self.answer())
        return out


@dataclass
class MatrixResult:
    target: str
    base_url: str
    ws_url: str = ""
    echo_path: str | None = None
    ready_type: str = "connection_established"
    token_source: str = ""
    rows: list[MatrixRow] = field(default_factory=list)
    conclusion: str = ""
    ok: bool = False  # every transport works, and no token is refused

    @property
    def working(self) -> list[str]:
        return [r.transport for r in self.rows if r.sends and r.works]

    @property
    def failing(self) -> list[str]:
        return [r.transport for r in self.rows if r.sends and not r.works]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, outside text made visible."""
        return tree({"target": self.target, "base_url": self.base_url, "ws_url": self.ws_url,
                     "echo_path": self.echo_path, "ready_type": self.ready_type, "token_source": self.token_source,
                     "ok": self.ok, "conclusion": self.conclusion, "works": self.working, "fails": self.failing,
                     "rows": [r.to_dict() for r in self.rows]})

    def render_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _head(self) -> list[str]:
        return ["transport", "HTTP", "closed before ready", one_line(self.ready_type), "backend received (echo)",
                "detail"]

    def _cells(self) -> list[list[str]]:
        return [[r.transport, _status_cell(r), _close_cell(r), _ready_cell(r), _echo_cell(r, self.echo_path),
                 _detail_cell(r)] for r in self.rows]

    def render_text(self) -> str:
        """The table and the conclusion, for a terminal (every cell sanitised)."""
        head = self._head()
        rows = [head, *self._cells()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"stagewatch matrix → {one_line(self.target)} ({one_line(self.ws_url or self.base_url)})"]
        if self.token_source:
            lines.append(f"token: {one_line(self.token_source)}")
        lines.append("")
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.append("")
        if any(r.answered for r in self.rows):
            lines.append(f"works: {', '.join(self.working) or 'none'} · fails: {', '.join(self.failing) or 'none'}")
        lines.append(f"conclusion: {one_line(self.conclusion)}")
        return "\n".join(lines)

    def render_markdown(self) -> str:
        """`### Auth-path matrix`: the table and the conclusion, to paste into an issue."""
        head = self._head()
        lines = ["### Auth-path matrix", "",
                 f"Target `{_md(self.target)}` ({_md(self.ws_url or self.base_url)})", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md(c) for c in cells) + " |" for cells in self._cells()]
        lines += ["", f"**Conclusion:** {_md(self.conclusion)}", ""]
        return "\n".join(lines)


# --- running ------------------------------------------------------------------------------------------------------

async def run_matrix(config: Config, target: ResolvedTarget, options: RunOptions | None = None, *,
                     env: Mapping[str, str] | None = None) -> MatrixResult:
    """Connect once per transport (TRANSPORTS) to `target` — the embedded sandbox with `options.fault` for a
    sandbox target, or `options.sandbox` when given — and conclude from the statuses and the echo endpoint."""
    options = options or RunOptions()
    env = env if env is not None else (options.env if options.env is not None else os.environ)
    owned: Sandbox | None = None
    base_url, secret = target.base_url, None
    if target.is_sandbox:
        sandbox = options.sandbox
        if sandbox is None:
            sandbox = owned = await Sandbox(sandbox_options(target, options)).start()
        base_url, secret = sandbox.base_url, sandbox.secret
    loopback = is_loopback(urlsplit(base_url).hostname)
    try:
        async with httpx.AsyncClient(verify=target.verify_tls, follow_redirects=False, trust_env=not loopback,
                                     limits=httpx.Limits(max_keepalive_connections=0)) as http:
            run = RunContext(target=target, base_url=base_url, bus=EventBus(), clock=Clock(),
                             redactor=run_redactor(target, env, secret), env=env, sandbox_secret=secret, http=http,
                             allowed_hosts=target_hosts(target, base_url))
            return await _matrix(run)
    finally:
        if owned is not None:
            await owned.stop()


def _drop(_event: Event | Frame) -> None:
    """Events of the matrix's connections are not published: the table is the record."""


async def _matrix(run: RunContext) -> MatrixResult:
    p = run.target.protocol
    result = MatrixResult(run.target.name, run.base_url, run.ws_url, p.echo_headers_path, p.ready_type)
    probe = ProbeContext(run=run, probe_id="matrix", emit=_drop, take_frame=_drop)
    try:
        info = await probe.obtain_token(run.target.timeouts.http)
    except (authmod.AuthError, StageFailed) as exc:
        result.conclusion = f"no token to carry: {exc}"
        return result
    result.token_source = info.source
    unreachable = ""
    for name, sends in TRANSPORTS:
        if unreachable:
            result.rows.append(MatrixRow(name, sends, skipped=unreachable, require_echo=p.require_subprotocol_echo))
            continue
        row = await _try(run, info.token, name, sends)
        result.rows.append(row)
        if row.error in UNREACHABLE:
            unreachable = row.error_text
    # The echo endpoint counts only where it answered with the headers it received: one that answers 404 (or
    # garbage) tells no more than none, and the conclusion keeps its caveat and says why.
    echoed = any(r.echo is not None and r.echo.compared for r in result.rows)
    result.conclusion, result.ok = conclude(result.rows, echo=echoed, host=urlsplit(run.base_url).netloc)
    broken = next((r.echo for r in result.rows if r.echo is not None and not r.echo.compared), None)
    if p.echo_headers_path and not echoed and broken is not None and not result.ok and any(
            r.answered for r in result.rows):
        why = broken.error or (f"HTTP {broken.status}" if broken.status else "no header list")
        result.conclusion += f" (the echo endpoint {p.echo_headers_path} answered {why}, so what reaches the " \
                             "backend could not be seen)"
    return result


async def _try(run: RunContext, token: str, name: str, sends: tuple[str, ...]) -> MatrixRow:
    """One connection within the target's timeouts (upgrade, ready frame, close), then the echo endpoint."""
    p, limits = run.target.protocol, run.target.timeouts
    url, headers, subprotocols = credentials(run, token, sends)
    row = MatrixRow(name, sends, url=run.redactor.text(url), require_echo=p.require_subprotocol_echo)
    start = time.monotonic()
    try:
        run.check_host(url)
        ws = await open_connection(url, subprotocols=subprotocols, headers=headers, open_timeout=limits.connect,
                                   close_timeout=limits.close, max_size=p.max_frame_bytes,
                                   verify_tls=run.target.verify_tls)
    except InvalidStatus as exc:
        r = exc.response
        row.status, row.reason = r.status_code, r.reason_phrase
        row.body = run.redactor.text(bytes(r.body or b"")[:BODY_KEEP].decode("utf-8", "replace"))
    except HostNotAllowed as exc:
        row.error, row.error_text = "host", str(exc)
    except InvalidURI as exc:
        row.error, row.error_text = "url", f"invalid WebSocket URL: {exc}"
    except InvalidHandshake as exc:
        dropped = any(isinstance(c, (EOFError, ConnectionError)) for c in causes(exc))
        row.error = "dropped" if dropped else "handshake"
        row.error_text = ("closed before any HTTP answer to the upgrade" if dropped
                          else f"invalid handshake: {run.redactor.text(str(exc))}")
    except TimeoutError:
        row.error, row.error_text = "timeout", f"no 101 within {limits.connect:g} s"
    except OSError as exc:
        row.error, row.error_text = os_error(exc)
    else:
        row.status, row.upgrade_ms = 101, ms_since(start)
        if subprotocols[:1] and "subprotocol" in sends:
            row.subprotocol_echoed = ws.subprotocol is not None
        session = Session(ws, row.url, probe_id="matrix", clock_t0=run.clock.start, clock=run.clock,
                          redact=run.redactor.text, redact_bytes=run.redactor.bytes_, emit=_drop, take_frame=_drop,
                          awaited_types=(p.ready_type,), type_field=p.type_field)
        await _await_ready(session, row, p.ready_type, limits.ready)
        await session.close(limits.close)
    if p.echo_headers_path:
        row.echo = await _echo(run, p.echo_headers_path, token, sends, headers, subprotocols)
    return row


async def _await_ready(session: Session, row: MatrixRow, ready_type: str, limit: float) -> None:
    try:
        async with asyncio.timeout(limit):
            while True:
                t, _value, frame = await session.next()
                if t == ready_type:
                    row.ready, row.ready_ms = True, round(frame.ms, 1)
                    return
    except TimeoutError:
        row.ready_wait_s = limit
    except SessionEnded as ended:
        c = ended.close
        row.close_code, row.close_reason, row.close_by = c.code, c.reason, c.by
        row.close_after_ms = round(c.after_ms, 1)


async def _echo(run: RunContext, path: str, token: str, sends: tuple[str, ...], headers: dict[str, str],
                subprotocols: list[str]) -> EchoSeen:
    """Ask the echo endpoint with the row's own credentials what reached the backend (within timeouts.http)."""
    p = run.target.protocol
    sent = dict(headers)
    if subprotocols:
        sent["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
    url = run.base_url + path
    if "query" in sends:
        url += ("&" if "?" in url else "?") + urlencode({p.query_param: token})
    limit = run.target.timeouts.http
    assert run.http is not None
    try:
        run.check_host(url)
        resp = await bounded_request(run.http, "GET", url, limit, headers=sent)
    except httpx.HTTPError as exc:
        return EchoSeen(path, error=http_error(exc, limit)[1])
    except (HostNotAllowed, BodyTooLarge) as exc:
        return EchoSeen(path, error=str(exc))
    value = parse_json(resp.text)
    seen = echoed_headers(value)
    if resp.status_code != 200 or seen is None:
        return EchoSeen(path, status=resp.status_code)
    shown = run.redactor.headers([(k, str(v)) for k, v in seen.items() if v is not None])
    query = value.get("query") if isinstance(value, dict) else None
    return EchoSeen(path, status=resp.status_code, compared=True, authorization=shown.get("authorization"),
                    subprotocol=shown.get("sec-websocket-protocol"),
                    query=bool(query.get(p.query_param)) if isinstance(query, dict) else None)


# --- the conclusion -----------------------------------------------------------------------------------------------

def _reaches(mechanism: str, rows: list[MatrixRow]) -> bool | None:
    """Whether the token carried this way reaches the backend: the echo endpoint's word (any row that sent it),
    else the row that sent it alone working; None when nothing tells."""
    said = [a for r in rows if mechanism in r.sends and r.echo is not None
            for a in [r.echo.arrived(mechanism)] if a is not None]
    if said:
        return any(said)
    alone = next((r for r in rows if r.sends == (mechanism,)), None)
    return True if alone is not None and alone.works else None


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _answers(rows: list[MatrixRow]) -> str:
    """The distinct outcomes of `rows`, e.g. 'HTTP 401' or 'HTTP 401 / close 1008 'invalid token''."""
    return " / ".join(dict.fromkeys(r.answer() for r in rows))


def conclude(rows: list[MatrixRow], *, echo: bool, host: str = "") -> tuple[str, bool]:
    """One sentence from the rows' evidence, and whether everything is as it should be."""
    tokened = [r for r in rows if r.sends]
    bare = next((r for r in rows if not r.sends), None)
    if not tokened:
        return "no transport was tried", False
    if not any(r.answered for r in rows):
        why = next((r.error_text for r in rows if r.error), "no answer")
        return f"nothing answers the upgrade at {host or 'the target'} ({why}): no transport could be tried", False
    open_door = bare is not None and bare.ready
    also = "; a connection without a token is accepted too (connection_established without credentials)" \
        if open_door else ""
    reach = {m: _reaches(m, rows) for m in MECHANISMS}
    stripped = [m for m in ("header", "subprotocol") if reach[m] is False]
    if stripped:
        said = f"{WORDS[stripped[0]]} does not reach the backend"
        if len(stripped) == 2:
            said += f" and neither does {WORDS[stripped[1]]}"
        alone = {r.sends[0]: r for r in tokened if len(r.sends) == 1}
        passing = [m for m in MECHANISMS if reach[m] and m in alone and alone[m].works]
        named = [m for m in passing if m != "query"] or passing  # the other header first: the usual alternative
        cause = "a proxy strips it" if len(stripped) == 1 else "a proxy strips both headers"
        if named:
            said += f"; {_join([WORDS[m] for m in named])} {'does' if len(named) == 1 else 'do'}: {cause}"
        else:
            said += f": {cause}, and no other transport works ({_answers(tokened)})"
        return said + also, False
    failing = [r for r in tokened if not r.works]
    if not failing:
        names = _join([SHORT[r.transport] for r in tokened])
        if bare is None:
            return f"every transport works ({names})", True
        if open_door:
            return f"every transport works ({names}), but the backend also accepts a connection without a token " \
                   "(connection_established without credentials)", False
        refused = f"without a token the backend refuses the connection ({bare.answer()})" if bare.answered else \
            f"without a token: {bare.answer()}"
        return f"every transport works ({names}); {refused}", True
    if len(failing) == len(tokened):
        answers = _answers(failing)
        alike = " alike" if " / " not in answers else ""
        if all(r.refusal for r in failing):
            if any(reach[m] for m in ("header", "subprotocol", "query")):
                return f"the token reaches the backend and is refused ({answers} for every transport): the " \
                       "token, not the transport" + also, False
            return f"every transport is refused{alike} ({answers}): most likely the token, not the transport" + (
                "" if echo else " (set protocol.echo_headers_path to see what reaches the backend)") + also, False
        return f"every transport fails{alike} ({answers}): the failure does not depend on how the token travels " \
               "— run the golden path to see which stage breaks" + also, False
    works = [WORDS[r.transport] for r in tokened if r.works]
    solo_failing = {m for r in failing if len(r.sends) == 1 for m in r.sends}
    parts = []
    for r in failing:
        if len(r.sends) > 1 and solo_failing & set(r.sends):
            continue  # explained by the transport that fails alone
        text = f"{WORDS[r.transport]} does not ({r.answer()})"
        mechanism = r.sends[0] if len(r.sends) == 1 else None
        if r.echo_refused:
            text += ": browsers refuse a 101 that does not echo the subprotocol they offered"
        elif mechanism and reach[mechanism]:
            text += ": it reaches the backend, which does not accept it"
        elif mechanism and not echo:
            text += ": stripped on the way or not accepted (set protocol.echo_headers_path to tell which)"
        parts.append(text)
    return f"{_join(works)} {'works' if len(works) == 1 else 'work'}; {'; '.join(parts)}" + also, False


# --- cells ----------------------------------------------------------------------------------------------------------

def _status_cell(r: MatrixRow) -> str:
    if r.skipped:
        return "—"
    if r.status is None:
        return r.error or "—"
    return str(r.status) if r.status == 101 else one_line(f"{r.status} {r.reason}".strip())


def _close_cell(r: MatrixRow) -> str:
    if r.close_code is None:
        return "—"
    said = f" '{r.close_reason}'" if r.close_reason else ""
    return one_line(f"{label(r.close_code)}{said}")


def _ready_cell(r: MatrixRow) -> str:
    return f"yes, {_ms(r.ready_ms)}" if r.ready else "no"


def _ms(value: float | None) -> str:
    value = value or 0.0
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _echo_cell(r: MatrixRow, path: str | None) -> str:
    if r.skipped:
        return "—"
    if not path:
        return "(no echo endpoint)"
    e = r.echo
    if e is None:
        return "—"
    if not e.compared:
        return one_line(e.error or f"echo answered HTTP {e.status}")

    said = []
    for name, mechanism in (("Authorization", "header"), ("Sec-WebSocket-Protocol", "subprotocol"),
                            ("query", "query")):
        arrived, sent = e.arrived(mechanism), mechanism in r.sends
        if arrived:
            said.append(f"{name} present" + ("" if sent else " (not sent by us)"))
        elif sent:
            said.append(f"{name} absent (stripped)" if arrived is False else f"{name} not reported")
    return ", ".join(said) or "no credentials"


def _detail_cell(r: MatrixRow) -> str:
    if r.skipped:
        text = f"not tried: {r.skipped}"
    elif r.error:
        text = r.error_text
    elif r.status != 101:
        text = r.body
    elif r.close_code is not None:
        text = f"{r.close_by} closed {r.close_after_ms or 0:.0f} ms after accept"
    elif r.echo_refused:
        text = "subprotocol not echoed: browsers refuse this handshake"
    elif not r.ready:
        text = r.answer()
    else:
        text = f"101 in {_ms(r.upgrade_ms)}" + (" · subprotocol echoed" if r.subprotocol_echoed else "")
    text = one_line(text)
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 1] + "…"


def _md(text: str) -> str:
    return one_line(text).replace("|", "\\|").replace("`", "'")
