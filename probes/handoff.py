"""The local hand-off between a standalone `stagewatch sandbox` and a `stagewatch run --url` on this machine.

The sandbox signs tokens with a random per-run key. It leaves that key (and the build it serves as "released")
in a 0600 file in the user's runtime directory, named by port, and removes it on exit, so a second terminal can
probe it with no secret in any file of the project. $JWT_SECRET_KEY, when set, always wins.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import platformdirs


def handoff_path(port: int) -> Path:
    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR (containers, ssh): platformdirs falls back quietly
        warnings.simplefilter("ignore")
        base = platformdirs.user_runtime_dir("stagewatch", ensure_exists=False)
    return Path(base) / f"sandbox-{port}.json"


def write_handoff(port: int, secret: str, release_build: str) -> Path:
    path = handoff_path(port)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"secret": secret, "release_build": release_build, "pid": os.getpid()}, fh)
    return path


def read_handoff(port: int) -> dict[str, Any] | None:
    try:
        data = json.loads(handoff_path(port).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_handoff(port: int) -> None:
    try:
        handoff_path(port).unlink()
    except OSError:
        pass
