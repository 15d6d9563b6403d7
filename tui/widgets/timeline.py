"""The timeline of a watch: every flip and build change, one line each in local wall time, newest at the bottom,
coloured by kind — `14:03:12 golden-path DOWN at handshake — closed-before-ready (build v1 → v2)` … `14:05:40
golden-path UP — outage 2 m 28 s, 9 rounds`. The words are `probes.watch.History`'s (built from sanitised values);
they are shown as `Text`, never parsed as markup. The newest line stays in view unless the person scrolls up; a
picked round scrolls to its lines and shows their times in reverse.

Following is Textual's anchor (`Widget.anchor`): while laying the pane out, the compositor keeps an anchored pane
at its bottom as lines arrive, until the person scrolls away (Textual then calls `release_anchor`); scrolled back
to the bottom, it anchors again. When the pane itself changes height (the Close and Diagnosis row below grows or
shrinks with each round), that pin is measured with the height it had before, so after every resize the pane
settles at its end again (while following) and never past it.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from probes.sanitize import visible
from probes.watch import Change, History
from tui.widgets.theme import status_color

SHOWN = 300  # timeline lines drawn (the newest)
KIND_STATUS = {"down": "fail", "cause": "fail", "up": "pass", "degraded": "error", "pending": "error", "drop": "fail",
               "back": "pass"}


def wall_clock(at: float) -> str:
    """Epoch seconds as local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(at))


class TimelinePane(VerticalScroll):
    """The lines of `History.timeline`; follows the newest line (anchored) unless scrolled away or a round is
    picked."""

    DEFAULT_CSS = """
    TimelinePane { scrollbar-gutter: stable; }  /* lines are wrapped to a width a scrollbar will not take away */
    TimelinePane > Static { width: 1fr; min-height: 100%; }  /* anchored, a short timeline still starts at the top */
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.plain = ""  # the lines as they read, unwrapped
        self._key: tuple[int, Change | None, int | None, int] | None = None
        self._history: History | None = None
        self._selected: int | None = None
        self._scrolled_for: int | None = None  # the picked round the view was last scrolled to
        self.following = True  # the newest line is kept in view (False: the person scrolled up, or picked a round)

    def compose(self) -> ComposeResult:
        yield Static(id="timeline-body", markup=False)

    def on_mount(self) -> None:
        self._follow()

    def _follow(self) -> None:
        self.following = True
        self.anchor()

    def release_anchor(self) -> None:
        """Textual calls this when the person scrolls (wheel, scrollbar, keys); so does a scroll to a picked round."""
        super().release_anchor()
        self.following = False

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)  # (re-anchors when the person scrolls back to the bottom)
        if not self.following and self.is_anchored and new_value >= self.max_scroll_y > 0:
            self.following = True

    def on_resize(self) -> None:
        if self._history is not None:
            self.show(self._history, self._selected)  # lines wrap to the width
        self.call_after_refresh(self._settle)

    def _settle(self) -> None:
        """At the end while following; never scrolled past the end (a pin measured at the height before)."""
        end = self.max_scroll_y
        if (self.following and self.scroll_y != end) or self.scroll_y > end:
            self.scroll_target_y = end
            self.scroll_y = end

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
            # (once laid out: the new height is known then); a scroll from code releases the anchor
            self.call_after_refresh(self.scroll_to, y=max(0, picked_at - 1), animate=False)
        elif selected is None and self._scrolled_for is not None:
            self._scrolled_for = None
            self.call_after_refresh(self._follow)  # back to the live round: back to the newest line
        elif self.following:
            self.call_after_refresh(self._settle)

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
