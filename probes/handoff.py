"""The local hand-off between a standalone `stagewatch sandbox` and a `stagewatch run --url` on this machine.

The sandbox signs tokens with a random per-run key. It leaves that key (and the build it serves as "released")
in a 0600 file in the user's runtime directory, named by port, and removes it on exit, so a second terminal can
probe it with no secret in any file of the project. $JWT_SECRET_KEY, when set, always wins.

The runtime directory may fall back to /tmp, which other users can write to, so the file is trusted only when
it and its directory belong to this user and nobody else can read or write them, and symlinks are not followed.
Writing the file is best effort: when it cannot be written safely the sandbox runs without it.
"""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import platformdirs

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _runtime_dir() -> Path:
    with warnings.catch_warnings():  # platformdirs warns when it falls back from $XDG_RUNTIME_DIR to /tmp
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir("stagewatch", ensure_exists=False))


def handoff_path(port: int) -> Path:
    return _runtime_dir() / f"sandbox-{port}.json"


def _private(st: os.stat_result) -> bool:
    """Owned by this user and closed to group and others."""
    owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return owner_ok and not st.st_mode & 0o077


def _safe_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _private(st)


def write_handoff(port: int, secret: str, release_build: str) -> Path | None:
    """Write the hand-off file (0600); None when it cannot be written safely (the sandbox still runs)."""
    path = handoff_path(port)
    if not _safe_dir(path.parent):
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            os.close(fd)
            return None
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"secret": secret, "release_build": release_build, "pid": os.getpid()}, fh)
    except OSError:
        return None
    return path


def read_handoff(port: int) -> dict[str, Any] | None:
    """The hand-off of the sandbox on `port`, or None (missing, unreadable, or not private to this user)."""
    path = handoff_path(port)
    try:
        if not _private(os.lstat(path.parent)):
            return None
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "r", encoding="utf-8") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or not _private(st) or st.st_size > 64 * 1024:
                return None
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_handoff(port: int) -> None:
    try:
        handoff_path(port).unlink()
    except OSError:
        pass
