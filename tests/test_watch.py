"""Watching a deploy: rounds folded into monitor states (PENDING → DOWN after `confirm` failures, DEGRADED, UP),
flips, outages with their duration, build changes; the headless watch's lines, --until-version, --jsonl,
--on-change, the JSON/Markdown of a whole watch, and a broken pipe that loses no report."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probes.bus import EventBus
from probes.config import Config, load_config, resolve_target
from probes.events import (Diagnosed, ProbeFinished, ProbeStarted, RunFinished, RunStarted, StageFinished,
                           StageStarted)
from probes.headless import HeadlessRequest, _run
from probes.model import RunModel
from probes.report import to_json, write_markdown
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions
from probes.sandbox.deploy import parse_deploy
from probes.steps.http import HttpEvidence
from probes.durations import parse_duration
from probes.watch import History

WALL = 1_780_000_000.0


def _round(model: RunModel, t: float, results: dict[str, tuple[str, float]], build: str | None = "v1",
           code: str | None = None) -> None:
    """Fold one synthetic round: results = {probe: (status, ms of its one stage)}."""
    model.apply(RunStarted(t, "staging", "https://x", tuple((p, p, 0) for p in results), WALL))
    for pid, (status, ms) in results.items():
        model.apply(ProbeStarted(t, pid, pid, 0, ("health",)))
        model.apply(StageStarted(t, pid, "health", "http", 5.0, 100.0))
        ev = HttpEvidence(http_status=200 if build else None, version=build)
        model.apply(StageFinished(t + 0.1, pid, "health", status, ms, "", ev))  # type: ignore[arg-type]
        if status == "fail" and code:
            model.apply(Diagnosed(t + 0.1, pid, ({"code": code, "summary": "s", "evidence": [], "next_step": ""},)))
        model.apply(ProbeFinished(t + 0.1, pid, status, ms, "health" if status == "fail" else None, 0, 0))  # type: ignore[arg-type]
    model.apply(RunFinished(t + 0.2, "fail" if any(s == "fail" for s, _ in results.values()) else "pass", 200.0))


def test_a_probe_is_pending_then_down_after_confirm_failures_and_up_after_one_pass():
    model = RunModel(History(confirm=2))
    _round(model, 0, {"gp": ("pass", 10)})
    _round(model, 10, {"gp": ("fail", 10)}, build="v2", code="closed-before-ready")
    assert model.history.state("gp") == "PENDING"
    assert not model.history.outages  # not confirmed yet
    _round(model, 20, {"gp": ("fail", 10)}, build="v2", code="closed-before-ready")
    assert model.history.state("gp") == "DOWN"
    _round(model, 30, {"gp": ("fail", 10)}, build="v2", code="closed-before-ready")
    _round(model, 40, {"gp": ("pass", 10)}, build="v2")
    h = model.history
    assert h.state("gp") == "UP"
    assert [(f.before, f.after) for f in h.flips] == [(None, "UP"), ("UP", "PENDING"), ("PENDING", "DOWN"),
                                                       ("DOWN", "UP")]
    (outage,) = h.outages
    assert outage.duration_s == pytest.approx(30.0)  # from the first failing round to the first passing one
    assert (outage.rounds, outage.first_diagnosis, outage.first_stage, outage.builds) == (
        3, "closed-before-ready", "health", ["v2"])
    assert [b.build for b in h.builds] == ["v1", "v2"]
    texts = [c.text for c in h.timeline]
    assert "gp DOWN at health — closed-before-ready (build v1 → v2)" in texts
    assert texts[-1] == "gp UP — outage 30 s, 3 rounds (build v2)"
    report = to_json(model)
    assert [r["probes"]["gp"] for r in report["rounds"]] == ["pass", "fail", "fail", "fail", "pass"]
    assert [r["states"]["gp"] for r in report["rounds"]] == ["UP", "PENDING", "DOWN", "DOWN", "UP"]
    assert report["outages"][0]["end"] is not None and report["outages"][0]["duration_s"] == 30.0
    assert report["flips"][2] == {**report["flips"][2], "from": "PENDING", "to": "DOWN", "probe": "gp",
                                  "stage": "health", "diagnosis": "closed-before-ready", "build": "v2"}


def test_one_failure_between_passes_is_pending_and_no_outage():
    model = RunModel(History(confirm=2))
    for t, status in enumerate(["pass", "fail", "pass"]):
        _round(model, t * 10, {"gp": (status, 10)})
    assert model.history.state("gp") == "UP"
    assert not model.history.outages
    assert [f.after for f in model.history.flips] == ["UP", "PENDING", "UP"]


def test_a_new_cause_while_down_is_told_and_kept_with_the_outage():
    """v2 first refuses (503), then crashes on every message: the crash must not hide behind the first cause."""
    model = RunModel(History(confirm=2))
    _round(model, 0, {"gp": ("pass", 10)})
    for t in (10, 20):
        _round(model, t, {"gp": ("fail", 10)}, build="v2", code="not-ready")
    _round(model, 30, {"gp": ("fail", 10)}, build="v2", code="server-error")
    _round(model, 40, {"gp": ("fail", 10)}, build="v2", code="server-error")
    texts = [c.text for c in model.history.timeline]
    assert texts.count("gp still DOWN — now server-error at health (build v2)") == 1, texts
    assert model.history.outages[0].causes == ["not-ready at health", "server-error at health"]
    md = write_markdown(model)
    assert "not-ready at health → server-error at health" in md


def test_only_confirmed_changes_ring_the_bell():
    model = RunModel(History(confirm=2))
    for t, status in enumerate(["pass", "fail", "pass", "fail", "fail", "pass"]):
        _round(model, t * 10, {"gp": (status, 10)}, code="x")
    flips = list(model.history.flips)
    assert [(f.before, f.after, f.alerting) for f in flips] == [
        (None, "UP", False), ("UP", "PENDING", False), ("PENDING", "UP", False), ("UP", "PENDING", False),
        ("PENDING", "DOWN", True), ("DOWN", "UP", True)]


def test_a_nested_build_is_found():
    from probes.steps.http import version_of

    assert version_of({"status": "ok", "build": {"version": "v3"}}, "version") == "v3"
    assert version_of({"meta": {"git_sha": "7f3a9c1"}}, "meta.git_sha") == "7f3a9c1"
    assert version_of({"status": "ok"}, "version") is None


def test_a_slow_pass_is_degraded_and_an_open_outage_has_no_end():
    model = RunModel(History(confirm=1))
    _round(model, 0, {"gp": ("pass", 150)})  # the stage announced degraded_ms=100
    assert model.history.state("gp") == "DEGRADED"
    assert model.history.current.probes["gp"].cell == "degraded"
    assert model.history.timeline[-1].text == "gp DEGRADED — health 150 ms, over 100 ms (build v1)"
    _round(model, 10, {"gp": ("fail", 10)}, code="x")
    assert model.history.state("gp") == "DOWN"  # confirm=1
    assert to_json(model)["outages"][0]["end"] is None
    assert "still down" in write_markdown(model)
    series, p50, p95 = model.history.latency("gp", "health")
    assert series == [150] and p50 == p95 == 150


def test_round_detail_is_kept_for_the_last_rounds_only_and_summaries_are_capped():
    model = RunModel(History(confirm=2, keep_rounds=3, keep_summaries=5))
    for n in range(8):
        _round(model, n * 10, {"gp": ("pass", 10)})
    rounds = list(model.history.rounds)
    assert [r.n for r in rounds] == [4, 5, 6, 7, 8]
    assert [r.detail is not None for r in rounds] == [False, False, True, True, True]
    assert rounds[-1].detail["gp"].stages["health"].status == "pass"  # a snapshot of that round's probe
    assert model.history.round(6) is rounds[2] and model.history.round(1) is None


def test_durations_parse_and_bad_ones_say_what_to_write():
    assert [parse_duration(x) for x in ("10s", "2", "500ms", "1.5m", "1h")] == [10, 2, 0.5, 90, 3600]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("ten")


# --- against a sandbox playing a deploy, through the headless watch -----------------------------------------------

def _request(config: Config, sandbox: Sandbox, tmp_path: Path, **kw: object) -> HeadlessRequest:
    target = resolve_target(config, "sandbox")
    return HeadlessRequest(config, target, RunOptions(sandbox=sandbox, env={}), **kw)  # type: ignore[arg-type]


async def test_a_scripted_deploy_shows_the_flips_the_outage_and_the_build_change(fast_config, tmp_path, capsys):
    interval = 0.25
    script = "0s ok@v1, 0.6s closed-before-ready@v2, 1.8s ok@v2"
    sb = Sandbox(SandboxOptions(deploy=parse_deploy(script)))
    await sb.start()
    summary = RunModel(History(confirm=2))
    try:
        req = _request(fast_config, sb, tmp_path, watch=interval, until_version="v2", bell=False,
                       jsonl_path=tmp_path / "w.jsonl")
        req.options.only = ("health", "golden-path")
        code = await asyncio.wait_for(_run(req, summary, []), 20)
    finally:
        await sb.stop()
    assert code == 0  # --until-version: v2 landed and the round passed
    h = summary.history
    assert h.current.build == "v2" and h.current.verdict == "pass"
    assert [b.build for b in h.builds] == ["v1", "v2"]
    gp = [(f.before, f.after) for f in h.flips if f.probe == "golden-path"]
    assert gp == [(None, "UP"), ("UP", "PENDING"), ("PENDING", "DOWN"), ("DOWN", "UP")]
    (outage,) = [o for o in h.outages if o.probe == "golden-path"]
    assert outage.first_diagnosis == "closed-before-ready" and outage.first_stage == "handshake"
    assert abs(outage.duration_s - 1.2) <= interval + 0.35, outage  # the fault lasted 1.2 s: within one interval
    out = capsys.readouterr().out
    assert "golden-path DOWN at handshake — closed-before-ready (build v1 → v2)" in out
    assert "golden-path UP — outage" in out
    lines = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert len(lines) == h.total_rounds and lines[-1]["build"] == "v2" and lines[-1]["verdict"] == "pass"
    assert any(f["to"] == "DOWN" for line in lines for f in line["flips"])
    # the round lines: one per round, with the build and a glyph per probe
    round_lines = [line for line in out.splitlines() if " #" in line and ("PASS" in line or "FAIL" in line)]
    assert len(round_lines) == h.total_rounds and "v1" in round_lines[0] and "✓✓" in round_lines[0]


async def test_when_nothing_listens_later_probes_are_not_attempted_never_secret_missing(fast_config):
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    bus, model = EventBus(), RunModel()
    bus.subscribe(model.apply)
    target = resolve_target(fast_config, url=f"http://127.0.0.1:{port}")
    await run_queue(fast_config, target, bus, RunOptions(env={}))  # no JWT secret at all
    codes = {p.id: [d["code"] for d in p.diagnoses] for p in model.ordered()}
    assert codes["health"] == ["dns-or-refused"]
    assert all(c == ["target-unreachable"] for pid, c in codes.items() if pid != "health"), codes
    assert all(p.last_result().startswith("not attempted: target unreachable") for p in model.ordered()[1:])


async def test_on_change_gets_each_flip_as_json_on_stdin(fast_config, tmp_path):
    sb = Sandbox(SandboxOptions(build="v1"))
    await sb.start()
    sink = tmp_path / "flips.jsonl"
    summary = RunModel(History(confirm=1))
    try:
        req = _request(fast_config, sb, tmp_path, watch=0.05, count=1, bell=False,
                       on_change=f"cat >> {sink}")
        req.options.only = ("golden-path",)
        await _run(req, summary, [])
        sb.switch(fault="closed-before-ready")
        req.count = 1
        await _run(req, summary, [])
    finally:
        await sb.stop()
    flips = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [(f["probe"], f["from"], f["to"]) for f in flips] == [("golden-path", "UP", "DOWN")]
    assert flips[0]["build"] == "v1" and flips[0]["diagnosis"] == "closed-before-ready"
    assert "golden-path DOWN at handshake" in flips[0]["text"]


def test_a_closed_pipe_and_ctrl_c_keep_the_reports_and_exit_130(tmp_path):
    """`stagewatch run --watch 2 2>&1 | tee log`, then Ctrl-C: tee dies first, the reports must still be written."""
    report = tmp_path / "r.json"
    read, write = os.pipe()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "stagewatch"), "run", "--watch", "0.1s", "--no-record", "--only",
                             "health", "--json", str(report)], stdout=write, stderr=write,
                            cwd=tmp_path)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert b"stagewatch" in pipe.readline()  # it runs; now the reader goes away, as tee does on Ctrl-C
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:  # it keeps running into the closed pipe
        try:
            proc.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    data = json.loads(report.read_text())
    assert data["rounds"] and "outages" in data and "flips" in data and "builds" in data
    assert data["verdict"] == "interrupted"  # stopped, even between rounds
    assert data["started_at"] == data["rounds"][0]["started_at"]  # the watch's start, not the last round's


async def test_replay_of_a_watch_recording_tells_the_same_outages(fast_config, tmp_path):
    from click.testing import CliRunner

    from tui.cli import main

    sb = Sandbox(SandboxOptions(build="v1"))
    await sb.start()
    summary = RunModel(History(confirm=2))
    rec = tmp_path / "watch.jsonl"
    try:
        req = _request(fast_config, sb, tmp_path, watch=0.05, count=1, bell=False, quiet=True, record_path=rec)
        req.options.only = ("golden-path",)
        for fault in ("none", "closed-before-ready", "closed-before-ready", "none"):
            sb.switch(fault=fault)
            await _run(req, summary, [])
    finally:
        await sb.stop()
    live = to_json(summary)
    assert [o["probe"] for o in live["outages"]] == ["golden-path"]
    result = CliRunner().invoke(main, ["replay", str(rec), "--json"])
    replayed = json.loads(result.output)
    for key in ("rounds", "flips", "outages", "builds"):
        assert replayed[key] == live[key], key
    md = CliRunner().invoke(main, ["replay", str(rec), "--markdown"]).output
    assert md.index("**Outages**") < md.index("| P | probe |")
    assert "closed-before-ready at handshake" in md


def test_a_probe_interrupted_mid_stage_is_not_a_failure():
    model = RunModel(History(confirm=1))
    _round(model, 0, {"gp": ("pass", 10)})
    model.apply(RunStarted(10, "staging", "https://x", (("gp", "gp", 0),), WALL))
    model.apply(ProbeStarted(10, "gp", "gp", 0, ("health",)))
    model.apply(StageStarted(10, "gp", "health", "http", 5.0))
    model.apply(ProbeFinished(10.5, "gp", "error", 500.0, "health", 0, 0))  # cancelled: no StageFinished
    model.apply(RunFinished(10.5, "interrupted", 500.0))
    assert model.history.state("gp") == "UP" and model.history.current.probes["gp"].cell == "skip"


def test_a_probe_stopped_mid_stage_is_not_a_failed_check():
    """q or Ctrl-C during a round: the stage ends 'interrupted' (error); the history cell says not run, not fail."""
    from probes.events import ProbeFinished, ProbeStarted, StageFinished, StageStarted
    from probes.model import ProbeModel
    from probes.watch import _cell

    probe = ProbeModel("reconnect", "reconnect", 3)
    for e in (ProbeStarted(0.0, "reconnect", "reconnect", 3, ("connect", "close")),
              StageStarted(0.0, "reconnect", "connect", "connect", 5.0),
              StageFinished(0.1, "reconnect", "connect", "pass", 10.0, "101"),
              StageStarted(0.1, "reconnect", "close", "close", 5.0),
              StageFinished(0.2, "reconnect", "close", "error", 10.0, "interrupted"),
              ProbeFinished(0.2, "reconnect", "error", 200.0, "close", 0, 0)):
        probe.apply(e)
    assert _cell(probe)[0] == "skip"


def test_the_header_counts_a_stopped_probe_as_stopped_not_failed():
    from probes.events import ProbeFinished, ProbeStarted, RunStarted, StageFinished, StageStarted
    from probes.model import RunModel

    model = RunModel()
    for e in (RunStarted(0.0, "t", "http://x", (("a", "a", 0),), 1.0), ProbeStarted(0.0, "a", "a", 0, ("agent",)),
              StageStarted(0.0, "a", "agent", "expect_events", 5.0),
              StageFinished(0.2, "a", "agent", "error", 10.0, "interrupted"),
              ProbeFinished(0.2, "a", "error", 200.0, "agent", 0, 0)):
        model.apply(e)
    counts = model.counts()
    assert counts["stopped"] == 1 and counts["error"] == 0 and counts["fail"] == 0
