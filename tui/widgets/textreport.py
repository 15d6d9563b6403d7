"""A modal screen showing a report the engine wrote as text (the auth-path matrix, a comparison of two runs):
scrollable, `c` copies it (as Markdown when the report has a Markdown form), `esc` or `q` closes it."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer
from textual.screen import ModalScreen
from textual.widgets import Static


class TextReportScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q", "dismiss", "Close", id="close-report"),
        Binding("c", "copy", "Copy", id="copy-report"),
    ]
    DEFAULT_CSS = """
    TextReportScreen { align: center middle; }
    TextReportScreen > ScrollableContainer {
        width: 95%; height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    TextReportScreen Static { width: auto; }
    TextReportScreen.-wrap Static { width: 1fr; }
    """

    def __init__(self, title: str, text: str, copy_text: str | None = None, *, wrap: bool = False) -> None:
        """`wrap`: long lines wrap (a stage's evidence); else they keep their width and ←/→ scroll (tables)."""
        super().__init__(classes="-wrap" if wrap else None)
        self.wrap = wrap
        self.title_text = title
        self.text = text  # already sanitised by the engine's renderer; ANSI colours are turned into styles
        self.copy_text = copy_text if copy_text is not None else Text.from_ansi(text).plain

    def compose(self) -> ComposeResult:
        with ScrollableContainer():
            yield Static(Text.from_ansi(self.text), markup=False)

    def on_mount(self) -> None:
        box = self.query_one(ScrollableContainer)
        box.border_title = Text(self.title_text)  # text, never markup
        box.border_subtitle = "c copies · esc closes" if self.wrap else "←/→ scroll · c copies · esc closes"
        box.focus()

    def action_copy(self) -> None:
        copy = getattr(self.app, "copy_text", None)
        if callable(copy):
            copy(self.copy_text, "the report")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
