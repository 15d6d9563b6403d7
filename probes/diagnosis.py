"""Diagnosis: name the most likely cause of a probe's failure, with the evidence that supports it.

Rules are a table, most specific first. Each rule is a small pure function over `Facts` (what the probe saw,
computed once) that returns the evidence lines when it matches, or None. Every matching rule is reported, in
table order, so the first diagnosis is the best explanation. A failure that no rule explains is reported as
`unknown` with the raw evidence: we say "unknown" rather than guess. Codes are stable: reports and CI use them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .closecodes import close_sentence
from .config import Protocol, Timeouts
from .events import Closed
from .evidence import EchoCheck, StepEvidence
from .frames import classify
from . import holdrules
from .holdfold import HoldFold
from .holdrules import PROXY_TIMERS_S
from .hops import is_proxy
from .model import ProbeModel, StageModel
from .net import server_date_skew
from .steps.auth import AuthEvidence
from .steps.connect import ConnectEvidence
from .steps.expect import ExpectEvidence
from .steps.expect_events import EventsEvidence
from .steps.http import HttpEvidence

E = TypeVar("E", bound=StepEvidence)

AUTH_CLOSE_CODES = frozenset({1008, 4001, 4003, 4401, 4403})
# Close codes whose own rule explains them (restart, too big, server error, not ready, protocol errors).
SPECIFIC_CLOSE_CODES = frozenset({1001, 1002, 1003, 1007, 1009, 1010, 1011, 1012, 1013})
SKEW_LIMIT_S = 60.0
# How servers word "I got no credential" (as opposed to "your credential is bad").
MISSING_CREDENTIAL_RE = re.compile(
    r"\b(missing|no|not provided|without|absent|required)\b[^.]{0,30}\b(token|auth\w*|credential\w*|bearer|jwt)\b"
    r"|\b(token|auth\w*|credential\w*|bearer|jwt)\b[^.]{0,20}\b(missing|not provided|required|absent)\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Diagnosis:
    code: str
    summary: str
    evidence: list[str] = field(default_factory=list)
    next_step: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "summary": self.summary, "evidence": list(self.evidence),
                "next_step": self.next_step}


@dataclass
class Facts:
    """What the rules look at: the probe's model and the protocol, with typed views of the failing stage."""

    probe: ProbeModel
    protocol: Protocol
    timeouts: Timeouts
    expected_version: str | None
    now: float

    @property
    def failed(self) -> StageModel | None:
        return self.probe.failed

    @property
    def fe(self) -> StepEvidence | None:
        """The failing stage's evidence."""
        return self.failed.evidence if self.failed else None

    def of(self, cls: type[E]) -> E | None:
        """The failing stage's evidence if it is of this kind."""
        fe = self.fe
        return fe if isinstance(fe, cls) else None

    @property
    def step(self) -> str:
        return self.failed.step if self.failed else ""

    @property
    def failed_line(self) -> str:
        return f"{self.failed.name}: {self.failed.detail}" if self.failed else ""

    @property
    def error(self) -> str:
        return self.fe.error if self.fe is not None else ""

    @property
    def status(self) -> int | None:
        fe = self.fe
        return fe.http_status if isinstance(fe, (HttpEvidence, ConnectEvidence)) else None

    @property
    def url(self) -> str:
        fe = self.fe
        return (fe.url or "?") if isinstance(fe, (HttpEvidence, ConnectEvidence)) else "?"

    @property
    def upgrade_refused(self) -> bool:
        """The failing stage got an HTTP answer other than 101 to the upgrade."""
        return self.step == "connect" and self.status is not None and self.status != 101

    @property
    def close(self) -> Closed | None:
        """The close that ended the session from the far side (server close or a drop), if any."""
        return self.probe.far_close

    @property
    def ready_seen(self) -> bool:
        ready = self.protocol.ready_type
        return any(s.status == "pass" and isinstance(s.evidence, ExpectEvidence) and s.evidence.frame_type == ready
                   for s in self.probe.stages.values())

    @property
    def hop(self) -> dict[str, Any] | None:
        """Who answered the failing stage's request (probes/hops.py), when it was an HTTP answer or an upgrade."""
        fe = self.fe
        return fe.hop if isinstance(fe, (HttpEvidence, ConnectEvidence)) else None

    @property
    def upgrade_hop(self) -> dict[str, Any] | None:
        """Who the upgrade went through (its 101 or its refusal), from the probe's last connect stage."""
        for stage in reversed(self.probe.done_stages):
            if isinstance(stage.evidence, ConnectEvidence) and stage.evidence.hop:
                return stage.evidence.hop
        return None

    @property
    def echo(self) -> EchoCheck | None:
        fe = self.fe
        return fe.echo if isinstance(fe, (ConnectEvidence, ExpectEvidence)) else None

    @property
    def skew_s(self) -> float | None:
        """How far the server's Date header is from our clock, from any handshake answer we saw."""
        for stage in reversed(self.probe.done_stages):
            if isinstance(stage.evidence, ConnectEvidence):
                skew = server_date_skew(stage.evidence.date)
                if skew is not None:
                    return skew
        return None

    @property
    def token(self) -> AuthEvidence | None:
        ev = self.probe.evidence_of("auth")
        return ev if isinstance(ev, AuthEvidence) else None

    @property
    def iat_exp(self) -> tuple[float | None, float | None]:
        token = self.token
        return (token.iat, token.exp) if token is not None else (None, None)

    @property
    def auth_refused(self) -> bool:
        if self.upgrade_refused and self.status in (401, 403):
            return True
        c = self.close
        return c is not None and c.code in AUTH_CLOSE_CODES and self.failed is not None

    def close_line(self, c: Closed) -> str:
        return f"close {close_sentence(c.code, c.reason, c.by, c.after_ms)}"

    def frames_line(self) -> str:
        frames = [f for f in self.probe.last_frames if f.direction == "in"]
        if not frames:
            return "no frame arrived from the server before the close"
        shown = "; ".join(_cut(classify(f.data, self.protocol.type_field).summary, 60) for f in frames[-3:])
        return f"last frames from the server: {shown}"

    def status_line(self) -> str:
        connect = self.of(ConnectEvidence)
        body = (connect.body if connect else "").strip().replace("\n", " ")[:120]
        return f"HTTP {self.status} to the upgrade request" + (f", body: {body}" if body else "")


Rule = Callable[[Facts], list[str] | None]


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    return (head.rsplit(" ", 1)[0] if " " in head[limit // 2:] else head) + "…"


def _version_unknown(f: Facts) -> list[str] | None:
    ev = f.of(HttpEvidence)
    if ev is not None and ev.version_missing:
        body = ev.body.strip().replace("\n", " ")[:120]
        return [f.failed_line, f"health answered: {body or '(empty)'}",
                f"protocol.version_field is '{f.protocol.version_field}'"]
    return None


def _secret_missing(f: Facts) -> list[str] | None:
    ev = f.fe
    if isinstance(ev, (AuthEvidence, ConnectEvidence)) and ev.secret_missing:
        return [f.failed.detail if f.failed else "no credentials"]
    return None


def _upgrade_dropped(f: Facts) -> list[str] | None:
    if f.step == "connect" and f.error == "dropped":
        return [f.failed_line, f"url: {f.url}"]
    return None


def _no_answer(f: Facts) -> list[str] | None:
    if f.step == "http" and f.error == "timeout":
        return [f.failed_line, f"url: {f.url}"]
    if f.step == "connect" and f.fe is not None and f.fe.timeout and f.status is None:
        return [f.failed_line, f"url: {f.url}"]
    return None


def _health_http_error(f: Facts) -> list[str] | None:
    ev = f.of(HttpEvidence)
    if ev is not None and ev.http_status is not None and 300 <= ev.http_status <= 499:
        where = f" to {ev.location}" if ev.location else ""
        kind = "a redirect" + where if ev.http_status < 400 else f"HTTP {ev.http_status}"
        return [f.failed_line, f"the health endpoint answered {kind}"]
    return None


PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1010})


def _protocol_error(f: Facts) -> list[str] | None:
    c = next((c for c in f.probe.closes if c.code in PROTOCOL_CLOSE_CODES), None)
    if c is None or f.failed is None:
        return None
    blame = "the server's frames broke the protocol" if c.by == "client" else "the server says ours did"
    return [f.close_line(c), blame, f.frames_line()]


def _closed_during_run(f: Facts) -> list[str] | None:
    c = f.close
    if c is None or f.failed is None or not f.ready_seen or c.by != "server":
        return None
    if c.code in AUTH_CLOSE_CODES or c.code in SPECIFIC_CLOSE_CODES:
        return None  # those have rules of their own
    return [f.close_line(c), f"during stage {f.failed.name}, after {f.protocol.ready_type}", f.frames_line()]


def _body_too_large(f: Facts) -> list[str] | None:
    if f.step == "http" and f.error in ("bomb", "too-large"):
        return [f.failed_line, f"url: {f.url}"]
    return None


def _dns_or_refused(f: Facts) -> list[str] | None:
    if f.error in ("dns", "refused", "reset"):
        return [f.failed_line, f"url: {f.url}"]
    return None


def _tls_error(f: Facts) -> list[str] | None:
    if f.error == "tls" or (f.failed and "TLS" in f.failed.detail and f.step in ("http", "connect")):
        return [f.failed.detail if f.failed else ""]
    return None


NEXT = "\x00next:"  # an evidence line starting so replaces the row's next step (phrased for the hop that answered)


def _hop_lines(hop: dict[str, Any], key: str) -> list[str]:
    lines = [f"{'answered by' if hop.get('produced') else 'through'} {hop['name']} ({hop['kind']}): {hop['why']}"]
    step = (hop.get("next") or {}).get(key)
    return lines + ([NEXT + step] if step else [])


def _upstream(code: int, key: str) -> Rule:
    def rule(f: Facts) -> list[str] | None:
        hop = f.hop
        if f.status != code or not is_proxy(hop) or f.step not in ("http", "connect"):
            return None
        assert hop is not None
        return [f"{f.failed.name}: HTTP {code}" if f.failed else f"HTTP {code}", *_hop_lines(hop, key),
                "the answer came from the proxy, not from the backend"]
    return rule


def _proxy_strips_auth(f: Facts) -> list[str] | None:
    hop = f.upgrade_hop
    if not is_proxy(hop) or _auth_header_stripped(f) is None:
        return None
    assert hop is not None
    lost = f.echo.lost() if f.echo is not None else []
    said = f"{' and '.join(lost) or 'the credentials'} did not reach the backend; the upgrade went through " \
           f"{hop['name']}"
    return [said, *_hop_lines(hop, "strip")]


def _proxy_idle_cut(f: Facts) -> list[str] | None:
    hop = f.upgrade_hop
    c = f.close
    if not is_proxy(hop) or c is None or c.by != "none" or f.failed is None:
        return None
    assert hop is not None
    idle = hop.get("idle_s")
    seconds = c.after_ms / 1000.0
    if not idle or abs(seconds - float(idle)) > max(1.5, float(idle) * 0.03):
        return None
    return [f.close_line(c), f"{seconds:.1f} s matches {hop.get('idle_words') or hop['name']}",
            *_hop_lines(hop, "idle")]


def _not_ready(f: Facts) -> list[str] | None:
    if f.status in (502, 504) and is_proxy(f.hop):
        return None  # a proxy's 502/504: upstream-unreachable / upstream-timeout say whose
    if f.status in (502, 503, 504) and f.step in ("http", "connect"):
        return [f"{f.failed.name}: HTTP {f.status}" if f.failed else "", "the service answers but is not serving"]
    c = f.close
    if c is not None and c.code == 1013 and f.failed is not None:
        return [f.close_line(c)]
    return None


def _version_mismatch(f: Facts) -> list[str] | None:
    ev = f.of(HttpEvidence)
    if ev is not None and ev.version and ev.expected_version and ev.version != ev.expected_version:
        return [f"health reports build {ev.version}", f"expected build {ev.expected_version}"]
    return None


_TRANSPORT_WORDS = {"header": "Authorization", "subprotocol": "a jwt.* subprotocol", "query": "a token query parameter"}


def _auth_header_stripped(f: Facts) -> list[str] | None:
    echo = f.echo
    if echo is not None and echo.compared:
        lost = echo.lost()
        if lost:
            return [f"we sent {' and '.join(lost)}; {echo.url} shows the backend received "
                    f"{'neither' if len(lost) > 1 else 'nothing of it'}", f.failed_line]
        return None
    # No echo endpoint: the server's own words say the credential is missing, though we sent one.
    connect = f.probe.evidence_of("connect")
    if not f.auth_refused or not isinstance(connect, ConnectEvidence) or not connect.token_sent:
        return None
    said = connect.body if f.upgrade_refused else (f.close.reason if f.close else "")
    if said and MISSING_CREDENTIAL_RE.search(said):
        sent = " and ".join(_TRANSPORT_WORDS.get(t, t) for t in connect.transport)
        return [f"the server says {said.strip()[:100]!r} although we sent {sent or 'a token'}",
                f.status_line() if f.upgrade_refused else (f.close_line(f.close) if f.close else "")]
    return None


def _skew_explains(skew: float, iat: float | None, exp: float | None) -> bool:
    """Whether a server clock `skew` s ahead (negative: behind) makes a token look expired or not yet issued.

    Ahead: the server's now (about iat + skew) passes exp. Behind: iat lies in the server's future by more than
    the usual leeway. Without iat/exp, any skew over the limit is taken as the explanation.
    """
    if iat is None or exp is None:
        return True
    if skew > 0:
        return iat + skew >= exp - SKEW_LIMIT_S
    return -skew >= SKEW_LIMIT_S


def _clock_skew(f: Facts) -> list[str] | None:
    skew = f.skew_s
    auth = f.of(AuthEvidence)
    expired = auth is not None and auth.token_expired
    if skew is None or abs(skew) < SKEW_LIMIT_S or not (f.auth_refused or expired):
        return None
    iat, exp = f.iat_exp
    if not _skew_explains(skew, iat, exp):
        return None  # a skew the token's lifetime absorbs does not explain the refusal
    side = "ahead of" if skew > 0 else "behind"
    lifetime = (f"token valid {_utc(iat)} → {_utc(exp)} ({(exp - iat) / 60:.0f} min)"
                if iat is not None and exp is not None else "token lifetime unknown")
    return [f"the server's Date header is {abs(skew):.0f} s {side} this machine's clock", lifetime,
            f.status_line() if f.upgrade_refused else (f.close_line(f.close) if f.close else "")]


def _utc(epoch: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch))


def _token_expired(f: Facts) -> list[str] | None:
    auth = f.of(AuthEvidence)
    if auth is not None and auth.token_expired:
        return [f.failed.detail if f.failed else "token expired"]
    _, exp = f.iat_exp
    if f.auth_refused and exp is not None and exp < f.now:
        return [f"token exp {exp:.0f} is {f.now - exp:.0f} s in the past", f.status_line()]
    return None


def _subprotocol_illegal(f: Facts) -> list[str] | None:
    ev = f.of(ConnectEvidence)
    if ev is not None and ev.subprotocol_illegal:
        return [f"offered subprotocol {ev.subprotocol_offered}",
                "RFC 6455 §4.1: each subprotocol must be an RFC 7230 token; '=' padding and '/' are not allowed"]
    return None


def _auth_not_enforced(f: Facts) -> list[str] | None:
    ev = f.of(ConnectEvidence)
    if ev is not None and ev.unauthenticated_accept:
        return [f.failed.detail if f.failed else "", "the connection carried no token"]
    return None


def _auth_rejected(f: Facts) -> list[str] | None:
    if f.upgrade_refused and f.status in (401, 403):
        connect = f.of(ConnectEvidence)
        lines = [f.status_line(), f"token sent via {', '.join(connect.transport if connect else []) or 'nothing'}"]
        skew = f.skew_s
        iat, exp = f.iat_exp
        if skew is not None and abs(skew) >= SKEW_LIMIT_S and not _skew_explains(skew, iat, exp):
            lines.append(f"note: the server's clock is {abs(skew):.0f} s {'ahead' if skew > 0 else 'behind'}, "
                         "not enough to put the token outside its lifetime")
        return lines
    c = f.close
    if c is not None and c.code in AUTH_CLOSE_CODES and f.failed is not None:
        return [f.close_line(c), "the server accepted the upgrade, then refused the session"]
    return None


def _upgrade_redirected(f: Facts) -> list[str] | None:
    ev = f.of(ConnectEvidence)
    if ev is not None and f.upgrade_refused and ev.http_status is not None and 300 <= ev.http_status < 400:
        return [f"HTTP {ev.http_status} to the upgrade request, Location: {ev.location or '(none)'}",
                f"url: {f.url}", "not followed: the redirected request would carry the token "
                "(subprotocol and Authorization) to wherever it points"]
    return None


def _no_upgrade(f: Facts) -> list[str] | None:
    hop = f.hop
    if f.upgrade_refused and f.status == 505 and is_proxy(hop):
        assert hop is not None
        return [f.status_line(), f"the backend refused the HTTP version {hop['name']} spoke to it (HTTP/1.0: no "
                "upgrade), although we sent HTTP/1.1: the proxy does not forward the upgrade",
                *_hop_lines(hop, "upgrade")]
    if f.upgrade_refused and f.status is not None and (200 <= f.status < 400 or f.status in (404, 405, 426)):
        return [f.status_line(), f"url: {f.url}", *(_hop_lines(hop, "upgrade") if is_proxy(hop) and hop else [])]
    ev = f.of(ConnectEvidence)
    if ev is not None and ev.handshake_error and ev.error != "dropped":
        return [f"invalid handshake: {ev.handshake_error}"]
    return None


def _subprotocol_not_echoed(f: Facts) -> list[str] | None:
    for stage in f.probe.done_stages:
        ev = stage.evidence
        if isinstance(ev, ConnectEvidence) and ev.subprotocol_not_echoed:
            return ["101 Switching Protocols without Sec-WebSocket-Protocol although we offered "
                    f"{ev.subprotocol_offered or 'a subprotocol'}",
                    "RFC 6455 §4.1: a client that offered subprotocols must fail a handshake that selects none; "
                    "browsers do, Python's websockets does not"]
    return None


def _subprotocol_mismatch(f: Facts) -> list[str] | None:
    ev = f.of(ConnectEvidence)
    if ev is not None and ev.subprotocol_mismatch:
        return [f"we offered {ev.subprotocol_offered or 'a subprotocol'}; the 101 selected {ev.subprotocol_echoed}",
                "RFC 6455 §4.1: the server must select one of the subprotocols the client offered, or none; "
                "a client fails the connection otherwise"]
    return None


def _proxy_timer(f: Facts) -> list[str] | None:
    c = f.close
    if c is None or c.code not in (1006, 1001) or f.failed is None:
        return None
    seconds = c.after_ms / 1000.0
    for limit, who in PROXY_TIMERS_S.items():
        if abs(seconds - limit) <= max(1.5, limit * 0.03):
            return [f.close_line(c), f"{seconds:.1f} s matches {who}"]
    return None


def _server_error(f: Facts) -> list[str] | None:
    if f.status == 505 and is_proxy(f.hop):
        return None  # a proxy speaking HTTP/1.0 to the backend: no-upgrade says so
    if f.status is not None and 500 <= f.status <= 599 and f.status not in (502, 503, 504):
        return [f.status_line() if f.upgrade_refused else (f"{f.failed.name}: HTTP {f.status}" if f.failed else "")]
    c = f.close
    if c is not None and c.code == 1011 and f.failed is not None:
        return [f.close_line(c), f.frames_line()]
    return None


def _restart(f: Facts) -> list[str] | None:
    c = f.close
    if c is not None and c.code in (1001, 1012) and f.failed is not None:
        return [f.close_line(c), f"during stage {f.failed.name}"]
    return None


def _abnormal(f: Facts) -> list[str] | None:
    c = f.close
    if c is not None and c.code == 1006 and f.failed is not None:
        hop = f.upgrade_hop
        if not is_proxy(hop):
            return [f.close_line(c), f.frames_line()]
        assert hop is not None
        timer = f"; its {hop['idle_words']} may be set lower here" if hop.get("idle_words") else ""
        return [f.close_line(c), f.frames_line(), f"the connection went through {hop['name']} ({hop['why']}): "
                f"a drop with no close frame is often its read/idle timer cutting a quiet connection{timer}",
                *[line for line in _hop_lines(hop, "idle") if line.startswith(NEXT)]]
    return None


def _too_big(f: Facts) -> list[str] | None:
    c = next((c for c in f.probe.closes if c.code == 1009), None)
    if c is not None and f.failed is not None:
        return [f.close_line(c), f"our max_size is {f.protocol.max_frame_bytes} bytes"]
    return None


def _closed_before_ready(f: Facts) -> list[str] | None:
    c = f.close
    if c is None or f.failed is None or f.ready_seen or c.by != "server":
        return None
    if c.code in AUTH_CLOSE_CODES or c.code in SPECIFIC_CLOSE_CODES:
        return None  # those have rules of their own
    return [f.close_line(c), f"no {f.protocol.ready_type} frame before the close", f.frames_line()]


def _ready_timeout(f: Facts) -> list[str] | None:
    ev = f.of(ExpectEvidence)
    if ev is not None and ev.timeout and not f.ready_seen:
        return [f.failed.detail if f.failed else "", "the upgrade succeeded but the server stayed silent"]
    return None


def _unexpected_frame(f: Facts) -> list[str] | None:
    ev = f.of(ExpectEvidence)
    if ev is not None and ev.wrong_type:
        return [f.failed.detail if f.failed else "", f.frames_line()]
    return None


def _error_frame(f: Facts) -> list[str] | None:
    ev = f.fe
    if isinstance(ev, (ExpectEvidence, EventsEvidence)) and ev.error_frame:
        return [f"error frame: {ev.error_frame}", f"during stage {f.failed.name}" if f.failed else ""]
    return None


def _agent_timeout(f: Facts) -> list[str] | None:
    ev = f.of(EventsEvidence)
    if ev is not None and ev.timeout:
        got = [e[0] for e in ev.events]
        return [f.failed.detail if f.failed else "",
                f"events received: {', '.join(dict.fromkeys(got)) or 'none'}",
                f"agent timeout {f.timeouts.agent:g} s (the backend's own execution limit is typically 30 s)"]
    return None


def _out_of_order(f: Facts) -> list[str] | None:
    ev = f.of(EventsEvidence)
    if ev is not None and ev.out_of_order:
        return [f"arrival order: {' → '.join(ev.order)}", f"expected order: {' → '.join(f.protocol.agent_events)}"]
    return None


def _missing_events(f: Facts) -> list[str] | None:
    ev = f.of(EventsEvidence)
    if ev is not None and ev.missing_events:
        got = [e[0] for e in ev.events]
        return [f"missing: {', '.join(ev.missing)}", f"received: {', '.join(dict.fromkeys(got))}"]
    return None


def _empty_response(f: Facts) -> list[str] | None:
    ev = f.of(ExpectEvidence)
    if ev is not None and ev.empty_response:
        return [f.failed.detail if f.failed else "", f"looked at: {', '.join(f.protocol.response_paths[:6])}, …"]
    return None


@dataclass(frozen=True)
class RuleRow:
    code: str
    rule: Rule
    summary: str
    next_step: str


def _held(rule: Callable[[HoldFold | None], list[str] | None]) -> Rule:
    return lambda facts: rule(facts.probe.hold)


RULES: tuple[RuleRow, ...] = (
    RuleRow("reconnect-failing", _held(holdrules.reconnect_failing),
            "held sessions could not come back: reconnects were refused after the rollout",
            "check the new build's readiness and the load balancer's targets; the refusals' answers are above"),
    RuleRow("stall", _held(holdrules.stall),
            "pings went unanswered on open sockets: the server stopped answering without closing (a freeze)",
            "look for a blocked event loop or a stuck worker on the backend at that time; a network drop would "
            "have closed the socket"),
    RuleRow("dropped-without-close", _held(holdrules.dropped_without_close),
            "many sessions dropped at one moment with no close frame (1006): a proxy or load balancer reset, or "
            "pods killed without draining",
            "drain WebSockets before stopping pods (preStop hook, terminationGracePeriod) and check the proxy's "
            "reload/reset at that moment"),
    RuleRow("held-server-error", _held(holdrules.server_errors),
            "the server ended held sessions with an error close (1011 and the like): it failed on them",
            "look at the backend's logs at those times for the error behind each close; the reason is above"),
    RuleRow("idle-timeout", _held(holdrules.idle_timeout),
            "sessions ended at a fixed age: a proxy or load balancer timer, not the deploy",
            "raise the proxy's idle/read timeout or send pings more often than it; the age above names the timer"),
    RuleRow("drained-by-deploy", _held(holdrules.drained_by_deploy),
            "the deploy drained the sessions cleanly (1001/1012) and they came back",
            "expected during a rollout; check the reconnect times above and that no agent run was lost"),
    RuleRow("secret-missing", _secret_missing,
            "no token could be made or found: the secret or token environment variable is not set",
            "export the variable the config names (auth.secret_env / auth.token_env), or change auth.mode"),
    RuleRow("dns-or-refused", _dns_or_refused,
            "the host could not be reached: DNS failed or nothing listens on that port",
            "check the URL and port, that the service is deployed, and DNS from this network"),
    RuleRow("tls-error", _tls_error, "the TLS handshake failed (certificate or protocol)",
            "check the certificate chain and hostname; --insecure only to confirm it is TLS"),
    RuleRow("body-too-large", _body_too_large,
            "the HTTP answer was larger than 1 MiB once decoded (a decompression bomb if it inflated from a few KiB)",
            "check what serves this path: a health endpoint answers a few hundred bytes; a bomb is hostile"),
    RuleRow("upgrade-dropped", _upgrade_dropped,
            "the server or a proxy closed the TCP connection without answering the upgrade request",
            "check the proxy/load balancer logs and that the backend process is up and not crashing on connect"),
    RuleRow("no-answer", _no_answer,
            "no (complete) answer in time: the service is hung or overloaded, or a firewall drops the packets",
            "check the service's load and logs; a firewall or security group that drops instead of refusing"),
    RuleRow("upstream-unreachable", _upstream(502, "502"),
            "the proxy answered 502: it cannot reach the backend (down, crashed, wrong port, failing health checks)",
            "check that the backend runs and the proxy's upstream host:port and health check"),
    RuleRow("upstream-timeout", _upstream(504, "504"),
            "the proxy answered 504: the backend did not answer it in time",
            "check what the backend was doing at that moment, or raise the proxy's read timeout"),
    RuleRow("not-ready", _not_ready,
            "the service is up but not serving yet (502/503/504 or 1013): cold start or a deploy in progress",
            "wait for the rollout to finish and watch health; check readiness probes and startup logs"),
    RuleRow("version-mismatch", _version_mismatch,
            "the deployed build is not the one expected: staging still serves old code",
            "check the rollout status (old revision still taking traffic?) and the build that was deployed"),
    RuleRow("health-http-error", _health_http_error,
            "the health endpoint answered a redirect or a 4xx: wrong path, a login page, or http→https",
            "check protocol.health_paths and the base URL's scheme; a redirect's Location says where it points"),
    RuleRow("version-unknown", _version_unknown,
            "a build was expected, but health does not say which build it serves",
            "point protocol.version_field at the build id in the health JSON (dotted path), or drop the expectation"),
    RuleRow("proxy-strips-auth", _proxy_strips_auth,
            "a proxy on the way strips the credentials: the upgrade went through it and the token did not arrive",
            "make the proxy forward Authorization and Sec-WebSocket-Protocol"),
    RuleRow("auth-header-stripped", _auth_header_stripped,
            "the token never reached the backend: a proxy or load balancer stripped the auth header/subprotocol",
            "check the ingress/load balancer config forwards Authorization and Sec-WebSocket-Protocol"),
    RuleRow("clock-skew", _clock_skew,
            "the server's clock disagrees with ours by more than a minute, so a fresh token looks expired or "
            "not yet valid",
            "check NTP on the server (and here); allow leeway in the token check"),
    RuleRow("token-expired", _token_expired, "the token had expired when it was used",
            "mint a fresh token (or lengthen auth.ttl_s); check the token source"),
    RuleRow("subprotocol-illegal", _subprotocol_illegal,
            "the token is not a legal subprotocol value (e.g. padded base64): browsers refuse to send it",
            "use base64url without '=' padding for jwt.<token>"),
    RuleRow("auth-not-enforced", _auth_not_enforced,
            "the server accepted a session without any token",
            "check that the WebSocket route enforces authentication before accepting"),
    RuleRow("auth-rejected", _auth_rejected,
            "the server refused our credentials (401/403 at the upgrade, or 1008/4001/4003 after accept)",
            "check the JWT secret/issuer the backend expects, the token's claims, and the test user"),
    RuleRow("upgrade-redirected", _upgrade_redirected,
            "the WebSocket upgrade was answered with a redirect: a wrong URL (http→https, a trailing slash, another "
            "host) or a proxy sending us to a login page",
            "point the target's ws_url at the address the redirect names if it is yours, or set "
            "protocol.follow_upgrade_redirects (followed only to the target's own hosts)"),
    RuleRow("no-upgrade", _no_upgrade,
            "the WebSocket URL did not upgrade: the path is wrong or a proxy does not pass Upgrade",
            "check protocol.ws_path and that the proxy forwards Upgrade/Connection headers"),
    RuleRow("subprotocol-mismatch", _subprotocol_mismatch,
            "the server answered 101 selecting a subprotocol we never offered: every client refuses that handshake",
            "make the server echo the jwt.* subprotocol exactly as offered (not a fixed or rewritten value)"),
    RuleRow("subprotocol-not-echoed", _subprotocol_not_echoed,
            "the server accepted without echoing the offered subprotocol: browsers will refuse this handshake "
            "even though Python accepts it",
            "make the server select (echo) the jwt.* subprotocol it authenticated with"),
    RuleRow("proxy-idle-cut", _proxy_idle_cut,
            "the proxy the connection went through cut it at its idle timer (1006, no close frame)",
            "raise that proxy's idle/read timeout for WebSockets, or ping more often than it"),
    RuleRow("lifetime-matches-proxy-timer", _proxy_timer,
            "the connection died at a well-known proxy/load balancer timeout",
            "raise the idle/request timeout on the proxy, or send keepalive pings more often than it"),
    RuleRow("message-too-big", _too_big, "a frame exceeded the receiver's size limit (1009)",
            "shrink the message or raise protocol.max_frame_bytes / the server's limit"),
    RuleRow("protocol-error", _protocol_error,
            "a WebSocket protocol violation (1002 protocol error, 1003 unsupported data, 1007 invalid UTF-8, "
            "1010 extension)",
            "capture the offending frame (stagewatch replay shows the last frames) and fix the sender"),
    RuleRow("server-error", _server_error, "the server hit an internal error (1011 or HTTP 5xx)",
            "look at the backend logs at that moment (the 5xx answer or the 1011 close) for the exception"),
    RuleRow("restart-during-run", _restart,
            "the server went away or restarted during the run (1001/1012): a deploy or scale-down",
            "expect this during a rollout; check the pod's shutdown drain time covers running agents"),
    RuleRow("abnormal-close", _abnormal,
            "the connection dropped without a close frame (1006): TCP reset, proxy idle timeout or a crash",
            "check for a proxy between us and the backend, and backend crashes/OOM at that time"),
    RuleRow("closed-before-ready", _closed_before_ready,
            "the server accepted, then closed cleanly before the ready frame: it rejected the session after "
            "the handshake",
            "check that the auth header and subprotocol reach the backend and the backend's logs for why it "
            "cleaned up the session"),
    RuleRow("closed-during-run", _closed_during_run,
            "the server ended the session cleanly in the middle of the run, before it finished",
            "check the backend's logs for why it closed the session (timeouts, cleanup, a handler returning early)"),
    RuleRow("ready-timeout", _ready_timeout,
            "the server accepted the connection but never sent the ready frame",
            "check the backend's connection setup (it may be blocked on a dependency) and protocol.ready_type"),
    RuleRow("unexpected-frame", _unexpected_frame,
            "the first frame was not the ready frame: another protocol or an error page on this path",
            "check protocol.ready_type and what the server sends first"),
    RuleRow("error-frame", _error_frame, "the server answered with an error frame",
            "read the error message; check the backend's agent setup"),
    RuleRow("agent-timeout", _agent_timeout, "the agent did not finish within the agent timeout",
            "check the agent's execution time and its dependencies (LLM, tools)"),
    RuleRow("events-out-of-order", _out_of_order, "agent events arrived out of order",
            "check the backend emits events in order (and protocol.agent_events)"),
    RuleRow("missing-events", _missing_events, "the agent finished but some required events never arrived",
            "check the backend emits every event (and protocol.agent_events for what is required)"),
    RuleRow("empty-response", _empty_response, "the agent finished without response text",
            "check the final event's payload (protocol.response_paths) and the agent's output"),
)


def diagnose(probe: ProbeModel, *, expected_version: str | None = None, protocol: Protocol | None = None,
             timeouts: Timeouts | None = None, now: float | None = None) -> list[Diagnosis]:
    """All diagnoses that the evidence supports, best first; `unknown` for an unexplained failure."""
    facts = Facts(probe, protocol or Protocol(), timeouts or Timeouts(), expected_version,
                  time.time() if now is None else now)
    found: list[Diagnosis] = []
    for row in RULES:
        lines = row.rule(facts)
        if lines is not None:
            step = next((x[len(NEXT):] for x in lines if x.startswith(NEXT)), row.next_step)
            found.append(Diagnosis(row.code, row.summary, [x for x in lines if x and not x.startswith(NEXT)], step))
    if not found and facts.failed is not None and facts.failed.status in ("fail", "error"):
        c = facts.close
        lines = [f"{facts.failed.name}: {facts.failed.detail}"]
        if c is not None:
            lines.append(facts.close_line(c))
        found.append(Diagnosis("unknown", "no rule explains this failure; the evidence is below", lines,
                               "inspect the frames and close in the recording (stagewatch replay)"))
    return found
