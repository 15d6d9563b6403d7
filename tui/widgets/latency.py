"""Per-stage latency over the rounds of a watch, for the focused probe: a Sparkline per stage with its p50 and
p95 (`probes.watch.History.latency`), so a stage drifting slower before a break is visible. Only passing stages
count (a failing stage's time says when it gave up, not how fast it was).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Sparkline, Static

from probes.sanitize import one_line
from probes.watch import History
from tui.state import fmt_ms

NAME_W = 11
FIGURES_W = 25


class LatencyRow(Horizontal):
    """`health     ▁▂▂▃▅▇  p50 2.1 ms · p95 3.0 ms`"""

    DEFAULT_CSS = f"""
    LatencyRow {{ height: 1; }}
    LatencyRow > .latency-name {{ width: {NAME_W}; }}
    LatencyRow > Sparkline {{ width: 1fr; margin-right: 1; }}
    LatencyRow > .latency-figures {{ width: {FIGURES_W}; }}
    """

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage
        self.series: list[float] = []
        self.figures = "no pass yet"

    def compose(self) -> ComposeResult:
        yield Static(Text(one_line(self.stage)[: NAME_W - 1]), classes="latency-name", markup=False)
        yield Sparkline(self.series, summary_function=max)
        yield Static(Text(self.figures, style="" if self.series else "dim"), classes="latency-figures",
                     markup=False)

    def show(self, series: list[float], p50: float | None, p95: float | None) -> str:
        """Set the figures (drawn now, or when the row has mounted); returns them as a line of text."""
        self.series = series
        self.figures = (f"p50 {fmt_ms(p50)} · p95 {fmt_ms(p95)}" if p50 is not None and p95 is not None
                        else "no pass yet")
        if self.is_mounted and self.children:
            self.query_one(Sparkline).data = series
            self.query_one(".latency-figures", Static).update(Text(self.figures, style="" if series else "dim"))
        return f"{self.stage} {self.figures}"


class LatencyPane(VerticalScroll):
    """The focused probe's stages, one `LatencyRow` each."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.plain = ""
        self._stages: tuple[str, ...] = ()
        self._rows: list[LatencyRow] = []
        self._key: tuple[object, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("no probe focused", style="dim"), id="latency-empty", markup=False)

    def show(self, history: History, probe_id: str | None, stages: tuple[str, ...]) -> None:
        key = (probe_id, stages, len(history.rounds), history.total_rounds)
        if key == self._key:
            return
        self._key = key
        empty = self.query_one("#latency-empty", Static)
        if probe_id is None or not stages:
            self.plain = "no probe focused" if probe_id is None else f"{probe_id}: no stages yet"
            empty.update(Text(self.plain, style="dim"))
            empty.display = True
            self._set_rows(())
            return
        empty.display = False
        self._set_rows(stages)
        self.plain = "\n".join(row.show(*history.latency(probe_id, row.stage)) for row in self._rows)

    def _set_rows(self, stages: tuple[str, ...]) -> None:
        if stages == self._stages:
            return
        self._stages = stages
        for row in self._rows:
            row.remove()
        self._rows = [LatencyRow(stage) for stage in stages]
        if self._rows:
            self.mount_all(self._rows)
