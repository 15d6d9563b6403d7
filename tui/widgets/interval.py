"""The watch interval prompt: a small modal with one input ("10s", "1m", "500ms"; a bare number is seconds),
parsed by `probes.watch.parse_duration`; a bad value is said under the input and the prompt stays open."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from probes.sanitize import one_line
from probes.durations import parse_duration
from tui.watching import PRESETS, duration_text

MIN_INTERVAL_S = 0.1


def parse_interval(text: str) -> float:
    """Seconds between rounds; ValueError with one line when it is not a duration or too short."""
    seconds = parse_duration(text)
    if seconds < MIN_INTERVAL_S:
        raise ValueError(f"{text.strip()!r} is too short: at least {MIN_INTERVAL_S * 1000:.0f} ms between rounds")
    return seconds


class IntervalScreen(ModalScreen[float | None]):
    """Dismissed with the new interval in seconds, or None (esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel-interval")]
    DEFAULT_CSS = """
    IntervalScreen { align: center middle; }
    IntervalScreen > Vertical {
        width: 60; height: auto; border: round $accent; background: $surface; padding: 0 1;
    }
    IntervalScreen #interval-error { color: $text-error; height: auto; }
    IntervalScreen #interval-help { color: $text-muted; }
    """

    def __init__(self, current: float) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Watch interval"
            presets = ", ".join(duration_text(s) for s in PRESETS)
            yield Static(Text(f"Time between rounds: {presets}, or any like 45s, 2m, 500ms. Enter sets it, "
                              "esc cancels."), id="interval-help", markup=False)
            yield Input(value=duration_text(self.current), id="interval-input")
            yield Static("", id="interval-error", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        try:
            seconds = parse_interval(event.value)
        except ValueError as exc:
            self.query_one("#interval-error", Static).update(Text(one_line(str(exc))))  # typed text: shown plain
            return
        self.dismiss(seconds)

    def action_cancel(self) -> None:
        self.dismiss(None)
