"""The engine end to end against the embedded sandbox: every probe passes when healthy, each fault fails the
stage it targets with the right close code or HTTP status, and reports/recordings keep their contracts."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from probes.bus import EventBus
from probes.config import resolve_target
from probes.events import (Closed, Frame, ProbeFinished, RunFinished, RunStarted, StageFinished, StageStarted,
                           WsOpened)
from probes.recording import Recorder, read_recording
from probes.model import RunModel
from probes.report import write_json, write_junit, write_markdown
from probes.runner import Clock, RunOptions, run_queue
from probes.sandbox import SandboxOptions
from tests.conftest import run_sandbox

DEFAULT_PROBES = ["health", "golden-path", "auth-required", "event-order", "message-flow", "reconnect"]
GOLDEN_STAGES = ["health", "auth", "connect", "handshake", "message", "agent", "response"]


async def test_healthy_sandbox_every_probe_passes(fast_config):
    out = await run_sandbox(fast_config)
    assert out.result.verdict == "pass"
    assert [p.probe_id for p in out.result.probes] == DEFAULT_PROBES
    assert all(p.status == "pass" for p in out.result.probes)
    golden = [e for e in out.events if isinstance(e, StageFinished) and e.probe_id == "golden-path"]
    assert [e.stage for e in golden] == GOLDEN_STAGES
    assert "subprotocol echoed" in out.stage("golden-path", "connect").detail
    assert "5/5 events in order" in out.stage("golden-path", "agent").detail
    assert "The answer to" in out.stage("golden-path", "response").detail
    assert "refused with HTTP 401" in out.stage("auth-required", "connect").detail
    # the golden path's connection was opened with the echoed subprotocol and closed by us with 1000
    opened = next(e for e in out.events if isinstance(e, WsOpened) and e.probe_id == "golden-path")
    assert opened.subprotocol_echoed and opened.subprotocol_echoed.startswith("jwt.")
    close = next(e for e in out.events if isinstance(e, Closed) and e.probe_id == "golden-path")
    assert (close.code, close.by) == (1000, "client")
    # frames: 1 ready + 5 agent events in, 1 message out
    finished = next(p for p in out.result.probes if p.probe_id == "golden-path")
    assert (finished.frames_in, finished.frames_out) == (6, 1)


async def test_priority_order_and_filters(fast_config):
    out = await run_sandbox(fast_config, max_priority=1)
    assert [p.probe_id for p in out.result.probes] == ["health", "golden-path", "auth-required"]
    out = await run_sandbox(fast_config, only=("reconnect",))
    assert [p.probe_id for p in out.result.probes] == ["reconnect"]


async def test_fail_fast_skips_the_rest(fast_config):
    out = await run_sandbox(fast_config, "not-ready", fail_fast=True)
    assert [(p.probe_id, p.status) for p in out.result.probes] == [
        ("health", "fail")] + [(p, "skip") for p in DEFAULT_PROBES[1:]]


# fault -> (probe, failing stage, close code or None, HTTP status or None, text in the detail)
FAULTS = {
    "closed-before-ready": ("golden-path", "handshake", 1000, None, "main cleanup"),
    "auth-rejected": ("golden-path", "connect", None, 403, "HTTP 403"),
    "auth-close": ("golden-path", "handshake", 1008, None, "1008 Policy Violation"),
    "strip-auth": ("golden-path", "connect", None, 401, "HTTP 401"),
    "server-error": ("golden-path", "agent", 1011, None, "1011 Internal Error"),
    "abnormal-close": ("golden-path", "agent", 1006, None, "1006 Abnormal Closure"),
    "restart": ("golden-path", "agent", 1012, None, "1012 Service Restart"),
    "version-mismatch": ("health", "health", None, 200, "2026.10.02-stale"),
    "not-ready": ("health", "health", None, 503, "HTTP 503"),
    "no-upgrade": ("golden-path", "connect", None, 200, "HTTP 200 OK instead of 101"),
    "subprotocol-not-echoed": ("golden-path", "connect", None, 101, "did not echo"),
    "clock-skew": ("golden-path", "connect", None, 401, "HTTP 401"),
    "missing-events": ("golden-path", "agent", None, None, "tool_executing, tool_completed never did"),
    "events-out-of-order": ("golden-path", "agent", None, None, "out of order"),
    "slow-agent": ("golden-path", "agent", None, None, "no agent_completed within"),
    "empty-response": ("golden-path", "response", None, None, "no response text"),
    "error-frame": ("golden-path", "agent", None, None, "agent registry not initialised"),
    "garbage": ("golden-path", "handshake", None, None, "first frame was non-JSON text"),
    "silent": ("golden-path", "handshake", None, None, "no connection_established within"),
    "huge-frame": ("golden-path", "agent", 1009, None, "1009 Message Too Big"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_fails_the_stage_it_targets(fast_config, fault):
    probe, stage, code, status, text = FAULTS[fault]
    out = await run_sandbox(fast_config, fault, only=(probe,), sandbox=SandboxOptions(delay=2.0))
    assert out.result.verdict == "fail"
    failed = out.failed_stage(probe)
    assert failed is not None and failed.stage == stage, failed
    assert text in failed.detail
    # earlier stages passed, later ones were skipped
    stages = [e for e in out.events if isinstance(e, StageFinished) and e.probe_id == probe]
    index = [s.stage for s in stages].index(stage)
    assert all(s.status == "pass" for s in stages[:index])
    assert all(s.status == "skip" for s in stages[index + 1:])
    report = out.probe(probe)
    if code is not None:
        assert report["close"]["code"] == code
    if status is not None:
        assert failed.evidence is not None and getattr(failed.evidence, "http_status") == status


async def test_closed_before_ready_close_details(fast_config):
    out = await run_sandbox(fast_config, "closed-before-ready", only=("golden-path",))
    close = out.probe("golden-path")["close"]
    assert close["code"] == 1000 and close["name"] == "Normal Closure"
    assert close["reason"] == "main cleanup" and close["by"] == "server"
    assert 40 <= close["after_ms"] <= 500
    assert "server closed" in out.stage("golden-path", "handshake").detail


async def test_flood_is_consumed_and_counted(fast_config):
    out = await run_sandbox(fast_config, "flood", only=("golden-path",), sandbox=SandboxOptions(flood=5000))
    assert out.result.verdict == "pass"
    assert out.result.probes[0].frames_in == 1 + 5000 + 5
    assert "+5000 other frames" in out.stage("golden-path", "agent").detail


async def test_auth_required_fails_when_server_accepts_anonymous(fast_config):
    # a config whose auth-required probe sends a token: the sandbox accepts it, so the probe must fail
    probe = next(p for p in fast_config.probes if p.id == "auth-required")
    step = probe.steps[0].model_copy(update={"token": "default"})
    config = fast_config.model_copy(update={"probes": [probe.model_copy(update={"steps": [step]})]})
    out = await run_sandbox(config)
    failed = out.failed_stage("auth-required")
    assert failed is not None and "accepted a connection without a token" in failed.detail


async def test_json_and_junit_reports_follow_the_contract(fast_config):
    out = await run_sandbox(fast_config, "closed-before-ready")
    data = json.loads(write_json(out.summary))
    assert set(data) >= {"target", "started_at", "finished_at", "verdict", "probes"}
    assert data["verdict"] == "fail" and data["target"] == "sandbox"
    golden = next(p for p in data["probes"] if p["id"] == "golden-path")
    assert set(golden) >= {"id", "name", "priority", "status", "duration_ms", "stages", "close", "diagnoses",
                           "frames_in", "frames_out"}
    stage_keys = {"name", "status", "duration_ms", "detail"}
    assert stage_keys <= set(golden["stages"][0]) <= stage_keys | {"hop", "evidence", "timing"}  # who answered; what
    assert set(golden["close"]) == {"code", "name", "reason", "by", "after_ms"}
    assert golden["diagnoses"][0]["code"] == "closed-before-ready"
    assert set(golden["diagnoses"][0]) >= {"code", "summary", "evidence"}
    health = next(p for p in data["probes"] if p["id"] == "health")
    assert health["status"] == "pass" and health["close"] is None and health["diagnoses"] == []

    root = ET.fromstring(write_junit(out.summary))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "6"
    failures = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert failures["health"] is None
    fail = failures["golden-path"]
    assert fail is not None and fail.get("type") == "closed-before-ready"
    assert "handshake: 1000 Normal Closure" in fail.get("message", "")

    md = write_markdown(out.summary)
    assert "## stagewatch: FAIL" in md and "closed-before-ready" in md and "`1000` Normal Closure" in md


async def test_recording_replays_into_the_same_events(fast_config, tmp_path: Path):
    bus = EventBus()
    live: list = []
    bus.subscribe(live.append)
    clock = Clock()
    path = tmp_path / "session.jsonl"
    recorder = Recorder(path, wall0=clock.wall)
    bus.subscribe(recorder.handle)
    await recorder.start()
    target = resolve_target(fast_config, "sandbox")
    await run_queue(fast_config, target, bus, RunOptions(fault="server-error"), clock)
    recorder.close()
    assert path.stat().st_mode & 0o777 == 0o600
    replay = read_recording(path)
    assert not replay.truncated and replay.skipped == 0
    assert replay.events == live
    assert isinstance(replay.events[0], RunStarted) and isinstance(replay.events[-1], RunFinished)
    # the same report comes out of the replay as out of the live run
    live_summary, replay_summary = RunModel(), RunModel()
    for e in live:
        live_summary.apply(e)
    for e in replay.events:
        replay_summary.apply(e)
    assert write_json(live_summary) == write_json(replay_summary)


def test_recording_tolerates_a_truncated_last_line(tmp_path: Path):
    path = tmp_path / "cut.jsonl"
    good = json.dumps({"type": "notice", "t": 0.1, "level": "info", "message": "hello"})
    path.write_text(good + "\n" + good[:20])
    replay = read_recording(path)
    assert replay.truncated and len(replay.events) == 1


async def test_binary_frames_round_trip_through_the_recording(tmp_path: Path):
    path = tmp_path / "bin.jsonl"
    recorder = Recorder(path)
    frame = Frame(0.5, "p", "in", 1.0, 4, b"\x00\xff\x80\x01")
    recorder.handle(frame)
    recorder.close()
    assert read_recording(path).events == [frame]


def test_engine_imports_no_textual():
    code = ("import sys, probes.runner, probes.headless, probes.report, probes.recording, probes.diagnosis, "
            "probes.sandbox; bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'tui')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_probe_finished_counts_match_frames(fast_config):
    out = await run_sandbox(fast_config, only=("message-flow",))
    frames = [e for e in out.events if isinstance(e, Frame)]
    finished = next(e for e in out.events if isinstance(e, ProbeFinished))
    assert finished.frames_in == sum(f.direction == "in" for f in frames) == 11
    assert finished.frames_out == sum(f.direction == "out" for f in frames) == 2


async def test_an_interrupted_run_says_how_each_probe_ended(fast_config):
    """Cancelled mid-run (Ctrl-C, a rerun, quitting): the running probe ends in error at its stage and the probes
    the interrupt kept from running are reported as not run, before RunFinished('interrupted')."""
    import asyncio

    bus = EventBus()
    events: list = []
    bus.subscribe(events.append)
    target = resolve_target(fast_config, "sandbox")
    options = RunOptions(fault="slow-agent", sandbox_options=SandboxOptions(fault="slow-agent", delay=30.0))
    config = fast_config.model_copy(update={"timeouts": fast_config.timeouts.model_copy(update={"agent": 30})})
    task = asyncio.ensure_future(run_queue(config, target, bus, options))
    while not any(isinstance(e, StageStarted) and e.probe_id == "golden-path" and e.stage == "agent" for e in events):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    finished = {e.probe_id: e for e in events if isinstance(e, ProbeFinished)}
    assert (finished["golden-path"].status, finished["golden-path"].failed_stage) == ("error", "agent")
    assert {p: f.status for p, f in finished.items() if p not in ("health", "golden-path")} == {
        "auth-required": "skip", "event-order": "skip", "message-flow": "skip", "reconnect": "skip"}
    skipped = {e.detail for e in events if isinstance(e, StageFinished) and e.probe_id == "reconnect"}
    assert skipped == {"not run: the run was interrupted"}
    assert isinstance(events[-1], RunFinished) and events[-1].verdict == "interrupted"


def test_a_recording_names_its_format_and_older_ones_still_replay(tmp_path: Path):
    """Version 2 starts with a header line; a version 1 recording (no header, evidence as a free dict) replays
    with its evidence kept raw."""
    from probes.evidence import RawEvidence

    path = tmp_path / "v2.jsonl"
    recorder = Recorder(path, wall0=1000.0)
    recorder.handle(StageFinished(0.1, "p", "s", "pass", 1.0, "ok"))
    recorder.close()
    header = json.loads(path.read_text().splitlines()[0])
    assert header == {"type": "recording", "format": "stagewatch", "version": 2, "wall0": 1000.0}
    assert read_recording(path).version == 2
    old = tmp_path / "v1.jsonl"
    old.write_text(json.dumps({"type": "stage_finished", "t": 0.1, "probe_id": "p", "stage": "s", "status": "fail",
                               "duration_ms": 1.0, "detail": "x", "evidence": {"http_status": 401}}) + "\n")
    replay = read_recording(old)
    assert replay.version == 1 and isinstance(replay.events[0].evidence, RawEvidence)
