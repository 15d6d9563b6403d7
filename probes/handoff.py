"""The local hand-off between a standalone `stagewatch sandbox` and a `stagewatch run --url` on this machine.

The sandbox signs tokens with a random per-run key. It leaves that key (and the build it serves as "released",
none while it plays a deploy) in a 0600 file in the user's runtime directory, named by port, with its pid, and
removes it on exit, so a second terminal can probe it with no secret in any file of the project.
$JWT_SECRET_KEY, when set, always wins. A file whose writer is gone (killed, crashed) is stale: readers ignore
it, and remove it when it is still the file they read.

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
from typing import Any, TypeGuard

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


def write_handoff(port: int, secret: str, release_build: str | None) -> Path | None:
    """Write the hand-off file (0600, this process's pid in it); None when it cannot be written safely (the
    sandbox still runs). Written beside and renamed over, so a reader never sees half a file."""
    path = handoff_path(port)
    if not _safe_dir(path.parent):
        return None
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _unlink(temp)  # one a crashed writer with this pid left (the directory is this user's alone)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"secret": secret, "release_build": release_build, "pid": os.getpid()}, fh)
        os.replace(temp, path)
    except OSError:
        _unlink(temp)
        return None
    return path


def read_handoff(port: int) -> dict[str, Any] | None:
    """The hand-off of the live sandbox on `port`, or None (missing, unreadable, not private to this user, or
    stale: its writer is gone, and then the file is removed)."""
    path = handoff_path(port)
    found = _read_private(path)
    if found is None:
        return None
    data, st = found
    pid = data.get("pid")
    if not _valid_pid(pid):
        return None  # no writer to check: not trusted
    if not pid_alive(pid):
        _remove_if_same(path, st)
        return None
    return data


def remove_handoff(port: int) -> None:
    """Remove the hand-off on `port` if this process wrote it (a file another sandbox wrote stays)."""
    path = handoff_path(port)
    found = _read_private(path)
    if found is not None and found[0].get("pid") == os.getpid():
        _remove_if_same(path, found[1])


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user counts: it is alive, only not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep the file rather than remove a live sandbox's
    return True


def _valid_pid(pid: object) -> TypeGuard[int]:
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0  # 0 and -n would name process groups


def _read_private(path: Path) -> tuple[dict[str, Any], os.stat_result] | None:
    """The file's JSON object and its stat, when it and its directory are private to this user."""
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
    return (data, st) if isinstance(data, dict) else None


def _remove_if_same(path: Path, seen: os.stat_result) -> None:
    """Unlink `path` only while it is still the file that was read (a new sandbox's file is a new inode)."""
    try:
        now = os.lstat(path)
    except OSError:
        return
    if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
        _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
