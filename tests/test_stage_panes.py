"""A pane for each stage: Stages is focusable, ↑/↓ pick a stage, and the Frame pane shows that stage's whole
evidence — for strip-auth, the upgrade request as sent (credentials redacted) and the 401 with its body."""

from __future__ import annotations

from probes.evidence_view import stage_lines
from probes.report import to_json, write_markdown
from tests.test_tui import SIZE, live_app, pane_text, tui_config, wait_for_run, wait_until  # noqa: F401
from tui.widgets.frames import FrameDetail
from tui.widgets.stages import StagePane


def detail_text(app) -> str:  # type: ignore[no-untyped-def]
    return app.query_one("#detail", FrameDetail).text


async def test_a_keypress_shows_the_upgrade_as_sent_and_the_401_with_its_body(tui_config):  # noqa: F811
    app = live_app(tui_config, "strip-auth", only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        stages = app.query_one("#stages", StagePane)
        await pilot.press("s")  # one key: the Stages pane, on the failing stage
        await wait_until(pilot, lambda: stages.selected == "connect")
        await wait_until(pilot, lambda: "upgrade as sent: GET ws://" in detail_text(app))
        detail = detail_text(app)
        assert "Authorization: Bearer eyJhbGciOi…" in detail and "Sec-WebSocket-Protocol: jwt." in detail
        assert "answer: HTTP 401" in detail and "missing token" in detail
        assert "diagnosis auth-header-stripped" in detail
        await pilot.press("up")  # the auth stage: claims and expiry, the token redacted
        await wait_until(pilot, lambda: "token: eyJhbGciOi…" in detail_text(app))
        assert "expires:" in detail_text(app)
        await pilot.press("up")  # health: the request and its JSON answer
        await wait_until(pilot, lambda: "GET http://" in detail_text(app))
        assert '"status": "healthy"' in detail_text(app)
        await pilot.press("enter")  # the stage on a screen of its own
        from tui.widgets.textreport import TextReportScreen
        await wait_until(pilot, lambda: isinstance(app.screen, TextReportScreen))
        await pilot.press("escape")
        app.query_one("#frames").focus()
        await wait_until(pilot, lambda: "GET http://" not in detail_text(app))


async def test_reports_carry_each_stages_evidence(tui_config):  # noqa: F811
    app = live_app(tui_config, "strip-auth", only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        model = app.state
    stages = to_json(model)["probes"][0]["stages"]
    connect = next(s for s in stages if s["name"] == "connect")
    assert connect["evidence"]["kind"] == "connect" and connect["evidence"]["http_status"] == 401
    assert "eyJhbGciOi…" in connect["evidence"]["request_headers"]["Authorization"]
    markdown = write_markdown(model)
    assert "upgrade as sent: GET" in markdown and "answer: HTTP 401" in markdown
    probe = model.probes["golden-path"]
    assert any("missing token" in line for line in stage_lines(probe, probe.stages["connect"]))


async def test_the_waterfall_puts_each_stage_on_one_time_axis(tui_config):  # noqa: F811
    from probes.evidence_view import waterfall_lines

    app = live_app(tui_config, "strip-auth", only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        await wait_until(pilot, lambda: "waterfall" in str(app.query_one("#frame-detail-body").render()))
        probe = app.state.probes["golden-path"]
    lines = waterfall_lines(probe, 40)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows)[:3] == ["health", "auth", "connect"] and "▓" in rows["connect"]  # the failing stage
    starts = [rows[n].index(next(c for c in rows[n][len(n):] if c in "█▓▒·"), len(n)) for n in ("health", "auth",
                                                                                                 "connect")]
    assert starts == sorted(starts)  # one after the other on the shared axis


async def test_v_shows_a_healthy_runs_waterfall_with_the_connect_split(tui_config):  # noqa: F811
    app = live_app(tui_config, only=("golden-path",))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_run(app, pilot)
        await pilot.press("v")
        await wait_until(pilot, lambda: "upgrade" in detail_text(app))
        text = detail_text(app)
        for stage in ("health", "auth", "connect", " dns", " tcp", "handshake", "message", "agent", "response"):
            assert stage in text, (stage, text)
        events = next(line for line in text.splitlines() if line.startswith(" events"))
        assert events.count("|") >= 3  # the agent's events as ticks where they came (close ones may share one)
        await pilot.press("v")
        await wait_until(pilot, lambda: "upgrade " not in detail_text(app))


def test_the_waterfall_draws_in_any_width():
    """A narrow Frame pane (80 columns, a scrollbar) gives the bars little room: never an error, every bar drawn."""
    from probes.events import ProbeStarted, StageFinished, StageStarted
    from probes.evidence_view import waterfall_lines
    from probes.model import ProbeModel

    probe = ProbeModel("g", "g", 1)
    for e in (ProbeStarted(0.0, "g", "g", 1, ("health",)), StageStarted(0.0, "g", "health", "http", 5.0),
              StageFinished(0.01, "g", "health", "pass", 10.0, "")):
        probe.apply(e)
    for width in (1, 4, 8, 40):
        lines = waterfall_lines(probe, width)
        assert lines[1].startswith("health") and "█" in lines[1] and "10.0 ms" in lines[1]
