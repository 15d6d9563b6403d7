"""The stage strip of the focused probe: health → auth → connect → … with status colour, duration and detail.

The first line is the path at a glance; below it one row per stage with what the engine saw (HTTP status and
build, token subject and a live expiry countdown, subprotocol echo, which agent events arrived and when, the
response excerpt).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Group
from rich.text import Text
from textual.binding import Binding
from textual.containers import ScrollableContainer
from textual.events import Click
from textual.message import Message
from textual.widgets import Static

from probes.model import ProbeModel, StageModel
from probes.steps.auth import AuthEvidence
from probes.steps.connect import ConnectEvidence
from probes.steps.expect_events import EventsEvidence
from tui.state import fmt_countdown, fmt_ms, stage_clock
from tui.widgets.theme import STATUS_WORD, glyph, status_color


class StagePane(Static, can_focus=True):
    """Shows one probe's stages; `show(probe, now)` re-renders it (cheap: a handful of rows). Focused, ↑/↓ (or a
    click) select a stage: `Selected` asks the app to show that stage's whole evidence."""

    DEFAULT_CSS = """
    StagePane { width: 1fr; height: auto; }
    """
    BINDINGS = [Binding("up,k", "move(-1)", "Previous stage", show=False),
                Binding("down,j", "move(1)", "Next stage", show=False),
                Binding("enter", "open", "Open stage", show=False)]

    class Open(Message):
        """Enter on a stage: its evidence on a screen of its own (the way in on a small terminal)."""

        def __init__(self, stage: str) -> None:
            super().__init__()
            self.stage = stage

    def action_open(self) -> None:
        if self.selected:
            self.post_message(self.Open(self.selected))

    class Selected(Message):
        def __init__(self, stage: str | None) -> None:
            super().__init__()
            self.stage = stage

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.selected: str | None = None  # the stage whose evidence is on show
        self._reveal_pending = False  # the selected row is to be scrolled into view
        self._order: list[str] = []
        self._rows_at: list[tuple[int, str]] = []  # (first line of its row, stage name)
        self.plain = ""
        self.failed_line: int | None = None  # the line (from the top) of the first failing stage's row
        self._key = ""
        self._drawn: str | None = None
        self._last: tuple[ProbeModel | None, Callable[[], float], float | None] | None = None

    def action_move(self, step: int) -> None:
        if not self._order:
            return
        at = self._order.index(self.selected) if self.selected in self._order else (-1 if step > 0 else 0)
        self.select(self._order[max(0, min(len(self._order) - 1, at + step))])

    def select(self, stage: str | None) -> None:
        self.selected = stage
        self.post_message(self.Selected(stage))
        if self._last is not None:
            self._drawn = None
            self.show(*self._last)
        self._reveal_pending = True
        self.call_after_refresh(self._reveal)

    def _reveal_again(self) -> None:
        self._reveal_pending = True
        self._reveal()

    def _reveal(self) -> None:
        """Scroll the Stages pane so the selected stage's row is in view (a short pane hides the lower ones). Until
        the pane has grown to hold that row (the layout comes after the drawing), again at the next resize."""
        rows = dict((name, line) for line, name in self._rows_at)
        box = self.parent
        if not self._reveal_pending or self.selected not in rows or not isinstance(box, ScrollableContainer):
            return
        line = rows[self.selected]
        height = box.scrollable_content_region.height
        if box.scroll_y <= line < box.scroll_y + height - 1:
            self._reveal_pending = False
        else:
            box.scroll_to(y=min(line, box.max_scroll_y), animate=False)  # the row whole at the top, no fragment
            self._reveal_pending = line > box.max_scroll_y  # (not laid out that far yet: again at the next resize)

    def enter(self) -> None:
        """Focus the stages (`s`, a click, or tab on its way round the panes)."""
        self.focus()

    def on_click(self, event: Click) -> None:
        row = None
        for line, name in self._rows_at:
            if line <= event.y:
                row = name
        if row is not None:
            self.enter()
            self.select(row)

    def on_focus(self) -> None:
        self.set_timer(0.15, self._reveal_again)  # after Textual has scrolled the pane's top into view on focus
        if self.selected is not None:  # back on the stages (tab): the Frame pane shows the stage again
            self.post_message(self.Selected(self.selected))
        elif self._order:  # the failing stage, else the running one, else the first
            probe = self._last[0] if self._last is not None else None
            pick = probe.failed or probe.current_stage if probe is not None else None
            self.select(pick.name if pick is not None and pick.name in self._order else self._order[0])

    def on_resize(self) -> None:
        if self._last is not None:
            self.show(*self._last)  # details wrap to the width
        self.call_after_refresh(self._reveal)

    def _set(self, renderable: object) -> None:
        if self._key == self._drawn:  # unchanged: no re-render, no layout
            return
        self._drawn = self._key
        self.update(renderable)  # type: ignore[arg-type]

    def show_text(self, text: str) -> None:
        """Words instead of stages (a past round kept only as its summary)."""
        self._last = None
        self.failed_line = None
        self.plain = self._key = text
        self._set(Text(text, style="italic"))

    def show(self, probe: ProbeModel | None, now: Callable[[], float], wall0: float | None = None) -> None:
        """`now`: wall-clock time (countdowns); `wall0`: the wall time at session t=0 (running stages' clocks)."""
        self._last = (probe, now, wall0)
        self._key = ""
        if probe is None:
            self.plain = self._key = "no probe selected"
            self._set(Text(self.plain, style="dim"))
            return
        if not probe.stages:
            self.plain = self._key = f"{probe.id}: queued, waiting for its turn"
            self._set(Text(self.plain, style="dim"))
            return
        width = max(24, self.size.width or 100)
        # The strip breaks only between stages, never inside "✘ handshake 97 ms".
        strip = Text(no_wrap=True, overflow="crop")
        column = 0
        for i, stage in enumerate(probe.stages.values()):
            color = status_color(self.app, stage.status)
            took = f" {fmt_ms(stage.duration_ms)}" if stage.duration_ms is not None and stage.status != "skip" else ""
            if stage.status == "running" and wall0 is not None:
                took = f" {stage_clock(stage, now() - wall0)}"  # a long wait shows its clock and its limit
            item = len(stage.name) + 2 + len(took)
            if i:
                if column + 3 + item > width:
                    strip.append("\n→ ", style="dim")
                    column = 2
                else:
                    strip.append(" → ", style="dim")
                    column += 3
            strip.append(f"{glyph(stage.status)} {stage.name}", style=f"bold {color}")
            strip.append(took, style=color)
            column += item
        # Rows are laid out here (fixed columns, details wrapped under themselves): a Rich Table would be
        # measured on every layout, which costs more than the rest of the screen together.
        name_w = max(10, max(len(n) for n in probe.stages) + 1)
        indent = 2 + name_w + 8 + 9 + 1
        below = width - indent < 30  # narrow: each detail on its own lines under the stage
        if below:
            indent = 4
        rows = Text(no_wrap=True, overflow="crop")
        lines = [strip.plain]
        self.failed_line = None
        top = strip.plain.count("\n") + 2  # the strip's lines and a blank line
        self._order = list(probe.stages)
        if self.selected not in probe.stages:
            self.selected = None
        self._rows_at = []
        bad, warn = status_color(self.app, "fail"), status_color(self.app, "error")
        for stage in probe.stages.values():
            color = status_color(self.app, stage.status)
            word = STATUS_WORD.get(stage.status, stage.status)
            took = fmt_ms(stage.duration_ms) if stage.status not in ("skip", "queued") else ""
            detail = stage_detail(stage, now, bad, warn, wall0)
            if self.failed_line is None and stage.status in ("fail", "error"):
                self.failed_line = top + rows.plain.count("\n")
            self._rows_at.append((top + rows.plain.count("\n"), stage.name))
            picked = stage.name == self.selected
            rows.append(f"{glyph(stage.status)} ", style=f"bold {color}")
            rows.append(f"{stage.name:<{name_w}}", style=("bold " if stage.status in ("fail", "error") else "")
                        + ("reverse" if picked else ""))
            rows.append(f"{word:<7} ", style=f"bold {color}" if stage.status != "skip" else color)
            rows.append(f"{took:>8} ")
            if below:
                rows.append("\n")
            for i, part in enumerate(detail.wrap(self.app.console, width - indent, no_wrap=False)):
                if i or below:
                    rows.append(" " * indent)
                part.rstrip()
                rows.append_text(part)
                rows.append("\n")
            if not detail.plain and not below:
                rows.append("\n")
            lines.append(f"{stage.name} {word} {took} {detail.plain}")
        rows.rstrip()
        self.plain = "\n".join(lines)
        self._key = f"{width}\n{self.selected}\n{self.plain}"
        self._set(Group(strip, Text(""), rows))


def stage_detail(stage: StageModel, now: Callable[[], float], bad: str = "red", warn: str = "yellow",
                 wall0: float | None = None) -> Text:
    """What to say about one stage, from its detail and evidence."""
    ev = stage.evidence
    if stage.status == "running":
        clock = stage_clock(stage, now() - wall0) if wall0 is not None else ""
        return Text(f"running… {clock}".rstrip(), style="italic")
    if stage.status == "queued":
        return Text("")
    text = Text(stage.detail, style="dim" if stage.status == "skip" else "")
    if isinstance(ev, AuthEvidence) and stage.status == "pass":  # a live countdown, not the value at mint time
        parts = [ev.source or "token"]
        if ev.sub:
            parts.append(f"sub {ev.sub}")
        if ev.token:
            parts.append(f"token {ev.token}")
        text = Text(" · ".join(parts))
        if ev.exp is not None:
            left = ev.exp - now()
            text.append(" · ")
            text.append(f"expires {fmt_countdown(left)}", style=f"bold {bad}" if left < 60 else "bold")
    if isinstance(ev, ConnectEvidence) and ev.subprotocol_not_echoed:
        text.append("\nsubprotocol offered but NOT echoed: browsers refuse this handshake", style=f"bold {warn}")
    if isinstance(ev, EventsEvidence):
        if ev.events:
            text.append("\n")
            for i, (name, ms) in enumerate(ev.events[:12]):
                if i:
                    text.append(" · ", style="dim")
                text.append(name)
                text.append(f" +{fmt_ms(ms)}", style="dim")
            if len(ev.events) > 12:
                text.append(f" · … {len(ev.events) - 12} more", style="dim")
        if ev.missing:
            text.append(f"\nmissing: {', '.join(ev.missing)}", style=f"bold {bad}")
    return text
