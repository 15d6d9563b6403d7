"""--metrics-port: the run folded into Prometheus metrics (up/down and monitor state, stage durations, closes by
code, flips, outage seconds, rounds, stage failures, a hold's sessions by state), scraped over HTTP on loopback —
from a headless watch against the sandbox and from `stagewatch run --watch` as a process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probes.config import resolve_target
from probes.events import (Closed, Diagnosed, HoldTick, ProbeFinished, ProbeStarted, RunFinished, RunStarted,
                           SessionChanged, StageFinished, StageStarted)
from probes.headless import HeadlessRequest, _run
from probes.metrics import Metrics
from probes.model import RunModel
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions
from probes.steps.http import HttpEvidence
from probes.watch import History

ROOT = Path(__file__).resolve().parent.parent
STAGEWATCH = [sys.executable, "-m", "tui.cli"]
WALL = time.time() - 3600  # an hour ago: an outage still open has lasted (at least) since then
DEADLINE_S = 30.0


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return _samples(text).get((name, tuple(sorted(labels.items()))))


def _round(model_or_metrics: Metrics, t: float, results: dict[str, tuple[str, float]], build: str = "v1",
           code: str | None = None) -> None:
    """One synthetic round through the listener (which keeps its own model): results = {probe: (status, ms)}."""
    feed = model_or_metrics.handle
    feed(RunStarted(t, "staging", "https://x", tuple((p, p, 0) for p in results), WALL))
    for pid, (status, ms) in results.items():
        feed(ProbeStarted(t, pid, pid, 0, ("health",)))
        feed(StageStarted(t, pid, "health", "http", 5.0, 100.0))
        feed(StageFinished(t + 0.1, pid, "health", status, ms, "", HttpEvidence(http_status=200, version=build)))  # type: ignore[arg-type]
        if status == "fail" and code:
            feed(Closed(t + 0.1, pid, 1000, "Normal Closure", "main cleanup", "server", 50.0, True))
            feed(Diagnosed(t + 0.1, pid, ({"code": code, "summary": "s", "evidence": [], "next_step": ""},)))
        feed(ProbeFinished(t + 0.1, pid, status, ms, "health" if status == "fail" else None, 3, 1))  # type: ignore[arg-type]
    feed(RunFinished(t + 0.2, "fail" if any(s == "fail" for s, _ in results.values()) else "pass", 200.0))


def test_a_watch_folds_into_up_down_flips_outage_seconds_and_rounds():
    m = Metrics()  # its own model (the History's default confirm: 2); the test feeds the listener alone
    _round(m, 0, {"gp": ("pass", 10), "health": ("pass", 4)})
    text = m.exposition().decode()
    assert value(text, "stagewatch_probe_up", probe="gp") == 1
    assert value(text, "stagewatch_probe_state", probe="gp", state="UP") == 1
    assert value(text, "stagewatch_flips_total", probe="gp", to="UP") is None  # the first state is not a flip
    assert value(text, "stagewatch_stage_duration_seconds_count", probe="gp", stage="health") == 1
    assert value(text, "stagewatch_stage_duration_seconds_sum", probe="gp", stage="health") == pytest.approx(0.01)
    assert value(text, "stagewatch_build_info", build="v1") == 1

    _round(m, 10, {"gp": ("fail", 10), "health": ("pass", 4)}, build="v2", code="closed-before-ready")
    text = m.exposition().decode()
    assert value(text, "stagewatch_probe_up", probe="gp") == 0
    assert value(text, "stagewatch_probe_state", probe="gp", state="PENDING") == 1
    assert value(text, "stagewatch_build_info", build="v1") is None  # only the build reported last
    assert value(text, "stagewatch_build_info", build="v2") == 1
    _round(m, 20, {"gp": ("fail", 10), "health": ("pass", 4)}, build="v2", code="closed-before-ready")
    text = m.exposition().decode()
    assert value(text, "stagewatch_probe_state", probe="gp", state="DOWN") == 1
    assert value(text, "stagewatch_outages_total", probe="gp") == 1
    open_for = value(text, "stagewatch_outage_seconds_total", probe="gp")
    assert open_for is not None and open_for >= 3600 - 10  # still down: it counts up to now
    _round(m, 30, {"gp": ("fail", 10), "health": ("pass", 4)}, build="v2", code="closed-before-ready")
    _round(m, 40, {"gp": ("pass", 10), "health": ("pass", 4)}, build="v2")
    text = m.exposition().decode()
    assert value(text, "stagewatch_probe_up", probe="gp") == 1
    assert value(text, "stagewatch_probe_state", probe="gp", state="DOWN") == 0
    for to in ("PENDING", "DOWN", "UP"):
        assert value(text, "stagewatch_flips_total", probe="gp", to=to) == 1, to
    # the outage ended: never less than the counter said (it said more while open), at least its 30 s
    assert value(text, "stagewatch_outage_seconds_total", probe="gp") >= open_for
    assert value(text, "stagewatch_rounds_total", verdict="fail") == 3
    assert value(text, "stagewatch_rounds_total", verdict="pass") == 2
    assert value(text, "stagewatch_stage_failures_total", probe="gp", stage="health", status="fail") == 3
    assert value(text, "stagewatch_close_total", probe="gp", code="1000", by="server") == 3
    assert value(text, "stagewatch_diagnoses_total", probe="gp", code="closed-before-ready") == 3
    assert value(text, "stagewatch_probe_runs_total", probe="gp", status="pass") == 2
    assert value(text, "stagewatch_frames_total", probe="health", direction="in") == 15
    assert value(text, "stagewatch_stage_duration_seconds_count", probe="gp", stage="health") == 2  # passes only
    assert value(text, "stagewatch_probe_up", probe="health") == 1


def test_an_ended_outage_counts_its_own_duration():
    m = Metrics()  # its own model (History confirm=2)
    for t, status in ((0, "pass"), (10, "fail"), (20, "fail"), (40, "pass")):
        _round(m, t, {"gp": (status, 10)}, code="server-error")
    text = m.exposition().decode()
    assert value(text, "stagewatch_outage_seconds_total", probe="gp") == pytest.approx(30.0)  # t=10 → t=40


def test_a_holds_sessions_by_state_ends_by_code_and_reconnects():
    m = Metrics()
    feed = m.handle
    feed(ProbeStarted(0, "held", "held", 0, ("hold",)))
    for n in (1, 2, 3):
        feed(SessionChanged(0.1, "held", n, "opened", WALL))
    feed(HoldTick(1.0, "held", 3, 0, 3, 0, 2.0, 3.0, "v1", rtts=((1, 2.0), (2, 3.0), (3, 2.5))))
    feed(SessionChanged(2.0, "held", 1, "ended", WALL + 2, code=1012, name="Service Restart", by="server"))
    feed(SessionChanged(2.0, "held", 2, "ended", WALL + 2, code=None, by="none"))
    text = m.exposition().decode()
    assert value(text, "stagewatch_held_sessions", probe="held", state="open") == 1
    assert value(text, "stagewatch_held_sessions", probe="held", state="ended") == 2
    assert value(text, "stagewatch_held_session_ends_total", probe="held", code="1012") == 1
    assert value(text, "stagewatch_held_session_ends_total", probe="held", code="1006") == 1
    assert value(text, "stagewatch_held_ping_rtt_seconds_count", probe="held") == 3
    feed(SessionChanged(3.0, "held", 1, "reopened", WALL + 3, reconnect_ms=800.0, build="v2"))
    feed(HoldTick(4.0, "held", 2, 1, 6, 2, 2.0, 3.0, "v2"))
    text = m.exposition().decode()
    assert value(text, "stagewatch_held_sessions", probe="held", state="open") == 2
    assert value(text, "stagewatch_held_sessions", probe="held", state="ended") == 1
    assert value(text, "stagewatch_held_reconnect_seconds_sum", probe="held") == pytest.approx(0.8)
    assert value(text, "stagewatch_held_pings_missed_total", probe="held") == 2


async def test_a_held_rolling_restart_shows_in_the_session_metrics():
    from probes.bus import EventBus
    from probes.config import parse_config

    config = parse_config("""
default_target: sandbox
targets:
  sandbox: {base_url: sandbox}
timeouts: {http: 2, connect: 3, ready: 2, agent: 3, response: 1, close: 1}
probes:
  - id: held
    priority: 1
    steps: [{step: hold, name: hold, sessions: 10, for: 3s, heartbeat: 0.3s, stagger: 0.1s, reconnect: true}]
""", "hold.yaml")
    bus = EventBus()
    metrics = Metrics()
    bus.subscribe(metrics.handle)
    options = SandboxOptions(fault="rolling-restart", rolling_at=0.6, drain_s=0.5, drop_every=5, refuse_s=0.4)
    async with Sandbox(options) as sb:
        await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(sandbox=sb))
    assert not bus.failures, bus.failures
    text = metrics.exposition().decode()
    assert value(text, "stagewatch_held_session_ends_total", probe="held", code="1012") == 8
    assert value(text, "stagewatch_held_session_ends_total", probe="held", code="1006") == 2
    assert value(text, "stagewatch_held_reconnect_seconds_count", probe="held") == 10
    assert value(text, "stagewatch_held_sessions", probe="held", state="closed") == 10  # the hold over: ours
    assert (value(text, "stagewatch_held_ping_rtt_seconds_count", probe="held") or 0) > 0
    assert value(text, "stagewatch_diagnoses_total", probe="held", code="drained-by-deploy") == 1


def _scrape(port: int) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return resp.read().decode()


async def test_a_headless_watch_against_the_sandbox_is_scraped_over_http(fast_config):
    sandbox = await Sandbox(SandboxOptions(fault="closed-before-ready")).start()
    summary = RunModel(History(confirm=2))
    metrics = Metrics(summary)
    port = metrics.serve(0)
    scraped: list[str] = []
    try:
        assert port > 0
        target = resolve_target(fast_config, "sandbox")
        req = HeadlessRequest(fast_config, target, RunOptions(sandbox=sandbox, env={}, only=("health", "golden-path")),
                              watch=0.05, count=3, quiet=True, bell=False)
        code = await asyncio.wait_for(_run(req, summary, [], [metrics.handle]), DEADLINE_S)
        scraped.append(await asyncio.to_thread(_scrape, port))  # the server thread answers while the loop runs
    finally:
        metrics.close()
        await sandbox.stop()
    assert code == 1
    text = scraped[0]
    assert value(text, "stagewatch_rounds_total", verdict="fail") == 3
    assert value(text, "stagewatch_probe_up", probe="health") == 1
    assert value(text, "stagewatch_probe_up", probe="golden-path") == 0
    assert value(text, "stagewatch_probe_state", probe="golden-path", state="DOWN") == 1
    assert value(text, "stagewatch_flips_total", probe="golden-path", to="DOWN") == 1
    assert value(text, "stagewatch_outages_total", probe="golden-path") == 1
    assert value(text, "stagewatch_outage_seconds_total", probe="golden-path") > 0
    assert value(text, "stagewatch_close_total", probe="golden-path", code="1000", by="server") == 3
    assert value(text, "stagewatch_stage_failures_total", probe="golden-path", stage="handshake",
                 status="fail") == 3
    assert value(text, "stagewatch_diagnoses_total", probe="golden-path", code="closed-before-ready") == 3
    assert value(text, "stagewatch_stage_duration_seconds_count", probe="golden-path", stage="connect") == 3
    assert value(text, "stagewatch_build_info", build=sandbox.build) == 1
    with pytest.raises(OSError):  # closed: nothing answers any more
        _scrape(port)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET_KEY", "STAGEWATCH_CONFIG", "NO_COLOR")
           and not k.startswith("OTEL_")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def test_stagewatch_run_watch_serves_metrics_while_it_runs(tmp_path):
    proc = subprocess.Popen([*STAGEWATCH, "run", "--watch", "0.2", "--only", "health", "--only", "golden-path",
                             "--no-record", "--metrics-port", "0"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # said before the first round
        found = re.fullmatch(r"stagewatch: metrics: http://127\.0\.0\.1:(\d+)/metrics\n", line)
        assert found, line
        port = int(found.group(1))
        deadline = time.monotonic() + DEADLINE_S
        ready = threading.Event()
        text = ""
        while time.monotonic() < deadline:  # rounds go on: scrape until two of them are counted
            text = _scrape(port)
            if (value(text, "stagewatch_rounds_total", verdict="pass") or 0) >= 2:
                ready.set()
                break
            ready.wait(0.1)
        assert ready.is_set(), text
        assert value(text, "stagewatch_probe_up", probe="golden-path") == 1
        assert value(text, "stagewatch_probe_state", probe="golden-path", state="UP") == 1
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    with pytest.raises(OSError):
        _scrape(port)


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([*STAGEWATCH, "run", "--only", "health", "--no-record", "--metrics-port", str(port)],
                             cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"stagewatch: error: --metrics-port {port}: ") and out.stderr.count("\n") == 1
    assert out.stdout == ""


def test_metrics_host_goes_with_metrics_port(tmp_path):
    out = subprocess.run([*STAGEWATCH, "run", "--metrics-host", "127.0.0.1", "--no-record"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--metrics-host goes with --metrics-port" in out.stderr


async def test_the_app_serves_metrics(fast_config) -> None:  # type: ignore[no-untyped-def]
    """`stagewatch --metrics-port N` (the app): /metrics from the engine's events while the app shows them."""
    from probes.telemetry import Telemetry
    from tests.test_tui import wait_for_run
    from tui.app import StagewatchApp

    telemetry = Telemetry(target="sandbox", metrics_port=0, quiet=True)
    app = StagewatchApp(fast_config, resolve_target(fast_config, "sandbox"),
                        RunOptions(fault="closed-before-ready", only=("health", "golden-path")), None,
                        telemetry=telemetry)
    try:
        async with app.run_test(size=(120, 35)) as pilot:
            await wait_for_run(app, pilot)
            assert telemetry.url is not None and app.options.trace is False  # no --otlp: no traceparent
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(telemetry.url, timeout=5).read().decode())
    finally:
        telemetry.close()
    runs = {(s.labels["probe"], s.labels["status"]): s.value for f in text_string_to_metric_families(body)
            if f.name == "stagewatch_probe_runs" for s in f.samples if s.name.endswith("_total")}
    assert runs == {("health", "pass"): 1.0, ("golden-path", "fail"): 1.0}, runs
    assert 'stagewatch_diagnoses_total{code="closed-before-ready",probe="golden-path"} 1.0' in body
    assert 'stagewatch_close_total{by="server",code="1000",probe="golden-path"} 1.0' in body


def test_outside_text_in_labels_is_made_visible():
    """A build a server reports (or a probe id a config names) with escapes and a bell: shown, never sent raw."""
    m = Metrics()
    hostile = "v2\x1b[2J\x1b]0;PWNED\x07\x9b\u202e"
    _round(m, 0, {"gp\x1b[31m": ("pass", 10)}, build=hostile)
    text = m.exposition().decode()
    assert not any(c in text for c in "\x1b\x07\x9b\u202e"), text
    assert 'build="v2\\\\x1b[2J' in text or "v2\\x1b[2J" in text  # the escape shown as text
