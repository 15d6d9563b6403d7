"""The frame stream: every WebSocket frame of the focused probe, one line each, drawn only where visible.

`FrameList` is a Line-API view over a bounded `FrameBuffer` (DataTable would need one `add_row` per frame and
cannot drop old rows cheaply; a flood brings 100k frames a second). The app calls `sync()` once per tick; the
list then catches up in one step. Follow mode keeps the newest frame selected; moving up or scrolling away
pauses it: the list freezes on a snapshot of what was shown (a flood would otherwise push it out of the bounded
buffer) and the border counts "N new". `FrameDetail` shows the selected frame pretty-printed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.geometry import Size
from textual.highlight import highlight
from textual.message import Message
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from probes.events import Frame
from probes.frames import FrameInfo, pretty
from probes.sanitize import one_line, visible
from tui.state import FrameBuffer, fmt_ms

ARROWS = {"in": "↓", "out": "↑", "close": "✕"}
_UNSET = object()
SCAN_LIMIT = 20_000  # frames a filter looks at per tick (a flood only shows its tail anyway)


@dataclass(frozen=True)
class FrameFilter:
    """What `/` typed: words match direction, kind, type, summary or text (case-insensitive); `!` inverts;
    `type:NAME` matches the protocol type exactly; `in` / `out` match the direction."""

    text: str

    @property
    def invert(self) -> bool:
        return self.text.startswith("!")

    @property
    def terms(self) -> list[str]:
        return (self.text[1:] if self.invert else self.text).lower().split()

    def matches(self, frame: Frame, info: FrameInfo) -> bool:
        ok = all(self._term(t, frame, info) for t in self.terms)
        return ok != self.invert

    @staticmethod
    def _term(term: str, frame: Frame, info: FrameInfo) -> bool:
        if term.startswith("type:"):
            return (info.type or info.kind).lower() == term[5:]
        if term in ("in", "out"):
            return frame.direction == term
        if term in (info.type or "").lower() or term == info.kind or term in info.summary.lower():
            return True
        return isinstance(frame.data, str) and term in frame.data.lower()


def frame_line(frame: Frame, info: FrameInfo) -> tuple[str, str, str, str, str]:
    """The columns of one frame: arrow, time since connect, size, type, summary."""
    if frame.direction == "close":
        return ARROWS["close"], f"+{fmt_ms(frame.ms)}", "", "close", info.summary
    size = f"{frame.size:,} B" if frame.size < 100_000 else f"{frame.size / 1024:,.0f} KiB"
    kind = one_line(info.type or info.kind)  # a server chose this name: shown, never obeyed
    summary = info.summary
    if info.type and summary.startswith(info.type):
        summary = summary[len(info.type):].lstrip()
    if frame.truncated:
        summary = f"[kept {len(frame.data):,} of {frame.size:,} B] {summary}"
    return ARROWS.get(frame.direction, "?"), f"+{fmt_ms(frame.ms)}", size, kind, summary


class FrameList(ScrollView, can_focus=True):
    """The frames of one probe run; a cursor selects one; follow mode tails the newest."""

    DEFAULT_CSS = """
    FrameList {
        background: $surface;
        overflow-y: scroll;
        overflow-x: hidden;
    }
    FrameList > .frame-list--cursor { background: $block-cursor-background; color: $block-cursor-foreground; }
    FrameList:blur > .frame-list--cursor { background: $block-cursor-blurred-background; }
    FrameList > .frame-list--in { color: $text-accent; }
    FrameList > .frame-list--out { color: $text-warning; }
    FrameList > .frame-list--close { color: $text-error; text-style: bold; }
    FrameList > .frame-list--type { color: $text-primary; text-style: bold; }
    FrameList > .frame-list--dim { color: $text-muted; }
    """
    COMPONENT_CLASSES = {"frame-list--cursor", "frame-list--in", "frame-list--out", "frame-list--close",
                         "frame-list--type", "frame-list--dim"}
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First frame", show=False),
        Binding("end,G", "last", "Newest (follow)", show=False),
        Binding("enter", "open", "Open frame", show=False),
    ]

    class Opened(Message):
        """Enter on a frame: show it whole (pretty JSON / hex) in a screen of its own."""

    class FollowChanged(Message):
        def __init__(self, follow: bool) -> None:
            super().__init__()
            self.follow = follow

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.live: FrameBuffer | None = None  # the probe's buffer, still filling
        self.buffer: FrameBuffer | None = None  # what is shown: `live`, or a snapshot of it while paused
        self._live_total = 0
        self.filter: FrameFilter | None = None
        self.follow = True
        self.cursor: int | None = None  # the selected frame's seq
        self._matches: list[int] = []
        self._match_closes: list[int] = []  # the close rows among the matches (rows, not frames)
        self._scanned = 0
        self._synced = (-1, -1)
        self._paused_at = 0  # seq of the first frame that arrived after follow paused
        self.empty_text = "no frames yet"
        self._styles: dict[str, Style] | None = None

    # --- the view ---------------------------------------------------------------------------------------
    @property
    def row_count(self) -> int:
        if self.buffer is None:
            return 0
        if self.filter is not None:
            return len(self._matches)
        return self.buffer.total - self.buffer.first

    @property
    def frame_count(self) -> int:
        """Frames shown (close rows are rows, not frames: the same count as the unfiltered title's)."""
        if self.buffer is None:
            return 0
        if self.filter is not None:
            return len(self._matches) - len(self._match_closes)
        return self.buffer.frames

    def seq_at(self, row: int) -> int | None:
        if self.buffer is None or row < 0 or row >= self.row_count:
            return None
        return self._matches[row] if self.filter is not None else self.buffer.first + row

    def row_of(self, seq: int | None) -> int | None:
        if seq is None or self.buffer is None:
            return None
        if self.filter is not None:
            i = bisect.bisect_left(self._matches, seq)
            return i if i < len(self._matches) and self._matches[i] == seq else None
        row = seq - self.buffer.first
        return row if 0 <= row < self.row_count else None

    @property
    def new_count(self) -> int:
        """Frames that arrived since follow mode paused."""
        if self.follow or self.live is None:
            return 0
        return max(0, self.live.total - self._paused_at)

    def selected(self) -> tuple[Frame, FrameInfo, int] | None:
        if self.buffer is None or self.cursor is None or self.row_of(self.cursor) is None:
            return None
        frame, info = self.buffer.get(self.cursor), self.buffer.info(self.cursor)
        if frame is None or info is None:
            return None
        return frame, info, self.cursor

    # --- feeding (called by the app's tick) --------------------------------------------------------------
    def show(self, buffer: FrameBuffer | None) -> None:
        """Look at another probe's frames (or a fresh run of the same probe)."""
        if buffer is self.live:
            return
        self.live = self.buffer = buffer
        self.follow = True
        self.cursor = None
        self._synced = (-1, -1)
        self._rescan()
        self.set_follow(True)
        self.sync(force=True)

    def set_filter(self, text: str) -> None:
        self.filter = FrameFilter(text.strip()) if text.strip() else None
        self._rescan()
        self.sync(force=True)
        if self.cursor is not None and self.row_of(self.cursor) is None:
            self.cursor = self.seq_at(self.row_count - 1)
        self._scroll_to_cursor()

    def _rescan(self) -> None:
        self._matches = []
        self._match_closes = []
        self._scanned = self.buffer.first if self.buffer is not None else 0

    def _scan(self) -> None:
        buf, flt = self.buffer, self.filter
        if buf is None or flt is None:
            return
        first, total = buf.first, buf.total
        if self._matches and self._matches[0] < first:
            del self._matches[: bisect.bisect_left(self._matches, first)]
            del self._match_closes[: bisect.bisect_left(self._match_closes, first)]
        start = max(self._scanned, first, total - SCAN_LIMIT)
        matches, get, info = self._matches, buf.get, buf.info
        for seq in range(start, total):
            frame, fi = get(seq), info(seq)
            if frame is not None and fi is not None and flt.matches(frame, fi):
                matches.append(seq)
                if frame.direction == "close":
                    self._match_closes.append(seq)
        self._scanned = total

    def sync(self, force: bool = False) -> bool:
        """Catch up with the buffer in one step. Returns True when frames arrived (shown or not)."""
        live_total = self.live.total if self.live is not None else 0
        arrived, self._live_total = live_total != self._live_total, live_total
        buf = self.buffer
        state = (buf.total, buf.first) if buf is not None else (0, 0)
        if state == self._synced and not force:
            return arrived
        self._synced = state
        self._scan()
        rows = self.row_count
        self.virtual_size = Size(self.scrollable_content_region.width or self.size.width, rows)
        if self.follow and rows:
            self.cursor = self.seq_at(rows - 1)
            self.scroll_to(y=max(0, rows - self.scrollable_content_region.height), animate=False, immediate=True)
        elif self.cursor is not None and self.row_of(self.cursor) is None and rows:
            self.cursor = self.seq_at(0)  # the selected frame left the bounded buffer
        self.refresh()
        return True

    # --- follow / cursor ---------------------------------------------------------------------------------
    def set_follow(self, follow: bool) -> None:
        if follow == self.follow:
            return
        self.follow = follow
        if not follow:
            self._paused_at = self.live.total if self.live is not None else 0
            self.buffer = self.live.snapshot() if self.live is not None else None
            self._synced = (self.buffer.total, self.buffer.first) if self.buffer is not None else (0, 0)
        else:
            self.buffer = self.live
            self.sync(force=True)
        self.post_message(self.FollowChanged(follow))

    def _move_to_row(self, row: int) -> None:
        rows = self.row_count
        if not rows:
            return
        row = max(0, min(rows - 1, row))
        self.cursor = self.seq_at(row)
        self.set_follow(row == rows - 1 and self.follow)
        self._scroll_to_cursor()
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        row = self.row_of(self.cursor)
        if row is None:
            return
        height = self.scrollable_content_region.height
        if row < self.scroll_y:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= self.scroll_y + height:
            self.scroll_to(y=row - height + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        row = self.row_of(self.cursor)
        if row is None:
            row = self.row_count - 1
        if delta < 0:
            self.set_follow(False)
        self._move_to_row(row + delta)

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.scrollable_content_region.height - 1))

    def action_first(self) -> None:
        self.set_follow(False)
        self._move_to_row(0)

    def action_last(self) -> None:
        self.set_follow(True)

    def action_open(self) -> None:
        if self.selected() is not None:
            self.post_message(self.Opened())

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if self.row_count > self.scrollable_content_region.height:
            self.set_follow(False)

    def on_click(self, event: events.Click) -> None:
        row = int(self.scroll_y) + event.y
        if 0 <= row < self.row_count:
            self.set_follow(False)
            self._move_to_row(row)

    # --- drawing -----------------------------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None

    def _on_focus(self, event: events.Focus) -> None:
        self._styles = None
        self.refresh()

    def _on_blur(self, event: events.Blur) -> None:
        self._styles = None
        self.refresh()

    def _line_styles(self) -> dict[str, Style]:
        """The styles of a line, computed once per style change (rich_style walks the DOM: slow per line)."""
        if self._styles is None:
            base = self.rich_style
            component = self.get_component_rich_style
            cursor = base + component("frame-list--cursor")
            self._styles = {
                "base": base, "dim": base + component("frame-list--dim"),
                "in": base + component("frame-list--in"), "out": base + component("frame-list--out"),
                "close": base + component("frame-list--close"),
                "type": base + component("frame-list--type"),
                "cursor": cursor, "cursor-type": cursor + Style(bold=True),
            }
        return self._styles

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width or self.size.width
        styles = self._line_styles()
        base = styles["base"]
        row = int(self.scroll_y) + y
        seq = self.seq_at(row)
        buf = self.buffer
        if seq is None or buf is None:
            if (buf is None or self.row_count == 0) and y == 0:
                text = self.empty_text if self.filter is None else f"no frame matches /{self.filter.text}"
                return Strip([Segment(" " + text, styles["dim"])]).adjust_cell_length(width, base)
            return Strip.blank(width, base)
        frame, info = buf.get(seq), buf.info(seq)
        if frame is None or info is None:
            return Strip.blank(width, base)
        arrow, ms, size, kind, summary = frame_line(frame, info)
        if seq == self.cursor:
            style = styles["cursor"]
            segments = [Segment(f" {arrow} {ms:>10} {size:>9}  ", style),
                        Segment(f"{kind[:22]:<22} ", styles["cursor-type"]), Segment(summary, style)]
        else:
            segments = [
                Segment(f" {arrow} ", styles.get(frame.direction, base)),
                Segment(f"{ms:>10} {size:>9}  ", styles["dim"]),
                Segment(f"{kind[:22]:<22} ", styles["close"] if frame.direction == "close" else styles["type"]),
                Segment(summary, styles["close"] if frame.direction == "close" else base),
            ]
            style = base
        return Strip(segments).adjust_cell_length(width, style)

    def on_resize(self, event: events.Resize) -> None:
        self.sync(force=True)


def _marked(index: int, line: str) -> Content:
    """A stage pane's line, styled: the stage's own line stands out; for a failed stage the diagnosis and the
    evidence it cites, a refused upgrade and an unechoed subprotocol in the error style (and marked, so they read
    without colour)."""
    if index == 0:
        return Content.styled(line, "bold $text-accent")
    if line.startswith("diagnosis "):
        return Content.styled("▶ " + line, "bold $text-error")
    if line.startswith("  · ") or line.startswith("  next: "):
        return Content.styled(line, "$text-warning")
    if (line.startswith("answer: HTTP") and not line.endswith(" 101")) or line == "subprotocol echoed: NO":
        return Content.styled("▶ " + line, "bold $text-error")
    return Content(line)


class FrameDetail(VerticalScroll):
    """The selected frame: a header line, then pretty JSON, text, or a hex dump for binary."""

    DEFAULT_CSS = """
    FrameDetail { background: $surface; }
    FrameDetail > Static { width: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: object = _UNSET  # the frame on show, compared by identity (frames are immutable)
        self._lines = -1
        self.text = ""
        self.waterfall: list[str] = []  # the focused probe's stages on a time axis, shown when no frame is selected

    def compose(self) -> ComposeResult:
        yield Static(id="frame-detail-body", markup=False)

    def set_waterfall(self, lines: list[str]) -> None:
        """The probe's waterfall for the empty state (drawn at the next `show(None)` when it changed)."""
        if lines != self.waterfall:
            self.waterfall = lines
            if self._shown is None:
                self._shown = _UNSET

    def show_lines(self, title: str, lines: list[str]) -> None:
        """A stage's evidence (probes/evidence_view.py) instead of a frame; outside text made visible."""
        body = self.query_one("#frame-detail-body", Static)
        self._shown = ("stage", title, tuple(lines))
        self.text = "\n".join(visible(line) for line in lines)
        body.update(Content("\n").join(_marked(i, line) for i, line in enumerate(self.text.split("\n"))))
        self._lines = -1

    def show(self, selected: tuple[Frame, FrameInfo, int] | None) -> None:
        frame_shown = selected[0] if selected is not None else None
        if frame_shown is self._shown:
            return
        self._shown = frame_shown
        body = self.query_one("#frame-detail-body", Static)
        if selected is None:
            self.text = ""
            self._lines = -1
            body.update(Content.styled("no frame selected", "$text-muted") if not self.waterfall else
                        Content.assemble(Content.styled("waterfall (no frame selected)", "bold $text-accent"), "\n",
                                         Content("\n".join(visible(line) for line in self.waterfall))))
            return
        frame, info, _seq = selected
        arrow, ms, size, kind, _summary = frame_line(frame, info)
        said = {"in": "received", "out": "sent", "close": "connection closed"}.get(frame.direction, frame.direction)
        head = f"{arrow} {said} {ms} after accept" + (f" · {size} · {kind}" if size else "")
        if frame.truncated:
            head += f" · truncated: kept {len(frame.data):,} of {frame.size:,} B"
        self.text = visible(pretty(frame.data))  # a frame must not drive the terminal
        shown = highlight(self.text, language="json") if info.kind == "json" and info.value is not None else Content(self.text)
        content = Content.assemble(Content.styled(head, "bold $text-accent"), "\n\n", shown)
        lines = len(content.wrap(max(10, body.size.width or 60)))
        body.update(content, layout=lines != self._lines)  # same height: no layout pass (frames flood in)
        self._lines = lines
        self.scroll_home(animate=False)


class FrameScreen(ModalScreen[None]):
    """One frame, whole: the same view as the detail pane, full screen (and on terminals too narrow for it)."""

    BINDINGS = [Binding("escape,q,enter", "dismiss", "Back", id="close-frame"),
                Binding("c", "app.copy", "Copy", id="copy-frame")]
    DEFAULT_CSS = """
    FrameScreen { align: center middle; }
    FrameScreen > FrameDetail {
        width: 95%; height: 90%; border: round $accent; border-subtitle-color: $text-muted;
    }
    """

    def __init__(self, selected: tuple[Frame, FrameInfo, int]) -> None:
        super().__init__()
        self.selected = selected

    def compose(self) -> ComposeResult:
        detail = FrameDetail(id="frame-screen-detail")
        detail.border_title = f"Frame #{self.selected[2]}"
        detail.border_subtitle = "esc: back · c copies"
        yield detail

    def on_mount(self) -> None:
        detail = self.query_one(FrameDetail)
        detail.show(self.selected)
        detail.focus()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
