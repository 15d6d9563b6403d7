"""Pairing in one terminal: 80×24 read whole by keyboard (tab reaches every pane, z maximises one), focus that reads
without colour and never in the failure colour, a filter that gives its rows back, and a tidy palette."""

from __future__ import annotations

import re

import pytest
from rich.color import Color, ColorSystem

from probes.config import Config
from probes.events import Event
from tests.test_tui import screen_text, tui_config, wait_until  # noqa: F401 (fixture)
from tests.test_tui_snapshots import NOW, closed_before_ready_events  # noqa: F401 (fixture)
from tui.app import StagewatchApp
from tui.commands import StagewatchCommands
from tui.widgets.frames import FrameList

SMALL = (80, 24)
ORDER = ["stages", "frames", "detail", "close-box", "diagnosis-box", "queue"]  # tab from the queue, round again


def _app(config: Config, events: list[Event]) -> StagewatchApp:
    return StagewatchApp(config, events=events, now=lambda: NOW)


def _flat(text: str) -> str:
    """The screen's words without the borders and line breaks (a wrapped sentence reads whole again)."""
    return re.sub(r"\s+", " ", re.sub(r"[│║┃╭╮╰╯╔╗╚╝┏┓┗┛─═━▁▂▃▄▅▆▇█]", " ", text))


async def test_a_failing_run_reads_whole_at_80x24_by_keyboard(tui_config, closed_before_ready_events):  # noqa: F811
    app = _app(tui_config, closed_before_ready_events)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        diagnosis = app.state.probes["golden-path"].diagnoses[0]
        text = screen_text(app)
        # the compact queue: every probe with its status glyph and the diagnosis code, never "…"
        assert re.search(r"✘ golden-path +closed-before-ready", text), text
        assert app.focused is not None and app.focused.id == "queue"
        seen = []
        for _ in ORDER:
            await pilot.press("tab")
            seen.append(app.focused.id if app.focused is not None else None)
        assert seen == ORDER  # queue → stages → frames → frame → close → diagnosis → queue
        await pilot.press("shift+tab")  # back to the diagnosis, then maximise it: the next step reads whole
        assert app.focused is not None and app.focused.id == "diagnosis-box"
        await pilot.press("z")
        await wait_until(pilot, lambda: app.screen.maximized is not None)
        await wait_until(pilot, lambda: app.query_one("#diagnosis-box").outer_size.width == SMALL[0])  # all of it
        whole = _flat(screen_text(app))
        assert _flat(diagnosis["summary"]) in whole and _flat(diagnosis["next_step"]) in whole
        await pilot.press("z")
        await wait_until(pilot, lambda: app.screen.maximized is None)
        await pilot.press("shift+tab")  # the close pane, maximised: code, reason, who, when
        assert app.focused is not None and app.focused.id == "close-box"
        await pilot.press("z")
        await wait_until(pilot, lambda: app.screen.maximized is not None)
        whole = _flat(screen_text(app))
        assert "1000 Normal Closure" in whole and "'main cleanup'" in whole and "server" in whole
        await pilot.press("escape")  # esc restores too
        await wait_until(pilot, lambda: app.screen.maximized is None)


async def test_the_stages_pane_scrolls_its_failing_stage_into_view(tui_config, closed_before_ready_events):  # noqa: F811
    app = _app(tui_config, closed_before_ready_events)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("tab")
        stages = app.query_one("#stages")
        await wait_until(pilot, lambda: getattr(stages, "selected", None) == "handshake")
        await wait_until(pilot, lambda: "✘ handshake" in screen_text(app))  # in view, not below the fold
        assert "Stage · handshake" in screen_text(app)  # and its evidence beside the frames


async def test_an_applied_filter_gives_the_rows_back_and_counts_frames_alike(tui_config,  # noqa: F811
                                                                              closed_before_ready_events):  # noqa: F811
    app = _app(tui_config, closed_before_ready_events)
    async with app.run_test(size=SMALL) as pilot:
        app.query_one("#frames", FrameList).focus()
        await pilot.press("slash", *"close", "enter")
        frames = app.query_one("#frames", FrameList)
        await wait_until(pilot, lambda: not app.query_one("#filter").display)  # collapsed into the title
        assert app.focused is frames and frames.size.height >= 2
        text = screen_text(app)
        assert "Frames · 0 · /close → 0" in text  # the close row is a row, not a frame: 0 and 0 (narrow: no id)
        assert "✕" in text and "close" in text  # its row is on screen
        await pilot.press("escape")  # esc clears the applied filter
        await wait_until(pilot, lambda: frames.filter is None and "/close" not in screen_text(app))


@pytest.mark.parametrize("no_color", [True, False], ids=["NO_COLOR", "16-colours"])
async def test_focus_and_failure_differ_in_characters_not_only_colour(tui_config, closed_before_ready_events,  # noqa: F811
                                                                      monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    app = _app(tui_config, closed_before_ready_events)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        assert app.no_color is no_color  # Textual's monochrome filter under NO_COLOR
        text = screen_text(app)
        assert "╔═ Queue" in text  # focused: a double border
        assert "┏━ Close" in text and "┏━ Diagnosis" in text  # failing: a heavy border
        assert "╭─ Frames" in text  # neither: a light rounded one
        app.query_one("#close-box").focus()
        await pilot.pause()
        text = screen_text(app)
        assert "╔═ Close" in text and "╭─ Queue" in text  # focused and failing: focus shows; the colour says failing
        if not no_color:  # in 16 colours the focus colour is not the failure colour (nor the warning's)
            v = app.theme_variables
            ansi = {name: Color.parse(v[name]).downgrade(ColorSystem.STANDARD).number
                    for name in ("primary", "error", "warning")}
            assert ansi["primary"] not in (ansi["error"], ansi["warning"]), ansi


async def test_palette_names_each_action_once_as_the_footer_does(tui_config, closed_before_ready_events):  # noqa: F811
    app = _app(tui_config, closed_before_ready_events)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        ours = [name for name, _help, _cb in StagewatchCommands(app.screen)._commands()]
        textual = [c.title for c in app.get_system_commands(app.screen)]
        titles = ours + textual
        assert len(titles) == len(set(titles)), titles
        assert {"Help", "Quit", "Max", "Next pane"} <= set(ours)
        assert not {"Keys", "Show keys", "Maximize"} & set(titles)
        footer = {b.binding.description for _key, b in app.active_bindings.items() if b.binding.show}
        assert {"Help", "Quit", "Max"} <= footer


async def test_follow_shows_a_run_as_it_is_recorded_read_only(tmp_path, tui_config,  # noqa: F811
                                                              closed_before_ready_events):  # noqa: F811
    """A second viewer: the app on a recording another stagewatch is writing — what was written before it joined,
    then each event as it lands, the same panes, no run keys, a toast when the recording ends."""
    from probes.events import ProbeFinished
    from probes.recording import Recorder

    events = closed_before_ready_events
    half = next(i for i, e in enumerate(events) if isinstance(e, ProbeFinished)) + 1  # the first probe's whole run
    path = tmp_path / "shared.jsonl"
    recorder = Recorder(path, wall0=1_790_000_000.0)
    for event in events[:half]:
        recorder.handle(event)
    recorder.flush()
    app = StagewatchApp(tui_config, follow_path=path, follow_idle=None)
    async with app.run_test(size=SMALL) as pilot:
        follower = app.follower
        assert follower is not None
        await wait_until(pilot, lambda: follower.delivered >= half)  # caught up from the start
        assert not follower.done and "◉ follow" in screen_text(app)
        assert not app.check_action("rerun", ()) and not app.check_action("watch", ())  # read-only
        for event in events[half:]:  # the rest is written while it watches
            recorder.handle(event)
        recorder.close()
        await wait_until(pilot, lambda: follower.done and app.state.finished is not None)
        assert follower.delivered == len(events) and follower.ended == "end"
        text = screen_text(app)
        assert re.search(r"✘ golden-path +closed-before-ready", text) and "run 1 FAIL" in text
