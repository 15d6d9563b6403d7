"""Status colours and glyphs shared by the panes, taken from the app's theme ($success, $error, ...)."""

from __future__ import annotations

from textual.app import App

from tui.state import GLYPHS

STATUS_VARIABLE = {"pass": "success", "fail": "error", "error": "warning", "skip": "text-muted",
                   "queued": "text-muted", "running": "accent"}
STATUS_WORD = {"pass": "pass", "fail": "FAIL", "error": "ERROR", "skip": "skip", "queued": "queued",
               "running": "running"}


def status_color(app: App[object], status: str) -> str:
    """A concrete colour (for Rich renderables such as DataTable cells) for a status, from the theme."""
    variable = STATUS_VARIABLE.get(status, "foreground")
    return app.theme_variables.get(variable) or app.theme_variables.get("foreground", "white")


def status_markup(status: str) -> str:
    """A Content style for a status ($success, $error, ...)."""
    variable = STATUS_VARIABLE.get(status, "foreground")
    bold = " bold" if status in ("fail", "error", "running") else ""
    return f"${variable}{bold}"


def glyph(status: str) -> str:
    return GLYPHS.get(status, "?")
