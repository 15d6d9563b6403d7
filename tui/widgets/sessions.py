"""The Sessions view of a hold: the disruption summary on top, one row per held session (state, age, last ping
round trip with a sparkline of the recent ones, how it ended, how often it came back) and the selected session's
whole story below. Shown in place of the Frames pane while a probe with a hold is focused; it only reads the
hold's fold (probes/holdfold.py). Rows change in place and only when they changed (a hold may have thousands).
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from probes.holdfold import HoldFold, SessionRow, end_words
from probes.sanitize import one_line

BLOCKS = "▁▂▃▄▅▆▇█"
COLUMNS = (("#", "n", 6), ("state", "state", 11), ("age", "age", 8), ("rtt", "rtt", 9), ("recent", "spark", 10),
           ("ended", "ended", 44), ("back", "back", 6))
STATE_STYLE = {"open": "green", "connecting": "yellow", "ended": "bold red", "failed": "bold red", "closed": "dim"}


def sparkline(values: list[float], width: int = 8) -> str:
    """The last `width` values as block characters, scaled to their own range."""
    tail = values[-width:]
    if not tail:
        return ""
    low, high = min(tail), max(tail)
    span = high - low or 1.0
    return "".join(BLOCKS[min(len(BLOCKS) - 1, int((v - low) / span * (len(BLOCKS) - 1)))] for v in tail)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


class SessionsPane(Vertical):
    """`show(fold, now)`: bring the summary and the rows up to date."""

    DEFAULT_CSS = """
    SessionsPane { height: 1fr; }
    SessionsPane #sessions-summary { height: auto; max-height: 4; padding: 0 1; }
    SessionsPane DataTable { height: 1fr; }
    SessionsPane #sessions-detail { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    """

    class Selected(Message):
        """The cursor is on another session: the Close panel shows how that one ended."""

        def __init__(self, session: int | None) -> None:
            super().__init__()
            self.session = session

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.selected: int | None = None
        self.fold: HoldFold | None = None
        self._signatures: dict[int, tuple[Any, ...]] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="sessions-summary", markup=False)
        table: DataTable[Any] = DataTable(id="sessions-table", cursor_type="row", zebra_stripes=False)
        for label, key, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield Static(id="sessions-detail", markup=False)

    def show(self, fold: HoldFold | None, diagnoses: list[dict[str, Any]], now: float) -> None:
        table = self.query_one(DataTable)
        if fold is not self.fold:
            self.fold = fold
            self._signatures.clear()
            table.clear()
        summary = self.query_one("#sessions-summary", Static)
        if fold is None:
            summary.update("no sessions held yet")
            return
        words = Text(one_line(fold.headline()))
        if diagnoses:
            words.append("\n")
            words.append(f"{diagnoses[0].get('code')}: ", style="bold red")
            words.append(one_line(str(diagnoses[0].get("summary", ""))))
        summary.update(words)
        for n in sorted(fold.rows):
            row = fold.rows[n]
            cells = self._cells(row, now)
            signature = tuple(str(c) for c in cells)
            if self._signatures.get(n) == signature:
                continue
            if n not in self._signatures:
                table.add_row(*cells, key=str(n))
            else:
                for (_label, key, _w), cell in zip(COLUMNS, cells):
                    table.update_cell(str(n), key, cell)
            self._signatures[n] = signature
        self._detail()

    def _cells(self, row: SessionRow, now: float) -> list[Any]:
        age = "" if row.opened_at is None else f"{max(0.0, now - row.opened_at):.0f} s"
        rtt = "" if row.last_rtt is None else f"{row.last_rtt:.1f} ms"
        state = "stalled" if row.stalled and row.state == "open" else row.state
        ended = ""
        if row.ended is not None:
            e = row.ended
            ended = one_line(f"{end_words(e.code, e.reason, e.by)} at {_clock(e.at)}, age {e.age_s or 0:.1f} s"
                             + (" · run lost" if e.run_lost else ""))
        elif row.last_failure:
            ended = one_line(f"refused: {row.last_failure}")
        # Text, not str: a DataTable reads a str cell as markup, and a close reason is the server's text
        return [str(row.n), Text(state, style=STATE_STYLE.get(state, "bold yellow")), age, rtt,
                sparkline(list(row.rtts)), Text(ended), str(row.reopened) if row.reopened else ""]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def _detail(self) -> None:
        fold, table = self.fold, self.query_one(DataTable)
        detail = self.query_one("#sessions-detail", Static)
        if fold is None or table.row_count == 0:
            detail.update("")
            return
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - no row under the cursor yet
            return
        row = fold.rows.get(int(key or 0))
        if row is None:
            return
        if row.n != self.selected:
            self.selected = row.n
            self.post_message(self.Selected(row.n))
        lines = [f"session {row.n}: {row.state}; ended {row.ends}×, came back {row.reopened}×, "
                 f"refused {row.failures}×"]
        if row.ended is not None:
            e = row.ended
            lines.append(f"last end: {end_words(e.code, e.reason, e.by)} at {_clock(e.at)} after {e.age_s or 0:.1f} s"
                         f" on build {e.build or '?'}" + ("; an agent run was in flight (lost)" if e.run_lost else ""))
        if row.last_failure:
            lines.append(f"last refusal: {row.last_failure}")
        detail.update("\n".join(one_line(line) for line in lines))
