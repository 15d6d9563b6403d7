"""--otlp: a trace per probe, a span per stage with the engine's own ids and times, ERROR on a failing fault; the
spans reach a real OTLP/HTTP receiver (one the test runs on loopback), also when SIGTERM ends the run mid-stage;
the sandbox sees `traceparent` naming the stage's span on the health request and the WebSocket upgrade; and
stagewatch without the otel extra says so in one line (exit 2) and otherwise runs as before."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.events import (Closed, ProbeFinished, ProbeStarted, RunStarted, StageFinished, StageStarted, from_record,
                           to_record)
from probes.otel import OtelListener, otlp_listener
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions
from probes.tracecontext import parse_traceparent, resolve_endpoint, traceparent

ROOT = Path(__file__).resolve().parent.parent
STAGEWATCH = [sys.executable, "-m", "tui.cli"]
DEADLINE_S = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG", "NO_COLOR")
           and not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


async def _traced_run(config: Config, fault: str, only: tuple[str, ...], exporter: Any = None,
                      listener: OtelListener | None = None, sandbox: Sandbox | None = None) -> tuple[OtelListener,
                                                                                                     list[Any]]:
    listener = listener or OtelListener(exporter)
    bus = EventBus()
    events: list[Any] = []
    bus.subscribe(events.append)
    bus.subscribe(listener.handle)
    options = RunOptions(trace=True, fault=fault, only=only, sandbox=sandbox)
    await run_queue(config, resolve_target(config, "sandbox"), bus, options)
    assert not bus.failures, bus.failures  # the listener never raised (it would have been removed)
    return listener, events


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


# --- spans built in process (an in-memory exporter) ----------------------------------------------------------------

async def test_a_trace_per_probe_a_span_per_stage_and_error_on_the_failing_fault(fast_config):
    exporter = InMemorySpanExporter()
    listener, events = await _traced_run(fast_config, "closed-before-ready", ("health", "golden-path"), exporter)
    assert listener.close() is None  # everything delivered
    spans = exporter.get_finished_spans()
    started = {e.probe_id: e for e in events if isinstance(e, ProbeStarted)}
    assert set(started) == {"health", "golden-path"}
    by_trace: dict[str, list[Any]] = {}
    for span in spans:
        by_trace.setdefault(_hex(span.context.trace_id, 32), []).append(span)
    # one trace per probe, with the ids the engine named (and sent on the wire)
    assert set(by_trace) == {e.trace_id for e in started.values()}
    for probe_id, start in started.items():
        trace = by_trace[start.trace_id]
        (root,) = [s for s in trace if s.parent is None]
        assert root.name == f"probe {probe_id}" and _hex(root.context.span_id, 16) == start.span_id
        stages = [s for s in trace if s.parent is not None]
        assert sorted(s.name for s in stages) == sorted(start.stages)  # a span per stage, skipped ones too
        assert all(s.parent.span_id == root.context.span_id for s in stages)
        stage_ids = {e.stage: e.span_id for e in events if isinstance(e, StageStarted) and e.probe_id == probe_id}
        assert {s.name: _hex(s.context.span_id, 16) for s in stages} == stage_ids
        for s in stages:  # exact times: inside the probe's span, in order of the events
            assert root.start_time <= s.start_time <= s.end_time <= root.end_time
        assert root.attributes["stagewatch.target"] == "sandbox"
        assert root.attributes["stagewatch.build"]  # what health reported
    health = by_trace[started["health"].trace_id]
    assert all(s.status.status_code is StatusCode.OK for s in health)

    golden = {s.name: s for s in by_trace[started["golden-path"].trace_id]}
    root = golden["probe golden-path"]
    assert root.status.status_code is StatusCode.ERROR and "handshake" in root.status.description
    assert root.attributes["stagewatch.status"] == "fail"
    assert root.attributes["stagewatch.failed_stage"] == "handshake"
    assert tuple(root.attributes["stagewatch.diagnoses"]) == ("closed-before-ready",)
    assert (root.attributes["stagewatch.close.code"], root.attributes["stagewatch.close.name"],
            root.attributes["stagewatch.close.by"]) == (1000, "Normal Closure", "server")
    assert root.attributes["stagewatch.frames.in"] == 0 and root.attributes["stagewatch.frames.out"] == 0
    assert golden["handshake"].status.status_code is StatusCode.ERROR
    assert golden["handshake"].attributes["stagewatch.close.code"] == 1000
    assert any(ev.name == "websocket.close" for ev in golden["handshake"].events)
    for ok in ("health", "auth", "connect"):
        assert golden[ok].status.status_code is StatusCode.OK, ok
    assert golden["connect"].attributes["http.response.status_code"] == 101
    assert golden["message"].status.status_code is StatusCode.UNSET
    assert golden["message"].attributes["stagewatch.status"] == "skip"
    # no token in any attribute or event (the engine's events are redacted; the spans carry nothing else)
    blob = json.dumps([[dict(s.attributes), [dict(e.attributes) for e in s.events]] for s in spans], default=str)
    assert "eyJ" not in blob and "jwt." not in blob


async def test_a_passing_run_is_ok_with_frames_counted(fast_config):
    exporter = InMemorySpanExporter()
    listener, events = await _traced_run(fast_config, "none", ("golden-path",), exporter)
    listener.close()
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1
    assert all(s.status.status_code is StatusCode.OK for s in spans)
    (root,) = [s for s in spans if s.parent is None]
    assert root.attributes["stagewatch.frames.in"] >= 6 and root.attributes["stagewatch.frames.out"] == 1
    assert "stagewatch.diagnoses" not in root.attributes


async def test_without_tracing_no_ids_are_named_and_records_stay_as_they_were(fast_config):
    bus, events = EventBus(), []
    bus.subscribe(events.append)
    await run_queue(fast_config, resolve_target(fast_config, "sandbox"), bus, RunOptions(only=("health",)))
    started = next(e for e in events if isinstance(e, ProbeStarted))
    stage = next(e for e in events if isinstance(e, StageStarted))
    assert started.trace_id == started.span_id == stage.span_id == ""
    assert "trace_id" not in to_record(started) and "span_id" not in to_record(stage)
    traced = ProbeStarted(1.0, "p", "P", 0, ("health",), "a" * 32, "b" * 16)
    assert from_record(json.loads(json.dumps(to_record(traced)))) == traced
    old = {"type": "stage_started", "t": 1.0, "probe_id": "p", "stage": "s", "step": "http"}  # an older recording
    assert from_record(old).span_id == ""


def test_traceparent_and_endpoints():
    header = traceparent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert header == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse_traceparent(header) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert parse_traceparent("00-" + "0" * 32 + "-b7ad6b7169203331-01") is None
    assert resolve_endpoint("http://127.0.0.1:4318", {}) == "http://127.0.0.1:4318/v1/traces"
    assert resolve_endpoint("http://c:4318/custom/path", {}) == "http://c:4318/custom/path"
    assert resolve_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert resolve_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1",
                                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:2/t"}) == "http://b:2/t"
    assert resolve_endpoint(None, {}) == "http://localhost:4318/v1/traces"
    with pytest.raises(ValueError, match="not an http"):
        resolve_endpoint("grpc://c:4317", {})


# --- traceparent on the wire: what the sandbox saw -----------------------------------------------------------------

async def test_the_sandbox_sees_traceparent_naming_the_stage_on_health_and_the_upgrade(fast_config):
    sandbox = Sandbox(SandboxOptions())
    seen: list[tuple[str, str | None]] = []
    answer = sandbox._process_request

    def process_request(conn: Any, request: Any) -> Any:  # what reached the server, before it answers
        seen.append((request.path.split("?", 1)[0], request.headers.get("traceparent")))
        return answer(conn, request)

    sandbox._process_request = process_request  # type: ignore[method-assign]
    await sandbox.start()
    try:
        listener, events = await _traced_run(fast_config, "none", ("golden-path",), InMemorySpanExporter(),
                                             sandbox=sandbox)
    finally:
        await sandbox.stop()
    listener.close()
    started = next(e for e in events if isinstance(e, ProbeStarted))
    spans = {e.stage: e.span_id for e in events if isinstance(e, StageStarted)}
    paths = dict(seen)
    assert set(paths) >= {"/health", "/ws"}, seen
    assert parse_traceparent(paths["/health"] or "") == (started.trace_id, spans["health"])
    assert parse_traceparent(paths["/ws"] or "") == (started.trace_id, spans["connect"])
    assert spans["health"] != spans["connect"]


async def test_each_probe_run_is_its_own_trace(fast_config):
    exporter = InMemorySpanExporter()
    listener = OtelListener(exporter)
    await _traced_run(fast_config, "none", ("health",), listener=listener)
    await _traced_run(fast_config, "none", ("health",), listener=listener)
    listener.close()
    roots = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert len(roots) == 2 and roots[0].context.trace_id != roots[1].context.trace_id


# --- a real OTLP/HTTP receiver on loopback ------------------------------------------------------------------------

class Receiver:
    """POST /v1/traces on 127.0.0.1 (port 0), the protobuf decoded: spans as (trace id, span id, parent, name,
    status code, attributes)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                coding = self.headers.get("Content-Encoding", "")
                if coding == "gzip":
                    body = gzip.decompress(body)
                elif coding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                got = []
                for resource in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            got.append({"trace": span.trace_id.hex(), "span": span.span_id.hex(),
                                        "parent": span.parent_span_id.hex(), "name": span.name,
                                        "status": span.status.code, "service": service.get("service.name"),
                                        "attributes": {a.key: a.value for a in span.attributes}})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver.changed:
                    receiver.requests += 1
                    receiver.spans += got
                    receiver.changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def wait_for(self, predicate: Any, timeout: float = DEADLINE_S) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.spans), timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


async def test_spans_reach_an_otlp_http_receiver(fast_config, receiver):
    listener = otlp_listener(resolve_endpoint(receiver.url, {}), target="sandbox")
    listener, events = await _traced_run(fast_config, "closed-before-ready", ("health", "golden-path"),
                                         listener=listener)
    assert listener.close() is None  # flushed: everything accepted
    started = {e.probe_id: e for e in events if isinstance(e, ProbeStarted)}
    assert receiver.wait_for(lambda spans: len(spans) >= 1 + 7 + 1)  # the flush above already delivered them
    traces = {s["trace"] for s in receiver.spans}
    assert traces == {e.trace_id for e in started.values()}
    golden = {s["name"]: s for s in receiver.spans if s["trace"] == started["golden-path"].trace_id}
    assert set(golden) == {"probe golden-path", *started["golden-path"].stages}
    assert golden["probe golden-path"]["span"] == started["golden-path"].span_id
    assert golden["probe golden-path"]["status"] == 2  # STATUS_CODE_ERROR
    assert golden["handshake"]["status"] == 2 and golden["health"]["status"] == 1  # OK
    assert golden["handshake"]["parent"] == started["golden-path"].span_id
    assert golden["probe golden-path"]["attributes"]["stagewatch.close.code"].int_value == 1000
    assert golden["probe golden-path"]["service"] == "stagewatch"


async def test_an_unreachable_collector_is_one_line_not_a_stack(fast_config, receiver):
    receiver.close()  # nothing listens on its port any more
    listener = otlp_listener(resolve_endpoint(receiver.url, {}), timeout_s=0.5)
    await _traced_run(fast_config, "none", ("health",), listener=listener)
    said = listener.close(timeout_s=5)
    assert said is not None and said.startswith("--otlp: 2 span(s) of 1 probe trace(s) not delivered to "
                                                f"{receiver.url}/v1/traces"), said
    assert "\n" not in said


def test_the_cli_exports_and_sigterm_still_flushes_the_running_probe(tmp_path, receiver):
    """A probe stuck in its agent stage (slow-agent): the stages already over reach the collector on the batch
    schedule; SIGTERM then ends the run, and the interrupted probe's own span and its agent stage still arrive."""
    proc = subprocess.Popen([*STAGEWATCH, "run", "--fault", "slow-agent", "--only", "golden-path", "--no-record",
                             "--otlp", receiver.url], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert receiver.wait_for(lambda spans: any(s["name"] == "message" for s in spans)), "no span exported"
        assert not any(s["name"] == "probe golden-path" for s in receiver.spans)  # still running
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "not delivered" not in err
    names = {s["name"]: s for s in receiver.spans}
    # the stage under way ends interrupted; the one after it never started (no span)
    assert set(names) == {"probe golden-path", "health", "auth", "connect", "handshake", "message", "agent"}
    assert names["probe golden-path"]["status"] == 2 and names["agent"]["status"] == 2
    assert len({s["trace"] for s in receiver.spans}) == 1


def test_the_standard_variable_alone_turns_tracing_on(tmp_path, receiver):
    out = subprocess.run([*STAGEWATCH, "run", "--only", "health", "--no-record"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env=_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url))
    assert out.returncode == 0, out.stderr
    assert receiver.wait_for(lambda spans: {s["name"] for s in spans} == {"probe health", "health"})


# --- without the extras ---------------------------------------------------------------------------------------------

_BLOCKED = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["stagewatch", *sys.argv[1:]]
from tui.cli import entry
entry()
"""


@pytest.mark.parametrize("flag,extra", [(["--otlp"], "otel"), (["--otlp", "http://127.0.0.1:1"], "otel"),
                                        (["--metrics-port", "0"], "metrics")])
def test_a_missing_extra_is_one_line_and_exit_2(tmp_path, flag, extra):
    out = subprocess.run([sys.executable, "-c", _BLOCKED, "run", "--only", "health", "--no-record", *flag],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 2, out.stderr
    assert out.stderr == (f"stagewatch: {flag[0]} needs the {extra} extra: pip install 'stagewatch[{extra}]'\n")
    assert out.stdout == ""


def test_without_the_extras_stagewatch_runs_as_before(tmp_path):
    out = subprocess.run([sys.executable, "-c", _BLOCKED, "run", "--only", "health", "--no-record"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0, out.stderr
    assert "PASS" in out.stdout
    warned = subprocess.run([sys.executable, "-c", _BLOCKED, "run", "--only", "health", "--no-record"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env=_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1"))
    assert warned.returncode == 0 and "otel extra" in warned.stderr and "not exporting" in warned.stderr


def test_outside_text_in_attributes_and_status_is_made_visible():
    """A close reason, a stage detail and a build with escapes and a bell: visible in the spans, never raw."""
    from probes.steps.http import HttpEvidence

    exporter = InMemorySpanExporter()
    listener = OtelListener(exporter)
    bad = "agent crashed\x1b[2J\x1b]0;PWNED\x07\x9b\u202e"
    for event in (RunStarted(0.0, "t", "http://x", (("p", "p", 0),), 1.0),
                  ProbeStarted(0.0, "p", "p", 0, ("health", "agent")),
                  StageStarted(0.0, "p", "health", "http", 5.0),
                  StageFinished(0.1, "p", "health", "pass", 1.0, "", HttpEvidence(http_status=200, version=bad)),
                  StageStarted(0.1, "p", "agent", "expect_events", 5.0),
                  Closed(0.2, "p", 1011, "Internal Error", bad, "server", 50.0, True),
                  StageFinished(0.2, "p", "agent", "fail", 100.0, bad),
                  ProbeFinished(0.3, "p", "fail", 300.0, "agent", 3, 1)):
        listener.handle(event)
    assert listener.close() is None
    spans = exporter.get_finished_spans()
    texts = [str(s.status.description) for s in spans] + [str(v) for s in spans for v in s.attributes.values()]
    texts += [str(v) for s in spans for ev in s.events for v in ev.attributes.values()]
    assert any("agent crashed\\x1b[2J" in t for t in texts), texts
    assert not any(c in t for t in texts for c in "\x1b\x07\x9b\u202e"), texts


async def test_each_held_sessions_upgrade_carries_the_hold_stages_traceparent():
    from probes.config import parse_config

    config = parse_config("""
default_target: sandbox
targets:
  sandbox: {base_url: sandbox}
probes:
  - id: held
    name: three sessions held
    priority: 1
    steps: [{step: hold, name: hold, sessions: 3, for: 300ms, heartbeat: 100ms}]
""", "hold.yaml")
    sandbox = Sandbox(SandboxOptions())
    seen: list[str | None] = []
    answer = sandbox._process_request

    def process_request(conn: Any, request: Any) -> Any:
        if request.path.startswith("/ws"):
            seen.append(request.headers.get("traceparent"))
        return answer(conn, request)

    sandbox._process_request = process_request  # type: ignore[method-assign]
    await sandbox.start()
    try:
        listener, events = await _traced_run(config, "none", ("held",), InMemorySpanExporter(), sandbox=sandbox)
    finally:
        await sandbox.stop()
    listener.close()
    started = next(e for e in events if isinstance(e, ProbeStarted))
    hold = next(e for e in events if isinstance(e, StageStarted) and e.stage == "hold")
    assert len(seen) >= 3 and {parse_traceparent(v or "") for v in seen} == {(started.trace_id, hold.span_id)}
