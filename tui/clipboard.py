"""Copying that lands somewhere: OSC 52 asks the terminal (it never says whether it obeyed — a default tmux
drops it), so the text also goes to tmux's paste buffer when inside tmux, and always to a private file in the
user's runtime directory whose path the toast names, with the real byte count."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import platformdirs

TMUX_TIMEOUT_S = 2.0


def clipboard_file() -> Path:
    with warnings.catch_warnings():  # platformdirs warns when it falls back to /tmp
        warnings.simplefilter("ignore")
        base = Path(platformdirs.user_runtime_dir("stagewatch"))
    return base / "clipboard.txt"


def _write_private(path: Path, data: bytes) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    except OSError:
        return False


def _tmux(data: bytes) -> bool:
    if not os.environ.get("TMUX"):
        return False
    try:
        done = subprocess.run(["tmux", "load-buffer", "-w", "-"], input=data, timeout=TMUX_TIMEOUT_S,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def copy_elsewhere(text: str) -> tuple[int, list[str]]:
    """Beside OSC 52 (the app's own copy): the tmux buffer and the file. Returns the byte count and where it
    went, in words for the toast."""
    data = text.encode("utf-8")
    where = ["the terminal's clipboard (OSC 52, if it allows)"]
    if _tmux(data):
        where.append("tmux's buffer (prefix ] pastes)")
    path = clipboard_file()
    if _write_private(path, data):
        where.append(str(path))
    return len(data), where
