"""OpenTelemetry export (`--otlp`): an event-bus listener that turns each probe run into one trace — a root span
for the probe, a span per stage below it — and hands the spans to the SDK (a BatchSpanProcessor and the OTLP
exporter, http/protobuf).

The engine itself has no OpenTelemetry dependency: with `RunOptions.trace` on it names a trace per probe and a
span per stage (`probes.tracecontext`), carries those ids on ProbeStarted/StageStarted and sends them as
`traceparent` on the stage's requests, so a backend's own spans join the stage that made the request. This
module builds the real spans with exactly those ids and the events' own times (no span is timed by this
listener's clock). Events without ids (a pytest suite's tests, probes not run) get ids of their own here, so
every probe is a trace. Only what the events carry reaches a span, and events carry redacted values only: no
token becomes an attribute; a failing stage's one line (redacted) is its span's status description.

Needs the `otel` extra (`pip install 'stagewatch[otel]'`); nothing else in stagewatch imports this module unless
asked to export.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode

from .events import (Closed, Diagnosed, Frame, ProbeFinished, ProbeStarted, RunStarted, StageFinished,
                     StageStarted)
from .sanitize import event_visible, one_line
from .tracecontext import new_span_id, new_trace_id, resolve_endpoint

__all__ = ["OtelListener", "otlp_listener", "resolve_endpoint"]

EXPORT_TIMEOUT_S = 5.0  # each export request (and the flush at the end) gives up after this
TEXT_MAX = 256  # an attribute's or status description's characters (server text: reasons, details)
CLIENT_STEPS = frozenset({"http", "auth", "connect", "hold"})  # stages that make requests: CLIENT spans


class _GivenIds(IdGenerator):
    """The SDK asks its generator for a new span's ids: this one answers with the ids the engine already sent on
    the wire (set just before each span starts), so the exported span is the one the backend saw as parent."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        value, self.trace_id = self.trace_id, 0
        return value or int(new_trace_id(), 16)

    def generate_span_id(self) -> int:
        value, self.span_id = self.span_id, 0
        return value or int(new_span_id(), 16)


@dataclass
class _ProbeTrace:
    root: Span
    stages: dict[str, Span] = field(default_factory=dict)  # open stage spans by stage name
    current: Span | None = None  # the stage span running now (a close lands on it)
    close_ours: bool | None = None  # the close the root carries is our own 1000 (None: none yet)
    diagnoses: list[str] = field(default_factory=list)


class _Counting(SpanExporter):
    """The real exporter, counting what it delivered and what it could not (said once at the end)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed_batches = 0
        self.failed_spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter's bug must not kill the processor's thread
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed_batches += 1
            self.failed_spans += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _Problems(logging.Handler):
    """The SDK's and the exporter's log records, kept instead of printed (they may quote a server's answer): the
    last error's message (else the first warning's) is said once, cut short, at the end (the caller sanitises)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None
        self.error: str | None = None
        self.count = 0
        self.propagate = True

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            message = record.getMessage()
        except Exception:
            message = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        if record.levelno >= logging.ERROR:
            self.error = message
        elif self.first is None:
            self.first = message

    @property
    def said(self) -> str | None:
        message = self.error or self.first
        return None if message is None else _text(" ".join(message.split()))


class OtelListener:
    """Subscribe `handle` to the bus; call `close()` when the run is over (it ends open spans and flushes).

    `exporter`: where finished spans go (the OTLP exporter, or an in-memory one in tests), through one
    BatchSpanProcessor. `target`: the target's name, for probes that run before a RunStarted names it (a watch's
    held sessions)."""

    def __init__(self, exporter: SpanExporter, *, target: str = "", endpoint: str = "",
                 resource: Mapping[str, str] | None = None) -> None:
        self.endpoint = endpoint
        self.exporter = _Counting(exporter)
        self._ids = _GivenIds()
        attributes: dict[str, Any] = {"service.name": "stagewatch"}
        attributes.update(resource or {})
        self.provider = TracerProvider(resource=Resource.create(attributes), id_generator=self._ids,
                                       sampler=ALWAYS_ON, shutdown_on_exit=False)
        self.processor = BatchSpanProcessor(self.exporter, schedule_delay_millis=1000,
                                            export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000))
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("stagewatch")
        self.target = target
        self.base_url = ""
        self.fault = "none"
        self.build: str | None = None  # the build health reported last
        self._wall0: float | None = None  # epoch seconds at event time t == 0
        self._probes: dict[str, _ProbeTrace] = {}
        self.traces = 0  # probes traced so far
        self.problems: _Problems | None = None
        self._closed = False

    # --- time -------------------------------------------------------------------------------------------------
    def _ns(self, t: float) -> int:
        if self._wall0 is None:  # no RunStarted yet: the event was published just now, at its `t`
            self._wall0 = time.time() - t
        return int(round((self._wall0 + t) * 1e9))

    # --- the listener ---------------------------------------------------------------------------------------------
    def handle(self, event: object) -> None:
        if type(event) is Frame or self._closed:  # frames are counted on ProbeFinished: the hot path stays cheap
            return
        event = event_visible(event)  # outside text (reasons, details, builds, ids) never reaches a collector raw
        if isinstance(event, StageStarted):
            self._stage_started(event)
        elif isinstance(event, StageFinished):
            self._stage_finished(event)
        elif isinstance(event, ProbeStarted):
            self._probe_started(event)
        elif isinstance(event, Closed):
            self._closed_event(event)
        elif isinstance(event, Diagnosed):
            self._diagnosed(event)
        elif isinstance(event, ProbeFinished):
            self._probe_finished(event)
        elif isinstance(event, RunStarted):
            self._wall0 = event.wall
            self.target, self.base_url, self.fault = event.target, event.base_url, event.fault

    def _probe_started(self, e: ProbeStarted) -> None:
        old = self._probes.pop(e.probe_id, None)
        if old is not None:  # a probe started again before it finished (should not happen): end the old one
            self._end_all(old, self._ns(e.t))
        self._ids.trace_id = _int_id(e.trace_id)
        self._ids.span_id = _int_id(e.span_id)
        attributes: dict[str, Any] = {"stagewatch.probe.id": e.probe_id, "stagewatch.probe.name": _text(e.name),
                                      "stagewatch.probe.priority": e.priority,
                                      "stagewatch.probe.stages": list(e.stages)}
        if self.target:
            attributes["stagewatch.target"] = self.target
        if self.base_url:
            attributes["stagewatch.base_url"] = self.base_url
        if self.fault and self.fault != "none":
            attributes["stagewatch.sandbox.fault"] = self.fault
        root = self.tracer.start_span(f"probe {e.probe_id}", context=None, kind=SpanKind.INTERNAL,
                                      attributes=attributes, start_time=self._ns(e.t))
        assert isinstance(root, Span)
        self._probes[e.probe_id] = _ProbeTrace(root)
        self.traces += 1

    def _stage_started(self, e: StageStarted) -> None:
        probe = self._probes.get(e.probe_id)
        if probe is None:
            return
        old = probe.stages.pop(e.stage, None)
        if old is not None:
            old.end(self._ns(e.t))
        self._ids.span_id = _int_id(e.span_id)
        attributes: dict[str, Any] = {"stagewatch.probe.id": e.probe_id, "stagewatch.stage": e.stage,
                                      "stagewatch.step": e.step}
        if e.timeout_s is not None:
            attributes["stagewatch.stage.timeout_s"] = e.timeout_s
        span = self.tracer.start_span(e.stage, context=trace_api.set_span_in_context(probe.root),
                                      kind=SpanKind.CLIENT if e.step in CLIENT_STEPS else SpanKind.INTERNAL,
                                      attributes=attributes, start_time=self._ns(e.t))
        assert isinstance(span, Span)
        probe.stages[e.stage] = probe.current = span

    def _stage_finished(self, e: StageFinished) -> None:
        probe = self._probes.get(e.probe_id)
        if probe is None:
            return
        span = probe.stages.pop(e.stage, None)
        if span is None:
            return
        if probe.current is span:
            probe.current = None
        span.set_attribute("stagewatch.status", e.status)
        span.set_attribute("stagewatch.duration_ms", e.duration_ms)
        evidence = e.evidence
        status = getattr(evidence, "http_status", None)
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        version = getattr(evidence, "version", None)
        if isinstance(version, str) and version:
            self.build = version
            span.set_attribute("stagewatch.build", _text(version))
            probe.root.set_attribute("stagewatch.build", _text(version))
        error = getattr(evidence, "error", None)
        if isinstance(error, str) and error:
            span.set_attribute("error.type", _text(error))
        if e.status in ("fail", "error"):
            span.set_status(Status(StatusCode.ERROR, _text(e.detail)))
        elif e.status == "skip":
            span.set_attribute("stagewatch.skipped", _text(e.detail))
        else:
            span.set_status(Status(StatusCode.OK))
        span.end(self._ns(e.t))

    def _closed_event(self, e: Closed) -> None:
        probe = self._probes.get(e.probe_id)
        if probe is None:
            return
        facts: dict[str, Any] = {"websocket.close.code": e.code, "websocket.close.name": e.name,
                                 "websocket.close.by": e.by, "websocket.close.after_ms": e.after_ms,
                                 "websocket.close.reason": _text(e.reason)}
        where = probe.current or probe.root
        where.add_event("websocket.close", facts, timestamp=self._ns(e.t))
        if probe.current is not None:
            for name in ("code", "name", "by"):
                probe.current.set_attribute(f"stagewatch.close.{name}", facts[f"websocket.close.{name}"])
        ours = e.by == "client" and e.code == 1000  # our own close at the end says nothing a reader needs
        if probe.close_ours is None or (probe.close_ours and not ours):  # the first close, or the first not ours
            for name in ("code", "name", "by", "reason"):
                probe.root.set_attribute(f"stagewatch.close.{name}", facts[f"websocket.close.{name}"])
            probe.close_ours = ours

    def _diagnosed(self, e: Diagnosed) -> None:
        probe = self._probes.get(e.probe_id)
        if probe is None:
            return
        for d in e.diagnoses:
            code = str(d.get("code", ""))
            probe.diagnoses.append(_text(code))
            probe.root.add_event("stagewatch.diagnosis", {"code": _text(code),
                                                          "summary": _text(str(d.get("summary", "")))},
                                 timestamp=self._ns(e.t))
        probe.root.set_attribute("stagewatch.diagnoses", list(probe.diagnoses))

    def _probe_finished(self, e: ProbeFinished) -> None:
        probe = self._probes.pop(e.probe_id, None)
        if probe is None:
            return
        root = probe.root
        end = self._ns(e.t)
        for span in probe.stages.values():  # a stage that never said how it ended (interrupted)
            span.set_status(Status(StatusCode.ERROR, "interrupted"))
            span.end(end)
        root.set_attribute("stagewatch.status", e.status)
        root.set_attribute("stagewatch.duration_ms", e.duration_ms)
        root.set_attribute("stagewatch.frames.in", e.frames_in)
        root.set_attribute("stagewatch.frames.out", e.frames_out)
        if e.failed_stage:
            root.set_attribute("stagewatch.failed_stage", e.failed_stage)
        if self.build and (root.attributes is None or "stagewatch.build" not in root.attributes):
            root.set_attribute("stagewatch.build", _text(self.build))  # the build health reported last
        if e.status in ("fail", "error"):
            why = f"{e.failed_stage or 'a stage'} {'failed' if e.status == 'fail' else 'errored'}"
            if probe.diagnoses:
                why += f": {', '.join(probe.diagnoses)}"
            root.set_status(Status(StatusCode.ERROR, _text(why)))
        elif e.status == "pass":
            root.set_status(Status(StatusCode.OK))
        root.end(end)

    def _end_all(self, probe: _ProbeTrace, end: int) -> None:
        for span in probe.stages.values():
            span.end(end)
        probe.root.end(end)

    # --- the end --------------------------------------------------------------------------------------------------
    def flush(self, timeout_s: float = EXPORT_TIMEOUT_S) -> bool:
        """Hand every finished span to the exporter now (within `timeout_s`); True when they all went out."""
        return self.provider.force_flush(int(timeout_s * 1000)) and not self.exporter.failed_batches

    def close(self, timeout_s: float = EXPORT_TIMEOUT_S) -> str | None:
        """End what is still open (an interrupted run), flush, shut the SDK down. Returns one line for the person
        running it when spans could not be delivered (else None). Safe to call twice."""
        if self._closed:
            return None
        self._closed = True
        now = time.time_ns()
        for probe in self._probes.values():
            for span in probe.stages.values():
                span.set_status(Status(StatusCode.ERROR, "interrupted"))
            if probe.root.status.status_code is StatusCode.UNSET:
                probe.root.set_status(Status(StatusCode.ERROR, "interrupted"))
            self._end_all(probe, now)
        self._probes.clear()
        flushed = self.provider.force_flush(int(timeout_s * 1000))
        self.provider.shutdown()
        if self.problems is not None:
            logger = logging.getLogger("opentelemetry")
            logger.removeHandler(self.problems)
            logger.propagate = self.problems.propagate
        failed = self.exporter.failed_spans
        if failed or not flushed:
            where = f" to {self.endpoint}" if self.endpoint else ""
            said = self.problems.said if self.problems is not None else None
            first = f" ({said})" if said else ""
            lost = f"{failed} span(s)" if failed else "spans"
            return f"--otlp: {lost} of {self.traces} probe trace(s) not delivered{where}{first}"
        return None


def otlp_listener(endpoint: str, *, target: str = "", timeout_s: float | None = None) -> OtelListener:
    """The listener exporting over OTLP/HTTP (protobuf) to `endpoint` (a full traces URL). The exporter's own
    log lines are kept, not printed: `close()` says in one line what could not be delivered."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if timeout_s is None:
        timeout_s = None if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TIMEOUT") else EXPORT_TIMEOUT_S
    session = None
    host = urlsplit(endpoint).hostname or ""
    if host in ("127.0.0.1", "::1", "localhost"):
        import requests

        session = requests.Session()
        session.trust_env = False  # a collector on this machine: never through an HTTP(S)_PROXY
    problems = _Problems()
    logger = logging.getLogger("opentelemetry")
    problems.propagate = logger.propagate  # restored by close()
    logger.addHandler(problems)
    logger.propagate = False  # their records may quote a server's answer: kept, said once, sanitised
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s, session=session)
    listener = OtelListener(exporter, target=target, endpoint=endpoint)
    listener.problems = problems
    return listener


def _int_id(value: str) -> int:
    try:
        return int(value, 16) if value else 0
    except ValueError:  # a recording's malformed id: the span gets one of its own
        return 0


def _text(value: str) -> str:
    """Outside text for an attribute or a status: control characters made visible, one line, capped."""
    value = one_line(value)
    return value if len(value) <= TEXT_MAX else value[:TEXT_MAX - 1] + "…"
