"""The console's composer: a JSON editor (Textual's TextArea, JSON highlighting) with history on ↑/↓ at its
edges, the config's message templates and saved messages, the session overrides (token transport, headers,
claims, subprotocol) and the close code and reason. It only asks: each button or key posts `ConsolePanel.Do`, and
the app runs it on the engine's console (probes/console.py). What comes back shows in the usual panes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, TextArea

from probes.console import TRANSPORTS
from probes.sanitize import one_line

SAVED_MAX = 100  # saved messages kept
SAVED_BYTES = 64 * 1024  # one saved message at most
HISTORY_MAX = 200


def saved_path() -> Path:
    return Path(platformdirs.user_data_dir("stagewatch")) / "messages.json"


def load_saved(path: Path | None = None) -> list[str]:
    """Saved messages (newest first); a missing, oversized or garbled file is an empty list."""
    path = path or saved_path()
    try:
        if path.stat().st_size > SAVED_MAX * SAVED_BYTES:
            return []
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return []
    return [m for m in data if isinstance(m, str) and len(m) <= SAVED_BYTES][:SAVED_MAX] if isinstance(data, list) else []


def save_message(text: str, path: Path | None = None) -> Path:
    path = path or saved_path()
    saved = [text] + [m for m in load_saved(path) if m != text]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved[:SAVED_MAX]), "utf-8")
    tmp.replace(path)
    return path


class Composer(TextArea):
    """The message being written; ↑ on its first line and ↓ on its last walk the history of sent messages."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(language="json", show_line_numbers=False, tab_behavior="indent", **kwargs)
        self.sent: list[str] = []
        self.at: int | None = None  # the history entry shown, None: the draft
        self.draft = ""

    def remember(self, text: str) -> None:
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
            del self.sent[:-HISTORY_MAX]
        self.at = None

    def _on_key(self, event: Any) -> None:
        row = self.cursor_location[0]
        if event.key == "up" and row == 0 and self.sent:
            if self.at is None:
                self.draft, self.at = self.text, len(self.sent)
            self.at = max(0, self.at - 1)
            self._show(self.sent[self.at])
        elif event.key == "down" and row == self.document.line_count - 1 and self.at is not None:
            self.at += 1
            if self.at >= len(self.sent):
                self.at = None
                self._show(self.draft)
            else:
                self._show(self.sent[self.at])
        else:
            return
        event.prevent_default()
        event.stop()

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor((0, 0))


class ConsolePanel(Vertical):
    """The console's controls. `Do(action, data)`: connect/reconnect (data: the overrides' texts), send (text),
    ping, close (code, reason), save (text)."""

    BINDINGS = [
        Binding("ctrl+s", "do('send')", "Send", priority=True),
        Binding("ctrl+g", "do('ping')", "Ping", priority=True),
        Binding("ctrl+k", "do('close')", "Close", priority=True),
        Binding("ctrl+r", "do('reconnect')", "Reconnect", priority=True),
        Binding("ctrl+b", "do('save')", "Save msg", priority=True),
    ]

    @dataclass
    class Do(Message):
        action: str
        data: dict[str, Any]

    def __init__(self, templates: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.templates = templates
        self.saved = load_saved()

    def compose(self) -> ComposeResult:
        with Horizontal(classes="console-row"):
            yield Select(self._choices(), prompt="template / saved", id="console-template", allow_blank=True,
                         compact=True)
            yield Select([(f"token: {k}", k) for k in TRANSPORTS], value="config", allow_blank=False,
                         id="console-transport", compact=True)
        with Horizontal(classes="console-row"):
            yield Input(placeholder="headers, e.g. X-A: 1; -X-E2E-Test", id="console-headers", compact=True)
            yield Input(placeholder="claims, e.g. sub=other exp=-60", id="console-claims", compact=True)
            yield Input(placeholder="extra subprotocol, e.g. chat.v2", id="console-subprotocol", compact=True)
        yield Composer(id="console-composer")
        with Horizontal(classes="console-row"):
            yield Button("Send ^s", id="console-send", variant="primary", compact=True)
            yield Button("Ping ^g", id="console-ping", compact=True)
            yield Button("Reconnect ^r", id="console-reconnect", compact=True)
            yield Button("Save ^b", id="console-save", compact=True)
        with Horizontal(classes="console-row"):
            yield Label("close with", classes="console-label")
            yield Input("1000", id="console-code", restrict=r"[0-9]{0,4}", compact=True)
            yield Input(placeholder="reason", id="console-reason", compact=True, max_length=123)
            yield Button("Close ^k", id="console-close", variant="warning", compact=True)

    def on_mount(self) -> None:
        self.border_title = "Console"
        if self.templates:
            self.query_one(Composer).load_text(self.templates[0][1])

    def _choices(self) -> list[tuple[Text, str]]:
        """Labels as Text: a template or a saved message is outside text, never markup."""
        out = [(Text(f"template: {one_line(label)}"), text) for label, text in self.templates]
        out += [(Text(f"saved: {one_line(text)[:40]}"), text) for text in self.saved]
        return out

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "console-template" and isinstance(event.value, str):
            self.query_one(Composer).load_text(event.value)
            event.stop()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id and event.button.id.startswith("console-"):
            self.action_do(event.button.id.removeprefix("console-"))
            event.stop()

    def overrides(self) -> dict[str, str]:
        value = self.query_one("#console-transport", Select).value
        return {"transport": value if isinstance(value, str) else "config",
                "headers": self.query_one("#console-headers", Input).value,
                "claims": self.query_one("#console-claims", Input).value,
                "subprotocol": self.query_one("#console-subprotocol", Input).value}

    def action_do(self, action: str) -> None:
        composer = self.query_one(Composer)
        data: dict[str, Any] = {}
        if action in ("send", "save"):
            data["text"] = composer.text
        elif action == "close":
            code = self.query_one("#console-code", Input).value
            data = {"code": int(code) if code.isdigit() else 1000,
                    "reason": self.query_one("#console-reason", Input).value}
        elif action == "reconnect":
            data = self.overrides()
        self.post_message(self.Do(action, data))

    def sent(self, text: str) -> None:
        self.query_one(Composer).remember(text)

    def saved_one(self, text: str) -> None:
        self.saved = [text] + [m for m in self.saved if m != text]
        self.query_one("#console-template", Select).set_options(self._choices())
