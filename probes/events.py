"""The engine's event vocabulary: immutable records of everything that happens during a run.

Every consumer (TUI, recorder, reports, headless printer) sees only these. `t` is seconds since the
session started on the monotonic clock; the recorder adds wall-clock time. Events carry already-redacted
values: no full token or secret ever lives in an event.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

from .evidence import StepEvidence, evidence_from_record

Status = Literal["pass", "fail", "error", "skip"]
Direction = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events. `t`: seconds since session start (monotonic)."""

    t: float
    kind: ClassVar[str] = "event"


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    target: str
    base_url: str
    probes: tuple[tuple[str, str, int], ...]  # (id, name, priority) in queue order
    wall: float  # epoch seconds at t == 0
    fault: str = "none"  # the embedded sandbox's fault for this run (a session may switch it between runs)
    kind: ClassVar[str] = "run_started"


@dataclass(frozen=True, slots=True)
class Queued(Event):
    """More entries joined the running queue: the tests of a pytest suite the queue runs, once collected."""

    probes: tuple[tuple[str, str, int], ...]  # (id, name, priority) in their run order
    kind: ClassVar[str] = "queued"


@dataclass(frozen=True, slots=True)
class ProbeStarted(Event):
    probe_id: str
    name: str
    priority: int
    stages: tuple[str, ...]
    # With tracing on (RunOptions.trace): the W3C trace id of this probe run (32 hex) and its root span's id (16
    # hex); empty otherwise, and then absent from the record (older recordings have neither)
    trace_id: str = ""
    span_id: str = ""
    kind: ClassVar[str] = "probe_started"


@dataclass(frozen=True, slots=True)
class StageStarted(Event):
    probe_id: str
    stage: str
    step: str
    timeout_s: float | None = None  # the stage's own limit, so a person watching sees how long it may take
    degraded_ms: float | None = None  # a pass slower than this is DEGRADED (watch)
    span_id: str = ""  # with tracing on: the stage's span (16 hex), the parent the stage's requests send
    kind: ClassVar[str] = "stage_started"


@dataclass(frozen=True, slots=True)
class StageFinished(Event):
    probe_id: str
    stage: str
    status: Status
    duration_ms: float
    detail: str
    evidence: StepEvidence | None = None  # typed per step kind (probes.steps); None when the stage has none
    kind: ClassVar[str] = "stage_finished"


@dataclass(frozen=True, slots=True)
class HttpExchange(Event):
    probe_id: str
    stage: str
    method: str
    url: str
    status: int | None
    headers: dict[str, str]
    body_excerpt: str
    elapsed_ms: float
    error: str = ""
    kind: ClassVar[str] = "http"


@dataclass(frozen=True, slots=True)
class WsOpened(Event):
    probe_id: str
    url: str
    subprotocol_offered: str | None
    subprotocol_echoed: str | None
    request_headers: dict[str, str]
    response_headers: dict[str, str]
    kind: ClassVar[str] = "ws_opened"


class Frame(NamedTuple):
    """One WebSocket message. `ms`: milliseconds since the connection was accepted.

    A NamedTuple rather than a frozen dataclass: it is the one event that arrives a million times in a flood,
    and a tuple is immutable and about four times cheaper to build.
    """

    t: float
    probe_id: str
    direction: Direction
    ms: float
    size: int
    data: str | bytes  # text frames as str, binary as bytes; capped at FRAME_KEEP bytes
    truncated: bool = False

    @property
    def kind(self) -> str:  # as `kind` on the dataclass events (a NamedTuple takes no class attributes)
        return "frame"


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """How a WebSocket connection ended. `by`: who sent the first close frame."""

    probe_id: str
    code: int
    name: str
    reason: str
    by: Literal["server", "client", "none"]
    after_ms: float  # since the connection was accepted
    on_wire: bool  # False for 1005/1006/1015: synthesised locally, never sent by the peer
    kind: ClassVar[str] = "closed"


@dataclass(frozen=True, slots=True)
class SessionChanged(Event):
    """One held session (a `hold` stage) opened, ended or came back. `session`: its number (1..K); `at`: wall-clock
    epoch seconds. An `ended` carries how (code, name, reason, who, age, the build health reported then, whether an
    agent run was in flight); a `reopened` how long the way back took and on which build."""

    probe_id: str
    session: int
    # failed: a (re)connect attempt was refused; closed: our own close when the hold is over (not a disruption)
    change: Literal["opened", "ended", "reopened", "failed", "closed"]
    at: float
    code: int | None = None
    name: str = ""
    reason: str = ""
    by: str = ""  # server | client | none (dropped)
    age_s: float | None = None
    build: str | None = None
    run_lost: bool = False
    reconnect_ms: float | None = None
    detail: str = ""  # a failed attempt: why (HTTP 503, refused, timeout)
    kind: ClassVar[str] = "session_changed"


@dataclass(frozen=True, slots=True)
class HoldTick(Event):
    """Once a heartbeat while sessions are held: how many are open and what their pings said."""

    probe_id: str
    open: int
    connecting: int
    pings_sent: int  # since the hold started
    pings_missed: int  # since the hold started: no pong before the next heartbeat
    rtt_p50_ms: float | None
    rtt_p95_ms: float | None
    build: str | None
    rtts: tuple[tuple[int, float], ...] = ()  # (session, rtt ms) answered since the last tick (at most 64)
    stalled: tuple[int, ...] = ()  # sessions whose ping went unanswered this heartbeat while their socket is open
    kind: ClassVar[str] = "hold_tick"


@dataclass(frozen=True, slots=True)
class Diagnosed(Event):
    probe_id: str
    diagnoses: tuple[dict[str, Any], ...]  # {code, summary, evidence, next_step}
    kind: ClassVar[str] = "diagnosed"


@dataclass(frozen=True, slots=True)
class ProbeFinished(Event):
    probe_id: str
    status: Status
    duration_ms: float
    failed_stage: str | None
    frames_in: int
    frames_out: int
    kind: ClassVar[str] = "probe_finished"


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    verdict: Literal["pass", "fail", "interrupted"]
    duration_ms: float
    kind: ClassVar[str] = "run_finished"


@dataclass(frozen=True, slots=True)
class Notice(Event):
    """Something a person should know that is not a stage result (e.g. recording stopped: disk full)."""

    level: Literal["info", "warning", "error"]
    message: str
    kind: ClassVar[str] = "notice"


AnyEvent = Event | Frame

EVENT_TYPES: dict[str, type[Any]] = {
    "frame": Frame,
    **{cls.kind: cls for cls in (RunStarted, Queued, ProbeStarted, StageStarted, StageFinished, HttpExchange, WsOpened,
                                 Closed, SessionChanged, HoldTick, Diagnosed, ProbeFinished, RunFinished,
                                 Notice)},
}

_TUPLE_FIELDS = {"probes", "stages", "diagnoses", "rtts", "stalled"}
_OMIT_EMPTY = {"trace_id", "span_id"}  # left out of a record when empty: records without tracing stay as they were


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    if hasattr(cls, "_fields"):
        return cls._fields  # type: ignore[no-any-return]
    return tuple(f.name for f in dataclasses.fields(cls))


def to_record(event: Any) -> dict[str, Any]:
    """A JSON-ready dict of an event (binary frame data as {"b64": ...})."""
    out: dict[str, Any] = {"type": event.kind}
    for name in _field_names(type(event)):
        value = getattr(event, name)
        if name in _OMIT_EMPTY and not value:
            continue
        if isinstance(value, bytes):
            value = {"b64": base64.b64encode(value).decode("ascii")}
        elif isinstance(value, StepEvidence):
            value = value.to_record()
        out[name] = value
    return out


def from_record(record: dict[str, Any]) -> Any:
    """Rebuild an event from `to_record` output; raises ValueError on an unknown or malformed record. Stage
    evidence comes back typed for the kinds registered (`import probes.steps`), else as RawEvidence."""
    kind = record.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    kwargs: dict[str, Any] = {}
    for name in _field_names(cls):
        if name not in record:
            continue
        value = record[name]
        if isinstance(value, dict) and set(value) == {"b64"}:
            value = base64.b64decode(value["b64"])
        elif name == "evidence":
            value = evidence_from_record(value)
        elif name in _TUPLE_FIELDS and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"malformed {kind} event: {exc}") from None
