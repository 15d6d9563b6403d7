"""A team's own pytest suite as the queue (`stagewatch run --pytest`): the example suite and a suite written here,
run unchanged in a pytest subprocess with stagewatch's plugin against the embedded sandbox. Each test must come out
as a probe does: its outcome, its stages, its WebSocket frames (attributed to the test that sent or received them,
also across pytest-xdist workers), its close and, when it fails, the diagnosis a probe would get."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.frames import Frame as WsFrame, Opcode

from probes.bus import EventBus
from probes.config import Config, resolve_target
from probes.events import (Closed, Diagnosed, Frame, HttpExchange, ProbeFinished, ProbeStarted, RunStarted,
                           WsOpened, to_record)
from probes.model import ProbeModel, RunModel
from probes.pytest_items import PytestEvidence, priority_of, probe_id
from probes.pytest_run import PytestResult, run_pytest
from probes.pytest_tap import Limits, RunningTests, WsTap
from probes.redact import Redactor
from probes.report import to_json, write_junit, write_markdown
from probes.runner import RunOptions
from probes.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "e2e"
QUIET = ["-p", "no:cacheprovider", "-q"]  # no .pytest_cache left in the example's folder
JWT_RE = re.compile(r"eyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{20,}")  # a whole token (a redacted one is cut short)
HEALTH = "test_priority1_critical.py::test_health_endpoint_reports_a_build"
WITH_AUTH = "test_priority1_critical.py::test_websocket_connection_with_auth"
REFUSED = "test_priority1_critical.py::test_connection_without_token_is_refused"
EVENTS = "test_1_websocket_events.py::test_agent_events_arrive_in_order"
SYNC = "test_1_websocket_events.py::test_sync_client_is_greeted"
TWO_MESSAGES = "test_2_message_flow.py::test_two_messages_on_one_connection"
UNKNOWN_FRAME = "test_2_message_flow.py::test_unknown_frame_is_answered_with_an_error"
HISTORY = "test_2_message_flow.py::test_thread_history_survives_a_reconnect"
RECONNECT = "test_3_reconnect.py::test_reconnect_with_the_same_token"


@dataclass
class Run:
    result: PytestResult
    events: list[object] = field(default_factory=list)
    model: RunModel = field(default_factory=RunModel)

    def probe(self, nodeid: str) -> ProbeModel:
        return next(p for p in self.model.probes.values() if p.name.endswith(nodeid))

    def frames(self, nodeid: str) -> list[Frame]:
        pid = self.probe(nodeid).id
        return [e for e in self.events if isinstance(e, Frame) and e.probe_id == pid]

    def texts(self, nodeid: str, direction: str) -> str:
        return "\n".join(str(f.data) for f in self.frames(nodeid) if f.direction == direction)

    def of(self, kind: type, nodeid: str) -> list:
        pid = self.probe(nodeid).id
        return [e for e in self.events if isinstance(e, kind) and getattr(e, "probe_id", None) == pid]

    def status(self) -> dict[str, str]:
        return {p.name.rsplit("/", 1)[-1]: p.status for p in self.model.probes.values()}


async def run_suite(config: Config, *args: str, fault: str = "none", **options: object) -> Run:
    bus = EventBus()
    events: list[object] = []
    model = RunModel()
    bus.subscribe(events.append)
    bus.subscribe(model.apply)
    result = await run_pytest(config, resolve_target(config, "sandbox"), bus,
                              RunOptions(fault=fault, **options), args=[*QUIET, *args])  # type: ignore[arg-type]
    assert not bus.failures, bus.failures
    return Run(result, events, model)


def test_priority_and_probe_id_rules():
    rules = {"by_marker": {"smoke": 0, "critical": 1}, "by_pattern": {"test_priority1_*": 1}, "default": 2}
    assert priority_of(["test_x", "test_1_ws.py"], [], **rules) == 2
    assert priority_of(["test_x", "test_priority1_critical.py"], [], **rules) == 1
    assert priority_of(["test_x", "test_priority1_critical.py"], ["critical", "smoke"], **rules) == 0
    pid = probe_id("tests/test_ws.py::TestChat::test_connects[asyncio-ws]")
    assert re.fullmatch(r"test_connects-asyncio-ws-[0-9a-f]{6}", pid)
    assert pid == probe_id("tests/test_ws.py::TestChat::test_connects[asyncio-ws]")
    assert pid != probe_id("tests/test_other.py::test_connects[asyncio-ws]")


async def test_example_suite_each_test_as_a_probe(packaged_config):
    async with Sandbox() as sandbox:  # given, so its key is known here (stagewatch starts one itself otherwise)
        run = await run_suite(packaged_config, str(EXAMPLE), sandbox=sandbox)
    assert (run.result.verdict, run.result.exit_code) == ("pass", 0)
    assert run.status() == {HEALTH: "pass", WITH_AUTH: "pass", REFUSED: "pass", EVENTS: "pass", SYNC: "pass",
                            TWO_MESSAGES: "pass", UNKNOWN_FRAME: "pass", HISTORY: "skip", RECONNECT: "pass"}
    # the queue, P0 first: announced whole by RunStarted, run in that order
    started = next(e for e in run.events if isinstance(e, RunStarted))
    announced = [(name, p) for _, name, p in started.probes]
    assert announced[0] == (HEALTH, 0) and announced[-1] == (RECONNECT, 3)
    assert [p for _, p in announced] == sorted(p for _, p in announced)
    assert dict(announced)[WITH_AUTH] == 1 and dict(announced)[EVENTS] == 2  # a file pattern, the default
    ran = [e.name for e in run.events if isinstance(e, ProbeStarted)]
    assert ran == [name for name, _ in announced]
    # stages: the test's phases and, per connection, connect and handshake with real evidence
    auth = run.probe(WITH_AUTH)
    assert [(s.name, s.status) for s in auth.stages.values()] == [
        ("setup", "pass"), ("call", "pass"), ("connect", "pass"), ("handshake", "pass"), ("teardown", "pass")]
    assert "subprotocol echoed" in auth.stages["connect"].detail
    assert auth.stages["handshake"].detail.startswith("connection_established after")
    assert auth.stages["handshake"].evidence.frame_type == "connection_established"
    assert "refused with HTTP 401" in run.probe(REFUSED).stages["connect"].detail
    reconnect = run.probe(RECONNECT)
    assert {"connect", "handshake", "connect-2", "handshake-2"} <= set(reconnect.stages)
    assert [(c.code, c.by) for c in reconnect.closes] == [(1000, "client"), (1000, "client")]
    assert len(run.of(WsOpened, RECONNECT)) == 2
    # frames belong to the test that sent or received them
    assert "what is 2 + 2?" in run.texts(EVENTS, "out")
    assert [json.loads(f.data)["type"] for f in run.frames(EVENTS) if f.direction == "in"] == [
        "connection_established", "agent_started", "agent_thinking", "tool_executing", "tool_completed",
        "agent_completed"]
    assert "what is 40 + 2?" in run.texts(TWO_MESSAGES, "out") and "and 3 + 3?" in run.texts(TWO_MESSAGES, "out")
    assert "what is 2 + 2?" not in run.texts(TWO_MESSAGES, "out")
    assert "unrecognised frame" in run.texts(UNKNOWN_FRAME, "in")
    assert "connection_established" in run.texts(SYNC, "in") and run.probe(SYNC).close is not None
    two = run.of(ProbeFinished, TWO_MESSAGES)[0]
    assert (two.frames_in, two.frames_out) == (11, 2)
    # HTTP through httpx, on the stage it happened in
    health = run.of(HttpExchange, HEALTH)
    assert [(h.stage, h.method, h.status) for h in health] == [("call", "GET", 200)]
    # credentials never leave whole: not the token, not the sandbox's key
    dumped = json.dumps([to_record(e) for e in run.events], default=str)
    assert not JWT_RE.search(dumped) and sandbox.secret not in dumped
    opened = run.of(WsOpened, WITH_AUTH)[0]
    assert opened.request_headers["Authorization"].startswith("Bearer eyJhbGciOi…")
    assert "…" in (opened.subprotocol_offered or "")
    # the report: tests beside probes, with their own keys
    report = {p["nodeid"]: p for p in to_json(run.model)["probes"]}
    assert report[WITH_AUTH]["kind"] == "pytest" and report[WITH_AUTH]["outcome"] == "passed"
    assert report[HISTORY]["outcome"] == "skipped" and report[HISTORY]["status"] == "skip"
    assert report[EVENTS]["frames_in"] == 6 and report[EVENTS]["close"]["by"] == "client"


async def test_faulted_sandbox_shows_closed_before_ready(packaged_config):
    run = await run_suite(packaged_config, str(EXAMPLE), "-k", "with_auth or refused or greeted",
                          fault="closed-before-ready")
    assert run.result.verdict == "fail" and run.result.exit_code == 1
    assert run.status() == {WITH_AUTH: "fail", REFUSED: "pass", SYNC: "fail"}
    for nodeid in (WITH_AUTH, SYNC):  # the asyncio client and the sync one alike
        probe = run.probe(nodeid)
        assert probe.stages["connect"].status == "pass" and probe.stages["handshake"].status == "fail"
        close = probe.close
        assert close is not None and (close.code, close.reason, close.by) == (1000, "main cleanup", "server")
        assert 30 < close.after_ms < 1000
        assert run.of(Closed, nodeid)[0].on_wire
        first = run.of(Diagnosed, nodeid)[0].diagnoses[0]
        assert first["code"] == "closed-before-ready"
        assert any("main cleanup" in line for line in first["evidence"])
        assert run.of(ProbeFinished, nodeid)[0].failed_stage == "handshake"
        call = probe.stages["call"]
        assert call.status == "fail" and "ConnectionClosedOK" in call.detail
        assert isinstance(call.evidence, PytestEvidence) and "main cleanup" in call.evidence.longrepr
    report = {p["nodeid"]: p for p in to_json(run.model)["probes"]}
    assert report[WITH_AUTH]["outcome"] == "failed" and "ConnectionClosedOK" in report[WITH_AUTH]["longrepr"]
    assert report[WITH_AUTH]["diagnoses"][0]["code"] == "closed-before-ready"
    junit = ET.fromstring(write_junit(run.model))
    case = next(c for c in junit.iter("testcase") if c.get("name") == WITH_AUTH)
    assert case.find("failure").get("type") == "closed-before-ready"
    assert "closed-before-ready" in write_markdown(run.model) and "pytest's failure" in write_markdown(run.model)


async def test_xdist_workers_report_their_own_tests(packaged_config):
    pytest.importorskip("xdist")
    run = await run_suite(packaged_config, str(EXAMPLE), "-n", "2")
    assert run.result.verdict == "pass"
    starts = [e.name for e in run.events if isinstance(e, ProbeStarted)]
    assert len(starts) == len(set(starts)) == 9  # each test once: the controller relays, it does not report
    assert "what is 2 + 2?" in run.texts(EVENTS, "out") and "what is 2 + 2?" not in run.texts(TWO_MESSAGES, "out")
    assert "what is 40 + 2?" in run.texts(TWO_MESSAGES, "out") and "40 + 2" not in run.texts(EVENTS, "out")
    for nodeid in (WITH_AUTH, SYNC, RECONNECT):
        ids = [json.loads(f.data)["payload"]["connection_id"] for f in run.frames(nodeid) if f.direction == "in"]
        assert len(ids) == (2 if nodeid == RECONNECT else 1)
    all_ids = [json.loads(f.data)["payload"]["connection_id"] for e in run.events if isinstance(e, Frame)
               for f in [e] if f.direction == "in" and "connection_established" in str(f.data)]
    assert len(all_ids) == len(set(all_ids)) == 7  # no frame shown twice or on another test


async def test_max_priority_deselects_and_fail_fast_stops(packaged_config):
    run = await run_suite(packaged_config, str(EXAMPLE), fault="closed-before-ready", max_priority=2, fail_fast=True)
    started = next(e for e in run.events if isinstance(e, RunStarted))
    assert RECONNECT not in [name for _, name, _ in started.probes]  # P3: deselected, not shown
    statuses = run.status()
    assert statuses[HEALTH] == "pass" and statuses[WITH_AUTH] == "fail"
    rest = {n: s for n, s in statuses.items() if n not in (HEALTH, WITH_AUTH)}
    assert rest and set(rest.values()) == {"skip"}
    assert all(run.probe(n).stages["call"].detail == "not run: --fail-fast" for n in rest)


SUITE = '''
    """A suite that knows nothing of stagewatch: plain websockets clients, asyncio and sync."""
    import asyncio, base64, json, os, time

    import jwt
    from websockets.asyncio.client import connect
    from websockets.sync.client import connect as sync_connect

    WS = os.environ["STAGEWATCH_WS_URL"]


    def subprotocol():
        now = int(time.time())
        token = jwt.encode({"sub": "tmp-suite", "iat": now, "exp": now + 60}, os.environ["JWT_SECRET_KEY"],
                           algorithm="HS256")
        return "jwt." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


    def test_asyncio_client_chats():
        async def chat():
            async with connect(WS, subprotocols=[subprotocol()]) as ws:
                assert json.loads(await ws.recv())["type"] == "connection_established"
                await ws.send(json.dumps({"type": "user_message", "payload": {"content": "tmp suite: 5 + 5?"}}))
                while (msg := json.loads(await ws.recv()))["type"] != "agent_completed":
                    pass
                return msg
        assert "10" in asyncio.run(chat())["payload"]["response"]


    def test_sync_client_closes_with_its_own_code():
        with sync_connect(WS, subprotocols=[subprotocol()]) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "connection_established"
            ws.close(4001, "tmp suite done")


    def test_legacy_client_is_greeted():
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from websockets.legacy.client import connect as legacy_connect

        async def greet():
            async with legacy_connect(WS, subprotocols=[subprotocol()]) as ws:
                return json.loads(await ws.recv())["type"]
        assert asyncio.run(greet()) == "connection_established"


    def test_fails_on_purpose():
        assert 1 + 1 == 3, "arithmetic is broken"
'''


@pytest.fixture
def tmp_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_plain_ws.py").write_text(textwrap.dedent(SUITE))
    return suite


async def test_a_suite_outside_the_repo_runs_unchanged(packaged_config, tmp_suite):
    run = await run_suite(packaged_config, str(tmp_suite))
    statuses = {name.rsplit("::", 1)[-1]: s for name, s in run.status().items()}
    assert statuses == {"test_asyncio_client_chats": "pass", "test_sync_client_closes_with_its_own_code": "pass",
                        "test_legacy_client_is_greeted": "pass", "test_fails_on_purpose": "fail"}
    legacy = run.probe("test_plain_ws.py::test_legacy_client_is_greeted")
    assert legacy.stages["handshake"].status == "pass" and (legacy.close.code, legacy.close.by) == (1000, "client")
    chats = "test_plain_ws.py::test_asyncio_client_chats"
    assert "tmp suite: 5 + 5?" in run.texts(chats, "out") and "The answer" in run.texts(chats, "in")
    assert (run.probe(chats).close.code, run.probe(chats).close.by) == (1000, "client")
    sync = run.probe("test_plain_ws.py::test_sync_client_closes_with_its_own_code")
    assert (sync.close.code, sync.close.reason, sync.close.by) == (4001, "tmp suite done", "client")
    assert "connection_established" in run.texts("test_plain_ws.py::test_sync_client_closes_with_its_own_code", "in")
    failing = run.probe("test_plain_ws.py::test_fails_on_purpose")
    assert "arithmetic is broken" in failing.stages["call"].detail
    assert failing.diagnoses[0]["code"] == "unknown"  # a plain assertion: no wire rule claims it
    assert "assert (1 + 1) == 3" in failing.stages["call"].evidence.longrepr


async def test_only_reruns_one_test_by_its_probe_id(packaged_config, tmp_suite):
    wanted = probe_id("suite/test_plain_ws.py::test_sync_client_closes_with_its_own_code")
    run = await run_suite(packaged_config, str(tmp_suite), "--rootdir", str(tmp_suite.parent),
                          only=(wanted,))  # as the app's `r` asks for one probe
    assert [p.id for p in run.model.probes.values()] == [wanted]
    assert run.result.verdict == "pass" and run.probe("test_sync_client_closes_with_its_own_code").close.code == 4001


def _stagewatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_cli_run_pytest_reports_and_replays(tmp_suite, tmp_path):
    proc = _stagewatch("run", "--record", "rec.jsonl", "--json", "live.json", "--pytest", "--", *QUIET,
                       str(tmp_suite), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stagewatch → sandbox" in proc.stdout and "· 4 tests" in proc.stdout
    assert re.search(r"^P2 \S*test_plain_ws\.py::test_fails_on_purpose$", proc.stdout, re.M)
    assert "close        4001 Application — 'tmp suite done' — client closed" in proc.stdout
    assert "FAIL — 1 of 4 tests failed (test_fails_on_purpose at call)" in proc.stdout
    live = json.loads((tmp_path / "live.json").read_text())
    assert {p["nodeid"].rsplit("::", 1)[-1]: p["outcome"] for p in live["probes"]} == {
        "test_asyncio_client_chats": "passed", "test_sync_client_closes_with_its_own_code": "passed",
        "test_legacy_client_is_greeted": "passed", "test_fails_on_purpose": "failed"}
    replayed = _stagewatch("replay", "rec.jsonl", "--json", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["probes"] == live["probes"]  # the same event stream, the same report


def test_cli_pytest_command_and_usage_errors(tmp_path):
    # with a report asked for it runs headless (without, it opens the live monitor)
    proc = _stagewatch("pytest", "--no-record", "--json", str(tmp_path / "r.json"), "--fault", "closed-before-ready",
                       "--", *QUIET, str(EXAMPLE), "-k", "with_auth", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "diagnosis    closed-before-ready" in proc.stdout
    assert "close        1000 Normal Closure — 'main cleanup' — server closed" in proc.stdout
    refused = _stagewatch("run", "--no-record", "--pytest", "--", "--no-such-pytest-option", cwd=tmp_path)
    assert refused.returncode == 2 and "usage error" in refused.stderr
    for args, message in ((["run", "--pytest", "--only", "health"], "--only names probes"),
                          (["run", "stray"], "pytest arguments go with --pytest")):
        proc = _stagewatch(*args, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


class _Conn:
    """What websockets' LoggerAdapter puts on a record: the connection (here only its id)."""

    def __init__(self, id: int) -> None:
        self.id = id


def _records(conn: _Conn, *lines: tuple) -> list[logging.LogRecord]:
    out = []
    for msg, *args in lines:
        record = logging.LogRecord("websockets.client", logging.DEBUG, __file__, 0, msg, tuple(args), None)
        record.websocket = conn
        out.append(record)
    return out


def test_tap_reads_websockets_logging_bounded_and_redacted():
    """The tap alone, fed the records websockets logs (the real Frame objects): a whole message from fragments,
    the bound on frames and bytes, the server's close first, and no credential leaving whole."""
    sent: list[dict] = []
    tests = RunningTests()
    tap = WsTap(sent.append, tests, Redactor(), Limits(max_frames=2, frame_bytes=16))
    token = "opaque-query-credential-123456"
    jwt_value = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
    offered = "jwt." + base64.urlsafe_b64encode(jwt_value.encode()).decode().rstrip("=")
    tests.start("t.py::test_x")
    for record in _records(
            _Conn(7),
            ("> GET %s HTTP/1.1", f"/ws?token={token}"), ("> %s: %s", "Host", "127.0.0.1:9"),
            ("> %s: %s", "Authorization", f"Bearer {jwt_value}"), ("> %s: %s", "Sec-WebSocket-Protocol", offered),
            ("< HTTP/1.1 %d %s", 101, "Switching Protocols"), ("< %s: %s", "Sec-WebSocket-Protocol", offered),
            ("= connection is %s", "OPEN"),
            ("< %s", WsFrame(Opcode.TEXT, b'{"type": "connection_', fin=False)),
            ("< %s", WsFrame(Opcode.CONT, b'established"}')),
            ("> %s", WsFrame(Opcode.TEXT, f'{{"echo": "{jwt_value}"}}'.encode())),
            ("< %s", WsFrame(Opcode.BINARY, b"\x00\x01")),  # over max_frames: counted, not sent
            ("< %s", WsFrame(Opcode.CLOSE, (4000).to_bytes(2, "big") + b"bye")),
            ("> %s", WsFrame(Opcode.CLOSE, (4000).to_bytes(2, "big") + b"bye")),
            ("= connection is %s", "CLOSED")):
        tap.handle(record)
    counts = tests.finish("t.py::test_x")
    kinds = [m["type"] for m in sent]
    assert kinds == ["ws_connect", "ws_response", "ws_frame", "ws_frame", "ws_close"]
    dumped = json.dumps(sent)
    assert token not in dumped and jwt_value not in dumped and offered not in dumped
    response = sent[1]
    assert response["status"] == 101 and response["transport"] == ["subprotocol", "header", "query"]
    assert response["request_headers"]["Authorization"].startswith("Bearer eyJhbGciOi…")
    first = sent[2]
    assert (first["dir"], first["size"], first["truncated"]) == ("in", 34, True)
    assert first["text"] == '{"type": "connec'  # 16 bytes kept, the size exact
    assert (counts.frames_in, counts.frames_out, counts.dropped) == (2, 1, 1)
    assert {k: sent[-1][k] for k in ("code", "reason", "by")} == {"code": 4000, "reason": "bye", "by": "server"}
    for record in _records(_Conn(8), ("> GET %s HTTP/1.1", "/ws")):  # no test running: nobody to show it on
        tap.handle(record)
    assert len(sent) == 5


async def test_the_app_shows_a_pytest_run_and_reruns_the_focused_test_alone():
    """`stagewatch pytest examples/e2e --fault closed-before-ready`: every test a row, the failing one focused with
    its close and diagnosis; `r` runs that test alone again."""
    from probes.config import load_config, resolve_target
    from probes.runner import RunOptions
    from tests.test_tui import screen_text, wait_for_run
    from tui.app import StagewatchApp

    config = load_config(None)
    target = resolve_target(config, "sandbox")
    app = StagewatchApp(config, target, RunOptions(fault="closed-before-ready"), None,
                        pytest_args=(*QUIET, str(EXAMPLE), "-k", "with_auth or health"))
    async with app.run_test(size=(120, 35)) as pilot:
        await wait_for_run(app, pilot, timeout=60)
        text = screen_text(app)
        assert "test_websocket_connection_with_auth" in text and "test_health_endpoint_reports_a_build" in text
        assert "closed-before-ready" in text and "'main cleanup'" in text
        failed = app.state.first_failure
        assert failed is not None and failed.startswith("test_websocket_connection_with_auth")
        await pilot.press("r")
        await wait_for_run(app, pilot, runs=2, timeout=60)
        assert app.state.probes[failed].runs == 2
        assert app.state.probes[next(p for p in app.state.probes if p.startswith("test_health"))].runs == 1


def test_a_token_the_suite_minted_itself_never_leaves_whole_in_its_failure_text(tmp_path):
    """pytest shortens long reprs in the middle: 'eyJhbGciOi…nMi...MH0.<signature>' must not keep the signature."""
    import jwt as pyjwt

    suite = tmp_path / "own"
    suite.mkdir()
    token = pyjwt.encode({"sub": "someone", "aud": "x" * 40}, "k" * 40, algorithm="HS256")
    signature = token.rsplit(".", 1)[1]
    (suite / "test_leak.py").write_text(
        f"def test_refused():\n    token = {token!r}\n    assert token == 'something else'\n"
        f"def test_body_alone():\n    assert {token.split('.')[1]!r} == ''\n")
    report = tmp_path / "r.json"
    proc = _stagewatch("run", "--no-record", "--json", str(report), "--pytest", "--", *QUIET, str(suite),
                       cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for text in (proc.stdout, proc.stderr, report.read_text()):
        assert signature not in text and signature[-12:] not in text
        assert token.split(".")[1][10:30] not in text


MIXED = f'''
default_target: sandbox
targets:
  sandbox: {{base_url: sandbox}}
probes:
  - id: health
    priority: 0
    steps: [{{step: http, name: health, path: /health}}]
  - id: suite
    kind: pytest
    args: [{str(EXAMPLE)!r}, -p, no:cacheprovider, -q]
  - id: late-health
    priority: 3
    steps: [{{step: http, name: health, path: /health}}]
'''


async def run_mixed(**options: object) -> Run:
    from probes.config import parse_config
    from probes.runner import run_queue

    config = parse_config(MIXED, "mixed.yaml")
    bus = EventBus()
    run = Run(PytestResult("running"))
    bus.subscribe(run.events.append)
    bus.subscribe(run.model.apply)
    await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(**options))  # type: ignore[arg-type]
    assert not bus.failures, bus.failures
    return run


async def test_probes_and_a_suite_share_one_queue_p0_first():
    """A config entry of kind pytest: its tests join the queue at their own priorities, between the probes."""
    from probes.events import Queued

    run = await run_mixed()
    queued = [e for e in run.events if isinstance(e, Queued)]
    assert queued and sum(len(e.probes) for e in queued) == 9  # every test shown waiting, the first band on
    names = [e.name for e in run.events if isinstance(e, ProbeStarted)]
    order = [n.rsplit("/", 1)[-1] for n in names]
    assert order[0] == "health" and order[1] == HEALTH  # the P0 probe, then the P0 test
    assert order.index("late-health") > order.index(UNKNOWN_FRAME)  # P2 tests before the P3 probe
    assert order.index(RECONNECT) > order.index("late-health")  # the P3 test after the P3 probe
    priorities = [run.model.probes[e.probe_id].priority for e in run.events if isinstance(e, ProbeStarted)]
    assert priorities == sorted(priorities)
    assert run.model.verdict == "pass" and len(run.model.probes) == 11
    report = to_json(run.model)["probes"]  # in the order they ran, tests beside probes
    assert [p["id"] for p in report] == [e.probe_id for e in run.events if isinstance(e, ProbeStarted)]
    assert {p.get("kind") for p in report} == {None, "pytest"}


async def test_a_shared_queue_fails_fast_and_reruns_one_test_alone():
    run = await run_mixed(fault="closed-before-ready", fail_fast=True)
    statuses = run.status()
    assert statuses["health"] == "pass" and statuses[WITH_AUTH] == "fail"
    assert run.probe(WITH_AUTH).diagnoses[0]["code"] == "closed-before-ready"
    assert statuses["late-health"] == "skip" and statuses[RECONNECT] == "skip"
    assert run.probe(RECONNECT).stages["call"].detail == "not run: --fail-fast"  # a later band, never started
    rerun = await run_mixed(only=(run.probe(SYNC).id,))  # `r` on one test of the shared queue
    assert [p.name for p in rerun.model.probes.values() if p.finished] == [SYNC]
    assert rerun.status()[SYNC] == "pass"
