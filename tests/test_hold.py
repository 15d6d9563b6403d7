"""Sessions held through a rollout (the `hold` step): against the sandbox's rolling restart, its idle timeout and
a server of the test's own, the summary's exact counts (closes by code, reconnects, runs lost, pings) and the
diagnosis that names the pattern; the JSON report's `sessions` object; the Sessions view in the app."""

from __future__ import annotations

import json

import pytest

from probes.bus import EventBus
from probes.config import parse_config, resolve_target
from probes.events import HoldTick, SessionChanged
from probes.model import RunModel
from probes.report import to_json
from probes.runner import RunOptions, run_queue
from probes.sandbox import Sandbox, SandboxOptions
from tests.test_tui import SIZE, wait_until  # noqa: F401
from tui.app import StagewatchApp
from tui.widgets.sessions import SessionsPane, sparkline

CONFIG = """
default_target: sandbox
targets:
  sandbox: {{base_url: sandbox}}
timeouts: {{http: 2, connect: 3, ready: 2, agent: 3, response: 1, close: 1}}
probes:
  - id: held
    priority: 1
    steps: [{{step: hold, name: hold, sessions: {k}, for: {for_s}s, heartbeat: {beat}s, stagger: {stagger}s{extra}}}]
"""


async def hold(k: int, for_s: float, sandbox: SandboxOptions, *, beat: float = 0.3, extra: str = "",
               stagger: float = 0.2) -> RunModel:
    config = parse_config(CONFIG.format(k=k, for_s=for_s, beat=beat, extra=extra, stagger=stagger), "hold.yaml")
    bus, model = EventBus(), RunModel()
    bus.subscribe(model.apply)
    async with Sandbox(sandbox) as sb:
        await run_queue(config, resolve_target(config, "sandbox"), bus, RunOptions(sandbox=sb))
    assert not bus.failures, bus.failures
    return model


async def test_a_rolling_restart_drains_drops_and_they_come_back_on_the_new_build():
    options = SandboxOptions(fault="rolling-restart", rolling_at=0.6, drain_s=0.5, drop_every=10, refuse_s=0.4)
    model = await hold(20, 3.5, options, extra=", reconnect: true")
    probe = model.probes["held"]
    s = probe.hold.summary()
    assert (s["opened"], s["closed_total"], s["by_code"]) == (20, 20, {"1006": 2, "1012": 18})
    assert s["reconnects"] == 20 and s["reconnect_ms"]["max"] is not None
    assert s["window"]["seconds"] <= 0.5 + 0.3  # the drain window
    assert set(s["reconnect_builds"]) - {"?"} and all("v" not in b or b for b in s["reconnect_builds"])
    assert sorted(e["id"] for e in s["closed"] if e["code"] == 1006) == [10, 20]  # every 10th, by open order
    assert all(e["reason"] == "service restart" and e["by"] == "server" for e in s["closed"] if e["code"] == 1012)
    codes = [d["code"] for d in probe.diagnoses]
    assert codes[0] == "drained-by-deploy", codes
    assert probe.status == "fail" and probe.stages["hold"].status == "fail"
    report = to_json(model)["probes"][0]["sessions"]
    assert report["by_code"] == {"1006": 2, "1012": 18} and report["diagnoses"][0] == "drained-by-deploy"
    assert {"opened", "open", "closed", "by_code", "reconnect_ms", "pings_missed"} <= set(report)


async def test_without_reconnect_the_sessions_stay_gone_and_a_run_in_flight_is_lost():
    options = SandboxOptions(fault="rolling-restart", rolling_at=0.8, drain_s=0.2, drop_every=0, refuse_s=0.2,
                             step_delay=1.0)  # a slow agent: the run sent at 0.6 s is still in flight at the drain
    model = await hold(4, 2.0, options, extra=", message_every: 0.5s")
    s = model.probes["held"].hold.summary()
    assert s["by_code"] == {"1012": 4} and s["reconnects"] == 0 and s["open"] == 0
    assert s["runs_lost"] == 4


async def test_an_idle_timeout_ends_every_session_at_one_age():
    model = await hold(6, 3.2, SandboxOptions(fault="idle-timeout", idle_after_s=1.0), beat=0.25, stagger=1.5)
    probe = model.probes["held"]
    s = probe.hold.summary()
    first = [e for e in s["closed"]][:6]
    assert {e["code"] for e in first} == {1006} and all(abs(e["age_s"] - 1.0) < 0.3 for e in first)
    assert "idle-timeout" in [d["code"] for d in probe.diagnoses]
    assert s["pings_missed"] == 0 and s["pings_sent"] > 6


async def test_a_healthy_hold_passes_with_its_pings_counted():
    model = await hold(10, 1.2, SandboxOptions())
    probe = model.probes["held"]
    s = probe.hold.summary()
    assert probe.status == "pass" and s["closed_total"] == 0 and s["opened"] == 10
    assert s["pings_sent"] >= 10 and s["pings_missed"] == 0 and s["rtt_ms"]["p95"] is not None
    assert "none disrupted" in probe.stages["hold"].detail


async def test_the_sessions_view_shows_each_session_and_how_it_ended():
    config = parse_config(CONFIG.format(k=6, for_s=2.5, beat=0.3, extra=", reconnect: false", stagger=0.2),
                          "hold.yaml")
    sandbox = SandboxOptions(fault="rolling-restart", rolling_at=0.7, drain_s=0.3, drop_every=3, refuse_s=0.3)
    app = StagewatchApp(config, resolve_target(config, "sandbox"), RunOptions(sandbox_options=sandbox), None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state.finished is not None and not app.state.running, 15)
        await pilot.pause(0.6)
        pane = app.query_one("#sessions", SessionsPane)
        assert pane.display and not app.query_one("#frames-box").display
        from tests.test_tui import screen_text
        text = screen_text(app)
        assert "held 6:" in text and "1012 ×4, 1006 ×2" in text
        assert "1006 dropped (no close frame)" in text and "1012 Service Restart 'service restart'" in text
        pane.query_one("#sessions-table").focus()
        await pilot.press("down", "down")  # session 3: every 3rd is dropped
        await wait_until(pilot, lambda: pane.selected == 3, 5)
        await pilot.pause(0.2)
        from tests.test_tui import pane_text
        close = pane_text(app, "#close")
        assert "1006" in close and "dropped" in close, close


def test_sparkline_and_events_round_trip():
    assert sparkline([1, 2, 3, 4]) == "▁▃▅█" and sparkline([]) == ""
    from probes.events import from_record, to_record
    tick = HoldTick(1.0, "held", 3, 0, 9, 1, 1.5, 2.5, "v2", ((1, 1.2), (2, 1.4)), (3,))
    assert from_record(json.loads(json.dumps(to_record(tick)))) == tick
    change = SessionChanged(1.0, "held", 2, "ended", 1700000000.0, 1012, "Service Restart", "service restart",
                            "server", 3.2, "v1", True)
    assert from_record(json.loads(json.dumps(to_record(change)))) == change


def test_a_watch_holds_sessions_beside_its_rounds_and_tells_their_drops(tmp_path):
    """`run --watch`: the hold runs once beside the rounds; a rollout's drops and returns are timeline lines."""
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(k=10, for_s=8, beat=0.5, stagger=0.3, extra=", reconnect: true").replace(
        "probes:\n", "probes:\n  - id: health\n    priority: 0\n    steps: [{step: http, name: health}]\n"))
    out = subprocess.run([sys.executable, "-m", "tui.cli", "run", "--config", str(config), "--fault",
                          "rolling-restart", "--watch", "1s", "--for", "7s", "--no-record", "--no-bell"],
                         capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert any("held sessions ended:" in line and "× 1012 closed" in line for line in lines), out.stdout
    assert any("✕" in line for line in lines) and any("sessions back on" in line for line in lines), out.stdout
    assert out.stdout.count("#") >= 4  # the rounds went on meanwhile (one a second)


async def test_a_reset_drops_every_session_at_one_moment():
    """A proxy reset: every session dropped with no close frame within the same moment."""
    options = SandboxOptions(fault="rolling-restart", rolling_at=0.6, drain_s=0.0, drop_every=1, refuse_s=0.3)
    model = await hold(12, 2.5, options, extra=", reconnect: true")
    probe = model.probes["held"]
    s = probe.hold.summary()
    assert s["by_code"] == {"1006": 12} and s["window"]["seconds"] < 0.5 and s["reconnects"] == 12
    assert probe.diagnoses[0]["code"] == "dropped-without-close"


async def test_refused_reconnects_until_the_end_are_reconnect_failing():
    options = SandboxOptions(fault="rolling-restart", rolling_at=0.5, drain_s=0.2, drop_every=0, refuse_s=30.0)
    model = await hold(5, 2.0, options, extra=", reconnect: true")
    probe = model.probes["held"]
    s = probe.hold.summary()
    assert s["by_code"] == {"1012": 5} and s["reconnects"] == 0 and s["reconnect_failures"] >= 5
    assert probe.diagnoses[0]["code"] == "reconnect-failing"
    assert "HTTP 503" in " ".join(probe.diagnoses[0]["evidence"])


async def test_unanswered_pings_on_open_sockets_are_a_stall(monkeypatch):
    from websockets.frames import Opcode
    from websockets.server import ServerProtocol

    original = ServerProtocol.recv_frame

    def deaf(self, frame):  # type: ignore[no-untyped-def]
        return None if frame.opcode is Opcode.PING else original(self, frame)

    monkeypatch.setattr(ServerProtocol, "recv_frame", deaf)  # the sandbox's side only
    model = await hold(3, 1.6, SandboxOptions(), beat=0.3)
    probe = model.probes["held"]
    s = probe.hold.summary()
    assert s["pings_missed"] >= 3 and s["closed_total"] == 0 and s["stalled_sessions"] == 3
    assert probe.status == "fail" and probe.diagnoses[0]["code"] == "stall"


async def test_a_hostile_close_reason_is_text_in_the_sessions_view():
    """A server's reason with markup and an escape: shown as it is, escape made visible, never styled."""
    from textual.app import App

    from probes.holdfold import HoldFold
    from tests.test_tui import screen_text

    fold = HoldFold()
    fold.apply(SessionChanged(0.0, "held", 1, "opened", 1700000000.0))
    fold.apply(SessionChanged(1.0, "held", 1, "ended", 1700000001.0, 4000, "Application", "[red]boom[/red]\x1b[2J",
                              "server", 1.0))

    class Host(App[None]):
        def compose(self):  # type: ignore[no-untyped-def]
            yield SessionsPane()

    app = Host()
    async with app.run_test(size=(160, 20)) as pilot:
        app.query_one(SessionsPane).show(fold, [], 1700000002.0)
        await pilot.pause()
        text = screen_text(app)  # type: ignore[arg-type]
    assert "[red]boom[/red]" in text and "\\x1b[2J" in text


def test_only_may_name_a_held_probe_or_a_round_probe_in_a_watch():
    """--only in a watch filters both the rounds and the held sessions beside them: a name from either is known."""
    import dataclasses

    from probes.config import parse_config
    from probes.runner import RunOptions, select_probes

    config = parse_config("""
default_target: sandbox
targets:
  sandbox: {base_url: sandbox}
probes:
  - {id: golden-path, name: g, priority: 1, steps: [{step: http, name: health}]}
  - {id: held, name: h, priority: 1, steps: [{step: hold, name: hold, sessions: 2, for: 1s}]}
""", "cfg.yaml")
    for only, rounds, holds in ((("held",), [], ["held"]), (("golden-path",), ["golden-path"], [])):
        options = RunOptions(only=only)
        assert [p.id for p in select_probes(config, dataclasses.replace(options, holds="without"))] == rounds
        assert [p.id for p in select_probes(config, dataclasses.replace(options, holds="only"))] == holds
    with pytest.raises(ValueError, match="no probe named 'nope'"):
        select_probes(config, RunOptions(only=("nope",), holds="without"))


def test_sessions_the_server_ends_with_1011_are_its_error_not_a_proxy_timer():
    """Each message makes the server close 1011: the ends share an age, but the diagnosis is the server's error."""
    from probes import holdrules
    from probes.holdfold import HoldFold

    fold = HoldFold()
    for n in range(1, 4):
        fold.apply(SessionChanged(0.0, "held", n, "opened", 1700000000.0 + n))
        fold.apply(SessionChanged(2.0, "held", n, "ended", 1700000002.0 + n, 1011, "Internal Error", "agent crashed",
                                  "server", 2.0))
        fold.apply(SessionChanged(2.1, "held", n, "reopened", 1700000002.1 + n, reconnect_ms=100.0))
        fold.apply(SessionChanged(4.1, "held", n, "ended", 1700000004.1 + n, 1011, "Internal Error", "agent crashed",
                                  "server", 2.0))
    lines = holdrules.server_errors(fold)
    assert lines is not None and "1011 Internal Error ×6" in lines[1]
    assert holdrules.idle_timeout(fold) is None
