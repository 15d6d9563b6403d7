"""The queue pane: probes in priority order with status glyph, duration and last result; a row selects one.

While watching, each row also carries the probe's monitor state and its history strip (one cell per round, see
`tui.widgets.history`), with the build lane as the strip column's header; left/right (or a click on a cell)
select a past round, which the app then shows in the other panes.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from probes.model import ProbeModel
from tui.state import SessionState, fmt_ms
from tui.widgets.history import build_lane, round_result, state_text, strip_text, window
from tui.widgets.theme import glyph, status_color

# (label, key, width); the probe column widens to the longest id, the result column takes what is left.
COLUMNS = (("", "glyph", 1), ("P", "prio", 2), ("probe", "probe", 10), ("time", "time", 6),
           ("last result", "result", 0))
# A narrow queue (80 columns): the glyph, the probe and what it came to (the diagnosis code when it failed).
COMPACT_COLUMNS = (("", "glyph", 2), ("probe", "probe", 10), ("result", "result", 0))  # no cell padding: 4 more
COMPACT_WATCH = (("", "glyph", 2), ("probe", "probe", 10), ("state", "state", 5), ("history", "history", 0),
                 ("result", "result", 0))  # a watch at 80 columns: the state as 4 letters, a short strip
COMPACT_WATCH_BELOW = 60
COMPACT_BELOW = 48  # the queue's inner width under which it goes compact (80 columns; 120 keeps P and time)
# While watching: the strip's width comes from the room (0 here); the result column takes the rest.
WATCH_COLUMNS = (("", "glyph", 1), ("probe", "probe", 10), ("state", "state", 8), ("history", "history", 0),
                 ("last result", "result", 0))
STRIP_MAX = 40  # rounds a strip shows at most
STRIP_MIN = 6
RESULT_KEEP = 22  # characters the result column keeps before the strip takes the rest


class QueuePane(DataTable[Text]):
    """One row per probe (key: probe id). `sync` updates only the rows whose probe changed.

    Only a person moving the cursor posts `ProbePicked`; the app's own auto-focus moves are silent (DataTable's
    RowHighlighted cannot tell them apart, and a rebuild highlights row 0).
    """

    class ProbePicked(Message):
        def __init__(self, probe_id: str) -> None:
            super().__init__()
            self.probe_id = probe_id

    class RoundPicked(Message):
        """A person moved along the history strip by `delta` rounds, or clicked the cell of `round`."""

        def __init__(self, delta: int = 0, round: int | None = None) -> None:
            super().__init__()
            self.delta = delta
            self.round = round

    DEFAULT_CSS = """
    QueuePane { background: $surface; }
    """
    BINDINGS = [
        Binding("home", "scroll_top", "First probe", show=False),
        Binding("end", "scroll_bottom", "Last probe", show=False),
        Binding("left", "round(-1)", "Earlier round", show=False),
        Binding("right", "round(1)", "Later round", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_row_labels=False)
        self._order: list[str] = []
        self._widths: tuple[int, int, int] = (0, 0, 0)  # (probe, result, strip) the columns were built with
        self.now_t: Callable[[], float | None] = lambda: None  # session seconds now (a running probe's clock)
        self.watching = False  # the watch columns: monitor state and history strip
        self.selected_round: int | None = None  # the round picked on the strip (None: the latest run)
        self.rounds: list[int] = []  # the rounds the strips show now
        self._lane = ""
        self.compact = False  # the narrow columns (set from the width at each sync)

    @property
    def spec(self) -> tuple[tuple[str, str, int], ...]:
        if self.watching:
            return COMPACT_WATCH if self.compact else WATCH_COLUMNS
        return COMPACT_COLUMNS if self.compact else COLUMNS

    def _build_columns(self, probe_width: int) -> None:
        """Fixed column widths: measuring every cell on every update would cost a full layout per tick."""
        self.clear(columns=True)
        room, strip = self._room(probe_width)
        for label, key, width in self.spec:
            gap = 1 if self.compact and key in ("probe", "history") else 0  # compact: the columns' own space
            self.add_column(label, key=key, width={"probe": probe_width + gap, "history": strip + gap,
                                                   "result": room}.get(key, width))
        self._widths = (probe_width, room, strip)
        self._lane = ""
        self._order = []

    def _cells(self, probe: ProbeModel, frames: int, state: SessionState) -> list[Text]:
        color = status_color(self.app, probe.status)
        time = fmt_ms(probe.duration_ms) if probe.duration_ms is not None else ""
        now_t = self.now_t() if probe.status == "running" and probe.started_t is not None else None
        if now_t is not None and probe.started_t is not None:
            time = fmt_ms(max(0.0, now_t - probe.started_t) * 1000.0)
        result = probe.last_result()
        failed = probe.status in ("fail", "error")
        result_color = color
        if self.watching and self.selected_round is not None:  # what the probe came to in the picked round
            rnd = state.history.round(self.selected_round)
            picked = rnd.probes.get(probe.id) if rnd is not None else None
            result = round_result(picked)  # (the column's header names the round)
            failed = picked is not None and picked.cell == "fail"
            result_color = status_color(self.app, "fail")
        if frames and probe.status == "running":
            result += f" · {frames:,} frames"
        room = self._widths[1]
        if self.compact and failed and probe.diagnoses:  # the engine's name for it, whatever the room
            result = str(probe.diagnoses[0].get("code"))
        elif self.compact and probe.status == "pass":
            result = "pass"
        if len(result) > room and ": " in result and failed:
            result = result.partition(": ")[2]  # narrow: the why (diagnosis code) over the where (stage)
        if len(result) > room:
            result = result[: max(1, room - 1)] + "…"
        cells = {
            "glyph": Text(glyph(probe.status) + (" " if self.compact else ""), style=f"bold {color}"),
            "prio": Text(f"P{probe.priority}", style="dim"),
            "probe": Text(probe.id, style="bold" if probe.status in ("fail", "error") else ""),
            "time": Text(time, justify="right"),
            "result": Text(result, style=result_color if failed else "", no_wrap=True, overflow="ellipsis"),
        }
        if self.watching:
            cells["state"] = state_text(self.app, state.history.state(probe.id))
            if self.compact:  # UP, DOWN, PEND, DEGR
                cells["state"].truncate(4)
                cells["state"].append(" ")
            cells["history"] = strip_text(self.app, state.history, probe.id, self.rounds, self.selected_round)
        return [cells[key] for _label, key, _w in self.spec]

    def sync(self, state: SessionState, changed: set[str] | None = None) -> None:
        """Rebuild when the queue's membership or the width changed, else update the changed rows in place."""
        probe_width = max([len(i) for i in state.order] + [COLUMNS[2][2]])
        selected = self.probe_at_cursor()  # a rebuild (new width, new probes) keeps the selected probe selected
        keep = self.cursor_row
        inner = self.scrollable_content_region.width
        compact = 0 < inner < (COMPACT_WATCH_BELOW if self.watching else COMPACT_BELOW)
        if compact != self.compact:
            self.compact = compact
            self.cell_padding = 0 if compact else 1  # the columns keep their own space (below)
            self._widths = (0, 0, 0)
        if (probe_width, *self._room(probe_width)) != self._widths:
            self._build_columns(probe_width)
        every_row = changed is None
        if self.watching:
            rounds = window(state.history, self._widths[2], self.selected_round)
            every_row = every_row or rounds != self.rounds or "history" in changed  # type: ignore[operator]
            self.rounds = rounds
            self._update_lane(state)
        if state.order != self._order:
            scrolled = self.scroll_y  # a rebuild (tests of a suite joining mid-run) keeps the view where it was
            self.clear()
            self._order = list(state.order)
            for probe_id in self._order:
                buf = state.frames.get(probe_id)
                self.add_row(*self._cells(state.probes[probe_id], buf.frames if buf else 0, state), key=probe_id)
            if self._order:
                row = self._order.index(selected) if selected in self._order else min(keep, len(self._order) - 1)
                self.move_cursor(row=row, animate=False, scroll=False)
                if scrolled:
                    self.call_after_refresh(self.scroll_to, y=scrolled, animate=False)
            return
        for probe_id in self._order:
            if not every_row and probe_id not in changed:  # type: ignore[operator]
                continue
            buf = state.frames.get(probe_id)
            cells = self._cells(state.probes[probe_id], buf.frames if buf else 0, state)
            for (_label, key, _w), cell in zip(self.spec, cells):
                self.update_cell(probe_id, key, cell)

    def _update_lane(self, state: SessionState) -> None:
        """The build lane as the strip column's header, and the result column's header naming the round picked
        (set only when they read differently)."""
        lane = build_lane(self.app, state.history, self.rounds, self._widths[2])
        result = "last result" if self.selected_round is None else f"round {self.selected_round}"
        key = f"{lane.plain}|{lane.spans}|{result}"
        if key == self._lane:
            return
        self._lane = key
        for column in self.columns.values():
            if column.key.value == "history":
                column.label = lane
            elif column.key.value == "result":
                column.label = Text(result, style="bold reverse" if self.selected_round is not None else "")
        self._update_count += 1  # DataTable caches its rendered lines per update
        self.refresh()

    def set_watching(self, watching: bool, state: SessionState) -> None:
        """Switch between the single-run columns and the watch columns."""
        if watching == self.watching:
            return
        self.watching = watching
        self._widths = (0, 0, 0)  # rebuilt with the other columns at the next sync
        self.sync(state, None)

    def _room(self, probe_width: int) -> tuple[int, int]:
        """(characters the last-result column shows without scrolling sideways, cells of the history strip)."""
        width = self.scrollable_content_region.width
        if width <= 0:
            return 40, STRIP_MIN if self.watching else 0
        used = sum(w + 2 * self.cell_padding for _l, key, w in self.spec if key not in ("probe", "result", "history"))
        used += probe_width + 2 * self.cell_padding + (1 if self.compact else 0)
        room = width - used - 2 * self.cell_padding - 1
        strip = 0
        if self.watching:
            least = STRIP_MIN - 1 if self.compact else STRIP_MIN  # (80 columns: the diagnosis code keeps 19)
            strip = max(least, min(STRIP_MAX, room - RESULT_KEEP - 2 * self.cell_padding))
            room -= strip + 2 * self.cell_padding + (1 if self.compact else 0)
        return max(room, 6), strip

    def select_probe(self, probe_id: str | None) -> None:
        """Move the cursor to a probe (from code: auto-focus)."""
        if probe_id is None:
            return
        try:
            row = self.get_row_index(probe_id)
        except RowDoesNotExist:
            return
        if row != self.cursor_row:
            self.move_cursor(row=row, animate=False)

    def _picked(self) -> None:
        probe_id = self.probe_at_cursor()
        if probe_id is not None:
            self.post_message(self.ProbePicked(probe_id))

    def action_cursor_up(self) -> None:
        super().action_cursor_up()
        self._picked()

    def action_cursor_down(self) -> None:
        super().action_cursor_down()
        self._picked()

    def action_page_up(self) -> None:
        super().action_page_up()
        self._picked()

    def action_page_down(self) -> None:
        super().action_page_down()
        self._picked()

    def action_scroll_top(self) -> None:
        super().action_scroll_top()
        self._picked()

    def action_scroll_bottom(self) -> None:
        super().action_scroll_bottom()
        self._picked()

    def action_select_cursor(self) -> None:
        super().action_select_cursor()
        self._picked()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "round":  # else left/right go on to the app (a replay steps with →)
            return self.watching and getattr(self.app, "player", None) is None
        return super().check_action(action, parameters)

    def action_round(self, delta: int) -> None:
        if self.watching:
            self.post_message(self.RoundPicked(delta=delta))

    async def _on_click(self, event: events.Click) -> None:
        await super()._on_click(event)
        self._picked()
        picked = self._round_at(event)
        if picked is not None:
            self.post_message(self.RoundPicked(round=picked))

    def _round_at(self, event: events.Click) -> int | None:
        """The round of the history cell under a click (None anywhere else)."""
        if not self.watching or not self.rounds or event.style.meta.get("row", -1) < 0:
            return None
        offset = event.get_content_offset(self)
        if offset is None:
            return None
        x = offset.x + int(self.scroll_x)
        for column in self.ordered_columns:
            if column.key.value == "history":
                i = x - self.cell_padding
                return self.rounds[i] if 0 <= i < len(self.rounds) else None
            x -= column.get_render_width(self)
        return None

    def probe_at_cursor(self) -> str | None:
        if not self._order or not 0 <= self.cursor_row < len(self._order):
            return None
        return self._order[self.cursor_row]
