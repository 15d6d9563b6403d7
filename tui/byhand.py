"""The app's tools for reproducing by hand, beside the console: the auth-path matrix (m) and comparing two runs
(d: two rounds of a watch, or the newest other recording against this session), each shown as the engine's own
text report in a modal screen that copies as Markdown. The work runs in the engine's loop; nothing here folds
events or draws panes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from probes.diff import DiffError, RunDiff, diff_models, diff_rounds, load_run, render_markdown, render_text
from probes.console import CONSOLE_ID, overridden
from probes.matrix import run_matrix
from probes.repro import repro_for
from probes.report import write_markdown
from probes.recording import RecordingError, default_recordings_dir
from probes.retention import newest_recordings
from probes.sanitize import one_line
from tui.widgets.textreport import TextReportScreen

if TYPE_CHECKING:
    from tui.app import StagewatchApp


class ByHand:
    def __init__(self, app: StagewatchApp) -> None:
        self.app = app

    async def matrix(self) -> None:
        app = self.app
        if app.target is None or app.engine is None:
            return
        app.notify("auth-path matrix: connecting once per token transport…", timeout=3)
        try:
            result = await asyncio.wrap_future(app.engine.submit(run_matrix(app.config, app.target, app.options)))
        except Exception as exc:  # noqa: BLE001 - a missing secret, an unreachable host: said, not raised
            app.notify(one_line(f"matrix: {exc}"), severity="error", timeout=8, markup=False)
            return
        app.push_screen(TextReportScreen("Auth-path matrix", result.render_text(), result.render_markdown()))

    def copy_as(self, form: str) -> None:
        """The golden path as `stagewatch repro --form FORM` prints it, copied: for the console's session with
        its token transport, headers and subprotocol; for a sandbox target, lines that start a standalone one with
        this session's fault."""
        app = self.app
        if app.target is None:
            return
        target = app.target
        console = app.hand.console
        if console is not None and app.focus_probe == CONSOLE_ID:
            target = overridden(target, console.overrides)
        try:
            text = repro_for(form, target, fault=app.options.fault)
        except (ValueError, OSError) as exc:
            app.notify(one_line(f"copy as {form}: {exc}"), severity="warning", timeout=6, markup=False)
            return
        app.copy_text(text, f"the golden path as {form}")

    def export_markdown(self) -> None:
        """This session (the console's included) as the Markdown report, written next to the recordings and
        copied."""
        app = self.app
        folder = default_recordings_dir().parent / "reports"
        path = folder / time.strftime("%Y%m%d-%H%M%S-session.md")
        text = write_markdown(app.state)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
        except OSError as exc:
            app.notify(one_line(f"export: {exc}"), severity="warning", timeout=6, markup=False)
            return
        app.copy_text(text, f"the session's Markdown report (also in {path})")

    def compare(self) -> None:
        """A watch: the round shown (or the newest) against the one before it. Otherwise: the newest other
        recording in the default folder against this session (its own recording when there is one)."""
        app = self.app
        history = app.state.history
        try:
            if history.total_rounds >= 2:
                b = app.selected_round or history.total_rounds
                if app.selected_round is None and app.state.running:
                    b -= 1  # the round under way is not over: compare the last two finished ones
                diff = diff_rounds(history, max(1, b - 1), max(2, b))
            else:
                diff = self._against_last_recording()
        except (DiffError, RecordingError) as exc:
            app.notify(one_line(f"compare: {exc}"), severity="warning", timeout=6, markup=False)
            return
        if diff is None:
            return
        app.push_screen(TextReportScreen("Compare two runs", render_text(diff, color=True), render_markdown(diff)))

    def _against_last_recording(self) -> RunDiff | None:
        app = self.app
        mine = app.record_path.resolve() if app.record_path is not None else None
        others = [p for p in newest_recordings(default_recordings_dir(), 10) if p.resolve() != mine]
        if not others:
            app.notify("compare: no other recording yet (and no second round): run a watch (w) or record another "
                       "session, or use `stagewatch diff A B`", severity="warning", timeout=6)
            return None
        mine_ids = set(app.state.probes)
        a = None
        for path in others[:5]:  # the newest recording of the same queue (same target, mostly the same probes)
            try:
                loaded = load_run(path)
            except (DiffError, RecordingError):
                continue
            ids = {p.id for p in loaded.model.ordered() if p.runs}
            if loaded.model.target == app.state.target and len(ids & mine_ids) * 2 >= max(1, len(mine_ids)):
                a = loaded
                break
        if a is None:
            app.notify("compare: no recent recording of this queue (same target, same probes); use "
                       "`stagewatch diff A B` for any two", severity="warning", timeout=6)
            return None
        if mine is not None and Path(mine).exists():
            b = load_run(mine, label="this session")
            return diff_models(a.model, b.model, wire_a=a.wire, wire_b=b.wire, side_a=a.side, side_b=b.side)
        return diff_models(a.model, app.state, wire_a=a.wire, side_a=a.side)

