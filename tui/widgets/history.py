"""The history strip of a watch: one cell per round for a probe (✓ pass, ~ degraded, ✗ fail, · not run, blank
where the probe was not in the round), the monitor state beside it (UP, DEGRADED, PENDING, DOWN), and the build
lane drawn above the strips (a mark where health first reported a new build). Pure wording and Rich `Text`: the
queue pane lays them out; `probes.watch.History` decides what they say.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import App

from probes.sanitize import one_line
from probes.watch import History, ProbeRound, Round
from tui.widgets.theme import status_color

CELL_GLYPH = {"pass": "✓", "degraded": "~", "fail": "✗", "skip": "·", "none": " "}
CELL_WORD = {"pass": "passed", "degraded": "degraded", "fail": "failed", "skip": "not run", "none": "not in round"}
BUILD_MARK = "▏"


def cell_color(app: App[object], cell: str) -> str:
    return status_color(app, {"pass": "pass", "degraded": "error", "fail": "fail"}.get(cell, "skip"))


def state_color(app: App[object], state: str | None) -> str:
    return status_color(app, {"UP": "pass", "DEGRADED": "error", "PENDING": "error", "DOWN": "fail"}.get(
        state or "", "skip"))


def state_text(app: App[object], state: str | None) -> Text:
    """The monitor state, coloured: DOWN bold red, PENDING and DEGRADED yellow, UP green, none dim."""
    if state is None:
        return Text("—", style="dim")
    return Text(state, style=f"bold {state_color(app, state)}" if state != "UP" else state_color(app, state))


def window(history: History, cells: int, selected: int | None) -> list[int]:
    """The round numbers a strip of `cells` shows: the newest, or (a past round selected out of view) the rounds
    from the selected one on."""
    if not history.rounds or cells <= 0:
        return []
    first, last = history.rounds[0].n, history.rounds[-1].n
    end = last
    if selected is not None and selected <= last - cells:
        end = max(first, selected) + cells - 1
    return list(range(max(first, end - cells + 1), end + 1))


def strip_text(app: App[object], history: History, probe_id: str, rounds: Sequence[int],
               selected: int | None) -> Text:
    """The probe's cells over `rounds`; the selected round's cell in reverse video."""
    text = Text(no_wrap=True, overflow="crop")
    for n in rounds:
        rnd = history.round(n)
        p = rnd.probes.get(probe_id) if rnd is not None else None
        cell = p.cell if p is not None else "none"
        style = cell_color(app, cell)
        if cell == "fail":
            style = f"bold {style}"
        if n == selected:
            style = f"{style} reverse"
        text.append(CELL_GLYPH.get(cell, "?"), style=style)
    return text


def build_lane(app: App[object], history: History, rounds: Sequence[int], width: int) -> Text:
    """Above the strips: the build each round ran on, with a mark where it changed, e.g. `v1    ▏v2`."""
    lane = Text(no_wrap=True, overflow="crop")
    if not rounds:
        return Text("history", style="bold")
    first = rounds[0]
    marks: list[tuple[int, str, bool]] = []  # (position in the strip, build, a change of build)
    for span in history.builds:
        pos = span.first_round - first
        if pos < 0:
            marks[:] = [(0, span.build, False)]  # the build the window starts on
        elif pos < len(rounds):
            marks.append((pos, span.build, span is not history.builds[0]))
    if not marks:
        return Text("history"[:max(1, width)], style="bold")
    accent = app.theme_variables.get("accent", "cyan")
    column = 0
    for i, (pos, build, changed) in enumerate(marks):
        if pos > column:
            lane.append(" " * (pos - column))
            column = pos
        room = (marks[i + 1][0] if i + 1 < len(marks) else max(width, len(rounds))) - column
        if room <= 0:
            continue
        label = ((BUILD_MARK if changed else "") + one_line(build))[:room]
        lane.append(label, style=f"bold {accent}" if changed else "bold")
        column += len(label)
    return lane


def round_result(probe_round: ProbeRound | None) -> str:
    """What a probe came to in one round, in a line: 'handshake: closed-before-ready', 'passed'."""
    if probe_round is None:
        return "not in this round"
    cell = probe_round.cell
    if cell == "fail":
        where = probe_round.stage or "?"
        return f"{where}: {probe_round.diagnosis}" if probe_round.diagnosis else f"failed at {where}"
    if cell == "degraded":
        return f"degraded: {probe_round.stage} slow" if probe_round.stage else "degraded"
    return CELL_WORD.get(cell, cell)


def summary_only(rnd: Round, probe_id: str) -> str:
    """For a round older than the ones kept whole: 'summary only: ✗ at handshake — closed-before-ready'."""
    p = rnd.probes.get(probe_id)
    if p is None:
        return f"summary only: {probe_id} was not in round {rnd.n}"
    text = f"summary only: {CELL_GLYPH.get(p.cell, '?')} {CELL_WORD.get(p.cell, p.cell)}"
    if p.stage:
        text += f" at {p.stage}"
    if p.diagnosis:
        text += f" — {p.diagnosis}"
    return text + f" (round {rnd.n}; only the last rounds are kept whole)"
