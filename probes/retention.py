"""Retention of default recordings: the recordings folder keeps the newest N recordings and none older than D days.

Only the default folder (`recording.default_recordings_dir`) is pruned, never a path named with `--record`, and
in it only files named as stagewatch names them (`<YYYYmmdd-HHMMSS>-<target>.jsonl`, see
`recording.default_recording_path`, and their parts `….partN.jsonl`). A recording and its parts are one unit: kept
or removed together, its age that of its newest file (a watch still writing is fresh). Symlinks and anything
that is not a regular file are left alone (never followed, never removed). Best effort: an error skips that file,
nothing is raised.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

# what default_recording_path writes: a timestamp, the target's [alnum _-] characters (at most 40), a part number
_OURS = re.compile(r"(?P<unit>[0-9]{8}-[0-9]{6}-[\w-]{1,40})(?:\.part(?P<part>[1-9][0-9]{0,8}))?\.jsonl\Z")
DAY = 86400.0


@dataclass
class _Unit:
    """A recording: its first file and parts (whichever are there) and the newest mtime among them."""

    files: list[Path] = field(default_factory=list)
    newest: float = 0.0


def _units(folder: Path) -> dict[str, _Unit]:
    units: dict[str, _Unit] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _OURS.match(entry.name)
            if match is None:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):  # a symlink, a folder, a device: not ours to remove
                continue
            unit = units.setdefault(match["unit"], _Unit())
            unit.files.append(folder / entry.name)
            unit.newest = max(unit.newest, info.st_mtime)
    return units


def _remove(unit: _Unit) -> list[Path]:
    removed = []
    for path in unit.files:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def prune_recordings(folder: str | Path, keep_files: int, keep_days: float, now: float | None = None) -> list[Path]:
    """Remove from `folder` the recordings (each with its parts) beyond the newest `keep_files` or whose newest
    file is older than `keep_days` (by mtime, against `now`, default the current time). Returns the files
    removed. Call it before a new default recording is opened: it counts the recordings already there."""
    try:
        units = _units(Path(folder))
        cutoff = (time.time() if now is None else now) - keep_days * DAY
        ordered = sorted(units.items(), key=lambda item: (item[1].newest, item[0]), reverse=True)
        removed: list[Path] = []
        for index, (_, unit) in enumerate(ordered):
            if index >= max(keep_files, 0) or unit.newest < cutoff:
                removed += _remove(unit)
        return removed
    except (OSError, ValueError, TypeError, OverflowError):  # best effort: a folder that is not there, odd values
        return []


def newest_recordings(folder: str | Path, limit: int = 20) -> list[Path]:
    """The default folder's recordings, newest first (by their newest file): each as the path to open (its first
    file, the one `replay` reads with its parts). Best effort: an unreadable folder is an empty list."""
    folder = Path(folder)
    try:
        units = _units(folder)
    except OSError:
        return []
    ordered = sorted(units.items(), key=lambda kv: kv[1].newest, reverse=True)[:max(0, limit)]
    return [folder / f"{name}.jsonl" for name, _unit in ordered]
