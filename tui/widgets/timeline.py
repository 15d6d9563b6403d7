"""The timeline of a watch: every flip and build change, one line each in local wall time, newest at the bottom,
coloured by kind — `14:03:12 golden-path DOWN at handshake — closed-before-ready (build v1 → v2)` … `14:05:40
golden-path UP — outage 2 m 28 s, 9 rounds`. The words are `probes.watch.History`'s (built from sanitised values);
they are shown as `Text`, never parsed as markup. The newest line stays in view unless the person scrolls up; a
picked round scrolls to its lines and shows their times in reverse.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from probes.sanitize import visible
from probes.watch import Change, History
from tui.widgets.theme import status_color

SHOWN = 300  # timeline lines drawn (the newest)
KIND_STATUS = {"down": "fail", "cause": "fail", "up": "pass", "degraded": "error", "pending": "error"}


def wall_clock(at: float) -> str:
    """Epoch seconds as local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(at))


class TimelinePane(VerticalScroll):
    """The lines of `History.timeline`; follows the newest line unless scrolled away."""

    DEFAULT_CSS = """
    TimelinePane > Static { width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.plain = ""  # the lines as they read, unwrapped
        self._key: tuple[int, Change | None, int | None, int] | None = None
        self._history: History | None = None
        self._selected: int | None = None
        self._scrolled_for: int | None = None  # the picked round the view was last scrolled to
        self.follow = True  # keep the newest line in view (until the person scrolls up, or a round is picked)

    def compose(self) -> ComposeResult:
        yield Static(id="timeline-body", markup=False)

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self.follow = False  # the person reads back: stay where they are

    def _on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self.call_after_refresh(self._resume_at_end)

    def _resume_at_end(self) -> None:
        if self.scroll_y >= self.max_scroll_y:
            self.follow = True

    def _to_end(self) -> None:
        if self.follow:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    def on_resize(self) -> None:
        if self._history is not None:
            self.show(self._history, self._selected)  # lines wrap to the width

    def show(self, history: History, selected: int | None) -> None:
        self._history, self._selected = history, selected
        last = history.timeline[-1] if history.timeline else None
        width = self.scrollable_content_region.width or 60
        key = (len(history.timeline), last, selected, width)  # the last line itself: a merge replaces it
        if key == self._key:
            return
        self._key = key
        body = self.query_one("#timeline-body", Static)
        if not history.timeline:
            self.plain = "no changes yet: every flip (UP, PENDING, DOWN, DEGRADED) and build change is listed here"
            body.update(Text(self.plain, style="dim"))
            return
        entries = list(history.timeline)[-SHOWN:]
        text = Text(no_wrap=True, overflow="crop")
        plain = []
        picked_at: int | None = None  # the first screen line of the picked round's changes
        for i, change in enumerate(entries):
            if i:
                text.append("\n")
            if picked_at is None and selected is not None and change.round >= selected:
                picked_at = text.plain.count("\n")
            text.append_text(self._line(change, selected, width))
            plain.append(f"{wall_clock(change.at)} {visible(change.text)}")
        self.plain = "\n".join(plain)
        body.update(text)
        if selected is not None and picked_at is not None and selected != self._scrolled_for:
            self._scrolled_for = selected  # once per pick: the person may scroll elsewhere afterwards
            self.follow = False
            self.call_after_refresh(self.scroll_to, y=max(0, picked_at - 1), animate=False)
        elif selected is None and self._scrolled_for is not None:
            self._scrolled_for = None
            self.follow = True  # back to the live round: back to the newest line
        self.call_after_refresh(self._to_end)  # (once laid out: the new height is known then)

    def _line(self, change: Change, selected: int | None, width: int) -> Text:
        """`HH:MM:SS words…`, the words wrapped under themselves (a hanging indent past the time)."""
        if change.kind == "build":
            color = self.app.theme_variables.get("accent", "cyan")
        else:
            color = status_color(self.app, KIND_STATUS.get(change.kind, "skip"))
        line = Text()
        picked = selected is not None and change.round == selected
        stamp = wall_clock(change.at)
        line.append(stamp, style="bold reverse" if picked else "dim")
        line.append(" ")
        words = Text(visible(change.text), style=f"bold {color}" if change.kind == "down" else color)
        indent = len(stamp) + 1
        for i, part in enumerate(words.wrap(self.app.console, max(20, width - indent))):
            if i:
                line.append("\n" + " " * indent)
            part.rstrip()
            line.append_text(part)
        return line
