"""The queue pane: probes in priority order with status glyph, duration and last result; a row selects one."""

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
from tui.widgets.theme import glyph, status_color

# (label, key, width); the probe column widens to the longest id, the result column takes what is left.
COLUMNS = (("", "glyph", 1), ("P", "prio", 2), ("probe", "probe", 10), ("time", "time", 6),
           ("last result", "result", 0))


class QueuePane(DataTable[Text]):
    """One row per probe (key: probe id). `sync` updates only the rows whose probe changed.

    Only a person moving the cursor posts `ProbePicked`; the app's own auto-focus moves are silent (DataTable's
    RowHighlighted cannot tell them apart, and a rebuild highlights row 0).
    """

    class ProbePicked(Message):
        def __init__(self, probe_id: str) -> None:
            super().__init__()
            self.probe_id = probe_id

    DEFAULT_CSS = """
    QueuePane { background: $surface; }
    """
    BINDINGS = [
        Binding("home", "scroll_top", "First probe", show=False),
        Binding("end", "scroll_bottom", "Last probe", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_row_labels=False)
        self._order: list[str] = []
        self._widths: tuple[int, int] = (0, 0)  # (probe column, result column) the columns were built with
        self.now_t: Callable[[], float | None] = lambda: None  # session seconds now (a running probe's clock)

    def _build_columns(self, probe_width: int) -> None:
        """Fixed column widths: measuring every cell on every update would cost a full layout per tick."""
        self.clear(columns=True)
        room = self._result_room(probe_width)
        for label, key, width in COLUMNS:
            self.add_column(label, key=key, width=probe_width if key == "probe" else (width or room))
        self._widths = (probe_width, room)
        self._order = []

    def _cells(self, probe: ProbeModel, frames: int) -> list[Text]:
        color = status_color(self.app, probe.status)
        time = fmt_ms(probe.duration_ms) if probe.duration_ms is not None else ""
        now_t = self.now_t() if probe.status == "running" and probe.started_t is not None else None
        if now_t is not None and probe.started_t is not None:
            time = fmt_ms(max(0.0, now_t - probe.started_t) * 1000.0)
        result = probe.last_result()
        if frames and probe.status == "running":
            result += f" · {frames:,} frames"
        room = self._widths[1]
        if len(result) > room and ": " in result and probe.status in ("fail", "error"):
            result = result.partition(": ")[2]  # narrow: the why (diagnosis code) over the where (stage)
        if len(result) > room:
            result = result[: max(1, room - 1)] + "…"
        return [
            Text(glyph(probe.status), style=f"bold {color}"),
            Text(f"P{probe.priority}", style="dim"),
            Text(probe.id, style="bold" if probe.status in ("fail", "error") else ""),
            Text(time, justify="right"),
            Text(result, style=color if probe.status in ("fail", "error") else "", no_wrap=True,
                 overflow="ellipsis"),
        ]

    def sync(self, state: SessionState, changed: set[str] | None = None) -> None:
        """Rebuild when the queue's membership or the width changed, else update the changed rows in place."""
        probe_width = max([len(i) for i in state.order] + [COLUMNS[2][2]])
        selected = self.probe_at_cursor()  # a rebuild (new width, new probes) keeps the selected probe selected
        keep = self.cursor_row
        if (probe_width, self._result_room(probe_width)) != self._widths:
            self._build_columns(probe_width)
        if state.order != self._order:
            self.clear()
            self._order = list(state.order)
            for probe_id in self._order:
                buf = state.frames.get(probe_id)
                self.add_row(*self._cells(state.probes[probe_id], buf.frames if buf else 0), key=probe_id)
            if self._order:
                row = self._order.index(selected) if selected in self._order else min(keep, len(self._order) - 1)
                self.move_cursor(row=row, animate=False, scroll=False)
            return
        for probe_id in self._order:
            if changed is not None and probe_id not in changed:
                continue
            buf = state.frames.get(probe_id)
            for (_label, key, _w), cell in zip(COLUMNS, self._cells(state.probes[probe_id], buf.frames if buf else 0)):
                self.update_cell(probe_id, key, cell)

    def _result_room(self, probe_width: int) -> int:
        """Characters the last-result column can show without scrolling sideways."""
        width = self.scrollable_content_region.width
        if width <= 0:
            return 40
        used = sum(w + 2 * self.cell_padding for _l, key, w in COLUMNS if key not in ("probe", "result"))
        used += probe_width + 2 * self.cell_padding
        room = width - used - 2 * self.cell_padding - 1
        return room if room >= 10 else 1  # too narrow: the column all but disappears

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

    async def _on_click(self, event: events.Click) -> None:
        await super()._on_click(event)
        self._picked()

    def probe_at_cursor(self) -> str | None:
        if not self._order or not 0 <= self.cursor_row < len(self._order):
            return None
        return self._order[self.cursor_row]
