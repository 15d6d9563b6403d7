"""The engine side of a pytest run: the plugin's messages (probes/pytest_plugin.py) turned into the same events a
probe publishes, so every pane, report and recording shows a test as it shows a probe.

One probe per test (id from `pytest_items.probe_id`, name = the node id, priority from the plugin). Its stages,
in the order they start:

- `setup`, `call`, `teardown` (step `pytest`): started when pytest starts the phase (a test still running shows
  its phase running with its clock), finished with pytest's outcome and `PytestEvidence` (crash line, failure text);
- per WebSocket connection the test opens, `connect` (step `connect`, a real `ConnectEvidence`: status, headers,
  offered/echoed subprotocol) and `handshake` (step `expect`, a real `ExpectEvidence`: the first frame must be the
  protocol's ready frame; a close or the test's failure before it fails the stage); the n-th connection's are
  `connect-n` and `handshake-n`. Frames, WsOpened and Closed are published as a session publishes them.

The probe's status is pytest's (pass, fail, error for setup/teardown, skip for skips and xfails). A failing test is
diagnosed like a probe, by `probes.diagnosis.diagnose`, over its stages in causal order (the connection stages of a
phase before the phase itself), so a test that dies on "1000 main cleanup" right after the upgrade is
`closed-before-ready`, a 403 at the upgrade `auth-rejected`. That first failing stage is the `failed_stage`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .bus import EventBus
from .clock import Clock
from .closecodes import describe
from .config import ResolvedTarget
from .diagnosis import diagnose
from .events import (Closed, Diagnosed, Direction, Event, Frame, HttpExchange, Notice, ProbeFinished, ProbeStarted,
                     Queued, RunStarted, StageFinished, StageStarted, Status, WsOpened)
from .evidence import StepEvidence
from .frames import frame_type, parse_json
from .messages import error_text
from .model import ProbeModel
from .pytest_items import PHASES, STEP, PytestEvidence, probe_id
from .redact import Redactor
from .session import ended_detail
from .steps.connect import ConnectEvidence
from .steps.expect import ExpectEvidence

OUTCOME_STATUS: dict[str, Status] = {"passed": "pass", "xpassed": "pass", "skipped": "skip", "xfailed": "skip",
                                     "error": "error"}  # any other outcome: fail in call, error in setup/teardown
ERROR_WORDS = (("ConnectionRefusedError", "refused"), ("Connect call failed", "refused"), ("gaierror", "dns"),
               ("Name or service not known", "dns"), ("ConnectionResetError", "reset"), ("SSLCertVerification", "tls"),
               ("SSLError", "tls"))


@dataclass
class _Conn:
    n: int
    connect: str  # its stage names
    handshake: str
    started_ms: float = 0.0
    answered: bool = False
    awaiting_ready: bool = False  # open, the first frame not seen yet
    url: str = ""


@dataclass
class _Test:
    pid: str
    nodeid: str
    priority: int
    model: ProbeModel
    phase: str = ""
    opened_in: dict[str, list[str]] = field(default_factory=dict)  # phase -> connection stages started in it
    conns: dict[int, _Conn] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)  # phase -> status
    duration_ms: float = 0.0
    finished: bool = False


class SuiteFold:
    """Feed it the plugin's messages in arrival order (`handle`); `end` closes the run. Publishes RunStarted once
    the first collection arrives (every test then shows queued), and holds what came before it until then."""

    def __init__(self, bus: EventBus, clock: Clock, target: ResolvedTarget, base_url: str, redactor: Redactor, *,
                 default_priority: int = 2, embedded: bool = False) -> None:
        self.bus, self.clock, self.target, self.base_url, self.redactor = bus, clock, target, base_url, redactor
        self.protocol = target.protocol
        self.default_priority = default_priority
        self.started = False
        self.held: list[dict[str, Any]] = []
        self.fault = "none"  # the sandbox's fault, for RunStarted (set by the runner)
        self.embedded = embedded  # one entry of a queue shared with probes: its tests join the run (Queued)
        self.collected: dict[str, tuple[str, int]] = {}  # nodeid -> (probe id, priority), in run order
        self.waiting: dict[str, tuple[str, int]] = {}  # tests of later priority bands (embedded), in run order
        self.announced: set[str] = set()  # node ids the queue already shows
        self.tests: dict[str, _Test] = {}
        self.collect_errors: set[str] = set()
        self.results: list[ProbeFinished] = []
        self.exitstatus: int | None = None
        self.dropped = 0
        self.failed = False
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "collected": self._collected, "collect_error": self._collect_error, "start": self._start,
            "phase": self._phase, "report": self._report, "finish": self._finish, "done": self._done,
            "ws_connect": self._ws_connect, "ws_response": self._ws_response, "ws_failed": self._ws_failed,
            "ws_frame": self._ws_frame, "ws_close": self._ws_close, "http": self._http}

    # --- dispatch -----------------------------------------------------------------------------------------------
    def handle(self, msg: dict[str, Any]) -> None:
        handler = self._handlers.get(str(msg.get("type")))
        if handler is None:
            return
        if not self.started and msg.get("type") not in ("collected", "done"):
            if len(self.held) < 10_000:
                self.held.append(msg)
            return
        try:
            handler(msg)
        except (KeyError, TypeError, ValueError, AttributeError):  # a malformed message is dropped, not fatal
            pass

    def begin(self) -> None:
        """RunStarted with the tests collected so far (embedded: Queued, for them and the later bands' tests); then
        what was held back."""
        if self.started:
            return
        self.started = True
        if self.embedded:
            self._announce()
        else:
            self.announced.update(self.collected)
            self.bus.publish(RunStarted(self.clock(), self.target.name, self.base_url,
                                        tuple((pid, nodeid, p) for nodeid, (pid, p) in self.collected.items()),
                                        self.clock.wall, self.fault))
        held, self.held = self.held, []
        for msg in held:
            self.handle(msg)

    def _announce(self) -> None:
        new = [(nodeid, pid, p) for nodeid, (pid, p) in (*self.collected.items(), *self.waiting.items())
               if nodeid not in self.announced and nodeid not in self.tests]
        if new:
            self.announced.update(nodeid for nodeid, _, _ in new)
            self.bus.publish(Queued(self.clock(), tuple((pid, nodeid, p) for nodeid, pid, p in new)))

    def band_started(self) -> None:
        """Another pytest run of this suite (the next priority band) starts: its messages are not held."""
        self.exitstatus = None

    def _emit(self, test: _Test, event: Event | Frame) -> None:
        test.model.apply(event)
        self.bus.publish(event)  # type: ignore[arg-type]

    def _test(self, msg: dict[str, Any]) -> _Test | None:
        test = self.tests.get(str(msg.get("nodeid")))
        return None if test is None or test.finished else test

    # --- collection and the test's life ------------------------------------------------------------------------
    def _collected(self, msg: dict[str, Any]) -> None:
        for item in msg.get("items") or []:
            nodeid = str(item["nodeid"])
            if nodeid not in self.collected:  # every xdist worker collects the same suite
                self.collected[nodeid] = (probe_id(nodeid), int(item.get("priority", self.default_priority)))
            self.waiting.pop(nodeid, None)
        for item in msg.get("later") or []:
            nodeid = str(item["nodeid"])
            if nodeid not in self.collected and nodeid not in self.tests:
                self.waiting[nodeid] = (probe_id(nodeid), int(item.get("priority", self.default_priority)))
        if self.started and self.embedded:
            self._announce()
        self.begin()

    def _collect_error(self, msg: dict[str, Any]) -> None:
        nodeid = str(msg.get("nodeid") or "(collection)")
        if nodeid in self.collect_errors:
            return
        self.collect_errors.add(nodeid)
        longrepr = self.redactor.text(str(msg.get("longrepr", "")))
        test = self._new(nodeid, self.default_priority, ("collect",))
        last = next((line.strip() for line in reversed(longrepr.splitlines()) if line.strip()), "collection error")
        self._emit(test, StageStarted(self.clock(), test.pid, "collect", STEP))
        self._emit(test, StageFinished(self.clock(), test.pid, "collect", "error", 0.0, last[:300], PytestEvidence(
            nodeid=nodeid, when="collect", outcome="error", crash=last[:300], longrepr=longrepr)))
        self._end_test(test, "error", "collect")

    def _new(self, nodeid: str, priority: int, stages: tuple[str, ...] = ()) -> _Test:
        pid = self.collected.get(nodeid, (probe_id(nodeid), priority))[0]
        test = self.tests[nodeid] = _Test(pid, nodeid, priority, ProbeModel(pid))
        self._emit(test, ProbeStarted(self.clock(), pid, nodeid, priority, stages))
        return test

    def _start(self, msg: dict[str, Any]) -> None:
        nodeid = str(msg["nodeid"])
        self._new(nodeid, self.collected.get(nodeid, ("", self.default_priority))[1])

    def _phase(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is not None:
            test.phase = str(msg["when"])
            self._emit(test, StageStarted(self.clock(), test.pid, test.phase, STEP))

    def _report(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is None:
            return
        when, outcome = str(msg["when"]), str(msg.get("outcome", ""))
        status = OUTCOME_STATUS.get(outcome, "fail" if when == "call" else "error")
        crash = self.redactor.text(str(msg.get("crash", "")))
        longrepr = self.redactor.text(str(msg.get("longrepr", "")))
        reason = self.redactor.text(str(msg.get("reason", "")))
        if status in ("fail", "error"):
            detail = crash or next((ln.strip() for ln in reversed(longrepr.splitlines()) if ln.strip()), outcome)
            self._unanswered(test, failed=True)
        elif outcome in ("skipped", "xfailed"):
            detail = f"{outcome}: {reason}" if reason else outcome
        else:
            detail = f"XPASS: {reason}" if outcome == "xpassed" else outcome
        if test.model.stages.get(when) is None:
            self._emit(test, StageStarted(self.clock(), test.pid, when, STEP))
        duration = float(msg.get("duration_ms", 0.0))
        test.duration_ms += duration
        test.outcomes[when] = status
        error = next((word for text, word in ERROR_WORDS if text in crash or text in longrepr[-400:]), "")
        self._emit(test, StageFinished(self.clock(), test.pid, when, status, duration, detail[:500], PytestEvidence(
            nodeid=test.nodeid, when=when, outcome=outcome, crash=crash, longrepr=longrepr, reason=reason,
            error=error)))

    def _finish(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is None:
            return
        self._unanswered(test, failed=False)
        self.dropped += int(msg.get("dropped", 0))
        o = test.outcomes
        status: Status = "pass"
        if o.get("setup") in ("fail", "error"):
            status = "error"
        elif o.get("call") == "fail":
            status = "fail"
        elif o.get("teardown") in ("fail", "error") or o.get("call") == "error":
            status = "error"
        elif "skip" in (o.get("setup"), o.get("call")):
            status = "skip"
        self._end_test(test, status, None, int(msg.get("frames_in", test.model.frames_in)),
                       int(msg.get("frames_out", test.model.frames_out)))

    def _end_test(self, test: _Test, status: Status, failed_stage: str | None, frames_in: int | None = None,
                  frames_out: int | None = None, *, diagnosed: bool = True) -> None:
        test.finished = True
        if status in ("fail", "error"):
            self.failed = True
            view = self.causal(test)
            first = view.failed
            failed_stage = failed_stage or (first.name if first else None)
            if diagnosed and failed_stage != "collect":
                found = diagnose(view, protocol=self.protocol, timeouts=self.target.timeouts)
                if found:
                    self._emit(test, Diagnosed(self.clock(), test.pid, tuple(d.as_dict() for d in found)))
        m = test.model
        finished = ProbeFinished(self.clock(), test.pid, status, round(test.duration_ms, 1), failed_stage,
                                 m.frames_in if frames_in is None else frames_in,
                                 m.frames_out if frames_out is None else frames_out)
        self._emit(test, finished)
        self.results.append(finished)

    def causal(self, test: _Test) -> ProbeModel:
        """The test's model with its stages in causal order: each phase's connection stages before the phase."""
        stages = test.model.stages
        order: list[str] = []
        for phase in PHASES:
            order += test.opened_in.get(phase, [])
            if phase in stages:
                order.append(phase)
        order += [name for name in stages if name not in order]
        return replace(test.model, stages={name: stages[name] for name in order if name in stages})

    def _unanswered(self, test: _Test, *, failed: bool) -> None:
        """Connection stages still waiting when a phase fails (the test gave up on them: fail, with a timeout) or
        when the test ends (skip: the test never waited for them)."""
        for conn in test.conns.values():
            if not conn.answered:
                conn.answered = True
                ev = ConnectEvidence(url=conn.url, timeout=failed, error="timeout" if failed else "")
                self._emit(test, StageFinished(self.clock(), test.pid, conn.connect, "fail" if failed else "skip",
                                               0.0, "no answer to the upgrade before the test " +
                                               ("failed" if failed else "ended"), ev))
            if conn.awaiting_ready:
                conn.awaiting_ready = False
                ready = self.protocol.ready_type
                ev2 = ExpectEvidence(timeout=failed, error="timeout" if failed else "")
                self._emit(test, StageFinished(self.clock(), test.pid, conn.handshake, "fail" if failed else "skip",
                                               0.0, f"no {ready} before the test " + ("failed" if failed else "ended"),
                                               ev2))

    def _done(self, msg: dict[str, Any]) -> None:
        if msg.get("worker") is None:
            self.exitstatus = int(msg.get("exitstatus", 0))

    # --- the wire -----------------------------------------------------------------------------------------------
    def _conn(self, test: _Test, msg: dict[str, Any]) -> _Conn | None:
        return test.conns.get(int(msg["conn"]))

    def _ws_connect(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is None:
            return
        n = int(msg.get("n", len(test.conns) + 1))
        suffix = "" if n == 1 else f"-{n}"
        conn = test.conns[int(msg["conn"])] = _Conn(n, f"connect{suffix}", f"handshake{suffix}")
        test.opened_in.setdefault(test.phase, []).append(conn.connect)
        self._emit(test, StageStarted(self.clock(), test.pid, conn.connect, "connect"))

    def _ws_response(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        conn = self._conn(test, msg) if test else None
        if test is None or conn is None or conn.answered:
            return
        conn.answered = True
        r = self.redactor
        status = int(msg["status"])
        offered, echoed = _opt(r, msg.get("offered")), _opt(r, msg.get("echoed"))
        conn.url = r.text(str(msg.get("url", "")))
        response_headers = _str_map(r, msg.get("response_headers"))  # the plugin hid credential headers already
        ev = ConnectEvidence(url=conn.url, token_sent=bool(msg.get("token_sent")),
                             transport=[str(t) for t in msg.get("transport") or []], subprotocol_offered=offered,
                             subprotocol_echoed=echoed, http_status=status, response_headers=response_headers,
                             date=_opt(r, msg.get("date")), location=_opt(r, msg.get("location")))
        ms = float(msg.get("ms", 0.0))
        verdict: Status = "pass"
        if status in (401, 403) and not ev.token_sent:  # what the protocol requires of a connection without one
            detail = f"refused with HTTP {status} {r.text(str(msg.get('reason', '')))}: no token was sent"
        elif status != 101:
            verdict = "fail"
            detail = f"HTTP {status} {r.text(str(msg.get('reason', '')))} instead of 101 Switching Protocols"
            if 300 <= status < 400:
                detail += f" → {ev.location or '(no Location)'}"
        else:
            detail = f"101 in {ms:.0f} ms"
            if offered and not echoed:
                ev.subprotocol_not_echoed = True
                if self.protocol.require_subprotocol_echo:
                    verdict = "fail"
                    detail = ("101 but the server did not echo the offered subprotocol: browsers refuse this "
                              "handshake (Python clients accept it)")
                else:
                    detail += " · subprotocol NOT echoed (browsers would refuse)"
            elif offered:
                detail += " · subprotocol echoed"
        self._emit(test, StageFinished(self.clock(), test.pid, conn.connect, verdict, ms, detail, ev))
        if status == 101:
            self._emit(test, WsOpened(self.clock(), test.pid, conn.url, offered, echoed,
                                      _str_map(r, msg.get("request_headers")), response_headers))
            conn.awaiting_ready = True
            test.opened_in.setdefault(test.phase, []).append(conn.handshake)
            self._emit(test, StageStarted(self.clock(), test.pid, conn.handshake, "expect"))

    def _ws_failed(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        conn = self._conn(test, msg) if test else None
        if test is None or conn is None or conn.answered:
            return
        conn.answered = True
        ev = ConnectEvidence(url=conn.url, error="dropped",
                             handshake_error="connection closed before any HTTP answer to the upgrade")
        self._emit(test, StageFinished(self.clock(), test.pid, conn.connect, "fail", float(msg.get("ms", 0.0)),
                                       "the connection was closed before any HTTP answer to the upgrade", ev))

    def _ws_frame(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is None:
            return
        conn = self._conn(test, msg)  # None: a connection an earlier test opened (a shared fixture)
        data: str | bytes
        if "text" in msg:
            data = self.redactor.text(str(msg["text"]))
        else:
            try:
                data = self.redactor.bytes_(base64.b64decode(str(msg.get("b64", ""))))
            except (binascii.Error, ValueError):
                return
        direction: Direction = "in" if msg.get("dir") == "in" else "out"
        ms = float(msg.get("ms", 0.0))
        self._emit(test, Frame(self.clock(), test.pid, direction, ms, int(msg.get("size", len(data))), data,
                               bool(msg.get("truncated"))))
        if direction == "in" and conn is not None and conn.awaiting_ready:
            conn.awaiting_ready = False
            self._first_frame(test, conn, data, ms)

    def _first_frame(self, test: _Test, conn: _Conn, data: str | bytes, ms: float) -> None:
        """The handshake stage, as `expect` judges the ready frame: it must come first."""
        p = self.protocol
        value = parse_json(data) if isinstance(data, str) else None
        t = frame_type(value, p.type_field)
        status: Status = "fail"
        ev: StepEvidence
        if t == p.ready_type:
            status, detail = "pass", f"{t} after {ms:.0f} ms"
            ev = ExpectEvidence(frame_type=t, ms_since_accept=round(ms, 1))
        elif t in p.error_types:
            said = error_text(value)
            detail, ev = f"error frame instead of {p.ready_type}: {said}", ExpectEvidence(error_frame=said,
                                                                                           frame_type=t)
        else:
            shown = t or ("binary" if isinstance(data, bytes) else "non-JSON text")
            detail = f"first frame was {shown}, expected {p.ready_type}"
            ev = ExpectEvidence(frame_type=shown, wrong_type=True)
        self._emit(test, StageFinished(self.clock(), test.pid, conn.handshake, status, ms, detail, ev))

    def _ws_close(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is None:
            return
        conn = self._conn(test, msg)
        code = int(msg["code"])
        said = msg.get("by")
        by: Literal["server", "client", "none"] = "server" if said == "server" else (
            "client" if said == "client" else "none")
        info = describe(code)
        closed = Closed(self.clock(), test.pid, code, info.name, self.redactor.text(str(msg.get("reason", ""))),
                        by, float(msg.get("after_ms", 0.0)),
                        info.on_wire and (bool(msg.get("received")) or by == "client"))
        self._emit(test, closed)
        if conn is not None and conn.awaiting_ready:
            conn.awaiting_ready = False
            self._emit(test, StageFinished(self.clock(), test.pid, conn.handshake, "fail", closed.after_ms,
                                           ended_detail(closed, self.protocol.ready_type),
                                           ExpectEvidence(closed=True)))

    def _http(self, msg: dict[str, Any]) -> None:
        test = self._test(msg)
        if test is None:
            return
        self._emit(test, HttpExchange(self.clock(), test.pid, str(msg.get("phase") or test.phase), str(msg["method"]),
                                      self.redactor.text(str(msg["url"])), int(msg["status"]), {}, "", 0.0))

    # --- the end ------------------------------------------------------------------------------------------------
    def end(self, why_not_run: str, *, interrupted: bool = False) -> None:
        """Close the run's tests: one still running ends as an error, one never started as skipped (`why_not_run`);
        RunStarted goes out first if nothing was collected."""
        self.begin()
        for test in list(self.tests.values()):
            if test.finished:
                continue
            for stage in test.model.stages.values():
                if stage.status == "running":
                    took = 0.0 if stage.started_t is None else max(0.0, (self.clock() - stage.started_t) * 1000.0)
                    self._emit(test, StageFinished(self.clock(), test.pid, stage.name, "error", round(took, 1),
                                                   "interrupted" if interrupted else "pytest ended during this stage"))
            self._end_test(test, "error", None, diagnosed=not interrupted)  # an interrupt explains itself
        self._not_run(self.collected, why_not_run)
        if self.dropped:
            self.bus.publish(Notice(self.clock(), "info", f"{self.dropped} frames counted but not shown (over the "
                                    "config's pytest.max_frames per test)"))
            self.dropped = 0

    def end_waiting(self, why_not_run: str) -> None:
        """The queue ends before the later bands ran (fail-fast, an interrupt, the target unreachable): their tests
        are reported as not run."""
        self._not_run(self.waiting, why_not_run)
        self.waiting.clear()

    def _not_run(self, tests: dict[str, tuple[str, int]], why: str) -> None:
        for nodeid, (pid, priority) in list(tests.items()):
            if nodeid in self.tests:
                continue
            test = self._new(nodeid, priority, ("call",))
            self._emit(test, StageStarted(self.clock(), pid, "call", STEP))
            self._emit(test, StageFinished(self.clock(), pid, "call", "skip", 0.0, why,
                                           PytestEvidence(nodeid=nodeid, when="call", outcome="not run")))
            self._end_test(test, "skip", None)

    def notice(self, level: str, message: str) -> None:
        self.bus.publish(Notice(self.clock(), level, self.redactor.text(message)))  # type: ignore[arg-type]


def _opt(redactor: Redactor, value: Any) -> str | None:
    return redactor.text(str(value)) if value else None


def _str_map(redactor: Redactor, value: Any) -> dict[str, str]:
    """Headers as the plugin sent them (credentials already shown as `Bearer eyJhbGciOi…` + 4), redacted again as
    text with the secrets the engine knows (the sandbox's key)."""
    if not isinstance(value, dict):
        return {}
    return {redactor.text(str(k)): redactor.text(str(v)) for k, v in value.items()}
